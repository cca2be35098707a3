"""SL 651-2014: frames, bodies, multi-packet joining, the centre's replies and the file adapter.

Real frames where there are any: the Apache-2.0 bad-CRC frame is shipped in tests/data/sl651; the
yu-xiaoyao (no licence) and aaasoft (GPL-3.0) frames are read from the shared sample folder and
those tests skip without it. Frames the samples lack (ASCII mode, a two-packet report, negative
and missing values, broken lengths) are built here with the codec's own ``encode_frame``, whose
CRC is checked against the standard's check vector and the real frames. Every envelope a test sees
is checked by the gateway's own validator.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from adapters.crc16 import crc16_modbus
from adapters.errors import AdapterError
from adapters.plugin import AdapterContext
from adapters.sl651 import ADAPTER, MANIFEST, PROTOCOL, Sl651Codec, Sl651Config, Sl651Protocol, Sl651Session
from adapters.sl651.frame import (
    ACK,
    DOWN,
    ENQ,
    EOT,
    ESC,
    ETB,
    ETX,
    MAX_FRAME_BYTES,
    NAK,
    Frame,
    FrameError,
    Header,
    decode_frame,
    encode_frame,
)
from adapters.sl651.protocol import MAX_JOINED_BYTES, Received
from adapters.sl651.report import BEIJING, parse_report
from adapters.station_protocol import Limits, Message, Station
from gateway.regions import default_table
from gateway.routing import ALARM_ATTRIBUTE
from gateway.validation import Validator
from tests.samples import data, shared

VALIDATOR = Validator(default_table())
YU = "sl651/yu-xiaoyao_sl651-2014-server_Sl651ClientApplication_hexframes.txt"  # no licence: shared only
AAASOFT = "sl651/aaasoft_Quick.SL651_doc-commands_hexframes.txt"  # GPL-3.0: shared only
BAD_CRC = "sl651/handsomestWei_sl651-2014_badcrc_hexframe.txt"  # Apache-2.0: shipped

#: 2017-07-18 11:05 Beijing time: just after the yu-xiaoyao 2017 reports were sent.
NOW = dt.datetime(2017, 7, 18, 11, 5, tzinfo=BEIJING).timestamp()
STATION = Station(id="0011223344", password="03E8", region="410100", agency="water", name="花园口", lat=34.9, lon=113.6)

# The yu-xiaoyao 32H timed report of station 0011223344 (2017-07-18 11:00): rain 4.0 mm, total
# 4.0 mm, water level 10.49 m, voltage 10.99 V.
TIMED_REPORT = bytes.fromhex(
    "7E7E05001122334403E832002B020034170718110016F1F1001122334448F0F01707181100"
    "201900004026190000403923000104903812109903A421"
)
# The same sample file's 2FH keep-alive.
KEEP_ALIVE = bytes.fromhex("7E7E01001234567812342F0008020003591011155111036BCA")


def lines(path: Path) -> list[bytes]:
    return [bytes.fromhex("".join(line.split())) for line in path.read_text("ascii").splitlines() if line.strip()]


def up_header(function: int, *, station: str = "0011223344", password: str = "03E8", mode: str = "hex",
              packet: tuple[int, int] | None = None) -> Header:  # fmt: skip
    assert mode in ("hex", "ascii")
    return Header("hex" if mode == "hex" else "ascii", True, 0x05, station, password, function, packet)


def report_body(serial: int, elements: str, *, sent: str = "170718110016", observed: str = "1707181100",
                station: str = "0011223344", kind: str = "48") -> bytes:  # fmt: skip
    """A HEX report body: serial, send time, station identifier, observation time and ``elements``."""
    return bytes.fromhex(f"{serial:04X}{sent}F1F1{station}{kind}F0F0{observed}{elements}")


def uplink(function: int, body: bytes, end: int = ETX, **header: object) -> bytes:
    return encode_frame(up_header(function, **header), body, end)  # type: ignore[arg-type]


def messages(items: list[Message | AdapterError]) -> list[Message]:
    found = [item for item in items if isinstance(item, Message)]
    assert len(found) == len(items), [str(i) for i in items if isinstance(i, AdapterError)]
    return found


def received(message: Message) -> Received:
    assert isinstance(message.content, Received)
    return message.content


def admitted(envelopes: list[pb.Envelope], now: float | None = None) -> list[pb.Envelope]:
    for env in envelopes:
        VALIDATOR.check(env, env.ByteSize(), now)
    return envelopes


def summary(items: list[Message | AdapterError]) -> list[tuple[str, ...]]:
    """What a feed gave, comparable across splits."""
    out: list[tuple[str, ...]] = []
    for item in items:
        if isinstance(item, AdapterError):
            out.append(("error", item.kind, str(item)))
        else:
            content = received(item)
            out.append(("message", item.station_id, f"{content.frame.header.function:02X}", str(content.serial),
                        repr(content.report)))  # fmt: skip
    return out


# -- CRC and frames --------------------------------------------------------------------------------


def test_crc16_modbus_check_vector_and_a_real_frame() -> None:
    assert crc16_modbus(b"123456789") == 0x4B37  # the catalogued check value of CRC-16/MODBUS
    assert crc16_modbus(TIMED_REPORT[:-2]) == 0xA421  # transmitted high byte first
    assert encode_frame(up_header(0x32), TIMED_REPORT[14:-3], ETX) == TIMED_REPORT


def test_the_shipped_bad_crc_frame_is_refused_for_its_crc() -> None:
    (frame,) = lines(data(BAD_CRC))
    with pytest.raises(FrameError) as caught:
        decode_frame(frame)
    assert caught.value.kind == "crc"
    assert "7B54" in str(caught.value)
    assert caught.value.header is not None
    assert caught.value.header.station == "0011111112"
    (refused,) = PROTOCOL.session().feed(frame)
    assert isinstance(refused, FrameError)
    assert refused.kind == "crc"


def test_every_yu_xiaoyao_frame_decodes_except_the_35h_with_a_bad_crc() -> None:
    frames = lines(shared(YU))
    assert len(frames) == 36
    refused = []
    session = PROTOCOL.session()
    for raw in frames:
        try:
            frame = decode_frame(raw)
        except FrameError as exc:
            refused.append((raw[10], exc.kind))
            continue
        assert frame.header.up
        assert isinstance(session.accept(frame), Message)
    assert refused == [(0x35, "crc")]  # the 人工置数 frame, as SOURCES.md says


def test_every_aaasoft_frame_decodes_uplinks_and_the_centres_replies() -> None:
    frames = [decode_frame(raw) for raw in lines(shared(AAASOFT))]
    assert [(f.header.function, f.header.up, f.end) for f in frames] == [
        (0x2F, True, ETX),
        (0x32, True, ETX),
        (0x32, False, ESC),
        (0x32, True, ETX),
        (0x32, False, EOT),
        (0x33, True, ETX),
        (0x33, False, ESC),
        (0x33, True, ETX),
        (0x33, False, EOT),
    ]
    # a downlink frame names the station first: the same station as the report it answers
    assert frames[2].header.station == frames[1].header.station == "0012345678"
    assert frames[4].header.station == "0000000022"


def test_truncated_and_wrong_length_frames_are_refused_for_that() -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(TIMED_REPORT[:-5])
    assert caught.value.kind == "truncated"
    with pytest.raises(FrameError) as caught:
        decode_frame(TIMED_REPORT[:10])
    assert caught.value.kind == "truncated"
    with pytest.raises(FrameError) as caught:
        decode_frame(TIMED_REPORT + b"\x00")
    assert caught.value.kind == "length"
    longer = bytearray(TIMED_REPORT)
    longer[12] += 1  # the length field says one byte more: the end code is not where it says
    with pytest.raises(FrameError) as caught:
        decode_frame(bytes(longer[:-2]) + crc16_modbus(longer[:-2]).to_bytes(2, "big") + b"\x00")
    assert caught.value.kind == "length"
    with pytest.raises(FrameError) as caught:
        decode_frame(b"\x68\x01\x02")
    assert caught.value.kind == "header"


def test_a_frame_with_a_wrong_length_in_a_stream_does_not_hide_the_next_one() -> None:
    broken = bytearray(TIMED_REPORT)
    broken[12] -= 3  # announces 40 bytes of body; the stream goes on with a good frame
    items = PROTOCOL.session().feed(bytes(broken) + TIMED_REPORT)
    assert [i.kind for i in items if isinstance(i, AdapterError)] == ["length"]
    assert [received(m).serial for m in items if isinstance(m, Message)] == [0x34]


# -- splitting and noise ---------------------------------------------------------------------------


def stream_of_samples() -> bytes:
    return b"".join(lines(shared(YU)))


def test_byte_by_byte_feeding_equals_whole_feeding() -> None:
    stream = b"AT+OK\r\n" + stream_of_samples() + b"\x01\x7e\x00" + TIMED_REPORT + b"\x7e"
    whole = PROTOCOL.session().feed(stream)
    session = PROTOCOL.session()
    bytewise: list[Message | AdapterError] = []
    for i in range(len(stream)):
        bytewise += session.feed(stream[i : i + 1])
    assert summary(bytewise) == summary(whole)
    kinds = [i.kind for i in whole if isinstance(i, AdapterError)]
    assert kinds == ["garbage", "crc", "garbage"]  # the noise before, the 35H frame, the noise between
    assert sum(isinstance(i, Message) for i in whole) == 36


def test_random_split_points_give_the_same_messages() -> None:
    stream = stream_of_samples() + TIMED_REPORT
    expected = summary(PROTOCOL.session().feed(stream))
    rng = random.Random(651)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 60)))
        session = PROTOCOL.session()
        got: list[Message | AdapterError] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            got += session.feed(stream[start:end])
        assert summary(got) == expected


def test_garbage_between_frames_is_reported_once_per_run_and_frames_survive() -> None:
    noise = bytes([0x00, 0x7E, 0x41, 0x01, 0x47, 0xFF]) * 10
    items = PROTOCOL.session().feed(noise + TIMED_REPORT + noise + KEEP_ALIVE + noise)
    errors = [i for i in items if isinstance(i, AdapterError)]
    assert [e.kind for e in errors] == ["garbage", "garbage"]  # trailing noise waits for what comes next
    assert "60 bytes" in str(errors[0])
    assert [received(m).frame.header.function for m in items if isinstance(m, Message)] == [0x32, 0x2F]
    assert PROTOCOL.session().refusal(None, errors[0]) == b""


def test_endless_noise_is_reported_in_bounded_runs_and_not_buffered() -> None:
    session = PROTOCOL.session()
    items = session.feed(bytes(10_000))
    assert [i.kind for i in items if isinstance(i, AdapterError)] == ["garbage", "garbage"]
    assert session.buffered == 0


# -- reports into envelopes ------------------------------------------------------------------------


def test_a_timed_report_becomes_one_observation_the_gateway_admits() -> None:
    session = PROTOCOL.session()
    (message,) = messages(session.feed(TIMED_REPORT))
    assert (message.station_id, message.password, message.size) == ("0011223344", "03E8", len(TIMED_REPORT))
    exchange = session.exchange(message, STATION, NOW)
    (env,) = admitted(exchange.envelopes)
    assert env.kind == pb.OBSERVATION
    assert (env.region, env.origin.agency, env.origin.region, env.origin.system) == (
        "410100",
        "water",
        "410100",
        "sl651",
    )
    assert env.status == pb.ACTUAL
    assert env.observed_at.ToDatetime(dt.UTC) == dt.datetime(2017, 7, 18, 3, 0, tzinfo=dt.UTC)  # 11:00 Beijing time
    assert env.sent_at.ToDatetime(dt.UTC) == dt.datetime(2017, 7, 18, 3, 0, 16, tzinfo=dt.UTC)
    assert (env.geometry.point.lat, env.geometry.point.lon) == (34.9, 113.6)
    obs = env.observation
    assert (obs.station_id, obs.station_name, obs.station_type) == ("0011223344", "花园口", "H")
    assert [(m.metric, m.value, m.unit) for m in obs.measurements] == [
        ("20", 4.0, "mm"),
        ("26", 4.0, "mm"),
        ("39", 10.49, "m"),
        ("38", 10.99, "V"),
    ]
    assert all(m.at == env.observed_at for m in obs.measurements)
    assert ALARM_ATTRIBUTE not in env.attributes
    assert env.provenance.original_format == "sl651-2014"
    assert exchange.reply_now == b""
    assert exchange.reply_when_durable
    assert not exchange.close


def test_ids_are_stable_and_derived_from_station_function_serial_and_time() -> None:
    def ids(frame: bytes) -> list[str]:
        session = PROTOCOL.session()
        return [env.id for m in messages(session.feed(frame)) for env in session.exchange(m, STATION, NOW).envelopes]

    first = ids(TIMED_REPORT)
    assert first == ids(TIMED_REPORT)
    assert first[0].startswith("sl651-")
    again_later = uplink(0x32, report_body(0x34, "2019000040", sent="170718110416"))  # same serial and time
    assert ids(again_later) == first  # a report sent again (new send time) is the same report
    assert ids(uplink(0x32, report_body(0x35, "2019000040"))) != first
    assert ids(uplink(0x32, report_body(0x34, "2019000040", observed="1707181000"))) != first
    assert ids(uplink(0x33, report_body(0x34, "2019000040"))) != first


def test_the_hourly_report_with_five_minute_series_and_missing_values() -> None:
    frames = {raw[10]: raw for raw in lines(shared(YU))}
    session = PROTOCOL.session()
    (message,) = messages(session.feed(frames[0x34]))
    (env,) = admitted(session.exchange(message, STATION, NOW).envelopes)
    obs = env.observation
    assert obs.interval == "PT1H"
    rain = [(m.value, m.at.ToDatetime(dt.UTC).strftime("%H:%M")) for m in obs.measurements if m.metric == "F4"]
    # 12 one-byte values of 0.1 mm from 10:05 Beijing time; FFH values are missing and left out
    assert rain == [(0.5, "02:05"), (0.0, "02:10"), (0.0, "02:15"), (0.0, "02:20"), (2.0, "02:25"),
                    (0.0, "02:55"), (0.0, "03:00")]  # fmt: skip
    levels = [m.value for m in obs.measurements if m.metric == "F5"]
    assert levels == [0.12, 0.12, 0.28, 0.49, 0.49, 0.49, 0.49]
    assert {m.unit for m in obs.measurements if m.metric == "F5"} == {"m"}
    assert env.attributes["sl651.missing"] == "F4,F5"
    later = {m.metric: m for m in obs.measurements if m.metric in ("26", "39", "38")}
    assert later["39"].value == 10.49
    eleven = dt.datetime(2017, 7, 18, 3, 0, tzinfo=dt.UTC)
    assert later["39"].at.ToDatetime(dt.UTC) == eleven  # after the second F0F0 (11:00 Beijing time)


def test_negative_missing_and_two_byte_identifiers() -> None:
    # water temperature -1.5 °C (first byte FFH: negative), voltage missing (all FFH), an FF01
    # extension element 12.3, and a ZT status word kept as hex
    body = report_body(7, "0311FF15" + "3812FFFF" + "FF01110123" + "45200000FF01")
    report = parse_report(0x32, body)
    assert [(r.code, r.value, r.flag) for r in report.readings] == [
        ("03", -1.5, ""),
        ("FF01", 12.3, ""),
        ("45", float(0xFF01), "0000FF01"),
    ]
    assert report.missing == ("38",)


@pytest.mark.parametrize(
    ("elements", "kind", "where"),
    [
        ("3923000104", "truncated", "39H"),  # a 4-byte value with 2 bytes left
        ("39230001A490", "value", "39H"),  # A is not a BCD digit
        ("3903", "value", "39H"),  # a definition with no bytes
        ("F0F0171318", "truncated", "body[25]"),  # an observation time cut short
    ],
)
def test_broken_elements_are_refused_naming_the_element(elements: str, kind: str, where: str) -> None:
    frame = uplink(0x32, report_body(9, elements))
    (refused,) = PROTOCOL.session().feed(frame)
    assert isinstance(refused, FrameError)
    assert refused.kind == kind
    assert where in str(refused)
    nak = PROTOCOL.session().refusal(None, refused)
    assert decode_frame(nak).end == NAK


def test_a_report_from_a_station_with_a_wrong_clock_is_refused() -> None:
    frames = {raw[10]: raw for raw in lines(shared(YU))}
    session = PROTOCOL.session()
    (message,) = messages(session.feed(frames[0x30]))  # sent "2059-10-11"
    with pytest.raises(AdapterError) as caught:
        session.exchange(message, STATION, NOW)
    assert caught.value.kind == "time"
    in_2059 = dt.datetime(2059, 10, 11, 16, 0, tzinfo=BEIJING).timestamp()
    (env,) = admitted(session.exchange(message, STATION, in_2059).envelopes, in_2059)
    assert env.status == pb.TEST  # 30H is a test report


# -- threshold crossings ---------------------------------------------------------------------------


def test_a_water_level_above_its_flood_stage_is_a_threshold_crossing() -> None:
    limits = {"39": Limits(high=10.0), "38": Limits(low=11.0), "20": Limits(low=0.0, high=50.0)}
    flood = Station(id="0011223344", password="03E8", region="410100", agency="water", limits=limits)
    session = PROTOCOL.session()
    (message,) = messages(session.feed(TIMED_REPORT))
    (env,) = admitted(session.exchange(message, flood, NOW).envelopes)
    assert env.attributes[ALARM_ATTRIBUTE] == "39,38"  # 10.49 m above 10.0; 10.99 V below 11.0
    assert env.attributes["sl651.crossing.39"] == "10.49 above 10"
    assert env.attributes["sl651.crossing.38"] == "10.99 below 11"
    assert "sl651.crossing.20" not in env.attributes
    assert env.severity == pb.YELLOW
    assert env.priority == 1

    calm = Station(id="0011223344", password="03E8", region="410100", agency="water",
                   limits={"39": Limits(high=12.0)})  # fmt: skip
    (env,) = admitted(session.exchange(message, calm, NOW).envelopes)
    assert ALARM_ATTRIBUTE not in env.attributes
    assert env.severity == pb.SEVERITY_UNSPECIFIED
    assert env.priority == 2


# -- replies ---------------------------------------------------------------------------------------


def test_a_report_is_acknowledged_after_the_append_with_its_serial_and_the_centres_time() -> None:
    session = PROTOCOL.session()
    (message,) = messages(session.feed(TIMED_REPORT))
    exchange = session.exchange(message, STATION, NOW)
    reply = decode_frame(exchange.reply_when_durable)
    header = reply.header
    assert (header.up, header.station, header.centre, header.password, header.function) == (
        False,
        "0011223344",
        0x05,
        "03E8",
        0x32,
    )
    assert reply.end == ESC  # transmission over, the station stays online
    assert reply.body == bytes.fromhex("0034") + bytes.fromhex("170718110500")
    assert exchange.reply_when_durable[11] >> 4 == DOWN
    # a centre configured to send stations off the link after each report
    leave = Sl651Protocol(ack_end=EOT).session()
    (message,) = messages(leave.feed(TIMED_REPORT))
    assert decode_frame(leave.exchange(message, STATION, NOW).reply_when_durable).end == EOT
    with pytest.raises(ValueError, match="ack_end"):
        Sl651Protocol(ack_end=ACK)


def test_the_ack_of_the_aaasoft_capture_matches_the_real_centres_except_for_the_time() -> None:
    frames = lines(shared(AAASOFT))
    report, centre_ack = frames[1], frames[2]
    session = PROTOCOL.session()
    (message,) = messages(session.feed(report))
    station = Station(id="0012345678", password="04D2", region="410100", agency="water")
    sent = dt.datetime(2014, 12, 5, 11, 0, 2, tzinfo=BEIJING).timestamp()  # the capture's ack time
    ours = session.exchange(message, station, sent).reply_when_durable
    assert ours == centre_ack  # byte for byte, CRC included


def test_a_keep_alive_makes_no_envelope_and_no_answer_unless_it_enquires() -> None:
    session = PROTOCOL.session()
    (message,) = messages(session.feed(KEEP_ALIVE))
    exchange = session.exchange(message, STATION, NOW)
    assert (exchange.envelopes, exchange.reply_now, exchange.reply_when_durable) == ([], b"", b"")
    enquiry = uplink(0x2F, bytes.fromhex("0003170718110400"), ENQ)
    (message,) = messages(session.feed(enquiry))
    exchange = session.exchange(message, STATION, NOW)
    assert exchange.envelopes == []
    answer = decode_frame(exchange.reply_now)
    assert (answer.header.up, answer.header.function, answer.end) == (False, 0x2F, ESC)


def test_eot_from_the_station_closes_the_session_after_the_reply() -> None:
    session = PROTOCOL.session()
    (message,) = messages(session.feed(uplink(0x33, report_body(3, "392300010490"), EOT)))
    exchange = session.exchange(message, STATION, NOW)
    assert exchange.close
    assert exchange.envelopes
    assert decode_frame(exchange.reply_when_durable).end == ESC


def test_refusals_are_naks_for_bad_frames_and_silence_for_strangers() -> None:
    session = PROTOCOL.session()
    broken = bytearray(TIMED_REPORT)
    broken[30] ^= 0x01
    (crc_error,) = session.feed(bytes(broken))
    assert isinstance(crc_error, FrameError)
    nak = decode_frame(session.refusal(None, crc_error))
    assert (nak.header.up, nak.header.station, nak.header.function, nak.end) == (False, "0011223344", 0x32, NAK)
    assert nak.body[:2] == bytes.fromhex("0034")
    (message,) = messages(session.feed(TIMED_REPORT))
    assert session.refusal(message, AdapterError("station 0011223344 is not registered", kind="unknown-station")) == b""
    assert session.refusal(message, AdapterError("wrong password", kind="password")) == b""
    stored = decode_frame(session.refusal(message, AdapterError("not stored", kind="stored")))
    assert stored.end == NAK
    assert stored.body[:2] == bytes.fromhex("0034")


def test_a_downlink_frame_from_a_station_is_refused_without_answer() -> None:
    centre_ack = encode_frame(Header("hex", False, 5, "0011223344", "03E8", 0x32), bytes(8), ESC)
    session = PROTOCOL.session()
    (refused,) = session.feed(centre_ack)
    assert isinstance(refused, AdapterError)
    assert refused.kind == "direction"
    assert session.refusal(None, refused) == b""


# -- multi-packet ----------------------------------------------------------------------------------


def test_the_picture_packets_are_acknowledged_one_by_one_and_joined() -> None:
    packets = [raw for raw in lines(shared(YU)) if raw[10] == 0x36]
    assert len(packets) == 13
    session = PROTOCOL.session()
    station = Station(id="0012345678", password="1234", region="410100", agency="water")
    found = messages(session.feed(b"".join(packets)))
    assert len(found) == 13
    now = dt.datetime(2059, 10, 11, 16, 12, tzinfo=BEIJING).timestamp()
    for number, message in enumerate(found, start=1):
        exchange = session.exchange(message, station, now)
        assert exchange.envelopes == []  # a picture has no readings
        ack = decode_frame(exchange.reply_now)
        assert ack.header.packet == (13, number)
        assert ack.end == (ACK if number < 13 else ESC)
        assert ack.body[:2] == bytes.fromhex("0005")
    report = received(found[-1]).report
    assert report is not None
    assert report.picture_bytes > 3000
    assert received(found[-1]).packets == 13
    assert session.buffered == 0


def test_a_packet_sent_again_is_answered_again_and_not_joined_twice() -> None:
    packets = [raw for raw in lines(shared(YU)) if raw[10] == 0x36]
    session = PROTOCOL.session()
    found = messages(session.feed(packets[0] + packets[1] + packets[1] + packets[2]))
    assert [received(m).frame.header.packet for m in found] == [(13, 1), (13, 2), (13, 2), (13, 3)]
    (out_of_order,) = session.feed(packets[5])
    assert isinstance(out_of_order, FrameError)
    assert out_of_order.kind == "sequence"
    assert "packet 4 was expected" in str(out_of_order)
    nak = decode_frame(session.refusal(None, out_of_order))
    assert (nak.end, nak.header.packet) == (NAK, (13, 4))
    rest = messages(session.feed(b"".join(packets[3:])))
    assert len(rest) == 10
    last = received(rest[-1]).report
    assert last is not None
    assert last.picture_bytes == sum(len(decode_frame(p).body) for p in packets) - 25  # less serial .. F3F3
    fresh = PROTOCOL.session()
    (orphan,) = fresh.feed(packets[4])
    assert isinstance(orphan, FrameError)
    assert orphan.kind == "sequence"
    assert decode_frame(fresh.refusal(None, orphan)).header.packet == (13, 1)  # send it all from packet 1


def test_a_report_in_two_packets_is_joined_into_the_same_observation() -> None:
    body = report_body(0x34, "201900004026190000403923000104903812109903"[:-2])
    single = uplink(0x32, body)
    first = uplink(0x32, body[:20], ETB, packet=(2, 1))
    second = uplink(0x32, body[20:], ETX, packet=(2, 2))
    joined_session = PROTOCOL.session()
    part, whole = messages(joined_session.feed(first + second))
    assert received(part).report is None
    assert decode_frame(joined_session.exchange(part, STATION, NOW).reply_now).end == ACK
    joined = joined_session.exchange(whole, STATION, NOW)
    session = PROTOCOL.session()
    (message,) = messages(session.feed(single))
    alone = session.exchange(message, STATION, NOW)
    assert [env.observation for env in admitted(joined.envelopes)] == [env.observation for env in alone.envelopes]
    assert [env.id for env in joined.envelopes] == [env.id for env in alone.envelopes]
    assert decode_frame(joined.reply_when_durable).header.packet == (2, 2)


def test_a_multi_packet_message_past_the_limit_is_refused() -> None:
    session = PROTOCOL.session()
    packet = bytes(4000)
    items = session.feed(b"".join(uplink(0x32, packet, ETB, packet=(20, n)) for n in range(1, 11)))
    errors = [i for i in items if isinstance(i, AdapterError)]
    assert [e.kind for e in errors] == ["size", "sequence"]  # packet 9 overflows; 10 has lost its message
    assert session.buffered < MAX_JOINED_BYTES


def test_five_thousand_sessions_fit_in_fifty_kib_each() -> None:
    # the worst a session holds: a frame's worth of buffer and a multi-packet message at its limit
    half_frame = uplink(0x32, bytes(4000), ETB, packet=(9, 1))[:-100]
    packets = b"".join(uplink(0x32, bytes(4000), ETB, packet=(9, n)) for n in range(1, 9))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    sessions: list[Sl651Session] = []
    for _ in range(50):
        session = PROTOCOL.session()
        session.feed(packets)
        session.feed(half_frame)
        sessions.append(session)
    per_session = (tracemalloc.get_traced_memory()[0] - before) / len(sessions)
    tracemalloc.stop()
    assert per_session < 50 * 1024, per_session
    assert all(s.buffered > 32_000 for s in sessions)


# -- ASCII mode ------------------------------------------------------------------------------------


def test_an_ascii_frame_decodes_like_its_hex_twin_and_is_answered_in_ascii() -> None:
    body = b"0034170718110016 ST 0011223344 H TT 1707181100 PJ 4.0 PT 4.0 Z 10.490 VT 10.99 C -1.5"
    frame = uplink(0x32, body, mode="ascii")
    assert frame[0] == 0x01
    assert frame[1:23] == b"050011223344" + b"03E8" + b"32" + f"0{len(body):03X}".encode()
    session = PROTOCOL.session()
    (message,) = messages(session.feed(frame))
    assert (message.station_id, message.password) == ("0011223344", "03E8")
    exchange = session.exchange(message, STATION, NOW)
    (env,) = admitted(exchange.envelopes)
    assert [(m.metric, m.value, m.unit) for m in env.observation.measurements] == [
        ("20", 4.0, "mm"),
        ("26", 4.0, "mm"),
        ("39", 10.49, "m"),
        ("38", 10.99, "V"),
        ("03", -1.5, "°C"),
    ]
    hex_session = PROTOCOL.session()
    (hex_message,) = messages(hex_session.feed(TIMED_REPORT))
    assert env.id == hex_session.exchange(hex_message, STATION, NOW).envelopes[0].id
    reply = exchange.reply_when_durable
    assert reply[0] == 0x01
    assert reply.endswith(f"{crc16_modbus(reply[:-4]):04X}".encode())
    answer = decode_frame(reply)
    assert (answer.header.mode, answer.header.up, answer.end, answer.body) == ("ascii", False, ESC, b"0034170718110500")


def test_ascii_frames_byte_by_byte_with_bad_crc_and_five_minute_series() -> None:
    body = b"0001 170718110016 ST 0011223344 P TT 1707181005 DRP 050000001EFFFFFFFFFF0000"
    frame = uplink(0x34, body, mode="ascii")
    broken = frame[:-1] + (b"0" if frame[-1:] != b"0" else b"1")
    stream = broken + b"\x01" + frame
    session = PROTOCOL.session()
    got: list[Message | AdapterError] = []
    for i in range(len(stream)):
        got += session.feed(stream[i : i + 1])
    assert summary(got) == summary(PROTOCOL.session().feed(stream))
    assert [i.kind for i in got if isinstance(i, AdapterError)] == ["crc"]  # the SOH after it is its rest
    (message,) = [m for m in got if isinstance(m, Message)]
    report = received(message).report
    assert report is not None
    assert [r.value for r in report.readings] == [0.5, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0]
    assert report.missing == ("F4",)


def test_a_broken_ascii_body_names_the_token() -> None:
    frame = uplink(0x32, b"0034170718110016 ST 0011223344 H TT 1707181100 Z ten", mode="ascii")
    (refused,) = PROTOCOL.session().feed(frame)
    assert isinstance(refused, FrameError)
    assert (refused.kind, refused.field) == ("value", "body token 6")


# -- fuzzing ---------------------------------------------------------------------------------------

SAMPLE_FRAMES = [TIMED_REPORT, KEEP_ALIVE, uplink(0x32, report_body(1, "0311FF15"), mode="ascii")]


def check_session(chunks: list[bytes]) -> None:
    session = PROTOCOL.session()
    for chunk in chunks:
        for item in session.feed(chunk):
            assert isinstance(item, Message | AdapterError)
            if isinstance(item, Message):
                with contextlib.suppress(AdapterError):  # refusing is fine; anything else escaping is not
                    session.exchange(item, STATION, NOW)
            else:
                session.refusal(None, item)
        assert session.buffered <= MAX_FRAME_BYTES + MAX_JOINED_BYTES


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_fuzz_random_bytes_raise_only_adapter_errors(chunks: list[bytes]) -> None:
    check_session(chunks)
    check_session([b"".join(chunks)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLE_FRAMES),
    st.lists(st.tuples(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=255)), max_size=6),
    st.integers(min_value=1, max_value=40),
)
def test_fuzz_mutated_frames_raise_only_adapter_errors(frame: bytes, edits: list[tuple[int, int]], step: int) -> None:
    mutated = bytearray(frame * 2)
    for at, value in edits:
        mutated[at % len(mutated)] = value
    check_session([bytes(mutated)])
    check_session([bytes(mutated[i : i + step]) for i in range(0, len(mutated), step)])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0x2F, max_value=0x51), st.binary(max_size=120), st.sampled_from([ETX, ENQ, EOT, ETB]))
def test_fuzz_bodies_with_valid_frames_raise_only_adapter_errors(function: int, body: bytes, end: int) -> None:
    for mode in ("hex", "ascii"):
        check_session([uplink(function, body, end, mode=mode)])
        check_session([uplink(function, body, end, mode=mode, packet=(2, 1)) + uplink(function, body, mode=mode,
                                                                                         packet=(2, 2))])  # fmt: skip


# -- the file adapter ------------------------------------------------------------------------------


def codec(region: str = "410100", now: float = NOW) -> Sl651Codec:
    opened = ADAPTER.open("sl651", Sl651Config(region=region), AdapterContext(now=lambda: now))
    assert isinstance(opened, Sl651Codec)
    return opened


def test_manifest_is_sound() -> None:
    assert MANIFEST.problems() == []
    assert MANIFEST.inbound == ("sl651",)
    assert ADAPTER.load_config({"region": "410100"}).agency == "water"
    assert PROTOCOL.name == "sl651"
    assert PROTOCOL.max_message_bytes == MAX_FRAME_BYTES


def test_a_file_of_hex_lines_decodes_into_admitted_observations() -> None:
    text = "# captured 2017-07-18\n" + " ".join(f"{b:02X}" for b in TIMED_REPORT) + "\n\n" + KEEP_ALIVE.hex() + "\n"
    the_codec = codec()
    envelopes, errors = the_codec.decode_report(text.encode())
    assert errors == []
    (env,) = admitted(envelopes, NOW)
    assert (env.region, env.origin.agency, env.observation.station_id) == ("410100", "water", "0011223344")
    assert the_codec.decode(text.encode())[0].id == env.id


def test_the_sample_files_decode_with_errors_naming_lines() -> None:
    envelopes, errors = codec().decode_report(shared(YU).read_bytes())
    reasons = {(e.kind, e.field.split(" ")[0] + " " + e.field.split(" ")[1]) for e in errors}
    assert ("crc", "line 6") in reasons  # the 35H frame
    assert {e.kind for e in errors} == {"crc", "time"}  # and the reports "sent in 2059"
    assert len(admitted(envelopes, NOW)) == 6  # 32H, 33H, 34H, 38H, 3AH, 44H of 2017
    in_2019 = dt.datetime(2019, 3, 5, 16, 0, tzinfo=BEIJING).timestamp()
    aaasoft, aaasoft_errors = codec(now=in_2019).decode_report(shared(AAASOFT).read_bytes())
    assert aaasoft_errors == []
    assert len(admitted(aaasoft, in_2019)) == 4  # the centre's replies are skipped
    with pytest.raises(AdapterError) as caught:
        codec().decode(data(BAD_CRC).read_bytes())
    assert caught.value.kind == "crc"
    assert caught.value.field.startswith("line 1")


def test_a_binary_stream_file_and_a_missing_region() -> None:
    envelopes = codec().decode(b"\x00\x00" + TIMED_REPORT + KEEP_ALIVE)
    assert len(admitted(envelopes, NOW)) == 1
    with pytest.raises(AdapterError, match="needs a region"):
        codec(region="").decode(TIMED_REPORT)
    with pytest.raises(AdapterError) as caught:
        codec().decode(b"7E7E0\n")
    assert caught.value.kind == "encoding"


def test_frame_dataclasses_and_errors_survive_pickling() -> None:
    import pickle  # noqa: PLC0415

    error = FrameError("bad", kind="crc", offset=3, header=up_header(0x32), serial=7)
    again = pickle.loads(pickle.dumps(error))
    assert (again.kind, again.offset, again.header, again.serial) == ("crc", 3, error.header, 7)
    assert isinstance(decode_frame(TIMED_REPORT), Frame)
