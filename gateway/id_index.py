"""The id index of the embedded log: which offset holds an envelope id, for idempotent appends.

Why not one SQLite index entry per envelope written with each append: ids are random, so every
append would dirty a page of the index B-tree per envelope and the commit would write megabytes.
Instead the newest ids live in memory (``hot``), and a separate process moves them into an on-disk
table in large sorted chunks, off the append path and off the node's interpreter lock. The on-disk
table is an index only: it records the log offset up to which it is complete (its watermark), and
at start everything after the
watermark is re-read from the log, so losing the index's latest writes loses nothing.

Keys are 64-bit hashes of the ids. A hash match is only a candidate: the caller compares the id
stored at the candidate offset, so a collision can never make a new envelope look like a duplicate.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import multiprocessing
import os
import queue
import signal
import sqlite3
import sys
import threading
from array import array
from collections import deque
from collections.abc import Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger("yiwang.log")
_PR_SET_PDEATHSIG = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ids (h INTEGER NOT NULL, off INTEGER NOT NULL, PRIMARY KEY (h, off)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermark (one INTEGER PRIMARY KEY CHECK (one = 1), next_offset INTEGER NOT NULL);
"""


def id_hashes(ids: Iterable[str]) -> list[int]:
    """A signed 64-bit hash of each id, the key of the index (in one pass: this runs for every
    envelope a node takes in)."""
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    return [from_bytes(blake2b(i.encode(), digest_size=8).digest(), "little", signed=True) for i in ids]


def id_hash(envelope_id: str) -> int:
    """``id_hashes`` of one id."""
    (hashed,) = id_hashes((envelope_id,))
    return hashed


class _Chunk:
    """Ids handed to the indexer thread; searched by the writer until the indexer has committed them."""

    __slots__ = ("done", "entries", "extra", "upto")

    def __init__(self, entries: dict[int, int], extra: list[tuple[int, int]], upto: int) -> None:
        self.entries = entries
        self.extra = extra  # (hash, offset) of colliding ids, which have no slot in ``entries``
        self.upto = upto
        self.done = False


class IdIndex:
    """Used by the log's writer thread only, except for the indexer thread it owns."""

    def __init__(self, path: Path, *, chunk_entries: int = 250_000, flush_interval_s: float = 5.0) -> None:
        self.path = path
        self.chunk_entries = chunk_entries
        self.flush_interval_s = flush_interval_s
        self.hot: dict[int, int] = {}
        self.collided: dict[str, int] = {}  # ids whose hash was already taken in ``hot`` by another id
        self._hot_extra: list[tuple[int, int]] = []  # their (hash, offset), written with the next chunk
        self._pending: deque[_Chunk] = deque()
        self._probe: sqlite3.Connection | None = None
        self._indexer: BaseProcess | None = None
        self._conn: Connection | None = None
        # Chunks are several megabytes: a thread of their own sends them, so that the log's writer,
        # which would wait on the pipe for each 64 KiB piece, goes on committing meanwhile.
        self._outbox: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._starting = threading.Lock()  # the indexer starts once, from the writer or from ``start``
        self.watermark = 1
        self.failure: BaseException | None = None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the log: no fsync per chunk needed
        con.execute("PRAGMA cache_size=-65536")
        return con

    def open(self) -> int:
        """Opens (or creates) the index; returns its watermark: ids from there on must be re-added."""
        con = self._connect()
        try:
            con.executescript(_SCHEMA)
            row = con.execute("SELECT next_offset FROM watermark").fetchone()
        finally:
            con.close()
        self.watermark = row[0] if row else 1
        self._probe = self._connect()
        self._probe.execute("PRAGMA query_only=ON")
        return self.watermark

    def start(self) -> None:
        """Starts the indexer process now (a node does before it takes traffic); otherwise it starts
        with the first chunk, so a log that never takes an envelope never starts one."""
        with self._starting:
            if self._conn is None and self.failure is None:
                self._start_indexer()

    def _start_indexer(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        here, there = ctx.Pipe()
        self._indexer = ctx.Process(
            target=run_indexer, args=(str(self.path), there, os.getpid()), name="yiwang-id-indexer", daemon=True
        )
        self._indexer.start()
        there.close()
        self._conn = here
        self._sender = threading.Thread(target=self._send_loop, args=(here,), name="yiwang-id-sender", daemon=True)
        self._sender.start()

    def _send_loop(self, conn: Connection) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                conn.send(message)
            except OSError as exc:
                self.failure = exc
                log.error("id_indexer_gone", path=str(self.path), error=repr(exc))
                return

    def close(self) -> None:
        if self._indexer is not None and self._conn is not None:
            self._outbox.put(None)
            if self._sender is not None:
                self._sender.join()
                self._sender = None
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._indexer.join(timeout=60)
            if self._indexer.is_alive():
                log.error("id_indexer_stuck", path=str(self.path))
                self._indexer.kill()
                self._indexer.join()
            self._conn.close()
            self._indexer = self._conn = None
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    # -- lookups --------------------------------------------------------------------------------

    def connect_probe(self) -> sqlite3.Connection:
        """A read-only connection for ``candidates`` in a thread other than the writer's."""
        con = self._connect()
        con.execute("PRAGMA query_only=ON")
        return con

    def candidates(
        self, hashes: list[int], hashes_json: str, con: sqlite3.Connection | None = None
    ) -> dict[int, list[int]]:
        """Every offset recorded under each of the given hashes (candidates, to be verified).

        The writer thread uses the index's own probe connection; other threads pass their own.
        """
        found: dict[int, list[int]] = {}
        hot = self.hot
        for h in hashes:
            off = hot.get(h)
            if off is not None:
                found.setdefault(h, []).append(off)
        for chunk in list(self._pending):
            entries = chunk.entries
            for h in hashes:
                off = entries.get(h)
                if off is not None:
                    found.setdefault(h, []).append(off)
        probe = con if con is not None else self._probe
        assert probe is not None
        for h, off in probe.execute(
            "SELECT h, off FROM ids WHERE h IN (SELECT value FROM json_each(?))", (hashes_json,)
        ):
            found.setdefault(h, []).append(off)
        return found

    def candidates_for_id(self, envelope_id: str, con: sqlite3.Connection) -> list[int]:
        h = id_hash(envelope_id)
        found = self.candidates([h], json.dumps([h]), con)
        out = [off for offs in found.values() for off in offs]
        collided = self.collided.get(envelope_id)
        if collided is not None:
            out.append(collided)
        return out

    # -- updates --------------------------------------------------------------------------------

    def add(self, pairs: Iterable[tuple[int, int]], collided: dict[str, int] | None = None) -> None:
        """Records committed (hash, offset) pairs; ``collided`` holds ids whose hash was taken."""
        self.hot.update(pairs)
        if collided:
            self.collided.update(collided)
            self._hot_extra += [(id_hash(envelope_id), offset) for envelope_id, offset in collided.items()]

    def _collect(self) -> None:
        """Takes the indexer's reports: chunks it has committed, or that it has failed."""
        conn = self._conn
        while conn is not None and conn.poll():
            try:
                kind, value = conn.recv()
            except (EOFError, OSError) as exc:
                self.failure = exc
                log.error("id_indexer_gone", path=str(self.path), error=repr(exc))
                self._conn = None
                return
            if kind == "done":
                for chunk in self._pending:
                    if chunk.upto <= value:
                        chunk.done = True
            else:
                self.failure = RuntimeError(value)
                log.error("id_index_failed", path=str(self.path), error=value)
        while self._pending and self._pending[0].done:
            self._pending.popleft()

    def _send(self, message: tuple[Any, ...]) -> None:
        if self.failure is not None:
            return
        self.start()
        self._outbox.put(message)

    def maybe_flush(self, next_offset: int, *, force: bool = False) -> None:
        """Hands the hot ids to the indexer when there are enough of them (or when forced)."""
        self._collect()
        if self.failure is not None:
            return  # the indexer stopped; ids stay in memory (and the log still has them)
        if not (self.hot or self._hot_extra) or (len(self.hot) < self.chunk_entries and not force):
            return
        chunk = _Chunk(self.hot, self._hot_extra, next_offset)
        self.hot = {}
        self._hot_extra = []
        self._pending.append(chunk)
        hashes = array("q", chunk.entries.keys())
        offsets = array("q", chunk.entries.values())
        for h, off in chunk.extra:
            hashes.append(h)
            offsets.append(off)
        self._send(("chunk", next_offset, hashes.tobytes(), offsets.tobytes()))

    def forget_before(self, oldest_offset: int) -> None:
        """Drops index entries of offsets that retention removed from the log (in the background)."""
        if self._conn is not None:
            self._send(("forget", oldest_offset))
        if self.collided:
            self.collided = {k: v for k, v in self.collided.items() if v >= oldest_offset}


def run_indexer(path: str, conn: Connection, parent: int) -> None:
    """The indexer process: writes each chunk of (hash, offset) pairs in one sorted transaction."""
    die_with_parent(parent)
    con = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("PRAGMA cache_size=-65536")
    try:
        while (job := conn.recv()) is not None:
            if job[0] == "forget":
                con.execute("DELETE FROM ids WHERE off < ?", (job[1],))
                continue
            _, upto, hashes_raw, offsets_raw = job
            hashes = np.frombuffer(hashes_raw, dtype=np.int64)
            offsets = np.frombuffer(offsets_raw, dtype=np.int64)
            order = np.lexsort((offsets, hashes))  # by hash, then offset: at C speed, 4x faster than sorted()
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                "INSERT OR IGNORE INTO ids (h, off) VALUES (?, ?)",
                zip(hashes[order].tolist(), offsets[order].tolist(), strict=True),
            )
            con.execute("INSERT OR REPLACE INTO watermark VALUES (1, ?)", (upto,))
            con.execute("COMMIT")
            conn.send(("done", upto))
    except sqlite3.Error as exc:
        # The ids stay in memory and in the log, so appends stay correct; the node reports it.
        with contextlib.suppress(OSError):
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
    except (EOFError, OSError):
        pass  # the node went away
    finally:
        con.close()


def die_with_parent(parent: int) -> None:
    """Ties a helper process's life to the node's.

    Linux ends it when the node dies, even by SIGKILL, so no orphan is left behind; and it ignores
    Ctrl-C, which the terminal sends to the whole process group: the node decides when it stops.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the node died before the request above took effect
        os._exit(1)
