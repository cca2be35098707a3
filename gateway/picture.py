"""The command picture: what is going on in the jurisdiction, built from the node's log.

The picture follows the log from ``window`` hours back: active warnings, incidents (the latest report
of each chain), the latest alarms, the latest reading of each station, terminals' liveness and the
units' positions. Each envelope turns into *changes* (an item entering, replacing or leaving the
picture), and every change keeps the selection record of the envelope it came from, so what a
viewer may see is decided by the same sharing policy, over the same records, as a gRPC subscriber's
stream (``GatewayService.selector``): there is no second rule set here.

A past moment is replayed by building a fresh picture from the log up to the first offset appended
after it. The live picture keeps its recent changes in order of offset, so a viewer's stream resumes
from any offset without gap or duplicate; one further back is caught up by replaying the log.

What the log does not carry is not invented: a terminal's position, an incident's stage change by the
clock, or a station's thresholds when the node has no station registry are null in the JSON.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import os
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
import structlog
from shapely.geometry import MultiPolygon, Polygon, mapping
from yiwang.v1 import envelope_pb2 as pb

from gateway.boundaries import Boundaries, footprint
from gateway.errors import InvalidEnvelopeError
from gateway.log import Log, StoredBatch
from gateway.regions import Level, RegionTable, level_of
from gateway.routing import ALARM_ATTRIBUTE, OVERDUE_ATTRIBUTE
from gateway.selection import RECORD

log = structlog.get_logger("yiwang.picture")

SEVERITIES = {pb.BLUE: "blue", pb.YELLOW: "yellow", pb.ORANGE: "orange", pb.RED: "red"}
COLOURS = {"blue": "#1e90ff", "yellow": "#ffd700", "orange": "#ff8c00", "red": "#e60000"}
GRADES = {
    pb.GRADE_GENERAL: ("general", "一般"),
    pb.GRADE_LARGER: ("larger", "较大"),
    pb.GRADE_MAJOR: ("major", "重大"),
    pb.GRADE_EXTRAORDINARY: ("extraordinary", "特别重大"),
}
STAGES = {
    pb.STAGE_INITIAL: ("initial", "首报"),
    pb.STAGE_FOLLOW_UP: ("follow_up", "续报"),
    pb.STAGE_FINAL: ("final", "终报"),
}
STATUSES = {pb.ACTUAL: "actual", pb.EXERCISE: "exercise", pb.TEST: "test"}
TERMINAL_STATES = {"online": "alive", "stale": "stale", "offline": "dead"}
KIND_NAMES = {
    "alert": pb.ALERT,
    "incident": pb.INCIDENT,
    "observation": pb.OBSERVATION,
    "position": pb.POSITION,
    "heartbeat": pb.HEARTBEAT,
}
FOLLOWED = frozenset(KIND_NAMES.values())
MAX_ALARMS = 500
MAX_SERIES_POINTS = 4096
MAX_HISTORY = 64
PRUNE_EVERY_S = 60.0  # how often the live picture forgets what no window can show any more
FINAL_KEEP_MS = 2 * 3_600_000  # an incident stays in the picture this long after its final report

Item = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Change:
    """One item entering (or replacing its earlier self in) the picture, or leaving it."""

    offset: int
    record: bytes  # the selection record that decides who may see it
    item: Item  # with "type" and "offset"; a removal is {"type": "remove", "of", "id"}


@dataclass(slots=True)
class _Entry:
    record: bytes
    item: Item
    since: int  # the offset of the envelope that made the item (a window starting after it has no such item)
    named: int = -1  # stations: the offset of the latest reading that gave the station's name
    placed: int = -1  # stations: the offset of the latest reading that gave its position


@dataclass(slots=True)
class _Point:
    at: int
    offset: int
    record: bytes
    values: list[Any]  # (metric, its name, value, unit) each, as tuples or (from a checkpoint) lists


@dataclass(slots=True)
class _Step:
    """One envelope of a chain (a warning's updates, an incident's reports), for the detail's history."""

    id: str
    offset: int
    at: int
    record: bytes
    stage: str | None
    msg_type: str | None
    headline: str
    refs: tuple[str, ...]  # a warning's references: the chain is worked out when read, for the window read
    incident: str | None  # an incident report's chain id


def ms(stamp: Any) -> int | None:
    """A protobuf Timestamp in Unix milliseconds, None when unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return int(stamp.seconds * 1000 + stamp.nanos // 1_000_000)


def _when(env: pb.Envelope, appended_ms: int) -> int:
    for stamp in (env.observed_at, env.sent_at):
        got = ms(stamp)
        if got is not None:
            return got
    return appended_ms


def _point(env: pb.Envelope) -> tuple[float | None, float | None]:
    if env.HasField("geometry") and env.geometry.HasField("point"):
        return env.geometry.point.lat, env.geometry.point.lon
    return None, None


def metric_name(env: pb.Envelope, metric: str) -> str:
    """The name a station's protocol gives a metric code (the code itself when unknown)."""
    fmt = env.provenance.original_format
    if fmt.startswith("sl651"):
        from adapters.sl651 import elements  # noqa: PLC0415 - only for nodes whose log holds SL 651 readings

        return elements.element(metric).name
    if fmt.startswith("hj212"):
        from adapters.hj212 import codes  # noqa: PLC0415

        pollutant = codes.pollutant(metric)
        return pollutant.name if pollutant else metric
    return metric


@dataclass
class Limits:
    """A station's alarm limits of one metric, as the station registry gives them."""

    low: float | None
    high: float | None


class PictureState:
    """The picture as the envelopes applied so far make it (pure: no I/O, no clock)."""

    def __init__(
        self, boundaries: Boundaries | None, regions: RegionTable, limits: dict[str, dict[str, Limits]]
    ) -> None:
        self.boundaries = boundaries
        self.regions = regions
        self.limits = limits  # station id -> metric -> limits
        self.warnings: dict[str, _Entry] = {}
        self.incidents: dict[str, _Entry] = {}  # by chain id
        self.alarms: deque[_Entry] = deque(maxlen=MAX_ALARMS)
        self.stations: dict[str, _Entry] = {}
        self.terminals: dict[str, _Entry] = {}
        self.units: dict[str, _Entry] = {}
        self.series: dict[str, deque[_Point]] = {}
        self.steps_by_id: dict[str, _Step] = {}  # warnings' and incidents' envelopes, in order of offset
        self.overdue: dict[str, tuple[str, int]] = {}  # incident chain -> note, offset of the overdue alert
        # Reading: what the picture shows begins at ``floor`` (the first offset of its window). The state
        # may hold older envelopes' work (a checkpoint, the live picture): read with a floor, it shows
        # exactly what a fresh replay of the log from ``floor`` would.
        self.floor = 0
        self.origin = 0  # the state holds the work of every followed envelope from this offset on

    # -- applying envelopes -----------------------------------------------------------------------

    def apply(self, offset: int, appended_ms: int, record: bytes, env: pb.Envelope) -> list[Change]:
        kind = env.kind
        if kind == pb.ALERT:
            if OVERDUE_ATTRIBUTE in env.attributes:
                return self._overdue(offset, appended_ms, record, env)
            return self._alert(offset, appended_ms, record, env)
        if kind == pb.INCIDENT:
            return self._incident(offset, appended_ms, record, env)
        if kind == pb.OBSERVATION:
            return self._observation(offset, appended_ms, record, env)
        if kind == pb.POSITION:
            return self._position(offset, appended_ms, record, env)
        if kind == pb.HEARTBEAT:
            return self._heartbeat(offset, appended_ms, record, env)
        return []

    def warning_of(self, offset: int, appended_ms: int, env: pb.Envelope) -> Item:
        info = env.alert.infos[0] if env.alert.infos else pb.AlertInfo()
        severity = SEVERITIES.get(env.severity)
        expires = ms(env.expires_at) or ms(info.expires)
        return {
            "id": env.id,
            "offset": offset,
            "at": _when(env, appended_ms),
            "severity": severity,
            "colour": COLOURS.get(severity or ""),
            "event": info.event,
            "headline": info.headline or info.event,
            "issuer": info.sender_name or env.alert.sender or env.origin.agency,
            "agency": env.origin.agency,
            "region": env.region,
            "regions": self._counties(env),
            "expires": expires,
            "status": STATUSES.get(env.status, "actual"),
            "msg_type": (env.alert.msg_type or "Alert").lower(),
            "geometry": _area(env),
        }

    def _counties(self, env: pb.Envelope) -> list[str]:
        if self.boundaries is not None and env.HasField("geometry") and (env.geometry.polygons or env.geometry.circles):
            try:
                return sorted(self.boundaries.touching(env.geometry))
            except InvalidEnvelopeError:
                pass  # a shape the boundaries cannot place: fall back to the envelope's region
        if level_of(env.region) is Level.COUNTY:
            return [env.region]
        return [c for c in self.regions.subtree(env.region) if level_of(c) is Level.COUNTY]

    def _remove(self, offset: int, record: bytes, of: str, item_id: str) -> Change:
        return Change(offset, record, {"offset": offset, "type": "remove", "of": of, "id": item_id})

    def _alert(self, offset: int, appended_ms: int, record: bytes, env: pb.Envelope) -> list[Change]:
        changes: list[Change] = []
        item = self.warning_of(offset, appended_ms, env)
        self.steps_by_id[env.id] = _Step(
            env.id, offset, item["at"], record, None, item["msg_type"], item["headline"], tuple(env.references), None
        )
        for ref in env.references:
            old = self.warnings.pop(ref, None)
            if old is not None:
                changes.append(self._remove(offset, old.record, "warning", ref))
        if item["msg_type"] == "cancel":
            return changes
        self.warnings[env.id] = _Entry(record, item, offset)
        changes.append(Change(offset, record, {**item, "type": "warning"}))
        return changes

    def incident_of(self, offset: int, appended_ms: int, env: pb.Envelope) -> Item:
        inc = env.incident
        chain = inc.incident_id or env.id
        grade, grade_label = GRADES.get(inc.grade, (None, None))
        stage, stage_label = STAGES.get(inc.stage, (None, None))
        lat, lon = _point(env)
        overdue = self.overdue.get(chain)
        note = overdue[0] if overdue is not None and overdue[1] >= self.floor else None
        return {
            "id": env.id,
            "offset": offset,
            "at": _when(env, appended_ms),
            "chain": chain,
            "grade": grade,
            "grade_label": grade_label,
            "stage": stage,
            "stage_label": stage_label,
            "headline": inc.title or inc.event_name or chain,
            "region": env.region,
            "lat": lat,
            "lon": lon,
            "casualties": {
                "dead": inc.casualties.dead,
                "missing": inc.casualties.missing,
                "injured": inc.casualties.injured,
                "trapped": inc.casualties.trapped,
            },
            "overdue": note is not None,
            "overdue_note": note,
        }

    def _incident(self, offset: int, appended_ms: int, record: bytes, env: pb.Envelope) -> list[Change]:
        chain = env.incident.incident_id or env.id
        self.overdue.pop(chain, None)  # a new report meets what was due
        item = self.incident_of(offset, appended_ms, env)
        self.steps_by_id[env.id] = _Step(
            env.id, offset, item["at"], record, item["stage"], None, item["headline"], (), chain
        )
        changes: list[Change] = []
        old = self.incidents.get(chain)
        if old is not None and old.item["id"] != env.id:
            changes.append(self._remove(offset, old.record, "incident", old.item["id"]))
        self.incidents[chain] = _Entry(record, item, offset)
        changes.append(Change(offset, record, {**item, "type": "incident"}))
        return changes

    def _overdue(self, offset: int, appended_ms: int, record: bytes, env: pb.Envelope) -> list[Change]:
        """The node's own alert that a report is overdue: marks the incident, and is an alarm."""
        subject = env.attributes.get("yiwang.overdue.subject", "")
        info = env.alert.infos[0] if env.alert.infos else pb.AlertInfo()
        note = info.headline or info.event or "overdue"
        changes: list[Change] = []
        entry = self.incidents.get(subject)
        if env.attributes[OVERDUE_ATTRIBUTE] != "link" and subject:
            self.overdue[subject] = (note, offset)
            if entry is not None:
                entry.item = {**entry.item, "overdue": True, "overdue_note": note, "offset": offset}
                changes.append(Change(offset, entry.record, {**entry.item, "type": "incident"}))
        alarm = {
            "id": env.id,
            "offset": offset,
            "at": _when(env, appended_ms),
            "source": "node",  # the node's own report deadlines (gateway.reports)
            "level": "warn",
            "text": note,
            "region": env.region,
            "lat": None,
            "lon": None,
        }
        self.alarms.append(_Entry(record, alarm, offset))
        changes.append(Change(offset, record, {**alarm, "type": "alarm"}))
        return changes

    def _observation(self, offset: int, appended_ms: int, record: bytes, env: pb.Envelope) -> list[Change]:
        obs = env.observation
        changes: list[Change] = []
        at = _when(env, appended_ms)
        lat, lon = _point(env)
        crossing = env.attributes.get(ALARM_ATTRIBUTE)
        from_terminal = env.origin.system.startswith("edge:")
        if crossing is not None or (env.priority == 0 and from_terminal):
            details = [v for k, v in sorted(env.attributes.items()) if ".crossing." in k]
            who = obs.station_name or obs.station_id or env.origin.system or env.id
            level = "sos" if env.priority == 0 else ("alarm" if env.severity >= pb.ORANGE else "warn")
            text = f"{who}: {'; '.join(details) or crossing or 'P0'}"
            alarm = {
                "id": env.id,
                "offset": offset,
                "at": at,
                "source": "terminal" if from_terminal else "station",
                "level": level,
                "text": text,
                "region": env.region,
                "lat": lat,
                "lon": lon,
            }
            self.alarms.append(_Entry(record, alarm, offset))
            changes.append(Change(offset, record, {**alarm, "type": "alarm"}))
        # each metric's latest point: a single measurement, or the last point of a sampled series
        # (a block of thousands of samples is one point of the picture's chart, not thousands)
        latest = [(m.metric, m.value, m.unit, ms(m.at)) for m in obs.measurements]
        latest += [
            (s.metric, s.values[-1], s.unit, s.start_ms + sum(s.at_delta_ms)) for s in obs.series if len(s.values)
        ]
        if not obs.station_id or not latest:
            return changes
        station_id = obs.station_id
        values = [(metric, metric_name(env, metric), value, unit) for metric, value, unit, _ in latest]
        points = self.series.setdefault(station_id, deque(maxlen=MAX_SERIES_POINTS))
        points.append(_Point(at, offset, record, values))
        limits = self.limits.get(station_id, {})
        main_metric, main_value, main_unit, main_at = next((m for m in latest if m[0] in limits), latest[0])
        level = "normal"
        if crossing is not None:
            level = "alarm" if env.severity >= pb.ORANGE else "warn"
        old = self.stations.get(station_id)
        item = {
            "id": station_id,
            "name": obs.station_name or (old.item["name"] if old else station_id),
            "agency": env.origin.agency,
            "region": env.region,
            "lat": lat if lat is not None else (old.item["lat"] if old else None),
            "lon": lon if lon is not None else (old.item["lon"] if old else None),
            "metric": main_metric,
            "metric_name": metric_name(env, main_metric),
            "value": main_value,
            "unit": main_unit,
            "at": main_at or at,
            "level": level,
            "envelope": env.id,
        }
        named = offset if obs.station_name else (old.named if old else -1)
        placed = offset if lat is not None else (old.placed if old else -1)
        self.stations[station_id] = _Entry(record, item, offset, named, placed)
        changes.append(Change(offset, record, {**item, "offset": offset, "type": "station"}))
        return changes

    def _position(self, offset: int, appended_ms: int, record: bytes, env: pb.Envelope) -> list[Change]:
        pos = env.position
        lat, lon = _point(env)
        unit_id = pos.unit_id or env.origin.system or env.id
        item = {
            "id": unit_id,
            "callsign": pos.callsign or unit_id,
            "type": pos.unit_type,
            "region": env.region,
            "lat": lat,
            "lon": lon,
            "at": _when(env, appended_ms),
            "speed_mps": pos.speed_mps,
            "course_deg": pos.course_deg,
            "envelope": env.id,
        }
        self.units[unit_id] = _Entry(record, item, offset)
        return [Change(offset, record, {**item, "offset": offset, "type": "unit"})]

    def _heartbeat(self, offset: int, appended_ms: int, record: bytes, env: pb.Envelope) -> list[Change]:
        """A terminal's liveness, as the edge ingest records it in the log."""
        if "edge.link" not in env.attributes and "edge.session" not in env.attributes:
            return []  # another system's heartbeat: not a terminal
        beat = env.heartbeat
        subject = beat.subject or env.origin.system
        old = self.terminals.get(subject)
        session = env.attributes.get("edge.session")
        item = {
            "id": subject,
            "region": env.region,
            "lat": None,
            "lon": None,
            "link": env.attributes.get("edge.link") or None,
            "state": TERMINAL_STATES.get(beat.state, "stale"),
            "last_seen": _when(env, appended_ms),
            "session": int(session) if session and session.isdigit() else None,
            "drops": old.item["drops"] if old else {},
        }
        self.terminals[subject] = _Entry(record, item, offset)
        return [Change(offset, record, {**item, "offset": offset, "type": "terminal"})]

    # -- reading --------------------------------------------------------------------------------

    def _station(self, entry: _Entry) -> Item:
        """A station as a replay from ``floor`` makes it: a name or position from before is not known."""
        item = entry.item
        if entry.named < self.floor <= entry.since and item["name"] != item["id"]:
            item = {**item, "name": item["id"]}
        if entry.placed < self.floor <= entry.since and item["lat"] is not None:
            item = {**item, "lat": None, "lon": None}
        return item

    def snapshot(self, admits: Callable[[bytes], bool], at_ms: int, since_ms: int) -> dict[str, list[Item]]:
        """The lists of the picture a viewer may see (``admits`` over records), as of ``at_ms``."""
        floor = self.floor

        def pick(entries: Iterable[_Entry], *, recent: bool = True) -> list[Item]:
            return [
                e.item
                for e in entries
                if e.since >= floor and (not recent or e.item["at"] >= since_ms) and admits(e.record)
            ]

        def present(of: str, item: Item) -> bool:
            when = leaves_at(of, item)
            return when is None or when > at_ms

        warnings = [w for w in pick(self.warnings.values(), recent=False) if present("warning", w)]
        incidents = [i for i in pick(self.incidents.values()) if present("incident", i)]
        stations = [self._station(e) for e in self.stations.values() if e.since >= floor and admits(e.record)]
        return {
            "warnings": sorted(warnings, key=lambda w: -w["at"]),
            "incidents": sorted(incidents, key=lambda i: -i["at"]),
            "alarms": sorted(pick(self.alarms), key=lambda a: -a["at"]),
            # by id: the same order however the state came about (a checkpoint or a replay)
            "stations": sorted(stations, key=lambda s: s["id"]),
            "terminals": sorted(pick(self.terminals.values(), recent=False), key=lambda t: t["id"]),
            "units": sorted(pick(self.units.values()), key=lambda u: u["id"]),
        }

    def station(self, station_id: str) -> tuple[bytes, Item] | None:
        """A station's record and item as read from ``floor``; None when it is not in the picture."""
        entry = self.stations.get(station_id)
        if entry is None or entry.since < self.floor:
            return None
        return entry.record, self._station(entry)

    def points(self, station_id: str) -> list[_Point]:
        return [p for p in self.series.get(station_id, ()) if p.offset >= self.floor]

    def prune(self, floor: int) -> int:
        """Forgets the work of the envelopes before ``floor`` (a read from ``floor`` or later does not
        need it); returns how many items and steps went."""
        gone = 0
        for group in (self.warnings, self.incidents, self.stations, self.terminals, self.units):
            for key in [k for k, e in group.items() if e.since < floor]:
                del group[key]
                gone += 1
        while self.alarms and self.alarms[0].since < floor:
            self.alarms.popleft()
            gone += 1
        for station_id in list(self.series):
            points = self.series[station_id]
            while points and points[0].offset < floor:
                points.popleft()
            if not points:
                del self.series[station_id]
        for envelope_id in list(self.steps_by_id):  # in order of offset: stop at the first kept
            if self.steps_by_id[envelope_id].offset >= floor:
                break
            del self.steps_by_id[envelope_id]
            gone += 1
        for chain in [c for c, (_, at) in self.overdue.items() if at < floor]:
            del self.overdue[chain]
        self.origin = max(self.origin, floor)
        return gone

    def find(self, envelope_id: str) -> Item | None:
        """The picture's item made from an envelope, when it is still in the picture."""
        floor = self.floor
        entry = self.warnings.get(envelope_id)
        if entry is not None and entry.since >= floor:
            return entry.item
        step = self.steps_by_id.get(envelope_id)
        if step is not None and step.incident is not None:
            chain = self.incidents.get(step.incident)
            if chain is not None and chain.since >= floor and chain.item["id"] == envelope_id:
                return chain.item
        for entry in self.alarms:
            if entry.since >= floor and entry.item["id"] == envelope_id:
                return entry.item
        for group in (self.stations, self.units):
            for entry in group.values():
                if entry.since >= floor and entry.item.get("envelope") == envelope_id:
                    return self._station(entry) if group is self.stations else entry.item
        return None

    def chains(self) -> dict[str, str]:
        """Each warning's and incident's envelope (from ``floor`` on) -> its chain: an incident's reports
        by their incident id, a warning by the first of its references known from ``floor`` on."""
        chain_of: dict[str, str] = {}
        for step in self.steps_by_id.values():
            if step.offset < self.floor:
                continue
            if step.incident is not None:
                chain_of[step.id] = step.incident
            else:
                chain_of[step.id] = next((chain_of[r] for r in step.refs if r in chain_of), step.id)
        return chain_of

    def steps(self, envelope_id: str, admits: Callable[[bytes], bool]) -> list[Item]:
        chain_of = self.chains()
        chain = chain_of.get(envelope_id)
        if chain is None:
            return []
        out: list[Item] = []
        members = [s for s in self.steps_by_id.values() if s.offset >= self.floor and chain_of[s.id] == chain]
        for step in members[-MAX_HISTORY:]:
            if not admits(step.record):
                continue
            entry: Item = {"id": step.id, "at": step.at, "headline": step.headline}
            if step.stage is not None:
                entry["stage"] = step.stage
            if step.msg_type is not None:
                entry["msg_type"] = step.msg_type
            out.append(entry)
        return out


def leaves_at(of: str, item: Item) -> int | None:
    """When an item leaves the picture by the clock (Unix ms): a warning at its expiry, an incident
    ``FINAL_KEEP_MS`` after its final report; None for what stays until the log says otherwise."""
    if of == "warning":
        expires: int | None = item["expires"]
        return expires
    if of == "incident" and item["stage"] == "final":
        return int(item["at"]) + FINAL_KEEP_MS
    return None


def _area(env: pb.Envelope) -> dict[str, Any] | None:
    """A warning's area as GeoJSON (lon/lat), or None when it has no polygon or circle."""
    if not env.HasField("geometry") or not (env.geometry.polygons or env.geometry.circles):
        return None
    try:
        shapes = [s for s in footprint(env.geometry) if isinstance(s, Polygon | MultiPolygon)]
    except InvalidEnvelopeError:
        return None
    if not shapes:
        return None
    merged = shapes[0] if len(shapes) == 1 else shapely.union_all(shapes)
    return dict(mapping(merged))


# -- who sees what ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What one viewer sees: the policy's verdict on a record (as for gRPC Subscribe), and the
    viewer's own narrowing by region (a region also sees the warnings of the levels above it),
    kind, agency and minimum severity (of warnings and incidents)."""

    allows: Callable[[bytes], bool]
    region: str | None = None
    ancestors: frozenset[int] = frozenset()
    min_severity: int = 0
    regions: RegionTable | None = None
    _below: dict[int, bool] = field(default_factory=dict)

    def admits(self, record: bytes) -> bool:
        if not self.allows(record):
            return False
        if self.region is None and not self.min_severity:
            return True
        kind, severity, _, region = RECORD.unpack_from(record)[:4]
        if self.min_severity and kind in (pb.ALERT, pb.INCIDENT) and severity < self.min_severity:
            return False
        if self.region is not None and self.regions is not None and not (kind == pb.ALERT and region in self.ancestors):
            inside = self._below.get(region)
            if inside is None:
                inside = self._below[region] = self.regions.is_within(f"{region:06d}", self.region)
            return inside
        return True


def terminal_record(region: str, agency: str) -> bytes:
    """The selection record a terminal's heartbeat would carry: who may see the terminal."""
    nan = float("nan")
    return RECORD.pack(pb.HEARTBEAT, 0, pb.ACTUAL, int(region), agency.encode(), nan, nan, nan, nan, 0.0)


# -- checkpoints --------------------------------------------------------------------------------------

CHECKPOINT_VERSION = 3  # raise it whenever what the state keeps, or how envelopes change it, changes
CHECKPOINT_MAGIC = b"yiwang-picture-checkpoint "


class _Records:
    """The selection records of a checkpoint, kept apart from its JSON as one run of bytes (they are
    most of a state by size, and hex in JSON is slow to read back)."""

    def __init__(self, blob: bytes = b"") -> None:
        self.parts: list[bytes] = []
        self.blob = blob

    def put(self, record: bytes) -> int:
        self.parts.append(record)
        return len(self.parts) - 1

    def get(self, index: int) -> bytes:
        width = RECORD.size
        record = self.blob[index * width : (index + 1) * width]
        if len(record) != width:
            raise ValueError(f"record {index} is beyond the checkpoint's records")
        return record


def _entry_out(e: _Entry, records: _Records) -> list[Any]:
    return [records.put(e.record), e.item, e.since, e.named, e.placed]


def _entry_in(raw: list[Any], records: _Records) -> _Entry:
    return _Entry(records.get(raw[0]), raw[1], raw[2], raw[3], raw[4])


def dump_state(state: PictureState) -> tuple[dict[str, Any], bytes]:
    """The state as JSON-ready data and its records. Items are never changed in place (a change
    replaces the dict), so the data may be encoded in another thread while the state goes on."""
    r = _Records()

    def group(entries: dict[str, _Entry]) -> list[list[Any]]:
        return [[key, _entry_out(e, r)] for key, e in entries.items()]

    series = []
    for key, points in state.series.items():
        first = len(r.parts)
        r.parts.extend(p.record for p in points)  # a station's points' records follow each other
        # a station's readings mostly measure the same metrics: those once ("shapes"), then the numbers
        shapes: dict[tuple[tuple[str, str, str], ...], int] = {}
        kinds: list[int] = []
        numbers: list[float] = []
        for p in points:
            shape = tuple((m, n, u) for m, n, _, u in p.values)
            kinds.append(shapes.setdefault(shape, len(shapes)))
            numbers.extend(v for _, _, v, _ in p.values)
        ats, offsets = [p.at for p in points], [p.offset for p in points]
        series.append([key, first, ats, offsets, [list(map(list, s)) for s in shapes], kinds, numbers])
    data = {
        "warnings": [_entry_out(e, r) for e in state.warnings.values()],
        "incidents": group(state.incidents),
        "alarms": [_entry_out(e, r) for e in state.alarms],
        "stations": group(state.stations),
        "terminals": group(state.terminals),
        "units": group(state.units),
        "series": series,
        "steps": [
            [t.id, t.offset, t.at, r.put(t.record), t.stage, t.msg_type, t.headline, list(t.refs), t.incident]
            for t in state.steps_by_id.values()
        ],
        "overdue": [[chain, note, at] for chain, (note, at) in state.overdue.items()],
        "origin": state.origin,
    }
    return data, b"".join(r.parts)


def load_state(data: dict[str, Any], blob: bytes, state: PictureState) -> PictureState:
    """Fills an empty ``state`` from ``dump_state``'s data and records (KeyError, TypeError, ValueError
    or IndexError when they are malformed)."""
    r = _Records(blob)

    def group(raw: list[list[Any]]) -> dict[str, _Entry]:
        return {key: _entry_in(entry, r) for key, entry in raw}

    state.warnings = {e.item["id"]: e for e in (_entry_in(raw, r) for raw in data["warnings"])}
    state.incidents = group(data["incidents"])
    state.alarms = deque((_entry_in(raw, r) for raw in data["alarms"]), maxlen=MAX_ALARMS)
    state.stations = group(data["stations"])
    state.terminals = group(data["terminals"])
    state.units = group(data["units"])
    series: dict[str, deque[_Point]] = {}
    width = RECORD.size
    for key, first, ats, offsets, shapes, kinds, numbers in data["series"]:
        if not len(ats) == len(offsets) == len(kinds) or (first + len(ats)) * width > len(blob):
            raise ValueError(f"the series of station {key!r} is malformed")
        points: deque[_Point] = deque(maxlen=MAX_SERIES_POINTS)
        metrics = [[(m, n, u) for m, n, u in shape] for shape in shapes]
        j = 0
        for i, (at, offset, kind) in enumerate(zip(ats, offsets, kinds, strict=True)):
            values = []
            for m, n, u in metrics[kind]:
                values.append((m, n, numbers[j], u))
                j += 1
            points.append(_Point(at, offset, blob[(first + i) * width : (first + i + 1) * width], values))
        series[key] = points
    state.series = series
    state.steps_by_id = {
        t[0]: _Step(t[0], t[1], t[2], r.get(t[3]), t[4], t[5], t[6], tuple(t[7]), t[8]) for t in data["steps"]
    }
    state.overdue = {chain: (note, at) for chain, note, at in data["overdue"]}
    state.origin = int(data["origin"])
    return state


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A saved picture state: the work of the log's followed envelopes from ``origin`` up to ``offset``
    (exclusive); ``at_ms`` is when the last of them was appended."""

    path: Path
    offset: int
    origin: int
    at_ms: int
    size: int


class CheckpointError(Exception):
    """A checkpoint file that cannot be trusted; the message says why."""


class Checkpoints:
    """The picture's checkpoints in a folder of the node's data dir, at most ``max_count`` files and
    ``max_bytes`` in all (the oldest go first). Each file is written to a temporary name, flushed to
    disk and renamed, so a file either is whole or is not there; it carries its format version, the
    offsets and time it covers, what it was computed with (``fingerprint``) and a SHA-256 of its body,
    and a file that fails any check is ignored with a logged reason."""

    def __init__(self, folder: Path, *, fingerprint: str, max_count: int, max_bytes: int) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.known: list[Checkpoint] = []  # by offset
        # the last one read, decoded: the time slider goes back and forth between moments close together
        # (load_state shares its items, which are never changed in place, and builds everything else anew)
        self._last_read: tuple[Path, tuple[dict[str, Any], bytes]] | None = None

    def scan(self) -> list[Checkpoint]:
        """Reads the headers of the folder's checkpoints (not their bodies)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        found: list[Checkpoint] = []
        for path in sorted(self.folder.glob("picture-*.ckpt")):
            try:
                found.append(self._header(path)[0])
            except (OSError, CheckpointError) as exc:
                log.warning("picture_checkpoint_ignored", path=path.name, reason=str(exc))
        for stale in self.folder.glob("picture-*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)
        self.known = sorted(found, key=lambda c: c.offset)
        return self.known

    def _header(self, path: Path) -> tuple[Checkpoint, dict[str, Any]]:
        with path.open("rb") as f:
            line = f.readline(4096)
        if not line.startswith(CHECKPOINT_MAGIC) or not line.endswith(b"\n"):
            raise CheckpointError("not a picture checkpoint (bad first line)")
        try:
            head = json.loads(line[len(CHECKPOINT_MAGIC) :])
            version = head["version"]
            if version != CHECKPOINT_VERSION:
                raise CheckpointError(f"format version {version}, this node reads {CHECKPOINT_VERSION}")
            if head["fingerprint"] != self.fingerprint:
                raise CheckpointError("made with other station limits or boundaries than the node has now")
            point = Checkpoint(path, int(head["offset"]), int(head["origin"]), int(head["at_ms"]), path.stat().st_size)
            str(head["sha256"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"bad header: {exc}") from exc
        return point, head

    def read(self, point: Checkpoint) -> tuple[dict[str, Any], bytes]:
        """The checkpoint's state data; CheckpointError when it does not check out."""
        last = self._last_read
        if last is not None and last[0] == point.path:
            return last[1]
        try:
            raw = point.path.read_bytes()
            _, head = self._header(point.path)
        except OSError as exc:
            raise CheckpointError(f"cannot read: {exc}") from exc
        body = raw[raw.index(b"\n") + 1 :]
        if len(body) != head.get("body_bytes") or hashlib.sha256(body).hexdigest() != head["sha256"]:
            raise CheckpointError("the body is truncated or damaged (size or SHA-256 differs)")
        try:
            split = int.from_bytes(body[:8], "big")
            data: dict[str, Any] = json.loads(zlib.decompress(body[8 : 8 + split]))
            blob = zlib.decompress(body[8 + split :])
        except (zlib.error, ValueError) as exc:
            raise CheckpointError(f"the body does not decode: {exc}") from exc
        self._last_read = (point.path, (data, blob))
        return data, blob

    def write(self, state: tuple[dict[str, Any], bytes], offset: int, origin: int, at_ms: int) -> Checkpoint:
        """Writes one checkpoint atomically (blocking: run it in a thread), then keeps to the bounds."""
        data, blob = state
        text = zlib.compress(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(), 1)
        body = len(text).to_bytes(8, "big") + text + zlib.compress(blob, 1)
        head = {
            "version": CHECKPOINT_VERSION,
            "offset": offset,
            "origin": origin,
            "at_ms": at_ms,
            "written_ms": int(time.time() * 1000),
            "fingerprint": self.fingerprint,
            "body_bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
        }
        path = self.folder / f"picture-{offset:020d}.ckpt"
        if self._last_read is not None and self._last_read[0] == path:
            self._last_read = None
        temporary = path.with_suffix(".tmp")
        self.folder.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as f:
            f.write(CHECKPOINT_MAGIC + json.dumps(head).encode() + b"\n")
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        temporary.replace(path)
        with contextlib.suppress(OSError):  # make the rename itself durable where the system allows it
            folder = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        point = Checkpoint(path, offset, origin, at_ms, path.stat().st_size)
        self.known = sorted([c for c in self.known if c.offset != offset] + [point], key=lambda c: c.offset)
        self._bound()
        return point

    def drop_before(self, offset: int) -> None:
        """Removes the checkpoints of offsets the log no longer holds."""
        for point in [c for c in self.known if c.offset < offset]:
            self._remove(point)

    def _bound(self) -> None:
        while (
            self.known
            and (len(self.known) > self.max_count or sum(c.size for c in self.known) > self.max_bytes)
            and len(self.known) > 1
        ):
            self._remove(self.known[0])

    def _remove(self, point: Checkpoint) -> None:
        point.path.unlink(missing_ok=True)
        if self._last_read is not None and self._last_read[0] == point.path:
            self._last_read = None
        self.known = [c for c in self.known if c is not point]

    def best(self, floor: int, stop: int) -> list[Checkpoint]:
        """The checkpoints a build of the log from ``floor`` up to ``stop`` can start from, newest first."""
        return [c for c in reversed(self.known) if c.origin <= floor < c.offset <= stop]


# -- following the log --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointPolicy:
    """When the live picture saves its state, and how much of it is kept (see ``Checkpoints``)."""

    folder: Path
    every_envelopes: int = 1_000_000
    every_s: float = 600.0
    max_count: int = 160
    max_bytes: int = 2048 << 20


class Picture:
    """The live picture of the node's log, and replays of it at past moments."""

    def __init__(
        self,
        log_: Log,
        regions: RegionTable,
        *,
        window_s: float,
        boundaries: Callable[[], Boundaries | None] = lambda: None,
        limits: dict[str, dict[str, Limits]] | None = None,
        max_changes: int = 50_000,  # about 60 MB of recent changes; a resume from further back replays the log
        checkpoints: CheckpointPolicy | None = None,
    ) -> None:
        self.log = log_
        self.regions = regions
        self.window_s = window_s
        self._boundaries = boundaries
        self.limits = limits or {}
        self.max_changes = max_changes
        self.policy = checkpoints
        self.checkpoints: Checkpoints | None = None
        self.state = PictureState(None, regions, self.limits)
        self.position = 0  # the next offset the live picture will read
        self.floor = 0  # changes from this offset on are all in self._changes
        self._changes: list[Change] = []
        self._offsets: list[int] = []  # the offsets of _changes, for bisecting
        self._advanced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Task[None] | None = None
        self._saved_offset = 0  # the offset of the newest checkpoint written or loaded
        self._saved_at = time.monotonic()
        self._last_appended_ns = 0  # when the last envelope the live picture read was appended
        self._floor_checked = 0.0
        # what a replay and a checkpoint's load cost, measured as they happen (a first guess until then)
        self._replay_rate = 40_000.0  # envelopes/s
        self._load_rate = 2_000_000.0  # checkpoint bytes/s
        self._pruned_at = time.monotonic()
        self.closed = False

    def _fresh(self, boundaries: Boundaries | None) -> PictureState:
        return PictureState(boundaries, self.regions, self.limits)

    def _fingerprint(self, boundaries: Boundaries | None) -> str:
        limits = sorted((s, m, lim.low, lim.high) for s, by in self.limits.items() for m, lim in by.items())
        text = json.dumps([CHECKPOINT_VERSION, boundaries is not None, limits])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    async def start(self) -> None:
        boundaries = await asyncio.to_thread(self._boundaries)
        self.state = self._fresh(boundaries)
        floor = await self._window_start(time.time_ns())
        self.position = self.floor = floor
        self.state.origin = self.state.floor = floor
        if self.policy is not None and self.policy.max_count > 0:
            p = self.policy
            self.checkpoints = Checkpoints(
                p.folder, fingerprint=self._fingerprint(boundaries), max_count=p.max_count, max_bytes=p.max_bytes
            )
            await asyncio.to_thread(self.checkpoints.scan)
            for point in self.checkpoints.best(floor, self.log.next_offset):
                state = await self._load(point)  # (at start always: the rates are not measured yet)
                if state is not None:
                    state.floor = floor
                    self.state, self.position, self.floor = state, point.offset, point.offset
                    self._saved_offset = point.offset
                    self._last_appended_ns = point.at_ms * 1_000_000
                    break
        self._saved_at = time.monotonic()
        self._task = asyncio.create_task(self._follow(), name="picture-follow")
        log.info(
            "picture_following",
            from_offset=self.position,
            window_start=floor,
            window_h=self.window_s / 3600,
            from_checkpoint=self.position != floor,
        )

    async def _load(self, point: Checkpoint) -> PictureState | None:
        """The state of a checkpoint; None (with the reason logged) when it cannot be trusted."""
        assert self.checkpoints is not None
        checkpoints = self.checkpoints
        try:
            fresh = self._fresh(self.state.boundaries)
            return await asyncio.to_thread(lambda: load_state(*checkpoints.read(point), fresh))  # off the loop
        except CheckpointError as exc:
            reason = str(exc)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            reason = f"the state in it is malformed: {exc!r}"
        log.warning("picture_checkpoint_ignored", path=point.path.name, reason=reason)
        return None

    async def stop(self) -> None:
        self.closed = True
        self._wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._writing is not None:
            await asyncio.wait([self._writing])  # a checkpoint is written whole or not at all; let it finish
            self._writing = None
        if self.checkpoints is not None and self.position > self._saved_offset and not self.log.closed:
            await self._save()  # the next start reads only what comes after this

    async def _window_start(self, at_ns: int) -> int:
        return max(await self.log.offset_at(at_ns - int(self.window_s * 1e9)), self.log.oldest_offset, 1)

    def _wake(self) -> None:
        self._advanced.set()
        self._advanced = asyncio.Event()

    async def wait(self, position: int, timeout: float) -> None:
        """Returns once the live picture has read past ``position``, after ``timeout``, or on close."""
        if self.position > position or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._advanced.wait(), timeout)

    async def _follow(self) -> None:
        log_ = self.log
        while not log_.closed:
            if time.monotonic() - self._floor_checked >= 1.0:  # the live window moves with the clock
                self._floor_checked = time.monotonic()
                self.state.floor = await self._window_start(time.time_ns())
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:  # memory: forget what left every window
                self._pruned_at = time.monotonic()
                self.state.prune(await self._window_start(self._last_appended_ns))
            batches = await log_.read(self.position, 2000)
            if not batches:
                await log_.wait_beyond(self.position, 5.0)
                continue
            changes: list[Change] = []
            self.position = _apply(self.state, batches, self.position, None, changes)
            self._last_appended_ns = batches[-1].appended_ns
            self._keep(changes)
            self._wake()
            if self._due():
                if self._writing is not None:
                    # reading faster than checkpoints are written (catching up after a start): wait, so
                    # that they stay as close together as configured and the time slider stays quick
                    await asyncio.wait([self._writing])
                self._writing = asyncio.create_task(self._save(), name="picture-checkpoint")
                self._writing.add_done_callback(self._written)

    def _due(self) -> bool:
        if self.checkpoints is None or self.policy is None or self.position <= self._saved_offset:
            return False
        unsaved = self.position - self._saved_offset
        return unsaved >= self.policy.every_envelopes or time.monotonic() - self._saved_at >= self.policy.every_s

    def _written(self, task: asyncio.Task[None]) -> None:
        if self._writing is task:
            self._writing = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("picture_checkpoint_failed", error=repr(exc))

    async def _save(self) -> None:
        """Saves the live state as a checkpoint, after forgetting what no later window needs."""
        assert self.checkpoints is not None
        checkpoints = self.checkpoints
        # the floor of the window of the last envelope read: every later moment's window starts there
        # or later (a window of the wall clock could start after a past moment a replay asks for)
        floor = await self._window_start(self._last_appended_ns)
        # the follower may have gone on meanwhile: save where it is now (its floor is no lower)
        offset, at_ns = self.position, self._last_appended_ns
        self.state.prune(floor)
        data = dump_state(self.state)
        self._saved_offset, self._saved_at = offset, time.monotonic()
        started = time.perf_counter()
        try:
            point = await asyncio.to_thread(checkpoints.write, data, offset, self.state.origin, at_ns // 1_000_000)
            await asyncio.to_thread(checkpoints.drop_before, self.log.oldest_offset)
        except OSError as exc:
            log.error("picture_checkpoint_failed", offset=offset, error=str(exc))
            return
        log.info(
            "picture_checkpoint",
            offset=offset,
            bytes=point.size,
            seconds=round(time.perf_counter() - started, 3),
            kept=len(checkpoints.known),
        )

    def _keep(self, changes: list[Change]) -> None:
        self._changes.extend(changes)
        self._offsets.extend(c.offset for c in changes)
        excess = len(self._changes) - self.max_changes
        if excess > 0:
            # drop whole offsets only, so that a resume from ``floor`` gets every change of its offset
            cut = bisect.bisect_right(self._offsets, self._offsets[excess - 1])
            self.floor = self._offsets[cut - 1] + 1
            del self._changes[:cut], self._offsets[:cut]

    def changes_since(self, offset: int) -> tuple[list[Change], int] | None:
        """The live changes from ``offset`` on and where they end; None when ``offset`` is older than
        what the live picture keeps (see ``catch_up``)."""
        if offset < self.floor:
            return None
        start = bisect.bisect_left(self._offsets, offset)
        return self._changes[start:], max(self.position, offset)

    async def catch_up(self, offset: int) -> tuple[list[Change], int]:
        """The changes from ``offset`` up to the live picture's floor, replayed from the log."""
        state, _ = await self.build_at_offset(offset)
        changes: list[Change] = []
        position = offset
        while position < self.floor:
            batches = await self.log.read(position, 2000)
            if not batches:
                break
            position = _apply(state, batches, position, self.floor, changes)
        return changes, max(position, offset)

    async def build_at_offset(self, offset: int) -> tuple[PictureState, int]:
        """A fresh picture of the log up to ``offset`` (exclusive), from the window before it."""
        found = await self.log.read(offset, 1)
        at_ns = found[0].appended_ns if found else time.time_ns()
        return await self._build(await self._window_start(at_ns), offset), offset

    async def build_at(self, at_ms: int, *, from_checkpoints: bool | None = None) -> tuple[PictureState, int]:
        """The picture as it stood at ``at_ms``: the log up to the first offset appended after it, as
        read from the window before ``at_ms``. It starts from the newest checkpoint that fits when that
        is quicker than reading the window of the log (``from_checkpoints`` True: whenever one fits;
        False: never); the picture is the same either way."""
        at_ns = at_ms * 1_000_000
        stop = await self.log.offset_at(at_ns + 1)
        return await self._build(await self._window_start(at_ns), stop, from_checkpoints), stop

    def _quicker(self, point: Checkpoint, floor: int, stop: int) -> bool:
        """Whether loading ``point`` and reading on from it is expected to beat reading from ``floor``."""
        from_point = point.size / self._load_rate + (stop - point.offset) / self._replay_rate
        return from_point < (stop - floor) / self._replay_rate

    async def _build(self, floor: int, stop: int, from_checkpoints: bool | None = None) -> PictureState:
        state: PictureState | None = None
        position = floor
        if from_checkpoints is not False and self.checkpoints is not None:
            for point in self.checkpoints.best(floor, stop):
                if from_checkpoints is None and not self._quicker(point, floor, stop):
                    break
                began = time.perf_counter()
                state = await self._load(point)
                if state is not None:
                    self._load_rate = _rate(self._load_rate, point.size, time.perf_counter() - began)
                    position = point.offset
                    break
        if state is None:
            state = self._fresh(self.state.boundaries)
            state.origin = floor
        state.floor = floor
        began, start = time.perf_counter(), position
        while position < stop:
            batches = await self.log.read(position, 2000)
            if not batches:
                break
            position = _apply(state, batches, position, stop, None)
        if position - start >= 1000:  # too few to time
            self._replay_rate = _rate(self._replay_rate, position - start, time.perf_counter() - began)
        return state


def _rate(old: float, amount: float, seconds: float) -> float:
    """A running estimate of a rate, moved halfway towards what was just measured."""
    return (old + amount / max(seconds, 1e-6)) / 2


def _apply(
    state: PictureState, batches: list[StoredBatch], position: int, stop: int | None, out: list[Change] | None
) -> int:
    """Applies the followed kinds of ``batches`` from ``position`` (up to ``stop``); returns the next offset."""
    width = RECORD.size
    for batch in batches:
        first = batch.index_at(position)
        last = batch.count if stop is None else min(batch.count, max(stop - batch.first_offset, 0))
        if first >= last:
            if stop is not None and batch.first_offset >= stop:
                return position
            continue
        records = batch.records
        indexes = [i for i in range(first, last) if records[i * width] in FOLLOWED]
        appended_ms = batch.appended_ns // 1_000_000
        if indexes:
            for index, delivery in zip(indexes, batch.deliveries(indexes), strict=True):
                record = records[index * width : (index + 1) * width]
                changes = state.apply(delivery.offset, appended_ms, record, delivery.envelope)
                if out is not None:
                    out.extend(changes)
        position = batch.first_offset + last
        if stop is not None and position >= stop:
            return position
    return position
