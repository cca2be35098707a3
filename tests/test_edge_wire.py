"""The edge wire format: exact round trips, hostile input refused with WireError naming what, topics.

Only ``WireError`` may escape a decoder, whatever the bytes: random, truncated, mutated from valid
encodings, or inflating far past their size.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import struct
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import wire
from edge_agent.model import (
    Ack,
    AckState,
    Batch,
    Birth,
    Command,
    CommandReply,
    DropReason,
    DropReport,
    Metric,
    MetricKind,
    Priority,
    Reading,
    Sequenced,
)
from edge_agent.wire import Death, Heartbeat, WireError

FIVE_MINUTES_MS = 300_000
JULY_2025_MS = 1_751_328_000_000
UINT64_MAX = (1 << 64) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def telemetry_readings(
    count: int, *, start_ms: int = JULY_2025_MS, seed: int = 651, base_level: float = 85.20
) -> list[Reading]:
    """What a riverside terminal sends: rain (0.5 mm bucket) and water level every 5 minutes with a
    flood wave, battery voltage hourly, a patrol boat's position every half hour, one alarm when
    the level crosses its warning line.

    Also the recipe of ``wire.BATCH_ZDICT`` (see test_batch_dictionary_follows_its_recipe): a change
    here changes that recipe, so leave this generator as it is and write another one instead.
    """
    rng = random.Random(seed)
    readings: list[Reading] = []
    step = 0
    alarmed = False
    while len(readings) < count:
        at = start_ms + step * FIVE_MINUTES_MS
        hours = step / 12
        storm = 6 <= hours <= 14
        rain = rng.choice((0.0, 0.0, 0.5, 0.5, 1.0, 1.5, 2.5)) if storm else (0.5 if rng.random() < 0.03 else 0.0)
        readings.append(Reading(metric=0, at_ms=at, value=rain))
        level = base_level + 3.4 * math.exp(-(((hours - 16) / 5) ** 2)) + rng.choice((-0.01, 0.0, 0.0, 0.01))
        readings.append(Reading(metric=1, at_ms=at, value=round(level, 2)))
        if level >= base_level + 1.8 and not alarmed:
            alarmed = True
            readings.append(
                Reading(metric=4, at_ms=at + 1_000, value=round(level, 2), priority=Priority.P0, text="水位超警戒")
            )
        if step % 12 == 0:
            readings.append(Reading(metric=3, at_ms=at, value=round(12.8 + rng.random() * 0.5, 2)))
        if step % 6 == 0:
            readings.append(
                Reading(
                    metric=2,
                    at_ms=at + 17_000,
                    value=round(rng.uniform(0, 3), 1),
                    priority=Priority.P1,
                    lat=round(34.7466 + step * 1e-4, 6),
                    lon=round(113.6253 - step * 5e-5, 6),
                )
            )
        step += 1
    return readings[:count]


def telemetry_batch(
    count: int, *, terminal: str = "gauge-17", session: int = 42, first_seq: int = 1_000, **mix: int | float
) -> Batch:
    readings = telemetry_readings(count, **mix)  # type: ignore[arg-type]
    return Batch(
        terminal=terminal,
        session=session,
        readings=tuple(Sequenced(session, first_seq + n, reading) for n, reading in enumerate(readings)),
    )


def sequenced(session: int, readings: list[Reading], first_seq: int = 1) -> tuple[Sequenced, ...]:
    return tuple(Sequenced(session, first_seq + n, reading) for n, reading in enumerate(readings))


def raw_deflate(body: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, wire.BATCH_ZDICT)
    return packer.compress(body) + packer.flush()


# Derandomized so every run tries the same inputs; no deadline, as a loaded CI machine is slower.
FUZZ = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def refused(decode: Callable[[bytes], object], data: bytes) -> WireError:
    with pytest.raises(WireError) as caught:
        decode(data)
    return caught.value


# --- batches: round trips -------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
readings_strategy = st.builds(
    Reading,
    metric=st.integers(0, 65_535),
    at_ms=st.integers(INT64_MIN, INT64_MAX),
    value=finite,
    priority=st.sampled_from(Priority),
    lat=st.none() | finite,
    lon=st.none() | finite,
    text=st.text(max_size=20),
    blob=st.binary(max_size=20),
    key=st.text(max_size=10),
)
drops_strategy = st.lists(
    st.builds(DropReport, st.sampled_from(Priority), st.sampled_from(DropReason), st.integers(0, UINT64_MAX)),
    max_size=wire.MAX_DROP_REPORTS,
).map(tuple)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    session = draw(st.integers(0, UINT64_MAX))
    readings = draw(st.lists(readings_strategy, max_size=30))
    # Mostly runs of consecutive numbers, sometimes anything in the whole range.
    start = draw(st.integers(0, UINT64_MAX - len(readings)))
    seqs = (
        draw(st.lists(st.integers(0, UINT64_MAX), min_size=len(readings), max_size=len(readings)))
        if draw(st.booleans())
        else [start + n for n in range(len(readings))]
    )
    return Batch(
        terminal=draw(st.text(max_size=40).filter(lambda text: len(text.encode()) <= 255)),
        session=session,
        readings=tuple(Sequenced(session, seq, reading) for seq, reading in zip(seqs, readings, strict=True)),
        historical=draw(st.booleans()),
        drops=draw(drops_strategy),
    )


@settings(FUZZ, max_examples=300)
@given(batches(), st.booleans())
def test_batch_round_trip(batch: Batch, compress: bool) -> None:
    data = wire.encode_batch(batch, compress=compress)
    assert data[:3] == b"YW\x01"
    assert bool(data[3] & wire.FLAG_HISTORICAL) == batch.historical
    if not compress:
        assert not data[3] & wire.FLAG_COMPRESSED
    decoded = wire.decode_batch(data)
    assert decoded == batch
    # Equal is not enough for floats: -0.0 == 0.0, so compare the bits too.
    for mine, theirs in zip(decoded.readings, batch.readings, strict=True):
        assert struct.pack("<d", mine.reading.value) == struct.pack("<d", theirs.reading.value)


def test_realistic_batch_round_trips_compressed_and_small() -> None:
    batch = telemetry_batch(500, terminal="gauge-3", session=901, first_seq=123_456, base_level=112.37, seed=9)
    packed = wire.encode_batch(batch)
    plain = wire.encode_batch(batch, compress=False)
    assert packed[3] & wire.FLAG_COMPRESSED
    assert not plain[3] & wire.FLAG_COMPRESSED
    assert wire.decode_batch(packed) == wire.decode_batch(plain) == batch
    assert len(plain) / 500 < 21  # 19-byte records and the extras of a few readings
    assert len(packed) / 500 < 8  # the aim is well under 15 bytes a reading


def test_compression_is_skipped_when_it_does_not_pay() -> None:
    noise = random.Random(1).randbytes(300)  # nothing for deflate to find
    batch = Batch("t", 1, sequenced(1, [Reading(0, 0, 0.0, blob=noise)]))
    data = wire.encode_batch(batch)
    assert data == wire.encode_batch(batch, compress=False)
    assert wire.decode_batch(data) == batch


def test_batch_exact_bytes() -> None:
    batch = Batch(
        "t",
        5,
        sequenced(5, [Reading(1, 1000, 1.5), Reading(2, 999, -2.0, Priority.P0, text="x")], first_seq=7),
        historical=True,
        drops=(DropReport(Priority.P2, DropReason.EXPIRED, 300),),
    )
    data = wire.encode_batch(batch, compress=False)
    expected_head = b"YW\x01\x02" + b"\x01t" + b"\x05" + b"\x07" + b"\xd0\x0f" + b"\x02" + b"\x01" + b"\x06\xac\x02"
    assert data.startswith(expected_head)
    columns = data[len(expected_head) :]
    seq_deltas = bytes([0, 1, 0, 0, 0, 0, 0, 0])  # int32 0, 1, byte-shuffled
    at_deltas = bytes([0, 0xFF, 0, 0xFF, 0, 0xFF, 0, 0xFF])  # int32 0, -1
    metrics = bytes([1, 2, 0, 0])
    flags = bytes([2, 0 | wire.HAS_TEXT])
    values = b"".join(bytes(pair) for pair in zip(struct.pack("<d", 1.5), struct.pack("<d", -2.0), strict=True))
    assert columns == seq_deltas + at_deltas + metrics + flags + values + b"\x01x"
    assert wire.decode_batch(data) == batch


def test_empty_batch_carries_its_drop_reports() -> None:
    drops = tuple(DropReport(p, r, 10**12) for p in Priority for r in DropReason)
    batch = Batch("gauge-17", 3, (), drops=drops)
    assert wire.decode_batch(wire.encode_batch(batch)) == batch


def test_wide_records_for_deltas_past_32_bits() -> None:
    readings = [Reading(0, INT64_MIN, 1.0), Reading(0, INT64_MAX, 2.0), Reading(0, 0, 3.0)]
    batch = Batch(
        "t",
        UINT64_MAX,
        (
            Sequenced(UINT64_MAX, 0, readings[0]),
            Sequenced(UINT64_MAX, UINT64_MAX, readings[1]),
            Sequenced(UINT64_MAX, 5, readings[2]),
        ),
    )
    data = wire.encode_batch(batch, compress=False)
    assert data[3] & wire.FLAG_WIDE
    assert wire.decode_batch(data) == batch
    narrow = Batch("t", 1, sequenced(1, [Reading(0, JULY_2025_MS + n * 1000, 0.0) for n in range(3)]))
    assert not wire.encode_batch(narrow)[3] & wire.FLAG_WIDE


def test_largest_batch() -> None:
    readings = [Reading(n % 7, JULY_2025_MS + n, float(n)) for n in range(wire.MAX_READINGS)]
    batch = Batch("t", 1, sequenced(1, readings))
    data = wire.encode_batch(batch)
    assert wire.decode_batch(data) == batch
    assert refused(lambda raw: wire.decode_batch(raw, max_readings=wire.MAX_READINGS - 1), data).field == "count"
    too_many = Batch("t", 1, (*batch.readings, Sequenced(1, 0, Reading(0, 0))))
    with pytest.raises(WireError, match="readings"):
        wire.encode_batch(too_many)


def test_largest_fields() -> None:
    reading = Reading(0, 0, 0.0, text="水" * 21_845, key="k" * wire.MAX_TEXT_BYTES, blob=b"\xff" * wire.MAX_BLOB_BYTES)
    batch = Batch("名" * 85, 1, sequenced(1, [reading]))
    assert wire.decode_batch(wire.encode_batch(batch)) == batch


# --- batches: what encode refuses -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reading", "field"),
    [
        (Reading(0, 0, math.nan), "readings[1].reading.value"),
        (Reading(0, 0, math.inf), "readings[1].reading.value"),
        (Reading(0, 0, 1.0, lat=math.nan, lon=1.0), "readings[1].reading.lat"),
        (Reading(0, 0, 1.0, lat=1.0, lon=-math.inf), "readings[1].reading.lon"),
        (Reading(70_000, 0, 1.0), "readings[1].reading.metric"),
        (Reading(-1, 0, 1.0), "readings[1].reading.metric"),
        (Reading(0, 1 << 63, 1.0), "readings[1].reading.at_ms"),
        (Reading(0, 0, 1.0, priority=4), "readings[1].reading.priority"),  # type: ignore[arg-type]
        (Reading(0, 0, 1.0, text="\ud800"), "readings[1].reading.text"),
        (Reading(0, 0, 1.0, key="k" * 65_536), "readings[1].reading.key"),
        (Reading(0, 0, 1.0, blob=b"b" * (wire.MAX_BLOB_BYTES + 1)), "readings[1].reading.blob"),
    ],
)
def test_encode_names_the_reading_it_refuses(reading: Reading, field: str) -> None:
    batch = Batch("t", 1, sequenced(1, [Reading(0, 0, 0.0), reading]))
    with pytest.raises(WireError) as caught:
        wire.encode_batch(batch)
    assert caught.value.field == field


def test_encode_refuses_a_reading_of_another_session_and_bad_header() -> None:
    with pytest.raises(WireError) as caught:
        wire.encode_batch(Batch("t", 1, (Sequenced(1, 1, Reading(0, 0)), Sequenced(2, 2, Reading(0, 0)))))
    assert caught.value.field == "readings[1].session"
    with pytest.raises(WireError) as caught:
        wire.encode_batch(Batch("t", 1, (Sequenced(1, -1, Reading(0, 0)),)))
    assert caught.value.field == "readings[0].seq"
    with pytest.raises(WireError) as caught:
        wire.encode_batch(Batch("t" * 256, 1, ()))
    assert caught.value.field == "terminal"
    with pytest.raises(WireError) as caught:
        wire.encode_batch(Batch("t", -1, ()))
    assert caught.value.field == "session"


# --- batches: hostile input -----------------------------------------------------------------

VALID_PLAIN = wire.encode_batch(
    Batch(
        "gauge-17",
        9,
        sequenced(9, [*telemetry_readings(40), Reading(5, 0, 1.0, blob=b"\x00\x01", key="k", lat=1.0)]),
        drops=(DropReport(Priority.P1, DropReason.SUPERSEDED, 4),),
    ),
    compress=False,
)
VALID_PACKED = wire.encode_batch(wire.decode_batch(VALID_PLAIN))
HEADER = b"YW\x01\x00"


def plain_body(terminal: bytes = b"\x01t", rest: bytes = b"\x01\x01\x00\x00\x00") -> bytes:
    """A body with the given terminal and the remaining header fields (session, base seq, base
    time, count, number of drop reports) of an empty batch, unless they are given."""
    return terminal + rest


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", "prefix"),
        (b"YW\x01", "prefix"),
        (b"XW\x01\x00" + plain_body(), "magic"),
        (b"YW\x03\x00" + plain_body(), "version"),
        (b"YW\x00\x00" + plain_body(), "version"),
        (b"YW\x01\x80" + plain_body(), "flags"),
        (HEADER + plain_body(b"\x02\xc3\x28"), "terminal"),  # invalid UTF-8
        (HEADER + plain_body(b"\x80\x02" + b"t" * 256), "terminal.length"),  # 255 bytes at most
        (HEADER + plain_body(b"\x7ftt"), "terminal"),  # length past the end
        (HEADER + b"\x01t" + b"\xff" * 11, "session"),  # varint past 10 bytes
        (HEADER + b"\x01t" + b"\xff" * 9 + b"\x7f", "session"),  # past 2**64
        (HEADER + b"\x01t\x01", "base_seq"),
        (HEADER + plain_body(rest=b"\x01\x01\x00\x05\x00"), "count"),  # 5 readings, no bytes for them
        (HEADER + plain_body(rest=b"\x01\x01\x00\x00\x11"), "drops.count"),
        (HEADER + plain_body(rest=b"\x01\x01\x00\x00\x01\x10\x01"), "drops[0]"),
        (HEADER + plain_body(rest=b"\x01\x01\x00\x00\x01\x00"), "drops[0].count"),
        (HEADER + plain_body() + b"\x00", "trailing"),
        (b"YW\x01\x01" + raw_deflate(plain_body()) + b"\x00", "trailing"),
        (b"YW\x01\x01" + raw_deflate(plain_body())[:-1], "body"),  # stream cut short
        (b"YW\x01\x01" + b"\xff\xff\xff", "body"),  # not deflate
        (b"YW\x01\x01" + raw_deflate(plain_body() + b"\x00"), "trailing"),
    ],
)
def test_decode_names_what_is_wrong(data: bytes, field: str) -> None:
    assert refused(wire.decode_batch, data).field == field


def one_reading_body(
    *, seq_delta: bytes = b"\x00" * 4, flag: int = 0, value: float = 1.0, extras: bytes = b"", base_seq: bytes = b"\x01"
) -> bytes:
    return (
        b"\x01t\x01"
        + base_seq
        + b"\x00\x01\x00"
        + seq_delta
        + b"\x00" * 4
        + b"\x00\x00"
        + bytes([flag])
        + struct.pack("<d", value)
        + extras
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (one_reading_body(value=math.nan), "values"),
        (one_reading_body(value=-math.inf), "values"),
        (one_reading_body(flag=0x80), "flags"),
        (one_reading_body(seq_delta=struct.pack("<i", -2)), "seq_deltas"),  # base 1 minus 2
        (one_reading_body(flag=wire.HAS_TEXT, extras=b"\x00"), "readings[0]"),  # present but empty
        (one_reading_body(flag=wire.HAS_KEY, extras=b"\x02\xff\xfe"), "readings[0].key"),
        (one_reading_body(flag=wire.HAS_LAT, extras=struct.pack("<d", math.inf)), "readings[0].lat"),
        (one_reading_body(flag=wire.HAS_LON, extras=b"\x00"), "readings[0].lon"),
        (one_reading_body(flag=wire.HAS_BLOB, extras=b"\x80\x80\x80\x01"), "readings[0].blob.length"),
        (one_reading_body(flag=wire.HAS_BLOB, extras=b"\x03ab"), "readings[0].blob"),
    ],
)
def test_decode_checks_every_reading(body: bytes, field: str) -> None:
    for data in (HEADER + body, b"YW\x01\x01" + raw_deflate(body)):
        assert refused(wire.decode_batch, data).field == field
    good = one_reading_body()
    assert wire.decode_batch(HEADER + good) == Batch("t", 1, (Sequenced(1, 1, Reading(0, 0, 1.0, Priority.P0)),))


def test_decode_refuses_seq_past_64_bits_and_time_past_int64() -> None:
    one_past = bytes([1, 0, 0, 0])  # an int32 delta of +1, byte-shuffled over one item
    zero = bytes(4)
    tail = b"\x00\x00\x00" + struct.pack("<d", 0.0)  # metric, flags, value
    seq_past = b"\x01t\x01" + b"\xff" * 9 + b"\x01" + b"\x00\x01\x00" + one_past + zero + tail
    assert refused(wire.decode_batch, HEADER + seq_past).field == "seq_deltas"
    at_past = b"\x01t\x01\x01" + b"\xfe" + b"\xff" * 8 + b"\x01" + b"\x01\x00" + zero + one_past + tail
    assert refused(wire.decode_batch, HEADER + at_past).field == "at_deltas"
    wide_with_base = b"YW\x01\x04" + b"\x01t\x01\x01\x00\x00\x00"
    assert refused(wire.decode_batch, wide_with_base).field == "base_seq"


def test_decompression_bomb_is_refused() -> None:
    # 16 MiB and one byte of zeros compress to about 16 kB: inflating them must stop at the bound.
    bomb = b"YW\x01\x01" + raw_deflate(plain_body() + bytes(wire.MAX_BATCH_BYTES + 1))
    assert len(bomb) < 20_000
    error = refused(wire.decode_batch, bomb)
    assert error.field == "body"
    assert "inflates past" in error.reason
    assert refused(lambda data: wire.decode_batch(data, max_bytes=1_000), VALID_PACKED).field == "body"
    assert refused(lambda data: wire.decode_batch(data, max_bytes=100), VALID_PLAIN).field == "length"


def test_offsets_point_into_the_uncompressed_message() -> None:
    body = plain_body() + b"\x00"
    plain_error = refused(wire.decode_batch, HEADER + body)
    packed_error = refused(wire.decode_batch, b"YW\x01\x01" + raw_deflate(body))
    assert plain_error.offset == packed_error.offset == 4 + len(body) - 1


def test_every_truncation_is_refused() -> None:
    for data in (VALID_PLAIN, VALID_PACKED):
        for end in range(len(data)):
            refused(wire.decode_batch, data[:end])


def test_wire_error_pickles_with_its_fields() -> None:
    error = WireError("bad", offset=3, field="count")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.offset, copy.field, str(copy)) == ("bad", 3, "count", "count at byte 3: bad")


def decode_or_refuse(decode: Callable[[bytes], object], data: bytes) -> None:
    try:
        decode(data)
    except WireError as exc:
        error = exc
    else:
        return
    assert error.field
    assert error.offset is None or error.offset >= 0


@settings(FUZZ, max_examples=500)
@given(st.binary(max_size=512))
def test_random_bytes_into_decode_batch(data: bytes) -> None:
    decode_or_refuse(wire.decode_batch, data)
    decode_or_refuse(wire.decode_batch, HEADER + data)
    decode_or_refuse(wire.decode_batch, b"YW\x01\x01" + data)


@settings(FUZZ, max_examples=500)
@given(
    st.sampled_from([VALID_PLAIN, VALID_PACKED]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_batches(valid: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(valid)
    for position, value in flips:
        data[position % len(data)] = value
    decode_or_refuse(wire.decode_batch, bytes(data))


@settings(FUZZ, max_examples=300)
@given(st.sampled_from([VALID_PLAIN, VALID_PACKED]), st.integers(0, 10_000), st.binary(max_size=64))
def test_spliced_batches(valid: bytes, cut: int, insert: bytes) -> None:
    cut %= len(valid)
    decode_or_refuse(wire.decode_batch, valid[:cut] + insert + valid[cut:])
    decode_or_refuse(wire.decode_batch, valid[:cut] + insert)


# --- the compression dictionary ---------------------------------------------------------------


def test_batch_dictionary_follows_its_recipe() -> None:
    """BATCH_ZDICT is the uncompressed bodies of five batches of the realistic mix, largest first.

    It is part of format version 1 and stored as a constant, so changing code cannot change it
    by accident; this test shows where the bytes come from.
    """
    sizes = (100, 20, 5, 2, 1)
    recipe = b"".join(
        wire.encode_batch(telemetry_batch(size, session=1, first_seq=1), compress=False)[wire.PREFIX_SIZE :]
        for size in sizes
    )
    assert recipe == wire.BATCH_ZDICT


def test_dictionary_helps_small_batches_of_another_terminal() -> None:
    batch = telemetry_batch(10, terminal="level-8", session=77, first_seq=5_000, base_level=43.91, seed=3)
    body = wire.encode_batch(batch, compress=False)[wire.PREFIX_SIZE :]
    without = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert len(wire.encode_batch(batch)) - wire.PREFIX_SIZE < len(without.compress(body) + without.flush())


# --- control messages -----------------------------------------------------------------------

names = st.text(max_size=20)
metrics_strategy = st.builds(
    Metric,
    index=st.integers(0, 65_535),
    code=names,
    kind=st.sampled_from(MetricKind),
    unit=names,
    station_id=names,
    name=names,
    priority=st.sampled_from(Priority),
    threshold=st.none() | finite,
)
births = st.builds(
    Birth,
    terminal=names,
    session=st.integers(0, UINT64_MAX),
    catalogue=st.lists(metrics_strategy, max_size=8, unique_by=lambda metric: metric.index).map(tuple),
    link=st.sampled_from(["", "lan", "cellular", "satellite"]),
    interval_s=st.floats(min_value=0.001, max_value=1e9),
    agent=names,
)
ranges = st.lists(
    st.tuples(st.integers(0, UINT64_MAX), st.integers(0, UINT64_MAX)).map(lambda pair: (min(pair), max(pair))),
    max_size=6,
).map(tuple)
acks = st.builds(Ack, session=st.integers(0, UINT64_MAX), stored=ranges, resend=ranges)
commands = st.builds(
    Command,
    id=names,
    action=names,
    expires_ms=st.integers(INT64_MIN, INT64_MAX),
    parameters=st.dictionaries(names, st.text(max_size=50), max_size=5),
)
replies = st.builds(CommandReply, id=names, state=st.sampled_from(AckState), detail=st.text(max_size=50))
heartbeats = st.builds(
    Heartbeat,
    terminal=names,
    session=st.integers(0, UINT64_MAX),
    at_ms=st.integers(INT64_MIN, INT64_MAX),
    link=names,
    outbox_readings=st.integers(0, UINT64_MAX),
    outbox_bytes=st.integers(0, UINT64_MAX),
    drops=drops_strategy,
)
deaths = st.builds(Death, terminal=names, session=st.integers(0, UINT64_MAX))

CONTROL: list[tuple[st.SearchStrategy[object], Callable[..., bytes], Callable[[bytes], object]]] = [
    (births, wire.encode_birth, wire.decode_birth),
    (acks, wire.encode_ack, wire.decode_ack),
    (commands, wire.encode_command, wire.decode_command),
    (replies, wire.encode_command_reply, wire.decode_command_reply),
    (heartbeats, wire.encode_heartbeat, wire.decode_heartbeat),
    (deaths, wire.encode_death, wire.decode_death),
]
DECODERS = [decode for _, _, decode in CONTROL]


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_control_round_trip(data: st.DataObject) -> None:
    strategy, encode, decode = data.draw(st.sampled_from(CONTROL))
    message = data.draw(strategy)
    encoded = encode(message)
    assert decode(encoded) == message
    assert json.loads(encoded)["v"] == 1


def test_control_messages_are_compact() -> None:
    catalogue = (Metric(0, "rain_5min", unit="mm"), Metric(1, "39", unit="m", threshold=87.0))
    birth = wire.encode_birth(Birth("gauge-17", 3, catalogue, link="satellite"))
    assert birth == (
        b'{"v":1,"type":"birth","terminal":"gauge-17","session":3,"catalogue":[{"index":0,"code":"rain_5min",'
        b'"unit":"mm"},{"index":1,"code":"39","unit":"m","threshold":87.0}],"link":"satellite"}'
    )
    assert wire.encode_ack(Ack(3, stored=((1, 500),))) == b'{"v":1,"type":"ack","session":3,"stored":[[1,500]]}'
    assert wire.encode_death(Death("gauge-17", 3)) == b'{"v":1,"type":"death","terminal":"gauge-17","session":3}'
    hb = Heartbeat("gauge-17", 3, JULY_2025_MS, drops=(DropReport(Priority.P2, DropReason.EXPIRED, 9),))
    assert wire.decode_heartbeat(wire.encode_heartbeat(hb)) == hb
    assert b'"drops":[[2,"expired",9]]' in wire.encode_heartbeat(hb)


@pytest.mark.parametrize(
    ("decode", "data", "field"),
    [
        (wire.decode_death, b'{"v":1,"type":"death","terminal":"t"}', "session"),
        (wire.decode_death, b'{"v":1,"type":"death","terminal":"t","session":1,"extra":0}', "extra"),
        (wire.decode_death, b'{"v":1,"type":"death","terminal":1,"session":1}', "terminal"),
        (wire.decode_death, b'{"v":1,"type":"death","terminal":"t","session":true}', "session"),
        (wire.decode_death, b'{"v":1,"type":"death","terminal":"t","session":-1}', "session"),
        (wire.decode_death, b'{"v":1,"type":"death","terminal":"t","terminal":"u","session":1}', "terminal"),
        (wire.decode_death, b'{"v":2,"type":"death","terminal":"t","session":1}', "v"),
        (wire.decode_death, b'{"v":1,"type":"hb","terminal":"t","session":1}', "type"),
        (wire.decode_death, b"[1]", "message"),
        (wire.decode_death, b'{"v":1,', "message"),
        (wire.decode_death, b'{"v":1,"type":"death","terminal":"\xff","session":1}', "message"),
        (wire.decode_death, b'{"v":NaN}', "message"),
        (wire.decode_death, b'{"v":1e999}', "message"),
        (wire.decode_death, b'{"v":' + b"9" * 5000 + b"}", "message"),
        (wire.decode_death, b"[" * 30_000 + b"]" * 30_000, "message"),
        (wire.decode_death, b" " * (wire.MAX_CONTROL_BYTES + 1), "length"),
        (wire.decode_ack, b'{"v":1,"type":"ack","session":1,"stored":[[5,4]]}', "stored[0]"),
        (wire.decode_ack, b'{"v":1,"type":"ack","session":1,"resend":[[1]]}', "resend[0]"),
        (wire.decode_ack, b'{"v":1,"type":"ack","session":1,"resend":{}}', "resend"),
        (
            wire.decode_birth,
            b'{"v":1,"type":"birth","terminal":"t","session":1,"catalogue":[{"code":"x"}]}',
            "catalogue[0].index",
        ),
        (
            wire.decode_birth,
            b'{"v":1,"type":"birth","terminal":"t","session":1,"catalogue":[{"index":0,"code":"x","kind":"z"}]}',
            "catalogue[0].kind",
        ),
        (
            wire.decode_birth,
            b'{"v":1,"type":"birth","terminal":"t","session":1,"catalogue":[{"index":0,"code":"x"},{"index":0,"code":"y"}]}',
            "catalogue[1].index",
        ),
        (
            wire.decode_birth,
            b'{"v":1,"type":"birth","terminal":"t","session":1,"catalogue":[],"interval_s":0}',
            "interval_s",
        ),
        (
            wire.decode_birth,
            b'{"v":1,"type":"birth","terminal":"t","session":1,"catalogue":[{"index":0,"code":"x","threshold":"1"}]}',
            "catalogue[0].threshold",
        ),
        (
            wire.decode_command,
            b'{"v":1,"type":"cmd","id":"1","action":"a","expires_ms":1,"parameters":{"a":1}}',
            "parameters.a",
        ),
        (
            wire.decode_command,
            b'{"v":1,"type":"cmd","id":"1","action":"a","expires_ms":1,"parameters":[]}',
            "parameters",
        ),
        (wire.decode_command_reply, b'{"v":1,"type":"cmdack","id":"1","state":"done"}', "state"),
        (
            wire.decode_heartbeat,
            b'{"v":1,"type":"hb","terminal":"t","session":1,"at_ms":1,"drops":[[4,"expired",1]]}',
            "drops[0][0]",
        ),
        (
            wire.decode_heartbeat,
            b'{"v":1,"type":"hb","terminal":"t","session":1,"at_ms":1,"drops":[[1,"lost",1]]}',
            "drops[0][1]",
        ),
    ],
)
def test_control_decoders_name_the_field(decode: Callable[[bytes], object], data: bytes, field: str) -> None:
    assert refused(decode, data).field == field


def test_control_encoders_refuse_what_decoders_would() -> None:
    with pytest.raises(WireError) as caught:
        wire.encode_birth(Birth("t", 1, (Metric(0, "a"), Metric(0, "b"))))
    assert caught.value.field == "catalogue[1].index"
    with pytest.raises(WireError) as caught:
        wire.encode_birth(Birth("t", 1, (Metric(0, "a", threshold=math.nan),)))
    assert caught.value.field == "catalogue[0].threshold"
    with pytest.raises(WireError) as caught:
        wire.encode_ack(Ack(1, resend=((3, 2),)))
    assert caught.value.field == "resend[0]"
    with pytest.raises(WireError) as caught:
        wire.encode_command(Command("1", "a", 0, {"p": 1}))  # type: ignore[dict-item]
    assert caught.value.field == "parameters.p"
    with pytest.raises(WireError) as caught:
        wire.encode_death(Death("\ud800", 1))
    assert caught.value.field == "death"


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(DECODERS), st.binary(max_size=256))
def test_random_bytes_into_control_decoders(decode: Callable[[bytes], object], data: bytes) -> None:
    decode_or_refuse(decode, data)


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_mutated_control_messages(data: st.DataObject) -> None:
    strategy, encode, decode = data.draw(st.sampled_from(CONTROL))
    valid = bytearray(encode(data.draw(strategy)))
    for position, value in data.draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)):
        valid[position % len(valid)] = value
    decode_or_refuse(decode, bytes(valid))
    for end in range(len(valid)):
        decode_or_refuse(decode, bytes(valid[:end]))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_valid_json_with_arbitrary_fields(data: st.DataObject) -> None:
    strategy, encode, decode = data.draw(st.sampled_from(CONTROL))
    message = json.loads(encode(data.draw(strategy)))
    name = data.draw(st.sampled_from(sorted(message)) | st.text(max_size=10))
    message[name] = data.draw(json_values)
    decode_or_refuse(decode, json.dumps(message).encode())


# --- topics ---------------------------------------------------------------------------------

CN = "410105/water/edge/gauge-17"


def test_topics() -> None:
    assert wire.topic(CN, "live") == "yiwang/edge/410105/water/edge/gauge-17/live"
    for leaf in (*wire.UPLINK_LEAVES, *wire.DOWNLINK_LEAVES):
        assert wire.parse_topic(wire.topic(CN, leaf)) == (CN, leaf)
    assert "yiwang/edge/+/+/edge/+/live" in wire.GATEWAY_FILTERS
    assert len(wire.GATEWAY_FILTERS) == len(wire.UPLINK_LEAVES)
    assert tuple(wire.subscription(leaf) for leaf in wire.UPLINK_LEAVES) == wire.GATEWAY_FILTERS
    with pytest.raises(WireError):
        wire.subscription("cmd")
    assert wire.terminal_filters(CN) == (f"yiwang/edge/{CN}/ack", f"yiwang/edge/{CN}/cmd")


@pytest.mark.parametrize(
    ("topic", "field"),
    [
        ("yiwang/edge/410105/water/edge/gauge-17/other", "topic.leaf"),
        ("yiwang/edge/410105/water/edge/gauge-17", "topic.leaf"),
        ("yiwang/edge/", "topic"),
        ("other/edge/410105/water/edge/gauge-17/live", "topic"),
        ("x/yiwang/edge/410105/water/edge/gauge-17/live", "topic"),
        ("yiwang/edge/41010/water/edge/gauge-17/live", "cn.region"),
        ("yiwang/edge/４１０１０５/water/edge/gauge-17/live", "cn.region"),
        ("yiwang/edge/410105/water/node/gauge-17/live", "cn.role"),
        ("yiwang/edge/410105/water/edge/gauge/17/live", "cn"),
        ("yiwang/edge/410105/water/edge/+/live", "cn.name"),
        ("yiwang/edge/410105//edge/gauge-17/live", "cn.agency"),
        ("yiwang/edge/410105/water/edge/#/live", "cn.name"),
    ],
)
def test_parse_topic_refuses(topic: str, field: str) -> None:
    with pytest.raises(WireError) as caught:
        wire.parse_topic(topic)
    assert caught.value.field == field


def test_topic_refuses_bad_leaf_and_cn() -> None:
    with pytest.raises(WireError) as caught:
        wire.topic(CN, "hist2")
    assert caught.value.field == "leaf"
    with pytest.raises(WireError) as caught:
        wire.topic("410105/water/edge/a b", "live")
    assert caught.value.field == "cn.name"


@settings(FUZZ, max_examples=300)
@given(st.text(max_size=80))
def test_arbitrary_topics(name: str) -> None:
    try:
        cn, leaf = wire.parse_topic(name)
    except WireError as exc:
        field = exc.field
    else:
        assert wire.topic(cn, leaf) == name
        return
    assert field.startswith(("topic", "cn"))
