"""Which envelopes a filter selects, decided from a compact record kept beside each envelope.

The log keeps, for every envelope, a fixed-size record of what filters look at (kind, severity,
status, region, agency, bounding box, time), so subscribers and queries select without parsing.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.errors import InvalidRequestError
from gateway.regions import Level, RegionTable, is_well_formed, level_of

#: kind, severity, status, region, agency (NUL-padded), min lat, min lon, max lat, max lon, observed.
RECORD = struct.Struct("<BBBxI24sddddd")
#: The record's leading fields (kind, severity, status, region, agency): what sharing policy decides on.
KEY = struct.Struct("<BBBxI24s")
KEY_BYTES = KEY.size
#: RECORD as a numpy structured type, for reading a batch's records as one array (the spare byte
#: after status is ``flags``, see FLAGS_AT).
RECORD_FIELDS = np.dtype(
    [
        ("kind", "u1"),
        ("severity", "u1"),
        ("status", "u1"),
        ("flags", "u1"),
        ("region", "<u4"),
        ("agency", "S24"),
        ("min_lat", "<f8"),
        ("min_lon", "<f8"),
        ("max_lat", "<f8"),
        ("max_lon", "<f8"),
        ("observed", "<f8"),
    ]
)
# What a record tuple holds past its key, for matchers that do not read it (Selector.by_key).
_PLACE_UNREAD = (math.nan, math.nan, math.nan, math.nan, math.nan)
_NAN = math.nan
_M_PER_DEG = 111_320.0

Record = tuple[int, int, int, int, bytes, float, float, float, float, float]

# The record's spare byte (after status) holds flags. Records written before the flags existed hold 0
# there, which claims nothing: a reader that finds a flag unset must look at the envelope itself.
FLAGS_AT: Final = 3
FLAG_UNSIGNED: Final = 0x01  # the envelope carries no signature (so it names no certificate)
FLAG_RELAYED: Final = 0x02  # it came from another node over a federation link


def with_flags(record: bytes, flags: int) -> bytes:
    """``record`` with ``flags`` set as well."""
    return record[:FLAGS_AT] + bytes((record[FLAGS_AT] | flags,)) + record[FLAGS_AT + 1 :]


def bounding_box(geometry: pb.Geometry) -> tuple[float, float, float, float] | None:
    """(min lat, min lon, max lat, max lon) of everything in the geometry, or None if it is empty."""
    if not geometry.polygons and not geometry.circles:
        if not geometry.HasField("point"):
            return None
        point = geometry.point
        return point.lat, point.lon, point.lat, point.lon
    lats: list[float] = []
    lons: list[float] = []
    if geometry.HasField("point"):
        lats.append(geometry.point.lat)
        lons.append(geometry.point.lon)
    for polygon in geometry.polygons:
        for point in polygon.points:
            lats.append(point.lat)
            lons.append(point.lon)
    for circle in geometry.circles:
        lat, lon = circle.center.lat, circle.center.lon
        dlat = circle.radius_m / _M_PER_DEG
        dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
        lats += (max(lat - dlat, -90.0), min(lat + dlat, 90.0))
        lons += (max(lon - dlon, -180.0), min(lon + dlon, 180.0))
    if not lats:
        return None
    return min(lats), min(lons), max(lats), max(lons)


def record_of(env: pb.Envelope, flags: int = 0) -> bytes:
    """The selection record of a validated envelope (``Validator.admit`` makes the same while it checks),
    with ``flags`` set besides the unsigned flag."""
    box = bounding_box(env.geometry) if env.HasField("geometry") else None
    if box is None:
        box = (_NAN, _NAN, _NAN, _NAN)
    when = env.observed_at if env.HasField("observed_at") else env.sent_at
    record = RECORD.pack(
        env.kind,
        env.severity,
        env.status,
        int(env.region),
        env.origin.agency.encode(),
        *box,
        when.seconds + when.nanos / 1e9,
    )
    if not env.provenance.HasField("signature"):
        flags |= FLAG_UNSIGNED
    return with_flags(record, flags) if flags else record


def region_rule(code: str) -> tuple[int, int]:
    """(divisor, quotient): a region code r lies in the subtree of ``code`` iff r // divisor == quotient."""
    value = int(code)
    level = level_of(code)
    if level is Level.PROVINCE:
        return 10_000, value // 10_000
    if level is Level.CITY:
        return 100, value // 100
    return 1, value


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled ``Filter``: ``select`` returns the indexes of matching records, or None for all.

    ``by_key``: ``match`` reads only a record's leading fields (``KEY``), so ``select`` decides once
    per distinct key of a batch (a batch usually repeats one or a few) instead of once per record.
    """

    match: Callable[[Record], bool] | None
    by_key: bool = False

    @classmethod
    def compile(
        cls,
        flt: gw.Filter,
        regions: RegionTable,
        field: str = "filter",
        allow: Callable[[Record], bool] | None = None,
        *,
        restricted: bool = False,
    ) -> Selector:
        """Compiles a filter; ``allow`` (when ``restricted``) is what the reader may see at all.

        A restricted reader with no ``allow`` may see nothing.
        """
        selector = cls._compile(flt, regions, field)
        if not restricted:
            return selector
        if allow is None:
            return cls(lambda _record: False, by_key=True)
        wanted = selector.match
        if wanted is None:
            return cls(allow, by_key=True)
        return cls(lambda record: allow(record) and wanted(record), by_key=selector.by_key)

    @classmethod
    def _compile(cls, flt: gw.Filter, regions: RegionTable, field: str) -> Selector:
        kinds = frozenset(flt.kinds)
        for kind in kinds:
            if kind not in pb.Kind.values() or kind == pb.KIND_UNSPECIFIED:
                raise InvalidRequestError(f"{field}.kinds", f"unknown kind {kind}")
        statuses = frozenset(flt.statuses)
        for status in statuses:
            if status not in pb.Status.values() or status == pb.STATUS_UNSPECIFIED:
                raise InvalidRequestError(f"{field}.statuses", f"unknown status {status}")
        rules: list[tuple[int, int]] = []
        for i, code in enumerate(flt.regions):
            if not is_well_formed(code) or code not in regions:
                raise InvalidRequestError(f"{field}.regions[{i}]", f"{code[:20]!r} is not a known GB/T 2260 code")
            rules.append(region_rule(code))
        agencies = frozenset(a.encode().ljust(24, b"\0")[:24] for a in flt.agencies)
        min_severity = flt.min_severity
        if min_severity not in pb.Severity.values():
            raise InvalidRequestError(f"{field}.min_severity", f"unknown severity {min_severity}")
        box: tuple[float, float, float, float] | None = None
        if flt.HasField("bbox"):
            b = flt.bbox
            box = (b.min_lat, b.min_lon, b.max_lat, b.max_lon)
            if not all(math.isfinite(v) for v in box):
                raise InvalidRequestError(f"{field}.bbox", "corners must be finite numbers")
            if not (-90 <= b.min_lat <= b.max_lat <= 90 and -180 <= b.min_lon <= b.max_lon <= 180):
                raise InvalidRequestError(
                    f"{field}.bbox",
                    "needs -90 <= min_lat <= max_lat <= 90 and -180 <= min_lon <= max_lon <= 180",
                )
        if not (kinds or statuses or rules or agencies or min_severity or box):
            return cls(None)

        def match(rec: Record) -> bool:
            kind, severity, status, region, agency, lat0, lon0, lat1, lon1, _ = rec
            if kinds and kind not in kinds:
                return False
            if statuses and status not in statuses:
                return False
            if severity < min_severity:
                return False
            if agencies and agency not in agencies:
                return False
            if rules and not any(region // div == q for div, q in rules):
                return False
            # NaN (no geometry) fails every comparison, so an envelope without geometry never matches a box.
            return box is None or (lat0 <= box[2] and lat1 >= box[0] and lon0 <= box[3] and lon1 >= box[1])

        return cls(match, by_key=box is None)

    def allows(self, record: bytes) -> bool:
        return self.match is None or self.match(RECORD.unpack(record))

    def select(self, records: bytes) -> list[int] | None:
        """Indexes of the matching records, or None when the filter matches everything."""
        match = self.match
        if match is None:
            return None
        if not self.by_key or not records:
            return [i for i, rec in enumerate(RECORD.iter_unpack(records)) if match(rec)]
        keys = [records[start : start + KEY_BYTES] for start in range(0, len(records), RECORD.size)]
        verdicts = {key: match(KEY.unpack(key) + _PLACE_UNREAD) for key in set(keys)}
        if all(verdicts.values()):
            return None
        return [i for i, key in enumerate(keys) if verdicts[key]]
