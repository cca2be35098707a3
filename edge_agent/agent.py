"""The edge agent: moves a terminal's readings from its outbox to the gateway, in budget, exactly once.

Readings are put into the durable outbox first (``submit``). The sender takes P0 first, then live
readings, and the backlog on its own topic, packs them into batches sized to the link, spends the
link's byte budget (P0 is never held back by it), and publishes them. A reading leaves the outbox
only when the gateway's acknowledgement says the gateway has it durably; a batch not acknowledged
in time, or a range the gateway asks for again, is sent again. On every connection the agent
announces itself (birth), with its death as the MQTT last will, and sends heartbeats while idle.
Commands from the gateway are handled once per id, refused after they expire, and answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from edge_agent import wire
from edge_agent.links import Budget, LinkProfile
from edge_agent.model import (
    Ack,
    AckState,
    Batch,
    Birth,
    Chunk,
    Command,
    CommandReply,
    DropReport,
    Metric,
    Priority,
    Reading,
    Sequenced,
)
from edge_agent.mqtt import MqttClient, Will, connect_forever
from edge_agent.outbox import MAX_CHUNK_POINTS, Outbox

log = structlog.get_logger("yiwang.edge")

MAX_BATCH_READINGS = 5_000
MAX_IN_FLIGHT = 8  # batches sent and not yet acknowledged by the gateway; P0 may go beyond
SHRINK = 0.7  # when a batch comes out too big for the link, try again with this share of it
CHUNK_HEADROOM = 512  # bytes of a message kept for the batch's head, drop reports and a few readings


@dataclass
class InFlight:
    session: int
    ranges: list[tuple[int, int]]
    sent: float  # loop time
    drops: tuple[DropReport, ...]


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint inclusive ranges, touching ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(last, out[-1][1]))
        else:
            out.append((first, last))
    return out


def ranges_of(seqs: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


class EdgeAgent:
    def __init__(
        self,
        *,
        cn: str,
        outbox: Outbox,
        link: LinkProfile,
        budget: Budget,
        catalogue: Sequence[Metric],
        connect: Callable[[Will], MqttClient],
        interval_s: float = 60.0,
        ack_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        wire.check_cn(cn)
        self.cn = cn
        self.name = cn.rsplit("/", 1)[1]
        self.outbox = outbox
        self.link = link
        self.budget = budget
        self.catalogue = tuple(catalogue)
        self.connect = connect
        self.interval_s = interval_s
        self.ack_timeout_s = ack_timeout_s
        self.clock = clock
        self.client: MqttClient | None = None
        self.connections = 0
        self.batches_sent = 0
        self.bytes_sent = 0
        self._wake = asyncio.Event()
        self._urgent = False  # P0 waiting: send at once
        self._waiting_since: float | None = None  # loop time the oldest unsent reading arrived
        self._in_flight: dict[int, InFlight] = {}
        self._next_batch = 0
        self._estimate = max(1, min(MAX_BATCH_READINGS, link.max_message_bytes // 8))
        # A chunk fits a message uncompressed, so it can always go; a batch packs several when they compress.
        self._chunk_points = max(
            1, min(MAX_CHUNK_POINTS, (link.max_message_bytes - CHUNK_HEADROOM) // wire.SERIES_POINT_SIZE)
        )
        self._series_estimate = self._chunk_points  # series readings per batch

    # -- readings in --------------------------------------------------------------------------------

    async def submit(self, readings: Sequence[Reading]) -> list[Sequenced]:
        """Stores readings in the outbox (durable on return) and wakes the sender."""
        stored = await asyncio.to_thread(self.outbox.put, readings)
        if stored:
            if any(item.reading.priority == Priority.P0 for item in stored):
                self._urgent = True
            if self._waiting_since is None:
                self._waiting_since = asyncio.get_running_loop().time()
            self._wake.set()
        return stored

    async def submit_series(
        self, metric: int, at_ms: object, values: object, priority: Priority = Priority.P2
    ) -> list[Chunk]:
        """Stores a sampled block of one metric (``at_ms`` and ``values``: sequences or numpy arrays
        of one length) in the outbox as chunks sized to the link, durable on return, and wakes the
        sender. Series are P2 or P3; P0 and P1 readings go through ``submit`` one by one."""
        stored = await asyncio.to_thread(
            functools.partial(self.outbox.put_series, metric, at_ms, values, priority, chunk_points=self._chunk_points)
        )
        if stored:
            if self._waiting_since is None:
                self._waiting_since = asyncio.get_running_loop().time()
            self._wake.set()
        return stored

    # -- the connection -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keeps a broker connection up and serves each one, until cancelled."""
        await connect_forever(self._client, self._serve)

    def _client(self) -> MqttClient:
        death = wire.encode_death(wire.Death(terminal=self.name, session=self.outbox.session))
        return self.connect(Will(wire.topic(self.cn, "death"), death, qos=1, retain=False))

    async def _serve(self, client: MqttClient) -> None:
        self.client = client
        self.connections += 1
        # whatever was in flight on a previous connection may never have arrived: offer it again
        await asyncio.to_thread(self.outbox.requeue_all)
        self._in_flight.clear()
        try:
            await client.subscribe([(wire.topic(self.cn, "ack"), 1), (wire.topic(self.cn, "cmd"), 1)])
            birth = Birth(
                terminal=self.name,
                session=self.outbox.session,
                catalogue=self.catalogue,
                link=self.link.name,
                interval_s=self.interval_s,
                agent="yiwang-edge",
            )
            await client.publish(wire.topic(self.cn, "birth"), wire.encode_birth(birth), qos=1)
            log.info("edge_connected", terminal=self.cn, session=self.outbox.session, link=self.link.name)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._send_loop(client), name="edge-send")
                tasks.create_task(self._heartbeats(client), name="edge-heartbeat")
                await self._receive(client)
                raise ConnectionError("the broker connection ended")  # ends the other tasks too
        finally:
            self.client = None

    # -- uplink -------------------------------------------------------------------------------------

    async def _send_loop(self, client: MqttClient) -> None:
        """Sends when a batch is due: at once for P0, when a message's worth is waiting, or when the
        oldest waiting reading has waited the link's batch interval (so a satellite link carries full
        messages); never more than MAX_IN_FLIGHT unacknowledged batches, except for P0."""
        loop = asyncio.get_running_loop()
        if self.outbox.stats().total_readings:
            self._waiting_since = loop.time()  # left from before: due after one interval
        while True:
            now = loop.time()
            self._requeue_late(now)
            if self._due(now):
                sent = await self._send_once(client, historical=False)
                if not sent:
                    sent = await self._send_once(client, historical=True)
                if sent:
                    await asyncio.sleep(0)  # let acknowledgements in between batches
                    continue
                self._urgent = False
                waiting = self.outbox.stats()
                self._waiting_since = now if waiting.total_readings > waiting.in_flight else None
            self._wake.clear()
            timeout = self.link.batch_interval_s or 1.0
            if self._waiting_since is not None:
                timeout = max(0.01, self._waiting_since + timeout - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(timeout, self.ack_timeout_s))
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's wait_for can swallow a cancellation that arrives as the wake-up
                # does; carrying on would keep whoever stops the agent waiting for ever
                raise asyncio.CancelledError

    def _due(self, now: float) -> bool:
        if self._urgent:
            return True
        if len(self._in_flight) >= MAX_IN_FLIGHT or self._waiting_since is None:
            return False
        if now - self._waiting_since >= self.link.batch_interval_s:
            return True
        stats = self.outbox.stats()
        return stats.total_readings - stats.in_flight >= self._estimate

    def _requeue_late(self, now: float) -> None:
        late = [key for key, f in self._in_flight.items() if now - f.sent > self.ack_timeout_s]
        for key in late:
            flight = self._in_flight.pop(key)
            self.outbox.requeue(flight.session, flight.ranges)
            log.info("edge_batch_unacknowledged", terminal=self.cn, session=flight.session, ranges=flight.ranges)
        if late:
            self._send_now()

    def _send_now(self) -> None:
        """Readings offered again (lost, or asked for) go without waiting for a batch interval."""
        self._waiting_since = asyncio.get_running_loop().time() - self.link.batch_interval_s
        self._wake.set()

    async def _send_once(self, client: MqttClient, *, historical: bool) -> bool:
        """Takes, packs and publishes one batch; False if there was nothing to send (or no budget)."""
        taken, chunks = await asyncio.to_thread(self._take, historical)
        if not taken and not chunks:
            return False
        session = taken[0].session if taken else chunks[0].session
        drops = tuple(self.outbox.drops())
        payload, batch_readings, batch_chunks = self._pack(taken, chunks, historical, drops)
        rest = ranges_of([r.seq for r in taken[len(batch_readings) :]])
        rest += [(chunk.first_seq, chunk.last_seq) for chunk in chunks[len(batch_chunks) :]]
        if rest:  # the rest goes in a later batch
            self.outbox.requeue(session, rest)
        sent = merge_ranges(
            [*ranges_of([r.seq for r in batch_readings]), *((c.first_seq, c.last_seq) for c in batch_chunks)]
        )
        now = self.clock()
        urgent = min([*(r.reading.priority for r in batch_readings), *(c.priority for c in batch_chunks)])
        if not self.budget.allows(len(payload), now, priority=urgent):
            # the link's budget is spent: only P0 goes; the outbox's class policies deal with the rest
            self.outbox.requeue(session, sent)
            log.info("edge_budget_spent", terminal=self.cn, remaining=self.budget.remaining(now))
            return False
        key = self._next_batch
        self._next_batch += 1
        loop = asyncio.get_running_loop()
        self._in_flight[key] = InFlight(session, sent, loop.time(), drops)
        leaf = "hist" if historical else "live"
        try:
            await client.publish(wire.topic(self.cn, leaf), payload, qos=1)
        except BaseException:
            flight = self._in_flight.pop(key, None)
            if flight is not None:
                self.outbox.requeue(flight.session, flight.ranges)
            raise
        self.budget.spend(len(payload), now)
        self.batches_sent += 1
        self.bytes_sent += len(payload)
        return True

    def _take(self, historical: bool) -> tuple[list[Sequenced], list[Chunk]]:
        """Single readings and chunks for one batch, of one session (P0 readings come first in take)."""
        live_window_s = self.link.live_window_s
        taken = self.outbox.take(self._estimate, historical=historical, live_window_s=live_window_s)
        session = taken[0].session if taken else None
        chunks = self.outbox.take_chunks(
            self._series_estimate, historical=historical, live_window_s=live_window_s, session=session
        )
        return taken, chunks

    def _pack(
        self, taken: list[Sequenced], chunks: list[Chunk], historical: bool, drops: tuple[DropReport, ...]
    ) -> tuple[bytes, list[Sequenced], list[Chunk]]:
        """The largest prefixes of ``taken`` and ``chunks`` whose batch fits the link's message size:
        chunks give way first, then readings (one chunk, or one reading, always goes)."""
        count, chunk_count = len(taken), len(chunks)
        session = taken[0].session if taken else chunks[0].session
        while True:
            chosen = taken[:count]
            batch = Batch(self.name, session, tuple(chosen), historical=historical, drops=drops)
            entries = [chunk.body for chunk in chunks[:chunk_count]]
            payload = wire.encode_batch(batch, compress=self.link.compress, series_entries=entries)
            if len(payload) <= self.link.max_message_bytes or count + chunk_count <= 1:
                roomy = len(payload) < self.link.max_message_bytes // 2
                if count and count == len(taken) and roomy:
                    self._estimate = min(MAX_BATCH_READINGS, max(self._estimate, count) * 2)
                elif count:
                    self._estimate = max(1, count)
                points = sum(chunk.count for chunk in chunks[:chunk_count])
                if chunk_count and chunk_count == len(chunks) and roomy:
                    self._series_estimate = min(wire.MAX_SERIES_POINTS, max(self._series_estimate, points) * 2)
                elif chunk_count:
                    self._series_estimate = max(self._chunk_points, points)
                return payload, chosen, chunks[:chunk_count]
            if chunk_count > 1 or (chunk_count == 1 and count == 0):
                chunk_count = max(1, int(chunk_count * SHRINK)) if chunk_count > 1 else 0
            elif chunk_count == 1 and count:
                count = int(count * SHRINK)
            else:
                count = max(1, int(count * SHRINK))

    async def _heartbeats(self, client: MqttClient) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            stats = self.outbox.stats()
            beat = wire.Heartbeat(
                terminal=self.name,
                session=self.outbox.session,
                at_ms=int(self.clock() * 1000),
                link=self.link.name,
                outbox_readings=stats.total_readings,
                outbox_bytes=stats.total_bytes,
            )
            await client.publish(wire.topic(self.cn, "hb"), wire.encode_heartbeat(beat), qos=1)

    # -- downlink -----------------------------------------------------------------------------------

    async def _receive(self, client: MqttClient) -> None:
        async for message in client.messages():
            try:
                _, leaf = wire.parse_topic(message.topic)
                if leaf == "ack":
                    await self._acknowledged(wire.decode_ack(message.payload))
                elif leaf == "cmd":
                    await self._command(client, wire.decode_command(message.payload))
            except wire.WireError as exc:
                log.warning("edge_downlink_refused", terminal=self.cn, topic=message.topic, reason=str(exc))

    async def _acknowledged(self, ack: Ack) -> None:
        if ack.stored:
            await asyncio.to_thread(self.outbox.acknowledge, ack.session, list(ack.stored))
            done = [
                key
                for key, flight in self._in_flight.items()
                if flight.session == ack.session and _covered(flight.ranges, ack.stored)
            ]
            reported: list[DropReport] = []
            for key in done:
                reported += self._in_flight.pop(key).drops
            if reported:
                self.outbox.mark_reported(reported)
        if ack.resend:
            self.outbox.requeue(ack.session, list(ack.resend))
            self._send_now()
        if ack.stored:
            self._wake.set()

    async def _command(self, client: MqttClient, command: Command) -> None:
        state_key = f"command/{command.id}"
        known = self.outbox.load_state(state_key)
        if known is not None:  # handled before: answer the same again, do not act twice
            await self._reply(client, CommandReply(**json.loads(known)))
            return
        if command.expires_ms and command.expires_ms < self.clock() * 1000:
            expired = CommandReply(command.id, AckState.EXPIRED, "arrived after it expired")
            await self._settle(client, state_key, expired)
            return
        await self._reply(client, CommandReply(command.id, AckState.RECEIVED))
        try:
            detail = await self._execute(command)
        except (ValueError, KeyError) as exc:
            await self._settle(client, state_key, CommandReply(command.id, AckState.FAILED, str(exc)))
            return
        await self._settle(client, state_key, CommandReply(command.id, AckState.EXECUTED, detail))

    async def _execute(self, command: Command) -> str:
        if command.action == "set_interval":
            interval = float(command.parameters["interval_s"])
            if not 1 <= interval <= 86_400:
                raise ValueError(f"interval_s {interval} is not between 1 and 86400")
            self.interval_s = interval
            return f"heartbeat interval {interval:g} s"
        if command.action == "resend":
            count = await asyncio.to_thread(self.outbox.requeue_all)
            self._send_now()
            return f"{count} readings offered again"
        if command.action == "ping":
            return "pong"
        raise ValueError(f"unknown action {command.action!r}")

    async def _settle(self, client: MqttClient, key: str, reply: CommandReply) -> None:
        state = {"id": reply.id, "state": str(reply.state), "detail": reply.detail}
        await asyncio.to_thread(self.outbox.save_state, key, json.dumps(state).encode())
        await self._reply(client, reply)

    async def _reply(self, client: MqttClient, reply: CommandReply) -> None:
        reply = CommandReply(reply.id, AckState(reply.state), reply.detail)
        await client.publish(wire.topic(self.cn, "cmdack"), wire.encode_command_reply(reply), qos=1)


def _covered(ranges: Sequence[tuple[int, int]], by: Sequence[tuple[int, int]]) -> bool:
    return all(any(a >= x and b <= y for x, y in by) for a, b in ranges)


__all__ = ["EdgeAgent", "Priority"]
