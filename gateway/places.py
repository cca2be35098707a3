"""The region of a point: the nearest representative point of a GB/T 2260 division.

``data/places.csv`` holds one point per county-level and higher division (see data/SOURCES.md).
Nearest-point is what an adapter needs for a source that gives coordinates but no region code
(an epicentre, a station, a warning area's centre); it is not a boundary test, so callers also
get the distance and decide how far is too far.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources

from gateway.regions import Level, level_of

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class Place:
    code: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Nearest:
    code: str
    distance_km: float


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in kilometres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class Places:
    def __init__(self, places: list[Place]) -> None:
        self._counties = [p for p in places if level_of(p.code) is Level.COUNTY]
        self._by_code = {p.code: p for p in places}

    @classmethod
    def parse(cls, text: str) -> Places:
        places = []
        for number, line in enumerate(text.splitlines()[1:], start=2):
            code, lon, lat = line.split(",")
            if not (-90 <= float(lat) <= 90 and -180 <= float(lon) <= 180):
                raise ValueError(f"places line {number}: coordinates out of range")
            places.append(Place(code, float(lat), float(lon)))
        return cls(places)

    def __len__(self) -> int:
        return len(self._by_code)

    def point_of(self, code: str) -> Place | None:
        return self._by_code.get(code)

    def nearest(self, lat: float, lon: float, within: str = "") -> Nearest:
        """The county-level division whose point is nearest, optionally only those whose code
        starts with ``within`` (a province "41" or a city "4101")."""
        if not (math.isfinite(lat) and math.isfinite(lon)):
            raise ValueError("coordinates must be finite numbers")
        best, best_d = "", math.inf
        coslat = math.cos(math.radians(lat))
        for place in self._counties:  # a cheap planar estimate first, haversine for the few close ones
            if within and not place.code.startswith(within):
                continue
            dy = place.lat - lat
            dx = ((place.lon - lon + 180) % 360 - 180) * coslat
            rough = dx * dx + dy * dy
            if rough < best_d:
                best, best_d = place.code, rough
        if not best:
            raise ValueError(f"no place within {within!r}")
        point = self._by_code[best]
        return Nearest(best, distance_km(lat, lon, point.lat, point.lon))


@functools.cache
def default_places() -> Places:
    return Places.parse(resources.files("gateway").joinpath("data/places.csv").read_text(encoding="utf-8"))
