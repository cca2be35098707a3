"""Runners: the thin part of an adapter that moves bytes between a source or sink and the gateway.

An inbound runner takes items from its source, decodes them with its codec and publishes the
envelopes over the gateway's gRPC API with the adapter's own identity. An outbound runner holds a
durable subscription and writes each envelope, encoded, to its sink. Whatever cannot be delivered
goes to the dead-letter store with its reason; the runner itself never stops on bad input, and
``supervise`` restarts it with jittered backoff when its source, sink or connection fails.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.deadletter import REPLAY, DeadLetters
from adapters.errors import AdapterError
from adapters.plugin import Codec
from adapters.sources import Item, Outcome
from gateway.client import GatewayClient
from gateway.signing import Signer

log = structlog.get_logger("yiwang.adapters")

PUBLISH_CHUNK = 500  # envelopes per request: one input may decode into many
REPLAY_CHECK_S = 2.0
# Gateway answers that a retry may cure; anything else is a verdict on the input.
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class RunnerError(Exception):
    """A runner could not finish an input; it is restarted and the input taken up again."""


class AdapterMetrics:
    """Per-runner counters, in the node's registry, labelled by the runner's name."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.received = Counter("yiwang_adapter_received", "Inputs an adapter received", ["adapter"], registry=r)
        self.converted = Counter(
            "yiwang_adapter_converted", "Envelopes an adapter decoded from its inputs", ["adapter"], registry=r
        )
        self.rejected = Counter(
            "yiwang_adapter_rejected",
            "Inputs (or records) an adapter could not deliver, by reason",
            ["adapter", "reason"],
            registry=r,
        )
        self.forwarded = Counter(
            "yiwang_adapter_forwarded",
            "Envelopes an adapter delivered (to the gateway, or to its sink)",
            ["adapter"],
            registry=r,
        )
        self.dead_letters = Counter(
            "yiwang_adapter_dead_letters", "Inputs stored in the dead-letter store", ["adapter"], registry=r
        )
        self.restarts = Counter("yiwang_adapter_restarts", "Restarts of an adapter's runner", ["adapter"], registry=r)
        self.lag = Gauge(
            "yiwang_adapter_lag_seconds",
            "Age of the input an adapter is working on (0 when idle)",
            ["adapter"],
            registry=r,
        )


@dataclass
class Health:
    """A runner's state for /healthz."""

    state: str = "starting"  # starting, up, restarting, stopped
    restarts: int = 0
    last_error: str = ""
    since: float = field(default_factory=time.time)

    def report(self) -> dict[str, Any]:
        return {
            "ok": self.state == "up",
            "state": self.state,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "since": self.since,
        }


class Source(Protocol):
    def items(self) -> Any: ...  # an async iterator of Item


class Sink(Protocol):
    async def put(self, name: str, data: bytes) -> None: ...


def decode_report(codec: Codec, data: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
    """The envelopes an input decodes into and the records that did not (for codecs that can tell)."""
    report = getattr(codec, "decode_report", None)
    if report is not None:
        envelopes, errors = report(data)
        return list(envelopes), list(errors)
    return codec.decode(data), []


class InboundRunner:
    def __init__(
        self,
        name: str,
        fmt: str,
        codec: Codec,
        *,
        source: Source,
        client: GatewayClient,
        letters: DeadLetters,
        metrics: AdapterMetrics,
        signer: Signer | None = None,
        retry_s: float = 1.0,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.codec = codec
        self.source = source
        self.client = client
        self.letters = letters
        self.metrics = metrics
        self.signer = signer
        self.retry_s = retry_s
        self._working_since: float | None = None

    def lag(self) -> float:
        since = self._working_since
        return 0.0 if since is None else max(0.0, asyncio.get_running_loop().time() - since)

    async def run(self) -> None:
        """One life of the runner: until its source fails or it is cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._replays(), name=f"{self.name}-replays")
            async for item in self.source.items():
                try:
                    outcome = await self.handle(item)
                except BaseException as exc:
                    if not item.done.done():  # whoever waits on it (an HTTP push) learns it failed
                        item.done.set_exception(RunnerError(f"the adapter failed while handling it: {exc!r}"))
                        item.done.exception()  # retrieved: a source that never looks must not warn
                    raise
                if not item.done.done():
                    item.done.set_result(outcome)

    async def handle(self, item: Item, letter: int | None = None) -> Outcome:
        """Decodes and publishes one input; stores it as a dead letter if any of it cannot be delivered.

        ``letter`` is the dead letter being replayed, updated in place instead of stored again.
        """
        m, name = self.metrics, self.name
        m.received.labels(name).inc()
        self._working_since = item.received
        m.lag.labels(name).set(self.lag())
        try:
            if item.refused:
                return await self._dead_letter(item, "size", item.refused, letter)
            try:
                envelopes, errors = decode_report(self.codec, item.data)
            except AdapterError as exc:
                m.rejected.labels(name, exc.kind).inc()
                log.info("adapter_input_refused", adapter=name, source=item.source, reason=str(exc), kind=exc.kind)
                return await self._dead_letter(item, exc.kind, str(exc), letter)
            for error in errors:
                m.rejected.labels(name, error.kind).inc()
                log.info("adapter_record_refused", adapter=name, source=item.source, reason=str(error))
            m.converted.labels(name).inc(len(envelopes))
            accepted, duplicates, refusals = await self._publish(envelopes)
            m.forwarded.labels(name).inc(accepted + duplicates)
            reasons = [str(e) for e in errors] + refusals
            if refusals:
                forget = getattr(self.codec, "undo", None)
                if forget is not None:  # a codec that remembers what it reported must report it again on replay
                    forget(envelopes)
            if reasons:
                kind = errors[0].kind if errors else "rejected"
                if refusals:
                    m.rejected.labels(name, "rejected").inc(len(refusals))
                shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
                outcome = await self._dead_letter(item, kind, shown, letter)
                return Outcome(accepted + duplicates, duplicates, outcome.dead_letter, shown)
            if letter is not None:
                await asyncio.to_thread(self.letters.settle, letter, delivered=True)
            return Outcome(accepted + duplicates, duplicates)
        finally:
            self._working_since = None
            m.lag.labels(name).set(0)

    async def _dead_letter(self, item: Item, kind: str, reason: str, letter: int | None) -> Outcome:
        if letter is not None:
            await asyncio.to_thread(self.letters.settle, letter, delivered=False, reason=reason, kind=kind)
            return Outcome(dead_letter=letter, reason=reason)
        letter_id = await asyncio.to_thread(
            functools.partial(
                self.letters.add, self.name, self.fmt, source=item.source, kind=kind, reason=reason, data=item.data
            )
        )
        self.metrics.dead_letters.labels(self.name).inc()
        log.warning("adapter_dead_letter", adapter=self.name, source=item.source, letter=letter_id, reason=reason)
        return Outcome(dead_letter=letter_id, reason=reason)

    async def _publish(self, envelopes: Sequence[pb.Envelope]) -> tuple[int, int, list[str]]:
        """Publishes in chunks, retrying what a retry may cure; returns accepted, duplicates and the
        reasons of the envelopes the gateway refused."""
        accepted = duplicates = 0
        refusals: list[str] = []
        for start in range(0, len(envelopes), PUBLISH_CHUNK):
            chunk = list(envelopes[start : start + PUBLISH_CHUNK])
            certificates = self._sign(chunk)
            reply = await self._send(chunk, certificates)
            if isinstance(reply, str):
                refusals += [f"{env.id}: {reply}" for env in chunk]
                continue
            for result in reply.results:
                if result.outcome == gw.PublishResult.ACCEPTED:
                    accepted += 1
                elif result.outcome == gw.PublishResult.DUPLICATE:
                    duplicates += 1
                else:
                    refusals.append(f"{result.id}: refused by the gateway: {result.field}: {result.reason}")
        return accepted, duplicates, refusals

    def _sign(self, chunk: list[pb.Envelope]) -> list[bytes]:
        if self.signer is None or not chunk:
            return []
        if len(chunk) == 1 or all(env.kind == pb.ALERT for env in chunk):
            for env in chunk:
                self.signer.sign(env)
            return []
        self.signer.sign_batch(chunk)
        return [self.signer.certificate_der]

    async def _send(self, chunk: list[pb.Envelope], certificates: list[bytes]) -> gw.PublishReply | str:
        """The gateway's reply, or why it refused the whole request. Waits out outages: an input is
        let go only once the gateway has answered for it."""
        delay = self.retry_s
        while True:
            try:
                return await self.client.publish(chunk, certificates=certificates)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in TRANSIENT:
                    return f"refused by the gateway: {exc.code().name}: {exc.details()}"
                log.warning("adapter_gateway_unavailable", adapter=self.name, code=exc.code().name, retry_s=delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not security
                delay = min(delay * 2, 30.0)

    async def _replays(self) -> None:
        """Takes up the dead letters an operator asked to replay."""
        while True:
            for letter in await asyncio.to_thread(self.letters.list, self.name, REPLAY):
                loop = asyncio.get_running_loop()
                item = Item(letter.data, f"replay of dead letter {letter.id} ({letter.source})", loop.time())
                outcome = await self.handle(item, letter=letter.id)
                log.info("adapter_replay", adapter=self.name, letter=letter.id, delivered=outcome.dead_letter is None)
            await asyncio.sleep(REPLAY_CHECK_S)


class OutboundRunner:
    """Follows a durable subscription and writes each envelope, encoded, to a sink."""

    def __init__(
        self,
        name: str,
        fmt: str,
        codec: Codec,
        *,
        sink: Sink,
        client: GatewayClient,
        letters: DeadLetters,
        metrics: AdapterMetrics,
        request: gw.SubscribeRequest,
        select: Callable[[pb.Envelope], bool] | None = None,
    ) -> None:
        self.name = name
        self.fmt = fmt
        self.codec = codec
        self.sink = sink
        self.client = client
        self.letters = letters
        self.metrics = metrics
        self.request = request
        self.select = select  # of the envelopes the subscription delivers, those to export (None: all)

    async def run(self) -> None:
        m, name = self.metrics, self.name
        async for batch in self.client.subscribe(self.request):
            for delivery in batch.deliveries:
                env = delivery.envelope
                if self.select is not None and not self.select(env):
                    continue
                m.received.labels(name).inc()
                try:
                    data = self.codec.encode([env])
                except AdapterError as exc:
                    m.rejected.labels(name, exc.kind).inc()
                    letter = await asyncio.to_thread(
                        functools.partial(
                            self.letters.add,
                            name,
                            "canonical",
                            source=env.id,
                            kind=exc.kind,
                            reason=str(exc),
                            data=env.SerializeToString(),
                        )
                    )
                    m.dead_letters.labels(name).inc()
                    log.warning("adapter_export_refused", adapter=name, id=env.id, reason=str(exc), letter=letter)
                    continue
                m.converted.labels(name).inc()
                await self.sink.put(env.id, data)
                m.forwarded.labels(name).inc()
            if self.request.durable_name:
                await self.client.ack(self.request.durable_name, batch.next_offset)


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    health: Health,
    metrics: AdapterMetrics,
    *,
    first_delay_s: float = 0.5,
    max_delay_s: float = 30.0,
) -> None:
    """Runs ``run`` again and again: a failure restarts it after a jittered, growing delay (reset
    once it has stayed up for a minute). Only cancellation ends it."""
    loop = asyncio.get_running_loop()
    failures = 0
    while True:
        health.state, health.since = "up", time.time()
        started = loop.time()
        try:
            await run()
        except asyncio.CancelledError:
            health.state = "stopped"
            raise
        except Exception as exc:  # noqa: BLE001 - the supervisor's boundary: any failure restarts the runner
            cause: BaseException = exc
            while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
                cause = cause.exceptions[0]  # the runner's task group wraps what actually failed
            health.last_error = f"{type(cause).__name__}: {cause}"
            log.warning("adapter_failed", adapter=name, error=health.last_error)
        else:
            health.last_error = "its source ended"
        if loop.time() - started > 60:
            failures = 0
        failures += 1
        health.restarts += 1
        health.state, health.since = "restarting", time.time()
        metrics.restarts.labels(name).inc()
        delay = min(max_delay_s, first_delay_s * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)  # noqa: S311
        await asyncio.sleep(delay)
