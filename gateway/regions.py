"""GB/T 2260 administrative division codes: which codes exist, and how they nest.

A code has six digits: province (41 0000), prefecture-level city (4101 00), county-level unit
(410102). A county hangs under its city (first four digits + ``00``) where that city exists; the
province-administered county-level units (``4190xx`` such as 419001 济源市) hang directly under the
province.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from importlib import resources


class Level(enum.StrEnum):
    PROVINCE = "province"
    CITY = "city"
    COUNTY = "county"


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    name: str
    level: Level


def level_of(code: str) -> Level:
    """The level a well-formed six-digit code denotes by its shape."""
    if code.endswith("0000"):
        return Level.PROVINCE
    if code.endswith("00"):
        return Level.CITY
    return Level.COUNTY


def is_well_formed(code: str) -> bool:
    return len(code) == 6 and code.isascii() and code.isdigit()


class RegionTable:
    """The known region codes with parent/child lookups."""

    def __init__(self, rows: dict[str, str]) -> None:
        self._regions = {code: Region(code, name, level_of(code)) for code, name in rows.items()}
        self._children: dict[str, list[str]] = {}
        for code in sorted(self._regions):
            parent = self.parent(code)
            if parent is not None:
                self._children.setdefault(parent, []).append(code)

    @classmethod
    def parse(cls, text: str) -> RegionTable:
        """Reads ``code name`` lines; a line that is not of that shape is an error naming it."""
        rows: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            code, _, name = line.strip().partition(" ")
            if not is_well_formed(code) or not name:
                raise ValueError(f"region table line {number}: expected 'CODE NAME', got {line!r}")
            rows[code] = name.strip()
        return cls(rows)

    def __contains__(self, code: object) -> bool:
        return code in self._regions

    @property
    def codes(self) -> Collection[str]:
        """The known codes, for membership tests on hot paths (``in`` on the table costs a method call)."""
        return self._regions.keys()

    def __len__(self) -> int:
        return len(self._regions)

    def get(self, code: str) -> Region | None:
        return self._regions.get(code)

    def name(self, code: str) -> str:
        region = self._regions.get(code)
        return region.name if region else code

    def parent(self, code: str) -> str | None:
        """The code of the unit directly above, or None for a province or an unknown code."""
        if code not in self._regions:
            return None
        level = level_of(code)
        province = code[:2] + "0000"
        if level is Level.PROVINCE:
            return None
        if level is Level.CITY:
            return province if province in self._regions else None
        city = code[:4] + "00"
        if city in self._regions:
            return city
        return province if province in self._regions else None

    def children(self, code: str) -> list[str]:
        return list(self._children.get(code, ()))

    def ancestors(self, code: str) -> list[str]:
        """Parent, grandparent, ... up to the province."""
        chain: list[str] = []
        parent = self.parent(code)
        while parent is not None:
            chain.append(parent)
            parent = self.parent(parent)
        return chain

    def is_within(self, code: str, ancestor: str) -> bool:
        """Whether ``code`` is ``ancestor`` or lies in its subtree."""
        return code == ancestor or ancestor in self.ancestors(code)

    def subtree(self, code: str) -> list[str]:
        """``code`` and every code below it."""
        out = [code]
        for child in self.children(code):
            out.extend(self.subtree(child))
        return out


@cache
def default_table() -> RegionTable:
    """The table shipped with the gateway (GB/T 2260, 2024 edition)."""
    text = (resources.files("gateway") / "data" / "gbt2260-2024.txt").read_text(encoding="utf-8")
    return RegionTable.parse(text)
