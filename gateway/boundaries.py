"""County boundaries of Henan: which county a point lies in, which counties a warning's shape touches.

``data/henan-counties.geojson`` holds one boundary per county-level code of Henan in the 2024
GB/T 2260 table (see data/SOURCES.md; ``data/build_boundaries.py`` regenerates it). Coordinates are
WGS 84 degrees and shapes are planar in longitude/latitude, as in CAP and GeoJSON; a circle is
turned into a polygon that encloses it, so a county the circle only grazes is still counted.

The source's borders are drawn on a grid of 1/1024 degree (about 100 m): a point within that
distance of a border may be given the neighbour, and three small gaps of the source (the largest
about 2 km² inside 浉河区) belong to no county.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources

import numpy as np
import shapely
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Point, Polygon, box, shape
from shapely.geometry.base import BaseGeometry
from yiwang.v1 import envelope_pb2 as pb

from gateway.errors import InvalidEnvelopeError

EARTH_RADIUS_M = 6_371_008.8
CIRCLE_VERTICES = 64

# County-level codes of the 2024 table that have no boundary in the data file, with the reason.
# Empty: every one has a boundary. build_boundaries.py refuses to write a file that leaves out a
# code not listed here.
NO_BOUNDARY: Mapping[str, str] = {}

Areal = Polygon | MultiPolygon


class Boundaries:
    """The county boundaries, indexed for point and shape look-ups."""

    def __init__(self, counties: Mapping[str, tuple[str, Areal]]) -> None:
        """``counties`` maps each code to its name and shape (lon/lat degrees)."""
        self._codes = sorted(counties)
        self._names = {code: counties[code][0] for code in self._codes}
        self._by_code = {code: counties[code][1] for code in self._codes}
        self._shapes = np.array([self._by_code[code] for code in self._codes], dtype=object)
        shapely.prepare(self._shapes)  # indexes each border once, for the point tests of region_of
        self._tree = shapely.STRtree(self._shapes)

    @classmethod
    def parse(cls, text: str) -> Boundaries:
        """Reads a GeoJSON FeatureCollection whose features carry ``code`` and ``name`` properties."""
        counties: dict[str, tuple[str, Areal]] = {}
        for number, feature in enumerate(json.loads(text)["features"]):
            code, name = feature["properties"]["code"], feature["properties"]["name"]
            geometry = shape(feature["geometry"])
            if not isinstance(geometry, Polygon | MultiPolygon) or not geometry.is_valid:
                raise ValueError(f"boundary feature {number} ({code}): not a valid polygon or multipolygon")
            if code in counties:
                raise ValueError(f"boundary feature {number}: code {code} appears twice")
            counties[code] = (name, geometry)
        return cls(counties)

    def __len__(self) -> int:
        return len(self._codes)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def codes(self) -> list[str]:
        """The codes that have a boundary, in order."""
        return list(self._codes)

    def name(self, code: str) -> str:
        """The county's name, or the code itself for a code without a boundary."""
        return self._names.get(code, code)

    def polygon(self, code: str) -> Areal | None:
        """The county's shape (lon/lat degrees), or None for a code without a boundary."""
        return self._by_code.get(code)

    def region_of(self, lat: float, lon: float) -> str | None:
        """The code of the county whose boundary contains the point, None outside Henan.

        A point on a shared border (or in a sliver where the source's neighbours overlap) is
        given the lowest of the codes, so the answer does not depend on the order of the index.
        """
        if not (math.isfinite(lat) and math.isfinite(lon)):
            raise ValueError("coordinates must be finite numbers")
        candidates = self._tree.query(Point(lon, lat))
        if not len(candidates):
            return None
        inside = candidates[shapely.intersects_xy(self._shapes[candidates], lon, lat)]
        return self._codes[int(inside.min())] if len(inside) else None

    def touching(self, geometry: pb.Geometry) -> set[str]:
        """The codes of the counties that the geometry's point, polygons or circles intersect."""
        return self.touching_shapes(footprint(geometry))

    def touching_shapes(self, shapes: Iterable[BaseGeometry]) -> set[str]:
        """The codes of the counties that any of the shapes (lon/lat degrees) intersect."""
        parts = np.array(list(shapes), dtype=object)
        if not len(parts):
            return set()
        # The index prepares each part, not the counties: a prepared county tested against a large
        # warning polygon costs tens of microseconds, the prepared part against a county far less.
        pairs = self._tree.query(parts, predicate="intersects")
        return {self._codes[int(index)] for index in np.unique(pairs[1])}


def footprint(geometry: pb.Geometry) -> list[BaseGeometry]:
    """The geometry's point, polygons and circles as shapes in lon/lat degrees.

    A self-crossing polygon is repaired (a bow-tie becomes its two triangles) rather than refused:
    the area it outlines is what a warning means. Raises InvalidEnvelopeError naming the part that
    cannot be a shape at all.
    """
    parts: list[BaseGeometry] = []
    if geometry.HasField("point"):
        lat, lon = geometry.point.lat, geometry.point.lon
        _check_position("point", lat, lon)
        parts.append(Point(lon, lat))
    for i, polygon in enumerate(geometry.polygons):
        parts.append(_polygon(f"polygons[{i}]", polygon))
    for i, circle in enumerate(geometry.circles):
        field = f"circles[{i}]"
        if not circle.HasField("center"):
            raise InvalidEnvelopeError(f"{field}.center", "a circle needs a centre")
        _check_position(f"{field}.center", circle.center.lat, circle.center.lon)
        radius = circle.radius_m
        if not (math.isfinite(radius) and radius >= 0):
            raise InvalidEnvelopeError(f"{field}.radius_m", f"{radius} is not a radius in metres")
        parts.append(circle_shape(circle.center.lat, circle.center.lon, radius))
    return parts


def _check_position(field: str, lat: float, lon: float) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        raise InvalidEnvelopeError(field, f"({lat}, {lon}) is not a WGS 84 position in degrees")


def _polygon(field: str, polygon: pb.Polygon) -> BaseGeometry:
    points = [(p.lon, p.lat) for p in polygon.points]
    for j, (lon, lat) in enumerate(points):
        _check_position(f"{field}.points[{j}]", lat, lon)
    if len(set(points)) < 3:
        raise InvalidEnvelopeError(field, f"a polygon needs 3 distinct points, got {len(set(points))}")
    ring = Polygon(points)
    if ring.is_valid:
        return ring
    return shapely.make_valid(ring, method="structure", keep_collapsed=True)


def circle_shape(lat: float, lon: float, radius_m: float) -> BaseGeometry:
    """A shape in lon/lat degrees that encloses the circle of ``radius_m`` metres on the sphere.

    Its vertices lie on a circle slightly larger than the one given, so that the straight edges
    between them stay outside it. A circle around a pole, or larger than a hemisphere, is built so
    that it still covers the right longitudes; copies shifted by 360 degrees cover a circle that
    crosses the antimeridian.
    """
    if radius_m <= 0:
        return Point(lon, lat)
    angle = radius_m / EARTH_RADIUS_M
    if angle >= math.pi:
        return box(-540, -90, 540, 90)
    if angle > math.pi / 2:
        # More than a hemisphere: everything but a circle around the antipode, which is kept
        # inside its own circle so that what remains still covers ours.
        hole = _cap(-lat, lon + 180 if lon <= 0 else lon - 180, math.pi - angle, enclose=False)
        return box(-540, -90, 540, 90).difference(hole)
    return _cap(lat, lon, angle, enclose=True)


def _cap(lat: float, lon: float, angle: float, *, enclose: bool) -> BaseGeometry:
    """A circle of at most a hemisphere (``angle`` in radians) around (lat, lon) as a lon/lat shape."""
    if enclose:
        angle = min(angle / math.cos(math.pi / CIRCLE_VERTICES), math.pi / 2)
    phi, lam = math.radians(lat), math.radians(lon)
    bearing = np.linspace(0.0, 2 * math.pi, CIRCLE_VERTICES + 1)
    sin_lat = np.clip(math.sin(phi) * math.cos(angle) + math.cos(phi) * math.sin(angle) * np.cos(bearing), -1, 1)
    # The destination formula with cos(lat) divided out of both arguments, which keeps it exact
    # for a centre at a pole.
    east = np.sin(bearing) * math.sin(angle)
    north = math.cos(angle) * math.cos(phi) - math.sin(phi) * math.sin(angle) * np.cos(bearing)
    lons = lam + np.arctan2(east, north)
    # Continuous longitudes, so that a circle across the antimeridian stays one ring.
    xs, ys = np.unwrap(np.degrees(lons), period=360.0), np.degrees(np.arcsin(sin_lat))
    ring = np.column_stack([xs, ys])
    if abs(xs[-1] - xs[0]) > 180:
        # The ring went once around the pole inside it: close it along that pole.
        pole = 90.0 if lat + math.degrees(angle) > 90 else -90.0
        ring = np.vstack([ring, [[xs[-1], pole], [xs[0], pole], ring[0]]])
    cap: BaseGeometry = Polygon(ring)
    if not cap.is_valid:
        cap = shapely.make_valid(cap, method="structure", keep_collapsed=False)
    west, _, east_most, _ = cap.bounds
    if west >= -180 and east_most <= 180:
        return cap
    return shapely.union_all([translate(cap, xoff=shift) for shift in (-360.0, 0.0, 360.0)])


@functools.cache
def default_boundaries() -> Boundaries:
    """The boundaries shipped with the gateway, loaded once."""
    text = resources.files("gateway").joinpath("data/henan-counties.geojson").read_text(encoding="utf-8")
    return Boundaries.parse(text)
