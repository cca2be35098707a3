"""The replicated log: the node's log kept in a NATS JetStream stream, shared by several gateway replicas.

Two layouts (``[log.jetstream] layout``). The default, ``batch``, stores one stream message per append
batch; it is ``JetStreamBatchLog`` below, whose docstring says how offsets and de-duplication work
there. Why: the cost of JetStream and of nats-py is per message, about 24 µs of gateway CPU and 44 µs
of the three servers' per message; with hundreds of envelopes per message both almost vanish. The
older ``envelope`` layout, one message per envelope, is kept for streams made with it; its shape:

- One stream message per envelope, so a log offset *is* the stream sequence: no mapping table to
  keep consistent between replicas, and ``oldest_offset``/``next_offset`` come straight from the
  stream's first and last sequence. A migrated log keeps its offsets because the stream is created
  with ``first_seq`` at the embedded log's oldest offset.
- Each message goes to its own subject, ``<stream>.e.<128-bit hash of the envelope id>``, and carries
  two headers: ``Nats-Msg-Id`` (the envelope id: JetStream's duplicate window answers a repeat with the
  original sequence) and ``Nats-Expected-Last-Subject-Sequence: 0`` (the store refuses a message whose
  subject already holds one and names that message's sequence). The second is the check for ids older
  than the window. We chose the stream's own per-subject lookup over a KV bucket of ids because the
  server makes it atomically, on the same write, for every replica at once: a KV bucket would be a second
  write per envelope and a race between two replicas appending the same id.
- The payload is the publishing replica's append time (8 bytes), the selection record and the
  envelope as received; one append call shares one time, so a reader regroups its messages into one
  ``StoredBatch``.
- Publishes are pipelined (asynchronous acknowledgements). On nats-server 2.12 and newer an append
  goes out as atomic batches of up to 500 messages, one answer each (stored consecutively, so the
  offsets follow from the last sequence); a batch refused for a duplicate id in it, or unanswered, is
  published again message by message, whose answers say which ids were there. An append resolves
  once all is acknowledged by the stream (stored on a quorum of its servers) and this replica's
  follower has seen it, so ``next_offset``, ``read`` and ``wait_beyond`` already include it.
- Every replica follows the stream with an ordered consumer, so appends made through *other*
  replicas wake this replica's subscribers too; the newest batches are kept in memory for them.
- Durable subscription positions live in a KV bucket ``<stream>_POSITIONS``, updated with
  compare-and-set so that a position never moves backwards, whichever replica saves it.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import hashlib
import itertools
import json
import random
import secrets
import sqlite3
import ssl
import struct
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.kv import KeyValue

from gateway.config import NodeConfig, parse_size
from gateway.errors import LogClosedError, LogCorruptError
from gateway.id_index import IdIndex, id_hash, id_hashes
from gateway.log import (
    AppendBatch,
    AppendResult,
    Log,
    LogStats,
    RecentBatches,
    StoredBatch,
    ends_from_bytes,
    ends_to_bytes,
)
from gateway.selection import RECORD
from gateway.signing import standalone_envelopes
from gateway.sqlite_log import Retention, SqliteLog
from gateway.wire import encode_deliveries, hop_suffix, read_varint

log = structlog.get_logger("yiwang.log")
_T = TypeVar("_T")

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code when the subject already holds a message
_STAMP = struct.Struct(">Q")
_HEAD = _STAMP.size + RECORD.size
_READ_PAGE = 1024
_ATOMIC_CHUNK = 500  # messages per atomic batch (the server takes at most 1000)
_FIND_CONCURRENCY = 64


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """Where the stream lives and how it is kept; see ``[log.jetstream]`` in the node's config."""

    servers: tuple[str, ...]
    stream: str = "YIWANG_LOG"
    replicas: int = 3
    duplicate_window_s: float = 120.0
    max_age_s: float = 0.0  # 0 keeps everything
    max_bytes: int = 0  # 0: no limit
    credentials: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ack_timeout_s: float = 10.0
    retry_for_s: float = 60.0  # how long an unacknowledged publish is retried before the append fails
    refresh_s: float = 5.0  # how often the stream's first sequence and size are re-read
    layout: str = "batch"  # "batch": one stream message per append batch; "envelope": one per envelope
    index_dir: Path | None = None  # "batch" layout: where this replica keeps its on-disk id index

    @property
    def subjects(self) -> str:
        return f"{self.stream}.b" if self.layout == "batch" else f"{self.stream}.e.*"

    def subject_for(self, envelope_id: str) -> str:
        return f"{self.stream}.e.{hashlib.blake2b(envelope_id.encode(), digest_size=16).hexdigest()}"

    @property
    def positions_bucket(self) -> str:
        return f"{self.stream}_POSITIONS"


@dataclass(slots=True)
class _Entry:
    """One followed or fetched message."""

    seq: int
    stamp: int
    envelope_id: str
    payload: bytes


@dataclass(slots=True)
class _Pending:
    """An append whose messages are published and whose acknowledgements are awaited."""

    batch: AppendBatch
    prefix: bytes
    acks: list[asyncio.Future[Any] | None]
    repeats: dict[int, int]  # index -> index of the same id earlier in the batch
    future: asyncio.Future[AppendResult]
    chunks: list[tuple[list[int], asyncio.Future[Msg]]] = field(default_factory=list)  # atomic batches


def tls_context(settings: JetStreamSettings) -> ssl.SSLContext | None:
    """The TLS context for the NATS connection, or None when the settings name no TLS files."""
    if settings.tls_ca is None and settings.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
    if settings.tls_cert is not None:
        if settings.tls_key is None:
            raise ValueError("log.jetstream.tls_key is required with tls_cert")
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context


def position_key(name: str) -> str:
    """A KV key for any subscription name (KV keys allow only a few characters)."""
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=") or "_"


def _wrong_last_sequence(exc: nats.js.errors.APIError) -> int | None:
    """The sequence already on the subject, from a 'wrong last sequence: N' refusal; None if not one."""
    if exc.err_code != WRONG_LAST_SEQUENCE or not exc.description:
        return None
    digits = exc.description.rsplit(":", 1)[-1].strip()
    return int(digits) if digits.isdigit() else None


def stream_sequence(msg: Msg) -> int:
    """The stream sequence of a consumer's message, read from its reply subject.

    Cheaper than nats-py's ``msg.metadata``, which builds several objects per message: the follower
    does this for every envelope. ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...`` (9 tokens), or
    with domain and account hash first (11 or 12 tokens).
    """
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 11:
        return int(tokens[7])
    return int(msg.metadata.sequence.stream)


class JetStreamLog(Log):
    """The log on a JetStream stream. Open it with ``await JetStreamLog.open(...)`` and close it when done."""

    def __init__(
        self, settings: JetStreamSettings, *, node_id: str, cache_bytes: int = 64 << 20, first_seq: int = 1
    ) -> None:
        if settings.replicas < 1 or settings.replicas > 5:
            raise ValueError("log.jetstream.replicas must be between 1 and 5")
        if not settings.servers:
            raise ValueError("log.jetstream.servers must name at least one server")
        self.settings = settings
        self.node_id = node_id
        self.cache_bytes = cache_bytes
        self.first_seq = first_seq  # only used when this open creates the stream (migration)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._next = 1
        self._oldest = 1
        self._messages = 0
        self._bytes = 0
        self._last_stamp = 0
        self._cache = RecentBatches(cache_bytes)
        self._incoming: list[_Entry] = []
        self._changed = asyncio.Event()
        self._closed = False
        self._queue: asyncio.Queue[tuple[AppendBatch, asyncio.Future[AppendResult], int] | None] = asyncio.Queue()
        self._settling: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._follower: Any = None
        self._ack_prefix = ""
        self._ack_sub: Any = None
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        self._ack_tokens = itertools.count(1)
        self._atomic = False  # atomic batch publishes (nats-server 2.12 and newer): one answer per batch
        self.on_commit: Callable[[int, int], None] | None = None  # (envelopes, batches) per followed run

    # -- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, settings: JetStreamSettings, **kwargs: Any) -> JetStreamLog:
        if cls is JetStreamLog and settings.layout == "batch":
            cls = JetStreamBatchLog  # noqa: PLW0642 - the layout picks the implementation
        self = cls(settings, **kwargs)
        try:
            await self._start()
        except BaseException:
            await self._disconnect()
            raise
        return self

    async def _start(self) -> None:
        await self._connect()
        assert self._nc is not None
        # Our own acknowledgement inbox rather than nats-py's publish_async: one dict entry per message,
        # and a refusal comes back as a result we parse (nats-py's handler loses it in this version).
        self._ack_prefix = self._nc.new_inbox() + "."
        self._ack_sub = await self._nc.subscribe(self._ack_prefix + "*", cb=self._on_ack)
        version = self._nc.connected_server_version
        self._atomic = (version.major, version.minor) >= (2, 12)
        info = await self._while_cluster_recovers(self._ensure_stream, "stream")
        self._kv = await self._while_cluster_recovers(self._ensure_positions, "positions bucket")
        state = info.state
        self._next = state.last_seq + 1
        self._oldest = state.first_seq if state.messages else self._next
        self._messages, self._bytes = state.messages, state.bytes
        await self._follow_from(self._next)
        self._run_loops(layout="envelope")

    async def _follow_from(self, start_seq: int) -> None:
        """Follows the whole stream from ``start_seq`` (an ordered consumer: every message, in order)."""
        s, js = self.settings, self._js
        assert js is not None

        async def follow() -> Any:
            return await js.subscribe(
                s.subjects,
                stream=s.stream,
                cb=self._on_message,
                ordered_consumer=True,
                idle_heartbeat=1.0,
                deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
                config=jsapi.ConsumerConfig(opt_start_seq=start_seq),
            )

        self._follower = await self._while_cluster_recovers(follow, "follower")

    def _run_loops(self, **logged: Any) -> None:
        """Starts publishing and refreshing, and says the log is open."""
        s = self.settings
        self._tasks = [
            asyncio.create_task(self._publish_loop(), name="jetstream-log-publish"),
            asyncio.create_task(self._refresh_loop(), name="jetstream-log-refresh"),
        ]
        log.info(
            "log_opened",
            backend="jetstream",
            stream=s.stream,
            replicas=s.replicas,
            next_offset=self._next,
            oldest_offset=self._oldest,
            messages=self._messages,
            **logged,
        )

    async def _connect(self) -> None:
        s = self.settings

        async def on_error(exc: Exception) -> None:
            log.warning("nats_error", error=str(exc) or type(exc).__name__)

        async def on_disconnected() -> None:
            # Answers to what was published on the lost connection may never come: republish those
            # now (ids make it safe) rather than after the acknowledgement timeout.
            for ack in self._acks.values():
                ack.cancel()
            self._acks.clear()
            if not self._closed:
                log.warning("nats_disconnected", stream=s.stream)

        async def on_reconnected() -> None:
            log.info("nats_reconnected", stream=s.stream, server=str(self._nc.connected_url if self._nc else ""))

        self._nc = await nats.connect(
            servers=list(s.servers),
            name=f"yiwang-{self.node_id}",
            tls=tls_context(s),
            user_credentials=str(s.credentials) if s.credentials else None,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=5,
            pending_size=64 << 20,  # what is published while reconnecting waits here, not in an error
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
        )
        self._js = self._nc.jetstream(timeout=s.ack_timeout_s)

    async def _while_cluster_recovers(self, step: Callable[[], Awaitable[_T]], what: str) -> _T:
        """Runs a step, again while the cluster answers with timeouts, no responders or 'unavailable' (a
        server just restarted, a leader being elected, a stream just created), for up to ``retry_for_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.retry_for_s
        delay = 0.1
        while True:
            try:
                return await step()
            except (
                nats.errors.TimeoutError,
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,
                nats.js.errors.ServiceUnavailableError,
            ) as exc:
                if loop.time() > deadline:
                    raise
                log.warning(
                    "jetstream_not_ready", stream=self.settings.stream, step=what, error=str(exc) or type(exc).__name__
                )
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not secrecy
            delay = min(delay * 2, 2.0)

    async def _ensure_stream(self) -> jsapi.StreamInfo:
        s, js = self.settings, self._js
        assert js is not None
        wanted = jsapi.StreamConfig(
            name=s.stream,
            subjects=[s.subjects],
            storage=jsapi.StorageType.FILE,
            num_replicas=s.replicas,
            duplicate_window=s.duplicate_window_s,
            max_age=s.max_age_s or None,
            max_bytes=s.max_bytes or -1,
            discard=jsapi.DiscardPolicy.OLD,
            allow_atomic=True if self._atomic else None,
        )
        try:
            info = await js.stream_info(s.stream)
        except nats.js.errors.NotFoundError:
            wanted.first_seq = self.first_seq if self.first_seq > 1 and s.layout != "batch" else None
            await js.add_stream(wanted)
            log.info("jetstream_stream_created", stream=s.stream, replicas=s.replicas, first_seq=self.first_seq)
            return await js.stream_info(s.stream)
        have = info.config
        layouts = {f"{s.stream}.b": "batch", f"{s.stream}.e.*": "envelope"}
        other = layouts.get((have.subjects or [""])[0]) if have.subjects != wanted.subjects else None
        if other is not None:
            raise LogCorruptError(
                f"stream {s.stream} was made with log.jetstream.layout = {other!r}, not {s.layout!r}: set it back, "
                "or migrate into a new stream"
            )
        if have.subjects != wanted.subjects:
            raise LogCorruptError(
                f"stream {s.stream} holds subjects {have.subjects}, not {wanted.subjects}: is it another "
                "application's stream? Choose another log.jetstream.stream"
            )
        if (have.num_replicas, have.duplicate_window, have.max_age or None, have.max_bytes, have.allow_atomic) != (
            wanted.num_replicas,
            wanted.duplicate_window,
            wanted.max_age,
            wanted.max_bytes,
            wanted.allow_atomic,
        ):
            have.num_replicas, have.duplicate_window = wanted.num_replicas, wanted.duplicate_window
            have.max_age, have.max_bytes = wanted.max_age, wanted.max_bytes
            have.allow_atomic = wanted.allow_atomic
            await js.update_stream(have)
            log.info("jetstream_stream_updated", stream=s.stream, replicas=s.replicas)
            info = await js.stream_info(s.stream)
        return info

    async def _ensure_positions(self) -> KeyValue:
        s, js = self.settings, self._js
        assert js is not None
        try:
            return await js.key_value(s.positions_bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(
                bucket=s.positions_bucket, history=1, replicas=s.replicas, storage=jsapi.StorageType.FILE
            )

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._queue.put(None)
        for task in self._tasks:
            task.cancel()
        for task in list(self._settling):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._settling, return_exceptions=True)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(LogClosedError("the log is closed"))
        await self._disconnect()
        self._changed.set()
        log.info("log_closed", backend="jetstream", stream=self.settings.stream, next_offset=self._next)

    async def _disconnect(self) -> None:
        for ack in self._acks.values():
            ack.cancel()
        self._acks.clear()
        if self._follower is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._follower.unsubscribe()
            self._follower = None
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()

    # -- properties -----------------------------------------------------------------------------

    @property
    def next_offset(self) -> int:
        return self._next

    @property
    def oldest_offset(self) -> int:
        return self._oldest

    def stats(self) -> LogStats:
        return LogStats(self._oldest, self._next, self._messages, self._bytes)

    # -- following the stream ----------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        seq = stream_sequence(msg)
        envelope_id = (msg.headers or {}).get(MSG_ID, "")
        if not self._incoming:
            asyncio.get_running_loop().call_soon(self._take_incoming)
        self._incoming.append(_Entry(seq, _STAMP.unpack_from(msg.data)[0], envelope_id, msg.data))

    def _take_incoming(self) -> None:
        """Turns the messages followed since the last call into cached batches, then wakes the waiters."""
        entries, self._incoming = self._incoming, []
        entries = [e for e in entries if e.seq >= self._next]  # an ordered consumer's reset may repeat some
        if not entries or self._closed:
            return
        batches = self._batches_of(entries)
        for batch in batches:
            self._cache.add(batch)
            self._messages += batch.count
            self._bytes += batch.size
        if self._next == self._oldest and self._messages == sum(b.count for b in batches):
            self._oldest = batches[0].first_offset
        self._next = batches[-1].next_offset
        self._cache.trim(self._oldest)
        if self.on_commit is not None:
            self.on_commit(len(entries), len(batches))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _batches_of(self, entries: list[_Entry]) -> list[StoredBatch]:
        """Groups consecutive messages of one append (same sequence run, same append time) into batches."""
        out: list[StoredBatch] = []
        start = 0
        for i in range(1, len(entries) + 1):
            if (
                i < len(entries)
                and entries[i].seq == entries[i - 1].seq + 1
                and entries[i].stamp == entries[start].stamp
            ):
                continue
            run = entries[start:i]
            stamp = run[0].stamp
            for entry in run:
                if len(entry.payload) < _HEAD:
                    raise LogCorruptError(f"stream message {entry.seq} is too short to be a log entry")
            data, ends = encode_deliveries(
                run[0].seq, [e.payload[_HEAD:] for e in run], hop_suffix(self.node_id, stamp), stamp
            )
            records = b"".join(e.payload[_STAMP.size : _HEAD] for e in run)
            out.append(StoredBatch(run[0].seq, stamp, records, ends, data, tuple(e.envelope_id for e in run)))
            start = i
        return out

    async def _refresh_loop(self) -> None:
        """Re-reads the stream's state now and then: the servers apply retention, not this replica."""
        js = self._js
        assert js is not None
        while not self._closed:
            await asyncio.sleep(self.settings.refresh_s)
            try:
                await self._take_state((await js.stream_info(self.settings.stream)).state)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("jetstream_info_failed", stream=self.settings.stream, error=str(exc) or type(exc).__name__)

    async def _take_state(self, state: jsapi.StreamState) -> None:
        """Takes the stream's first sequence and size (one envelope a message: sequence is offset)."""
        self._oldest = state.first_seq if state.messages else max(self._next, state.last_seq + 1)
        self._messages, self._bytes = state.messages, state.bytes
        self._cache.trim(self._oldest)

    # -- appending ------------------------------------------------------------------------------

    def append_nowait(self, batch: AppendBatch, appended_ns: int = 0) -> asyncio.Future[AppendResult]:
        """As ``Log.append_nowait``; ``appended_ns`` keeps an imported batch's original append time."""
        if self._closed:
            raise LogClosedError("the log is closed")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        if not batch.ids:
            future.set_result(AppendResult([], frozenset()))
            return future
        if batch.signatures:
            # The stream keeps envelopes one by one, with nothing beside them: each takes its full signature.
            batch = AppendBatch(
                batch.ids, standalone_envelopes(batch.envelopes, batch.signatures), batch.records, batch.hashes
            )
        self._queue.put_nowait((batch, future, appended_ns))
        return future

    async def _publish_loop(self) -> None:
        """Publishes appends one after another (so a replica's appends keep their call order)."""
        while (item := await self._queue.get()) is not None:
            batch, future, appended_ns = item
            try:
                pending = await self._publish(batch, future, appended_ns)
            except (nats.errors.Error, OSError) as exc:
                if not future.done():
                    future.set_exception(LogClosedError(f"log write failed: {exc}"))
                continue
            task = asyncio.create_task(self._settle(pending), name="jetstream-log-settle")
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

    async def _publish(self, batch: AppendBatch, future: asyncio.Future[AppendResult], appended_ns: int) -> _Pending:
        js = self._js
        assert js is not None
        if appended_ns:
            stamp = appended_ns
        else:
            stamp = max(time.time_ns(), self._last_stamp + 1)
            self._last_stamp = stamp
        prefix = _STAMP.pack(stamp)
        first_index: dict[str, int] = {}
        repeats: dict[int, int] = {}
        for i, envelope_id in enumerate(batch.ids):
            earlier = first_index.setdefault(envelope_id, i)
            if earlier != i:
                repeats[i] = earlier
        pending = _Pending(batch, prefix, [None] * len(batch.ids), repeats, future)
        unique = list(first_index.values())
        if not self._atomic:
            await self._publish_singly(pending, unique)
            return pending
        for start in range(0, len(unique), _ATOMIC_CHUNK):
            chunk = unique[start : start + _ATOMIC_CHUNK]
            pending.chunks.append((chunk, await self._publish_atomic(pending, chunk)))
        return pending

    async def _publish_singly(self, pending: _Pending, indexes: list[int]) -> None:
        """Publishes messages each with its own answer (the path for servers without atomic batches)."""
        batch, prefix, subject_for = pending.batch, pending.prefix, self.settings.subject_for
        for i in indexes:
            envelope_id = batch.ids[i]
            headers = {MSG_ID: envelope_id, EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
            payload = prefix + batch.records[i] + batch.envelopes[i]
            pending.acks[i] = await self._publish_async(subject_for(envelope_id), payload, headers)

    async def _publish_atomic(self, pending: _Pending, indexes: list[int]) -> asyncio.Future[Msg]:
        """Publishes messages as one atomic batch: all stored, consecutively, or none; one answer."""
        nc = self._nc
        assert nc is not None
        batch, prefix, subject_for = pending.batch, pending.prefix, self.settings.subject_for
        token = str(next(self._ack_tokens))
        ack: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[token] = ack
        batch_id = f"{self._ack_prefix}{token}"[-64:]
        last = len(indexes) - 1
        for n, i in enumerate(indexes):
            envelope_id = batch.ids[i]
            headers = {
                MSG_ID: envelope_id,
                EXPECTED_LAST_SUBJECT_SEQUENCE: "0",
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(n + 1),
            }
            reply = ""
            if n == last:
                headers["Nats-Batch-Commit"] = "1"
                reply = self._ack_prefix + token
            await nc.publish(subject_for(envelope_id), prefix + batch.records[i] + batch.envelopes[i], reply, headers)
        return ack

    async def _publish_async(self, subject: str, payload: bytes, headers: dict[str, str]) -> asyncio.Future[Msg]:
        nc = self._nc
        assert nc is not None
        token = str(next(self._ack_tokens))
        ack: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[token] = ack
        await nc.publish(subject, payload, reply=self._ack_prefix + token, headers=headers)
        return ack

    async def _on_ack(self, msg: Msg) -> None:
        ack = self._acks.pop(msg.subject[len(self._ack_prefix) :], None)
        if ack is not None and not ack.done():
            ack.set_result(msg)

    async def _settle(self, pending: _Pending) -> None:
        """Awaits a published append's acknowledgements (republishing what got none), then resolves it."""
        future = pending.future
        try:
            offsets = [0] * len(pending.acks)
            if pending.chunks:
                await self._settle_atomic(pending, offsets)
            waiting = [a for a in pending.acks if a is not None]
            if waiting:
                await asyncio.wait(waiting, timeout=self.settings.ack_timeout_s)
            self._forget_acks(waiting)
            duplicates: set[int] = set()
            for i, ack in enumerate(pending.acks):
                if ack is None:
                    continue
                seq, duplicate = await self._outcome(pending, i, ack)
                offsets[i] = seq
                if duplicate:
                    duplicates.add(i)
            for i, earlier in pending.repeats.items():
                offsets[i] = offsets[earlier]
                duplicates.add(i)
            await self._reach(max(offsets) + 1)
        except LogClosedError as exc:
            if not future.done():
                future.set_exception(exc)
            return
        except asyncio.CancelledError:
            if not future.done():
                future.set_exception(LogClosedError("the log closed before the append was acknowledged"))
            raise
        if not future.done():
            future.set_result(AppendResult(offsets, frozenset(duplicates)))

    async def _settle_atomic(self, pending: _Pending, offsets: list[int]) -> None:
        """Takes the atomic batches' answers; a refused or unanswered batch (a duplicate id in it, a lost
        connection) is published again message by message, whose answers say which ids were there."""
        acks = [ack for _, ack in pending.chunks]
        await asyncio.wait(acks, timeout=self.settings.ack_timeout_s)
        self._forget_acks(acks)
        for indexes, ack in pending.chunks:
            stored = self._read_batch_ack(ack, len(indexes))
            if stored is not None:
                for i, seq in zip(indexes, range(stored - len(indexes) + 1, stored + 1), strict=True):
                    offsets[i] = seq
            else:
                await self._publish_singly(pending, indexes)

    @staticmethod
    def _read_batch_ack(ack: asyncio.Future[Msg], count: int) -> int | None:
        """The last sequence of a committed atomic batch of ``count`` messages; None if not committed."""
        if not ack.done() or ack.cancelled() or not ack.result().data:
            return None
        try:
            answer = json.loads(ack.result().data)
        except ValueError:
            return None
        if "error" in answer or answer.get("count") != count:
            return None
        return int(answer["seq"])

    async def _outcome(self, pending: _Pending, index: int, ack: asyncio.Future[Any]) -> tuple[int, bool]:
        """(sequence, was it there before) of one published message, republishing it until acknowledged."""
        if ack.done():
            found = self._read_ack(ack)
            if found is not None:
                return found
        else:
            ack.cancel()
        js = self._js
        assert js is not None
        batch = pending.batch
        envelope_id = batch.ids[index]
        payload = pending.prefix + batch.records[index] + batch.envelopes[index]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.retry_for_s
        delay = 0.05
        while True:
            if self._closed:
                raise LogClosedError("the log is closed")
            headers = {MSG_ID: envelope_id, EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
            try:
                reply = await js.publish(
                    self.settings.subject_for(envelope_id),
                    payload,
                    timeout=self.settings.ack_timeout_s,
                    headers=headers,
                )
                return reply.seq, bool(reply.duplicate)
            except nats.js.errors.APIError as exc:
                seq = _wrong_last_sequence(exc)
                if seq is not None:
                    return seq, True
                problem: str = f"{exc.err_code}: {exc.description}"
            except (nats.errors.Error, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if loop.time() > deadline:
                raise LogClosedError(f"log write failed: envelope {envelope_id} not acknowledged: {problem}")
            log.warning("jetstream_publish_retry", id=envelope_id, error=problem)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not secrecy
            delay = min(delay * 2, 2.0)

    def _forget_acks(self, acks: list[asyncio.Future[Any]]) -> None:
        if any(not a.done() for a in acks):
            waiting = {id(a) for a in acks}
            for token in [t for t, a in self._acks.items() if id(a) in waiting]:
                del self._acks[token]

    @staticmethod
    def _read_ack(ack: asyncio.Future[Any]) -> tuple[int, bool] | None:
        """(sequence, duplicate) from a stream's answer; None when it must be republished."""
        if ack.cancelled():
            return None
        msg: Msg = ack.result()
        if not msg.data:
            return None  # a status without a body: no responders while a leader is elected
        try:
            answer = json.loads(msg.data)
        except ValueError:
            return None
        error = answer.get("error")
        if error is None:
            return int(answer["seq"]), bool(answer.get("duplicate"))
        if error.get("err_code") == WRONG_LAST_SEQUENCE:
            digits = str(error.get("description", "")).rsplit(":", 1)[-1].strip()
            if digits.isdigit():
                return int(digits), True
        return None  # refused for another reason (no quorum, stream moving): republish

    async def _reach(self, target: int) -> None:
        """Waits until this replica's follower has seen everything below ``target``."""
        while self._next < target:
            if self._closed:
                raise LogClosedError("the log is closed")
            await self.wait_beyond(target - 1, 1.0)

    # -- reading --------------------------------------------------------------------------------

    async def read(self, from_offset: int, max_entries: int) -> list[StoredBatch]:
        if self._closed:
            raise LogClosedError("the log is closed")
        if from_offset >= self._next:
            return []
        from_offset = max(from_offset, self._oldest)
        cached = self._cache.read(from_offset, max_entries)
        if cached is not None:
            return cached
        return await self._read_stored(from_offset, max_entries)

    async def _read_stored(self, from_offset: int, max_entries: int) -> list[StoredBatch]:
        """``read`` past the cache: from the stream."""
        limit = self._cache.firsts[0] if self._cache.firsts else self._next
        wanted = max(1, min(max_entries, limit - from_offset, _READ_PAGE))
        return self._batches_of(await self._fetch(from_offset, wanted, limit))

    async def _fetch(self, from_offset: int, wanted: int, limit: int) -> list[_Entry]:
        """Up to ``wanted`` messages from ``from_offset`` on (below ``limit``), through a short-lived consumer."""
        js = self._js
        assert js is not None
        config = jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=from_offset,
            ack_policy=jsapi.AckPolicy.NONE,
            inactive_threshold=5.0,  # the server drops this consumer soon after the read
            mem_storage=True,
            num_replicas=1,
        )
        sub = await js.pull_subscribe(self.settings.subjects, stream=self.settings.stream, config=config)
        out: list[_Entry] = []
        try:
            while len(out) < wanted:
                try:
                    msgs = await sub.fetch(batch=wanted - len(out), timeout=self.settings.ack_timeout_s)
                except nats.errors.TimeoutError:
                    break  # fewer messages than expected: retention removed some meanwhile
                for msg in msgs:
                    seq = stream_sequence(msg)
                    if seq >= limit:
                        return out
                    envelope_id = (msg.headers or {}).get(MSG_ID, "")
                    out.append(_Entry(seq, _STAMP.unpack_from(msg.data)[0], envelope_id, msg.data))
                if out and out[-1].seq >= limit - 1:
                    break
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return out

    async def wait_beyond(self, offset: int, timeout: float | None = None) -> None:
        if self._next > offset or self._closed:
            return
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _message(self, *, seq: int | None = None, subject: str | None = None) -> _Entry | None:
        """One message by sequence or the last on a subject, asked of the stream leader; None if absent."""
        js = self._js
        assert js is not None
        if self._closed:
            raise LogClosedError("the log is closed")
        try:
            raw = await js.get_msg(self.settings.stream, seq=seq, subject=subject)
        except nats.js.errors.NotFoundError:
            return None
        data = raw.data or b""
        if raw.seq is None or len(data) < _HEAD:
            return None
        return _Entry(raw.seq, _STAMP.unpack_from(data)[0], (raw.headers or {}).get(MSG_ID, ""), data)

    async def find(self, ids: list[str]) -> dict[str, tuple[StoredBatch, int]]:
        limit = asyncio.Semaphore(_FIND_CONCURRENCY)

        async def one(envelope_id: str) -> tuple[str, _Entry | None]:
            async with limit:
                return envelope_id, await self._message(subject=self.settings.subject_for(envelope_id))

        found: dict[str, tuple[StoredBatch, int]] = {}
        for envelope_id, entry in await asyncio.gather(*(one(i) for i in dict.fromkeys(ids))):
            if entry is not None and entry.envelope_id == envelope_id and entry.seq >= self._oldest:
                found[envelope_id] = (self._batches_of([entry])[0], 0)
        return found

    async def offset_at(self, ns: int) -> int:
        """Binary search over the stream by each message's append time (times of one replica only grow;
        between replicas they are as close as their clocks)."""
        lo, hi = self._oldest, self._next
        while lo < hi:
            mid = (lo + hi) // 2
            stamp = self._cached_stamp(mid)
            if stamp is None:
                entry = await self._message(seq=mid)
                stamp = entry.stamp if entry is not None else -1
            if stamp >= ns:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _cached_stamp(self, offset: int) -> int | None:
        batch = self._cache.holding(offset)
        return batch.appended_ns if batch is not None else None

    # -- durable positions ------------------------------------------------------------------------

    async def load_position(self, name: str) -> int | None:
        kv = self._kv
        assert kv is not None
        if self._closed:
            raise LogClosedError("the log is closed")

        async def load() -> int | None:
            try:
                entry = await kv.get(position_key(name))
            except nats.js.errors.KeyNotFoundError:
                return None
            return int(entry.value or b"0")

        return await self._while_cluster_recovers(load, "position")

    async def save_position(self, name: str, next_offset: int) -> int:
        kv = self._kv
        assert kv is not None
        key = position_key(name)

        async def compare_and_set() -> int | None:
            """The position saved, or None when another replica saved one meanwhile."""
            try:
                entry = await kv.get(key)
                current: int | None = int(entry.value or b"0")
                revision = entry.revision
            except nats.js.errors.KeyNotFoundError:
                current, revision = None, None
            position = min(max(next_offset, current or 0), self._next)
            if current is not None and position <= current:
                return current
            try:
                if revision is None:
                    await kv.create(key, str(position).encode())
                else:
                    await kv.update(key, str(position).encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
            return position

        while True:
            if self._closed:
                raise LogClosedError("the log is closed")
            saved = await self._while_cluster_recovers(compare_and_set, "position")
            if saved is not None:
                return saved  # else another replica saved it meanwhile: compare again


BATCH_OFFSET = "Yiwang-Offset"  # the log offset of a batch message's first envelope
BATCH_COUNT = "Yiwang-Count"  # how many envelopes the message holds
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
_BATCH_HEAD = struct.Struct(">QII")  # append time, envelopes, length of the ids
_GROUP_BYTES = 8 << 20  # queued appends taken together by one write
_NEXT_KEY = "log.next"  # in the positions bucket: where the log ends (no position key holds a '.')
_HINTS = 1024


@dataclass(slots=True, eq=False)
class _GroupAppend:
    """One append call, within a group of appends written together."""

    batch: AppendBatch
    future: asyncio.Future[AppendResult]
    stamp: int
    hashes: list[int]
    offsets: list[int]
    duplicates: set[int] = field(default_factory=set)
    todo: list[int] = field(default_factory=list)  # indexes not yet placed in the stream
    repeats: dict[int, tuple[_GroupAppend, int]] = field(default_factory=dict)  # same id earlier in the group
    prefetch: _Prefetch | None = None


_Prefetch = tuple["asyncio.Task[dict[int, list[int]]]", dict[int, int]]  # on-disk look-up, and the hot ids then


def pack_batch(stamp: int, ids: list[str], records: list[bytes], envelopes: list[bytes]) -> bytes:
    """A batch message's payload: append time, count, the ids, the selection records, the envelopes' ends
    and the envelopes as received."""
    ids_blob = "\n".join(ids).encode()
    ends = array("Q", itertools.accumulate(map(len, envelopes)))
    return b"".join(
        (
            _BATCH_HEAD.pack(stamp, len(ids), len(ids_blob)),
            ids_blob,
            b"".join(records),
            ends_to_bytes(ends),
            b"".join(envelopes),
        )
    )


def unpack_batch(payload: bytes) -> tuple[int, tuple[str, ...], bytes, list[bytes]]:
    """(append time, ids, records, envelopes) of a batch message's payload."""
    if len(payload) < _BATCH_HEAD.size:
        raise LogCorruptError("a batch message too short to hold its head")
    stamp, count, ids_len = _BATCH_HEAD.unpack_from(payload)
    at = _BATCH_HEAD.size
    ids = tuple(payload[at : at + ids_len].decode().split("\n")) if count else ()
    at += ids_len
    records = payload[at : at + count * RECORD.size]
    at += count * RECORD.size
    ends = ends_from_bytes(payload[at : at + 8 * count])
    at += 8 * count
    data = payload[at:]
    if (
        len(ids) != count
        or len(ends) != count
        or len(records) != count * RECORD.size
        or (ends and ends[-1] != len(data))
    ):
        raise LogCorruptError("a batch message whose index does not match its data")
    starts = itertools.chain((0,), ends)
    return stamp, ids, records, [data[a:b] for a, b in zip(starts, ends, strict=False)]


class JetStreamBatchLog(JetStreamLog):
    """The "batch" layout: one stream message per append (or per group of appends), many envelopes each.

    - Offsets are envelope offsets, kept in the message's headers (first offset and count). A replica
      claims the next offsets by publishing with ``Nats-Expected-Last-Sequence`` set to the stream's
      last sequence as it knows it; when another replica appended first the stream refuses it, and
      the replica catches up on the stream and tries again with the new offsets. So all replicas share
      one total order, and a replica has always seen every earlier message when its own is accepted.
    - De-duplication: every replica follows the whole stream and keeps an index of ids to offsets
      (``gateway.id_index``: the newest in memory, older ones in files of its own, rebuilt from the
      stream after its watermark). Because of the check above the index is complete when a message is
      accepted, so a repeated id is found whichever replica stored it, however long ago (within
      retention). ``Nats-Msg-Id`` (this replica's run, first offset, hash of the ids) makes a message
      re-sent after a lost acknowledgement a no-op; the follower recognises this replica's own messages.
    - Reading an offset below the memory cache finds the message holding it by bisecting sequences on
      the header's first offset.
    """

    def __init__(self, settings: JetStreamSettings, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        if settings.index_dir is None:
            raise ValueError("the batch layout needs index_dir (the node's log.data_dir) for its id index")
        self._token = secrets.token_hex(8)  # this replica's run, at the head of its message ids
        self._index = IdIndex(settings.index_dir / f"{settings.stream}-ids")
        self._index_on_disk = False
        self._first_seq = 1
        self._last_seq = 0  # the last stream sequence the follower has applied
        self._w_seq = 0  # the writer's view of the stream's last sequence (its accepted messages included)
        self._w_next = 1
        self._overlay: dict[str, int] = {}  # ids of the writer's accepted messages not yet followed
        self._sending = ""  # the message id the writer is publishing
        self._sending_seq = 0  # its sequence, once the follower has seen it stored
        self._hints: dict[int, int] = {}  # offset -> sequence of the message that begins there
        self._remembered = 0
        self._prefetched: dict[int, _Prefetch] = {}  # by id of the append's future

    # -- lifecycle ------------------------------------------------------------------------------

    async def start_helpers(self) -> None:
        self._index.start()

    async def _start(self) -> None:
        await self._connect()
        info = await self._while_cluster_recovers(self._ensure_stream, "stream")
        self._kv = await self._while_cluster_recovers(self._ensure_positions, "positions bucket")
        watermark = await asyncio.to_thread(self._index.open)
        self._index_on_disk = watermark > 1
        state = info.state
        self._messages, self._bytes = state.messages, state.bytes
        start_seq = await self._while_cluster_recovers(
            lambda: self._where_to_follow_from(state, watermark), "stream head"
        )
        self._last_seq = start_seq - 1
        target = state.last_seq
        await self._follow_from(start_seq)
        while self._last_seq < target:  # the id index is complete only once the stream is followed
            seen = self._last_seq
            await self.wait_beyond(self._next, 1.0)
            if self._last_seq == seen and await self._expired_up_to(target):
                break
        self._w_seq, self._w_next = self._last_seq, self._next
        self._run_loops(layout="batch", replayed_from_seq=start_seq)

    async def _expired_up_to(self, target: int) -> bool:
        """Whether retention removed the stream's messages up to ``target`` while this replica started
        (then nothing more up to it will come)."""
        js = self._js
        assert js is not None
        try:
            state = (await js.stream_info(self.settings.stream)).state
        except (nats.errors.Error, TimeoutError):
            return False
        if state.messages and state.first_seq <= target:
            return False
        self._last_seq = max(self._last_seq, target)
        self._next = max(self._next, self._remembered)
        return True

    async def _where_to_follow_from(self, state: jsapi.StreamState, watermark: int) -> int:
        """Sets where the log begins and ends; returns the sequence to follow from: the message holding the
        id index's watermark (the index lacks what follows it), or the stream's first."""
        start_seq = state.last_seq + 1
        if state.messages:
            self._first_seq, self._last_seq = state.first_seq, state.last_seq
            first = await self._batch_at_seq(state.first_seq)
            self._oldest = self._next = first.first_offset if first is not None else 1
            start_seq = state.first_seq
            if watermark > self._oldest:
                found = await self._seq_holding(watermark)
                replay = await self._batch_at_seq(found) if found is not None else None
                if found is not None and replay is not None:
                    start_seq, self._next = found, replay.first_offset
        else:
            # An empty stream: the log goes on where it ended (retention may have emptied it), or starts
            # at first_seq (a migrated log keeps its offsets).
            self._oldest = self._next = max(self.first_seq, await self._load_remembered_next())
        return start_seq

    async def close(self) -> None:
        if self._closed:
            return
        # Waited for, not cancelled: a look-up runs in a thread.
        await asyncio.gather(*(task for task, _ in self._prefetched.values()), return_exceptions=True)
        self._prefetched.clear()
        await super().close()

    async def _disconnect(self) -> None:
        await super()._disconnect()
        await asyncio.to_thread(self._index.close)

    # -- following the stream ----------------------------------------------------------------------

    def _decode(self, headers: dict[str, str], payload: bytes, seq: int) -> StoredBatch:
        try:
            first = int(headers[BATCH_OFFSET])
        except (KeyError, ValueError):
            raise LogCorruptError(f"stream message {seq} has no {BATCH_OFFSET} header") from None
        stamp, ids, records, envelopes = unpack_batch(payload)
        data, ends = encode_deliveries(first, envelopes, hop_suffix(self.node_id, stamp), stamp)
        return StoredBatch(first, stamp, records, ends, data, ids)

    async def _on_message(self, msg: Msg) -> None:
        seq = stream_sequence(msg)
        if seq <= self._last_seq or self._closed:
            return  # an ordered consumer's reset may repeat some
        headers = msg.headers or {}
        try:
            batch = self._decode(headers, msg.data, seq)
        except LogCorruptError as exc:
            log.error("jetstream_message_unreadable", stream=self.settings.stream, seq=seq, error=str(exc))
            self._last_seq = seq
            return
        self._apply(seq, headers.get(MSG_ID, ""), batch, len(msg.data))

    def _apply(self, seq: int, msg_id: str, batch: StoredBatch, size: int) -> None:
        """Takes one followed message: cache, id index, offsets; then wakes the waiters."""
        self._last_seq = seq
        if batch.first_offset != self._next and self._messages:
            log.error(
                "jetstream_offset_gap",
                stream=self.settings.stream,
                seq=seq,
                expected=self._next,
                got=batch.first_offset,
            )
        if msg_id and msg_id == self._sending:
            self._sending_seq = seq
        if not batch.count:
            return
        if self._next == self._oldest:
            self._oldest = batch.first_offset
        self._cache.add(batch)
        self._messages += 1
        self._bytes += size
        self._next = max(self._next, batch.next_offset)
        hot, first = self._index.hot, batch.first_offset
        collided: dict[str, int] = {}
        for k, envelope_id in enumerate(batch.ids):
            h = id_hash(envelope_id)
            if h in hot:
                collided[envelope_id] = first + k
            else:
                hot[h] = first + k
        if collided:
            self._index.add((), collided)
        self._index.maybe_flush(self._next)
        if self._index.hot is not hot:
            self._index_on_disk = True  # a chunk went to the on-disk index
        self._cache.trim(self._oldest)
        if self.on_commit is not None:
            self.on_commit(batch.count, 1)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _take_state(self, state: jsapi.StreamState) -> None:
        """Takes where the stream begins (a message holds a batch: its first offset is read from the
        first message) and its size, and remembers where the log ends."""
        self._messages, self._bytes = state.messages, state.bytes
        if not state.messages:
            self._oldest = self._next
        elif state.first_seq != self._first_seq:
            first = await self._batch_at_seq(state.first_seq)
            if first is not None:
                self._first_seq, self._oldest = state.first_seq, max(self._oldest, first.first_offset)
                self._cache.trim(self._oldest)
                self._index.forget_before(self._oldest)
        if self._next > self._remembered:
            await self._remember_next(self._next)

    async def _load_remembered_next(self) -> int:
        kv = self._kv
        assert kv is not None
        try:
            entry = await kv.get(_NEXT_KEY)
        except nats.js.errors.KeyNotFoundError:
            return 0
        self._remembered = int(entry.value or b"0")
        return self._remembered

    async def _remember_next(self, next_offset: int) -> None:
        """Keeps the log's end in the positions bucket (compare-and-set, never backwards): an empty
        stream (all expired) cannot tell it, and offsets must never be given out twice."""
        kv = self._kv
        assert kv is not None
        while True:
            try:
                entry = await kv.get(_NEXT_KEY)
                current, revision = int(entry.value or b"0"), entry.revision
            except nats.js.errors.KeyNotFoundError:
                current, revision = 0, None
            if current >= next_offset:
                self._remembered = current
                return
            try:
                if revision is None:
                    await kv.create(_NEXT_KEY, str(next_offset).encode())
                else:
                    await kv.update(_NEXT_KEY, str(next_offset).encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            self._remembered = next_offset
            return

    # -- appending ------------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        """Writes queued appends in groups, one stream message at a time (call order kept)."""
        stopping = False
        while not stopping:
            item = await self._queue.get()
            if item is None:
                return
            items = [item]
            size = sum(map(len, item[0].envelopes))
            while size < _GROUP_BYTES and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stopping = True
                    break
                items.append(more)
                size += sum(map(len, more[0].envelopes))
            group = self._group_of(items)
            try:
                await self._write(group)
            except LogClosedError as exc:
                self._fail(group, exc)
                continue
            except (nats.errors.Error, OSError, LogCorruptError) as exc:
                self._fail(group, LogClosedError(f"log write failed: {exc}"))
                continue
            for append in group:
                task = asyncio.create_task(self._settle_group_append(append), name="jetstream-log-settle")
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)

    @staticmethod
    def _fail(group: list[_GroupAppend], exc: LogClosedError) -> None:
        for append in group:
            if not append.future.done():
                append.future.set_exception(exc)

    def append_nowait(self, batch: AppendBatch, appended_ns: int = 0) -> asyncio.Future[AppendResult]:
        """As ``Log.append_nowait``; once ids live on disk, their look-up starts now, while earlier appends
        are written."""
        future = super().append_nowait(batch, appended_ns)
        if self._index_on_disk and batch.ids and not future.done():
            if batch.hashes is None or len(batch.hashes) != len(batch.ids):
                batch.hashes = id_hashes(batch.ids)
            task = asyncio.create_task(self._disk_candidates(batch.hashes), name="jetstream-log-prefetch")
            self._prefetched[id(future)] = (task, self._index.hot)
        return future

    def _group_of(self, items: list[tuple[AppendBatch, asyncio.Future[AppendResult], int]]) -> list[_GroupAppend]:
        """The appends of one write; a repeated id (in one append or across them) points at its first."""
        stamp = max(time.time_ns(), self._last_stamp + 1)
        self._last_stamp = stamp
        first_of: dict[str, tuple[_GroupAppend, int]] = {}
        group: list[_GroupAppend] = []
        for batch, future, appended_ns in items:
            hashes = batch.hashes if batch.hashes is not None and len(batch.hashes) == len(batch.ids) else None
            append = _GroupAppend(
                batch, future, appended_ns or stamp, hashes or id_hashes(batch.ids), [0] * len(batch.ids)
            )
            append.prefetch = self._prefetched.pop(id(future), None)
            for i, envelope_id in enumerate(batch.ids):
                earlier = first_of.setdefault(envelope_id, (append, i))
                if earlier[0] is append and earlier[1] == i:
                    append.todo.append(i)
                else:
                    append.repeats[i] = earlier
            group.append(append)
        return group

    async def _write(self, group: list[_GroupAppend]) -> None:
        """Places every new id of the group in the stream; those already there keep their offsets."""
        while any(a.todo for a in group):
            await self._dedupe(group)
            moved = False
            for stamp, parts in self._messages_of(group):
                if not await self._send(stamp, parts):
                    moved = True
                    break
            if not moved:
                return

    async def _dedupe(self, group: list[_GroupAppend]) -> None:
        if self._last_seq >= self._w_seq:
            self._overlay.clear()
        wanted = [(a, i) for a in group for i in a.todo]
        disk: dict[int, list[int]] | None = None
        if self._index_on_disk:
            disk = {}
            missing: list[int] = []
            for a in group:
                prefetch, a.prefetch = a.prefetch, None
                if not a.todo:
                    continue
                earlier = await prefetch[0] if prefetch is not None else None
                if earlier is not None and prefetch is not None and prefetch[1] is self._index.hot:
                    for h, offsets in earlier.items():
                        disk.setdefault(h, []).extend(offsets)
                else:  # none, or ids moved from memory to disk since: look again
                    missing += [a.hashes[i] for i in a.todo]
            if missing:
                for h, offsets in (await self._disk_candidates(missing)).items():
                    disk.setdefault(h, []).extend(offsets)
        if not wanted:
            return
        found = await self._lookup([a.batch.ids[i] for a, i in wanted], [a.hashes[i] for a, i in wanted], disk)
        for a, i in wanted:
            hit = found.get(a.batch.ids[i])
            if hit is not None:
                a.offsets[i] = hit[0]
                a.duplicates.add(i)
        for a in group:
            a.todo = [i for i in a.todo if not a.offsets[i]]

    def _messages_of(self, group: list[_GroupAppend]) -> list[tuple[int, list[tuple[_GroupAppend, int]]]]:
        """The group's new envelopes as messages: one append time each, within the server's payload limit."""
        nc = self._nc
        assert nc is not None
        room = max(64 << 10, int(nc.max_payload * 0.9) - 4096)
        out: list[tuple[int, list[tuple[_GroupAppend, int]]]] = []
        parts: list[tuple[_GroupAppend, int]] = []
        stamp, size = 0, 0
        for a in group:
            for i in a.todo:
                need = len(a.batch.envelopes[i]) + len(a.batch.ids[i]) + RECORD.size + 9
                if parts and (a.stamp != stamp or size + need > room):
                    out.append((stamp, parts))
                    parts, size = [], 0
                stamp = a.stamp
                parts.append((a, i))
                size += need
        if parts:
            out.append((stamp, parts))
        return out

    async def _send(self, stamp: int, parts: list[tuple[_GroupAppend, int]]) -> bool:
        """Publishes one message after the stream's last sequence as the writer knows it. False when the
        stream had moved on (another replica appended): the writer has caught up and must look again."""
        js = self._js
        assert js is not None
        first = self._w_next
        ids = [a.batch.ids[i] for a, i in parts]
        payload = pack_batch(
            stamp, ids, [a.batch.records[i] for a, i in parts], [a.batch.envelopes[i] for a, i in parts]
        )
        digest = hashlib.blake2b("\n".join(ids).encode(), digest_size=12).hexdigest()
        msg_id = f"{self._token}-{first}-{digest}"
        headers = {
            MSG_ID: msg_id,
            EXPECTED_LAST_SEQUENCE: str(self._w_seq),
            BATCH_OFFSET: str(first),
            BATCH_COUNT: str(len(parts)),
        }
        self._sending, self._sending_seq = msg_id, 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.retry_for_s
        delay = 0.05
        while True:
            if self._closed:
                raise LogClosedError("the log is closed")
            try:
                ack = await js.publish(
                    self.settings.subjects, payload, timeout=self.settings.ack_timeout_s, headers=headers
                )
            except nats.js.errors.APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    await self._catch_up(exc)
                    if self._sending_seq:  # an earlier send of it was stored after all
                        self._placed(parts, first, self._sending_seq)
                    self._w_seq, self._w_next = self._last_seq, self._next
                    self._overlay.clear()
                    return False
                problem: str = f"{exc.err_code}: {exc.description}"
            except (nats.errors.Error, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            else:
                # A duplicate answer: this very message, sent before, whose answer was lost.
                self._placed(parts, first, ack.seq)
                return True
            if loop.time() > deadline:
                raise LogClosedError(f"log write failed: batch at offset {first} not acknowledged: {problem}")
            log.warning("jetstream_publish_retry", offset=first, error=problem)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not secrecy
            delay = min(delay * 2, 2.0)

    def _placed(self, parts: list[tuple[_GroupAppend, int]], first: int, seq: int) -> None:
        overlay = self._overlay
        for k, (a, i) in enumerate(parts):
            a.offsets[i] = first + k
            overlay[a.batch.ids[i]] = first + k
        for a in {id(a): a for a, _ in parts}.values():
            a.todo = [i for i in a.todo if not a.offsets[i]]
        self._w_seq, self._w_next = seq, first + len(parts)

    async def _catch_up(self, refusal: nats.js.errors.APIError) -> None:
        """Waits until the follower has applied the stream up to the last sequence a refusal named."""
        last = _wrong_last_sequence(refusal)
        if last is None:
            js = self._js
            assert js is not None
            last = (await js.stream_info(self.settings.stream)).state.last_seq
        while self._last_seq < last:
            if self._closed:
                raise LogClosedError("the log is closed")
            await self.wait_beyond(self._next, 1.0)

    async def _settle_group_append(self, append: _GroupAppend) -> None:
        for i, (earlier, j) in append.repeats.items():
            append.offsets[i] = earlier.offsets[j]
            append.duplicates.add(i)
        try:
            await self._reach(max(append.offsets) + 1)
        except LogClosedError as exc:
            if not append.future.done():
                append.future.set_exception(exc)
            return
        except asyncio.CancelledError:
            if not append.future.done():
                append.future.set_exception(LogClosedError("the log closed before the append was followed"))
            raise
        if not append.future.done():
            append.future.set_result(AppendResult(append.offsets, frozenset(append.duplicates)))

    # -- looking up ----------------------------------------------------------------------------

    async def _lookup(
        self, ids: list[str], hashes: list[int], disk: dict[int, list[int]] | None = None
    ) -> dict[str, tuple[int, StoredBatch | None]]:
        """The offset of each id already in the log (and the batch holding it when it was read);
        ``disk``: the on-disk index's candidates for these hashes, when already looked up."""
        out: dict[str, tuple[int, StoredBatch | None]] = {}
        overlay, hot, collided = self._overlay, self._index.hot, self._index.collided
        candidates: dict[str, list[int]] = {}
        unsure: list[int] = []
        for envelope_id, h in zip(ids, hashes, strict=True):
            at = overlay.get(envelope_id)
            if at is not None:
                out[envelope_id] = (at, None)
                continue
            at = hot.get(h)
            if at is not None:
                candidates.setdefault(envelope_id, []).append(at)
            at = collided.get(envelope_id)
            if at is not None:
                candidates.setdefault(envelope_id, []).append(at)
            if self._index_on_disk and disk is None:
                unsure.append(h)
        if unsure:
            disk = await self._disk_candidates(unsure)
        if disk:
            wanted = {h: envelope_id for envelope_id, h in zip(ids, hashes, strict=True)}
            for h, offsets in disk.items():
                owner = wanted.get(h)
                if owner is not None:
                    candidates.setdefault(owner, []).extend(offsets)
        for envelope_id, offsets in candidates.items():
            for offset in dict.fromkeys(offsets):
                if offset < self._oldest or offset >= self._next:
                    continue
                batch = await self._batch_holding(offset)
                if batch is not None and batch.ids[offset - batch.first_offset] == envelope_id:
                    out[envelope_id] = (offset, batch)
                    break
        return out

    async def _disk_candidates(self, hashes: list[int]) -> dict[int, list[int]]:
        return await asyncio.to_thread(self._index.candidates, hashes)

    async def _batch_at_seq(self, seq: int) -> StoredBatch | None:
        """The batch in stream message ``seq``, asked of the stream leader; None if it is gone."""
        js = self._js
        assert js is not None
        if self._closed:
            raise LogClosedError("the log is closed")
        try:
            raw = await js.get_msg(self.settings.stream, seq=seq)
        except nats.js.errors.NotFoundError:
            return None
        if raw.seq is None:
            return None
        return self._decode(raw.headers or {}, raw.data or b"", raw.seq)

    async def _seq_holding(self, offset: int) -> int | None:
        """The sequence of the message holding ``offset``: bisection on the messages' first offsets."""
        hinted = self._hints.get(offset)
        if hinted is not None:
            return hinted
        lo, hi = self._first_seq, self._last_seq
        while lo <= hi:
            mid = (lo + hi) // 2
            batch = await self._batch_at_seq(mid)
            if batch is None:  # removed by retention meanwhile
                lo = mid + 1
            elif offset < batch.first_offset:
                hi = mid - 1
            elif offset >= batch.next_offset:
                lo = mid + 1
            else:
                return mid
        return None

    def _hint(self, offset: int, seq: int) -> None:
        if len(self._hints) >= _HINTS:
            self._hints.clear()
        self._hints[offset] = seq

    async def _batch_holding(self, offset: int) -> StoredBatch | None:
        cached = self._cache.holding(offset)
        if cached is not None:
            return cached
        seq = await self._seq_holding(offset)
        return await self._batch_at_seq(seq) if seq is not None else None

    # -- reading --------------------------------------------------------------------------------

    async def _read_stored(self, from_offset: int, max_entries: int) -> list[StoredBatch]:
        seq = await self._seq_holding(from_offset)
        out: list[StoredBatch] = []
        entries = 0
        while seq is not None and seq <= self._last_seq and entries < max_entries:
            batch = await self._batch_at_seq(seq)
            if batch is None:
                break
            out.append(batch)
            entries += batch.next_offset - max(from_offset, batch.first_offset)
            seq += 1
            self._hint(batch.next_offset, seq)
            if self._cache.firsts and batch.next_offset >= self._cache.firsts[0]:
                break  # the rest is in memory
        return out

    async def find(self, ids: list[str]) -> dict[str, tuple[StoredBatch, int]]:
        if self._closed:
            raise LogClosedError("the log is closed")
        unique = list(dict.fromkeys(ids))
        found: dict[str, tuple[StoredBatch, int]] = {}
        for envelope_id, (offset, known) in (await self._lookup(unique, id_hashes(unique))).items():
            if offset >= self._next:
                continue  # accepted, not yet followed
            batch = known if known is not None else await self._batch_holding(offset)
            if batch is not None:
                found[envelope_id] = (batch, offset - batch.first_offset)
        return found

    async def offset_at(self, ns: int) -> int:
        """Bisection by append time, over the cached batches, then over the stream's messages."""
        batches = self._cache.batches
        if batches and batches[0].appended_ns < ns:
            k = bisect.bisect_left(batches, ns, key=lambda b: b.appended_ns)
            return batches[k].first_offset if k < len(batches) else self._next
        lo, hi = self._first_seq, self._last_seq + 1
        while lo < hi:
            mid = (lo + hi) // 2
            batch = await self._batch_at_seq(mid)
            if batch is not None and batch.appended_ns >= ns:
                hi = mid
            else:
                lo = mid + 1
        if lo > self._last_seq:
            return self._next
        batch = await self._batch_at_seq(lo)
        return batch.first_offset if batch is not None else self._oldest


def settings_from_config(config: NodeConfig) -> JetStreamSettings:
    """The JetStream settings of a node's ``[log]`` and ``[log.jetstream]`` (checked at load)."""
    section = config.log.jetstream

    def path(value: str) -> Path | None:
        return config.path(value) if value else None

    return JetStreamSettings(
        servers=tuple(section.servers),
        stream=section.stream,
        replicas=section.replicas,
        duplicate_window_s=section.duplicate_window_s,
        max_age_s=config.log.retention_hours * 3600.0,
        max_bytes=parse_size(config.log.retention_bytes, "log.retention_bytes", config.source),
        credentials=path(section.credentials),
        tls_ca=path(section.tls_ca),
        tls_cert=path(section.tls_cert),
        tls_key=path(section.tls_key),
        layout=section.layout,
        index_dir=config.data_dir,
    )


@dataclass(frozen=True, slots=True)
class MigrationReport:
    copied: int
    already_there: int
    positions: int
    next_offset: int


def split_delivery(entry: bytes, suffix: bytes) -> bytes:
    """The envelope as received from one stored ``Delivery`` entry (its node's own hop removed)."""
    _, at = read_varint(entry, 1)  # the DeliveryBatch field: tag byte, then the entry's length
    envelope: bytes | None = None
    while at < len(entry):
        tag, at = read_varint(entry, at)
        if tag & 7 == 0:
            _, at = read_varint(entry, at)
        elif tag & 7 == 2:
            size, at = read_varint(entry, at)
            if tag >> 3 == 2:
                envelope = entry[at : at + size]
            at += size
        else:
            raise LogCorruptError(f"unexpected wire type in a stored delivery (tag {tag})")
    if envelope is None:
        raise LogCorruptError("a stored delivery without its envelope")
    return envelope[: -len(suffix)] if suffix and envelope.endswith(suffix) else envelope


async def migrate_from_embedded(
    source: SqliteLog, target: JetStreamLog, positions: dict[str, int], *, page: int = 2000
) -> MigrationReport:
    """Copies the embedded log into the stream: same ids, order, offsets, append times and positions.

    Re-running it copies only what is missing (the stream already refuses ids it holds). Every other
    writer must be stopped meanwhile: offsets stay equal only while this is the stream's only writer.
    """
    stream = target.settings.stream
    if source.next_offset > source.oldest_offset:
        empty = target.stats().batches == 0
        if empty and target.next_offset != source.oldest_offset:
            raise LogCorruptError(
                f"stream {stream} is empty but starts at sequence {target.next_offset}, the log at offset "
                f"{source.oldest_offset}: delete the stream and migrate again"
            )
        if not empty and target.next_offset < source.oldest_offset:
            raise LogCorruptError(
                f"stream {stream} ends at {target.next_offset - 1}, before the log's oldest offset "
                f"{source.oldest_offset}: it is not a copy of this log"
            )
    position = max(target.next_offset, source.oldest_offset)
    copied = already = 0
    while position < source.next_offset:
        for stored in await source.read(position, page):
            start = stored.index_at(position)
            if start >= stored.count:
                continue
            suffix = hop_suffix(source.node_id, stored.appended_ns)
            batch = AppendBatch()
            width = RECORD.size
            for i in range(start, stored.count):
                record = stored.records[i * width : (i + 1) * width]
                batch.add(stored.ids[i], split_delivery(stored.entry(i), suffix), record)
            batch.signatures = stored.signatures  # the stream gives each envelope its full signature
            result = await target.append_nowait(batch, stored.appended_ns)
            expected = list(range(stored.first_offset + start, stored.next_offset))
            if result.offsets != expected:
                raise LogCorruptError(
                    f"stream {stream} stored offsets {result.offsets[0]}..{result.offsets[-1]} "
                    f"for the log's {expected[0]}..{expected[-1]} (was something else appending?)"
                )
            already += len(result.duplicates)
            copied += len(expected) - len(result.duplicates)
            position = stored.next_offset
    for name, offset in positions.items():
        await target.save_position(name, offset)
    return MigrationReport(copied, already, len(positions), target.next_offset)


def embedded_positions(path: Path) -> dict[str, int]:
    """The durable subscription positions kept in an embedded log file (read-only)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name: int(offset) for name, offset in con.execute("SELECT name, next_offset FROM positions")}
    finally:
        con.close()


async def migrate_node_log(config: NodeConfig) -> MigrationReport:
    """``yiwang log migrate``: the node's embedded log (in ``log.data_dir``) into its ``[log.jetstream]`` stream."""
    path = config.data_dir / "log.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no embedded log at {path} (log.data_dir of {config.source})")
    positions = await asyncio.to_thread(embedded_positions, path)
    # No retention while copying: the copy must see the log as it is now.
    source = await SqliteLog.open(path, node_id=config.node.id, fsync=config.log.fsync, retention=Retention(0, 0))
    try:
        target = await JetStreamLog.open(
            settings_from_config(config), node_id=config.node.id, first_seq=source.oldest_offset
        )
        try:
            return await migrate_from_embedded(source, target, positions)
        finally:
            await target.close()
    finally:
        await source.close()
