"""The id index of the embedded log: which offset holds an envelope id, for idempotent appends.

Why not one SQLite index entry per envelope written with each append: ids are random, so every
append would dirty a page of the index B-tree per envelope and the commit would write megabytes.
Instead the newest ids live in memory (``hot``), and a separate thread moves them into an on-disk
table in large sorted chunks, off the append path. The on-disk table is an index only: it records
the log offset up to which it is complete (its watermark), and at start everything after the
watermark is re-read from the log, so losing the index's latest writes loses nothing.

Keys are 64-bit hashes of the ids. A hash match is only a candidate: the caller compares the id
stored at the candidate offset, so a collision can never make a new envelope look like a duplicate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import structlog

log = structlog.get_logger("yiwang.log")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ids (h INTEGER NOT NULL, off INTEGER NOT NULL, PRIMARY KEY (h, off)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermark (one INTEGER PRIMARY KEY CHECK (one = 1), next_offset INTEGER NOT NULL);
"""


def id_hash(envelope_id: str) -> int:
    """A signed 64-bit hash of an id, the key of the index."""
    return int.from_bytes(hashlib.blake2b(envelope_id.encode(), digest_size=8).digest(), "little", signed=True)


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
        self._jobs: queue.Queue[_Chunk | int | None] = queue.Queue()
        self._probe: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
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
        con.executescript(_SCHEMA)
        row = con.execute("SELECT next_offset FROM watermark").fetchone()
        self.watermark = row[0] if row else 1
        self._probe = self._connect()
        self._probe.execute("PRAGMA query_only=ON")
        self._thread = threading.Thread(target=self._run, args=(con,), name="yiwang-id-indexer", daemon=True)
        self._thread.start()
        return self.watermark

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None
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

    def maybe_flush(self, next_offset: int, *, force: bool = False) -> None:
        """Hands the hot ids to the indexer when there are enough of them (or when forced)."""
        while self._pending and self._pending[0].done:
            self._pending.popleft()
        if self.failure is not None:
            return  # the indexer stopped; ids stay in memory (and the log still has them)
        if not (self.hot or self._hot_extra) or (len(self.hot) < self.chunk_entries and not force):
            return
        chunk = _Chunk(self.hot, self._hot_extra, next_offset)
        self.hot = {}
        self._hot_extra = []
        self._pending.append(chunk)
        self._jobs.put(chunk)

    def forget_before(self, oldest_offset: int) -> None:
        """Drops index entries of offsets that retention removed from the log (in the background)."""
        self._jobs.put(oldest_offset)
        if self.collided:
            self.collided = {k: v for k, v in self.collided.items() if v >= oldest_offset}

    # -- the indexer thread ---------------------------------------------------------------------

    def _run(self, con: sqlite3.Connection) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                if isinstance(job, int):
                    con.execute("DELETE FROM ids WHERE off < ?", (job,))
                    continue
                pairs = sorted([*job.entries.items(), *job.extra])
                con.execute("BEGIN IMMEDIATE")
                con.execute(
                    "INSERT OR IGNORE INTO ids (h, off) SELECT value ->> 0, value ->> 1 FROM json_each(?)",
                    (json.dumps(pairs),),
                )
                con.execute("INSERT OR REPLACE INTO watermark VALUES (1, ?)", (job.upto,))
                con.execute("COMMIT")
                job.done = True
        except sqlite3.Error as exc:
            # The ids stay in memory and in the log, so appends stay correct; the node reports it.
            self.failure = exc
            log.error("id_index_failed", path=str(self.path), error=str(exc))
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        finally:
            con.close()
