"""The HJ 212 protocol: framing, CRC, packets, envelopes, answers, thresholds, versions, and the adapter.

Real packets where there are any (tests/data/hj212/SOURCES.md; the unlicensed receiver log and
README packets are read from the shared samples and skip without them), the standard's own CRC
vector, and packets built here (``packet``) for what the samples lack: flags, thresholds, split
messages, versions, broken fields. Every envelope a test sees is checked by the gateway's own
validator, and the fuzz tests hold the one invariant: only AdapterError ever escapes.
"""

from __future__ import annotations

import datetime as dt
import random
import tracemalloc
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.hj212 import ADAPTER, MANIFEST, PROTOCOL, Hj212Codec, Hj212Config, Hj212Error, Hj212Protocol, Packet
from adapters.hj212 import codes as hj_codes
from adapters.hj212.crc import crc16, crc_text
from adapters.hj212.frame import MAX_SEGMENT_BYTES, frame
from adapters.hj212.observations import BEIJING, FLAG_QUALITY, parse_time
from adapters.hj212.packet import parse_segment
from adapters.hj212.session import Hj212Session
from adapters.plugin import AdapterConfig, AdapterContext
from adapters.station_protocol import Exchange, Limits, Message, Session, Station, StationProtocol
from gateway.errors import ConfigError
from gateway.regions import default_table
from gateway.routing import ALARM_ATTRIBUTE
from gateway.validation import Validator
from tests.samples import data, shared

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()
VALIDATOR = Validator(default_table())
MN = "010000A8900016F000169DC0"
STATION = Station(
    id=MN,
    password="123456",
    region="410102",
    agency="ecology_environment",
    name="郑州 中原区 污水处理厂排口",
    lat=34.75,
    lon=113.61,
    limits={"w01018": Limits(high=50.0), "w01001": Limits(low=6.0, high=9.0), "a34004-Avg": Limits(high=75.0)},
)

APPENDIX_A = "hj212/HJ212-2017_appendixA_crc_example.txt"
APPENDIX_C = "hj212/HJ212-2017_appendixC_datasegments_extracted.txt"  # shared only
GUOCAY = "hj212/guocay_hj212-protocol_ApplicationTest_SAMPLE.txt"
XIAOYAO = "hj212/xiaoyao9184_hj-t212-parser_T212ParserTest.txt"
CHENQI = "hj212/chenqi92_alltobs-hj212_README.txt"
LIRUOYU = "hj212/liruoyu2008_HJ212Interpreter_README.txt"  # shared only
TONYXIA = "hj212/tonyxia2016_HJ212Receiver_rx_Release.log"  # shared only

APPENDIX_A_SEGMENT = (
    b"QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&"
)


def packet(
    cp: str, *, cn: str = "2011", flag: str | None = "5", qn: str | None = "20251231120000123", **header: str
) -> bytes:
    """A packet of station ``MN`` with CP ``cp``; header fields in the standard's order."""
    fields = [("QN", qn), ("ST", header.pop("st", "32")), ("CN", cn), ("PW", header.pop("pw", "123456"))]
    fields += [("MN", header.pop("mn", MN)), ("Flag", flag)]
    fields += list(header.items())
    text = ";".join(f"{key}={value}" for key, value in fields if value is not None)
    return frame(f"{text};CP=&&{cp}&&".encode())


REALTIME = (
    "DataTime=20251231120000;w01018-Rtd=23.5,w01018-Flag=N;w00000-Rtd=12.1,w00000-Flag=N;w01001-Rtd=7.2,w01001-Flag=N"
)


def session(protocol: Hj212Protocol = PROTOCOL) -> Hj212Session:
    return protocol.session()


def admitted(envelopes: Sequence[pb.Envelope]) -> list[pb.Envelope]:
    for env in envelopes:
        VALIDATOR.check(env, env.ByteSize(), NOW)
    return list(envelopes)


def one_message(raw: bytes, protocol: Hj212Protocol = PROTOCOL) -> Message:
    items = session(protocol).feed(raw)
    assert len(items) == 1, items
    item = items[0]
    assert isinstance(item, Message), item
    return item


def exchange(raw: bytes, station: Station = STATION, protocol: Hj212Protocol = PROTOCOL) -> Exchange:
    s = session(protocol)
    message = one_message(raw, protocol)
    result = s.exchange(message, station, NOW)
    admitted(result.envelopes)
    return result


def summary(items: Sequence[Message | AdapterError]) -> list[tuple[str, ...]]:
    """What a feed gave, comparable across splits."""
    out: list[tuple[str, ...]] = []
    for item in items:
        if isinstance(item, Message):
            assert isinstance(item.content, Packet)
            out.append(("message", item.station_id, str(item.password), repr(item.content), str(item.size)))
        else:
            out.append(("error", item.kind, str(item.offset), str(item)))
    return out


def feed_in_pieces(raw: bytes, cuts: Sequence[int]) -> list[Message | AdapterError]:
    s = session()
    items: list[Message | AdapterError] = []
    last = 0
    for cut in sorted(set(cuts)):
        items += s.feed(raw[last:cut])
        last = cut
    items += s.feed(raw[last:])
    return items


def codec(region: str = "410100", **config: object) -> Hj212Codec:
    opened = ADAPTER.open("hj212", Hj212Config(region=region, **config), AdapterContext(now=lambda: NOW))  # type: ignore[arg-type]
    assert isinstance(opened, Hj212Codec)
    return opened


# -- the CRC -------------------------------------------------------------------------------------------


def test_appendix_a_crc_vector() -> None:
    raw = data(APPENDIX_A).read_bytes()
    assert crc16(APPENDIX_A_SEGMENT) == 0x1C80
    assert crc_text(APPENDIX_A_SEGMENT) == b"1C80"
    assert frame(APPENDIX_A_SEGMENT) == raw  # length, CRC and CRLF exactly as the standard writes them
    message = one_message(raw)
    assert isinstance(message.content, Packet)
    header = message.content.header
    assert (header.qn, header.st, header.cn, header.pw, header.mn, header.flag) == (
        "20160801085857223",
        "32",
        "1062",
        "100000",
        MN,
        5,
    )
    assert (header.version, header.wants_answer) == (1, True)
    assert message.content.get("RtdInterval") == "30"
    assert (message.station_id, message.password, message.size) == (MN, "100000", len(raw))


def test_crc_is_compared_case_insensitively() -> None:
    raw = packet(REALTIME)
    lower = raw[:-6] + raw[-6:-2].lower() + b"\r\n"
    assert raw != lower or not any(c in b"ABCDEF" for c in raw[-6:-2])
    assert isinstance(one_message(lower), Message)
    chenqi = data(CHENQI).read_bytes().splitlines(keepends=True)[0]
    assert chenqi.endswith(b"7d00\r\n")
    assert isinstance(one_message(chenqi), Message)


def test_a_wrong_crc_is_refused_naming_both() -> None:
    raw = bytearray(packet(REALTIME))
    raw[-6:-2] = b"0000" if raw[-6:-2] != b"0000" else b"1111"
    (error,) = session().feed(bytes(raw))
    assert isinstance(error, Hj212Error)
    assert error.kind == "crc"
    assert error.offset == 0
    assert crc_text(bytes(raw[6:-6])).decode() in str(error)


# -- the samples ----------------------------------------------------------------------------------------


def _decoded(raw: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
    envelopes, errors = codec().decode_report(raw)
    return admitted(envelopes), errors


def test_guocay_samples_three_valid_four_with_bad_crc() -> None:
    envelopes, errors = _decoded(data(GUOCAY).read_bytes())
    assert [e.kind for e in errors] == ["crc"] * 4  # the hand-edited variants
    assert len(envelopes) == 3
    first = envelopes[0]
    assert first.observation.station_id == "Y80110010000010"
    assert first.observation.station_type == "air quality"
    assert first.observation.interval == "realtime"
    metrics = {m.metric: m for m in first.observation.measurements}
    assert metrics["a21005-Rtd"].unit == "mg/m³"  # CO stays in mg/m³ at an air-quality station
    assert metrics["a21004-Rtd"].unit == "µg/m³"  # NO2 at an air-quality station
    assert metrics["a21007-Rtd"].value == pytest.approx(0.033)
    assert metrics["a21007-Rtd"].unit == ""  # not in our table: kept, without a unit
    assert all(m.quality == pb.GOOD and m.flag == "N" for m in first.observation.measurements)
    # the hand-edited variants keep QN, MN and DataTime, so they share the id: the log stores one
    assert len({e.id for e in envelopes}) == 1


def test_xiaoyao_2005_style_samples() -> None:
    envelopes, errors = _decoded(data(XIAOYAO).read_bytes())
    assert [(e.kind, e.offset) for e in errors] == [("crc", 0)]
    assert len(envelopes) == 2
    for env in envelopes:
        assert env.provenance.original_format == "hj212-2005"
        metrics = {m.metric: m for m in env.observation.measurements}
        assert set(metrics) == {"B01-Rtd", "011-Rtd", "060-Rtd"}
        assert (metrics["011-Rtd"].value, metrics["011-Rtd"].unit) == (231.0, "mg/L")  # COD, 2005 code
        assert metrics["B01-Rtd"].unit == "L/s"
        assert metrics["B01-Rtd"].quality == pb.QUALITY_UNSPECIFIED  # no flag sent
        assert metrics["060-Rtd"].quality == pb.GOOD
        at = dt.datetime(2016, 8, 24, 0, 38, 17, tzinfo=BEIJING)
        assert env.observed_at.ToDatetime(dt.UTC) == at
    # the 17-digit DataTime (with milliseconds) and the 14-digit one name the same second
    assert envelopes[0].observed_at == envelopes[1].observed_at
    assert envelopes[0].id != envelopes[1].id  # different DataTime text, different packets


def test_chenqi_samples_flag_8_and_a_2005_packet() -> None:
    envelopes, errors = _decoded(data(CHENQI).read_bytes())
    assert errors == []
    surface, old = envelopes
    assert surface.observation.station_type == "surface water quality"
    assert surface.provenance.original_format == "hj212-v2"  # Flag=8 announces version 2
    metrics = {m.metric: m for m in surface.observation.measurements}
    assert len(metrics) == 11
    assert metrics["w21003-Rtd"].value == pytest.approx(0.09055002)
    assert metrics["w21003-Rtd"].unit == "mg/L"
    assert old.provenance.original_format == "hj212-2005"
    assert [m.metric for m in old.observation.measurements] == ["ele01-Rtd", "ele02-Rtd"]


def test_liruoyu_samples() -> None:
    envelopes, errors = _decoded(shared(LIRUOYU).read_bytes())
    assert errors == []
    assert [e.kind for e in envelopes] == [pb.OBSERVATION, pb.HEARTBEAT, pb.OBSERVATION]  # 9011 gives none
    heartbeat = envelopes[1]
    assert heartbeat.heartbeat.subject == MN
    assert heartbeat.heartbeat.state == "restarted"
    assert heartbeat.attributes["hj212.restart_time"] == "2023-10-07T13:04:52+08:00"
    sampled = envelopes[0].observation.measurements[0]
    assert sampled.metric == "w01008-Rtd"


def test_receiver_log_with_noise_and_an_oversized_packet() -> None:
    raw = shared(TONYXIA).read_bytes()
    envelopes, errors = _decoded(raw)
    # two packets between timestamp lines and Modbus noise; the 1623-byte one has a bad CRC
    assert [e.observation.station_id for e in envelopes] == ["41050022000017", "88888880000001"]
    assert [e.kind for e in errors] == ["crc"]
    assert len(envelopes[1].observation.measurements) == 31
    # with the standard's own cap of 1024 the long packet is refused for its length instead
    _, capped = codec(max_segment_bytes=1024).decode_report(raw)
    assert [e.kind for e in capped] == ["length"]
    assert "1623" in str(capped[0])
    assert "1024" in str(capped[0])


def test_appendix_c_data_segments() -> None:
    lines = shared(APPENDIX_C).read_bytes().splitlines()
    assert len(lines) == 155
    refused: dict[int, AdapterError] = {}
    parsed: dict[int, Packet] = {}
    for number, line in enumerate(lines, 1):
        try:
            parsed[number] = parse_segment(line)
        except AdapterError as exc:
            refused[number] = exc
    elided = {n for n, line in enumerate(lines, 1) if "…".encode() in line}
    assert set(refused) <= elided | {62}
    assert refused[62].field == "ST"  # the standard's own typo: "QN=…534,ST=32"
    assert refused[50].field == "Flag"  # "Flag=5CP=&&": no ';' before CP
    s = session()
    for number in (68, 70, 72, 74, 76):  # 2081, 2011, 2051 and 2061 and 2031 of a noise station
        message = Message(MN, "123456", parsed[number], len(lines[number - 1]))
        result = s.exchange(message, STATION, NOW)
        assert admitted(result.envelopes)
        assert b"CN=9014" in result.reply_when_durable  # they all carry Flag=5
    noise = s.exchange(Message(MN, "123456", parsed[72], 0), STATION, NOW).envelopes[0]
    leq = next(m for m in noise.observation.measurements if m.metric == "Leq-Data")
    assert (leq.value, leq.unit, noise.observation.interval) == (50.0, "dB(A)", "PT1M")


# -- framing --------------------------------------------------------------------------------------------


def _stream() -> bytes:
    """Valid packets of every sample shipped here, noise between them, bad ones among them."""
    parts = [
        b"garbage before\r\n",
        data(APPENDIX_A).read_bytes(),
        b"#",  # a lone '#' between packets
        data(GUOCAY).read_bytes(),
        b"\x00\xff##x\r\n",  # a "##" that is no frame
        data(XIAOYAO).read_bytes(),
        b"[2025-12-31 12:00:00]\r\r\n",
        data(CHENQI).read_bytes(),
        packet(REALTIME),
    ]
    return b"".join(parts)


def test_byte_by_byte_equals_whole() -> None:
    raw = _stream()
    whole = session().feed(raw)
    assert sum(isinstance(i, Message) for i in whole) == 9
    s = session()
    single: list[Message | AdapterError] = []
    for i in range(len(raw)):
        single += s.feed(raw[i : i + 1])
    assert summary(single) == summary(whole)
    assert s.buffered == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_random_split_points_give_the_same_messages(cuts: list[int]) -> None:
    raw = _stream()
    assert summary(feed_in_pieces(raw, [c % (len(raw) + 1) for c in cuts])) == summary(session().feed(raw))


def test_garbage_between_packets_is_skipped_and_counted() -> None:
    good = packet(REALTIME)
    noise = b"\x16\x16 modem noise # ## #\r\n" * 3
    s = session()
    items = s.feed(noise + good + noise + good)
    kinds = [type(i).__name__ if isinstance(i, Message) else i.kind for i in items]
    # "##" followed by no length is refused as a frame start and resynced past, nothing else lost
    assert kinds.count("Message") == 2
    assert set(kinds) <= {"Message", "length"}
    assert s.skipped > 0
    assert s.buffered == 0


def test_runs_of_hashes_are_noise() -> None:
    good = packet(REALTIME)
    s = session()
    items = s.feed(b"#" * 100_000 + good + b"###" + good)
    assert [type(i).__name__ for i in items] == ["Message", "Message"]
    assert s.skipped == 100_000 + 3


def test_a_truncated_packet_does_not_swallow_the_next() -> None:
    good = packet(REALTIME)
    cut = good[:40] + b"\r\n"
    for chunked in (False, True):
        items = feed_in_pieces(cut + good, list(range(len(cut + good))) if chunked else [])
        assert [type(i).__name__ for i in items] == ["Hj212Error", "Message"]
        error = items[0]
        assert isinstance(error, AdapterError)
        assert error.kind == "truncated"
        assert error.offset == 0


@pytest.mark.parametrize("delta", [-1, 1, 10])
def test_a_wrong_length_is_refused(delta: int) -> None:
    good = packet(REALTIME)
    length = int(good[2:6]) + delta
    raw = b"##%04d" % length + good[6:]
    items = session().feed(raw + good)
    assert isinstance(items[-1], Message)
    assert [i.kind for i in items[:-1] if isinstance(i, AdapterError)] in (["length"], ["crc"], ["truncated"])
    assert len(items) == 2


def test_a_length_over_the_limit_is_refused_at_once() -> None:
    s = session()
    (error,) = s.feed(b"##5000QN=")
    assert isinstance(error, AdapterError)
    assert error.kind == "length"
    assert "5000" in str(error)
    assert str(MAX_SEGMENT_BYTES) in str(error)
    assert s.buffered <= 4  # only what followed the refused "##"
    (not_digits,) = session().feed(b"##12a4QN=")
    assert isinstance(not_digits, AdapterError)
    assert not_digits.kind == "length"
    assert PROTOCOL.max_message_bytes == MAX_SEGMENT_BYTES == 4096


def test_the_end_of_input_reports_a_partial_frame() -> None:
    s = session()
    assert s.feed(packet(REALTIME)[:50]) == []
    (error,) = s.end()
    assert error.kind == "truncated"
    assert s.buffered == 0
    assert s.end() == []


def test_sessions_stay_small() -> None:
    s = session()
    for _ in range(1000):  # megabytes of noise leave nothing behind
        s.feed(b"\x00noise without frames " * 50)
    assert s.buffered <= 1
    waiting = b"##4096" + b"x" * 4000  # a frame as large as allowed, incomplete
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        sessions = [session() for _ in range(200)]
        for each in sessions:
            each.feed(waiting)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert all(each.buffered == len(waiting) for each in sessions)
    assert used / len(sessions) < 50 * 1024


# -- packets into envelopes -----------------------------------------------------------------------------


def test_realtime_packet_into_an_observation() -> None:
    result = exchange(packet(REALTIME + ";w01018-SampleTime=20251231115500"))
    (env,) = result.envelopes
    assert env.kind == pb.OBSERVATION
    assert (env.region, env.origin.agency, env.origin.region, env.origin.system) == (
        "410102",
        "ecology_environment",
        "410102",
        "hj212",
    )
    assert (env.geometry.point.lat, env.geometry.point.lon) == (34.75, 113.61)
    obs = env.observation
    assert (obs.station_id, obs.station_name, obs.interval) == (MN, STATION.name, "realtime")
    assert obs.station_type == "surface water pollution source"
    assert [(m.metric, m.value, m.unit, m.flag) for m in obs.measurements] == [
        ("w01018-Rtd", 23.5, "mg/L", "N"),
        ("w00000-Rtd", 12.1, "L/s", "N"),
        ("w01001-Rtd", 7.2, "", "N"),
    ]
    assert env.observed_at.ToDatetime(dt.UTC) == dt.datetime(2025, 12, 31, 4, 0, tzinfo=dt.UTC)  # 12:00 Beijing
    assert obs.measurements[0].at.ToDatetime(dt.UTC) == dt.datetime(
        2025, 12, 31, 3, 55, tzinfo=dt.UTC
    )  # its SampleTime
    assert obs.measurements[1].at == env.observed_at
    assert env.sent_at.ToMilliseconds() == int(NOW * 1000)
    assert env.provenance.original_format == "hj212-2017"
    assert env.provenance.original_id == "20251231120000123"
    assert env.status == pb.ACTUAL
    assert ALARM_ATTRIBUTE not in env.attributes
    assert env.attributes["hj212.cn"] == "2011"


@pytest.mark.parametrize(
    ("cn", "interval"), [("2011", "realtime"), ("2051", "PT1M"), ("2061", "PT1H"), ("2031", "P1D")]
)
def test_each_data_upload_has_its_interval(cn: str, interval: str) -> None:
    cp = "DataTime=20251231110000;a34004-Avg=35,a34004-Min=20,a34004-Max=50,a34004-Flag=N"
    (env,) = exchange(packet(cp, cn=cn, st="22")).envelopes
    assert env.observation.interval == interval
    assert [m.metric for m in env.observation.measurements] == ["a34004-Avg", "a34004-Min", "a34004-Max"]
    assert {m.unit for m in env.observation.measurements} == {"µg/m³"}


def test_totals_and_run_states_have_their_units() -> None:
    cp = "DataTime=20251231110000;w01018-Cou=1.5,w01018-Avg=20;w00000-Cou=63.0;SB1-RT=23.5;SB1-RS=1"
    (env,) = exchange(packet(cp, cn="2061")).envelopes
    units = {m.metric: m.unit for m in env.observation.measurements}
    assert units == {"w01018-Cou": "kg", "w01018-Avg": "mg/L", "w00000-Cou": "m³", "SB1-RT": "h", "SB1-RS": ""}


@pytest.mark.parametrize(("flag", "quality"), [*FLAG_QUALITY.items(), ("X", pb.SUSPECT)])
def test_data_flags_become_quality(flag: str, quality: pb.Quality) -> None:
    (env,) = exchange(packet(f"DataTime=20251231120000;w21003-Rtd=0.5,w21003-Flag={flag}")).envelopes
    (m,) = env.observation.measurements
    assert (m.quality, m.flag) == (quality, flag)


def test_an_empty_value_is_a_missing_reading() -> None:
    (env,) = exchange(packet("DataTime=20251231120000;w01018-Rtd=,w01018-Flag=F")).envelopes
    (m,) = env.observation.measurements
    assert (m.value, m.quality, m.flag) == (0.0, pb.MISSING, "F")
    assert ALARM_ATTRIBUTE not in env.attributes


def test_unknown_text_fields_are_listed_not_lost() -> None:
    (env,) = exchange(packet("DataTime=20251231120000;w01018-Rtd=3;w01018-EFlag=A01;Memo=ok;x1-Note=abc")).envelopes
    assert [m.metric for m in env.observation.measurements] == ["w01018-Rtd"]
    assert env.attributes["hj212.unparsed"] == "Memo,x1-Note"


def test_ids_are_stable_and_tell_packets_apart() -> None:
    raw = packet(REALTIME)
    first = exchange(raw).envelopes[0]
    again = codec().decode(raw)[0]  # another session, another station record: same id
    assert first.id == again.id
    assert first.id.startswith("hj212-")
    others = [
        packet(REALTIME, qn="20251231120000999"),
        packet(REALTIME.replace("120000", "120030", 1)),
        packet(REALTIME, mn="OTHER0000000001"),
        packet(REALTIME, cn="2051"),
        packet(REALTIME, PNUM="2", PNO="1"),
        packet(REALTIME, PNUM="2", PNO="2"),
    ]
    ids = {first.id} | {exchange(raw).envelopes[0].id for raw in others}
    assert len(ids) == len(others) + 1


def test_a_future_data_time_is_refused_as_a_clock_error() -> None:
    s = session()
    message = one_message(packet("DataTime=20260101090000;w01018-Rtd=3"))  # 01:00 UTC: an hour ahead
    with pytest.raises(AdapterError) as caught:
        s.exchange(message, STATION, NOW)
    assert caught.value.kind == "clock"
    assert caught.value.field == "CP.DataTime"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (packet(REALTIME, mn=""), "MN"),
        (packet(REALTIME, cn="20111"), "CN"),
        (packet(REALTIME, qn="2025"), "QN"),
        (packet(REALTIME, flag="x"), "Flag"),
        (packet(REALTIME, PNUM="2"), "PNO"),
        (packet(REALTIME, PNUM="2", PNO="3"), "PNO"),
        (frame(b"ST=32;CN=2011;MN=x;CP=&&DataTime=20251231120000"), "CP"),
        (frame(b"ST=32;CN=2011;MN=x;Flag=4"), "CP"),
        (frame(b"ST=32;ST=32;CN=2011;MN=x;CP=&&&&"), "ST"),
        (frame(b"ST=32;CN=2011;MN=x;CP=&&novalue&&"), "CP"),
    ],
)
def test_bad_fields_are_refused_by_name(raw: bytes, field: str) -> None:
    (error,) = session().feed(raw)
    assert isinstance(error, AdapterError)
    assert error.field == field


@pytest.mark.parametrize(
    ("cp", "field"),
    [
        ("w01018-Rtd=3", "CP.DataTime"),
        ("DataTime=20251331120000;w01018-Rtd=3", "CP.DataTime"),
        ("DataTime=2025123112;w01018-Rtd=3", "CP.DataTime"),
        ("DataTime=20251231120000;w01018-Rtd=3.5.1", "CP.w01018-Rtd"),
        ("DataTime=20251231120000;w01018-Rtd=nan", "CP.w01018-Rtd"),
        ("DataTime=20251231120000;w01018-SampleTime=soon,w01018-Rtd=1", "CP.w01018-SampleTime"),
        ("DataTime=20251231120000", "CP"),
    ],
)
def test_bad_data_is_refused_by_name(cp: str, field: str) -> None:
    message = one_message(packet(cp))
    with pytest.raises(AdapterError) as caught:
        session().exchange(message, STATION, NOW)
    assert caught.value.field == field


def test_times_are_beijing_time() -> None:
    assert parse_time("20251231120000", "t").isoformat() == "2025-12-31T12:00:00+08:00"
    assert parse_time("20251231120000250", "t").isoformat() == "2025-12-31T12:00:00.250000+08:00"


# -- threshold crossings --------------------------------------------------------------------------------


def test_a_threshold_crossing_goes_into_an_alarm_envelope() -> None:
    cp = "DataTime=20251231120000;w01018-Rtd=80.5,w01018-Flag=N;w00000-Rtd=12.1,w00000-Flag=N"
    routine, alarm = exchange(packet(cp)).envelopes
    assert [m.metric for m in routine.observation.measurements] == ["w00000-Rtd"]
    assert ALARM_ATTRIBUTE not in routine.attributes
    assert [m.metric for m in alarm.observation.measurements] == ["w01018-Rtd"]
    assert alarm.attributes[ALARM_ATTRIBUTE] == "w01018"
    assert alarm.attributes["hj212.crossing"] == "w01018-Rtd 80.5 above 50"
    assert (alarm.severity, alarm.priority) == (pb.YELLOW, 1)
    assert routine.severity == pb.SEVERITY_UNSPECIFIED
    assert routine.priority > alarm.priority
    assert alarm.id != routine.id
    assert exchange(packet(cp)).envelopes[1].id == alarm.id  # stable too


def test_far_over_the_limit_is_orange_and_below_the_low_limit_counts() -> None:
    (far,) = exchange(packet("DataTime=20251231120000;w01018-Rtd=120")).envelopes
    assert (far.severity, far.attributes[ALARM_ATTRIBUTE]) == (pb.ORANGE, "w01018")
    (acid,) = exchange(packet("DataTime=20251231120000;w01001-Min=5.5,w01001-Avg=6.5,w01001-Max=7")).envelopes
    assert acid.attributes[ALARM_ATTRIBUTE] == "w01001"
    assert acid.attributes["hj212.crossing"] == "w01001-Min 5.5 below 6"
    assert len(acid.observation.measurements) == 3  # all values of the pollutant go with it


def test_limits_by_metric_and_by_the_2017_code_of_a_2005_code() -> None:
    (pm,) = exchange(packet("DataTime=20251231120000;a34004-Avg=80", cn="2061", st="22")).envelopes
    assert pm.attributes[ALARM_ATTRIBUTE] == "a34004"
    (pm_rtd,) = exchange(packet("DataTime=20251231120000;a34004-Rtd=80", st="22")).envelopes
    assert ALARM_ATTRIBUTE not in pm_rtd.attributes  # the limit was given for Avg only
    (old,) = exchange(packet("DataTime=20251231120000;011-Rtd=60", flag=None, qn=None)).envelopes
    assert old.attributes[ALARM_ATTRIBUTE] == "011"  # 011 is COD, limited as w01018
    (total,) = exchange(packet("DataTime=20251231120000;w01018-Cou=500", cn="2061")).envelopes
    assert ALARM_ATTRIBUTE not in total.attributes  # a total in kg is not a concentration
    (missing,) = exchange(packet("DataTime=20251231120000;w01018-Rtd=")).envelopes
    assert ALARM_ATTRIBUTE not in missing.attributes


# -- answers ----------------------------------------------------------------------------------------------


def _answer(raw: bytes) -> Packet:
    message = one_message(raw)
    assert isinstance(message.content, Packet)
    return message.content


def test_data_is_acknowledged_with_9014_only_when_durable_and_asked() -> None:
    asked = exchange(packet(REALTIME, flag="5"))
    assert asked.reply_now == b""
    reply = _answer(asked.reply_when_durable)
    assert (reply.header.cn, reply.header.st, reply.header.qn, reply.header.mn) == (
        "9014",
        "91",
        "20251231120000123",
        MN,
    )
    assert (reply.header.pw, reply.header.flag, reply.cp) == ("123456", 4, ())
    assert asked.reply_when_durable.endswith(b"&&\r\n") is False  # the CRC follows the segment
    assert asked.reply_when_durable.endswith(b"\r\n")
    not_asked = exchange(packet(REALTIME, flag="4"))
    assert (not_asked.reply_now, not_asked.reply_when_durable) == (b"", b"")
    old = exchange(packet(REALTIME, flag=None, qn=None))
    assert (old.reply_now, old.reply_when_durable) == (b"", b"")
    assert not asked.close


def test_a_restart_notice_is_a_heartbeat_and_acknowledged() -> None:
    result = exchange(packet("DataTime=20251231120000;RestartTime=20251231115500", cn="2081"))
    (env,) = result.envelopes
    assert (env.kind, env.heartbeat.subject, env.heartbeat.state) == (pb.HEARTBEAT, MN, "restarted")
    assert env.attributes["hj212.cp.RestartTime"] == "20251231115500"
    assert _answer(result.reply_when_durable).header.cn == "9014"


def test_device_information_is_a_heartbeat() -> None:
    cp = "DataTime=20251231120000;PolId=w01018;i13004-Info=168.0;i11001-Info=//清洗管路//"
    result = exchange(packet(cp, cn="3020"))
    (env,) = result.envelopes
    assert env.heartbeat.state == "device information"
    assert env.attributes["hj212.cp.i11001-Info"] == "//清洗管路//"
    assert _answer(result.reply_when_durable).header.cn == "9014"


def test_a_time_request_is_answered_and_the_clock_set() -> None:
    result = exchange(packet("PolId=w01018", cn="1013"))
    assert result.envelopes == []
    assert result.reply_when_durable == b""
    items = session().feed(result.reply_now)
    assert len(items) == 2
    notice, set_time = items
    assert isinstance(notice, Message)
    assert isinstance(set_time, Message)
    assert isinstance(notice.content, Packet)
    assert isinstance(set_time.content, Packet)
    assert (notice.content.header.cn, notice.content.header.qn) == ("9013", "20251231120000123")
    command = set_time.content
    assert (command.header.cn, command.header.st, command.header.flag) == ("1012", "32", 5)  # asks for 9011/9012
    assert command.get("PolId") == "w01018"
    assert command.get("SystemTime") == "20260101080000"  # NOW in Beijing time
    assert command.header.qn == "20260101080000000"


def test_answers_from_the_station_need_no_answer() -> None:
    for cn, cp in (("9011", "QnRtn=1"), ("9012", "ExeRtn=1"), ("9013", ""), ("9014", "")):
        result = exchange(packet(cp, cn=cn, st="91", flag="4"))
        assert (result.envelopes, result.reply_now, result.reply_when_durable) == ([], b"", b"")


def test_an_unsupported_request_is_refused_with_9011() -> None:
    result = exchange(packet("PolId=w01018", cn="3011"))
    reply = _answer(result.reply_now)
    assert (reply.header.cn, reply.get("QnRtn")) == ("9011", str(hj_codes.QN_REFUSED))
    assert result.envelopes == []


def test_refusals_answer_with_9011_when_the_station_waits() -> None:
    s = session()
    raw = bytearray(packet(REALTIME, flag="5"))
    raw[-6:-2] = b"0000"
    (crc_error,) = s.feed(bytes(raw))
    assert isinstance(crc_error, AdapterError)
    reply = _answer(s.refusal(None, crc_error))
    assert (reply.header.cn, reply.header.qn, reply.get("QnRtn")) == ("9011", "20251231120000123", "9")
    message = one_message(packet(REALTIME, flag="5"))
    password = _answer(s.refusal(message, AdapterError("PW does not match", kind="password")))
    assert password.get("QnRtn") == "3"
    other = _answer(s.refusal(message, AdapterError("DataTime ahead", kind="clock")))
    assert other.get("QnRtn") == "2"
    quiet = one_message(packet(REALTIME, flag="4"))
    assert s.refusal(quiet, AdapterError("PW does not match", kind="password")) == b""
    (length_error,) = s.feed(b"##99x9")
    assert isinstance(length_error, AdapterError)
    assert s.refusal(None, length_error) == b""  # nothing known to answer to


# -- versions ---------------------------------------------------------------------------------------------


def test_versions_come_from_the_flag() -> None:
    formats = {
        "4": "hj212-2017",
        "5": "hj212-2017",
        "0": "hj212-2005",
        None: "hj212-2005",
        "8": "hj212-v2",
        "13": "hj212-v3",
    }
    for flag, fmt in formats.items():
        (env,) = exchange(packet(REALTIME, flag=flag)).envelopes
        assert env.provenance.original_format == fmt, flag


def test_unknown_versions_can_be_refused() -> None:
    strict = Hj212Protocol(unknown_versions="refuse")
    (error,) = strict.session().feed(packet(REALTIME, flag="9"))
    assert isinstance(error, AdapterError)
    assert (error.kind, error.field) == ("unsupported", "Flag")
    assert "version 2" in str(error)
    assert _answer(strict.session().refusal(None, error)).get("QnRtn") == "2"
    assert isinstance(one_message(packet(REALTIME, flag="5"), strict), Message)
    with pytest.raises(ValueError, match="unknown_versions"):
        Hj212Protocol(unknown_versions="maybe")
    _, errors = codec(unknown_versions="refuse").decode_report(data(CHENQI).read_bytes())
    assert [e.kind for e in errors] == ["unsupported"]


# -- fuzzing ------------------------------------------------------------------------------------------------

_FIELDS = st.sampled_from(
    [
        "DataTime=20251231120000",
        "DataTime=2025123112000",
        "w01018-Rtd=1.5",
        "w01018-Flag=N",
        "w01018-Rtd=",
        "a34004-Avg=-3e2",
        "x-Rtd=abc",
        "RestartTime=20251231115500",
        "PolId=w01018",
        "=",
        "-",
        "w01018-SampleTime=20251231120000",
        "SB1-RS=1",
        "",
    ]
)


@st.composite
def _packets(draw: st.DrawFn) -> bytes:
    """Packets with valid framing and CRC and random header and CP, so the parser and mapper are reached."""
    cn = draw(st.sampled_from(["2011", "2051", "2061", "2031", "2081", "1013", "9014", "3020", "20x1", "3011"]))
    flag = draw(st.sampled_from([None, "0", "4", "5", "8", "255", "256", "x"]))
    cp = draw(st.lists(_FIELDS | st.text(max_size=12), max_size=8))
    separators = draw(st.lists(st.sampled_from([";", ","]), min_size=len(cp), max_size=len(cp)))
    body = "".join(f + s for f, s in zip(cp, separators, strict=True))
    header = draw(st.sampled_from(["QN=20251231120000123;", "", "QN=1;"]))
    segment = f"{header}ST=32;CN={cn};PW=1;MN=m{'' if flag is None else f';Flag={flag}'};CP=&&{body}&&"
    return frame(segment.encode("utf-8"))


def _everything_only_raises_adapter_errors(items: list[Message | AdapterError], s: Session) -> None:
    for item in items:
        if isinstance(item, Message):
            try:
                result = s.exchange(item, STATION, NOW)
            except AdapterError as exc:
                refusal = s.refusal(item, exc)
                assert isinstance(refusal, bytes)
                continue
            admitted(result.envelopes)
        else:
            assert isinstance(item, AdapterError)
            assert isinstance(s.refusal(None, item), bytes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_packets() | st.binary(max_size=64), max_size=6), st.data())
def test_fuzz_feed_and_exchange(parts: list[bytes], draw: st.DataObject) -> None:
    raw = b"".join(parts)
    s = session()
    whole = s.feed(raw)
    _everything_only_raises_adapter_errors(whole, s)
    cuts = draw.draw(st.lists(st.integers(0, max(len(raw), 1)), max_size=8))
    assert summary(feed_in_pieces(raw, cuts)) == summary(whole)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_whole_and_byte_by_byte(raw: bytes) -> None:
    whole = session().feed(b"##0101" + raw) + session().feed(raw)
    for item in whole:
        assert isinstance(item, Message | AdapterError)
    s = session()
    single: list[Message | AdapterError] = []
    for i in range(len(raw)):
        single += s.feed(raw[i : i + 1])
    assert summary(single) == summary(session().feed(raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 2000))
def test_fuzz_mutated_samples_through_the_codec(noise: bytes, at: int) -> None:
    raw = bytearray(_stream())
    at %= len(raw)
    raw[at : at + len(noise)] = noise
    try:
        envelopes = codec().decode(bytes(raw))
    except AdapterError:
        return
    admitted(envelopes)


def test_random_mutations_of_one_packet_are_refused_for_a_reason() -> None:
    rng = random.Random(212)
    good = packet(REALTIME)
    for _ in range(500):
        raw = bytearray(good)
        position = rng.randrange(len(raw))
        raw[position] = rng.randrange(256)
        if bytes(raw) == good:
            continue
        items = session().feed(bytes(raw) + good)
        assert isinstance(items[-1], Message)  # the good packet after it is always found
        for item in items[:-1]:
            assert isinstance(item, AdapterError | Message)


# -- the adapter ----------------------------------------------------------------------------------------------


def test_manifest_and_protocol() -> None:
    assert MANIFEST.problems() == []
    assert (MANIFEST.name, MANIFEST.inbound, MANIFEST.outbound) == ("hj212", ("hj212",), ())
    keys = MANIFEST.schema()["keys"]
    assert keys["max_segment_bytes"]["default"] == 4096
    assert keys["unknown_versions"]["default"] == "accept"
    protocol: StationProtocol = PROTOCOL  # structurally a StationProtocol (mypy checks this line)
    opened: Session = protocol.session()
    assert protocol.name == "hj212"
    assert opened.feed(b"") == []


def test_config_loads_strictly() -> None:
    config = ADAPTER.load_config({"region": "410100", "max_segment_bytes": 1024})
    assert isinstance(config, Hj212Config)
    assert (config.agency, config.region, config.max_segment_bytes) == ("ecology_environment", "410100", 1024)
    with pytest.raises(ConfigError, match="max_bytes"):
        ADAPTER.load_config({"max_bytes": 5}, source="node.toml")
    with pytest.raises(ConfigError, match="max_segment_bytes"):
        Hj212Config(max_segment_bytes=10_000)
    with pytest.raises(ConfigError, match="unknown_versions"):
        Hj212Config(unknown_versions="sometimes")


def test_the_codec_decodes_files_with_the_configured_region() -> None:
    envelopes = admitted(codec("410100").decode(data(XIAOYAO).read_bytes()))
    assert {(e.region, e.origin.agency, e.origin.system) for e in envelopes} == {
        ("410100", "ecology_environment", "hj212")
    }
    plain = ADAPTER.open("hj212", AdapterConfig(region="410000", system="poller"), AdapterContext(now=lambda: NOW))
    assert {e.origin.system for e in plain.decode(data(XIAOYAO).read_bytes())} == {"poller"}
    with pytest.raises(AdapterError, match="region") as caught:
        codec("").decode(data(XIAOYAO).read_bytes())
    assert caught.value.kind == "config"
    with pytest.raises(AdapterError) as crc:
        codec().decode(data(XIAOYAO).read_bytes().splitlines(keepends=True)[0])
    assert crc.value.kind == "crc"
    with pytest.raises(AdapterError) as unsupported:
        codec().encode([])
    assert unsupported.value.kind == "unsupported"
    with pytest.raises(ConfigError, match="no format"):
        ADAPTER.open("cot")
