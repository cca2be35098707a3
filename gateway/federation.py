"""Federation: the links between a node and its parent, store-and-forward in both directions.

A child node opens one bidirectional ``Federation.Link`` stream to its parent and keeps it up with
jittered backoff. Each end sends what its routing sends to the other, read from a durable cursor in
its own log (``federation/up`` on the child, ``federation/down/<child>`` on the parent), and moves
that cursor only when the other end has acknowledged the batch, which it does after its own durable
append. After an outage of any length within retention the sender resumes at its cursor: a batch
sent twice is harmless because every node de-duplicates by envelope id, and each node adds a hop
record, so nothing is sent back to the node it came from.

Identities come from the certificates: the parent accepts only a gateway of one of its direct
subregions (a county links under its own city only), the child only the parent its configuration
names. What the child accepts from above is what routing sends down (warnings, commands and
resource requests for its region, or for a region that covers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import structlog
from cryptography import x509
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry, Counter, Gauge
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import federation_pb2 as fed
from yiwang.v1 import gateway_pb2 as gw

from gateway.admission import Admitted
from gateway.config import ParentSection, parse_address
from gateway.errors import YiwangError
from gateway.log import AppendResult, StoredBatch
from gateway.pki import Identity, PkiError, Role
from gateway.policy import Decision
from gateway.regions import level_of
from gateway.routing import Routing, concerns
from gateway.selection import FLAG_UNSIGNED, FLAGS_AT, RECORD
from gateway.service import GatewayService, Peer
from gateway.tls import ClientTls
from gateway.wire import delivery_envelope, length_delimited, read_varint, varint

log = structlog.get_logger("yiwang.federation")

SERVICE: Final = "yiwang.v1.Federation"
LINK_METHOD: Final = f"/{SERVICE}/Link"
WINDOW: Final = 8  # batches sent and not yet acknowledged, per direction of a link
MAX_BATCH_BYTES: Final = 4 << 20  # stays well inside the gRPC message limit
MAX_RETRY_S: Final = 30.0  # the child's longest pause between attempts to link (before jitter)
JITTER: Final = 0.5  # each pause is its nominal length times 1 ± this
UP_CURSOR: Final = "federation/up"  # the link up's position in the child's log


class FederationError(YiwangError):
    """A link cannot be used: the other end is not who it must be, or it broke the link protocol."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class FederationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge("yiwang_federation_link_up", "1 while the link is connected", ["link"], registry=registry)
        self.sent = Counter(
            "yiwang_federation_sent", "Envelopes sent over the link (resends included)", ["link"], registry=registry
        )
        self.received = Counter(
            "yiwang_federation_received", "Envelopes received over the link", ["link", "outcome"], registry=registry
        )
        self.refused = Counter(
            "yiwang_federation_refused", "Envelopes the other end refused (kept here)", ["link"], registry=registry
        )
        self.connects = Counter("yiwang_federation_connects", "Link sessions opened", ["link"], registry=registry)


class LinkEnd:
    """One end of a live link: sends its routed envelopes from its cursor, appends and acknowledges
    what the other end sends."""

    def __init__(
        self,
        service: GatewayService,
        *,
        label: str,
        peer: Peer,
        peer_node: str,
        cursor: str,
        kinds: frozenset[int],
        routes: Callable[[pb.Envelope], bool],
        accept: Callable[[int, str, str], Decision] | None,
        batch: int,
        metrics: FederationMetrics,
        chain: Callable[[str, int], Awaitable[list[str]]] | None = None,
        by_record: Callable[[int, int], bool | None] | None = None,
    ) -> None:
        self.service = service
        self.chain = chain  # the earlier reports of an incident (gateway.reports), for a link up
        self.label = label
        self.peer = peer
        self.peer_node = peer_node
        self.cursor = cursor
        self.kinds = kinds
        self.routes = routes
        # routing decided from the kind and severity of the selection record, where that settles it
        self.by_record = by_record
        self._peer_bytes = peer_node.encode()
        self.accept = accept
        self.batch = batch
        self.metrics = metrics
        self.out: asyncio.Queue[bytes] = asyncio.Queue()
        self._pending: deque[tuple[int, bool]] = deque()  # (cursor after a range, whether a batch was sent)
        self._room = asyncio.Semaphore(WINDOW)
        # What the other end sent, in its order: appends queued and not yet durable (with what admission
        # made of each batch), or the encoded acknowledgement of a batch refused whole.
        self._unacked: asyncio.Queue[tuple[Admitted, Awaitable[AppendResult]] | bytes] = asyncio.Queue(WINDOW)
        self._certificates_sent: set[bytes] = set()
        self.acked: int | None = None  # the log offset up to which the other end has it (or it was not for it)
        self._cursor_to = 0  # where the cursor was moved (_move_cursor), saved by save_cursor
        self._entries = _Entries()  # log entries gathered for the next LinkEntries message
        self._cursor_moved = asyncio.Event()

    # -- sending --------------------------------------------------------------------------------

    async def pump(self) -> None:
        """Sends the routed envelopes from the cursor on, then follows the log."""
        log_ = self.service.log
        position = await log_.load_position(self.cursor)
        if position is None:
            position = log_.oldest_offset  # a new link carries everything its node still holds
        self.acked = position
        while True:
            if position >= log_.next_offset:
                await self._flush_entries()  # caught up: what was gathered goes now
                await log_.wait_beyond(position, timeout=5.0)
                if log_.closed:
                    return
                continue
            for stored in await log_.read(position, self.batch):
                start = stored.index_at(position)
                if self._sends_whole(stored, start):
                    await self._send_entries(stored, start)
                    position = stored.next_offset
                    continue
                await self._flush_entries()
                chosen: list[int] = []
                size = 0
                records, width, kinds = stored.records, RECORD.size, self.kinds
                for index in range(start, stored.count):
                    if records[index * width] not in kinds:  # the record's first byte is the kind
                        continue
                    chosen.append(index)
                    begin, end = stored.span(index)
                    size += end - begin
                    if len(chosen) >= self.batch or size >= MAX_BATCH_BYTES:
                        await self._send(stored, chosen, stored.first_offset + index + 1)
                        chosen, size = [], 0
                position = stored.next_offset
                await self._send(stored, chosen, position)

    def _sends_whole(self, stored: StoredBatch, start: int) -> bool:
        """Whether routing sends every entry of ``stored`` from ``start`` on, as stored, settled from
        the records alone: kinds and severities that routing sends without reading the envelope,
        all unsigned (no certificate to send along), no incident while report chains are kept
        (an incident may take its earlier reports along), and none that went through the other end.
        Each of these is decided once per distinct value in the range, not per entry."""
        if self.by_record is None or start >= stored.count:
            return False
        width = RECORD.size
        records = stored.records[start * width :]
        kinds = set(records[0::width])
        if not kinds <= self.kinds or (self.chain is not None and pb.INCIDENT in kinds):
            return False
        if any(not flags & FLAG_UNSIGNED for flags in set(records[FLAGS_AT::width])):
            return False
        pairs = set(zip(records[0::width], records[1::width], strict=True))
        if not all(self.by_record(kind, severity) is True for kind, severity in pairs):
            return False
        begin = stored.ends[start - 1] if start else 0
        return stored.data.find(self._peer_bytes, begin) < 0  # a hop record names every node it went through

    async def _send_entries(self, stored: StoredBatch, start: int) -> None:
        """Gathers the entries of ``stored`` from ``start`` on, as they are stored, into the message
        for the other end (``LinkEntries``), sending it each time it is full: ``batch`` entries or
        ``MAX_BATCH_BYTES`` (an entry larger than that goes alone). Ranges that follow each other in
        the log go together, so a backlog of small appends costs the two ends their per-message work
        once per full message; the pump sends what is gathered once it has caught up with the log."""
        gathered = self._entries
        ends, width = stored.ends, RECORD.size
        first = start
        while first < stored.count:
            begin = ends[first - 1] if first else 0
            stop = min(stored.count, first + self.batch - gathered.count)
            while stop > first + 1 and gathered.size + ends[stop - 1] - begin > MAX_BATCH_BYTES:
                stop = first + (stop - first) // 2
            if gathered.count and gathered.size + ends[stop - 1] - begin > MAX_BATCH_BYTES:
                await self._flush_entries()  # not one more entry fits
                gathered = self._entries
                continue
            gathered.data.append(stored.data[begin : ends[stop - 1]])
            gathered.records.append(stored.records[first * width : stop * width])
            gathered.count += stop - first
            gathered.size += ends[stop - 1] - begin
            gathered.upto = stored.first_offset + stop
            first = stop
            if gathered.count >= self.batch:
                await self._flush_entries()
                gathered = self._entries

    async def _flush_entries(self) -> None:
        """Sends the entries gathered by ``_send_entries``, if any."""
        gathered = self._entries
        if not gathered.count:
            return
        self._entries = _Entries()
        await self._put_in_flight(gathered.message(), gathered.upto, gathered.count)

    async def _put_in_flight(self, message: bytes, upto: int, count: int) -> None:
        """Sends a batch of ``count`` envelopes that ends the range before ``upto``, once the window
        has room; its acknowledgement moves the cursor there (``on_ack``)."""
        await self._room.acquire()
        self._pending.append((upto, True))
        self.metrics.sent.labels(link=self.label).inc(count)
        await self.out.put(message)

    def came_from_peer(self, env: pb.Envelope) -> bool:
        """Whether the envelope went through the other end of this link (a hop record names it): it is
        never sent back there."""
        return any(hop.node == self.peer_node for hop in env.provenance.hops)

    async def _send(self, stored: StoredBatch, chosen: list[int], upto: int) -> None:
        """Sends the entries at ``chosen`` that routing sends over this link, as the bytes they are
        stored as (each envelope's own encoding, hop records included: nothing is re-encoded)."""
        batch = _Outgoing(upto)
        records, width = stored.records, RECORD.size
        for index in chosen:
            at = index * width
            kind = records[at]
            verdict = self.by_record(kind, records[at + 1]) if self.by_record is not None else None
            if verdict is False:
                continue
            entry = stored.entry(index)
            raw = delivery_envelope(entry)
            if (
                verdict
                and raw is not None
                and records[at + FLAGS_AT] & FLAG_UNSIGNED  # no certificate to send along
                and self._peer_bytes not in raw  # a hop record names every node it went through
                and (kind != pb.INCIDENT or self.chain is None)
            ):
                batch.add(raw, records[at : at + width])  # routing, hops and signature settled without reading it
                continue
            if stored.signatures:  # a link sends each envelope with its full signature
                entry = stored.standalone_entry(index)
                raw = delivery_envelope(entry)
            delivery = gw.DeliveryBatch.FromString(entry).deliveries[0]
            env = delivery.envelope
            if (raw is None or self._peer_bytes in raw) and self.came_from_peer(env):
                continue
            if verdict is None and not self.routes(env):
                continue
            if env.kind == pb.INCIDENT and self.chain is not None:
                await self._add_earlier_reports(batch, env, delivery.offset)
            self._add(batch, env, raw or env.SerializeToString(), records[at : at + width])
        if not batch.envelopes:
            if self._pending:
                self._pending.append((upto, False))
            else:
                self._move_cursor(upto)
            return
        await self._put_in_flight(batch.message(), upto, len(batch.envelopes))

    def _add(self, batch: _Outgoing, env: pb.Envelope, raw: bytes, record: bytes) -> None:
        """Adds an envelope to a batch, with the signing certificate its signature names (once per link)."""
        sha256 = env.provenance.signature.certificate_sha256
        if sha256 and sha256 not in self._certificates_sent and self.service.certificates is not None:
            der = self.service.certificates.get(sha256)
            if der is not None:
                batch.certificates.append(der)
                self._certificates_sent.add(sha256)
        batch.add(raw, record)

    async def _add_earlier_reports(self, batch: _Outgoing, env: pb.Envelope, offset: int) -> None:
        """A follow-up that goes up (its grade was raised) takes the incident's earlier reports along,
        those that routing kept here before: the level above gets the whole chain at once."""
        assert self.chain is not None
        ids = await self.chain(env.incident.incident_id or env.id, offset)
        if not ids:
            return
        found = await self.service.log.find(ids)
        for earlier_id in ids:
            if earlier_id not in found:
                continue  # past retention
            stored, index = found[earlier_id]
            entry = stored.standalone_entry(index)
            earlier = gw.DeliveryBatch.FromString(entry).deliveries[0].envelope
            if self.routes(earlier) or self.came_from_peer(earlier):
                continue  # it went (or goes) up by itself, or came from there
            record = stored.records[index * RECORD.size : (index + 1) * RECORD.size]
            self._add(batch, earlier, delivery_envelope(entry) or earlier.SerializeToString(), record)

    async def on_ack(self, ack: fed.LinkAck) -> None:
        """The other end has a batch durably: the cursor moves past it (and past skipped ranges after it)."""
        if not self._pending or self._pending[0][0] != ack.cursor:
            expected = self._pending[0][0] if self._pending else "none"
            raise FederationError(f"acknowledgement of batch {ack.cursor}, but the batch in flight is {expected}")
        upto, _ = self._pending.popleft()
        while self._pending and not self._pending[0][1]:
            upto, _ = self._pending.popleft()
        self._room.release()
        for refused in ack.refused:
            self.metrics.refused.labels(link=self.label).inc()
            log.warning(
                "federation_refused", link=self.label, id=refused.id, field=refused.field, reason=refused.reason
            )
        self._move_cursor(upto)

    def _move_cursor(self, upto: int) -> None:
        """Moves the cursor past everything before ``upto`` (the other end has it, or it was not for
        it); ``save_cursor`` saves it."""
        self._cursor_to = upto
        self._cursor_moved.set()

    async def save_cursor(self) -> None:
        """Saves the cursor where it was moved: one save at a time, each to the latest place. Neither
        the receiver nor the pump waits for each save's commit (acknowledgements come faster than
        commits under load); a save lost in a crash only makes the link resend batches the other
        end then finds it has."""
        while True:
            await self._cursor_moved.wait()
            self._cursor_moved.clear()
            self.acked = await self.service.log.save_position(self.cursor, self._cursor_to)

    # -- receiving ------------------------------------------------------------------------------

    async def on_batch(self, raw: bytes, records: bytes = b"") -> None:
        """Appends the other end's batch (an encoded PublishRequest, with the selection records its
        sender keeps) durably, then acknowledges it."""
        try:
            service = self.service
            admitted = service.screen(
                service.admission.relay(raw, service.revocations.serials, records), self.peer, self.accept
            )
        except YiwangError as exc:  # the whole batch is refused: say so, and let the link move on
            try:
                request = gw.PublishRequest.FromString(raw)
            except DecodeError:
                raise FederationError(f"not a batch: {exc}") from None  # without its cursor, no answer
            await self._refuse(request.batch_id, len(request.envelopes), exc)
            return
        await self._store(admitted)

    async def on_entries(self, entries: fed.LinkEntries, records: bytes) -> None:
        """Appends the other end's log entries (a range it sends whole) durably, then acknowledges them."""
        service = self.service
        try:
            admitted = service.admission.relay_entries(
                entries.deliveries, entries.batch_id, service.revocations.serials, records
            )
        except YiwangError as exc:
            await self._refuse(entries.batch_id, 0, exc)
            return
        await self._store(service.screen(admitted, self.peer, self.accept))

    async def _refuse(self, cursor: int, count: int, exc: YiwangError) -> None:
        """Refuses a whole batch with the reason: the other end counts and logs it, and moves on."""
        refused = gw.PublishResult(
            id="", outcome=gw.PublishResult.REJECTED, code=exc.grpc_code.value[0], field="batch", reason=str(exc)
        )
        log.warning("federation_batch_refused", link=self.label, reason=str(exc))
        self.metrics.received.labels(link=self.label, outcome="refused").inc(count)
        await self._unacked.put(fed.LinkMessage(ack=fed.LinkAck(cursor=cursor, refused=[refused])).SerializeToString())

    async def _store(self, admitted: Admitted) -> None:
        """Queues the append of what was admitted from the other end; ``acknowledge`` answers once
        it is durable. The next batch is admitted meanwhile (appends keep their order, and so do
        the answers), so a link is not held up by each commit in turn."""
        # (Admission marked their records relayed: station summaries, for one, are made where data entered the network.)
        await self._unacked.put((admitted, self.service.append(admitted)))

    async def acknowledge(self) -> None:
        """Answers the other end's batches in the order they came, each once its append is durable."""
        try:
            while True:
                item = await self._unacked.get()
                if isinstance(item, bytes):
                    await self.out.put(item)
                else:
                    admitted, appending = item
                    await self._acknowledge(admitted, await appending)
        finally:
            # The link is gone: the appends still queued go on (the other end resends what it was not
            # answered, and de-duplication keeps one of each); their outcome is nobody's to hear now.
            while not self._unacked.empty():
                item = self._unacked.get_nowait()
                if not isinstance(item, bytes):
                    asyncio.ensure_future(item[1]).add_done_callback(_unheard)

    async def _acknowledge(self, admitted: Admitted, appended: AppendResult) -> None:
        """Acknowledges a durable batch from the other end with the counts."""
        self.service.count(admitted, appended)
        duplicates = len(appended.duplicates)
        ack = fed.LinkAck(cursor=admitted.batch_id, accepted=len(admitted.ids) - duplicates, duplicates=duplicates)
        for _, envelope_id, field_path, reason, code in admitted.rejections:
            ack.refused.add(
                id=envelope_id, outcome=gw.PublishResult.REJECTED, code=code, field=field_path, reason=reason
            )
        counts = {"accepted": ack.accepted, "duplicate": ack.duplicates, "refused": len(ack.refused)}
        for outcome, count in counts.items():
            if count:
                self.metrics.received.labels(link=self.label, outcome=outcome).inc(count)
        await self.out.put(fed.LinkMessage(ack=ack).SerializeToString())

    async def receive(self, messages: AsyncIterator[bytes]) -> None:
        """Handles the other end's messages until it closes the stream."""
        async for raw in messages:
            batch = batch_of(raw)
            if batch is not None:
                await self.on_batch(*batch)  # admitted from its bytes: not parsed here, and not re-encoded
                continue
            try:
                message = fed.LinkMessage.FromString(raw)
            except DecodeError as exc:
                raise FederationError(f"not a LinkMessage: {exc}") from None
            which = message.WhichOneof("body")
            if which == "batch":
                await self.on_batch(message.batch.SerializeToString(), message.records)
            elif which == "entries":
                await self.on_entries(message.entries, message.records)
            elif which == "ack":
                await self.on_ack(message.ack)
            else:
                raise FederationError(f"unexpected {which or 'empty'} message on an open link")


_BATCH_TAG: Final = 0x12  # LinkMessage.batch: field 2, length-delimited
_ENVELOPES_TAG: Final = b"\x0a"  # PublishRequest.envelopes: field 1, length-delimited
_BATCH_ID_TAG: Final = b"\x10"  # PublishRequest.batch_id: field 2, varint
_CERTIFICATES_TAG: Final = b"\x1a"  # PublishRequest.certificates: field 3, length-delimited
_RECORDS_TAG: Final = b"\x22"  # LinkMessage.records: field 4, length-delimited
_ENTRIES_TAG: Final = b"\x2a"  # LinkMessage.entries: field 5, length-delimited
_ENTRIES_BATCH_ID_TAG: Final = b"\x08"  # LinkEntries.batch_id: field 1, varint
_DELIVERIES_TAG: Final = b"\x12"  # LinkEntries.deliveries: field 2, length-delimited


class _Entries:
    """Consecutive log entries gathered for one LinkEntries message: their bytes and records in
    pieces, how many, their size, and the offset after the last."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.records: list[bytes] = []
        self.count = 0
        self.size = 0
        self.upto = 0

    def message(self) -> bytes:
        """The LinkMessage (records = 4, entries = 5: LinkEntries with batch_id = 1, deliveries = 2),
        written out by hand in one join: through the generated classes, the entries' bytes are
        copied twice more, which costs the sender more than the rest of a batch's handling."""
        records = b"".join(self.records)
        head = _ENTRIES_BATCH_ID_TAG + varint(self.upto) + _DELIVERIES_TAG + varint(self.size)
        parts = [length_delimited(_RECORDS_TAG, records)] if records else []
        parts += [_ENTRIES_TAG, varint(len(head) + self.size), head, *self.data]
        return b"".join(parts)


class _Outgoing:
    """A batch for the other end, assembled from encoded envelopes: a LinkMessage holding a
    PublishRequest (envelopes = 1, batch_id = 2, certificates = 3) and the envelopes' selection
    records (LinkMessage.records = 4), written out by hand."""

    def __init__(self, upto: int) -> None:
        self.upto = upto
        self.envelopes: list[bytes] = []
        self.records: list[bytes] = []
        self.certificates: list[bytes] = []

    def add(self, envelope: bytes, record: bytes) -> None:
        self.envelopes.append(envelope)
        self.records.append(record)

    def message(self) -> bytes:
        parts = [length_delimited(_ENVELOPES_TAG, raw) for raw in self.envelopes]
        parts.append(_BATCH_ID_TAG + varint(self.upto))
        parts += (length_delimited(_CERTIFICATES_TAG, der) for der in self.certificates)
        request = b"".join(parts)
        return length_delimited(bytes((_BATCH_TAG,)), request) + length_delimited(_RECORDS_TAG, b"".join(self.records))


def batch_of(raw: bytes) -> tuple[bytes, bytes] | None:
    """The encoded PublishRequest of a LinkMessage that holds a batch (and perhaps its records) as
    every sender writes them, cut from its bytes, with the records; None for anything else, which
    is then parsed in full."""
    if not raw or raw[0] != _BATCH_TAG:
        return None
    try:
        size, start = read_varint(raw, 1)
        end = start + size
        if end == len(raw):
            return raw[start:end], b""
        if end > len(raw) or raw[end] != _RECORDS_TAG[0]:
            return None
        records_size, records_start = read_varint(raw, end + 1)
    except ValueError:
        return None
    if records_start + records_size != len(raw):
        return None
    return raw[start:end], raw[records_start:]


async def run_link(end: LinkEnd, messages: AsyncIterator[bytes], write: Callable[[bytes], Any]) -> None:
    """Runs a link's parts (pump, receiver, acknowledger, cursor saver, writer) until one ends; the
    others are cancelled."""

    async def writer() -> None:
        while True:
            await write(await end.out.get())

    async def receiver() -> None:
        await end.receive(messages)

    tasks = [
        asyncio.create_task(end.pump(), name=f"link-pump-{end.label}"),
        asyncio.create_task(receiver(), name=f"link-receive-{end.label}"),
        asyncio.create_task(end.acknowledge(), name=f"link-acknowledge-{end.label}"),
        asyncio.create_task(end.save_cursor(), name=f"link-cursor-{end.label}"),
        asyncio.create_task(writer(), name=f"link-write-{end.label}"),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # raises what ended it
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, FederationError, YiwangError):
                await task


def _unheard(appending: asyncio.Future[AppendResult]) -> None:
    """Retrieves the outcome of an append whose link is gone (a failed one is logged by the log itself)."""
    if not appending.cancelled():
        appending.exception()


def hello(service: GatewayService) -> bytes:
    said = fed.LinkHello(
        node_id=service.node_id, region=service.region, max_batch_envelopes=service.limits.max_batch_envelopes
    )
    return fed.LinkMessage(hello=said).SerializeToString()


def batch_for(configured: int, other_end: fed.LinkHello) -> int:
    """The most envelopes per batch on a link: the node's own setting, or fewer if that is all the
    other end takes (it would refuse a larger batch whole)."""
    takes = other_end.max_batch_envelopes
    return min(configured, takes) if takes else configured


def first_hello(raw: bytes | None) -> fed.LinkHello:
    if raw is None:
        raise FederationError("the link closed before the other end said who it is")
    try:
        message = fed.LinkMessage.FromString(raw)
    except DecodeError as exc:
        raise FederationError(f"not a LinkMessage: {exc}") from None
    if message.WhichOneof("body") != "hello":
        raise FederationError("a link starts with a hello")
    return message.hello


# -- the parent's end -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkView:
    """A link as it stands now, for those who show the network's health (read-only)."""

    name: str  # "up" for the parent link, the child's node id for a child's
    kind: str  # "parent" or "child"
    up: bool
    peer: str  # the parent's address, or the child's node id
    cursor: str  # the name of the log position the link has sent up to
    acked: int | None  # the log offset up to which the other end has everything for it; None: not known yet
    down_since: float | None  # when it went down (monotonic); None while up or never up


class FederationService:
    """The parent's side: serves the links its children open."""

    def __init__(
        self, service: GatewayService, routing: Routing, metrics: FederationMetrics, batch: int = 2000
    ) -> None:
        self.service = service
        self.routing = routing
        self.metrics = metrics
        self.batch = batch
        self._down_since: dict[str, float] = {}  # child node id -> when its link went down (monotonic)
        self._open: dict[str, int] = {}  # child node id -> its open links
        self._ends: dict[str, LinkEnd] = {}  # child node id -> the end of its latest link

    def children_down(self) -> dict[str, float]:
        """The children that have linked here and are not linked now, with since when (monotonic)."""
        return dict(self._down_since)

    def links(self) -> list[LinkView]:
        """The links of the children that have linked here since the node started, up or down."""
        return [
            LinkView(
                name=child,
                kind="child",
                up=self._open.get(child, 0) > 0,
                peer=child,
                cursor=end.cursor,
                acked=end.acked,
                down_since=self._down_since.get(child),
            )
            for child, end in sorted(self._ends.items())
        ]

    def handler(self) -> grpc.GenericRpcHandler:
        def identity(data: bytes) -> bytes:
            return data

        methods = {"Link": grpc.stream_stream_rpc_method_handler(self.link, identity, identity)}
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def check_child(self, peer: Peer) -> None:
        """Only a gateway of a direct subregion may link here: a county under its own city."""
        who = peer.identity
        if who is None:
            return  # a plaintext development node: no identities at all
        if who.role is not Role.GATEWAY:
            raise FederationError(f"{who.uri} is not a gateway: only gateway nodes link to their parent")
        parent = self.service.regions.parent(who.region)
        if parent != self.service.region:
            raise FederationError(
                f"a node of {who.region} links under {parent or 'no node'}, not under {self.service.region}"
            )

    async def link(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            peer = self.service.authenticate(context)
            self.check_child(peer)
            child = first_hello(await anext(aiter(requests), None))
        except YiwangError as exc:
            log.warning("federation_link_refused", peer=context.peer(), reason=str(exc))
            if self.service.audit is not None:
                self.service.audit.record("federation_link_refused", peer=context.peer(), reason=str(exc))
            await context.abort(exc.grpc_code, str(exc))
        name = peer.identity.path if peer.identity is not None else child.node_id
        label = f"down:{child.node_id}"
        child_region = peer.identity.region if peer.identity is not None else child.region
        routing = self.routing
        end = LinkEnd(
            self.service,
            label=label,
            peer=peer,
            peer_node=child.node_id,
            cursor=f"federation/down/{name}",
            kinds=routing.down_kinds,
            routes=lambda env: routing.to_child(env, child_region).send,
            accept=None,  # the child publishes under the sharing policy, as the gateway of its subtree
            batch=batch_for(self.batch, child),
            metrics=self.metrics,
        )
        await context.write(hello(self.service))
        log.info("federation_link_open", link=label, region=child_region)
        self.metrics.up.labels(link=label).set(1)
        self.metrics.connects.labels(link=label).inc()
        self._down_since.pop(child.node_id, None)
        self._open[child.node_id] = self._open.get(child.node_id, 0) + 1
        self._ends[child.node_id] = end
        try:
            await run_link(end, requests, context.write)
        except FederationError as exc:
            await context.abort(exc.grpc_code, str(exc))
        finally:
            self._open[child.node_id] -= 1
            if not self._open[child.node_id]:
                self._down_since[child.node_id] = time.monotonic()
                self.metrics.up.labels(link=label).set(0)
            log.info("federation_link_closed", link=label)


# -- the child's end --------------------------------------------------------------------------------


class ParentLink:
    """The child's side: keeps the link to its parent up, with jittered exponential backoff."""

    def __init__(
        self,
        config: ParentSection,
        service: GatewayService,
        routing: Routing,
        *,
        tls: ClientTls | None,
        metrics: FederationMetrics,
        source: str = "",
        chain: Callable[[str, int], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.chain = chain
        self.config = config
        self.service = service
        self.routing = routing
        self.tls = tls
        self.parent_region = ""
        self.metrics = metrics
        self.host, self.port = parse_address(config.address, "parent.address", source)
        self.label = "up"
        self.connected = asyncio.Event()
        self._end: LinkEnd | None = None  # of the latest session
        self._down_since: float | None = None

    def view(self) -> LinkView:
        """The parent link as it stands now."""
        up = self.connected.is_set()
        return LinkView(
            name=self.label,
            kind="parent",
            up=up,
            peer=f"{self.host}:{self.port}",
            cursor=UP_CURSOR,
            acked=self._end.acked if self._end is not None else None,
            down_since=None if up else self._down_since,
        )

    def accept(self, kind: int, region: str, _agency: str) -> Decision:
        """What a child takes from its parent: the kinds routing sends down, for the parent's area."""
        if kind not in self.routing.down_kinds:
            reason = f"{pb.Kind.Name(kind)} does not come down from the parent"
            return Decision(allowed=False, reason=reason, field="kind")
        if not concerns(self.service.regions, region, self.parent_region):
            reason = f"{region} does not concern the parent's region {self.parent_region}"
            return Decision(allowed=False, reason=reason, field="region")
        return Decision(allowed=True, reason="routed down by the parent")

    def parent_certificate(self) -> x509.Certificate:
        """The certificate the parent presents (a TLS handshake of its own, before gRPC's)."""
        assert self.tls is not None
        context = self.tls.ssl_context()
        context.set_alpn_protocols(["h2"])
        name = self.tls.server_name or self.host
        with (
            socket.create_connection((self.host, self.port), timeout=10.0) as sock,
            context.wrap_socket(sock, server_hostname=name) as tls_sock,
        ):
            der = tls_sock.getpeercert(binary_form=True)
        if der is None:
            raise FederationError(f"{self.config.address} presented no certificate")
        return x509.load_der_x509_certificate(der)

    async def check_parent(self) -> Peer:
        if self.tls is None:
            return self.service.peer_of(None)
        cert = await asyncio.to_thread(self.parent_certificate)
        try:
            uri = Identity.of(cert).uri
        except PkiError as exc:
            raise FederationError(f"the node at {self.config.address} has no identity: {exc}") from None
        if uri != self.config.identity:
            raise FederationError(f"the node at {self.config.address} is {uri}, not the parent {self.config.identity}")
        return self.service.peer_of(cert)

    async def run(self) -> None:
        """Keeps the link up until cancelled."""
        delay = 0.2
        while True:
            try:
                await self.session()
                delay = 0.2
            except (OSError, ssl.SSLError, grpc.aio.AioRpcError, YiwangError) as exc:
                log.warning("federation_link_down", link=self.label, parent=self.config.address, error=str(exc))
            if self.connected.is_set() or self._down_since is None:
                self._down_since = time.monotonic()
            self.connected.clear()
            self.metrics.up.labels(link=self.label).set(0)
            await asyncio.sleep(delay * random.uniform(1 - JITTER, 1 + JITTER))  # noqa: S311 - jitter, not secrets
            delay = min(delay * 2, MAX_RETRY_S)

    async def session(self) -> None:
        peer = await self.check_parent()
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        if self.tls is None:
            channel = grpc.aio.insecure_channel(self.config.address, options=options)
        else:
            if self.tls.server_name:
                options.append(("grpc.ssl_target_name_override", self.tls.server_name))
            channel = grpc.aio.secure_channel(self.config.address, self.tls.credentials(), options=options)
        async with channel:
            call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(
                LINK_METHOD, request_serializer=None, response_deserializer=None
            )()
            await call.write(hello(self.service))
            first = await call.read()
            parent = first_hello(first if isinstance(first, bytes) else None)
            self.parent_region = peer.identity.region if peer.identity is not None else parent.region
            parent_level = level_of(self.parent_region)
            routing = self.routing
            end = LinkEnd(
                self.service,
                label=self.label,
                peer=peer,
                peer_node=parent.node_id,
                cursor=UP_CURSOR,
                kinds=routing.up_kinds,
                routes=lambda env: routing.sends_up(env, parent_level),
                by_record=routing.up_by_record(parent_level),
                accept=self.accept,
                batch=batch_for(self.config.batch, parent),
                metrics=self.metrics,
                chain=self.chain,
            )
            self._end = end
            log.info("federation_link_open", link=self.label, parent=parent.node_id, region=parent.region)
            self.metrics.up.labels(link=self.label).set(1)
            self.metrics.connects.labels(link=self.label).inc()
            self.connected.set()

            async def messages() -> AsyncIterator[bytes]:
                while isinstance(raw := await call.read(), bytes):
                    yield raw

            try:
                await run_link(end, messages(), call.write)
            finally:
                call.cancel()
