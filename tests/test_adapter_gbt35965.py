"""The GB/T 35965 codec against the real Henan warning, our own samples, hostile and broken input."""

from __future__ import annotations

import dataclasses
import datetime as dt
from xml.sax.saxutils import escape

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.gbt35965 import ADAPTER, Gbt35965Codec, Gbt35965Config
from adapters.gbt35965.events import METEOROLOGICAL_EVENTS, event_name
from adapters.plugin import AdapterContext, stable_id
from gateway.errors import ConfigError
from gateway.regions import default_table
from gateway.validation import Validator
from tests.samples import data, shared

HENAN = "cap-cn/henan-qxj-20200205-wind-blue_gbt35965-style.xml"
OWN_SAMPLES = [
    "gbt35965/zhengzhou-rainstorm-red.xml",
    "gbt35965/zhengzhou-rainstorm-cancel.xml",
    "gbt35965/kaifeng-fog-yellow-circle.xml",
]
BEIJING = dt.timezone(dt.timedelta(hours=8))


def codec(**config: str) -> Gbt35965Codec:
    opened = ADAPTER.open("gbt35965", ADAPTER.load_config(config), AdapterContext())
    assert isinstance(opened, Gbt35965Codec)
    return opened


def decode_one(document: bytes, **config: str) -> pb.Envelope:
    [env] = codec(**config).decode(document)
    return env


def seconds(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    """POSIX seconds of a Beijing wall-clock time."""
    return int(dt.datetime(year, month, day, hour, minute, second, tzinfo=BEIJING).timestamp())


def assert_valid(env: pb.Envelope) -> None:
    Validator(default_table()).check(env, env.ByteSize())


def minimal(
    *,
    identifier: str = "41000041600000_20240601080000",
    send_time: str = "2024-06-01 08:00:00+08:00",
    severity: str = "Blue",
    area: str = "<geocode>410000000000</geocode>",
    extra: str = "",
    info_extra: str = "",
) -> bytes:
    """A small valid document with the parts a test varies."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert>
    <identifier>{identifier}</identifier>
    <sender>河南省气象局</sender>
    <senderCode>41000041600000</senderCode>
    <sendTime>{send_time}</sendTime>
    <status>Actual</status>
    <msgType>Alert</msgType>
    <scope>Public</scope>
    {extra}
    <info>
        <language>zh-CN</language>
        <eventType>11B09</eventType>
        <severity>{severity}</severity>
        {info_extra}
        <area><areaDesc>测试区</areaDesc>{area}</area>
    </info>
</alert>
""".encode()


# -- the manifest -------------------------------------------------------------------------------


def test_manifest_is_sound() -> None:
    manifest = ADAPTER.manifest
    assert manifest.problems() == []
    assert (manifest.name, manifest.inbound, manifest.outbound) == ("gbt35965", ("gbt35965",), ("gbt35965",))
    assert manifest.agency == "meteorology"
    assert manifest.config is Gbt35965Config
    assert Gbt35965Config.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert manifest.schema()["keys"]["default_time_zone"]["default"] == "+08:00"


def test_config_is_checked_at_load() -> None:
    assert ADAPTER.load_config({}).agency == "meteorology"
    with pytest.raises(ConfigError, match="colour"):
        ADAPTER.load_config({"colour": "blue"}, source="adapters.toml")
    with pytest.raises(ConfigError, match="default_time_zone"):
        ADAPTER.load_config({"default_time_zone": "CST"})


# -- the real Henan warning ---------------------------------------------------------------------


def test_henan_sample_every_field() -> None:
    env = decode_one(shared(HENAN).read_bytes())
    identifier = "41000041600000_20200205105119"
    assert env.id == stable_id("gbt35965", "41000041600000", identifier)
    assert env.kind == pb.ALERT
    assert env.region == "410000"  # from the geocodes
    assert (env.origin.agency, env.origin.region, env.origin.system) == ("meteorology", "410000", "gbt35965")
    assert env.sent_at.seconds == seconds(2020, 2, 5, 10, 45, 0)
    assert not env.HasField("expires_at")  # <expires/> is empty
    assert env.severity == pb.BLUE
    assert env.status == pb.ACTUAL
    assert list(env.references) == [stable_id("gbt35965", "41000041600000", "41000041600000_20200204121842")]
    assert (env.provenance.original_format, env.provenance.original_id) == ("gbt35965", identifier)
    assert not env.HasField("geometry")

    alert = env.alert
    assert alert.identifier == identifier
    assert alert.sender == "河南省气象局"
    assert alert.sender_code == "41000041600000"
    assert alert.sent == env.sent_at
    assert alert.time_zone == "+08:00"
    assert (alert.status, alert.msg_type, alert.scope) == ("Actual", "Update", "Public")
    assert alert.sec_classification == "None"
    assert alert.note == ""
    assert alert.references == "41000041600000_20200204121842"
    assert alert.event_type_code == "11B06"
    assert alert.dissemination == "SPEAKER,SMS,WEB"
    assert [m.name for m in alert.methods] == ["SPEAKER", "SMS", "WEB"]
    speaker, sms, web = alert.methods
    assert speaker.message.startswith("河南省气象局2020年02月05日10时53分39秒大风蓝色预警[IV级/一般]")
    assert speaker.audience_groups == "31aec396-ba79-46fe-9958-a0787dcfd030,"
    assert sms.audience_groups == "d90a8856-1183-47b0-8d8d-29b0dbee6216,5080d87d-fd9e-4016-8d8d-2a86df9ab50a,"
    assert web.audience_groups == ""
    assert {m.audience_parts for m in alert.methods} == {","}  # <audenceprt>, spelt as the source spells it

    [info] = alert.infos
    assert info.language == "zh-CN"
    assert info.event == "大风"
    assert [(c.name, c.value) for c in info.event_codes] == [("GB/T 35965", "11B06")]
    assert (info.urgency, info.severity, info.certainty) == ("Unknown", "Blue", "Unknown")
    assert info.effective.seconds == seconds(2020, 2, 5, 10, 57, 42)
    assert not info.HasField("onset")
    assert not info.HasField("expires")
    assert info.sender_name == "李飞"
    assert info.headline == "河南省气象局发布大风蓝色预警[IV级/一般]"
    assert info.description.startswith("河南省气象台2020年02月05日10时45分继续发布大风蓝色预警")
    assert info.description.endswith("阵风6到7级。请注意防范。")
    assert (info.instruction, info.web) == ("", "")
    [area] = info.areas
    assert area.description == "河南省,河南省"
    assert not area.polygons
    assert not area.circles
    assert [(g.name, g.value) for g in area.geocodes] == [("GB/T 2260", "410000000000")] * 2
    assert_valid(env)


def test_henan_sample_is_written_back_byte_for_byte() -> None:
    document = shared(HENAN).read_bytes()
    gbt = codec()
    assert gbt.encode(gbt.decode(document)) == document


def test_origin_comes_from_the_config() -> None:
    env = decode_one(shared(HENAN).read_bytes(), agency="emergency", region="410100", system="qxj-warning")
    assert (env.origin.agency, env.origin.region, env.origin.system) == ("emergency", "410100", "qxj-warning")
    assert env.region == "410000"  # the content's region is still the alert's own


# -- our own samples ----------------------------------------------------------------------------


def test_rainstorm_red_for_zhengzhou() -> None:
    env = decode_one(data("gbt35965/zhengzhou-rainstorm-red.xml").read_bytes())
    identifier = "41010041600000_20240720163000_1"
    assert len(identifier) == 31
    assert env.id == stable_id("gbt35965", "41010041600000", identifier)
    assert env.region == "410100"  # 410100, 410122 and 410184 all lie in 郑州市
    assert env.severity == pb.RED
    assert env.sent_at.seconds == seconds(2024, 7, 20, 16, 30, 0)
    assert env.expires_at.seconds == seconds(2024, 7, 21, 16, 30, 0)
    assert not env.references
    [polygon] = env.geometry.polygons
    assert [(p.lat, p.lon) for p in polygon.points][:2] == [(34.85, 113.45), (34.85, 114.05)]
    [info] = env.alert.infos
    assert info.event == "暴雨"
    assert info.onset.seconds == env.sent_at.seconds
    assert info.web.endswith(identifier)
    assert list(info.areas[0].polygons) == list(env.geometry.polygons)
    assert [m.audience_parts for m in env.alert.methods] == [",", ""]
    assert_valid(env)


def test_cancellation_references_the_warning() -> None:
    red = decode_one(data("gbt35965/zhengzhou-rainstorm-red.xml").read_bytes())
    cancel = decode_one(data("gbt35965/zhengzhou-rainstorm-cancel.xml").read_bytes())
    assert cancel.alert.msg_type == "Cancel"
    assert list(cancel.references) == [red.id]
    assert cancel.alert.references == red.alert.identifier
    assert cancel.severity == pb.RED
    assert cancel.alert.infos[0].severity == "红色"
    assert_valid(cancel)


def test_fog_exercise_placed_by_its_circle() -> None:
    env = decode_one(data("gbt35965/kaifeng-fog-yellow-circle.xml").read_bytes())
    assert env.region.startswith("4102")  # a district of 开封市, nearest the circle's centre
    assert env.status == pb.EXERCISE
    assert env.severity == pb.YELLOW
    assert env.alert.infos[0].severity == "III级"
    assert env.alert.time_zone == "+08:00"  # written without an offset: Beijing time
    assert env.sent_at.seconds == seconds(2024, 1, 17, 6, 20, 0)
    [circle] = env.geometry.circles
    assert (circle.center.lat, circle.center.lon, circle.radius_m) == (34.7979, 114.3077, 25_000.0)
    assert env.alert.event_type_code == "11B17"
    assert not env.alert.methods
    assert_valid(env)


@pytest.mark.parametrize("name", OWN_SAMPLES)
def test_own_samples_round_trip(name: str) -> None:
    gbt = codec()
    first = gbt.decode(data(name).read_bytes())
    again = gbt.decode(gbt.encode(first))
    assert again == first


def test_round_trip_keeps_fractions_zones_and_extra_cap_fields() -> None:
    document = minimal(
        send_time="2024-06-01T08:00:00.25-05:30",
        extra="<source>自动站</source><incidents>inc-1</incidents>",
        info_extra="""<category>Met</category><responseType>Shelter</responseType><audience>公众</audience>
        <contact>12121</contact><parameter><valueName>signal</valueName><value>高温黄色</value></parameter>
        <expires>2024-06-02 08:00:00+08:00</expires>""",
        area="<circle>34.1,113.2 0.0015</circle><altitude>100</altitude><ceiling>3280.84</ceiling>",
    )
    gbt = codec()
    env = decode_one(document)
    assert env.alert.time_zone == "-05:30"
    assert env.sent_at.nanos == 250_000_000
    info = env.alert.infos[0]
    assert (list(info.categories), list(info.response_types)) == (["Met"], ["Shelter"])
    assert (info.audience, info.contact, env.alert.source, env.alert.incidents) == ("公众", "12121", "自动站", "inc-1")
    assert [(p.name, p.value) for p in info.parameters] == [("signal", "高温黄色")]
    area = info.areas[0]
    assert area.circles[0].radius_m == 1.5
    assert area.altitude_m == pytest.approx(30.48)
    written = gbt.encode([env])
    assert b"<sendTime>2024-06-01 08:00:00.25-05:30</sendTime>" in written
    assert b"<expires>2024-06-01 18:30:00-05:30</expires>" in written  # in the alert's own zone
    assert gbt.decode(written) == [env]


@settings(max_examples=60, deadline=None)
@given(text=st.text(st.characters(codec="utf-8"), max_size=80))
def test_any_text_survives_a_round_trip(text: str) -> None:
    clean = "".join(c for c in text if c in "\t\n" or (c >= " " and c not in "\ufffe\uffff"))
    document = minimal(info_extra=f"<description>{escape(clean)}</description><headline>{escape(clean)}</headline>")
    gbt = codec()
    first = gbt.decode(document)
    assert first[0].alert.infos[0].description == clean.strip()
    assert gbt.decode(gbt.encode(first)) == first


def test_encoding_an_envelope_of_another_origin() -> None:
    env = pb.Envelope(id="cap-1", kind=pb.ALERT, region="410100", status=pb.TEST, severity=pb.ORANGE)
    env.sent_at.FromSeconds(seconds(2024, 5, 1, 9, 0, 0))
    env.alert.identifier = "CAP-42"
    env.alert.dissemination = "SMS,WEB"
    env.alert.infos.add(event="Flood", severity="Severe")
    env.alert.infos.add(event="洪水", severity="")
    written = codec().encode([env])
    assert b"<sendTime>2024-05-01 09:00:00+08:00</sendTime>" in written
    assert b"<status>Test</status>" in written
    assert b"<eventType>Flood</eventType>" in written
    assert b"<severity>Orange</severity>" in written  # the envelope's colour when the info has no word
    back = decode_one(written, region="410100")
    assert back.severity == pb.ORANGE
    assert [m.name for m in back.alert.methods] == ["SMS", "WEB"]
    assert back.region == "410100"


def test_encode_refuses_what_the_format_cannot_hold() -> None:
    gbt = codec()
    env = decode_one(shared(HENAN).read_bytes())
    with pytest.raises(AdapterError, match="exactly one"):
        gbt.encode([env, env])
    with pytest.raises(AdapterError) as kind:
        gbt.encode([pb.Envelope(id="x", kind=pb.HEARTBEAT)])
    assert kind.value.kind == "canonical"
    bad = pb.Envelope()
    bad.CopyFrom(env)
    bad.alert.infos[0].headline = "bell \x07"
    with pytest.raises(AdapterError) as char:
        gbt.encode([bad])
    assert (char.value.field, char.value.kind) == ("headline", "encoding")
    bad.CopyFrom(env)
    bad.alert.time_zone = "CST"
    with pytest.raises(AdapterError, match=r"\+08:00"):
        gbt.encode([bad])


# -- severity, region, events ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "colour"),
    [
        ("Red", pb.RED),
        ("red", pb.RED),
        ("红色", pb.RED),
        ("I级", pb.RED),
        ("Ⅰ级", pb.RED),
        ("Extreme", pb.RED),
        ("Orange", pb.ORANGE),
        ("橙色", pb.ORANGE),
        ("II", pb.ORANGE),
        ("Yellow", pb.YELLOW),
        ("黄色预警", pb.YELLOW),
        ("III级", pb.YELLOW),
        ("Blue", pb.BLUE),
        ("蓝色", pb.BLUE),
        ("IV级", pb.BLUE),
        ("一般", pb.BLUE),
        ("Unknown", pb.SEVERITY_UNSPECIFIED),
    ],
)
def test_severity_words(word: str, colour: int) -> None:
    env = decode_one(minimal(severity=word))
    assert env.severity == colour
    assert env.alert.infos[0].severity == word
    assert_valid(env)


@pytest.mark.parametrize("word", ["Purple", "V级", "很严重", ""])
def test_unknown_severity_names_the_field(word: str) -> None:
    with pytest.raises(AdapterError) as raised:
        decode_one(minimal(severity=word))
    assert raised.value.field == "alert.info[0].severity"


def test_envelope_severity_is_the_highest_of_its_infos() -> None:
    two_infos = minimal(severity="Blue").replace(
        b"</alert>", b"<info><eventType>11B09</eventType><severity>Orange</severity></info></alert>"
    )
    assert decode_one(two_infos).severity == pb.ORANGE


def test_region_from_identifier_then_place_then_sender_code_then_config() -> None:
    no_geocode = minimal(identifier="41030041600000_20240601080000_3", area="")
    assert decode_one(no_geocode).region == "410300"
    circle = "<circle>35.75,114.30 10</circle>"  # 鹤壁 area
    by_place = decode_one(minimal(identifier="HB-1", area=circle))
    assert by_place.region.startswith("4106")
    far_away = "<circle>0.0,-150.0 10</circle>"  # the Pacific: no division is near
    by_sender = decode_one(minimal(identifier="X-1", area=far_away))
    assert by_sender.region == "410000"
    no_sender = minimal(identifier="X-1", area=far_away).replace(b"41000041600000", b"NOCODE")
    assert decode_one(no_sender, region="411700").region == "411700"
    with pytest.raises(AdapterError, match="no region") as raised:
        decode_one(no_sender)
    assert raised.value.kind == "missing"


def test_geocodes_in_different_provinces_keep_the_first() -> None:
    env = decode_one(minimal(area="<geocode>410100000000，420100000000</geocode>"))
    assert env.region == "410100"
    assert [g.value for g in env.alert.infos[0].areas[0].geocodes] == ["410100000000", "420100000000"]


def test_event_names() -> None:
    for code, name in [("11B01", "台风"), ("11B03", "暴雨"), ("11B04", "暴雪"), ("11B05", "寒潮"), ("11B06", "大风")]:
        assert METEOROLOGICAL_EVENTS[code] == name
    for name in ["沙尘暴", "高温", "干旱", "雷电", "冰雹", "霜冻", "大雾", "霾", "道路结冰"]:
        assert name in METEOROLOGICAL_EVENTS.values()
    assert event_name("11b17") == "大雾"
    assert event_name("11B99") == "11B99"  # not guessed
    assert decode_one(minimal()).alert.infos[0].event == "高温"


def test_cap_style_reference_triples() -> None:
    triple = (
        "<references>河南省气象局,41000041600000_20240531080000,2024-05-31T08:00:00+08:00"
        " other,X-9,2024-05-31T09:00:00+08:00</references>"
    )
    env = decode_one(minimal(extra=triple))
    assert list(env.references) == [
        stable_id("gbt35965", "41000041600000", "41000041600000_20240531080000"),
        stable_id("gbt35965", "other", "X-9"),
    ]


# -- broken and hostile input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "where"),
    [
        (minimal(identifier=""), "alert.identifier"),
        (minimal(identifier="two words"), "alert.identifier"),
        (minimal(send_time=""), "alert.sendTime"),
        (minimal(send_time="2020-02-30 10:00:00+08:00"), "alert.sendTime"),
        (minimal(send_time="yesterday"), "alert.sendTime"),
        (minimal(send_time="1999-12-31 10:00:00+08:00"), "alert.sendTime"),
        (minimal(send_time="2024-06-01 08:00:00+25:00"), "alert.sendTime"),
        (minimal(info_extra="<expires>2024-06-01 07:00:00+08:00</expires>"), "alert.info[0].expires"),
        (minimal(info_extra="<onset>soon</onset>"), "alert.info[0].onset"),
        (minimal(area="<polygon>34,113 35,113 35,114 34,113.5</polygon>"), "alert.info[0].area[0].polygon[0]"),
        (minimal(area="<polygon>34,113 35,113 34,113</polygon>"), "alert.info[0].area[0].polygon[0]"),
        (minimal(area="<polygon>95,113 35,113 35,114 95,113</polygon>"), "alert.info[0].area[0].polygon[0]"),
        (minimal(area="<circle>34,113 nan</circle>"), "alert.info[0].area[0].circle[0]"),
        (minimal(area="<circle>34,113 -1</circle>"), "alert.info[0].area[0].circle[0]"),
        (minimal(area="<circle>34,１１３ 1</circle>"), "alert.info[0].area[0].circle[0]"),
        (minimal(extra="<sender>again</sender>"), "alert.sender"),
        (minimal().replace(b"<status>Actual</status>", b"<status>Maybe</status>"), "alert.status"),
        (minimal().replace(b"<eventType>11B09</eventType>", b""), "alert.info[0].eventType"),
        (minimal().replace(b"<info>", b"<nfo>").replace(b"</info>", b"</nfo>"), "alert.info"),
        (b"<feed><entry/></feed>", "feed"),
    ],
)
def test_errors_name_the_field(document: bytes, where: str) -> None:
    with pytest.raises(AdapterError) as raised:
        decode_one(document)
    assert raised.value.field == where


@pytest.mark.parametrize(
    "document",
    [
        b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert>&x;</alert>',
        b'<?xml version="1.0"?><!DOCTYPE alert [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]><alert>&b;</alert>',
        b'<alert xmlns:xi="http://www.w3.org/2001/XInclude"><xi:include href="file:///etc/passwd"/></alert>',
    ],
)
def test_hostile_xml_is_refused(document: bytes) -> None:
    with pytest.raises(AdapterError) as raised:
        decode_one(document)
    assert raised.value.kind == "hostile"


@pytest.mark.parametrize("document", [b"", b"<alert>", b"not xml at all", b"<alert><identifier>x</alert>"])
def test_malformed_xml(document: bytes) -> None:
    with pytest.raises(AdapterError) as raised:
        decode_one(document)
    assert raised.value.kind == "xml"


# -- fuzzing: only AdapterError may escape ------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _corpus() -> list[bytes]:
    return [data(name).read_bytes() for name in OWN_SAMPLES]


def decode_or_refuse(document: bytes) -> None:
    gbt = codec()
    try:
        envelopes = gbt.decode(document)
    except AdapterError:
        return
    for env in envelopes:  # whatever is accepted must be a valid envelope and survive a round trip
        assert_valid(env)
        assert gbt.decode(gbt.encode(envelopes)) == envelopes


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes(document: bytes) -> None:
    decode_or_refuse(document)


@FUZZ
@given(st.integers(0, len(_corpus()) - 1), st.data())
def test_fuzz_mutated_samples(which: int, draw: st.DataObject) -> None:
    document = bytearray(_corpus()[which])
    for _ in range(draw.draw(st.integers(1, 8))):
        at = draw.draw(st.integers(0, len(document) - 1))
        document[at] = draw.draw(st.integers(0, 255))
    decode_or_refuse(bytes(document))


@FUZZ
@given(st.integers(0, len(_corpus()) - 1), st.data())
def test_fuzz_truncated_and_spliced_samples(which: int, draw: st.DataObject) -> None:
    document = _corpus()[which]
    cut = draw.draw(st.integers(0, len(document)))
    tail = draw.draw(st.sampled_from([b"", b"</info></alert>", b"<polygon>1,2 3,4</polygon></area></info></alert>"]))
    decode_or_refuse(document[:cut] + tail)


def test_every_prefix_of_a_sample_is_refused_cleanly() -> None:
    document = data(OWN_SAMPLES[0]).read_bytes()
    for cut in range(0, len(document) - 10, 7):
        with pytest.raises(AdapterError):
            codec().decode(document[:cut])


@settings(max_examples=80, deadline=None)
@given(
    st.text(alphabet="0123456789-: T+Z.", max_size=32),
)
def test_fuzz_times(written: str) -> None:
    decode_or_refuse(minimal(send_time=written))


def test_config_is_a_frozen_dataclass() -> None:
    config = Gbt35965Config(region="410100")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.region = "410200"  # type: ignore[misc]


def test_a_send_time_in_the_future_is_refused_by_the_codecs_clock() -> None:
    document = minimal(send_time="2024-06-01 08:20:00+08:00")
    before = seconds(2024, 6, 1, 8, 0, 0)
    early = Gbt35965Codec(Gbt35965Config(), AdapterContext(now=lambda: before))
    with pytest.raises(AdapterError, match="future") as raised:
        early.decode(document)
    assert raised.value.field == "alert.sendTime"
    in_time = Gbt35965Codec(Gbt35965Config(), AdapterContext(now=lambda: before + 600))
    assert in_time.decode(document)[0].sent_at.seconds == before + 1200


def test_an_alert_too_large_for_an_envelope_is_refused() -> None:
    with pytest.raises(AdapterError) as raised:
        decode_one(minimal(extra=f"<note>{'注' * 400_000}</note>"))
    assert raised.value.kind == "size"


def test_negative_zero_coordinates_are_plain_zero() -> None:
    env = decode_one(minimal(area="<circle>-0.0,-0 -0</circle>"), region="410000")
    circle = env.geometry.circles[0]
    assert str((circle.center.lat, circle.center.lon, circle.radius_m)) == "(0.0, 0.0, 0.0)"
    gbt = codec(region="410000")
    assert gbt.decode(gbt.encode([env])) == [env]
