"""The edge agent's durable outbox: every reading is stored here before it is sent, and leaves only
when the gateway says it has it durably or when a class policy drops it (and counts the drop).

Storage is one SQLite file in WAL mode with ``synchronous=FULL``: ``put`` returns only after its
transaction is on disk, so a reading it returns survives kill -9 and power loss; every change is one
transaction, so the file is consistent whatever the moment of a crash.

Numbering. Each ``open`` raises the persisted session counter (a boot counter, starting at 1) before
anything is stored, and numbers the readings of that session 1, 2, 3, ... in the order they were
put. A crash therefore never reuses a (session, seq): the next start is a new session. A row's key
is ``session << 40 | seq``, so one integer orders every reading by put order across sessions, and a
session's range of numbers is a range of keys (acknowledgements become range deletes).

When the stored readings' size (``stored_size``) would pass ``max_bytes``, classes give way in this
order until the outbox fits again:

1. P3, newest first: incoming P3 readings are refused (they never get a number), then stored P3
   from the newest. Reason ``outbox_full``.
2. P2 past its time-to-live (``p2_ttl_s`` since it was put), oldest first. Reason ``expired``.
3. P1 superseded by a newer P1 of the same key (``Reading.key``, or its metric when the key is
   empty), oldest first. Reason ``superseded``. The latest P1 of each key is always kept: a full
   outbox keeps the track history of a vehicle until space is needed, then only where it is now.
4. P2, oldest first. Reason ``outbox_full``.

P0 and the latest P1 per key are never dropped: the outbox may then stay above ``max_bytes``
(``OutboxStats.over_bound_bytes`` says by how much, and an ``outbox_over_bound`` event is logged when
it starts). Readings in flight (taken and neither acknowledged nor requeued) are never dropped
either: they may be on the wire, and the gateway may confirm them. Every drop is counted by
(class, reason) in the same transaction as the delete, until it is reported upstream.

Series. A terminal's sampled block of one metric (``put_series``) is stored as ONE row of the
``chunks`` table, holding its series entry of the wire format (so building a batch is
concatenation), and takes a range of seq numbers in the same sequence space as single readings:
its key is ``session << 40 | first_seq`` and it holds ``count`` readings. Only P2 and P3 blocks are
chunks (P0 and P1 stay single readings: an alarm is never held inside a block, and "latest per key"
is per reading). Chunks are handled as wholes: taken, acknowledged (once an ack covers their whole
range), requeued, dropped by the class policies (P2 past its TTL and oldest first, P3 newest
first, in key order together with the class's single readings) and counted in readings.

Sending order (``take``): P0 first, oldest first, then the other classes together, oldest first.
"Live" readings are those of the current session put less than ``live_window_s`` ago; everything
else (older, or from earlier sessions) is "historical", so a backlog never holds up fresh data.
One ``take`` returns readings of one session, the session of the first eligible reading.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import structlog

from edge_agent import wire
from edge_agent.model import SERIES_PRIORITIES, Chunk, DropReason, DropReport, Priority, Reading, Sequenced
from gateway.errors import YiwangError
from gateway.stores import write_transaction

log = structlog.get_logger("yiwang.edge.outbox")

SCHEMA_VERSION: Final = 2  # 2 added the chunks table; a version 1 file is upgraded on open
SESSION_SHIFT: Final = 40  # bits of a row key that hold the seq; 2**40 readings per session
_SEQ_END: Final = 1 << SESSION_SHIFT
_SEQ_MASK: Final = _SEQ_END - 1
# Bytes a reading costs besides its variable fields: metric (4), at_ms (8), value (8), priority and
# presence flags (4); lat and lon add 8 each. Close to what the wire and the row really take.
_FIXED_SIZE: Final = 24
_COORDINATE_SIZE: Final = 8
_PRIORITIES: Final = tuple(Priority)
_URGENT, _OTHERS = 0, 1  # the two groups take() serves in turn: P0, then every other class
# Acks and requeues cut spans of in-flight keys into pieces that may hold no reading any more; past
# this many spans (then past twice what the last compaction left) they are trimmed to the rows left.
_SPANS_BEFORE_COMPACTING = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY,  -- session << 40 | seq
    put_ms INTEGER NOT NULL,  -- when it was put (the outbox's clock, never decreasing in a session)
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    metric INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    value REAL NOT NULL,
    lat REAL,
    lon REAL,
    text TEXT NOT NULL,
    blob BLOB NOT NULL,
    key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_class ON readings (priority);
-- P1 readings by what supersedes them: their key, or their metric when the key is empty.
CREATE INDEX IF NOT EXISTS p1_by_key ON readings (key, iif(key = '', metric, -1)) WHERE priority = 1;
CREATE TABLE IF NOT EXISTS drops (
    priority INTEGER NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    reported INTEGER NOT NULL,
    PRIMARY KEY (priority, reason)
);
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,  -- session << 40 | first seq
    count INTEGER NOT NULL,  -- readings it holds: seqs first .. first + count - 1
    put_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL,  -- 2 or 3
    metric INTEGER NOT NULL,
    first_at_ms INTEGER NOT NULL,
    last_at_ms INTEGER NOT NULL,
    body BLOB NOT NULL  -- the series entry of the wire's batch format
);
"""
_CHUNK_OVERHEAD: Final = 48  # bytes a chunk costs besides its body (its row's numbers)
MAX_CHUNK_POINTS: Final = 65_536  # readings in one chunk (the gateway's limit per series)
_READING_COLUMNS = "id, metric, at_ms, value, priority, lat, lon, text, blob, key"
_INSERT = "INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_COUNT_DROP = (
    "INSERT INTO drops VALUES (?, ?, ?, 0) ON CONFLICT (priority, reason) DO UPDATE SET count = count + excluded.count"
)
# The urgent group is read through the class index; the others in key order, which is put order.
_GROUP_FILTER = (
    "FROM readings INDEXED BY readings_by_class WHERE priority = 0",
    "FROM readings NOT INDEXED WHERE priority > 0",
)


class OutboxError(YiwangError):
    """The outbox cannot do what was asked: it is closed, its file is not an outbox, or an argument is wrong."""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """What the outbox holds, for metrics and the agent's status."""

    session: int
    readings: Mapping[Priority, int]
    bytes: Mapping[Priority, int]
    in_flight: int
    max_bytes: int
    over_bound_bytes: int  # how far above max_bytes it is (only P0, latest P1 per key and in-flight stay)

    @property
    def total_readings(self) -> int:
        return sum(self.readings.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


def stored_size(reading: Reading) -> int:
    """The bytes a reading counts for against the outbox's bound."""
    text, key = reading.text, reading.key
    size = _FIXED_SIZE + len(reading.blob)
    if text:
        size += len(text.encode())
    if key:
        size += len(key.encode())
    if reading.lat is not None:
        size += _COORDINATE_SIZE
    if reading.lon is not None:
        size += _COORDINATE_SIZE
    return size


class _Spans:
    """Closed ranges of row keys, sorted and disjoint: the readings of one take group in flight.

    A span [a, b] means every row of its group with a key in [a, b] is in flight. Spans stay few
    because take() reads rows in key order and marks the whole stretch it read.
    """

    __slots__ = ("ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        i = bisect_left(self.ends, start - 1)  # touching spans merge, so the list stays short
        j = bisect_right(self.starts, end + 1)
        if i < j:
            start, end = min(start, self.starts[i]), max(end, self.ends[j - 1])
        self.starts[i:j] = [start]
        self.ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        i = bisect_left(self.ends, start)
        j = bisect_right(self.starts, end)
        if i >= j:
            return
        starts: list[int] = []
        ends: list[int] = []
        if self.starts[i] < start:
            starts.append(self.starts[i])
            ends.append(start - 1)
        if self.ends[j - 1] > end:
            starts.append(end + 1)
            ends.append(self.ends[j - 1])
        self.starts[i:j] = starts
        self.ends[i:j] = ends

    def covers(self, key: int) -> bool:
        i = bisect_right(self.starts, key) - 1
        return i >= 0 and self.ends[i] >= key

    def pieces(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of [start, end] that are covered."""
        for i in range(bisect_left(self.ends, start), bisect_right(self.starts, end)):
            yield max(self.starts[i], start), min(self.ends[i], end)

    def gaps(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """The parts of [start, end] that are not covered, in order."""
        position = start
        for low, high in self.pieces(start, end):
            if low > position:
                yield position, low - 1
            position = high + 1
        if position <= end:
            yield position, end

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()


def chunk_key(chunk: Chunk) -> int:
    """The row key of a chunk: its session and first seq."""
    return chunk.session << SESSION_SHIFT | chunk.first_seq


def _session_keys(session: int, ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Row key ranges for inclusive seq ranges of a session; checks them."""
    if session < 1:
        raise OutboxError(f"session {session}: sessions start at 1")
    base = session << SESSION_SHIFT
    for first, last in ranges:
        if not 1 <= first <= last:
            raise OutboxError(f"seq range {first}-{last}: needs 1 <= first <= last")
        yield base | first, base | min(last, _SEQ_MASK)


class Outbox:
    """The durable outbox. Open it with ``Outbox.open(...)``; every method is a short synchronous
    call, safe from any thread (one at a time), e.g. through ``asyncio.to_thread``."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        path: Path,
        *,
        session: int,
        max_bytes: int,
        p2_ttl_s: float,
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.session = session
        self.max_bytes = max_bytes
        self.p2_ttl_s = p2_ttl_s
        self._db: sqlite3.Connection | None = connection
        self._clock = clock
        self._lock = threading.Lock()
        self._base = session << SESSION_SHIFT
        self._next_seq = 1
        self._last_put_ms = 0
        self._counts = [0, 0, 0, 0]  # per class, mirrored from the table after each commit
        self._bytes = [0, 0, 0, 0]
        self._in_flight = (_Spans(), _Spans())  # indexed by _URGENT / _OTHERS; not persisted on purpose
        self._compact_at = _SPANS_BEFORE_COMPACTING
        self._over_bound = False
        self._chunks_in_flight: dict[int, int] = {}  # key -> readings, of chunks taken and not answered
        for priority, count, size in connection.execute(
            "SELECT priority, count(*), coalesce(sum(size), 0) FROM readings GROUP BY priority"
            " UNION ALL SELECT priority, sum(count), coalesce(sum(size), 0) FROM chunks GROUP BY priority"
        ):
            self._counts[priority] += count
            self._bytes[priority] += size

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path | str, *, max_bytes: int, p2_ttl_s: float, clock: Callable[[], float] = time.time
    ) -> Outbox:
        """Opens (or creates) the outbox at ``path`` and starts a new session."""
        if max_bytes <= 0:
            raise OutboxError(f"max_bytes {max_bytes}: must be positive")
        if p2_ttl_s <= 0:
            raise OutboxError(f"p2_ttl_s {p2_ttl_s}: must be positive")
        path = Path(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            session = cls._prepare(db, path)
        except BaseException:
            db.close()
            raise
        outbox = cls(db, path, session=session, max_bytes=max_bytes, p2_ttl_s=p2_ttl_s, clock=clock)
        stats = outbox.stats()
        log.info(
            "outbox_opened",
            path=str(path),
            session=session,
            readings=stats.total_readings,
            bytes=stats.total_bytes,
            max_bytes=max_bytes,
        )
        return outbox

    @staticmethod
    def _prepare(db: sqlite3.Connection, path: Path) -> int:
        """Sets the file up and raises the session counter durably; returns the new session."""
        try:
            # Page size only takes effect on a new file; larger pages make bulk inserts cheaper.
            db.execute("PRAGMA page_size=16384")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            with write_transaction(db):
                version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if version is None or version[0] == 1:  # version 1 lacked only the chunks table, made above
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
                elif version[0] != SCHEMA_VERSION:
                    raise OutboxError(f"{path}: outbox schema {version[0]}, this version reads {SCHEMA_VERSION}")
                row = db.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()
                session = (row[0] if row else 0) + 1
                if session >= 1 << (63 - SESSION_SHIFT):
                    raise OutboxError(f"{path}: session counter exhausted at {session}")
                db.execute("INSERT OR REPLACE INTO meta VALUES ('session', ?)", (session,))
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{path}: not a usable outbox: {exc}") from exc
        if str(mode).lower() != "wal":
            raise OutboxError(f"{path}: cannot use write-ahead logging (journal mode {mode})")
        return int(session)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                log.info("outbox_closed", path=str(self.path), session=self.session)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"{self.path}: the outbox is closed")
        return self._db

    # -- storing --------------------------------------------------------------------------------

    def put(self, readings: Sequence[Reading]) -> list[Sequenced]:
        """Stores readings durably and numbers them; returns those the outbox kept, in order.

        Readings missing from the result were dropped by their class policy (and counted): an
        incoming P3 refused, or an incoming P1/P2 that gave way in the same call.
        """
        with self._lock:
            db = self._connection()
            if not readings:
                return []
            if self._next_seq + len(readings) > _SEQ_MASK:
                raise OutboxError(f"session {self.session} has used all its sequence numbers; reopen the outbox")
            put_ms = max(int(self._clock() * 1000), self._last_put_ms)
            base, seq = self._base, self._next_seq
            rows: list[tuple[Any, ...]] = []
            append = rows.append
            added_counts = [0, 0, 0, 0]
            added_bytes = [0, 0, 0, 0]
            for reading in readings:
                text, key, lat, lon = reading.text, reading.key, reading.lat, reading.lon
                size = _FIXED_SIZE + len(reading.blob)
                if text:
                    size += len(text.encode())
                if key:
                    size += len(key.encode())
                if lat is not None:
                    size += _COORDINATE_SIZE
                if lon is not None:
                    size += _COORDINATE_SIZE
                priority = int(reading.priority)  # sqlite3 binds an exact int much faster than an IntEnum
                added_counts[priority] += 1
                added_bytes[priority] += size
                append(
                    (
                        base | seq,
                        put_ms,
                        size,
                        priority,
                        reading.metric,
                        reading.at_ms,
                        reading.value,
                        lat,
                        lon,
                        text,
                        reading.blob,
                        key,
                    )
                )
                seq += 1
            kept = readings
            excess = sum(self._bytes) + sum(added_bytes) - self.max_bytes
            refused = 0
            if excess > 0 and added_counts[Priority.P3]:
                kept, rows, refused = self._refuse_newest_bulk(readings, rows, excess, put_ms)
                added_counts[Priority.P3] -= refused
                added_bytes[Priority.P3] = sum(row[2] for row in rows if row[3] == Priority.P3)
                excess = sum(self._bytes) + sum(added_bytes) - self.max_bytes
            drops: dict[tuple[Priority, DropReason], int] = {}
            if refused:
                drops[Priority.P3, DropReason.OUTBOX_FULL] = refused
            counts = [a + b for a, b in zip(self._counts, added_counts, strict=True)]
            sizes = [a + b for a, b in zip(self._bytes, added_bytes, strict=True)]
            dropped_keys: set[int] = set()
            with write_transaction(db):
                db.executemany(_INSERT, rows)
                if excess > 0:
                    dropped_keys = self._make_room(
                        db, excess=excess, now_ms=put_ms, counts=counts, sizes=sizes, drops=drops
                    )
                for (priority, reason), count in drops.items():
                    db.execute(_COUNT_DROP, (int(priority), str(reason), count))
            # Only now that the transaction is on disk does the in-memory view move on.
            self._counts, self._bytes = counts, sizes
            self._next_seq = (rows[-1][0] & _SEQ_MASK) + 1 if rows else self._next_seq
            self._last_put_ms = put_ms
            self._note_bound()
            session, first_seq = self.session, self._next_seq - len(rows)
            if not dropped_keys:
                return [Sequenced(session, seq, reading) for seq, reading in enumerate(kept, first_seq)]
            return [
                Sequenced(session, row[0] & _SEQ_MASK, reading)
                for row, reading in zip(rows, kept, strict=True)
                if row[0] not in dropped_keys
            ]

    def put_series(
        self,
        metric: int,
        at_ms: object,
        values: object,
        priority: Priority = Priority.P2,
        *,
        chunk_points: int = MAX_CHUNK_POINTS,
    ) -> list[Chunk]:
        """Stores a sampled block of one metric durably, as chunks of at most ``chunk_points``
        readings (one transaction); returns the chunks kept, in order.

        ``at_ms`` and ``values`` are sequences or numpy arrays of one length; ``priority`` is P2 or
        P3. A P3 block that does not fit loses its newest chunks first (they never get numbers);
        chunks missing from the result were dropped by their class policy and counted in readings.
        """
        if priority not in SERIES_PRIORITIES:
            raise OutboxError(f"priority {priority!r}: series are P2 or P3 (P0 and P1 readings go one by one)")
        if not 1 <= chunk_points <= MAX_CHUNK_POINTS:
            raise OutboxError(f"chunk_points {chunk_points}: must be 1..{MAX_CHUNK_POINTS}")
        try:
            times, numbers = wire.series_arrays(at_ms, values)
        except wire.WireError as exc:
            raise OutboxError(str(exc)) from None
        count = len(numbers)
        level = int(priority)
        with self._lock:
            db = self._connection()
            if self._next_seq + count > _SEQ_MASK:
                raise OutboxError(f"session {self.session} has used all its sequence numbers; reopen the outbox")
            put_ms = max(int(self._clock() * 1000), self._last_put_ms)
            rows: list[tuple[Any, ...]] = []
            seq = self._next_seq
            try:
                for start in range(0, count, chunk_points):
                    piece_times, piece_values = (
                        times[start : start + chunk_points],
                        numbers[start : start + chunk_points],
                    )
                    body = wire.encode_series(metric, level, seq, piece_times, piece_values)
                    size = _CHUNK_OVERHEAD + len(body)
                    rows.append(
                        (
                            self._base | seq,
                            len(piece_values),
                            put_ms,
                            size,
                            level,
                            metric,
                            int(piece_times[0]),
                            int(piece_times[-1]),
                            body,
                        )
                    )
                    seq += len(piece_values)
            except wire.WireError as exc:
                raise OutboxError(str(exc)) from None
            counts, sizes = list(self._counts), list(self._bytes)
            drops: dict[tuple[Priority, DropReason], int] = {}
            excess = sum(sizes) + sum(row[3] for row in rows) - self.max_bytes
            if excess > 0 and priority == Priority.P3:  # the newest bulk gives way first: this block's tail
                refused = 0
                while rows and excess > 0:
                    row = rows.pop()
                    excess -= row[3]
                    refused += row[1]
                drops[Priority.P3, DropReason.OUTBOX_FULL] = refused
            for row in rows:
                counts[level] += row[1]
                sizes[level] += row[3]
            dropped: set[int] = set()
            with write_transaction(db):
                db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                if excess > 0:
                    dropped = self._make_room(db, excess=excess, now_ms=put_ms, counts=counts, sizes=sizes, drops=drops)
                for (drop_priority, reason), dropped_count in drops.items():
                    db.execute(_COUNT_DROP, (int(drop_priority), str(reason), dropped_count))
            self._counts, self._bytes = counts, sizes
            if rows:
                self._next_seq = (rows[-1][0] & _SEQ_MASK) + rows[-1][1]
                self._last_put_ms = put_ms
            self._note_bound()
            return [
                Chunk(self.session, row[0] & _SEQ_MASK, row[1], priority, metric, row[8])
                for row in rows
                if row[0] not in dropped
            ]

    def _refuse_newest_bulk(
        self, readings: Sequence[Reading], rows: list[tuple[Any, ...]], excess: int, put_ms: int
    ) -> tuple[Sequence[Reading], list[tuple[Any, ...]], int]:
        """Drops incoming P3 readings from the newest until the excess is gone; renumbers the rest."""
        refuse: set[int] = set()
        for index in range(len(rows) - 1, -1, -1):
            if excess <= 0:
                break
            if rows[index][3] == Priority.P3:
                refuse.add(index)
                excess -= rows[index][2]
        kept = [reading for index, reading in enumerate(readings) if index not in refuse]
        renumbered = [
            (self._base | seq, put_ms, *row[2:])
            for seq, row in enumerate((row for index, row in enumerate(rows) if index not in refuse), self._next_seq)
        ]
        return kept, renumbered, len(refuse)

    def _make_room(
        self,
        db: sqlite3.Connection,
        *,
        excess: int,
        now_ms: int,
        counts: list[int],
        sizes: list[int],
        drops: dict[tuple[Priority, DropReason], int],
    ) -> set[int]:
        """Drops stored readings in the documented order until ``excess`` bytes are freed.

        Updates ``counts``, ``sizes`` and ``drops`` in place; returns the keys it deleted.
        """
        others = self._in_flight[_OTHERS]
        expired_before = now_ms - int(self.p2_ttl_s * 1000)
        dropped: set[int] = set()

        chunks_in_flight = self._chunks_in_flight

        def drop(candidates: Generator[tuple[int, int, int]], priority: Priority, reason: DropReason) -> None:
            nonlocal excess
            chosen: list[tuple[int]] = []
            chosen_chunks: list[tuple[int]] = []
            readings = 0
            for key, size, chunk_count in candidates:
                if excess <= 0:
                    break
                if chunk_count:
                    if key in chunks_in_flight:
                        continue
                    chosen_chunks.append((key,))
                    readings += chunk_count
                else:
                    if others.covers(key):
                        continue
                    chosen.append((key,))
                    readings += 1
                excess -= size
                sizes[priority] -= size
            candidates.close()  # finishes the candidates' query before their rows are deleted
            if chosen:
                db.executemany("DELETE FROM readings WHERE id = ?", chosen)
            if chosen_chunks:
                db.executemany("DELETE FROM chunks WHERE id = ?", chosen_chunks)
            if readings:
                counts[priority] -= readings
                drops[priority, reason] = drops.get((priority, reason), 0) + readings
                dropped.update(key for (key,) in chosen)
                dropped.update(key for (key,) in chosen_chunks)

        def stored(priority: Priority, order: str) -> Generator[tuple[int, int, int]]:
            # single readings (count 0 marks them) and chunks of the class, in one key order
            yield from db.execute(
                "SELECT id, size, 0 FROM readings WHERE priority = ?"  # noqa: S608 - ASC or DESC
                f" UNION ALL SELECT id, size, count FROM chunks WHERE priority = ? ORDER BY id {order}",
                (int(priority), int(priority)),
            )

        def expired() -> Generator[tuple[int, int, int]]:
            for key, size, chunk_count, put_ms in db.execute(
                "SELECT id, size, 0, put_ms FROM readings WHERE priority = 2"
                " UNION ALL SELECT id, size, count, put_ms FROM chunks WHERE priority = 2 ORDER BY id"
            ):
                if put_ms >= expired_before:
                    return
                yield key, size, chunk_count

        def superseded() -> Generator[tuple[int, int, int]]:
            for key, size, reading_key, metric in db.execute(
                "SELECT id, size, key, metric FROM readings WHERE priority = 1 ORDER BY id"
            ):
                newer = db.execute(
                    "SELECT 1 FROM readings INDEXED BY p1_by_key WHERE priority = 1 AND key = ?"
                    " AND iif(key = '', metric, -1) = ? AND id > ? LIMIT 1",
                    (reading_key, -1 if reading_key else metric, key),
                ).fetchone()
                if newer is not None:
                    yield key, size, 0

        if counts[Priority.P3]:
            drop(stored(Priority.P3, "DESC"), Priority.P3, DropReason.OUTBOX_FULL)
        if excess > 0 and counts[Priority.P2]:
            drop(expired(), Priority.P2, DropReason.EXPIRED)
        if excess > 0 and counts[Priority.P1]:
            drop(superseded(), Priority.P1, DropReason.SUPERSEDED)
        if excess > 0 and counts[Priority.P2]:
            drop(stored(Priority.P2, "ASC"), Priority.P2, DropReason.OUTBOX_FULL)
        return dropped

    def _note_bound(self) -> None:
        over = sum(self._bytes) > self.max_bytes
        if over and not self._over_bound:
            log.warning(
                "outbox_over_bound",
                path=str(self.path),
                bytes=sum(self._bytes),
                max_bytes=self.max_bytes,
                p0_bytes=self._bytes[Priority.P0],
                p1_bytes=self._bytes[Priority.P1],
            )
        elif self._over_bound and not over:
            log.info("outbox_within_bound", path=str(self.path), bytes=sum(self._bytes), max_bytes=self.max_bytes)
        self._over_bound = over

    # -- sending --------------------------------------------------------------------------------

    def take(self, limit: int, *, historical: bool, live_window_s: float) -> list[Sequenced]:
        """Marks up to ``limit`` readings in flight and returns them: P0 first, then the rest, each
        oldest first, all of one session; live or historical ones as asked."""
        with self._lock:
            db = self._connection()
            if limit <= 0 or not any(self._counts):
                return []
            now_ms = int(self._clock() * 1000)
            boundary = self._live_boundary(db, now_ms - int(live_window_s * 1000))
            if historical:
                low, high = 1, boundary - 1
            else:
                low, high = boundary, self._base | _SEQ_MASK
            groups = (_URGENT, _OTHERS) if self._counts[Priority.P0] else (_OTHERS,)
            first = None
            for group in groups:
                first = self._first_free(db, group, low, high)
                if first is not None:
                    break
            if first is None:
                return []
            session = first >> SESSION_SHIFT
            low = max(low, session << SESSION_SHIFT)
            high = min(high, session << SESSION_SHIFT | _SEQ_MASK)
            taken: list[Sequenced] = []
            for group in groups:
                self._take_group(db, group, low=low, high=high, limit=limit, taken=taken)
            return taken

    def take_chunks(
        self, max_readings: int, *, historical: bool, live_window_s: float, session: int | None = None
    ) -> list[Chunk]:
        """Marks stored chunks in flight and returns them, oldest first, until they hold
        ``max_readings`` readings (at least one chunk when any is eligible): all of one session
        (``session``, else the session of the first eligible chunk); live or historical ones as asked,
        by the same rule as ``take``."""
        with self._lock:
            db = self._connection()
            if max_readings <= 0:
                return []
            cutoff_ms = int(self._clock() * 1000) - int(live_window_s * 1000)
            where = "(id < ? OR put_ms <= ?)" if historical else "id >= ? AND put_ms > ?"
            low, high = 0, 1 << 62
            if session is not None:
                low, high = session << SESSION_SHIFT, session << SESSION_SHIFT | _SEQ_MASK
            chosen: list[int] = []
            readings = 0
            after = low - 1
            while readings < max_readings:
                # numbers first: the bodies of chunks already in flight are not read again
                rows = db.execute(
                    f"SELECT id, count FROM chunks WHERE {where}"  # noqa: S608 - fixed texts
                    " AND id > ? AND id <= ? ORDER BY id LIMIT 64",
                    (self._base, cutoff_ms, after, high),
                ).fetchall()
                if not rows:
                    break
                for key, count in rows:
                    after = key
                    if key in self._chunks_in_flight:
                        continue
                    if not chosen:  # the first one chosen fixes the session
                        high = min(high, (key >> SESSION_SHIFT) << SESSION_SHIFT | _SEQ_MASK)
                    elif key > high:
                        break
                    if chosen and readings + count > max_readings:
                        readings = max_readings
                        break
                    chosen.append(key)
                    readings += count
                    if readings >= max_readings:
                        break
            taken: list[Chunk] = []
            for key in chosen:
                count, priority, metric, body = db.execute(
                    "SELECT count, priority, metric, body FROM chunks WHERE id = ?", (key,)
                ).fetchone()
                taken.append(Chunk(key >> SESSION_SHIFT, key & _SEQ_MASK, count, _PRIORITIES[priority], metric, body))
                self._chunks_in_flight[key] = count
            return taken

    def _live_boundary(self, db: sqlite3.Connection, cutoff_ms: int) -> int:
        """The smallest key of this session whose reading was put after ``cutoff_ms``.

        A binary search over keys: put_ms never decreases within a session, so "the next stored
        reading from this key on was put after the cutoff" is false, then true.
        """
        low, high = self._base | 1, self._base | self._next_seq
        while low < high:
            middle = (low + high) // 2
            row = db.execute(
                "SELECT put_ms FROM readings WHERE id >= ? AND id < ? ORDER BY id LIMIT 1", (middle, high)
            ).fetchone()
            if row is None or row[0] > cutoff_ms:
                high = middle
            else:
                low = middle + 1
        return low

    def _first_free(self, db: sqlite3.Connection, group: int, low: int, high: int) -> int | None:
        for gap_low, gap_high in self._in_flight[group].gaps(low, high):
            row = db.execute(
                f"SELECT id {_GROUP_FILTER[group]} AND id BETWEEN ? AND ? ORDER BY id LIMIT 1",
                (gap_low, gap_high),
            ).fetchone()
            if row is not None:
                return int(row[0])
        return None

    def _take_group(
        self, db: sqlite3.Connection, group: int, *, low: int, high: int, limit: int, taken: list[Sequenced]
    ) -> None:
        spans = self._in_flight[group]
        marks: list[tuple[int, int]] = []
        session = low >> SESSION_SHIFT
        priorities = _PRIORITIES
        for gap_low, gap_high in list(spans.gaps(low, high)):
            wanted = limit - len(taken)
            if wanted <= 0:
                break
            rows = db.execute(
                f"SELECT {_READING_COLUMNS} {_GROUP_FILTER[group]} AND id BETWEEN ? AND ? ORDER BY id LIMIT ?",
                (gap_low, gap_high, wanted),
            ).fetchall()
            if not rows:
                continue
            taken.extend(
                Sequenced(
                    session,
                    key & _SEQ_MASK,
                    Reading(metric, at_ms, value, priorities[priority], lat, lon, text, blob, reading_key),
                )
                for key, metric, at_ms, value, priority, lat, lon, text, blob, reading_key in rows
            )
            # Every row of the group from the gap's start to the last one read is now in flight.
            marks.append((gap_low, rows[-1][0]))
        for start, end in marks:
            spans.add(start, end)

    # -- answers from the gateway ---------------------------------------------------------------

    def acknowledge(self, session: int, ranges: Sequence[tuple[int, int]]) -> int:
        """Deletes the readings of ``session`` in the inclusive seq ``ranges`` durably (the gateway
        has them); returns how many were still here."""
        with self._lock:
            db = self._connection()
            keys = list(_session_keys(session, ranges))
            counts, sizes = list(self._counts), list(self._bytes)
            deleted = 0
            acknowledged_chunks: list[int] = []
            with write_transaction(db):
                for low, high in keys:
                    for priority, count, size in db.execute(
                        "SELECT priority, count(*), sum(size) FROM readings WHERE id BETWEEN ? AND ? GROUP BY priority",
                        (low, high),
                    ):
                        counts[priority] -= count
                        sizes[priority] -= size
                    deleted += db.execute("DELETE FROM readings WHERE id BETWEEN ? AND ?", (low, high)).rowcount
                    # a chunk leaves only when the ack covers its whole range
                    done = db.execute(
                        "SELECT id, count, priority, size FROM chunks WHERE id BETWEEN ? AND ? AND id + count - 1 <= ?",
                        (low, high, high),
                    ).fetchall()
                    for key, count, priority, size in done:
                        counts[priority] -= count
                        sizes[priority] -= size
                        deleted += count
                        acknowledged_chunks.append(key)
                    db.executemany("DELETE FROM chunks WHERE id = ?", [(key,) for key, *_ in done])
            self._counts, self._bytes = counts, sizes
            for key in acknowledged_chunks:
                self._chunks_in_flight.pop(key, None)
            for low, high in keys:
                for spans in self._in_flight:
                    spans.remove(low, high)
            self._compact_in_flight(db)
            self._note_bound()
            return deleted

    def requeue(self, session: int, ranges: Sequence[tuple[int, int]]) -> int:
        """Makes in-flight readings of ``session`` in the seq ``ranges`` eligible for take() again
        (lost in transit, or the gateway asks for them); returns how many."""
        with self._lock:
            db = self._connection()
            requeued = 0
            for low, high in _session_keys(session, ranges):
                for group, spans in enumerate(self._in_flight):
                    requeued += self._count_in(db, group, spans.pieces(low, high))
                    spans.remove(low, high)
                # a chunk any part of whose range is asked for goes again whole
                for key, count in list(self._chunks_in_flight.items()):
                    if key <= high and key + count - 1 >= low:
                        del self._chunks_in_flight[key]
                        requeued += count
            self._compact_in_flight(db)
            return requeued

    def _compact_in_flight(self, db: sqlite3.Connection) -> None:
        """Trims each span to the rows it still holds and forgets empty ones, when spans pile up.

        Safe because a new reading's key is above every key ever taken, so no row can appear in
        the trimmed-off ends.
        """
        if sum(len(spans.starts) for spans in self._in_flight) <= self._compact_at:
            return
        for group, spans in enumerate(self._in_flight):
            trimmed = [
                (low, high)
                for low, high in (
                    db.execute(
                        f"SELECT min(id), max(id) {_GROUP_FILTER[group]} AND id BETWEEN ? AND ?", span
                    ).fetchone()
                    for span in zip(spans.starts, spans.ends, strict=True)
                )
                if low is not None
            ]
            spans.starts = [low for low, _ in trimmed]
            spans.ends = [high for _, high in trimmed]
        self._compact_at = max(_SPANS_BEFORE_COMPACTING, 2 * sum(len(spans.starts) for spans in self._in_flight))

    def requeue_all(self) -> int:
        """Makes every in-flight reading eligible again (the link went down); returns how many."""
        with self._lock:
            db = self._connection()
            requeued = self._in_flight_count(db)
            for spans in self._in_flight:
                spans.clear()
            self._chunks_in_flight.clear()
            return requeued

    def discard(self, session: int, ranges: Sequence[tuple[int, int]], reason: DropReason) -> int:
        """Drops stored readings of ``session`` in the seq ``ranges`` that the agent gives up on
        (e.g. bulk the link's budget will never carry), counting them with ``reason``.

        P0 readings and readings in flight are kept; a chunk whose range meets ``ranges`` goes
        whole. Returns how many readings were dropped.
        """
        with self._lock:
            db = self._connection()
            others = self._in_flight[_OTHERS]
            counts, sizes = list(self._counts), list(self._bytes)
            chosen: list[tuple[int]] = []
            chosen_chunks: list[tuple[int]] = []
            drops = [0, 0, 0, 0]
            with write_transaction(db):
                for low, high in _session_keys(session, ranges):
                    for key, priority, size in db.execute(
                        "SELECT id, priority, size FROM readings WHERE id BETWEEN ? AND ? AND priority > 0", (low, high)
                    ):
                        if not others.covers(key):
                            chosen.append((key,))
                            drops[priority] += 1
                            counts[priority] -= 1
                            sizes[priority] -= size
                    # chunks go whole when their range meets the discarded one
                    for key, count, priority, size in db.execute(
                        "SELECT id, count, priority, size FROM chunks WHERE id <= ? AND id + count - 1 >= ?",
                        (high, low),
                    ).fetchall():
                        if key not in self._chunks_in_flight:
                            chosen_chunks.append((key,))
                            drops[priority] += count
                            counts[priority] -= count
                            sizes[priority] -= size
                db.executemany("DELETE FROM readings WHERE id = ?", chosen)
                db.executemany("DELETE FROM chunks WHERE id = ?", chosen_chunks)
                for priority, count in enumerate(drops):
                    if count:
                        db.execute(_COUNT_DROP, (priority, str(reason), count))
            self._counts, self._bytes = counts, sizes
            self._note_bound()
            return sum(drops)

    # -- drop reports and state -----------------------------------------------------------------

    def drops(self) -> list[DropReport]:
        """Drops counted and not yet reported upstream, by class and reason."""
        with self._lock:
            rows = self._connection().execute(
                "SELECT priority, reason, count - reported FROM drops WHERE count > reported ORDER BY priority, reason"
            )
            return [DropReport(Priority(priority), DropReason(reason), count) for priority, reason, count in rows]

    def mark_reported(self, reports: Sequence[DropReport]) -> None:
        """Records that ``reports`` (from drops()) reached the gateway, so they are not reported twice."""
        with self._lock:
            db = self._connection()
            with write_transaction(db):
                db.executemany(
                    "UPDATE drops SET reported = min(count, reported + ?) WHERE priority = ? AND reason = ?",
                    [(report.count, int(report.priority), str(report.reason)) for report in reports],
                )

    def load_state(self, name: str) -> bytes | None:
        """A small value another component keeps in the outbox's file (e.g. a link's budget)."""
        with self._lock:
            row = self._connection().execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
            return None if row is None else bytes(row[0])

    def save_state(self, name: str, value: bytes) -> None:
        """Stores a small value durably (on disk when this returns)."""
        with self._lock:
            self._connection().execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, value))

    def stats(self) -> OutboxStats:
        with self._lock:
            db = self._connection()
            total = sum(self._bytes)
            return OutboxStats(
                session=self.session,
                readings=dict(zip(_PRIORITIES, self._counts, strict=True)),
                bytes=dict(zip(_PRIORITIES, self._bytes, strict=True)),
                in_flight=self._in_flight_count(db),
                max_bytes=self.max_bytes,
                over_bound_bytes=max(0, total - self.max_bytes),
            )

    def _in_flight_count(self, db: sqlite3.Connection) -> int:
        return sum(self._chunks_in_flight.values()) + sum(
            self._count_in(db, group, spans.pieces(0, 1 << 62)) for group, spans in enumerate(self._in_flight)
        )

    @staticmethod
    def _count_in(db: sqlite3.Connection, group: int, pieces: Iterator[tuple[int, int]]) -> int:
        return sum(
            db.execute(
                f"SELECT count(*) {_GROUP_FILTER[group]} AND id BETWEEN ? AND ?",
                piece,
            ).fetchone()[0]
            for piece in pieces
        )
