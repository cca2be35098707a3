"""Filters select from the compact records: regions by subtree, kinds, agencies, severity, status, bbox."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.errors import InvalidRequestError
from gateway.regions import default_table
from gateway.selection import (
    FLAG_RELAYED,
    FLAG_UNSIGNED,
    FLAGS_AT,
    RECORD,
    RECORD_FIELDS,
    Selector,
    bounding_box,
    record_of,
    region_rule,
    with_flags,
)
from gateway.validation import Validator
from tests import factories

TABLE = default_table()
SENT_S = 1_750_000_000


def envelope(
    region: str = "410102",
    *,
    kind: pb.Kind = pb.OBSERVATION,
    agency: str = "water",
    severity: pb.Severity = pb.SEVERITY_UNSPECIFIED,
    status: pb.Status = pb.ACTUAL,
    geometry: pb.Geometry | None = None,
) -> pb.Envelope:
    env = pb.Envelope(id="e", kind=kind, region=region, severity=severity, status=status)
    env.origin.agency = agency
    env.sent_at.FromSeconds(SENT_S)
    if geometry is not None:
        env.geometry.CopyFrom(geometry)
    return env


def point(lat: float, lon: float) -> pb.Geometry:
    return pb.Geometry(point=pb.Point(lat=lat, lon=lon))


def polygon(lat0: float, lon0: float, lat1: float, lon1: float) -> pb.Geometry:
    corners = [(lat0, lon0), (lat0, lon1), (lat1, lon1), (lat1, lon0), (lat0, lon0)]
    return pb.Geometry(polygons=[pb.Polygon(points=[pb.Point(lat=a, lon=o) for a, o in corners])])


def circle(lat: float, lon: float, radius_m: float) -> pb.Geometry:
    return pb.Geometry(circles=[pb.Circle(center=pb.Point(lat=lat, lon=lon), radius_m=radius_m)])


def unknown(value: int) -> Any:
    """An enum number the schema does not define (proto3 enums are open, so a peer can send one)."""
    return value


def select(flt: gw.Filter, envs: list[pb.Envelope]) -> list[int]:
    """The indexes a filter selects (``select`` answers None when it selects every record)."""
    chosen = Selector.compile(flt, TABLE).select(b"".join(record_of(e) for e in envs))
    return list(range(len(envs))) if chosen is None else chosen


def compile_error(flt: gw.Filter, field: str = "filter") -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        Selector.compile(flt, TABLE, field)
    return info.value


REGIONS = ["410102", "410202", "419001", "410000", "410100", "410122", "420102", "110101"]
ALL_REGIONS = [envelope(code) for code in REGIONS]


def regions_selected(*codes: str) -> list[str]:
    selected = select(gw.Filter(regions=list(codes)), ALL_REGIONS)
    assert selected is not None
    return [REGIONS[i] for i in selected]


def test_province_matches_its_whole_subtree() -> None:
    assert regions_selected("410000") == ["410102", "410202", "419001", "410000", "410100", "410122"]


def test_city_matches_its_counties_only() -> None:
    assert regions_selected("410100") == ["410102", "410100", "410122"]  # not 410202 (开封), not 419001 (济源)


def test_county_matches_exactly() -> None:
    assert regions_selected("410102") == ["410102"]
    assert regions_selected("419001") == ["419001"]


def test_several_regions_are_a_union() -> None:
    assert regions_selected("410202", "420102", "110000") == ["410202", "420102", "110101"]


def test_region_rule() -> None:
    assert region_rule("410000") == (10_000, 41)
    assert region_rule("410100") == (100, 4101)
    assert region_rule("410102") == (1, 410102)


@given(st.sampled_from(sorted(TABLE.subtree("410000"))), st.sampled_from(sorted(TABLE.subtree("410000"))))
def test_region_filter_agrees_with_the_table(code: str, region: str) -> None:
    """For every Henan filter code and envelope region: selected iff the table puts it in the subtree."""
    selected = select(gw.Filter(regions=[code]), [envelope(region)])
    assert selected == ([0] if TABLE.is_within(region, code) else [])


def test_kinds() -> None:
    envs = [envelope(kind=k) for k in (pb.ALERT, pb.OBSERVATION, pb.INCIDENT, pb.ALERT, pb.HEARTBEAT)]
    assert select(gw.Filter(kinds=[pb.ALERT]), envs) == [0, 3]
    assert select(gw.Filter(kinds=[pb.INCIDENT, pb.HEARTBEAT]), envs) == [2, 4]
    assert select(gw.Filter(kinds=[pb.COMMAND]), envs) == []


def test_agencies() -> None:
    envs = [envelope(agency=a) for a in ("water", "meteorology", "ecology_environment", "water", "fire_rescue")]
    assert select(gw.Filter(agencies=["water"]), envs) == [0, 3]
    assert select(gw.Filter(agencies=["meteorology", "fire_rescue"]), envs) == [1, 4]
    assert select(gw.Filter(agencies=["wat"]), envs) == []  # whole codes, not prefixes
    assert select(gw.Filter(agencies=["police"]), envs) == []


def test_min_severity() -> None:
    envs = [envelope(severity=s) for s in (pb.SEVERITY_UNSPECIFIED, pb.BLUE, pb.YELLOW, pb.ORANGE, pb.RED)]
    assert select(gw.Filter(min_severity=pb.ORANGE), envs) == [3, 4]
    assert select(gw.Filter(min_severity=pb.BLUE), envs) == [1, 2, 3, 4]
    assert select(gw.Filter(min_severity=pb.RED), envs) == [4]


def test_statuses() -> None:
    envs = [envelope(status=s) for s in (pb.ACTUAL, pb.EXERCISE, pb.TEST, pb.ACTUAL)]
    assert select(gw.Filter(statuses=[pb.ACTUAL]), envs) == [0, 3]
    assert select(gw.Filter(statuses=[pb.EXERCISE, pb.TEST]), envs) == [1, 2]


def test_all_conditions_must_hold() -> None:
    envs = [
        envelope("410102", kind=pb.ALERT, agency="meteorology", severity=pb.RED),
        envelope("410202", kind=pb.ALERT, agency="meteorology", severity=pb.RED),
        envelope("410102", kind=pb.OBSERVATION, agency="meteorology", severity=pb.RED),
        envelope("410102", kind=pb.ALERT, agency="water", severity=pb.RED),
        envelope("410102", kind=pb.ALERT, agency="meteorology", severity=pb.BLUE),
        envelope("410102", kind=pb.ALERT, agency="meteorology", severity=pb.RED, status=pb.TEST),
    ]
    flt = gw.Filter(
        regions=["410100"],
        kinds=[pb.ALERT],
        agencies=["meteorology"],
        min_severity=pb.ORANGE,
        statuses=[pb.ACTUAL],
    )
    assert select(flt, envs) == [0]


ZHENGZHOU = gw.BoundingBox(min_lat=34.6, min_lon=113.5, max_lat=34.9, max_lon=113.8)


@pytest.mark.parametrize(
    ("geometry", "matches"),
    [
        (point(34.75, 113.65), True),
        (point(34.6, 113.5), True),  # on the corner: touching counts
        (point(35.0, 113.65), False),
        (point(34.75, 112.0), False),
        (polygon(34.5, 113.4, 34.65, 113.55), True),  # overlaps a corner
        (polygon(34.0, 113.0, 35.0, 114.0), True),  # contains the box
        (polygon(34.7, 113.6, 34.8, 113.7), True),  # inside the box
        (polygon(34.0, 113.0, 34.5, 113.4), False),
        (circle(34.55, 113.65, 10_000.0), True),  # centre outside, reaches in (10 km ~ 0.09 degrees)
        (circle(34.55, 113.65, 1_000.0), False),
        (circle(34.75, 113.65, 0.0), True),
        (pb.Geometry(), False),  # set but empty
        (None, False),  # no geometry at all
    ],
)
def test_bbox(geometry: pb.Geometry | None, matches: bool) -> None:
    assert select(gw.Filter(bbox=ZHENGZHOU), [envelope(geometry=geometry)]) == ([0] if matches else [])


def test_envelopes_without_geometry_never_match_a_box() -> None:
    world = gw.BoundingBox(min_lat=-90, min_lon=-180, max_lat=90, max_lon=180)
    envs = [envelope(), envelope(geometry=pb.Geometry()), envelope(geometry=point(0, 0))]
    assert select(gw.Filter(bbox=world), envs) == [2]
    assert Selector.compile(gw.Filter(), TABLE).select(b"".join(record_of(e) for e in envs)) is None


def test_a_box_at_the_origin_is_a_filter() -> None:
    """An all-zero box is set, so it filters (it is not mistaken for "no box")."""
    envs = [envelope(geometry=point(0, 0)), envelope(geometry=point(34.75, 113.65))]
    assert select(gw.Filter(bbox=gw.BoundingBox()), envs) == [0]


@pytest.mark.parametrize(
    "flt",
    [
        gw.Filter(),
        gw.Filter(min_severity=pb.SEVERITY_UNSPECIFIED),
        gw.Filter(kinds=[], regions=[], agencies=[], statuses=[]),
    ],
)
def test_the_empty_filter_matches_all(flt: gw.Filter) -> None:
    selector = Selector.compile(flt, TABLE)
    assert selector.match is None
    assert selector.select(b"".join(record_of(e) for e in ALL_REGIONS)) is None


def test_select_on_no_records() -> None:
    assert Selector.compile(gw.Filter(kinds=[pb.ALERT]), TABLE).select(b"") == []


@pytest.mark.parametrize(
    ("flt", "field", "reason"),
    [
        (gw.Filter(regions=["419999"]), "filter.regions[0]", "'419999' is not a known GB/T 2260 code"),
        (gw.Filter(regions=["410000", "4101"]), "filter.regions[1]", "not a known GB/T 2260 code"),
        (gw.Filter(regions=[""]), "filter.regions[0]", "not a known"),
        (gw.Filter(regions=["abcdef"]), "filter.regions[0]", "not a known"),
        (gw.Filter(kinds=[unknown(99)]), "filter.kinds", "unknown kind 99"),
        (gw.Filter(kinds=[pb.ALERT, pb.KIND_UNSPECIFIED]), "filter.kinds", "unknown kind 0"),
        (gw.Filter(statuses=[unknown(7)]), "filter.statuses", "unknown status 7"),
        (gw.Filter(statuses=[pb.STATUS_UNSPECIFIED]), "filter.statuses", "unknown status 0"),
        (gw.Filter(min_severity=unknown(9)), "filter.min_severity", "unknown severity 9"),
        (gw.Filter(bbox=gw.BoundingBox(min_lat=35, max_lat=34, max_lon=1)), "filter.bbox", "min_lat <= max_lat"),
        (gw.Filter(bbox=gw.BoundingBox(min_lon=114, max_lon=113, max_lat=1)), "filter.bbox", "min_lon <= max_lon"),
        (gw.Filter(bbox=gw.BoundingBox(min_lat=-91, max_lat=0)), "filter.bbox", "-90 <= min_lat"),
        (gw.Filter(bbox=gw.BoundingBox(max_lat=0, max_lon=181)), "filter.bbox", "max_lon <= 180"),
        (gw.Filter(bbox=gw.BoundingBox(max_lat=math.nan)), "filter.bbox", "finite"),
        (gw.Filter(bbox=gw.BoundingBox(min_lon=-math.inf)), "filter.bbox", "finite"),
    ],
)
def test_invalid_filters_name_the_field(flt: gw.Filter, field: str, reason: str) -> None:
    error = compile_error(flt)
    assert error.field == field
    assert reason in error.reason


def test_the_field_prefix_is_the_callers() -> None:
    assert compile_error(gw.Filter(kinds=[unknown(99)]), "request.filter").field == "request.filter.kinds"


# -- bounding boxes ------------------------------------------------------------------------------------


def test_bounding_box_of_a_point_and_of_nothing() -> None:
    assert bounding_box(point(34.75, 113.65)) == (34.75, 113.65, 34.75, 113.65)
    assert bounding_box(pb.Geometry()) is None


def test_bounding_box_of_a_polygon() -> None:
    assert bounding_box(polygon(34.7, 113.5, 34.8, 113.63)) == (34.7, 113.5, 34.8, 113.63)


def test_bounding_box_of_a_circle_at_the_equator() -> None:
    assert bounding_box(circle(0.0, 100.0, 111_320.0)) == pytest.approx((-1, 99, 1, 101))


def test_bounding_box_of_a_circle_widens_in_longitude_away_from_the_equator() -> None:
    assert bounding_box(circle(60.0, 100.0, 111_320.0)) == pytest.approx((59, 98, 61, 102))  # 1 / cos(60°) = 2


def test_bounding_box_of_a_circle_is_clamped_to_the_globe() -> None:
    assert bounding_box(circle(89.5, 179.5, 500_000.0)) == pytest.approx((89.5 - 500_000 / 111_320, -180, 90, 180))
    assert bounding_box(circle(90.0, 0.0, 1_000.0)) == pytest.approx((90 - 1_000 / 111_320, -180, 90, 180))
    half = 20_037_000.0 / 111_320.0  # the largest radius the validator allows, in degrees of latitude
    assert bounding_box(circle(0.0, 0.0, 20_037_000.0)) == pytest.approx((-90, -half, 90, half))
    assert bounding_box(circle(0.0, 170.0, 2_226_400.0)) == pytest.approx((-20, 150, 20, 180))


def test_bounding_box_of_a_zero_radius_circle_is_its_centre() -> None:
    assert bounding_box(circle(34.75, 113.65, 0.0)) == (34.75, 113.65, 34.75, 113.65)


def test_bounding_box_of_mixed_shapes_is_their_union() -> None:
    geometry = polygon(34.7, 113.3, 34.8, 113.6)  # gives min lon
    geometry.point.CopyFrom(pb.Point(lat=35.0, lon=113.55))  # max lat
    geometry.circles.add(center=pb.Point(lat=34.75, lon=114.0), radius_m=0.0)  # max lon
    geometry.circles.add(center=pb.Point(lat=30.0, lon=113.55), radius_m=11_132.0)  # min lat, 0.1 degree below
    assert bounding_box(geometry) == pytest.approx((29.9, 113.3, 35.0, 114.0))


def test_record_of_holds_what_filters_need() -> None:
    env = envelope("419001", kind=pb.ALERT, agency="meteorology", severity=pb.RED, geometry=point(35.1, 112.6))
    env.observed_at.FromSeconds(SENT_S - 60)
    record = RECORD.unpack(record_of(env))
    assert record[:4] == (pb.ALERT, pb.RED, pb.ACTUAL, 419001)
    assert record[4] == b"meteorology".ljust(24, b"\0")
    assert record[5:9] == (35.1, 112.6, 35.1, 112.6)
    assert record[9] == SENT_S - 60  # observed_at when set, else sent_at
    no_geometry = RECORD.unpack(record_of(envelope()))
    assert all(math.isnan(v) for v in no_geometry[5:9])
    assert no_geometry[9] == SENT_S


def test_a_record_says_whether_its_envelope_is_signed() -> None:
    unsigned = factories.observation()
    signed = factories.observation()
    signed.provenance.signature.signer = "spiffe://yjt.henan.gov.cn/410100/water/department/zz-water"
    signed.provenance.signature.certificate_sha256 = b"\x01" * 32
    assert record_of(unsigned)[FLAGS_AT] == FLAG_UNSIGNED
    assert record_of(signed)[FLAGS_AT] == 0  # unset claims nothing: a reader looks at the envelope
    for env in (unsigned, signed):  # the validator makes the same record while it checks
        assert Validator(TABLE).admit(env, env.ByteSize()) == record_of(env)
    relayed = with_flags(record_of(unsigned), FLAG_RELAYED)
    assert relayed[FLAGS_AT] == FLAG_UNSIGNED | FLAG_RELAYED
    assert RECORD.unpack(relayed) == RECORD.unpack(record_of(unsigned))  # filters see the same fields


@given(
    st.lists(
        st.tuples(
            st.sampled_from([pb.ALERT, pb.OBSERVATION, pb.INCIDENT]),
            st.sampled_from(["410105", "410102", "410202", "420102"]),
            st.sampled_from(["water", "meteorology", "emergency"]),
        ),
        max_size=40,
    ),
    st.sampled_from([None, "410100", "410000"]),
    st.booleans(),
)
def test_selection_by_key_agrees_with_record_by_record(
    made: list[tuple[pb.Kind, str, str]], region: str | None, with_box: bool
) -> None:
    """Deciding once per distinct key of a batch selects what deciding record by record selects."""
    inside = point(34.75, 113.65)  # in ZHENGZHOU's box; only alerts get a place here
    envs = [
        envelope(place, kind=kind, agency=agency, geometry=inside if kind == pb.ALERT else None)
        for kind, place, agency in made
    ]
    records = b"".join(record_of(e) for e in envs)
    flt = gw.Filter(regions=[region] if region else [], bbox=ZHENGZHOU if with_box else None)
    allowed_agencies = {b"water".ljust(24, b"\0"), b"emergency".ljust(24, b"\0")}
    selector = Selector.compile(flt, TABLE, allow=lambda rec: rec[4] in allowed_agencies, restricted=True)
    chosen = selector.select(records)
    expected = [i for i in range(len(envs)) if selector.allows(records[i * RECORD.size : (i + 1) * RECORD.size])]
    assert (list(range(len(envs))) if chosen is None and envs else chosen) == expected


def test_the_record_read_as_an_array_holds_what_the_struct_packed() -> None:
    env = factories.observation(envelope_id="r-1", severity=pb.ORANGE)
    record = with_flags(record_of(env), FLAG_RELAYED)
    assert RECORD_FIELDS.itemsize == RECORD.size
    (row,) = np.frombuffer(record, dtype=RECORD_FIELDS).tolist()
    kind, severity, status, region, agency, *place = RECORD.unpack(record)
    assert row == (kind, severity, status, record[FLAGS_AT], region, agency.rstrip(b"\0"), *place)
    assert row[3] == FLAG_RELAYED | FLAG_UNSIGNED
