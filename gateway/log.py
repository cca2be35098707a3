"""The durable log: the node's single source of truth, behind a small interface.

Every delivery, replay and query reads from the log, and nothing is delivered that was not durably
appended first. The embedded backend is ``gateway.sqlite_log.SqliteLog``; a replicated backend can
take its place by implementing ``Log``.
"""

from __future__ import annotations

import abc
import bisect
import sys
from array import array
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

import numpy as np
from yiwang.v1 import gateway_pb2 as gw

from gateway.selection import RECORD_FIELDS
from gateway.signing import standalone_entries


@dataclass(slots=True)
class AppendBatch:
    """Validated envelopes to append, as parallel lists: ids, encodings as received, selection records.

    Parallel lists rather than an object per envelope: this is the hot path, and per-envelope objects
    cost more than the rest of the append.
    """

    ids: list[str] = field(default_factory=list)
    envelopes: list[bytes] = field(default_factory=list)
    records: list[bytes] = field(default_factory=list)
    hashes: list[int] | None = None  # the ids' index hashes, when the caller computed them already
    # The shared signatures of the batches envelopes refer to (encoded DeliveryBatch.batch_signatures
    # fields, see gateway.signing.SharedSignatures), kept with the envelopes.
    signatures: bytes = b""

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, envelope_id: str, envelope: bytes, record: bytes) -> None:
        self.ids.append(envelope_id)
        self.envelopes.append(envelope)
        self.records.append(record)
        self.hashes = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where each envelope of a batch is in the log; ``duplicates`` holds the indexes of those that were
    there before this append (their offset is where they were stored then)."""

    offsets: list[int]
    duplicates: frozenset[int]


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """Consecutive log entries, each kept as an encoded ``Delivery`` with its selection record.

    Envelopes of a batch signed with a shared signature are kept as published, with a reference to
    it; ``signatures`` holds those signatures. ``entries`` gives the entries as kept (for readers of
    the shared form and the node's own use); ``standalone_entries`` gives each envelope its full
    signature, for every reader outside the node that did not ask for the shared form.
    """

    first_offset: int
    appended_ns: int
    records: bytes
    ends: array[int]
    data: bytes
    ids: tuple[str, ...] = field(default=())
    signatures: bytes = b""

    @property
    def count(self) -> int:
        return len(self.ends)

    @property
    def next_offset(self) -> int:
        return self.first_offset + len(self.ends)

    @property
    def size(self) -> int:
        return len(self.data) + len(self.records) + 8 * len(self.ends) + len(self.signatures)

    def span(self, index: int) -> tuple[int, int]:
        return (self.ends[index - 1] if index else 0), self.ends[index]

    def entry(self, index: int) -> bytes:
        start, end = self.span(index)
        return self.data[start:end]

    def standalone_entry(self, index: int) -> bytes:
        """``entry`` with its envelope's full signature."""
        entry = self.entry(index)
        return standalone_entries(entry, self.signatures) if self.signatures else entry

    def standalone_entries(self, start: int, stop: int, indexes: list[int] | None = None) -> bytes:
        """``entries`` with each envelope's full signature."""
        entries = self.entries(start, stop, indexes)
        return standalone_entries(entries, self.signatures) if self.signatures else entries

    def index_at(self, offset: int) -> int:
        """The index of the entry at log offset ``offset``; 0 when the batch begins after it."""
        return max(offset, self.first_offset) - self.first_offset

    def of_kind(self, kind: int, start: int = 0, *, without: int = 0) -> list[int]:
        """The indexes, from ``start`` on, of the entries of one kind (a record's first byte is its
        kind), leaving out those with any of the flags ``without``. Decided on the records as an
        array, not entry by entry: followers of the log call this for every batch appended."""
        table = np.frombuffer(self.records, dtype=RECORD_FIELDS)[start:]
        chosen = table["kind"] == kind
        if without:
            chosen &= (table["flags"] & without) == 0
        return (np.flatnonzero(chosen) + start).tolist()

    def deliveries(self, indexes: list[int]) -> Sequence[gw.Delivery]:
        """The entries at ``indexes``, decoded."""
        return gw.DeliveryBatch.FromString(self.entries(0, self.count, indexes)).deliveries

    def entries(self, start: int, stop: int, indexes: list[int] | None = None) -> bytes:
        """The encoded Delivery entries ``start <= i < stop`` (only those in ``indexes`` if given)."""
        if indexes is None:
            begin = self.ends[start - 1] if start else 0
            return self.data[begin : self.ends[stop - 1]] if stop > start else b""
        data, ends = self.data, self.ends
        return b"".join(data[(ends[i - 1] if i else 0) : ends[i]] for i in indexes if start <= i < stop)


class RecentBatches:
    """The newest batches of a log, kept in memory up to a byte bound, so that subscribers that keep
    up are served without reading the store."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.batches: list[StoredBatch] = []
        self.firsts: list[int] = []  # each batch's first offset, for bisecting
        self.size = 0

    def add(self, batch: StoredBatch) -> None:
        self.batches.append(batch)
        self.firsts.append(batch.first_offset)
        self.size += batch.size

    def trim(self, oldest: int) -> None:
        """Drops the oldest batches while over the bound or wholly below ``oldest``, keeping the newest."""
        drop = 0
        while drop < len(self.batches) - 1 and (self.size > self.max_bytes or self.batches[drop].next_offset <= oldest):
            self.size -= self.batches[drop].size
            drop += 1
        if drop:
            del self.batches[:drop]
            del self.firsts[:drop]

    def holding(self, offset: int) -> StoredBatch | None:
        """The cached batch that holds ``offset``, if any."""
        firsts = self.firsts
        if not firsts or offset < firsts[0]:
            return None
        batch = self.batches[bisect.bisect_right(firsts, offset) - 1]
        return batch if offset < batch.next_offset else None

    def read(self, from_offset: int, max_entries: int) -> list[StoredBatch] | None:
        """Batches from the one holding ``from_offset`` on, about ``max_entries`` entries; None when
        the cache begins after ``from_offset`` (the store must be read)."""
        firsts = self.firsts
        if not firsts or from_offset < firsts[0]:
            return None
        index = bisect.bisect_right(firsts, from_offset) - 1
        out: list[StoredBatch] = []
        entries = 0
        while index < len(self.batches) and entries < max_entries:
            batch = self.batches[index]
            out.append(batch)
            entries += batch.next_offset - max(from_offset, batch.first_offset)
            index += 1
        return out


def ends_to_bytes(ends: array[int]) -> bytes:
    if sys.byteorder == "big":
        ends = array("Q", ends)
        ends.byteswap()
    return ends.tobytes()


def ends_from_bytes(raw: bytes) -> array[int]:
    ends = array("Q")
    ends.frombytes(raw)
    if sys.byteorder == "big":
        ends.byteswap()
    return ends


@dataclass(frozen=True, slots=True)
class LogStats:
    oldest_offset: int
    next_offset: int
    batches: int
    bytes: int


class Log(abc.ABC):
    """What the node needs of a durable log."""

    @property
    @abc.abstractmethod
    def next_offset(self) -> int:
        """The offset the next appended envelope will get; everything below it is durable."""

    @property
    @abc.abstractmethod
    def oldest_offset(self) -> int:
        """The oldest offset still retained (equal to next_offset when the log is empty)."""

    async def append(self, batch: AppendBatch) -> AppendResult:
        """Appends durably (idempotent by id) and returns one result per item, in order."""
        return await self.append_nowait(batch)

    @abc.abstractmethod
    def append_nowait(self, batch: AppendBatch) -> Awaitable[AppendResult]:
        """Queues an append now (appends are applied in call order); await the result for durability."""

    @abc.abstractmethod
    async def read(self, from_offset: int, max_entries: int) -> list[StoredBatch]:
        """Batches holding offsets from ``from_offset`` on (the first may start before it)."""

    @abc.abstractmethod
    async def wait_beyond(self, offset: int, timeout: float | None = None) -> None:
        """Returns once ``next_offset > offset``, the timeout passes, or the log closes."""

    @abc.abstractmethod
    async def find(self, ids: list[str]) -> dict[str, tuple[StoredBatch, int]]:
        """The batch and index of each id that is in the log."""

    @abc.abstractmethod
    async def offset_at(self, ns: int) -> int:
        """The first offset appended at or after ``ns`` (Unix nanoseconds), or next_offset."""

    @abc.abstractmethod
    async def load_position(self, name: str) -> int | None:
        """The remembered position of a durable subscription, or None if it is new."""

    @abc.abstractmethod
    async def save_position(self, name: str, next_offset: int) -> int:
        """Remembers a durable subscription's position (never moving it backwards); returns it."""

    @abc.abstractmethod
    def stats(self) -> LogStats: ...

    async def start_helpers(self) -> None:  # noqa: B027 - a log without helpers has none to start
        """Starts the log's helper threads now rather than when first needed: a node calls this
        before it takes traffic, so that its first batches do not wait for one to start."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
