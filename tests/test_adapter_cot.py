"""The CoT adapter against captured TAK traffic, stream framing, hostile XML, export and fuzzed input."""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path
from xml.etree.ElementTree import Element

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters import cli, safexml
from adapters.cap import CapCodec, CapConfig
from adapters.cot import ADAPTER, CotCodec, CotConfig, StreamDecoder, check_datagram, encode_ping, parse_event, types
from adapters.cot.codec import ARGB_OF_SEVERITY, parse_time
from adapters.errors import AdapterError
from adapters.plugin import AdapterContext, stable_id
from gateway.errors import ConfigError
from gateway.regions import default_table
from gateway.validation import Validator
from tests import factories
from tests.samples import DATA, shared

CONTEXT = AdapterContext()
VALIDATOR = Validator(default_table())
SAMPLES = sorted(path.name for path in (DATA / "cot").glob("*.xml"))
POSITIONS = [name for name in SAMPLES if not name.startswith("b-t-f")]
MITRE = "cot/taxonomy/dB-SPL_cot-types_CoTtypes.xml"


def codec(**config: object) -> CotCodec:
    settings_ = {"agency": "fire_rescue", "region": "410100", **config}
    return CotCodec(CotConfig(**settings_), CONTEXT)  # type: ignore[arg-type]


def sample(name: str) -> bytes:
    return (DATA / "cot" / name).read_bytes()


def decode_one(raw: bytes, **config: object) -> pb.Envelope:
    envelopes = codec(**config).decode(raw)
    assert len(envelopes) == 1
    return envelopes[0]


def refusal(raw: bytes, **config: object) -> AdapterError:
    with pytest.raises(AdapterError) as caught:
        codec(**config).decode(raw)
    return caught.value


def event_xml(
    uid: str = "unit-1",
    cot_type: str = "a-f-G-U-C",
    time: str = "2026-05-01T08:00:00.000Z",
    stale: str = "2026-05-01T08:05:00.000Z",
    detail: str = "",
    how: str = "m-g",
    point: str = 'lat="34.75" lon="113.62" hae="110.5" ce="5.0" le="9999999.0"',
) -> bytes:
    return (
        f'<event version="2.0" uid="{uid}" type="{cot_type}" how="{how}" time="{time}" start="{time}" '
        f'stale="{stale}"><point {point}/><detail>{detail}</detail></event>'
    ).encode()


def frame_all(chunks: list[bytes], max_event_bytes: int = 4096) -> list[bytes | str]:
    """What a decoder fed ``chunks`` one after another gives, errors as 'kind@offset: text'."""
    decoder = StreamDecoder(max_event_bytes)
    items: list[bytes | AdapterError] = []
    for chunk in chunks:
        items += decoder.feed(chunk)
    items += decoder.end()
    return [item if isinstance(item, bytes) else f"{item.kind}@{item.offset}: {item}" for item in items]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


# -- the adapter and its manifest ------------------------------------------------------------------


def test_manifest_is_sound_and_opens_the_codec() -> None:
    assert ADAPTER.manifest.problems() == []
    assert ADAPTER.manifest.inbound == ("cot",)
    assert ADAPTER.manifest.outbound == ("cot",)
    config = ADAPTER.load_config({"region": "410100", "status": "exercise", "position_stale_s": 120.0})
    assert isinstance(config, CotConfig)
    assert config.agency == "fire_rescue"
    assert isinstance(ADAPTER.open("cot", config), CotCodec)
    assert {"max_event_bytes", "status", "position_stale_s"} <= set(ADAPTER.manifest.schema()["keys"])


def test_config_refuses_an_unknown_status() -> None:
    with pytest.raises(ConfigError, match="status"):
        ADAPTER.load_config({"region": "410100", "status": "drill"})


def test_yiwang_adapt_and_export_cot(
    monkeypatch: pytest.MonkeyPatch, capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path
) -> None:
    # as `yiwang adapt cot FILE --region 410100` and `yiwang export cot` run it, whether or not the
    # entry point is installed yet
    monkeypatch.setattr(cli, "by_format", lambda: {"cot": ADAPTER})
    name = "a-f-G-U-C-1581185446278.xml"
    flags = {"config": None, "agency": None, "system": None}
    adapt = argparse.Namespace(list=False, format="cot", file=str(DATA / "cot" / name), region="410100", **flags)
    assert cli.adapt(adapt) == 0
    (line,) = capsysbinary.readouterr().out.splitlines()
    envelopes = tmp_path / "envelopes.jsonl"
    envelopes.write_bytes(line + b"\n")
    assert cli.export(argparse.Namespace(format="cot", file=str(envelopes), region=None, **flags)) == 0
    (event,) = capsysbinary.readouterr().out.splitlines()
    assert decode_one(event) == decode_one(sample(name))


# -- every captured sample ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", POSITIONS)
def test_sample_decodes_to_a_valid_position(name: str) -> None:
    raw = sample(name)
    root = safexml.parse(raw)
    env = decode_one(raw)
    VALIDATOR.check(env, env.ByteSize())
    assert env.kind == pb.POSITION
    assert env.region == "410100"
    assert env.origin.agency == "fire_rescue"
    assert env.origin.system == "cot"
    assert env.position.unit_id == root.get("uid") == env.provenance.original_id
    assert env.position.unit_type == root.get("type") == name.rsplit("-", 1)[0]
    assert env.position.callsign == root.find("detail/contact").get("callsign")  # type: ignore[union-attr]
    assert env.provenance.original_format == "cot"
    assert env.observed_at == env.sent_at == parse_time(root.get("time", ""), "time")
    assert env.expires_at == parse_time(root.get("stale", ""), "stale")
    point = root.find("point")
    assert point is not None
    assert env.geometry.point.lat == float(point.get("lat", ""))
    assert env.geometry.point.lon == float(point.get("lon", ""))
    hae = float(point.get("hae", ""))
    assert env.geometry.point.HasField("altitude_m") == (hae != 9999999.0)
    assert env.id == stable_id("cot", env.position.unit_id, f"{env.observed_at.seconds}.{env.observed_at.nanos:09d}")


def test_geochat_sample_is_refused_for_a_named_reason() -> None:
    error = refusal(sample("b-t-f-1581185463563.xml"))
    assert error.kind == "unsupported"
    assert error.field == "event.type"
    assert "GeoChat" in error.reason
    assert "corvTab" in error.reason


def test_shared_samples_are_the_shipped_copies() -> None:
    folder = shared("cot/FreeTakServer-example-metrics")
    names = sorted(path.name for path in folder.glob("*.xml"))
    assert names == SAMPLES
    for name in names:
        assert (folder / name).read_bytes() == sample(name)


def test_a_phone_reports_its_track_team_and_time_to_the_millisecond() -> None:
    env = decode_one(sample("a-f-G-U-C-1581185446278.xml"))
    assert env.position.callsign == "corvTab"
    assert env.position.speed_mps == 0.0
    assert env.position.course_deg == 0.0
    assert env.observed_at.seconds == 1581185446
    assert env.observed_at.nanos == 207_000_000
    assert env.attributes["cot.group"] == "Yellow"
    assert env.attributes["cot.role"] == "Team Member"
    assert env.attributes["cot.how"] == "h-e"
    assert not env.geometry.point.HasField("altitude_m")  # hae 9999999.0 means unknown


def test_escaped_text_and_the_creator_are_read() -> None:
    env = decode_one(sample("a-h-G-1581185498005.xml"))
    assert env.position.callsign == "Command & Control Team"
    assert env.attributes["cot.parent_callsign"] == "Eliopoli HQ"
    assert env.geometry.point.altitude_m == -17.03


def test_a_spot_marker_is_the_position_of_the_marker() -> None:
    env = decode_one(sample("b-m-p-s-m-1581185985900.xml"))
    assert env.kind == pb.POSITION
    assert env.position.unit_type == "b-m-p-s-m"
    assert env.position.callsign == "Y 1"
    assert env.attributes["cot.color"] == "-256"


def test_a_whole_capture_decodes_event_by_event() -> None:
    capture = b"\n".join(sample(name) for name in SAMPLES)
    envelopes, errors = codec().decode_report(capture)
    assert [env.position.unit_id for env in envelopes] == [safexml.parse(sample(name)).get("uid") for name in POSITIONS]
    assert len(errors) == 1
    assert "GeoChat" in errors[0].reason


# -- the mapping --------------------------------------------------------------------------------------


def test_the_same_event_gets_the_same_id_however_its_time_is_written() -> None:
    first = decode_one(event_xml(time="2026-05-01T08:00:00Z"))
    again = decode_one(event_xml(time="2026-05-01T08:00:00.000Z"))
    offset = decode_one(event_xml(time="2026-05-01T16:00:00+08:00"))
    later = decode_one(event_xml(time="2026-05-01T08:00:01.000Z"))
    assert first.id == again.id == offset.id
    assert later.id != first.id
    assert first.id.startswith("cot-")


def test_region_comes_from_the_config_and_is_required() -> None:
    error = refusal(event_xml(), region="")
    assert error.kind == "missing"
    assert "region" in error.reason
    assert decode_one(event_xml(), region="410102").region == "410102"


def test_status_comes_from_the_config_and_simulated_events_are_tests() -> None:
    assert decode_one(event_xml()).status == pb.ACTUAL
    assert decode_one(event_xml(), status="exercise").status == pb.EXERCISE
    assert decode_one(event_xml(how="m-s")).status == pb.TEST


def test_track_and_errors_are_read() -> None:
    env = decode_one(event_xml(detail='<track speed="12.5" course="360.0"/><contact callsign="粤消-01"/>'))
    assert env.position.speed_mps == 12.5
    assert env.position.course_deg == 0.0  # 360 is north again
    assert env.position.callsign == "粤消-01"
    assert env.geometry.point.altitude_m == 110.5
    assert env.attributes["cot.ce"] == "5.0"
    assert "cot.le" not in env.attributes


@pytest.mark.parametrize(
    ("cot_type", "stage", "priority"),
    [("b-a-o-tbl", pb.STAGE_INITIAL, 0), ("b-a-o-can", pb.STAGE_FINAL, 1), ("b-l-f", pb.STAGE_INITIAL, 1)],
)
def test_emergency_alerts_are_incidents(cot_type: str, stage: pb.ReportStage, priority: int) -> None:
    detail = (
        '<link uid="ANDROID-1" relation="p-p" type="a-f-G-U-C"/><contact callsign="corvTab-Alert"/>'
        '<emergency type="911 Alert">corvTab</emergency><remarks>trapped under debris</remarks>'
    )
    env = decode_one(event_xml(uid="ANDROID-1-9-1-1", cot_type=cot_type, detail=detail))
    VALIDATOR.check(env, env.ByteSize())
    assert env.kind == pb.INCIDENT
    assert env.priority == priority
    assert env.incident.incident_id == "ANDROID-1-9-1-1"
    assert env.incident.event_type == cot_type
    assert env.incident.stage == stage
    assert env.incident.title == "corvTab-Alert"
    assert env.incident.description == "trapped under debris"
    assert env.incident.occurred_at == env.observed_at
    assert env.geometry.point.lat == 34.75


@pytest.mark.parametrize(
    ("cot_type", "words"),
    [
        ("t-x-c-t", "ping"),
        ("t-x-d-d", "control traffic"),
        ("u-d-f", "drawing"),
        ("b-i", "image"),
        ("a-z-G", "affiliation"),
    ],
)
def test_other_types_are_refused_as_unsupported_naming_them(cot_type: str, words: str) -> None:
    error = refusal(event_xml(cot_type=cot_type))
    assert error.kind == "unsupported"
    assert words in error.reason


@pytest.mark.parametrize(
    ("document", "field", "kind"),
    [
        (event_xml().replace(b' uid="unit-1"', b""), "event.uid", "missing"),
        (event_xml().replace(b' time="2026-05-01T08:00:00.000Z"', b""), "event.time", "missing"),
        (event_xml(time="yesterday"), "event.time", "value"),
        (event_xml(time="2026-02-30T08:00:00Z"), "event.time", "value"),
        (event_xml(point='lat="95" lon="113"'), "event.point.lat", "value"),
        (event_xml(point='lat="34" lon="nan"'), "event.point.lon", "value"),
        (event_xml(point='lon="113"'), "event.point.lat", "missing"),
        (event_xml(cot_type="a f G"), "event.type", "value"),
        (event_xml(detail='<track speed="-3"/>'), "event.detail.track.speed", "value"),
        (event_xml().replace(b'version="2.0"', b'version="3.0"'), "event.version", "unsupported"),
        (b'<event version="2.0" uid="x" type="a-f-G" time="2026-05-01T08:00:00Z"/>', "event.point", "missing"),
        (event_xml(uid="two words"), "event", "canonical"),
    ],
)
def test_bad_events_are_refused_naming_the_field(document: bytes, field: str, kind: str) -> None:
    error = refusal(document)
    assert (error.field, error.kind) == (field, kind), str(error)


def test_other_documents_are_not_events() -> None:
    assert refusal(b"<alert/>").kind == "framing"  # in a file or stream: not an event start
    with pytest.raises(AdapterError) as caught:  # as one document (a datagram)
        codec().decode_event(b"<alert/>")
    assert (caught.value.field, caught.value.kind) == ("event", "unsupported")
    assert "<alert>" in caught.value.reason


def test_an_event_from_the_future_is_refused_by_the_canonical_check() -> None:
    error = refusal(event_xml(time="2099-01-01T00:00:00Z", stale="2099-01-01T00:05:00Z"))
    assert error.kind == "canonical"
    assert "future" in error.reason


# -- stream framing -----------------------------------------------------------------------------------

STREAM_EVENTS = [sample(name) for name in SAMPLES] + [
    event_xml(detail="<remarks><![CDATA[a </event> in CDATA]]></remarks><!-- and </event> in a comment -->"),
    (
        b'<event version="2.0" uid="s" type="a-f-G" time="2026-05-01T08:00:00Z"'
        b' start="2026-05-01T08:00:00Z" stale="2026-05-01T08:05:00Z" how="m-g" extra="a > b"/>'
    ),
    event_xml(detail="<contact callsign=\"it&apos;s &lt;/event&gt; 'quoted'\"/>"),
]
STREAM = b"\r\n  ".join(STREAM_EVENTS) + b"\n"


def test_a_stream_fed_whole_gives_every_event() -> None:
    assert frame_all([STREAM]) == STREAM_EVENTS


def test_a_stream_fed_byte_by_byte_gives_the_same_events() -> None:
    assert frame_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM_EVENTS


def test_a_stream_split_at_random_points_gives_the_same_events() -> None:
    chance = random.Random(212)
    for _ in range(200):
        cuts = [chance.randrange(len(STREAM) + 1) for _ in range(chance.randrange(1, 40))]
        assert frame_all(split_at(STREAM, cuts)) == STREAM_EVENTS


def test_events_without_declarations_or_space_between_are_split() -> None:
    bare = [event_xml(uid=f"u{i}") for i in range(3)]
    assert frame_all([b"".join(bare)]) == bare


def test_the_declaration_before_an_event_travels_with_it() -> None:
    document = b'<?xml version="1.0" encoding="GB18030"?>' + event_xml(detail='<contact callsign="消防"/>').replace(
        "消防".encode(), "消防".encode("gb18030")
    )
    (framed,) = frame_all([document])
    assert framed == document
    assert isinstance(framed, bytes)
    assert decode_one(framed).position.callsign == "消防"


def test_garbage_is_reported_once_and_the_next_event_comes_through() -> None:
    good = event_xml()
    for chunks in ([b"HELO garbage\x00\xff" + good], [b"HELO", b" garbage\x00", b"\xff", good]):
        items = frame_all(chunks)
        assert len(items) == 2
        assert isinstance(items[0], str)
        assert items[0].startswith("framing@0: ")
        assert items[1] == good


def test_an_oversized_event_is_refused_and_the_next_event_comes_through() -> None:
    big = event_xml(detail="<remarks>" + "x" * 10_000 + "</remarks>")
    good = event_xml(uid="after")
    stream = good + big + good
    refused = f"size@{len(good)}: offset {len(good)}: an event larger than the limit of 4096 bytes; skipped to the"
    expected = [good, refused + " next event", good]
    assert frame_all([stream]) == expected
    assert frame_all([stream[i : i + 7] for i in range(0, len(stream), 7)]) == expected


def test_an_event_cut_off_by_the_next_one_is_reported_and_the_next_one_kept() -> None:
    cut = event_xml()[: -len("</detail></event>")]  # a writer that stopped between two elements
    good = event_xml(uid="next")
    items = frame_all([cut + good])
    assert len(items) == 2
    assert isinstance(items[0], str)
    assert "did not end" in items[0]
    assert items[1] == good


def test_a_stream_that_ends_inside_an_event_says_so() -> None:
    items = frame_all([event_xml(), event_xml()[:50]])
    assert items[0] == event_xml()
    assert isinstance(items[1], str)
    assert items[1].startswith("truncated@")


def test_tak_protobuf_on_a_stream_read_as_xml_is_refused_by_name() -> None:
    # version 1 is read once negotiated (or when the server looks for it): see tests/test_takproto.py
    items = frame_all([b"\xbf\x0e\x0a\x0c" + b"protobuf" + b"\xbf\x01\xbf" + event_xml()])
    assert isinstance(items[0], str)
    assert items[0].startswith("unsupported@0")
    assert "TAK protocol version 1" in items[0]
    assert "t-x-takp-q" in items[0]
    with pytest.raises(AdapterError, match="TAK protocol version 1"):
        check_datagram(b"\xbf\x01\xbf\x12\x00")  # the XML-only reader; read_datagram takes both


def test_a_datagram_carries_one_event() -> None:
    cot = codec()
    env = cot.decode_datagram(event_xml())
    assert env.position.unit_id == "unit-1"
    with pytest.raises(AdapterError) as caught:
        cot.decode_datagram(event_xml() + event_xml())
    assert caught.value.kind == "xml"
    with pytest.raises(AdapterError) as caught:
        cot.decode_datagram(event_xml(detail="<remarks>" + "x" * 300_000 + "</remarks>"))
    assert caught.value.kind == "size"


def test_empty_input_is_refused() -> None:
    assert refusal(b"  \n").kind == "missing"


# -- hostile XML --------------------------------------------------------------------------------------

BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE event [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">'
    b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    b'<event version="2.0" uid="x" type="a-f-G" how="m-g" time="2026-05-01T08:00:00Z" start="2026-05-01T08:00:00Z"'
    b' stale="2026-05-01T08:05:00Z"><point lat="1" lon="1"/><detail><remarks>&c;</remarks></detail></event>'
)
EXTERNAL_ENTITY = BILLION_LAUGHS.replace(
    b'[<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]',
    b'[<!ENTITY c SYSTEM "file:///etc/passwd">]',
)


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["entity-expansion", "external-entity"])
def test_hostile_xml_is_refused_as_hostile(document: bytes) -> None:
    # one event at a time (a datagram, or what the stream decoder hands out): the parser refuses the DTD
    with pytest.raises(AdapterError) as caught:
        codec().decode_event(document)
    assert caught.value.kind == "hostile"
    assert "DTD" in caught.value.reason
    # a file or stream: the framing refuses the DTD before any parser sees it, and the event after
    # it, which uses an entity nobody declared, is refused too
    envelopes, errors = codec().decode_report(document)
    assert envelopes == []
    assert errors[0].kind == "hostile"
    assert "declaration" in errors[0].reason
    assert all(error.kind in {"hostile", "xml"} for error in errors)


def test_a_declaration_inside_an_event_is_refused() -> None:
    document = event_xml(detail='<!ENTITY x "y">')
    items = frame_all([document])
    assert isinstance(items[0], str)
    assert items[0].startswith("hostile@")


# -- export -------------------------------------------------------------------------------------------


def position(**fields: object) -> pb.Envelope:
    env = pb.Envelope(id="pos-1", kind=pb.POSITION, region="410100", status=pb.ACTUAL, priority=2)
    env.origin.agency = "fire_rescue"
    env.origin.region = "410100"
    env.origin.system = "cot"
    env.sent_at.FromNanoseconds(1_777_622_400_123_000_000)
    env.observed_at.CopyFrom(env.sent_at)
    env.geometry.point.lat, env.geometry.point.lon = 34.7466, 113.6253
    env.geometry.point.altitude_m = 96.25
    env.position.unit_id = "ZZ-XF-ENGINE-07"
    env.position.callsign = '郑州消防 7 号 <水罐> & "R"\'s'
    env.position.unit_type = "a-f-G-E-V-C"
    env.position.speed_mps = 13.4
    env.position.course_deg = 271.5
    for key, value in fields.items():
        setattr(env.position, key, value)
    return env


def parsed(event: bytes) -> Element:
    return safexml.parse(event)


def test_round_trip_position_keeps_uid_type_point_track_callsign_and_time() -> None:
    cot = codec()
    env = position()
    (event,) = cot.encode([env]).splitlines()
    back = decode_one(event)
    VALIDATOR.check(back, back.ByteSize())
    assert back.position == env.position
    assert back.geometry.point == env.geometry.point
    assert back.observed_at == env.observed_at
    assert back.id == stable_id("cot", "ZZ-XF-ENGINE-07", f"{env.observed_at.seconds}.{env.observed_at.nanos:09d}")
    root = parsed(event)
    assert root.get("uid") == "ZZ-XF-ENGINE-07"
    assert root.get("how") == "h-g-i-g-o"  # not from a CoT source


def test_a_position_is_stale_a_few_minutes_after_its_time_unless_it_expires() -> None:
    env = position()
    root = parsed(codec().encode([env]))
    assert root.get("time") == "2026-05-01T08:00:00.123Z"
    assert root.get("stale") == "2026-05-01T08:03:00.123Z"
    env.expires_at.FromSeconds(1_777_622_460)
    assert parsed(codec().encode([env])).get("stale") == "2026-05-01T08:01:00.000Z"
    assert parsed(codec(position_stale_s=300.0).encode([position()])).get("stale") == "2026-05-01T08:05:00.123Z"


def test_a_position_without_a_type_is_a_friendly_ground_unit() -> None:
    root = parsed(codec().encode([position(unit_type="")]))
    assert root.get("type") == "a-f-G"


@pytest.mark.parametrize("name", POSITIONS)
def test_samples_round_trip_to_the_same_envelope(name: str) -> None:
    cot = codec()
    env = decode_one(sample(name))
    assert decode_one(cot.encode([env])) == env


def test_an_incident_from_elsewhere_is_a_red_marker_with_its_report_in_the_remarks() -> None:
    env = factories.incident()
    env.geometry.point.lat, env.geometry.point.lon = 34.8, 113.7
    env.incident.title = "某化工厂火灾"
    env.incident.address = "郑州市中牟县"
    env.incident.casualties.injured = 3
    root = parsed(codec().encode([env]))
    assert root.get("type") == "b-m-p-s-m"
    assert root.get("uid") == "ZZ-JS-1"  # every report of one incident moves the same marker
    time = parse_time(root.get("time", ""), "time")
    assert parse_time(root.get("stale", ""), "stale").seconds - time.seconds == 86400
    detail = root.find("detail")
    assert detail is not None
    assert detail.find("contact").get("callsign") == "某化工厂火灾"  # type: ignore[union-attr]
    assert detail.find("color").get("argb") == "-65536"  # type: ignore[union-attr]
    remarks = detail.findtext("remarks") or ""
    assert "郑州市中牟县" in remarks
    assert "injured 3" in remarks


def test_a_cot_emergency_round_trips_as_an_incident() -> None:
    detail = '<contact callsign="corvTab-Alert"/><emergency type="911 Alert">corvTab</emergency>'
    env = decode_one(event_xml(uid="ANDROID-1-9-1-1", cot_type="b-a-o-tbl", detail=detail))
    assert decode_one(codec().encode([env])) == env


def test_an_incident_without_geometry_is_placed_at_its_region() -> None:
    env = factories.incident(region="410100")
    root = parsed(codec().encode([env]))
    place = CONTEXT.places.point_of("410100")
    assert place is not None
    point = root.find("point")
    assert point is not None
    assert (float(point.get("lat", "")), float(point.get("lon", ""))) == (place.lat, place.lon)


def cap_alert(name: str) -> pb.Envelope:
    raw = (DATA / "cap" / name).read_bytes()
    return CapCodec(CapConfig(agency="meteorology", region="410000"), CONTEXT).decode(raw)[0]


def test_a_warning_is_a_coloured_marker_and_its_polygons() -> None:
    env = cap_alert("v1dot2_appendix_adot2.xml")
    events = codec().encode([env]).splitlines()
    marker, *shapes = (parsed(event) for event in events)
    assert marker.get("uid") == env.id
    assert marker.get("type") == "b-m-p-s-m"
    info = env.alert.infos[0]
    assert marker.find("detail/contact").get("callsign") == info.headline  # type: ignore[union-attr]
    assert marker.find("detail/color").get("argb") == str(ARGB_OF_SEVERITY[env.severity])  # type: ignore[union-attr]
    assert info.description.strip()[:40] in (marker.findtext("detail/remarks") or "")
    polygons = [p for area in info.areas for p in area.polygons]
    assert [s.get("type") for s in shapes] == ["u-d-f"] * len(polygons)
    assert [s.get("uid") for s in shapes] == [f"{env.id}.shape{k}" for k in range(len(polygons))]
    vertices = [link.get("point") for link in shapes[0].iter("link") if link.get("point")]
    assert vertices == [f"{p.lat!r},{p.lon!r}" for p in polygons[0].points]
    assert env.HasField("expires_at")
    assert parse_time(marker.get("stale", ""), "stale") == env.expires_at
    assert all(s.get("stale") == marker.get("stale") for s in shapes)


def test_a_warning_with_a_circle_is_drawn_as_a_circle() -> None:
    env = factories.alert()
    env.alert.infos[0].areas[0].circles.add(radius_m=2500.0).center.CopyFrom(pb.Point(lat=34.75, lon=113.6))
    events = [parsed(event) for event in codec().encode([env]).splitlines()]
    assert [e.get("type") for e in events] == ["b-m-p-s-m", "u-d-f", "u-d-c-c"]
    ellipse = events[2].find("detail/shape/ellipse")
    assert ellipse is not None
    assert (ellipse.get("major"), ellipse.get("minor")) == ("2500.0", "2500.0")
    point = events[2].find("point")
    assert point is not None
    assert (point.get("lat"), point.get("lon")) == ("34.75", "113.6")


def test_a_circle_of_radius_zero_is_only_the_marker() -> None:
    env = cap_alert("v1dot2_appendix_adot3.xml")  # an earthquake's epicentre as "lat,lon 0"
    events = [parsed(event) for event in codec().encode([env]).splitlines()]
    assert [e.get("type") for e in events] == ["b-m-p-s-m"]
    point = events[0].find("point")
    circle = env.alert.infos[0].areas[0].circles[0]
    assert point is not None
    assert (float(point.get("lat", "")), float(point.get("lon", ""))) == (circle.center.lat, circle.center.lon)


def test_a_warning_without_expiry_stays_a_day() -> None:
    env = factories.alert(region="410102")
    marker = parsed(codec().encode([env]).splitlines()[0])
    time = parse_time(marker.get("time", ""), "time")
    assert parse_time(marker.get("stale", ""), "stale").seconds - time.seconds == 86400


def test_a_cancelled_warning_deletes_the_markers_it_references() -> None:
    env = factories.alert()
    env.alert.msg_type = "Cancel"
    env.references.extend(["cap-aaa", "cap-bbb"])
    events = [parsed(event) for event in codec().encode([env]).splitlines()]
    assert [e.get("type") for e in events] == ["t-x-d-d", "t-x-d-d"]
    assert [e.find("detail/link").get("uid") for e in events] == ["cap-aaa", "cap-bbb"]  # type: ignore[union-attr]


def test_export_refuses_other_kinds_and_text_xml_cannot_carry() -> None:
    with pytest.raises(AdapterError) as caught:
        codec().encode([factories.observation()])
    assert caught.value.kind == "unsupported"
    assert "OBSERVATION" in caught.value.reason
    with pytest.raises(AdapterError) as caught:
        codec().encode([position(callsign="bell\x07")])
    assert caught.value.kind == "canonical"
    assert "U+0007" in caught.value.reason


def test_ping_and_its_reply() -> None:
    ping = parse_event(encode_ping("yiwang-tak-410100", 1_777_622_400.0))
    assert (ping.uid, ping.type) == ("yiwang-tak-410100", "t-x-c-t")
    assert ping.stale is not None
    assert ping.stale.seconds - ping.time.seconds == 20
    assert parse_event(encode_ping("s", 1_777_622_400.0, reply=True)).type == "t-x-c-t-r"


# -- the type table against MITRE's ----------------------------------------------------------------------


def mitre() -> Element:
    return safexml.parse(Path(shared(MITRE)).read_bytes())


def words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@pytest.mark.parametrize("entry", [e for e in types.TYPES.values() if e.source == "mitre"], ids=lambda e: e.key)
def test_each_mitre_entry_names_what_mitre_names(entry: types.TypeEntry) -> None:
    found = [c for c in mitre().iter("cot") if c.get("cot") == entry.key]
    assert found, f"{entry.key} is not in MITRE's type tree"
    names = {words(found[0].get("desc", ""))} | {words(found[0].get("full", "").rsplit("/", 1)[-1])}
    assert words(entry.name) in names


def test_tak_entries_are_not_claimed_from_mitre() -> None:
    known = {c.get("cot") for c in mitre().iter("cot")}
    assert not [e.key for e in types.TYPES.values() if e.source == "tak" and e.key in known]


def test_affiliations_and_dimensions_are_mitre_s() -> None:
    matches = {i.get("match", ""): i.get("what", "") for i in mitre().iter("is")}
    for letter, name in types.AFFILIATIONS.items():
        assert matches[f"^a-{letter}-"] == name
    for letter, name in types.DIMENSIONS.items():
        what = matches.get(f"^a-.-{letter}")
        if letter in types.DIMENSIONS_NOT_IN_MITRE:
            assert what is None
        else:
            assert what is not None
            assert what in name


@pytest.mark.parametrize(
    ("cot_type", "described"),
    [
        ("a-f-G-U-C", "friendly ground combat"),
        ("a-h-A-M-H-H", "hostile air combat search and rescue (csar)"),
        ("a-n-G", "neutral ground"),
        ("a-u-G-E-V-m-x", "unknown ground ambulance"),
        ("b-m-p-s-m", "spot map marker"),
        ("b-l-f-a-s", "alarm (b-l-f-a-s)"),
        ("q-x", "CoT type q-x"),
    ],
)
def test_describe(cot_type: str, described: str) -> None:
    assert types.describe(cot_type) == described


# -- fuzzing: only AdapterError may escape --------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
SEEDS = [STREAM, *STREAM_EVENTS[:3], BILLION_LAUGHS]


def decodes_or_refuses(raw: bytes) -> None:
    try:
        envelopes, errors = codec().decode_report(raw)
    except AdapterError:
        return
    assert all(isinstance(error, AdapterError) for error in errors)
    for env in envelopes:
        VALIDATOR.check(env, env.ByteSize())


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(min_value=0, max_value=600), max_size=12))
def test_fuzz_stream_decoder_splits_do_not_matter(raw: bytes, cuts: list[int]) -> None:
    whole = frame_all([raw], max_event_bytes=256)
    assert frame_all(split_at(raw, cuts), max_event_bytes=256) == whole
    assert frame_all([raw[i : i + 1] for i in range(len(raw))], max_event_bytes=256) == whole


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(min_value=0, max_value=20_000), st.binary(max_size=8)), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=8),
)
def test_fuzz_mutated_streams(seed: bytes, edits: list[tuple[int, bytes]], cuts: list[int]) -> None:
    raw = bytearray(seed)
    for position_, replacement in edits:
        at = position_ % (len(raw) + 1)
        raw[at : at + len(replacement)] = replacement
    data = bytes(raw)
    assert frame_all(split_at(data, cuts)) == frame_all([data])
    decodes_or_refuses(data)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes(raw: bytes) -> None:
    decodes_or_refuses(raw)
    try:
        env = codec().decode_datagram(raw)
    except AdapterError:
        return
    VALIDATOR.check(env, env.ByteSize())


@FUZZ
@given(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Cn"], include_characters="\t\n\r"),
        min_size=1,
        max_size=30,
    ),
    st.floats(min_value=-90, max_value=90),
    st.floats(min_value=-180, max_value=180),
    st.floats(min_value=0, max_value=400, exclude_max=True),
    st.floats(min_value=0, max_value=360, exclude_max=True),
    st.integers(min_value=946_684_800_000_000_000, max_value=1_760_000_000_000_000_000),
)
def test_fuzz_positions_round_trip(
    callsign: str, lat: float, lon: float, speed: float, course: float, nanos: int
) -> None:
    env = position(callsign=callsign, speed_mps=speed, course_deg=course)
    env.geometry.point.lat, env.geometry.point.lon = lat, lon
    env.sent_at.FromNanoseconds(nanos)
    env.observed_at.FromNanoseconds(nanos)
    back = codec().decode(codec(position_stale_s=60.0).encode([env]))[0]
    assert back.position == env.position
    assert back.geometry.point == env.geometry.point
    assert back.observed_at == env.observed_at
