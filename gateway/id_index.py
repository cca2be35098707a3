"""The id index of the embedded log: which offset holds an envelope id, for idempotent appends.

Why not one SQLite index entry per envelope written with each append: ids are random, so every
append would dirty a page of the index B-tree per envelope and the commit would write megabytes.
Instead the newest ids live in memory (``hot``), and a thread of the index writes them to disk in
large chunks, each a file of (hash, offset) pairs sorted by hash: a *run*. Runs are merged in the
background, a few of one size into one of the next size up (a log-structured merge), so each id is
rewritten a few times in all, sequentially, and a lookup searches a few dozen sorted files at most.
One B-tree of every id took a random insert per id, which cost more as it grew, and deleting the
ids of the log's removed offsets read all of it.

Each run covers a range of log offsets, written in its file name, and the runs on disk cover one
range without gaps. Its end is the index's watermark: at start everything after it is re-read from
the log, so losing the index's latest writes loses nothing. A run is written under a temporary name,
synced and then renamed, so a file under a run's name is whole. Retention deletes the runs wholly
below the log's oldest offset, and merges leave out the entries below it.

Keys are 64-bit hashes of the ids. A hash match is only a candidate: the caller compares the id
stored at the candidate offset, so a collision can never make a new envelope look like a duplicate.

Nearly every id a node takes in is new. A Bloom filter in memory (``_Filter``) holds every hash sent
to disk, so the runs are searched only for the few hashes the filter cannot rule out. It is filled
from the runs in the background at start; until then every hash is searched for.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import queue
import re
import struct
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import structlog

from gateway.errors import LogInUseError

log = structlog.get_logger("yiwang.log")

#: Runs are merged ``MERGE_FANOUT`` at a time. A run's level is its size class: level n holds from
#: ``RUN_LEVEL_BASE * MERGE_FANOUT ** n`` ids (level 0 anything smaller) to ``MERGE_FANOUT`` times as
#: many. Runs of ``FINAL_LEVEL`` (4 Mi ids, 64 MiB, and more) are not merged again, so a merge holds
#: at most 16 Mi ids in memory (256 MiB, about twice over while it sorts them).
MERGE_FANOUT = 4
RUN_LEVEL_BASE = 1 << 10
FINAL_LEVEL = 5

RUN_SUFFIX = ".run"
_RUN_NAME = re.compile(r"(\d{20})-(\d{20})\.run")
# A run file: this header (magic, first offset covered, the offset after the last, number of ids),
# then the hashes in ascending order, then the offset of each; little-endian 64-bit integers.
_HEADER = struct.Struct("<8sqqq")
_MAGIC = b"YWIDRUN1"
_I8 = np.dtype("<i8")

#: The Bloom filter's size: bits per id on disk at start (twice its ids, for the ids to come),
#: and the smallest size (16 MiB, 8 million ids at 16 bits each).
FILTER_BITS_PER_ID = 16
FILTER_MIN_BITS = 1 << 27
FILTER_MAX_BITS = 1 << 32  # the word is chosen by the hash's low 26 bits at most


class _Filter:
    """A blocked Bloom filter: three bits of one 64-bit word per hash, so that adding or testing a
    hash touches one word. ``may_hold`` is false only for hashes never added.

    Set bits are never cleared (ids that retention removed stay in it), so it fills up as the node
    runs; past ``capacity`` (8 bits per hash added, some 7% false positives) it is no use any more
    and the runs are searched for every hash, until the next start sizes a new one.
    """

    def __init__(self, bits: int) -> None:
        self.words = np.zeros(bits // 64, dtype=np.uint64)
        self.word_mask = np.uint64(len(self.words) - 1)
        self.capacity = bits // 8
        self.count = 0

    def _words_and_bits(self, hashes: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint64]]:
        u = hashes.view(np.uint64)
        six, one = np.uint64(63), np.uint64(1)
        bits = (
            (one << ((u >> np.uint64(32)) & six))
            | (one << ((u >> np.uint64(38)) & six))
            | (one << ((u >> np.uint64(44)) & six))
        )
        return (u & self.word_mask).astype(np.intp), bits  # intp: ufunc.at is several times faster with it

    def add(self, hashes: npt.NDArray[np.int64]) -> None:
        """Adds hashes; callers hold ``IdIndex._filter_lock`` (two adds must not interleave)."""
        words, bits = self._words_and_bits(hashes)
        np.bitwise_or.at(self.words, words, bits)
        self.count += len(hashes)

    def may_hold(self, hashes: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        words, bits = self._words_and_bits(hashes)
        held: npt.NDArray[np.bool_] = self.words[words] & bits == bits
        return held


def filter_bits(rows: int) -> int:
    """The filter's size for ``rows`` ids on disk: a power of two, within the bounds above."""
    wanted = max(FILTER_MIN_BITS, 2 * rows * FILTER_BITS_PER_ID)
    return min(FILTER_MAX_BITS, 1 << (wanted - 1).bit_length())


def id_hashes(ids: Iterable[str]) -> list[int]:
    """A signed 64-bit hash of each id, the key of the index (in one pass: this runs for every
    envelope a node takes in)."""
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(i.encode(), digest_size=8).digest() for i in ids])
    hashes: list[int] = np.frombuffer(digests, dtype="<i8").tolist()  # one call for all: no int.from_bytes each
    return hashes


def id_hash(envelope_id: str) -> int:
    """``id_hashes`` of one id."""
    (hashed,) = id_hashes((envelope_id,))
    return hashed


class _BadRunError(Exception):
    """A file under a run's name that is not a whole run."""


class _Run:
    """One run file, mapped into memory (the page cache keeps what lookups touch)."""

    __slots__ = ("count", "hashes", "lo", "offsets", "path", "upto")

    def __init__(
        self, path: Path, lo: int, upto: int, hashes: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64]
    ) -> None:
        self.path = path
        self.lo = lo  # the run holds the ids of offsets lo to upto - 1 (those retention left)
        self.upto = upto
        self.count = len(hashes)
        self.hashes = hashes
        self.offsets = offsets

    @staticmethod
    def file_name(lo: int, upto: int) -> str:
        return f"{lo:020d}-{upto:020d}{RUN_SUFFIX}"

    @classmethod
    def load(cls, path: Path) -> _Run:
        named = _RUN_NAME.fullmatch(path.name)
        if named is None:
            raise _BadRunError("not a run's name")
        lo, upto = int(named[1]), int(named[2])
        with path.open("rb") as f:
            head = f.read(_HEADER.size)
            size = os.fstat(f.fileno()).st_size
        if len(head) < _HEADER.size:
            raise _BadRunError(f"{size} bytes, fewer than a header")
        magic, head_lo, head_upto, count = _HEADER.unpack(head)
        if magic != _MAGIC:
            raise _BadRunError(f"begins with {magic!r}, not {_MAGIC!r}")
        if (head_lo, head_upto) != (lo, upto):
            raise _BadRunError(f"its header says offsets {head_lo} to {head_upto}")
        if count < 0 or size != _HEADER.size + 16 * count:
            raise _BadRunError(f"{size} bytes for {count} ids")
        if count == 0:
            empty = np.empty(0, dtype=np.int64)
            return cls(path, lo, upto, empty, empty)
        pairs = np.memmap(path, dtype=_I8, mode="r", offset=_HEADER.size, shape=(2 * count,))
        return cls(path, lo, upto, pairs[:count], pairs[count:])

    def find(self, asked: npt.NDArray[np.int64]) -> Iterator[tuple[int, list[int]]]:
        """(index in ``asked``, offsets) of each asked hash this run holds."""
        if not self.count:
            return
        first = np.searchsorted(self.hashes, asked, "left")
        after = np.searchsorted(self.hashes, asked, "right")
        for k in np.flatnonzero(after > first).tolist():
            yield k, self.offsets[first[k] : after[k]].tolist()


def run_level(count: int) -> int:
    """The size class of a run of ``count`` ids (see ``MERGE_FANOUT``)."""
    level, bound = 0, RUN_LEVEL_BASE * MERGE_FANOUT
    while count >= bound:
        level, bound = level + 1, bound * MERGE_FANOUT
    return level


class _Chunk:
    """Ids handed to the indexer thread; searched in memory until their run is on disk."""

    __slots__ = ("done", "entries", "hashes", "offsets", "upto")

    def __init__(
        self, entries: dict[int, int], hashes: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64], upto: int
    ) -> None:
        self.entries = entries  # hash -> offset, for lookups meanwhile (colliding ids are in ``collided``)
        self.hashes = hashes  # every (hash, offset) of the chunk, the colliding ids' included
        self.offsets = offsets
        self.upto = upto
        self.done = False


class IdIndex:
    """Used by the log's writer, except ``candidates`` (any thread) and the indexer thread it owns,
    which alone writes and deletes runs."""

    def __init__(self, path: Path, *, chunk_entries: int = 250_000, flush_interval_s: float = 5.0) -> None:
        self.path = path  # the directory of the run files
        self.chunk_entries = chunk_entries
        self.flush_interval_s = flush_interval_s
        self.hot: dict[int, int] = {}
        self.collided: dict[str, int] = {}  # ids whose hash was already taken in ``hot`` by another id
        self._hot_extra: list[tuple[int, int]] = []  # their (hash, offset), written with the next chunk
        self._pending: deque[_Chunk] = deque()
        # The runs on disk, lowest offsets first. The indexer thread replaces the tuple, whole.
        self._runs: tuple[_Run, ...] = ()
        self._covered = 1  # where the next chunk's run begins (the indexer's)
        self._oldest = 1  # the log's oldest offset, as forgets said (the writer's)
        self._dropped_below = 1  # the same, as far as the indexer has dropped runs (the indexer's)
        # Chunks to write, offsets to forget below, events to set once done; None to stop.
        self._jobs: queue.SimpleQueue[_Chunk | int | threading.Event | None] = queue.SimpleQueue()
        self._indexer: threading.Thread | None = None
        self._starting = threading.Lock()  # the indexer starts once, from the writer or from ``start``
        self.failure: BaseException | None = None
        # The filter of the hashes sent to disk; None until it is loaded (then every hash is searched
        # for). Chunks sent meanwhile wait in _unfiltered for the loader to add them.
        self._filter: _Filter | None = None
        self._filter_lock = threading.Lock()
        self._unfiltered: list[npt.NDArray[np.int64]] = []
        self._filter_full_logged = False
        self._loader: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock_fd: int | None = None

    def open(self) -> int:
        """Opens (or creates) the index; returns its watermark: ids from there on must be re-added."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self._unlock)
            self._remove_sqlite_index()
            self._runs = tuple(self._load_runs())
            on_failure.pop_all()  # opened: the lock stays until close
        watermark = self._covered = self._runs[-1].upto if self._runs else 1
        self._loader = threading.Thread(
            target=self._load_filter, args=(self._runs,), name="yiwang-id-filter", daemon=True
        )
        self._loader.start()
        return watermark

    def _lock(self) -> None:
        """Keeps out other processes: another's open would take this one's partly written runs for
        unusable ones and delete them."""
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LogInUseError(
                f"the id index {self.path} is in use by another process: is a node running on this data directory?"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # and with it the lock
            self._lock_fd = None

    def _remove_sqlite_index(self) -> None:
        """Removes the id table of earlier versions, an SQLite file beside the directory (the runs
        are built from the log instead)."""
        for suffix in (".sqlite", ".sqlite-wal", ".sqlite-shm"):
            old = self.path.with_name(self.path.name + suffix)
            if old.exists():
                old.unlink()
                log.info("id_index_sqlite_removed", path=str(old))

    def _load_runs(self) -> list[_Run]:
        """The runs on disk, if they cover one range of offsets. If they do not, none: the log's ids
        are then indexed again from the first, as the index must not miss an id the log holds."""
        found: list[_Run] = []
        unusable: list[tuple[Path, str]] = []
        for path in sorted(self.path.iterdir()):
            if path.name.endswith(RUN_SUFFIX + ".tmp"):
                path.unlink()  # its writing was cut short
            elif path.name.endswith(RUN_SUFFIX):
                try:
                    found.append(_Run.load(path))
                except _BadRunError as exc:
                    unusable.append((path, str(exc)))
        found.sort(key=lambda run: (run.lo, -run.upto))
        chain: list[_Run] = []
        for run in found:
            if chain and run.upto <= chain[-1].upto:
                run.path.unlink()  # merged into a wider run, which was written before this was deleted
            elif chain and run.lo != chain[-1].upto:
                unusable.append((run.path, f"offsets {chain[-1].upto} to {run.lo} are in no run"))
                break
            else:
                chain.append(run)
        if not unusable:
            return chain
        for path, reason in unusable:
            log.error("id_index_run_unusable", path=str(path), reason=reason, then="indexing the log again")
        for path in [run.path for run in found] + [path for path, _ in unusable]:
            path.unlink(missing_ok=True)
        return []

    def _load_filter(self, runs: tuple[_Run, ...]) -> None:
        """Fills the filter with the hashes of the runs (in the background: many take seconds)."""
        loaded = _Filter(filter_bits(sum(run.count for run in runs)))
        page = 1 << 20
        for run in runs:
            for at in range(0, run.count, page):
                if self._closing.is_set():
                    return
                loaded.add(np.asarray(run.hashes[at : at + page]))
        with self._filter_lock:
            for hashes in self._unfiltered:
                loaded.add(hashes)
            self._unfiltered = []
            self._filter = loaded
        log.info("id_filter_loaded", path=str(self.path), ids=loaded.count, bits=len(loaded.words) * 64)

    def start(self) -> None:
        """Starts the indexer thread now (a node does before it takes traffic); otherwise it starts
        with the first chunk, so a log that never takes an envelope never starts one."""
        with self._starting:
            if self._indexer is None:
                self._indexer = threading.Thread(target=self._index_loop, name="yiwang-id-indexer", daemon=True)
                self._indexer.start()

    def close(self) -> None:
        """Writes the chunks handed over already (merging waits for the next start), then stops."""
        self._closing.set()
        if self._loader is not None:
            self._loader.join()
            self._loader = None
        if self._indexer is not None:
            self._jobs.put(None)
            self._indexer.join()
            self._indexer = None
        self._unlock()

    def settle(self, timeout: float = 60.0) -> bool:
        """Waits until the indexer has written, dropped and merged all it was handed (for tests and
        tools); false if it has not within ``timeout`` or has stopped."""
        indexer = self._indexer
        if indexer is None or self.failure is not None:
            return self.failure is None
        done = threading.Event()
        self._jobs.put(done)
        deadline = time.monotonic() + timeout
        while not done.wait(0.1):  # in slices: an indexer that stopped on an error sets nothing
            if not indexer.is_alive() or time.monotonic() > deadline:
                return False
        return self.failure is None

    # -- lookups --------------------------------------------------------------------------------

    def candidates(self, hashes: list[int]) -> dict[int, list[int]]:
        """Every offset recorded under each of the given hashes (candidates, to be verified)."""
        found: dict[int, list[int]] = {}
        for entries in [self.hot, *(chunk.entries for chunk in list(self._pending))]:
            for h in entries.keys() & hashes:  # the set operation runs in C: nearly every hash is new
                found.setdefault(h, []).append(entries[h])
        runs = self._runs  # read after the chunks: a chunk is let go of only once its run is here
        asked = self._not_ruled_out(hashes)
        if not asked or not runs:
            return found
        queried = np.array(asked, dtype=np.int64)
        for run in runs:
            for k, offsets in run.find(queried):
                found.setdefault(asked[k], []).extend(offsets)
        return found

    def _not_ruled_out(self, hashes: list[int]) -> list[int]:
        """The hashes the runs may hold, as far as the filter knows (all of them without one)."""
        loaded = self._filter
        if loaded is None or not hashes:
            return hashes
        if loaded.count > loaded.capacity:
            if not self._filter_full_logged:
                self._filter_full_logged = True
                log.warning("id_filter_full", path=str(self.path), ids=loaded.count, capacity=loaded.capacity)
            return hashes
        queried = np.array(hashes, dtype=np.int64)
        held = loaded.may_hold(queried)
        return queried[held].tolist() if held.any() else []

    def candidates_for_id(self, envelope_id: str) -> list[int]:
        h = id_hash(envelope_id)
        found = self.candidates([h])
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
        hashes = array("q", self.hot.keys())
        offsets = array("q", self.hot.values())
        for h, off in self._hot_extra:
            hashes.append(h)
            offsets.append(off)
        chunk = _Chunk(self.hot, np.frombuffer(hashes, np.int64), np.frombuffer(offsets, np.int64), next_offset)
        self.hot = {}
        self._hot_extra = []
        self._pending.append(chunk)
        self._filter_add(chunk.hashes)
        self.start()
        self._jobs.put(chunk)

    def _filter_add(self, hashes: npt.NDArray[np.int64]) -> None:
        """Records hashes on their way to disk (before they leave ``_pending``)."""
        with self._filter_lock:
            if self._filter is not None:
                self._filter.add(hashes)
            else:
                self._unfiltered.append(hashes)

    def forget_before(self, oldest_offset: int) -> None:
        """Drops the index entries of offsets that retention removed from the log (in the background)."""
        if oldest_offset > self._oldest and self.failure is None:
            self._oldest = oldest_offset
            self.start()
            self._jobs.put(oldest_offset)
        if self.collided:
            self.collided = {k: v for k, v in self.collided.items() if v >= oldest_offset}

    # -- the indexer thread ---------------------------------------------------------------------

    def _index_loop(self) -> None:
        """Writes each chunk as a run, deletes runs below the log's oldest offset, merges runs.

        If it stops on an error, the ids stay in memory (and in the log): appends stay correct."""
        stopped = False
        try:
            while (job := self._jobs.get()) is not None:
                if isinstance(job, _Chunk):
                    self._write_chunk(job)
                elif isinstance(job, int):
                    self._drop_below(job)
                if not self._closing.is_set():
                    self._merge_runs()
                if isinstance(job, threading.Event):
                    job.set()
            stopped = True
        except OSError as exc:
            self.failure = exc
            log.error("id_index_failed", path=str(self.path), error=f"{type(exc).__name__}: {exc}")
        finally:
            if not stopped and self.failure is None:  # not an OSError: the thread's traceback is on stderr
                self.failure = RuntimeError("the id indexer stopped on an error")
                log.error("id_index_failed", path=str(self.path), error="the id indexer stopped on an error")

    def _write_chunk(self, chunk: _Chunk) -> None:
        order = np.argsort(chunk.hashes, kind="stable")
        run = self._write_run(self._covered, chunk.upto, chunk.hashes[order], chunk.offsets[order])
        self._covered = chunk.upto
        self._runs = (*self._runs, run)
        chunk.done = True  # after the run is in ``_runs``: a lookup finds the ids in one or the other

    def _write_run(self, lo: int, upto: int, hashes: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64]) -> _Run:
        path = self.path / _Run.file_name(lo, upto)
        partial = path.with_name(path.name + ".tmp")
        with partial.open("wb") as f:
            f.write(_HEADER.pack(_MAGIC, lo, upto, len(hashes)))
            f.write(np.ascontiguousarray(hashes, dtype=_I8).data)
            f.write(np.ascontiguousarray(offsets, dtype=_I8).data)
            f.flush()
            os.fsync(f.fileno())
        partial.replace(path)
        self._sync_directory()
        return _Run.load(path)

    def _sync_directory(self) -> None:
        """Makes the renames and deletions so far durable."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _drop_below(self, oldest_offset: int) -> None:
        """Deletes the runs wholly below the log's oldest offset (merges leave out the rest)."""
        self._dropped_below = oldest_offset
        gone = [run for run in self._runs if run.upto <= oldest_offset]
        if gone:
            self._runs = self._runs[len(gone) :]
            for run in gone:
                run.path.unlink()

    def _merge_runs(self) -> None:
        """Merges the newest ``MERGE_FANOUT`` runs of one level, while there are as many."""
        while (group := self._next_merge()) is not None:
            hashes = np.concatenate([run.hashes for run in group])
            offsets = np.concatenate([run.offsets for run in group])
            if group[0].lo < self._dropped_below:
                kept = offsets >= self._dropped_below
                hashes, offsets = hashes[kept], offsets[kept]
            order = np.argsort(hashes, kind="stable")  # timsort: it merges the sorted runs it finds
            merged = self._write_run(group[0].lo, group[-1].upto, hashes[order], offsets[order])
            runs = self._runs
            at = runs.index(group[0])
            self._runs = (*runs[:at], merged, *runs[at + len(group) :])
            for run in group:
                run.path.unlink()

    def _next_merge(self) -> list[_Run] | None:
        """The newest ``MERGE_FANOUT`` runs of the newest run's level, with the smaller runs just
        before them (left behind when a full chunk followed a small one); None if there are fewer."""
        runs = self._runs
        level = run_level(runs[-1].count) if runs else FINAL_LEVEL
        if level >= FINAL_LEVEL:
            return None
        at = len(runs)
        while at > 0 and len(runs) - at < MERGE_FANOUT and run_level(runs[at - 1].count) == level:
            at -= 1
        if len(runs) - at < MERGE_FANOUT:
            return None
        while at > 0 and run_level(runs[at - 1].count) < level:
            at -= 1
        return list(runs[at:])
