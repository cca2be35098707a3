"""What a Cursor-on-Target type string means: our own compact table of the CoT type tree.

A CoT type is a dash-separated path. ``a-<affiliation>-<dimension>-<function...>`` is an "atom" (a
thing that exists: a unit, a vehicle, a building); ``b-...`` are "bits" (map points, alarms, chat);
``t-...`` tasking and control (``t-x-c-t`` is TAK's ping); ``u-...`` user drawings of TAK clients.
The function part of an atom does not depend on the affiliation, so the table keys atoms as
``a-.-<dimension>-<function>``, the way the MITRE type file writes them.

The table holds the entries an emergency network meets, not the whole MIL-STD-2525 tree. Each entry
says where its meaning comes from: ``mitre`` entries are checked by the tests against MITRE's
CoTtypes.xml (which has no licence, so it is not shipped or copied), ``tak`` entries are extensions
that TAK clients (ATAK, WinTAK, iTAK) write and that the MITRE file predates, ``2525`` entries are
MIL-STD-2525 battle dimensions the MITRE file does not list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The affiliation letter of an atom (``a-f-...``), as the MITRE file's ``<is>`` table names them.
AFFILIATIONS: dict[str, str] = {
    "f": "friendly",
    "h": "hostile",
    "u": "unknown",
    "n": "neutral",
    "p": "pending",
    "a": "assumed",
    "s": "suspect",
    "j": "joker",
    "k": "faker",
}

#: The battle dimension of an atom (``a-f-G-...``): where it moves.
DIMENSIONS: dict[str, str] = {
    "G": "ground",
    "A": "air",
    "S": "sea surface",
    "U": "subsurface",
    "P": "space",
    "F": "special operations forces",
}
#: Dimensions the MITRE type file has no entry for; their names are MIL-STD-2525's.
DIMENSIONS_NOT_IN_MITRE = frozenset({"P", "F"})


@dataclass(frozen=True, slots=True)
class TypeEntry:
    key: str  # a-.-G-U-C (atoms, any affiliation) or the full type (b-m-p-s-m)
    name: str  # what it is, in plain words
    source: str  # mitre, tak or 2525 (see the module's docstring)


_ENTRIES = (
    # Ground atoms
    TypeEntry("a-.-G", "ground track", "mitre"),
    TypeEntry("a-.-G-U", "unit", "mitre"),
    TypeEntry("a-.-G-U-C", "combat", "mitre"),
    TypeEntry("a-.-G-U-C-I", "troops (open)", "mitre"),
    TypeEntry("a-.-G-U-U", "combat support", "mitre"),
    TypeEntry("a-.-G-U-S", "combat service support", "mitre"),
    TypeEntry("a-.-G-E", "equipment", "mitre"),
    TypeEntry("a-.-G-E-V", "ground vehicle", "mitre"),
    TypeEntry("a-.-G-E-V-C", "civilian vehicle", "mitre"),
    TypeEntry("a-.-G-E-V-E", "engineer vehicle", "mitre"),
    TypeEntry("a-.-G-E-V-E-C", "construction vehicle", "mitre"),
    TypeEntry("a-.-G-E-V-E-D", "dozer", "mitre"),
    TypeEntry("a-.-G-E-V-U", "utility vehicle", "mitre"),
    TypeEntry("a-.-G-E-V-U-B", "bus", "mitre"),
    TypeEntry("a-.-G-E-V-U-R", "water craft", "mitre"),
    TypeEntry("a-.-G-E-V-m", "ambulance", "mitre"),
    TypeEntry("a-.-G-I", "building", "mitre"),
    TypeEntry("a-.-G-I-X", "medical facility", "mitre"),
    TypeEntry("a-.-G-I-X-H", "hospital", "mitre"),
    TypeEntry("a-.-G-I-i-e", "emergency management", "mitre"),
    TypeEntry("a-.-G-I-i-e-eoc", "emergency operations center", "mitre"),
    TypeEntry("a-.-G-I-i-e-ic", "incident commander", "mitre"),
    TypeEntry("a-.-G-I-i-f", "fire/hazmat", "mitre"),
    TypeEntry("a-.-G-I-i-l", "law enforcement", "mitre"),
    TypeEntry("a-.-G-I-i-m", "emergency medical services", "mitre"),
    TypeEntry("a-.-G-I-c-sch", "school", "mitre"),
    # Air and sea atoms
    TypeEntry("a-.-A", "air track", "mitre"),
    TypeEntry("a-.-A-C-F", "fixed wing", "mitre"),
    TypeEntry("a-.-A-C-H", "rotary wing", "mitre"),
    TypeEntry("a-.-A-M-F", "fixed wing", "mitre"),
    TypeEntry("a-.-A-M-F-Q", "drone (rpv/uav)", "mitre"),
    TypeEntry("a-.-A-M-H", "rotary wing", "mitre"),
    TypeEntry("a-.-A-M-H-H", "combat search and rescue (csar)", "mitre"),
    TypeEntry("a-.-S", "sea surface track", "mitre"),
    TypeEntry("a-.-S-X", "non military", "mitre"),
    TypeEntry("a-.-U", "subsurface track", "mitre"),
    # Map points and routes
    TypeEntry("b-m-p", "map point", "mitre"),
    TypeEntry("b-m-p-w", "waypoint", "mitre"),
    TypeEntry("b-m-p-s-p-i", "spi", "mitre"),
    TypeEntry("b-m-p-s-m", "spot map marker", "tak"),
    TypeEntry("b-m-r", "route", "mitre"),
    TypeEntry("b-i", "image", "mitre"),
    TypeEntry("b-d", "detection", "mitre"),
    # Alarms and alerts
    TypeEntry("b-l", "alarm", "mitre"),
    TypeEntry("b-a-o-tbl", "911 alert", "tak"),
    TypeEntry("b-a-o-pan", "ring the bell alert", "tak"),
    TypeEntry("b-a-o-opn", "troops in contact alert", "tak"),
    TypeEntry("b-a-o-c", "custom emergency alert", "tak"),
    TypeEntry("b-a-o-can", "emergency alert cancelled", "tak"),
    TypeEntry("b-a-g", "geofence breach", "tak"),
    # Text
    TypeEntry("b-t-f", "GeoChat message", "tak"),
    # Drawings of TAK clients
    TypeEntry("u-d-f", "drawn polyline or polygon", "tak"),
    TypeEntry("u-d-r", "drawn rectangle", "tak"),
    TypeEntry("u-d-c-c", "drawn circle", "tak"),
    TypeEntry("u-rb-a", "range and bearing line", "tak"),
    # Tasking and control
    TypeEntry("t-x-c-t", "ping", "tak"),
    TypeEntry("t-x-c-t-r", "ping reply", "tak"),
    TypeEntry("t-x-d-d", "delete", "tak"),
)

#: Our table, by key.
TYPES: dict[str, TypeEntry] = {entry.key: entry for entry in _ENTRIES}

#: What a type string may be: dash-separated parts of letters, digits and a few marks.
TYPE_SYNTAX = re.compile(r"[A-Za-z0-9.]+(?:-[A-Za-z0-9.]+)*")

PING = "t-x-c-t"
PING_REPLY = "t-x-c-t-r"


def key_of(cot_type: str) -> str:
    """The table key of a type: an atom's affiliation replaced by ``.``."""
    parts = cot_type.split("-")
    if len(parts) >= 2 and parts[0] == "a":
        parts[1] = "."
    return "-".join(parts)


def lookup(cot_type: str) -> TypeEntry | None:
    """The entry of the longest table key that is a prefix of ``cot_type`` (by whole parts)."""
    parts = key_of(cot_type).split("-")
    for end in range(len(parts), 0, -1):
        entry = TYPES.get("-".join(parts[:end]))
        if entry is not None:
            return entry
    return None


def is_atom(cot_type: str) -> bool:
    """Whether the type is an atom ``a-<affiliation>-<dimension>...`` with a known affiliation and dimension."""
    parts = cot_type.split("-")
    return len(parts) >= 3 and parts[0] == "a" and parts[1] in AFFILIATIONS and parts[2] in DIMENSIONS


def describe(cot_type: str) -> str:
    """A human name: ``a-f-G-U-C`` -> ``friendly ground combat``; ``b-m-p-s-m`` -> ``spot map marker``."""
    parts = cot_type.split("-")
    if is_atom(cot_type):
        words = [AFFILIATIONS[parts[1]], DIMENSIONS[parts[2]]]
        entry = lookup(cot_type) if len(parts) > 3 else None
        if entry is not None and entry.key.count("-") > 2:
            words.append(entry.name)
        return " ".join(words)
    entry = lookup(cot_type)
    if entry is None:
        return f"CoT type {cot_type}"
    return entry.name if entry.key == cot_type else f"{entry.name} ({cot_type})"


def is_marker(cot_type: str) -> bool:
    """Map points a user or system placed (``b-m-p-...``)."""
    return cot_type == "b-m-p" or cot_type.startswith("b-m-p-")


def is_emergency(cot_type: str) -> bool:
    """Emergency alerts of TAK clients (``b-a-o-...``, the 911 button) and MITRE's alarms (``b-l-...``)."""
    return cot_type.startswith(("b-a-o-", "b-l-")) or cot_type == "b-l"


def is_cancel(cot_type: str) -> bool:
    """The cancellation of an emergency alert (TAK writes it with the alert's uid)."""
    return cot_type == "b-a-o-can"
