"""The ``yiwang.v1.Gateway`` gRPC service: publish into the log, subscribe to it, query it.

Replies that carry envelopes (Subscribe, Query, Get) are assembled from the log's stored bytes
(see ``gateway.wire``) and handed to gRPC already encoded; the handlers are registered with
explicit serializers for that reason instead of through the generated servicer base class.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import structlog
from cryptography import x509
from yiwang.v1 import gateway_pb2 as gw

from gateway import __version__
from gateway.admission import UNAUTHENTICATED, Admission, AdmissionPool, Admitted, enforce
from gateway.audit import AuditLog
from gateway.certstore import CertificateStore
from gateway.errors import InvalidRequestError, UnauthenticatedError, YiwangError
from gateway.log import AppendBatch, AppendResult, Log, StoredBatch
from gateway.metrics import NodeMetrics
from gateway.pki import Identity, PkiError, Role
from gateway.policy import Decision, Policy
from gateway.regions import RegionTable
from gateway.selection import RECORD, Record, Selector
from gateway.signing import Verifier
from gateway.tls import Revocations, peer_certificate
from gateway.validation import Validator
from gateway.wire import TAG_MISSING, TAG_PAGE_TOKEN, length_delimited, next_offset_field

log = structlog.get_logger("yiwang.service")

SERVICE = "yiwang.v1.Gateway"
_PAGE_TOKEN = re.compile(r"[0-9]{1,20}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
_ACCEPTED = gw.PublishResult.ACCEPTED
_DUPLICATE = gw.PublishResult.DUPLICATE
_REJECTED = gw.PublishResult.REJECTED
T = TypeVar("T")
MAX_CERTIFICATES_ASKED = 256


@dataclass(frozen=True, slots=True)
class ServiceLimits:
    max_batch_envelopes: int = 10_000
    default_delivery_batch: int = 2_000
    max_delivery_batch: int = 20_000
    max_reply_bytes: int = 3 << 20  # below gRPC's default 4 MiB receive limit of other clients
    default_page_size: int = 100
    max_page_size: int = 10_000
    publish_stream_depth: int = 8  # batches of one stream in flight before the node stops reading
    pool_min_request_bytes: int = 16 << 10  # smaller requests are admitted inline
    progress_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is calling, from the client certificate (None identity on a plaintext development node)."""

    identity: Identity | None
    serial: int | None


_ANONYMOUS = Peer(None, None)


@dataclass(eq=False)
class _Subscription:
    label: str
    position: int
    serial: int | None = None  # the peer certificate's serial, to cut the stream if it is revoked
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ended: tuple[grpc.StatusCode, str] | None = None

    def end(self, code: grpc.StatusCode, message: str) -> None:
        """Ends the stream with this status at its next step."""
        self.ended = (code, message)
        self.stop.set()


class GatewayService:
    """The service's behaviour, independent of how it is registered with a server."""

    def __init__(
        self,
        log_: Log,
        validator: Validator,
        metrics: NodeMetrics,
        *,
        node_id: str,
        level: str,
        region: str,
        limits: ServiceLimits | None = None,
        pool: AdmissionPool | None = None,
        tls: bool = False,
        trust_domain: str = "",
        revocations: Revocations | None = None,
        audit: AuditLog | None = None,
        policy: Policy | None = None,
        verifier: Verifier | None = None,
        certificates: CertificateStore | None = None,
    ) -> None:
        self.log = log_
        self.certificates = certificates
        self.pool = pool
        self.tls = tls
        self.trust_domain = trust_domain
        self.revocations = revocations or Revocations(None, None)
        self.audit = audit
        self.policy = policy
        self._readers: dict[Identity, Callable[[Record], bool] | None] = {}
        self._publish_streams: dict[int, set[asyncio.Queue[Any]]] = {}
        self.validator = validator
        self.regions: RegionTable = validator.regions
        self.metrics = metrics
        self.node_id = node_id
        self.level = level
        self.region = region
        self.limits = limits or ServiceLimits()
        self.admission = Admission(validator, self.limits.max_batch_envelopes, verifier, certificates)
        self._subscriptions: set[_Subscription] = set()
        self._durable: dict[str, _Subscription] = {}
        self._anonymous = itertools.count(1)

    def lags(self) -> dict[str, int]:
        head = self.log.next_offset
        return {s.label: max(head - s.position, 0) for s in self._subscriptions}

    # -- authentication -------------------------------------------------------------------------

    def authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
        """The caller's identity from its certificate; raises UnauthenticatedError, recorded in the audit log."""
        if not self.tls:
            return _ANONYMOUS
        try:
            return self._peer(context)
        except UnauthenticatedError as exc:
            self.metrics.auth_failures.inc()
            if self.audit is not None:
                self.audit.record("authentication_failed", peer=context.peer(), reason=str(exc))
            log.warning("authentication_failed", peer=context.peer(), reason=str(exc))
            raise

    def _peer(self, context: grpc.aio.ServicerContext[Any, Any]) -> Peer:
        return self.peer_of(peer_certificate(context))

    def peer_of(self, cert: x509.Certificate | None) -> Peer:
        """The peer a client certificate (from any of the node's TLS listeners) speaks for;
        raises UnauthenticatedError. Without TLS (development), the anonymous peer."""
        if not self.tls:
            return _ANONYMOUS
        if cert is None:
            raise UnauthenticatedError("no client certificate")
        serial = cert.serial_number
        if serial in self.revocations.serials:
            raise UnauthenticatedError(f"certificate {serial:x} is revoked")
        try:
            identity = Identity.of(cert)
        except PkiError as exc:
            raise UnauthenticatedError(f"the client certificate names no identity: {exc}") from None
        if self.trust_domain and identity.trust_domain != self.trust_domain:
            raise UnauthenticatedError(f"identity {identity.uri} is not of trust domain {self.trust_domain}")
        return Peer(identity, serial)

    def cut_revoked(self, serials: frozenset[int]) -> int:
        """Ends the open streams of revoked certificates; returns how many."""
        cut = 0
        for sub in list(self._subscriptions):
            if sub.serial is not None and sub.serial in serials:
                sub.end(grpc.StatusCode.UNAUTHENTICATED, f"certificate {sub.serial:x} was revoked")
                cut += 1
        for serial in serials & self._publish_streams.keys():
            for queue in self._publish_streams[serial]:
                queue.put_nowait(UnauthenticatedError(f"certificate {serial:x} was revoked"))
                cut += 1
        return cut

    # -- publish --------------------------------------------------------------------------------

    async def admit(self, raw: bytes, peer: Peer = _ANONYMOUS) -> Admitted:
        """Parses and validates an encoded PublishRequest (in the worker pool when it is large), then
        refuses what the sharing policy does not let the peer publish (``screen``)."""
        now = time.time()
        if self.pool is not None and len(raw) >= self.limits.pool_min_request_bytes:
            admitted = await self.pool.admit(raw, now, self.revocations.serials)
        else:
            admitted = self.admission.admit(raw, now, self.revocations.serials)
        return self.screen(admitted, peer)

    def screen(
        self, admitted: Admitted, peer: Peer, decide: Callable[[int, str, str], Decision] | None = None
    ) -> Admitted:
        """Counts and logs what admission refused, then refuses what the sharing policy does not let
        the peer publish (``decide`` instead of the policy: what a node takes from another over a
        federation link, see gateway.federation)."""
        for _, envelope_id, field_path, reason, code in admitted.rejections:
            self.metrics.rejected.labels(reason=field_path.split("[", 1)[0]).inc()
            log.info("envelope_rejected", id=envelope_id, field=field_path, reason=reason)
            if code == UNAUTHENTICATED and self.audit is not None:
                self.audit.record(
                    "signature_failed", id=envelope_id, reason=reason, peer=peer.identity.uri if peer.identity else ""
                )
        who = peer.identity
        if decide is not None:
            denied = enforce(admitted, decide, who.uri if who is not None else "", forwarder=True)
            for envelope_id, field_path, reason in denied:
                self.denied(peer, "publish", envelope_id=envelope_id, field=field_path, reason=reason)
        elif who is not None and self.policy is not None:
            policy = self.policy
            denied = enforce(
                admitted,
                lambda kind, region, agency: policy.may_publish_as(who, kind, region, agency),
                who.uri,
                forwarder=who.role is Role.GATEWAY,
            )
            for envelope_id, field_path, reason in denied:
                self.denied(peer, "publish", envelope_id=envelope_id, field=field_path, reason=reason)
        return admitted

    def denied(self, peer: Peer, action: str, **fields: Any) -> None:
        """Counts, logs and audits a policy denial."""
        self.metrics.denials.labels(action=action).inc()
        identity = peer.identity.uri if peer.identity else ""
        log.info("permission_denied", action=action, identity=identity, **fields)
        if self.audit is not None:
            self.audit.record("permission_denied", action=action, identity=identity, **fields)

    def selector(self, flt: gw.Filter, peer: Peer) -> Selector:
        """The filter the caller asked for, narrowed to what the sharing policy lets it read."""
        who = peer.identity
        if who is None or self.policy is None:
            return Selector.compile(flt, self.regions)
        if who not in self._readers:
            self._readers[who] = self.policy.reader(who)
        return Selector.compile(flt, self.regions, allow=self._readers[who], restricted=True)

    def durable_name(self, name: str, peer: Peer) -> str:
        """Durable subscriptions are per identity: one identity cannot move another's position."""
        self._check_name("durable_name", name)
        return f"{peer.identity.path}/{name}" if peer.identity is not None else name

    def append(self, admitted: Admitted) -> Awaitable[AppendResult]:
        """Queues the admitted envelopes for the log, in call order; the result comes after the commit."""
        return self.log.append_nowait(
            AppendBatch(admitted.ids, admitted.envelopes, admitted.records, admitted.hashes, admitted.signatures)
        )

    def count(self, admitted: Admitted, appended: AppendResult) -> None:
        """Counts what an append stored and what it found stored already."""
        duplicates = len(appended.duplicates)
        if duplicates:
            self.metrics.duplicates.inc(duplicates)
        if len(admitted.ids) - duplicates:
            self.metrics.published.inc(len(admitted.ids) - duplicates)

    def reply(self, admitted: Admitted, appended: AppendResult) -> gw.PublishReply:
        """One result per envelope of the request, in its order."""
        reply = gw.PublishReply(batch_id=admitted.batch_id)
        results = reply.results
        offsets, duplicates = appended.offsets, appended.duplicates
        if not admitted.rejections and not duplicates:
            for envelope_id, offset in zip(admitted.ids, offsets, strict=True):
                results.add(id=envelope_id, outcome=_ACCEPTED, offset=offset)
        else:
            rejections = {
                index: (envelope_id, path, reason, code)
                for index, envelope_id, path, reason, code in admitted.rejections
            }
            position = 0
            for index in range(admitted.total):
                rejected = rejections.get(index)
                if rejected is not None:
                    envelope_id, field_path, reason, code = rejected
                    results.add(id=envelope_id, outcome=_REJECTED, code=code, field=field_path, reason=reason)
                    continue
                outcome = _DUPLICATE if position in duplicates else _ACCEPTED
                results.add(id=admitted.ids[position], outcome=outcome, offset=offsets[position])
                position += 1
        self.count(admitted, appended)
        return reply

    async def publish_batch(self, raw: bytes, peer: Peer = _ANONYMOUS) -> gw.PublishReply:
        admitted = await self.admit(raw, peer)
        return self.reply(admitted, await self.append(admitted))

    async def publish(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> gw.PublishReply:
        async def run() -> gw.PublishReply:
            return await self.publish_batch(request, self.authenticate(context))

        return await self._guard(context, run())

    async def publish_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[gw.PublishReply]:
        """Pipelines up to ``publish_stream_depth`` requests: admission runs concurrently, appends are
        queued in request order (so the log keeps the stream's order), replies leave in that order."""
        try:
            peer = self.authenticate(context)
        except YiwangError as exc:
            await context.abort(exc.grpc_code, str(exc))
        depth = self.limits.publish_stream_depth
        admitting: asyncio.Queue[asyncio.Task[Admitted] | None] = asyncio.Queue(depth)
        # Unbounded, yet never longer than `depth` + 1: it is filled from `admitting` one by one.
        # A revocation puts its error here, which ends the stream once earlier batches are answered.
        appending: asyncio.Queue[tuple[Admitted, Awaitable[AppendResult]] | BaseException | None] = asyncio.Queue()
        if peer.serial is not None:
            self._publish_streams.setdefault(peer.serial, set()).add(appending)

        async def read() -> None:
            try:
                async for raw in requests:
                    await admitting.put(asyncio.create_task(self.admit(raw, peer)))
            finally:
                await admitting.put(None)

        async def queue_appends() -> None:
            try:
                while (task := await admitting.get()) is not None:
                    try:
                        admitted = await task
                    except Exception as exc:  # noqa: BLE001 - handed to the stream, which ends with its status
                        await appending.put(exc)
                        return
                    await appending.put((admitted, self.append(admitted)))
            finally:
                await appending.put(None)

        reader = asyncio.create_task(read(), name="publish-stream-read")
        appender = asyncio.create_task(queue_appends(), name="publish-stream-append")
        try:
            while (item := await appending.get()) is not None:
                if isinstance(item, BaseException):
                    if isinstance(item, YiwangError):
                        await context.abort(item.grpc_code, str(item))
                    log.error("publish_failed", error=repr(item), exc_info=item)
                    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {item!r}")
                admitted, appended = item
                try:
                    yield self.reply(admitted, await appended)
                except YiwangError as exc:
                    await context.abort(exc.grpc_code, str(exc))
        finally:
            if peer.serial is not None:
                streams = self._publish_streams.get(peer.serial, set())
                streams.discard(appending)
                if not streams:
                    self._publish_streams.pop(peer.serial, None)
            reader.cancel()
            appender.cancel()
            while not admitting.empty():
                leftover = admitting.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    # -- subscribe ------------------------------------------------------------------------------

    async def _start_position(self, request: gw.SubscribeRequest) -> int:
        which = request.WhichOneof("start")
        if which == "offset":
            return max(request.offset, 1)
        if which == "time":
            return await self.log.offset_at(request.time.ToNanoseconds())
        if which == "position" and request.position == gw.OLDEST:
            return self.log.oldest_offset
        if which == "position" and request.position not in gw.StartPosition.values():
            raise InvalidRequestError("position", f"unknown start position {request.position}")
        return self.log.next_offset

    def _check_name(self, field: str, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise InvalidRequestError(
                field, f"{name[:40]!r} is not a subscription name (letters, digits, ._:@/-; up to 128)"
            )

    async def subscribe(
        self, request: gw.SubscribeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            peer = self.authenticate(context)
            selector = self.selector(request.filter, peer)
            name = self.durable_name(request.durable_name, peer) if request.durable_name else ""
            if name:
                position = await self.log.load_position(name)
                if position is None:
                    position = await self.log.save_position(name, await self._start_position(request))
            else:
                position = await self._start_position(request)
        except YiwangError as exc:
            await context.abort(exc.grpc_code, str(exc))
        limit = min(request.max_batch or self.limits.default_delivery_batch, self.limits.max_delivery_batch)
        sub = _Subscription(label=name or f"anonymous-{next(self._anonymous)}", position=position, serial=peer.serial)
        if name:
            previous = self._durable.get(name)
            if previous is not None:
                previous.end(grpc.StatusCode.ABORTED, f"subscription {name!r} was opened again by another stream")
                log.info("subscription_superseded", subscription=name)
            self._durable[name] = sub
        self._subscriptions.add(sub)
        log.info("subscription_opened", subscription=sub.label, position=position, peer=context.peer())
        try:
            async for chunk in self._deliveries(sub, selector, limit, shared=request.shared_signatures):
                yield chunk
            if sub.ended is not None:
                await context.abort(*sub.ended)
        finally:
            self._subscriptions.discard(sub)
            if name and self._durable.get(name) is sub:
                del self._durable[name]
            log.info("subscription_closed", subscription=sub.label, position=sub.position)

    async def _deliveries(
        self, sub: _Subscription, selector: Selector, limit: int, shared: bool = False
    ) -> AsyncIterator[bytes]:
        """Reads the log from the subscription's position on: replay, then the live tail, one code path.

        With ``shared``, envelopes that refer to a shared batch signature go as stored, with the
        signatures of their stored batches; otherwise each gets its full signature."""
        log_ = self.log
        max_bytes = self.limits.max_reply_bytes
        last_sent = time.monotonic()
        sent_position = sub.position
        while not sub.stop.is_set():
            position = sub.position
            if position < log_.oldest_offset:
                self.metrics.subscription_gaps.inc()
                log.warning("subscription_gap", subscription=sub.label, wanted=position, oldest=log_.oldest_offset)
                position = sub.position = log_.oldest_offset
            batches = await log_.read(position, limit)
            if not batches:
                waiter = asyncio.ensure_future(log_.wait_beyond(position, self.limits.progress_interval_s))
                stopper = asyncio.ensure_future(sub.stop.wait())
                try:
                    await asyncio.wait((waiter, stopper), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
                if log_.closed:
                    return
                if sent_position != sub.position and time.monotonic() - last_sent >= self.limits.progress_interval_s:
                    yield next_offset_field(sub.position)
                    sent_position, last_sent = sub.position, time.monotonic()
                continue
            parts: list[bytes] = []
            signatures: list[bytes] = []
            count = size = 0
            for batch in batches:
                start = max(position, batch.first_offset) - batch.first_offset
                if start >= batch.count:
                    continue
                stop = min(batch.count, start + limit - count)
                budget = max_bytes - size - (len(batch.signatures) if shared else 0)
                stop = self._fit(batch, start, stop, budget)
                indexes = selector.select(batch.records)
                if not batch.signatures:
                    chunk = batch.entries(start, stop, indexes)
                elif shared:
                    chunk = batch.entries(start, stop, indexes)
                    if chunk:
                        signatures.append(batch.signatures)
                        size += len(batch.signatures)
                else:
                    chunk = batch.standalone_entries(start, stop, indexes)
                    while len(chunk) > budget and stop > start + 1:  # full signatures make entries larger
                        stop = start + max(1, min(stop - start - 1, (stop - start) * max(budget, 0) // len(chunk)))
                        chunk = batch.standalone_entries(start, stop, indexes)
                parts.append(chunk)
                size += len(chunk)
                count += (
                    (stop - start)
                    if indexes is None
                    else bisect.bisect_left(indexes, stop) - bisect.bisect_left(indexes, start)
                )
                position = batch.first_offset + stop
                if count >= limit or stop < batch.count:
                    break
            sub.position = position
            if count:
                self.metrics.delivered.inc(count)
                yield b"".join(parts) + b"".join(signatures) + next_offset_field(position)
                sent_position, last_sent = position, time.monotonic()
            elif time.monotonic() - last_sent >= self.limits.progress_interval_s:
                yield next_offset_field(position)
                sent_position, last_sent = position, time.monotonic()

    @staticmethod
    def _fit(batch: StoredBatch, start: int, stop: int, budget: int) -> int:
        """The largest stop <= ``stop`` whose entries from ``start`` fit in ``budget`` bytes (at least one)."""
        base = batch.ends[start - 1] if start else 0
        if batch.ends[stop - 1] - base <= budget:
            return stop
        fitting = bisect.bisect_right(batch.ends, base + budget, lo=start, hi=stop)
        return max(fitting, start + 1)

    async def ack(self, request: gw.AckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> gw.AckReply:
        async def run() -> gw.AckReply:
            name = self.durable_name(request.durable_name, self.authenticate(context))
            if request.next_offset < 1:
                raise InvalidRequestError("next_offset", "must be at least 1")
            position = await self.log.save_position(name, request.next_offset)
            return gw.AckReply(next_offset=position)

        return await self._guard(context, run())

    # -- query ----------------------------------------------------------------------------------

    async def query_bytes(self, request: gw.QueryRequest, peer: Peer = _ANONYMOUS) -> bytes:
        selector = self.selector(request.filter, peer)
        lo = max(request.from_offset, self.log.oldest_offset, 1)
        hi = min(request.to_offset or self.log.next_offset, self.log.next_offset)
        if request.HasField("from_time"):
            lo = max(lo, await self.log.offset_at(request.from_time.ToNanoseconds()))
        if request.HasField("to_time"):
            hi = min(hi, await self.log.offset_at(request.to_time.ToNanoseconds()))
        if request.page_token:
            if not _PAGE_TOKEN.fullmatch(request.page_token):
                raise InvalidRequestError("page_token", "not a token this node issued")
            token = int(request.page_token)
            if request.newest_first:
                hi = min(hi, token)
            else:
                lo = max(lo, token)
        page = min(request.page_size or self.limits.default_page_size, self.limits.max_page_size)
        if request.newest_first:
            parts, next_token = await self._page_backward(selector, lo, hi, page)
        else:
            parts, next_token = await self._page_forward(selector, lo, hi, page)
        out = b"".join(parts)
        if next_token:
            out += length_delimited(TAG_PAGE_TOKEN, str(next_token).encode())
        return out

    async def _page_forward(self, selector: Selector, lo: int, hi: int, page: int) -> tuple[list[bytes], int]:
        parts: list[bytes] = []
        found = size = 0
        position = lo
        while position < hi and found < page:
            batches = await self.log.read(position, max(page, 512))
            if not batches:
                break
            for batch in batches:
                indexes = selector.select(batch.records)
                candidates = range(batch.count) if indexes is None else indexes
                for i in candidates:
                    offset = batch.first_offset + i
                    if offset < position or offset >= hi:
                        continue
                    entry = batch.standalone_entry(i)
                    if found >= page or (found and size + len(entry) > self.limits.max_reply_bytes):
                        return parts, offset
                    parts.append(entry)
                    found += 1
                    size += len(entry)
                position = max(position, batch.next_offset)
                if position >= hi:
                    break
        return parts, (position if position < hi else 0)

    async def _page_backward(self, selector: Selector, lo: int, hi: int, page: int) -> tuple[list[bytes], int]:
        parts: list[bytes] = []
        found = size = 0
        upper = hi
        step = max(page, 512)
        while upper > lo and found < page:
            start = max(lo, upper - step)
            batches = await self.log.read(start, upper - start)
            picked: list[tuple[int, bytes]] = []
            for batch in batches:
                indexes = selector.select(batch.records)
                candidates = range(batch.count) if indexes is None else indexes
                picked += [
                    (batch.first_offset + i, batch.standalone_entry(i))
                    for i in candidates
                    if start <= batch.first_offset + i < upper
                ]
            for offset, entry in reversed(picked):
                if found >= page or (found and size + len(entry) > self.limits.max_reply_bytes):
                    return parts, offset + 1
                parts.append(entry)
                found += 1
                size += len(entry)
            upper = start
            step *= 2
        return parts, (upper if upper > lo else 0)

    async def get_bytes(self, request: gw.GetRequest, peer: Peer = _ANONYMOUS) -> bytes:
        """Envelopes by id; what the caller may not read is reported missing, as if it did not exist."""
        selector = self.selector(gw.Filter(), peer)
        size = RECORD.size
        if len(request.ids) > self.limits.max_page_size:
            raise InvalidRequestError("ids", f"more than {self.limits.max_page_size} ids")
        found = await self.log.find(list(request.ids))
        parts = []
        for envelope_id in request.ids:
            hit = found.get(envelope_id)
            if hit is None:
                parts.append(length_delimited(TAG_MISSING, envelope_id.encode()))
            else:
                batch, index = hit
                if selector.allows(batch.records[index * size : (index + 1) * size]):
                    parts.append(batch.standalone_entry(index))
                else:
                    parts.append(length_delimited(TAG_MISSING, envelope_id.encode()))
        return b"".join(parts)

    async def query(self, request: gw.QueryRequest, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        async def run() -> bytes:
            return await self.query_bytes(request, self.authenticate(context))

        return await self._guard(context, run())

    async def get(self, request: gw.GetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        async def run() -> bytes:
            return await self.get_bytes(request, self.authenticate(context))

        return await self._guard(context, run())

    async def info(self, request: gw.InfoRequest, context: grpc.aio.ServicerContext[Any, Any]) -> gw.NodeInfo:
        try:
            self.authenticate(context)
        except YiwangError as exc:
            await context.abort(exc.grpc_code, str(exc))
        return gw.NodeInfo(
            node=self.node_id,
            level=self.level,
            region=self.region,
            oldest_offset=self.log.oldest_offset,
            next_offset=self.log.next_offset,
            version=__version__,
        )

    async def certificates_of(
        self, request: gw.CertificatesRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> gw.CertificatesReply:
        """Signing certificates by SHA-256: public, CA-issued material, for any authenticated peer."""
        try:
            self.authenticate(context)
            if len(request.sha256) > MAX_CERTIFICATES_ASKED:
                raise InvalidRequestError(
                    "sha256", f"{len(request.sha256)} certificates asked at once, more than {MAX_CERTIFICATES_ASKED}"
                )
        except YiwangError as exc:
            await context.abort(exc.grpc_code, str(exc))
        reply = gw.CertificatesReply()
        if self.certificates is not None:
            for sha256 in request.sha256:
                der = self.certificates.get(sha256)
                if der is not None:
                    reply.certificates.append(der)
        return reply

    async def _guard(self, context: grpc.aio.ServicerContext[Any, Any], work: Awaitable[T]) -> T:
        """Maps our errors to their gRPC status with the message naming what is wrong."""
        try:
            return await work
        except YiwangError as exc:
            await context.abort(exc.grpc_code, str(exc))
            raise  # abort raises; this line only satisfies the type checker

    def close_subscriptions(self) -> None:
        for sub in list(self._subscriptions):
            sub.end(grpc.StatusCode.UNAVAILABLE, "the node is shutting down; resume from your position")

    # -- registration ---------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        def identity(data: bytes) -> bytes:
            return data

        methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Publish": grpc.unary_unary_rpc_method_handler(self.publish, identity, gw.PublishReply.SerializeToString),
            "PublishStream": grpc.stream_stream_rpc_method_handler(
                self.publish_stream, identity, gw.PublishReply.SerializeToString
            ),
            "Subscribe": grpc.unary_stream_rpc_method_handler(self.subscribe, gw.SubscribeRequest.FromString, identity),
            "Ack": grpc.unary_unary_rpc_method_handler(
                self.ack, gw.AckRequest.FromString, gw.AckReply.SerializeToString
            ),
            "Query": grpc.unary_unary_rpc_method_handler(self.query, gw.QueryRequest.FromString, identity),
            "Get": grpc.unary_unary_rpc_method_handler(self.get, gw.GetRequest.FromString, identity),
            "Info": grpc.unary_unary_rpc_method_handler(
                self.info, gw.InfoRequest.FromString, gw.NodeInfo.SerializeToString
            ),
            "Certificates": grpc.unary_unary_rpc_method_handler(
                self.certificates_of, gw.CertificatesRequest.FromString, gw.CertificatesReply.SerializeToString
            ),
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)
