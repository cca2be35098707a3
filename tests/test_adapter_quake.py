"""The quake adapter: USGS GeoJSON, QuakeML and CENC lists into INCIDENT envelopes that the gateway admits.

Real samples where there are any (tests/data/quake/SOURCES.md), CENC lists written in its public
shape, and small documents built here for the cases the samples lack (a Henan epicentre, updates,
retractions, broken fields). Every envelope a test sees is checked by the gateway's own validator.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.plugin import AdapterConfig, AdapterContext
from adapters.quake import ADAPTER, MANIFEST, QuakeCodec, QuakeConfig
from adapters.quake.codec import open_codec
from adapters.quake.grading import MAGNITUDE_GRADES, grade_of
from adapters.quake.memory import EventMemory, Reported
from gateway.errors import ConfigError
from gateway.regions import default_table
from gateway.validation import Validator
from tests.samples import data, shared

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC).timestamp()
CONTEXT = AdapterContext(now=lambda: NOW)
HOME = QuakeConfig(region="410000")  # a Henan province adapter: distant events are filed under the province
VALIDATOR = Validator(default_table())

USGS_QUAKEML = "quake/quakeml/usgs_quakeml-parser-js_usc000nwtr_origin.xml"
INGV_QUAKEML = "quake/quakeml/exxamalte_python-aio-quakeml-client_generic_feed_1.xml"
INGV_TRIMMED = "quake/quakeml/exxamalte_python-aio-quakeml-client_generic_feed_2.xml"
CENC_LIST = "quake/cenc/cenc-list.json"
CENC_UPDATE = "quake/cenc/cenc-list-update.json"
USGS_HOUR = "quake/usgs-geojson/lhayesgolding_EarthquakeData_all_hour.geojson"  # reference only: not shipped


def codec(fmt: str, config: QuakeConfig = HOME) -> QuakeCodec:
    opened = ADAPTER.open(fmt, config, CONTEXT)
    assert isinstance(opened, QuakeCodec)
    return opened


def admitted(envelopes: list[pb.Envelope]) -> list[pb.Envelope]:
    """``envelopes``, each checked as the gateway checks it at the door."""
    for env in envelopes:
        VALIDATOR.check(env, env.ByteSize(), NOW)
    return envelopes


def utc(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def feature(event_id: str = "us7000abcd", **properties: Any) -> dict[str, Any]:
    """A USGS GeoJSON feature; by default an M4.6 near Zhengzhou at 2025-05-01T00:00:00Z."""
    props: dict[str, Any] = {
        "mag": 4.6,
        "magType": "mb",
        "place": "10 km W of Zhengzhou, China",
        "time": 1_746_057_600_000,
        "updated": 1_746_058_000_000,
        "status": "reviewed",
        "tsunami": 0,
        "net": event_id[:2],
        "code": event_id[2:],
        "ids": f",{event_id},",
        "type": "earthquake",
    }
    props.update(properties)
    return {"type": "Feature", "id": event_id, "properties": props, "geometry": _point(113.55, 34.75, 10.0)}


def _point(lon: float, lat: float, depth_km: float) -> dict[str, Any]:
    return {"type": "Point", "coordinates": [lon, lat, depth_km]}


def collection(*features: dict[str, Any]) -> bytes:
    return json.dumps({"type": "FeatureCollection", "features": list(features)}).encode()


def cenc_list(*records: dict[str, Any]) -> bytes:
    return json.dumps({"shuju": list(records), "jieguo": "ok"}, ensure_ascii=False).encode()


def cenc_record(**fields: Any) -> dict[str, Any]:
    """One record of the CENC list: by default the 登封 event of tests/data/quake/cenc/cenc-list.json."""
    record: dict[str, Any] = json.loads(data(CENC_LIST).read_bytes())["shuju"][0]
    record.update(fields)
    return record


# -- the plugin ------------------------------------------------------------------------------------


def test_manifest_is_sound() -> None:
    assert MANIFEST.problems() == []
    assert MANIFEST.inbound == ("usgs-geojson", "quakeml", "cenc-json")
    assert MANIFEST.outbound == ()
    keys = MANIFEST.schema()["keys"]
    assert keys["max_distance_km"]["default"] == 100.0
    assert keys["remember_events"]["default"] == 10_000


def test_config_loads_strictly() -> None:
    config = ADAPTER.load_config({"region": "410100", "max_distance_km": 50, "min_magnitude": 3.0})
    assert isinstance(config, QuakeConfig)
    assert (config.agency, config.region, config.max_distance_km) == ("earthquake", "410100", 50)
    with pytest.raises(ConfigError, match="max_distance"):
        ADAPTER.load_config({"max_distance": 5}, source="node.toml")
    with pytest.raises(ConfigError, match="remember_events"):
        QuakeConfig(remember_events=0)


def test_a_plain_adapter_config_is_taken_as_quake_defaults() -> None:
    opened = open_codec("cenc-json", AdapterConfig(region="410000", system="poller"), CONTEXT)
    assert (opened.config.agency, opened.config.region, opened.config.system) == ("earthquake", "410000", "poller")


def test_encode_is_unsupported() -> None:
    with pytest.raises(AdapterError) as caught:
        codec("quakeml").encode([])
    assert caught.value.kind == "unsupported"


# -- USGS GeoJSON ------------------------------------------------------------------------------------


def test_usgs_hour_feed_reference_sample() -> None:
    raw = shared(USGS_HOUR).read_bytes()
    envelopes = admitted(codec("usgs-geojson").decode(raw))
    assert len(envelopes) == 8
    first = envelopes[0]
    assert first.incident.incident_id == "nc72934355"
    assert first.id.startswith("quake-")
    quake = first.incident.earthquake
    assert (quake.magnitude, quake.magnitude_type, quake.depth_km) == (1.93, "md", 7.93)
    assert utc(first.observed_at.ToMicroseconds() / 1e6) == "2017-12-03T23:13:10.490000+00:00"
    assert first.sent_at.ToMilliseconds() == 1_512_342_889_220
    assert first.incident.occurred_at == first.observed_at
    assert (first.geometry.point.lat, first.geometry.point.lon) == (40.3699989, -122.1271667)
    assert first.incident.title == "M 1.9 - 17km ESE of Anderson, CA"
    assert first.provenance.original_format == "usgs-geojson"
    # California and the Philippines are far from every Chinese county: filed under the home region,
    # and not graded by a plan written for Chinese populated areas
    philippines = envelopes[-1]
    assert philippines.incident.earthquake.magnitude == 4.7
    assert philippines.region == "410000"
    assert philippines.attributes["region_basis"] == "configured"
    assert philippines.incident.grade == pb.INCIDENT_GRADE_UNSPECIFIED
    assert {env.incident.stage for env in envelopes} == {pb.STAGE_INITIAL}


def test_usgs_event_near_zhengzhou_is_filed_and_graded_there() -> None:
    (env,) = admitted(codec("usgs-geojson").decode(collection(feature())))
    assert env.region.startswith("4101")
    assert env.attributes["region_basis"] == "nearest"
    assert float(env.attributes["distance_km"]) < 20
    assert env.incident.grade == pb.GRADE_GENERAL  # M4.6: 一般
    assert env.severity == pb.BLUE
    assert env.origin.agency == "earthquake"
    assert env.origin.region == "410000"
    assert env.incident.event_type == "earthquake"


def test_a_single_feature_is_read_as_a_detail_feed() -> None:
    (env,) = codec("usgs-geojson").decode(json.dumps(feature()).encode())
    assert env.incident.incident_id == "us7000abcd"


def test_distant_event_without_a_home_region_is_refused_but_the_rest_is_reported() -> None:
    far = feature("us7000far1")
    far["geometry"] = _point(142.6, 37.8, 30.0)
    quake = codec("usgs-geojson", QuakeConfig())
    envelopes, errors = quake.decode_report(collection(feature(), far))
    assert [env.incident.incident_id for env in envelopes] == ["us7000abcd"]
    (error,) = errors
    assert error.field == "features[1]"
    assert "max_distance_km" in error.reason
    with pytest.raises(AdapterError, match="no region configured"):
        codec("usgs-geojson", QuakeConfig()).decode(collection(far))


def test_non_earthquakes_and_small_events_are_skipped_and_counted() -> None:
    quake = codec("usgs-geojson", QuakeConfig(region="410000", min_magnitude=2.5))
    blast = feature("us7000blst", type="quarry blast")
    small = feature("us7000smll", mag=1.2)
    assert quake.decode(collection(blast, small)) == []
    assert quake.counts["skipped:not-earthquake"] == 1
    assert quake.counts["skipped:below-min-magnitude"] == 1


def test_missing_depth_is_marked_unknown() -> None:
    shallow = feature()
    shallow["geometry"]["coordinates"] = [113.55, 34.75]
    (env,) = admitted(codec("usgs-geojson").decode(collection(shallow)))
    assert env.attributes["depth"] == "unknown"
    assert env.incident.earthquake.depth_km == 0.0


# -- QuakeML ---------------------------------------------------------------------------------------


def test_usgs_quakeml_origin_depth_metres_become_kilometres() -> None:
    (env,) = admitted(codec("quakeml").decode(data(USGS_QUAKEML).read_bytes()))
    incident = env.incident
    assert incident.incident_id == "usc000nwtr"  # catalog:eventsource + catalog:eventid, as GeoJSON names it
    assert env.attributes["quakeml_public_id"] == "quakeml:us.anss.org/event/c000nwtr"
    assert incident.earthquake.depth_km == 5.0  # <depth><value>5000</value> in metres
    assert (incident.earthquake.magnitude, incident.earthquake.magnitude_type) == (4.8, "mb")
    assert (env.geometry.point.lat, env.geometry.point.lon) == (44.7728, -110.6598)
    assert utc(env.observed_at.ToMicroseconds() / 1e6) == "2014-03-30T12:34:42.060000+00:00"
    # the version stamp is the latest creation time of event, preferred origin and magnitude
    assert utc(env.sent_at.seconds) == "2014-03-30T12:52:04+00:00"
    assert env.attributes["evaluationStatus"] == "preliminary"
    assert incident.reporter == "us"


def test_ingv_quakeml_times_without_zone_are_utc() -> None:
    (env,) = admitted(codec("quakeml").decode(data(INGV_QUAKEML).read_bytes()))
    incident = env.incident
    assert incident.incident_id == "smi:webservices.ingv.it/fdsnws/event/1/query?eventId=30116321"
    assert utc(env.observed_at.ToMicroseconds() / 1e6) == "2022-03-01T22:53:55.680000+00:00"
    assert utc(env.sent_at.seconds) == "2022-03-01T23:02:47+00:00"  # the origin's creation time, the latest
    assert incident.earthquake.depth_km == 14.5
    assert (incident.earthquake.magnitude, incident.earthquake.magnitude_type) == (2.6, "ML")
    assert incident.address == "4 km S Campotosto (AQ)"
    assert incident.reporter == "INGV"


def test_trimmed_ingv_events_name_what_they_lack() -> None:
    quake = codec("quakeml")
    envelopes, errors = quake.decode_report(data(INGV_TRIMMED).read_bytes())
    assert envelopes == []
    assert [(e.field, e.kind) for e in errors] == [
        ("eventParameters.event[0].magnitude", "missing"),
        ("eventParameters.event[1].origin[0].time.value", "missing"),
        ("eventParameters.event[2].origin[0].time.value", "missing"),
    ]
    with pytest.raises(AdapterError) as caught:
        quake.decode(data(INGV_TRIMMED).read_bytes())
    assert caught.value.field == "eventParameters.event[0].magnitude"
    assert quake.counts["error:missing"] == 6


def _without_public_id(lat: str = "34.4200") -> bytes:
    """The trimmed INGV event[1] given an origin time, near 登封: an event with no publicID."""
    raw = data(INGV_TRIMMED).read_text(encoding="utf-8")
    timed = raw.replace(
        "<latitude>\n          <value>42.5219</value>",
        "<time><value>2022-04-28T09:59:30.5</value></time>\n        <latitude>\n          <value>" + lat + "</value>",
    ).replace("<value>13.3834</value>", "<value>113.0300</value>")
    return timed.encode()


def test_event_without_public_id_gets_an_id_from_origin_time_and_place() -> None:
    envelopes, errors = codec("quakeml").decode_report(_without_public_id())
    (env,) = admitted(envelopes)
    assert len(errors) == 2
    assert env.incident.incident_id.startswith("quakeml-event-")
    assert env.region.startswith("4101")
    again = codec("quakeml").decode_report(_without_public_id())[0][0]
    elsewhere = codec("quakeml").decode_report(_without_public_id(lat="34.5000"))[0][0]
    assert again.incident.incident_id == env.incident.incident_id
    assert again.id == env.id
    assert elsewhere.incident.incident_id != env.incident.incident_id


def test_preferred_origin_that_is_not_there_is_an_error() -> None:
    raw = data(USGS_QUAKEML).read_text(encoding="utf-8")
    broken = raw.replace(
        "<preferredOriginID>quakeml:us.anss.org/origin/c000nwtr<", "<preferredOriginID>quakeml:elsewhere<"
    )
    with pytest.raises(AdapterError) as caught:
        codec("quakeml").decode(broken.encode())
    assert caught.value.field == "eventParameters.event[0].preferredOriginID"


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
            b'<q:quakeml xmlns:q="http://quakeml.org/xmlns/quakeml/1.2">&lol2;</q:quakeml>',
            id="entity-expansion",
        ),
        pytest.param(
            b'<?xml version="1.0"?><!DOCTYPE q [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            b'<q:quakeml xmlns:q="http://quakeml.org/xmlns/quakeml/1.2">&xxe;</q:quakeml>',
            id="external-entity",
        ),
        pytest.param(
            b'<?xml version="1.0"?><!DOCTYPE q SYSTEM "http://127.0.0.1:1/quakeml.dtd">'
            b'<q:quakeml xmlns:q="http://quakeml.org/xmlns/quakeml/1.2"/>',
            id="external-dtd",
        ),
        pytest.param(
            b'<q:quakeml xmlns:q="http://quakeml.org/xmlns/quakeml/1.2" xmlns:xi="http://www.w3.org/2001/XInclude">'
            b'<xi:include href="file:///etc/passwd" parse="text"/></q:quakeml>',
            id="xinclude",
        ),
    ],
)
def test_hostile_xml_is_refused(document: bytes) -> None:
    with pytest.raises(AdapterError) as caught:
        codec("quakeml").decode(document)
    assert caught.value.kind == "hostile"


def test_other_xml_is_not_quakeml() -> None:
    with pytest.raises(AdapterError) as caught:
        codec("quakeml").decode(b'<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2"/>')
    assert caught.value.kind == "unsupported"


# -- CENC ------------------------------------------------------------------------------------------


def test_cenc_list_beijing_time_becomes_utc() -> None:
    quake = codec("cenc-json")
    dengfeng, dingri, honshu = admitted(quake.decode(data(CENC_LIST).read_bytes()))

    assert dingri.incident.incident_id == "CC20250107090516.00"
    assert utc(dingri.observed_at.seconds) == "2025-01-07T01:05:16+00:00"  # 09:05:16 Beijing time
    assert utc(dingri.sent_at.seconds) == "2025-01-07T01:22:47+00:00"
    assert dingri.region.startswith("5402")  # 日喀则市
    assert dingri.incident.grade == pb.GRADE_MAJOR  # M6.8: 重大
    assert (dingri.severity, dingri.priority) == (pb.ORANGE, 0)
    assert dingri.incident.title == "西藏日喀则市定日县6.8级地震"
    assert "01月07日09时05分" in dingri.incident.description
    assert dingri.incident.earthquake.depth_km == 10.0
    assert dingri.incident.reporter == "中国地震台网中心"
    assert dingri.attributes["source_time_zone"] == "+08:00"

    assert dengfeng.region.startswith("4101")  # numbers written as JSON numbers, not text
    assert dengfeng.attributes["region_basis"] == "nearest"
    assert dengfeng.incident.earthquake.magnitude == 3.1
    assert dengfeng.incident.grade == pb.INCIDENT_GRADE_UNSPECIFIED  # below M4: no grade is claimed

    assert honshu.region == "410000"
    assert honshu.attributes["region_basis"] == "configured"
    assert float(honshu.attributes["distance_km"]) > 1000
    assert {env.incident.stage for env in (dengfeng, dingri, honshu)} == {pb.STAGE_INITIAL}


def test_cenc_next_poll_reports_only_the_revised_and_the_withdrawn() -> None:
    quake = codec("cenc-json")
    first = {env.incident.incident_id: env for env in quake.decode(data(CENC_LIST).read_bytes())}
    revised, withdrawn = admitted(quake.decode(data(CENC_UPDATE).read_bytes()))

    assert revised.incident.incident_id == "CC20250312142033.00"
    assert (revised.incident.stage, revised.incident.report_number) == (pb.STAGE_FOLLOW_UP, 2)
    assert revised.incident.earthquake.magnitude == 3.2
    assert list(revised.references) == [first["CC20250312142033.00"].id]
    assert revised.id != first["CC20250312142033.00"].id

    assert withdrawn.incident.incident_id == "CC20250302213411.00"
    assert (withdrawn.incident.stage, withdrawn.incident.report_number) == (pb.STAGE_FINAL, 2)
    assert withdrawn.attributes["retracted"] == "true"

    assert quake.counts["skipped:duplicate"] == 1  # Dingri, unchanged
    assert quake.decode(data(CENC_UPDATE).read_bytes()) == []  # polled again: nothing new


def test_cenc_withdrawn_event_never_reported_is_skipped() -> None:
    quake = codec("cenc-json")
    assert quake.decode(cenc_list(cenc_record(IS_DEL="1"))) == []
    assert quake.counts["skipped:retracted-unreported"] == 1


def test_cenc_bare_list_and_empty_depth() -> None:
    raw = json.dumps([cenc_record(EPI_DEPTH="")], ensure_ascii=False).encode()
    (env,) = admitted(codec("cenc-json").decode(raw))
    assert env.attributes["depth"] == "unknown"


# -- de-duplication across feeds and updates -------------------------------------------------------


def _geojson_of_usc000nwtr(updated: str) -> bytes:
    """The event of the USGS QuakeML sample as the GeoJSON feed lists it, last updated at ``updated``."""
    stamp = int(dt.datetime.fromisoformat(updated).timestamp() * 1000)
    event = feature("usc000nwtr", mag=4.8, magType="mb", time=1_396_182_882_060, updated=stamp, place="")
    event["geometry"] = _point(-110.6598, 44.7728, 5.0)
    return collection(event)


def test_same_version_from_geojson_then_quakeml_goes_out_once() -> None:
    geojson = codec("usgs-geojson")
    quakeml = geojson.sibling("quakeml")
    (env,) = geojson.decode(_geojson_of_usc000nwtr("2014-03-30T12:52:04+00:00"))
    assert quakeml.decode(data(USGS_QUAKEML).read_bytes()) == []
    assert quakeml.counts["skipped:duplicate"] == 1
    # and a codec that never saw the GeoJSON gives the QuakeML the same envelope id: stored once
    (alone,) = codec("quakeml").decode(data(USGS_QUAKEML).read_bytes())
    assert alone.id == env.id
    assert alone.incident.incident_id == env.incident.incident_id == "usc000nwtr"


def test_newer_version_in_the_other_format_is_a_follow_up() -> None:
    geojson = codec("usgs-geojson")
    quakeml = geojson.sibling("quakeml")
    (first,) = geojson.decode(_geojson_of_usc000nwtr("2014-03-30T12:40:00+00:00"))
    (second,) = admitted(quakeml.decode(data(USGS_QUAKEML).read_bytes()))
    assert (second.incident.stage, second.incident.report_number) == (pb.STAGE_FOLLOW_UP, 2)
    assert list(second.references) == [first.id]
    assert geojson.decode(_geojson_of_usc000nwtr("2014-03-30T12:45:00+00:00")) == []
    assert geojson.counts["skipped:older-version"] == 1


def test_event_renamed_by_the_feed_keeps_its_incident_id() -> None:
    quake = codec("usgs-geojson")
    (first,) = quake.decode(collection(feature("ci40000001")))
    renamed = feature("us7000zzzz", updated=1_746_059_000_000, ids=",ci40000001,us7000zzzz,")
    (second,) = quake.decode(collection(renamed))
    assert second.incident.incident_id == first.incident.incident_id == "ci40000001"
    assert second.incident.report_number == 2
    assert second.provenance.original_id == "us7000zzzz"


def test_usgs_deleted_event_closes_its_report_chain() -> None:
    quake = codec("usgs-geojson")
    quake.decode(collection(feature()))
    (final,) = admitted(quake.decode(collection(feature(status="deleted", updated=1_746_059_000_000))))
    assert final.incident.stage == pb.STAGE_FINAL
    assert final.attributes["retracted"] == "true"


def test_memory_is_bounded() -> None:
    quake = codec("usgs-geojson", QuakeConfig(region="410000", remember_events=2))
    for name in ("us70000001", "us70000002", "us70000003"):
        quake.decode(collection(feature(name)))
    assert len(quake.memory) == 2
    (again,) = quake.decode(collection(feature("us70000001")))  # forgotten: reported anew
    assert again.incident.stage == pb.STAGE_INITIAL
    assert quake.decode(collection(feature("us70000003"))) == []


def test_memory_forgets_aliases_with_their_event() -> None:
    memory = EventMemory(capacity=1)
    memory.remember("a", Reported(1, 1, "quake-a", aliases=("a2",)))
    assert memory.known_id(["a2"]) == "a"
    memory.remember("b", Reported(1, 1, "quake-b"))
    assert memory.known_id(["a2"]) is None
    with pytest.raises(ValueError, match="capacity"):
        EventMemory(capacity=0)


# -- grading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("magnitude", "grade"),
    [
        (3.9, pb.INCIDENT_GRADE_UNSPECIFIED),
        (4.0, pb.GRADE_GENERAL),
        (4.9, pb.GRADE_GENERAL),
        (5.0, pb.GRADE_LARGER),
        (5.9, pb.GRADE_LARGER),
        (6.0, pb.GRADE_MAJOR),
        (6.9, pb.GRADE_MAJOR),
        (6.9999999, pb.GRADE_EXTRAORDINARY),  # 7.0 after a float round trip
        (7.0, pb.GRADE_EXTRAORDINARY),
        (8.1, pb.GRADE_EXTRAORDINARY),
    ],
)
def test_grade_by_magnitude(magnitude: float, grade: int) -> None:
    assert grade_of(magnitude).grade == grade
    (env,) = admitted(codec("usgs-geojson").decode(collection(feature(mag=magnitude))))
    assert env.incident.grade == grade


def test_grade_table_is_ordered_and_complete() -> None:
    bounds = [lower for lower, _ in MAGNITUDE_GRADES]
    assert bounds == sorted(bounds, reverse=True)
    assert {grade.grade for _, grade in MAGNITUDE_GRADES} == {
        pb.GRADE_GENERAL,
        pb.GRADE_LARGER,
        pb.GRADE_MAJOR,
        pb.GRADE_EXTRAORDINARY,
    }


def test_distant_large_event_is_not_graded() -> None:
    far = feature("us7000big1", mag=7.5)
    far["geometry"] = _point(142.6, 37.8, 30.0)
    (env,) = admitted(codec("usgs-geojson").decode(collection(far)))
    assert env.incident.grade == pb.INCIDENT_GRADE_UNSPECIFIED
    assert env.severity == pb.SEVERITY_UNSPECIFIED


# -- errors name their field -----------------------------------------------------------------------


def _broken(path: list[str | int], value: Any) -> bytes:
    event = feature()
    target: Any = event
    for step in path[:-1]:
        target = target[step]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return collection(feature("us7000good"), event)


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "field", "kind"),
    [
        (["geometry", "coordinates"], _DELETE, "features[1].geometry.coordinates", "missing"),
        (["geometry", "coordinates"], [113.5], "features[1].geometry.coordinates", "missing"),
        (["geometry", "coordinates", 1], 91.0, "features[1].geometry.coordinates[1]", "value"),
        (["geometry", "coordinates", 0], "east", "features[1].geometry.coordinates[0]", "value"),
        (["geometry", "coordinates", 2], 5000.0, "features[1].geometry.coordinates[2]", "value"),
        (["geometry", "type"], "Polygon", "features[1].geometry.type", "value"),
        (["properties", "time"], _DELETE, "features[1].properties.time", "missing"),
        (["properties", "time"], 4_102_444_800_000, "features[1].properties.time", "value"),  # 2100
        (["properties", "time"], 631_152_000_000, "features[1].properties.time", "value"),  # 1990
        (["properties", "mag"], None, "features[1].properties.mag", "missing"),
        (["properties", "mag"], True, "features[1].properties.mag", "value"),
        (["properties", "mag"], 12.0, "features[1].properties.mag", "value"),
        (["id"], "has space", "features[1].id", "value"),
        (["properties"], [], "features[1].properties", "missing"),
    ],
)
def test_bad_feature_is_reported_with_its_field(path: list[str | int], value: Any, field: str, kind: str) -> None:
    envelopes, errors = codec("usgs-geojson").decode_report(_broken(path, value))
    assert [env.incident.incident_id for env in envelopes] == ["us7000good"]
    (error,) = errors
    assert (error.field, error.kind) == (field, kind)


def test_non_finite_numbers_are_refused() -> None:
    raw = collection(feature()).replace(b"4.6", b"NaN")
    with pytest.raises(AdapterError) as caught:
        codec("usgs-geojson").decode(raw)
    assert caught.value.field == "features[0].properties.mag"
    assert "finite" in caught.value.reason


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"EPI_LAT": "abc"}, "shuju[0].EPI_LAT"),
        ({"EPI_LON": "190"}, "shuju[0].EPI_LON"),
        ({"EPI_LAT": None}, "shuju[0].EPI_LAT"),
        ({"O_TIME": "2025-03-12"}, "shuju[0].O_TIME"),
        ({"O_TIME": "2025-02-30 10:00:00"}, "shuju[0].O_TIME"),
        ({"M": ""}, "shuju[0].M"),
        ({"CATA_ID": None}, "shuju[0].CATA_ID"),
        ({"SYNC_TIME": "yesterday"}, "shuju[0].SYNC_TIME"),
    ],
)
def test_bad_cenc_record_is_reported_with_its_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(AdapterError) as caught:
        codec("cenc-json").decode(cenc_list(cenc_record(**fields)))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("fmt", "raw", "kind"),
    [
        ("usgs-geojson", b'{"type": "FeatureCollection", "features": [', "json"),
        ("usgs-geojson", b"", "json"),
        ("usgs-geojson", b'{"type": "Topology"}', "value"),
        ("usgs-geojson", b"[1, 2]", "unsupported"),
        ("cenc-json", b'{"shuju": "\xff"}', "encoding"),
        ("cenc-json", b"[" * 100_000, "hostile"),
        ("cenc-json", b'{"jieguo": "ok"}', "missing"),
        ("quakeml", b"<q:quakeml", "xml"),
    ],
)
def test_unreadable_documents(fmt: str, raw: bytes, kind: str) -> None:
    with pytest.raises(AdapterError) as caught:
        codec(fmt).decode(raw)
    assert caught.value.kind == kind


# -- fuzzing: only AdapterError escapes, and whatever comes out is admitted -----------------------

SAMPLES = {
    "quakeml": [data(USGS_QUAKEML).read_bytes(), data(INGV_QUAKEML).read_bytes(), _without_public_id()],
    "cenc-json": [data(CENC_LIST).read_bytes(), data(CENC_UPDATE).read_bytes()],
    "usgs-geojson": [collection(feature(), feature("us7000far1", mag=6.1))],
}
FUZZ = settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_refuse(fmt: str, raw: bytes) -> None:
    quake = codec(fmt)
    try:
        envelopes, _ = quake.decode_report(raw)
    except AdapterError:
        return
    admitted(envelopes)


@FUZZ
@given(st.sampled_from(sorted(SAMPLES)), st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(fmt: str, raw: bytes) -> None:
    decode_or_refuse(fmt, raw)


@FUZZ
@given(
    st.sampled_from([(fmt, i) for fmt, raws in sorted(SAMPLES.items()) for i in range(len(raws))]),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_fuzz_mutated_samples(sample: tuple[str, int], flips: list[tuple[float, int]]) -> None:
    fmt, index = sample
    raw = bytearray(SAMPLES[fmt][index])
    for where, value in flips:
        raw[int(where * len(raw))] = value
    decode_or_refuse(fmt, bytes(raw))


@FUZZ
@given(st.sampled_from(sorted(SAMPLES)), st.floats(0, 1), st.binary(max_size=16))
def test_fuzz_truncated_samples(fmt: str, cut: float, tail: bytes) -> None:
    raw = SAMPLES[fmt][0]
    decode_or_refuse(fmt, raw[: int(cut * len(raw))] + tail)


# JSON values put where the feed has numbers, texts and objects: the structure is right, the values are not
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(st.sampled_from(["mag", "time", "updated", "place", "ids", "type", "status", "net", "code"]), JSON_VALUES)
def test_fuzz_geojson_property_values(key: str, value: Any) -> None:
    event = feature()
    event["properties"][key] = value
    decode_or_refuse("usgs-geojson", collection(event))


@FUZZ
@given(
    st.sampled_from(["CATA_ID", "O_TIME", "EPI_LAT", "EPI_LON", "EPI_DEPTH", "M", "SYNC_TIME", "IS_DEL"]), JSON_VALUES
)
def test_fuzz_cenc_field_values(key: str, value: Any) -> None:
    record = copy.deepcopy(cenc_record())
    record[key] = value
    decode_or_refuse("cenc-json", json.dumps({"shuju": [record]}, allow_nan=True).encode())


def test_samples_are_where_sources_md_says() -> None:
    listed = (Path(data("quake/SOURCES.md"))).read_text(encoding="utf-8")
    for relative in (USGS_QUAKEML, INGV_QUAKEML, INGV_TRIMMED, CENC_LIST, CENC_UPDATE):
        assert relative.removeprefix("quake/") in listed


def test_undo_reports_undelivered_envelopes_again() -> None:
    quake = codec("cenc-json")
    first = quake.decode(data(CENC_LIST).read_bytes())
    update = quake.decode(data(CENC_UPDATE).read_bytes())
    assert quake.undo(update) == 2  # the gateway could not be reached
    again = quake.decode(data(CENC_UPDATE).read_bytes())
    assert [env.id for env in again] == [env.id for env in update]
    assert [env.incident.report_number for env in again] == [2, 2]
    assert quake.undo(first) == 1  # only Dingri's report is still the latest of its event
    assert quake.undo(first) == 0
