"""The contract of the log interface (``gateway.log.Log``), run against every backend: the embedded
SQLite log and the JetStream log on a real NATS server, in both of its layouts (one message per envelope,
one message per append batch); one server here, the replicated cluster is tested in test_jetstream.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from gateway.errors import LogClosedError
from gateway.jetstream_log import JetStreamLog, JetStreamSettings
from gateway.log import AppendBatch, Log, StoredBatch
from gateway.selection import record_of
from gateway.sqlite_log import PAGE_SIZE, SqliteLog
from tests import factories
from tests.nats_cluster import NatsCluster

LogOpener = Callable[[], Awaitable[Log]]
_streams = itertools.count(1)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    server = NatsCluster(tmp_path_factory.mktemp("nats"), size=1)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "jetstream", "jetstream-batch"])
async def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LogOpener]:
    """Opens the backend's log; calling it again after a close reopens the same log."""
    opened: list[Log] = []
    if request.param == "embedded":

        async def opener() -> Log:
            log = await SqliteLog.open(tmp_path / "log.sqlite", node_id="test-node", fsync=False)
            opened.append(log)
            return log

    else:
        cluster: NatsCluster = request.getfixturevalue("nats_server")
        layout = "batch" if request.param == "jetstream-batch" else "envelope"
        settings = JetStreamSettings(
            servers=tuple(cluster.urls),
            stream=f"CONTRACT_{next(_streams)}",
            replicas=1,
            layout=layout,
            index_dir=tmp_path,
        )

        # The batch layout with no room in memory: reads, look-ups and de-duplication go to the stream.
        cache_bytes = 1 if layout == "batch" else 64 << 20

        async def opener() -> Log:
            log = await JetStreamLog.open(settings, node_id="test-node", cache_bytes=cache_bytes)
            opened.append(log)
            return log

    yield opener
    for log in opened:
        await log.close()


def batch_of(count: int, ids: list[str] | None = None) -> AppendBatch:
    batch = AppendBatch()
    for i in range(count):
        env = factories.observation()
        if ids is not None:
            env.id = ids[i]
        batch.add(env.id, env.SerializeToString(), record_of(env))
    return batch


async def read_all(log: Log, from_offset: int) -> list[tuple[int, str]]:
    """(offset, id) of every entry from ``from_offset`` to the log's end."""
    out: list[tuple[int, str]] = []
    position = from_offset
    while position < log.next_offset:
        batches = await log.read(position, 100)
        assert batches, f"nothing read at {position} below next_offset {log.next_offset}"
        for batch in batches:
            out += entries_of(batch, position)
            position = batch.next_offset
    return out


def entries_of(batch: StoredBatch, from_offset: int) -> list[tuple[int, str]]:
    """Checks that a stored batch's encoded deliveries agree with its offsets and ids."""
    start = batch.index_at(from_offset)
    indexes = list(range(start, batch.count))
    deliveries = batch.deliveries(indexes)
    out = []
    for index, delivery in zip(indexes, deliveries, strict=True):
        assert delivery.offset == batch.first_offset + index
        assert delivery.envelope.id == batch.ids[index]
        assert delivery.appended_at.ToNanoseconds() == batch.appended_ns
        out.append((delivery.offset, delivery.envelope.id))
    return out


async def test_appends_keep_call_order_and_consecutive_offsets(open_log: LogOpener) -> None:
    log = await open_log()
    first = log.next_offset
    batches = [batch_of(n) for n in (3, 1, 5)]
    futures = [log.append_nowait(b) for b in batches]
    results = [await f for f in futures]
    offsets = [o for r in results for o in r.offsets]
    assert offsets == list(range(first, first + 9))
    assert log.next_offset == first + 9
    ids = [i for b in batches for i in b.ids]
    assert await read_all(log, first) == list(zip(offsets, ids, strict=True))


async def test_append_is_idempotent_by_id(open_log: LogOpener) -> None:
    log = await open_log()
    first = await log.append(batch_of(2))
    again = batch_of(3)
    old_id = (await read_all(log, log.oldest_offset))[1][1]
    again.ids[0] = old_id
    again.ids[2] = again.ids[1]  # the same id twice in one batch
    second = await log.append(again)
    assert second.offsets[0] == first.offsets[1]
    assert second.offsets[2] == second.offsets[1] == first.offsets[1] + 1
    assert second.duplicates == frozenset({0, 2})
    assert log.next_offset == first.offsets[1] + 2


async def test_the_log_survives_a_reopen(open_log: LogOpener) -> None:
    log = await open_log()
    batch = batch_of(4)
    result = await log.append(batch)
    await log.save_position("reader", result.offsets[2])
    before = await read_all(log, log.oldest_offset)
    await log.close()
    log = await open_log()
    assert log.next_offset == result.offsets[-1] + 1
    assert await read_all(log, log.oldest_offset) == before
    assert await log.load_position("reader") == result.offsets[2]
    repeat = await log.append(batch)
    assert repeat.offsets == result.offsets
    assert repeat.duplicates == frozenset(range(4))


async def test_read_from_any_offset(open_log: LogOpener) -> None:
    log = await open_log()
    for n in (2, 3, 4):
        await log.append(batch_of(n))
    everything = await read_all(log, log.oldest_offset)
    for k, (offset, _) in enumerate(everything):
        assert await read_all(log, offset) == everything[k:]
        one = await log.read(offset, 1)
        assert one
        assert one[0].first_offset <= offset < one[0].next_offset
    assert await log.read(log.next_offset, 10) == []
    assert await log.read(log.next_offset + 5, 10) == []


async def test_wait_beyond_returns_on_append_on_timeout_and_on_close(open_log: LogOpener) -> None:
    log = await open_log()
    head = log.next_offset
    waiter = asyncio.create_task(log.wait_beyond(head))
    await asyncio.sleep(0)
    assert not waiter.done()
    await log.append(batch_of(1))
    await asyncio.wait_for(waiter, 10)
    await log.wait_beyond(head - 1)  # already beyond: returns at once
    await log.wait_beyond(log.next_offset, timeout=0.05)  # nothing comes: returns after the timeout
    waiter = asyncio.create_task(log.wait_beyond(log.next_offset))
    await asyncio.sleep(0)
    await log.close()
    await asyncio.wait_for(waiter, 10)


async def test_find_returns_the_batch_and_index_of_each_id(open_log: LogOpener) -> None:
    log = await open_log()
    await log.append(batch_of(3))
    second = batch_of(2)
    result = await log.append(second)
    found = await log.find([second.ids[1], "no-such-id", second.ids[0]])
    assert set(found) == {second.ids[0], second.ids[1]}
    for envelope_id, offset in zip(second.ids, result.offsets, strict=True):
        stored, index = found[envelope_id]
        assert stored.ids[index] == envelope_id
        assert stored.first_offset + index == offset
        (delivery,) = stored.deliveries([index])
        assert delivery.offset == offset
        assert delivery.envelope.id == envelope_id


async def test_offset_at_finds_the_first_entry_appended_at_or_after_a_time(open_log: LogOpener) -> None:
    log = await open_log()
    before = time.time_ns()
    first = await log.append(batch_of(3))
    between = time.time_ns()  # the next append is stamped later: it starts after this
    second = await log.append(batch_of(2))
    assert await log.offset_at(before) == first.offsets[0]
    assert await log.offset_at(between + 1) == second.offsets[0]
    assert await log.offset_at(time.time_ns() + 10**12) == log.next_offset


async def test_positions_start_unknown_and_never_move_backwards(open_log: LogOpener) -> None:
    log = await open_log()
    await log.append(batch_of(5))
    head = log.next_offset
    assert await log.load_position("sub/a") is None
    assert await log.save_position("sub/a", head - 2) == head - 2
    assert await log.save_position("sub/a", head - 4) == head - 2
    assert await log.load_position("sub/a") == head - 2
    assert await log.save_position("sub/a", head + 100) == head  # never beyond the log's end
    assert await log.save_position("other: name ü", 1) == 1
    assert await log.load_position("sub/a") == head


async def test_stats_follow_appends(open_log: LogOpener) -> None:
    log = await open_log()
    empty = log.stats()
    assert empty.oldest_offset == empty.next_offset == log.next_offset == log.oldest_offset
    await log.append(batch_of(3))
    await log.append(batch_of(2))
    stats = log.stats()
    assert stats.next_offset == empty.next_offset + 5
    assert stats.oldest_offset == empty.oldest_offset
    assert stats.batches >= 1
    assert stats.bytes > 0


async def test_a_closed_log_refuses_work(open_log: LogOpener) -> None:
    log = await open_log()
    await log.append(batch_of(1))
    await log.close()
    assert log.closed
    await log.close()  # closing twice is harmless
    with pytest.raises(LogClosedError):
        log.append_nowait(batch_of(1))
    with pytest.raises(LogClosedError):
        await log.find(["x"])
    await log.wait_beyond(log.next_offset)  # returns at once on a closed log


async def test_a_new_embedded_log_takes_large_pages_and_an_older_one_keeps_its_own(tmp_path: Path) -> None:
    """Batches are stored as one blob each: a new log gets large pages (sqlite takes a page size only
    before a database is switched to WAL); a log made with smaller pages still opens and appends."""

    def page_size(path: Path) -> int:
        with contextlib.closing(sqlite3.connect(path)) as con:
            return int(con.execute("PRAGMA page_size").fetchone()[0])

    older = tmp_path / "older.sqlite"
    with contextlib.closing(sqlite3.connect(older)) as con:
        con.execute("PRAGMA page_size=4096")
        con.execute("PRAGMA journal_mode=WAL")
    for path in (tmp_path / "new.sqlite", older):
        log = await SqliteLog.open(path, node_id="test-node", fsync=False)
        try:
            await log.append(batch_of(3))
            assert len(await read_all(log, log.oldest_offset)) == 3
        finally:
            await log.close()
    assert page_size(tmp_path / "new.sqlite") == PAGE_SIZE
    assert page_size(older) == 4096
