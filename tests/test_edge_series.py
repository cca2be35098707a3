"""Sampled blocks (series) on the edge path: the outbox's chunks (numbering, lifecycle, class
policies, kill -9), the batch format's version 2, and the gateway's readers of packed series.
The clock is injected; nothing sleeps."""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from edge_agent import wire
from edge_agent.model import Batch, Chunk, DropReason, DropReport, Priority, Reading, Sequenced, Series
from edge_agent.outbox import Outbox, OutboxError
from edge_agent.simulate import SampledSensor, fleet
from edge_agent.wire import WireError
from gateway.edge_ingest import SeriesPiece, series_message
from gateway.edge_ledger import RangeSet
from gateway.observations import measurements, point_count, series_arrays
from gateway.summaries import _Metric
from tests.test_edge_outbox import puts_until_killed

T0 = 1_750_000_000.0
AT0 = 1_700_000_000_000
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def block(count: int, start: int = 0, step: int = 10) -> tuple[np.ndarray, np.ndarray]:
    at = AT0 + (start + np.arange(count, dtype=np.int64)) * step
    return at, np.round(np.sin(np.arange(count) / 7.0) + start, 3)


def reading(n: int, priority: Priority = Priority.P2) -> Reading:
    return Reading(metric=0, at_ms=AT0 + n, value=float(n), priority=priority)


def open_box(path: Path, clock: Clock, *, max_bytes: int = 1 << 30, p2_ttl_s: float = 3600.0) -> Outbox:
    return Outbox.open(path, max_bytes=max_bytes, p2_ttl_s=p2_ttl_s, clock=clock)


def take_all_chunks(box: Outbox) -> list[Chunk]:
    """Every chunk eligible now (taken, so in flight afterwards)."""
    out: list[Chunk] = []
    while taken := box.take_chunks(1 << 30, historical=True, live_window_s=0):
        out += taken
    return out


def decoded(chunk: Chunk) -> Series:
    """A chunk's body read back through the batch decoder."""
    data = wire.encode_batch(Batch("t", chunk.session, ()), compress=False, series_entries=[chunk.body])
    (series,) = wire.decode_batch(data).series
    return series


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def box(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    with open_box(tmp_path / "outbox.sqlite", clock) as outbox:
        yield outbox


# -- the outbox's chunks ----------------------------------------------------------------------------


def test_a_block_takes_a_range_of_numbers_shared_with_single_readings(box: Outbox) -> None:
    first = box.put([reading(1), reading(2)])
    at, values = block(1000)
    (chunk,) = box.put_series(5, at, values)
    after = box.put([reading(3)])
    assert [item.seq for item in first] == [1, 2]
    assert (chunk.first_seq, chunk.count, chunk.last_seq, chunk.metric) == (3, 1000, 1002, 5)
    assert [item.seq for item in after] == [1003]
    series = decoded(chunk)
    assert series.first_seq == 3
    assert np.array_equal(series.at_ms, at)  # the source's own times, exactly
    assert np.array_equal(series.values, values)
    stats = box.stats()
    assert stats.readings[Priority.P2] == 1003
    assert stats.bytes[Priority.P2] > len(chunk.body)


def test_a_large_block_is_cut_into_chunks_in_one_transaction(box: Outbox) -> None:
    at, values = block(2500)
    chunks = box.put_series(1, at, values, chunk_points=1000)
    assert [(c.first_seq, c.count) for c in chunks] == [(1, 1000), (1001, 1000), (2001, 500)]
    rebuilt = np.concatenate([decoded(c).values for c in chunks])
    assert np.array_equal(rebuilt, values)


def test_series_are_p2_or_p3_and_bad_arrays_are_refused(box: Outbox) -> None:
    at, values = block(10)
    for priority in (Priority.P0, Priority.P1):
        with pytest.raises(OutboxError, match="P2 or P3"):
            box.put_series(0, at, values, priority)
    with pytest.raises(OutboxError, match="9 times for 10 values"):
        box.put_series(0, at[:9], values)
    with pytest.raises(OutboxError, match=r"values\[3\]"):
        box.put_series(0, at, np.where(np.arange(10) == 3, np.nan, values))
    with pytest.raises(OutboxError, match="integers"):
        box.put_series(0, at.astype(float), values)
    with pytest.raises(OutboxError, match="no points"):
        box.put_series(0, [], [])
    assert box.stats().total_readings == 0
    assert box.put([reading(1)])[0].seq == 1  # nothing refused used a number


def test_chunk_lifecycle_take_ack_requeue(box: Outbox) -> None:
    chunks = box.put_series(0, *block(300), chunk_points=100)
    assert [c.first_seq for c in box.take_chunks(50, historical=True, live_window_s=0)] == [1]  # at least one
    box.requeue_all()
    taken = box.take_chunks(250, historical=True, live_window_s=0)
    assert [c.first_seq for c in taken] == [1, 101]  # whole chunks, not past the limit
    assert box.stats().in_flight == 200
    assert [c.first_seq for c in box.take_chunks(1000, historical=True, live_window_s=0)] == [201]
    assert box.take_chunks(1000, historical=True, live_window_s=0) == []
    # An ack that covers only part of a chunk leaves it; one that covers it whole deletes it.
    assert box.acknowledge(box.session, [(1, 150)]) == 100
    assert box.stats().readings[Priority.P2] == 200
    assert box.requeue(box.session, [(150, 150)]) == 100  # any part asked again: the chunk goes again whole
    assert [c.first_seq for c in box.take_chunks(1000, historical=True, live_window_s=0)] == [101]
    assert box.requeue_all() == 200
    assert box.acknowledge(box.session, [(1, 300)]) == 200
    assert box.stats().total_readings == 0
    assert box.stats().in_flight == 0
    assert len(chunks) == 3


def test_take_chunks_keeps_to_one_session(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    with open_box(path, clock) as box:
        box.put_series(0, *block(10))
    with open_box(path, clock) as box:
        box.put_series(0, *block(10, start=10))
        first = box.take_chunks(1000, historical=True, live_window_s=0)
        assert [(c.session, c.first_seq) for c in first] == [(1, 1)]
        assert box.take_chunks(1000, historical=True, live_window_s=0, session=1) == []
        live = box.take_chunks(1000, historical=False, live_window_s=60)
        assert [(c.session, c.first_seq) for c in live] == [(2, 1)]


def test_live_chunks_are_this_sessions_recent_ones(box: Outbox, clock: Clock) -> None:
    box.put_series(0, *block(10))
    clock.now += 100
    box.put_series(0, *block(10, start=10))
    live = box.take_chunks(1000, historical=False, live_window_s=30)
    assert [c.first_seq for c in live] == [11]
    assert [c.first_seq for c in box.take_chunks(1000, historical=True, live_window_s=30)] == [1]


def test_p3_blocks_that_do_not_fit_lose_their_newest_chunks(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=10_000) as box:
        kept = box.put_series(0, *block(1000), Priority.P3, chunk_points=100)
        assert kept
        assert kept[0].first_seq == 1
        assert box.stats().total_bytes <= 10_000
        (report,) = box.drops()
        assert (report.priority, report.reason) == (Priority.P3, DropReason.OUTBOX_FULL)
        assert report.count == 1000 - sum(c.count for c in kept)
        # The refused chunks never got numbers: the next reading follows the kept ones.
        assert box.put([reading(1, Priority.P0)])[0].seq == kept[-1].last_seq + 1


def test_stored_p3_chunks_give_way_newest_first(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock) as box:
        chunks = box.put_series(0, *block(1000), Priority.P3, chunk_points=100)
        box.max_bytes = box.stats().total_bytes + 100  # room for less than the P2 block below
        box.put_series(1, *block(300, start=5000), Priority.P2, chunk_points=100)
        held = take_all_chunks(box)
        left = [c.first_seq for c in held if c.priority == Priority.P3]
        assert left == [c.first_seq for c in chunks[: len(left)]]  # the oldest stay
        assert len(left) == len(chunks) - 3
        assert sum(c.count for c in held if c.priority == Priority.P2) == 300
        assert box.stats().total_bytes <= box.max_bytes
        assert box.drops() == [DropReport(Priority.P3, DropReason.OUTBOX_FULL, 300)]


def test_p2_chunks_expire_then_go_oldest_first(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, p2_ttl_s=60) as box:
        old = box.put_series(0, *block(200), chunk_points=100)
        clock.now += 120  # past the time-to-live
        fresh = box.put_series(0, *block(200, start=1000), chunk_points=100)
        box.max_bytes = box.stats().total_bytes + 100
        newest = box.put_series(0, *block(200, start=2000), chunk_points=100)
        held = [c.first_seq for c in take_all_chunks(box)]
        assert held == [c.first_seq for c in fresh + newest]  # the expired ones went, not the oldest fresh
        assert box.drops() == [DropReport(Priority.P2, DropReason.EXPIRED, 200)]
        box.requeue_all()
        box.max_bytes = box.stats().total_bytes + 100
        box.put_series(0, *block(100, start=3000))  # nothing expired now: the oldest gives way
        held = [c.first_seq for c in take_all_chunks(box)]
        assert held[0] == fresh[1].first_seq
        dropped = {(r.priority, r.reason): r.count for r in box.drops()}
        assert dropped[Priority.P2, DropReason.OUTBOX_FULL] == 100
        assert old[0].first_seq == 1


def test_chunks_in_flight_are_never_dropped(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=4_000) as box:
        (first,) = box.put_series(0, *block(100), Priority.P3)
        assert box.take_chunks(1000, historical=True, live_window_s=0) == [first]
        box.put([reading(n, Priority.P0) for n in range(200)])
        assert box.acknowledge(first.session, [(first.first_seq, first.last_seq)]) == 100  # still there to ack


def test_discard_drops_chunks_whole_and_counts_readings(box: Outbox) -> None:
    box.put_series(0, *block(300), chunk_points=100)
    (taken,) = box.take_chunks(1, historical=True, live_window_s=0)
    assert box.discard(box.session, [(50, 250)], DropReason.BUDGET) == 200  # chunk 1 is in flight
    assert box.drops() == [DropReport(Priority.P2, DropReason.BUDGET, 200)]
    assert box.stats().readings[Priority.P2] == 100
    assert taken.first_seq == 1


def test_chunks_survive_a_restart_and_a_version_1_file_is_upgraded(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    with open_box(path, clock) as box:
        box.put([reading(1)])
        box.put_series(0, *block(50))
    with open_box(path, clock) as box:
        assert box.stats().readings[Priority.P2] == 51
        (chunk,) = take_all_chunks(box)
        assert (chunk.session, chunk.first_seq, chunk.count) == (1, 2, 50)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE chunks")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'schema'")
    db.close()
    with open_box(path, clock) as box:
        assert box.stats().total_readings == 1
        assert box.put_series(0, *block(5))[0].session == 3


_CHILD = """
import sys
import numpy as np
from edge_agent.model import Priority, Reading
from edge_agent.outbox import Outbox

box = Outbox.open(sys.argv[1], max_bytes=1 << 30, p2_ttl_s=3600)
n = 0
while True:
    at = 1_700_000_000_000 + n + np.arange(700)
    chunks = box.put_series(3, at, at.astype(float) / 1000, chunk_points=300)
    print("stored", box.session, chunks[0].first_seq, chunks[-1].last_seq, n, flush=True)
    box.put([Reading(metric=1, at_ms=n, value=float(n), priority=Priority.P0)])
    n += 700
"""


def test_kill_9_during_series_puts_loses_nothing_confirmed(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    first_run = puts_until_killed(_CHILD, path, 15)
    second_run = puts_until_killed(_CHILD, path, 5)
    with open_box(path, clock) as box:
        assert box.session == 3
        chunks = take_all_chunks(box)
    by_session: dict[int, dict[int, np.ndarray]] = {}
    for chunk in chunks:
        series = decoded(chunk)
        by_session.setdefault(chunk.session, {})[chunk.first_seq] = series.at_ms
    for run in (first_run, second_run):
        session = run[0][0]
        stored = by_session[session]
        for _, first, last, at in run:
            times = np.concatenate([stored[seq] for seq in sorted(stored) if first <= seq <= last])
            assert np.array_equal(times, 1_700_000_000_000 + at + np.arange(700))
        # Every block is whole (3 chunks: 300, 300, 100) or absent.
        counts = sorted(len(times) for times in stored.values())
        assert counts.count(100) * 2 == counts.count(300)


# -- the batch format, version 2 ------------------------------------------------------------------------


def series_batch(*, readings: int = 3, compress: bool = True) -> tuple[Batch, bytes]:
    singles = tuple(Sequenced(4, n, reading(n, Priority.P0 if n == 1 else Priority.P2)) for n in range(1, readings + 1))
    at, values = block(500)
    blocks = (
        Series(7, Priority.P2, readings + 1, at, values),
        Series(8, Priority.P3, readings + 501, at[:3], values[:3]),
    )
    batch = Batch("gauge-9", 4, singles, historical=True, series=blocks)
    return batch, wire.encode_batch(batch, compress=compress)


@pytest.mark.parametrize("compress", [True, False])
def test_version_2_round_trip(compress: bool) -> None:
    batch, data = series_batch(compress=compress)
    assert data[2] == wire.SERIES_VERSION
    back = wire.decode_batch(data)
    assert (back.terminal, back.session, back.historical, back.readings) == (
        batch.terminal,
        batch.session,
        batch.historical,
        batch.readings,
    )
    assert back.count == 3 + 503
    for sent, got in zip(batch.series, back.series, strict=True):
        assert (got.metric, got.priority, got.first_seq) == (sent.metric, sent.priority, sent.first_seq)
        assert got.at_ms.dtype == np.int64
        assert got.values.dtype == np.float64
        assert np.array_equal(got.at_ms, sent.at_ms)
        assert np.array_equal(got.values, sent.values)


def test_a_batch_without_series_stays_version_1() -> None:
    batch = Batch("gauge-9", 1, (Sequenced(1, 1, reading(1)),))
    assert wire.encode_batch(batch)[2] == wire.VERSION
    assert wire.decode_batch(wire.encode_batch(batch)).series == ()


def test_encoded_chunks_concatenate_into_a_batch() -> None:
    at, values = block(100)
    entries = [wire.encode_series(1, 2, 1, at[:60], values[:60]), wire.encode_series(1, 2, 61, at[60:], values[60:])]
    back = wire.decode_batch(wire.encode_batch(Batch("t", 1, ()), series_entries=entries))
    assert np.array_equal(np.concatenate([s.at_ms for s in back.series]), at)


def _plain(batch: Batch) -> bytes:
    return wire.encode_batch(batch, compress=False)


def _refusal(data: bytes, **limits: int) -> WireError:
    with pytest.raises(WireError) as caught:
        wire.decode_batch(data, **limits)
    return caught.value


def test_version_2_refusals_name_the_field() -> None:
    at, values = block(10)
    good = Series(1, Priority.P2, 1, at, values)
    overlapping = Batch("t", 1, (), series=(good, Series(1, Priority.P2, 5, at, values)))
    assert _refusal(_plain(overlapping)).field == "series[1].first_seq"
    shared = Batch("t", 1, (Sequenced(1, 3, reading(3)),), series=(good,))
    assert _refusal(_plain(shared)).field == "series[0].first_seq"
    error = _refusal(_plain(Batch("t", 1, (), series=(good,))), max_points=5)
    assert error.field == "series[0].count"
    assert error.offset is not None
    # Hand-made entries the encoder would refuse: P0 in a series, zero points, a NaN value.
    head = _plain(Batch("t", 1, ()))[: -0 or None]
    body = head[wire.PREFIX_SIZE :]
    prefix = bytes((*wire.MAGIC, wire.SERIES_VERSION, 0))
    p0 = b"\x01" + b"\x01\x00" + b"\x01\x01\x00" + values[:1].tobytes()
    assert _refusal(prefix + body + p0).field == "series[0].priority"
    empty = b"\x01" + b"\x01\x02\x01\x00\x00"
    assert _refusal(prefix + body + empty).field == "series[0].count"
    nan = b"\x01" + b"\x01\x02\x01\x01\x00" + np.array([np.nan]).tobytes()
    assert _refusal(prefix + body + nan).field == "series[0].values"
    short = b"\x01" + b"\x01\x02\x01\x05\x00" + b"\x00" * 10
    assert _refusal(prefix + body + short).field == "series[0].count"
    assert _refusal(prefix + body + b"\x01" + b"\x01\x02\x01\x01\x00" + b"\x00" * 8 + b"!").field == "trailing"


def test_the_encoder_refuses_what_the_format_cannot_carry() -> None:
    at, values = block(3)
    with pytest.raises(WireError, match="P2 and P3") as caught:
        wire.encode_series(0, 1, 1, at, values)
    assert caught.value.field == "series[0].priority"
    with pytest.raises(WireError) as caught:
        wire.encode_series(0, 2, 1, np.array([AT0, AT0 + (1 << 31)]), values[:2])
    assert caught.value.field == "series[0].at_ms[1]"
    with pytest.raises(WireError) as caught:
        wire.encode_series(70_000, 2, 1, at, values)
    assert caught.value.field == "series[0].metric"


def _valid_v2() -> list[bytes]:
    batch, packed = series_batch(compress=True)
    return [packed, wire.encode_batch(batch, compress=False), series_batch(readings=0, compress=False)[1]]


VALID_V2 = _valid_v2()


def decode_or_refuse(data: bytes) -> None:
    error: WireError | None = None
    try:
        wire.decode_batch(data)
    except WireError as exc:
        error = exc
    if error is not None:
        assert error.field
        assert error.offset is None or error.offset >= 0


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(VALID_V2), st.lists(st.tuples(st.integers(0, 20_000), st.integers(0, 255)), max_size=6))
def test_mutated_version_2_batches_only_raise_wire_errors(valid: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(valid)
    for position, value in flips:
        data[position % len(data)] = value
    decode_or_refuse(bytes(data))


@settings(FUZZ, max_examples=200)
@given(st.sampled_from(VALID_V2), st.integers(0, 20_000), st.binary(max_size=64))
def test_spliced_version_2_batches_only_raise_wire_errors(valid: bytes, cut: int, insert: bytes) -> None:
    cut %= len(valid)
    decode_or_refuse(valid[:cut] + insert + valid[cut:])
    decode_or_refuse(valid[:cut] + insert)


def test_version_2_batches_cut_at_every_byte_only_raise_wire_errors() -> None:
    for valid in VALID_V2:
        for end in range(len(valid)):
            decode_or_refuse(valid[:end])
    plain = VALID_V2[1]
    body = plain[wire.PREFIX_SIZE :]
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, wire.BATCH_ZDICT)
    packed = plain[:3] + bytes([plain[3] | wire.FLAG_COMPRESSED]) + packer.compress(body[:-7]) + packer.flush()
    decode_or_refuse(packed)  # a compressed body that ends inside a series


@settings(FUZZ, max_examples=100)
@given(
    st.lists(st.integers(-(1 << 30), 1 << 30), min_size=1, max_size=50),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=50, max_size=50),
    st.integers(1, 1 << 40),
)
def test_any_block_the_encoder_takes_comes_back_exactly(deltas: list[int], numbers: list[float], first: int) -> None:
    at = AT0 + np.cumsum(np.array(deltas, dtype=np.int64))
    values = np.array(numbers[: len(at)])
    entry = wire.encode_series(3, 3, first, at, values)
    (series,) = wire.decode_batch(wire.encode_batch(Batch("t", 1, ()), series_entries=[entry])).series
    assert np.array_equal(series.at_ms, at)
    assert np.array_equal(series.values, values)
    assert series.first_seq == first


# -- the gateway's side -----------------------------------------------------------------------------------


def test_series_message_is_the_protobuf_encoding() -> None:
    at = np.array([AT0, AT0 + 5, AT0 + 3, AT0 + 100_000_000_000], dtype=np.int64)
    values = np.array([1.5, -2.0, 0.0, 1e300])
    made = pb.Series.FromString(series_message("39", "m", at, values))
    expected = pb.Series(
        metric="39", unit="m", start_ms=AT0, at_delta_ms=[0, 5, -2, 100_000_000_000 - 3], values=values.tolist()
    )
    assert made == expected
    arrays = series_arrays(made)
    assert np.array_equal(arrays.at_ms, at)
    assert set(arrays.quality.tolist()) == {pb.GOOD}


def test_pieces_are_views_of_the_new_part_of_a_series() -> None:
    at, values = block(100)
    series = Series(1, Priority.P2, 1001, at, values)
    have = RangeSet([(1001, 1010), (1050, 1060)])
    pieces = [SeriesPiece(series, first, last) for first, last in have.missing(series.first_seq, series.last_seq)]
    assert [(p.first, p.last) for p in pieces] == [(1011, 1049), (1061, 1100)]
    assert np.array_equal(pieces[1].values(), values[60:])
    assert np.shares_memory(pieces[1].values(), values)
    assert [(p.first, p.last) for p in pieces[1].split(15)] == [(1061, 1075), (1076, 1090), (1091, 1100)]


def test_observations_read_both_forms_alike() -> None:
    obs = pb.Observation(station_id="s")
    m = obs.measurements.add(metric="39", value=1.0, unit="m", quality=pb.SUSPECT)
    m.at.FromMilliseconds(AT0)
    obs.series.add(metric="vib", unit="mm/s", start_ms=AT0, at_delta_ms=[0, 10, 10], values=[0.5, 0.6, 0.7])
    obs.series.add(metric="q", start_ms=AT0, at_delta_ms=[0, 1], values=[1, 2], quality=[pb.GOOD, pb.BAD])
    points = list(measurements(obs))
    assert point_count(obs) == len(points) == 6
    assert (points[0].metric, points[0].quality, points[0].at_ns) == ("39", pb.SUSPECT, AT0 * 1_000_000)
    assert [(p.metric, p.value, p.at_ns) for p in points[1:4]] == [
        ("vib", 0.5, AT0 * 1_000_000),
        ("vib", 0.6, (AT0 + 10) * 1_000_000),
        ("vib", 0.7, (AT0 + 20) * 1_000_000),
    ]
    assert [p.quality for p in points[1:]] == [pb.GOOD, pb.GOOD, pb.GOOD, pb.GOOD, pb.BAD]


def test_summaries_sum_a_series_as_its_points_one_by_one() -> None:
    values = np.array([3.0, np.nan, -1.0, 7.5, 7.5, 2.0])
    at_ns = np.array([5, 6, 9, 9, 9, 1], dtype=np.int64)
    one_by_one, at_once = _Metric("m"), _Metric("m")
    for value, at in zip(values.tolist(), at_ns.tolist(), strict=True):
        if np.isfinite(value):
            one_by_one.add(value, at)
    at_once.add_many(values, at_ns)
    assert one_by_one == at_once


def test_the_sampled_sensor_makes_blocks_for_the_catalogue() -> None:
    (terminal,) = fleet(1, start_ms=AT0)
    sensor = SampledSensor(terminal, rate_hz=100.0)
    catalogue = sensor.catalogue()
    assert catalogue[-1] == sensor.metric
    assert sensor.metric.index == len(catalogue) - 1
    at, values = sensor.block(AT0, 250)
    assert at.dtype == np.int64
    assert values.dtype == np.float64
    assert np.all(np.diff(at) == 10)
    assert sensor.next_start(AT0, 250) == AT0 + 2500
    assert np.array_equal(SampledSensor(terminal, rate_hz=100.0).block(AT0, 250)[1], values)  # seeded
