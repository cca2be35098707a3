"""The edge agent's outbox: numbering, durability across kill -9, sending order, and every class
policy when it is full. The clock is injected; nothing sleeps."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from structlog.testing import capture_logs

from edge_agent import outbox as outbox_module
from edge_agent.model import DropReason, DropReport, Priority, Reading, Sequenced
from edge_agent.outbox import Outbox, OutboxError, stored_size

REPO = Path(__file__).resolve().parents[1]
PLAIN = 24  # stored_size of a reading without text, blob, key or position
T0 = 1_750_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reading(n: int, priority: Priority = Priority.P2, *, metric: int = 0, key: str = "") -> Reading:
    return Reading(metric=metric, at_ms=1_700_000_000_000 + n, value=float(n), priority=priority, key=key)


def open_box(path: Path, clock: Clock, *, max_bytes: int = 1 << 30, p2_ttl_s: float = 3600.0) -> Outbox:
    return Outbox.open(path, max_bytes=max_bytes, p2_ttl_s=p2_ttl_s, clock=clock)


def drain(box: Outbox) -> list[Sequenced]:
    """Everything the outbox holds and is not in flight, without changing it (taken, then requeued)."""
    held: list[Sequenced] = []
    while batch := box.take(1_000_000, historical=True, live_window_s=0):
        held.extend(batch)
    for item in held:
        box.requeue(item.session, [(item.seq, item.seq)])
    return held


def seqs(items: list[Sequenced]) -> list[int]:
    return [item.seq for item in items]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def box(tmp_path: Path, clock: Clock) -> Iterator[Outbox]:
    with open_box(tmp_path / "outbox.sqlite", clock) as outbox:
        yield outbox


# -- numbering, sessions, durability ------------------------------------------------------------


def test_put_numbers_readings_in_order_within_the_session(box: Outbox) -> None:
    first = box.put([reading(n) for n in range(3)])
    second = box.put([reading(n) for n in range(3, 5)])
    assert [(s.session, s.seq) for s in first + second] == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]
    assert [s.reading for s in first + second] == [reading(n) for n in range(5)]
    assert box.put([]) == []


def test_every_field_of_a_reading_comes_back_as_it_was_put(box: Outbox) -> None:
    original = Reading(
        metric=7, at_ms=-5, value=-1.5e300, priority=Priority.P1, lat=34.75, lon=113.625,
        text="泥石流 warning", blob=b"\x00\xff", key="truck-7",
    )  # fmt: skip
    box.put([original, reading(1)])
    taken = box.take(10, historical=False, live_window_s=60)
    assert [s.reading for s in taken] == [original, reading(1)]
    assert stored_size(original) == PLAIN + 16 + len("泥石流 warning".encode()) + 2 + len("truck-7")


def test_each_open_is_a_new_session_and_nothing_stored_is_lost(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    with open_box(path, clock) as box:
        assert box.session == 1
        box.put([reading(1), reading(2)])
    with open_box(path, clock) as box:
        assert box.session == 2
        assert [(s.session, s.seq) for s in box.put([reading(3)])] == [(2, 1)]
        # Session 1's readings are backlog now, and come back whole.
        assert [(s.session, s.seq, s.reading) for s in box.take(10, historical=True, live_window_s=60)] == [
            (1, 1, reading(1)),
            (1, 2, reading(2)),
        ]
    with open_box(path, clock) as box:
        assert box.session == 3
        assert box.stats().total_readings == 3


def test_acknowledged_readings_are_gone_for_good(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    with open_box(path, clock) as box:
        box.put([reading(n) for n in range(10)])
        box.take(10, historical=False, live_window_s=60)
        assert box.acknowledge(1, [(1, 3), (5, 5), (9, 20)]) == 6
        assert box.acknowledge(1, [(1, 3)]) == 0  # a repeated ack is harmless
        assert box.acknowledge(7, [(1, 3)]) == 0  # another session's numbers touch nothing here
        assert box.stats().in_flight == 4
    with open_box(path, clock) as box:
        assert seqs(drain(box)) == [4, 6, 7, 8]
        assert box.stats().bytes[Priority.P2] == 4 * PLAIN


def test_taken_readings_wait_until_acknowledged_or_requeued(box: Outbox) -> None:
    box.put([reading(n) for n in range(6)])
    assert seqs(box.take(2, historical=False, live_window_s=60)) == [1, 2]
    assert seqs(box.take(2, historical=False, live_window_s=60)) == [3, 4]
    assert box.stats().in_flight == 4
    assert box.requeue(1, [(2, 3)]) == 2
    assert seqs(box.take(10, historical=False, live_window_s=60)) == [2, 3, 5, 6]
    assert box.take(10, historical=False, live_window_s=60) == []
    assert box.requeue_all() == 6
    assert seqs(box.take(10, historical=False, live_window_s=60)) == [1, 2, 3, 4, 5, 6]


def test_in_flight_marks_do_not_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    with open_box(path, clock) as box:
        box.put([reading(n) for n in range(3)])
        assert len(box.take(10, historical=False, live_window_s=60)) == 3
    with open_box(path, clock) as box:
        assert box.stats().in_flight == 0
        assert seqs(box.take(10, historical=True, live_window_s=60)) == [1, 2, 3]


def test_ranges_and_closed_outbox_are_refused(box: Outbox) -> None:
    with pytest.raises(OutboxError, match="first <= last"):
        box.acknowledge(1, [(5, 4)])
    with pytest.raises(OutboxError, match="sessions start at 1"):
        box.requeue(0, [(1, 1)])
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.put([reading(1)])
    box.close()  # closing twice is fine


def test_a_file_that_is_not_an_outbox_is_refused(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(OutboxError, match="not a usable outbox"):
        open_box(path, clock)


def test_an_outbox_of_another_schema_version_is_refused(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    open_box(path, clock).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    db.close()
    with pytest.raises(OutboxError, match="schema 99"):
        open_box(path, clock)


_CHILD = """
import sys
from edge_agent.model import Priority, Reading
from edge_agent.outbox import Outbox

box = Outbox.open(sys.argv[1], max_bytes=1 << 30, p2_ttl_s=3600)
n = 0
while True:
    batch = [Reading(metric=1, at_ms=n + k, value=float(n + k), priority=Priority(k % 4)) for k in range(500)]
    stored = box.put(batch)
    print("stored", box.session, stored[0].seq, stored[-1].seq, n, flush=True)
    n += 500
"""


def puts_until_killed(child_script: str, path: Path, confirmations: int) -> list[tuple[int, int, int, int]]:
    """Runs ``child_script`` on the outbox at ``path``: it puts in a loop and prints a line
    ``stored SESSION FIRST LAST AT`` for each put that returned. Once ``confirmations`` lines are read
    it is SIGKILLed mid-stream; returns what the lines confirmed."""
    child = subprocess.Popen(
        [sys.executable, "-c", child_script, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    confirmed: list[tuple[int, int, int, int]] = []
    try:
        assert child.stdout is not None
        while len(confirmed) < confirmations:
            line = child.stdout.readline()
            assert line, "the child stopped before it was killed"
            if not line.startswith("stored "):
                continue  # the child's log events
            session, first, last, at = map(int, line.split()[1:])
            confirmed.append((session, first, last, at))
        child.send_signal(signal.SIGKILL)  # while it is in the middle of the next put
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    return confirmed


def test_kill_9_during_puts_loses_nothing_confirmed_and_duplicates_nothing(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    first_run = puts_until_killed(_CHILD, path, 20)
    second_run = puts_until_killed(_CHILD, path, 10)
    assert {run[0] for run in first_run} == {1}
    assert {run[0] for run in second_run} == {2}
    with open_box(path, clock) as box:
        assert box.session == 3  # a crash never lets a session's numbers be used twice
        held = drain(box)
    by_session: dict[int, list[Sequenced]] = {}
    for item in held:
        by_session.setdefault(item.session, []).append(item)
    for run in (first_run, second_run):
        session = run[0][0]
        stored = {item.seq: item.reading for item in by_session[session]}
        for _, first, last, at in run:
            assert [stored[seq].at_ms for seq in range(first, last + 1)] == list(range(at, at + 500))
        # What a killed put() had started is there whole or not at all, numbered right after.
        assert sorted(stored) == list(range(1, len(stored) + 1))
        assert len(stored) in {len(run) * 500, (len(run) + 1) * 500}
    assert len({(item.session, item.seq) for item in held}) == len(held)
    assert sum(1 for item in held if item.session == 1) >= 20 * 500


# -- sending order ------------------------------------------------------------------------------


def test_p0_is_taken_first_then_the_rest_oldest_first(box: Outbox) -> None:
    box.put([reading(1, Priority.P2), reading(2, Priority.P0), reading(3, Priority.P3), reading(4, Priority.P1)])
    box.put([reading(5, Priority.P0), reading(6, Priority.P2)])
    taken = box.take(3, historical=False, live_window_s=60)
    assert seqs(taken) == [2, 5, 1]
    assert seqs(box.take(10, historical=False, live_window_s=60)) == [3, 4, 6]


def test_live_readings_are_this_sessions_recent_ones_and_the_rest_is_backlog(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    with open_box(path, clock) as box:
        box.put([reading(1)])  # session 1: backlog after the restart whatever its age
    with open_box(path, clock) as box:
        box.put([reading(2), reading(3, Priority.P0)])  # at T0
        clock.now = T0 + 30
        box.put([reading(4)])
        clock.now = T0 + 60
        box.put([reading(5), reading(6, Priority.P0)])
        clock.now = T0 + 70
        # Younger than 45 s: put at T0+30 and T0+60.
        live = box.take(10, historical=False, live_window_s=45)
        assert [(s.session, s.seq) for s in live] == [(2, 5), (2, 3), (2, 4)]
        # The first eligible reading is session 2's P0, so this take is session 2's alone.
        backlog = box.take(10, historical=True, live_window_s=45)
        assert [(s.session, s.seq) for s in backlog] == [(2, 2), (2, 1)]
        backlog = box.take(10, historical=True, live_window_s=45)
        assert [(s.session, s.seq) for s in backlog] == [(1, 1)]
        clock.now = T0 + 1000
        assert box.take(10, historical=False, live_window_s=45) == []


def test_historical_take_starts_with_the_session_of_the_first_p0(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "outbox.sqlite"
    with open_box(path, clock) as box:
        box.put([reading(1)])
    with open_box(path, clock) as box:
        box.put([reading(2, Priority.P0), reading(3)])
    with open_box(path, clock) as box:
        taken = box.take(10, historical=True, live_window_s=60)
        assert [(s.session, s.seq) for s in taken] == [(2, 1), (2, 2)]
        assert [(s.session, s.seq) for s in box.take(10, historical=True, live_window_s=60)] == [(1, 1)]


def test_a_large_backlog_is_taken_in_order_without_rereading_what_is_in_flight(box: Outbox) -> None:
    box.put([reading(n) for n in range(10_000)])
    taken: list[int] = []
    while batch := box.take(700, historical=False, live_window_s=60):
        taken.extend(seqs(batch))
    assert taken == list(range(1, 10_001))
    assert box.stats().in_flight == 10_000


def test_acks_in_any_order_leave_the_rest_in_flight_and_nothing_else(box: Outbox) -> None:
    box.put([reading(n, Priority.P0 if n % 7 == 0 else Priority.P2) for n in range(2000)])
    taken = box.take(2000, historical=False, live_window_s=60)
    assert len(taken) == 2000
    odd = [(item.seq, item.seq) for item in taken if item.seq % 2]
    assert box.acknowledge(1, odd) == 1000  # a thousand ranges: spans are trimmed on the way
    assert box.stats().in_flight == 1000
    box.put([reading(n) for n in range(2000, 2010)])
    assert seqs(box.take(100, historical=False, live_window_s=60)) == list(range(2001, 2011))
    assert box.requeue(1, [(1, 2000)]) == 1000
    assert sorted(seqs(drain(box))) == list(range(2, 2001, 2))


# -- policies when full -------------------------------------------------------------------------


def test_p0_is_never_dropped_and_the_excess_is_reported(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=5 * PLAIN) as box, capture_logs() as logs:
        stored = box.put([reading(n, Priority.P0) for n in range(8)])
        assert seqs(stored) == list(range(1, 9))
        stats = box.stats()
        assert stats.readings[Priority.P0] == 8
        assert stats.over_bound_bytes == 3 * PLAIN
        assert box.drops() == []
        box.put([reading(9, Priority.P0)])
        box.acknowledge(1, [(1, 9)])
    events = [entry["event"] for entry in logs]
    assert events.count("outbox_over_bound") == 1  # once when it starts, not on every put
    assert events.count("outbox_within_bound") == 1


def test_p3_newest_is_refused_and_never_numbered(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=4 * PLAIN) as box:
        assert seqs(box.put([reading(n, Priority.P3) for n in range(3)])) == [1, 2, 3]
        kept = box.put([reading(n, Priority.P3) for n in range(3, 6)])
        assert [(s.seq, s.reading.value) for s in kept] == [(4, 3.0)]  # the two newest refused
        assert box.drops() == [DropReport(Priority.P3, DropReason.OUTBOX_FULL, 2)]
        # An incoming P2 pushes the newest stored P3 out.
        assert seqs(box.put([reading(6, Priority.P2)])) == [5]
        assert seqs(drain(box)) == [1, 2, 3, 5]
        assert box.drops() == [DropReport(Priority.P3, DropReason.OUTBOX_FULL, 3)]


def test_p2_past_its_time_to_live_goes_first_then_the_oldest(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=6 * PLAIN, p2_ttl_s=100) as box:
        box.put([reading(n) for n in range(3)])  # seq 1-3 at T0
        clock.now = T0 + 50
        box.put([reading(n) for n in range(3, 6)])  # seq 4-6 at T0+50
        clock.now = T0 + 150  # 1-3 are past their time-to-live; 4-6 are exactly at it, not past
        box.put([reading(n) for n in range(6, 10)])  # seq 7-10: four over
        assert seqs(drain(box)) == [5, 6, 7, 8, 9, 10]
        assert box.drops() == [
            DropReport(Priority.P2, DropReason.EXPIRED, 3),
            DropReport(Priority.P2, DropReason.OUTBOX_FULL, 1),
        ]


def test_p2_larger_than_the_outbox_keeps_only_the_newest(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=3 * PLAIN) as box:
        kept = box.put([reading(n) for n in range(5)])
        assert seqs(kept) == [3, 4, 5]  # what put() returns is what the outbox holds
        assert seqs(drain(box)) == [3, 4, 5]


def test_p1_keeps_the_latest_per_key_dropping_the_oldest_superseded_first(tmp_path: Path, clock: Clock) -> None:
    first = [
        reading(1, Priority.P1, metric=1),  # seq 1: key "" groups by metric
        reading(2, Priority.P1, metric=1),  # 2
        reading(3, Priority.P1, metric=1),  # 3
        reading(4, Priority.P1, metric=2, key="truck-7"),  # 4: a key groups whatever the metric
        reading(5, Priority.P1, metric=3, key="truck-7"),  # 5
        reading(6, Priority.P1, metric=2, key="truck-8"),  # 6
    ]
    bound = sum(stored_size(r) for r in first)
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=bound) as box:
        box.put(first)
        assert box.drops() == []  # history is kept while there is room
        box.put([reading(7, Priority.P1, metric=5)])  # seq 7: 24 over
        assert seqs(drain(box)) == [2, 3, 4, 5, 6, 7]
        box.put([reading(8, Priority.P1, metric=5)])  # seq 8: 24 over again
        assert seqs(drain(box)) == [3, 4, 5, 6, 7, 8]
        box.put([reading(9, Priority.P1, metric=9)])  # seq 9: truck-7's older one (31 bytes) is enough
        assert seqs(drain(box)) == [3, 5, 6, 7, 8, 9]
        assert box.drops() == [DropReport(Priority.P1, DropReason.SUPERSEDED, 3)]
        # 48 over: metric 5's older one goes, then only latest readings are left, and the outbox
        # holds them above its bound rather than lose a key.
        box.put([reading(10, Priority.P1, metric=10), reading(11, Priority.P1, metric=11)])
        assert seqs(drain(box)) == [3, 5, 6, 8, 9, 10, 11]
        assert box.stats().over_bound_bytes > 0
        assert box.drops() == [DropReport(Priority.P1, DropReason.SUPERSEDED, 4)]


def test_classes_give_way_in_the_documented_order(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=7 * PLAIN, p2_ttl_s=100) as box:
        box.put([reading(1, Priority.P2)])  # seq 1: will expire
        clock.now = T0 + 200
        box.put([
            reading(2, Priority.P1, metric=4),  # 2: superseded by 3
            reading(3, Priority.P1, metric=4),  # 3
            reading(4, Priority.P2),  # 4: fresh
            reading(5, Priority.P3),  # 5
            reading(6, Priority.P3),  # 6
            reading(7, Priority.P0),  # 7
        ])  # fmt: skip
        assert box.drops() == []
        gone = []
        for n in range(8, 14):
            before = {s.seq for s in drain(box)}
            box.put([reading(n, Priority.P0)])
            gone.append(sorted(before - {s.seq for s in drain(box)}))
        assert gone == [[6], [5], [1], [2], [4], []]  # P3 newest, P3, expired P2, superseded P1, P2; then none
        assert box.drops() == [
            DropReport(Priority.P1, DropReason.SUPERSEDED, 1),
            DropReport(Priority.P2, DropReason.EXPIRED, 1),
            DropReport(Priority.P2, DropReason.OUTBOX_FULL, 1),
            DropReport(Priority.P3, DropReason.OUTBOX_FULL, 2),
        ]
        assert box.stats().over_bound_bytes == PLAIN  # seven P0 and the latest P1: one over


def test_readings_in_flight_are_not_dropped(tmp_path: Path, clock: Clock) -> None:
    with open_box(tmp_path / "o.sqlite", clock, max_bytes=3 * PLAIN) as box:
        box.put([reading(n) for n in range(3)])
        assert seqs(box.take(2, historical=False, live_window_s=60)) == [1, 2]
        box.put([reading(3)])  # the oldest not in flight gives way
        assert seqs(drain(box)) == [4]
        assert box.acknowledge(1, [(1, 2)]) == 2


def test_drops_are_counted_until_reported_and_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.sqlite"
    with open_box(path, clock, max_bytes=PLAIN) as box:
        box.put([reading(n, Priority.P3) for n in range(4)])
        reports = box.drops()
        assert reports == [DropReport(Priority.P3, DropReason.OUTBOX_FULL, 3)]
        box.put([reading(9, Priority.P3)])  # one more, after the report was made
        box.mark_reported(reports)
    with open_box(path, clock, max_bytes=PLAIN) as box:
        assert box.drops() == [DropReport(Priority.P3, DropReason.OUTBOX_FULL, 1)]
        box.mark_reported(box.drops())
        assert box.drops() == []


def test_discard_counts_with_the_reason_and_keeps_p0_and_in_flight(box: Outbox) -> None:
    box.put([reading(1, Priority.P3), reading(2, Priority.P0), reading(3, Priority.P3), reading(4, Priority.P2)])
    box.take(1, historical=False, live_window_s=60)  # seq 2, the P0
    box.take(1, historical=False, live_window_s=60)  # seq 1
    assert box.discard(1, [(1, 4)], DropReason.BUDGET) == 2
    assert box.drops() == [
        DropReport(Priority.P2, DropReason.BUDGET, 1),
        DropReport(Priority.P3, DropReason.BUDGET, 1),
    ]
    assert box.requeue_all() == 2
    assert seqs(drain(box)) == [2, 1]


def test_stats_count_and_size_each_class(box: Outbox) -> None:
    box.put([reading(1, Priority.P0), reading(2, Priority.P1, key="v"), reading(3, Priority.P1, key="v")])
    box.take(1, historical=False, live_window_s=60)
    stats = box.stats()
    assert stats.session == 1
    assert stats.readings == {Priority.P0: 1, Priority.P1: 2, Priority.P2: 0, Priority.P3: 0}
    assert stats.bytes == {Priority.P0: PLAIN, Priority.P1: 2 * (PLAIN + 1), Priority.P2: 0, Priority.P3: 0}
    assert (stats.total_readings, stats.total_bytes, stats.in_flight, stats.over_bound_bytes) == (3, 74, 1, 0)


def test_state_values_are_kept_across_restarts(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.sqlite"
    with open_box(path, clock) as box:
        assert box.load_state("budget/satellite") is None
        box.save_state("budget/satellite", b"\x01\x02")
    with open_box(path, clock) as box:
        assert box.load_state("budget/satellite") == b"\x01\x02"


# -- no reading is ever lost without being counted ----------------------------------------------

_priorities = st.sampled_from(list(Priority))


class OutboxMachine(RuleBasedStateMachine):
    """Random puts, takes, acks, requeues, clock moves and restarts against a small outbox: every
    reading put is held, acknowledged, or counted as dropped, and none is held or sent twice."""

    def __init__(self) -> None:
        super().__init__()
        # Trims in-flight spans after nearly every ack and requeue, so trimming is exercised too.
        self.patches = pytest.MonkeyPatch()
        self.patches.setattr(outbox_module, "_SPANS_BEFORE_COMPACTING", 1)
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "o.sqlite"
        self.clock = Clock()
        self.box = open_box(self.path, self.clock, max_bytes=12 * PLAIN, p2_ttl_s=50)
        self.put_by_class: Counter[Priority] = Counter()
        self.acked_by_class: Counter[Priority] = Counter()
        self.accepted: dict[tuple[int, int], Reading] = {}
        self.in_flight: dict[tuple[int, int], Reading] = {}
        self.counter = 0

    def teardown(self) -> None:
        self.box.close()
        self.dir.cleanup()
        self.patches.undo()

    @rule(
        classes=st.lists(_priorities, min_size=1, max_size=8),
        keys=st.lists(st.sampled_from(["", "a", "b"]), min_size=8, max_size=8),
    )
    def put(self, classes: list[Priority], keys: list[str]) -> None:
        batch = []
        for priority, key in zip(classes, keys, strict=False):
            self.counter += 1
            batch.append(reading(self.counter, priority, metric=self.counter % 3, key=key))
        stored = self.box.put(batch)
        self.put_by_class.update(r.priority for r in batch)
        assert [s.reading for s in stored] == [r for r in batch if r in {s.reading for s in stored}]
        for item in stored:
            assert (item.session, item.seq) not in self.accepted
            self.accepted[item.session, item.seq] = item.reading

    @rule(limit=st.integers(1, 10), historical=st.booleans(), window=st.sampled_from([0.0, 15.0, 1000.0]))
    def take(self, limit: int, historical: bool, window: float) -> None:
        taken = self.box.take(limit, historical=historical, live_window_s=window)
        assert len(taken) <= limit
        assert len({item.session for item in taken}) <= 1
        urgent = [item.reading.priority == Priority.P0 for item in taken]
        assert urgent == sorted(urgent, reverse=True)  # P0 first
        for item in taken:
            place = (item.session, item.seq)
            assert self.accepted.get(place) == item.reading
            assert place not in self.in_flight
            self.in_flight[place] = item.reading

    @rule(data=st.data())
    @precondition(lambda self: bool(self.in_flight))
    def acknowledge_some(self, data: st.DataObject) -> None:
        place = data.draw(st.sampled_from(sorted(self.in_flight)))
        assert self.box.acknowledge(place[0], [(place[1], place[1])]) == 1
        self.acked_by_class[self.in_flight.pop(place).priority] += 1
        del self.accepted[place]

    @rule(data=st.data())
    @precondition(lambda self: bool(self.in_flight))
    def requeue_some(self, data: st.DataObject) -> None:
        place = data.draw(st.sampled_from(sorted(self.in_flight)))
        assert self.box.requeue(place[0], [(place[1], place[1])]) == 1
        del self.in_flight[place]

    @rule()
    def requeue_all(self) -> None:
        assert self.box.requeue_all() == len(self.in_flight)
        self.in_flight.clear()

    @rule(seconds=st.sampled_from([1.0, 10.0, 60.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def restart(self) -> None:
        self.box.close()
        self.box = open_box(self.path, self.clock, max_bytes=12 * PLAIN, p2_ttl_s=50)
        self.in_flight.clear()

    @invariant()
    def nothing_is_lost_silently_or_held_twice(self) -> None:
        stats = self.box.stats()
        assert stats.in_flight == len(self.in_flight)
        held = drain(self.box)
        places = [(item.session, item.seq) for item in held] + list(self.in_flight)
        assert len(places) == len(set(places)) == stats.total_readings
        for item in held:
            assert self.accepted[item.session, item.seq] == item.reading
        dropped = Counter({report.priority: 0 for report in self.box.drops()})
        for report in self.box.drops():
            dropped[report.priority] += report.count
        assert dropped[Priority.P0] == 0
        for priority in Priority:
            assert self.put_by_class[priority] == (
                stats.readings[priority] + self.acked_by_class[priority] + dropped[priority]
            )


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
