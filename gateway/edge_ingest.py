"""MQTT ingest: the node's side of the field terminals.

The node connects to the broker with its own certificate and subscribes to every terminal's
uplink. A batch is decoded, checked against the topic it came on (the broker's ACL lets a terminal
publish only under its own identity, so the topic is the terminal's identity), cut to the
readings the ledger has not stored, turned into canonical envelopes, appended to the log, recorded
in the ledger, and only then acknowledged to the terminal, which deletes the readings from its
outbox. Ranges still missing after a while are asked for again. Births, deaths and heartbeats keep
each terminal's liveness; a terminal silent past its expected interval is marked stale, and every
change of liveness goes into the log as a HEARTBEAT envelope for the command picture.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import Counter, Gauge
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.deadletter import DeadLetters
from edge_agent import wire
from edge_agent.model import (
    Ack,
    AckState,
    Batch,
    Birth,
    Command,
    CommandReply,
    Metric,
    MetricKind,
    Sequenced,
    Series,
)
from gateway.edge_ledger import EdgeLedger, Range, RangeSet, format_ranges, merge, parse_ranges, ranges_of
from gateway.errors import YiwangError

if TYPE_CHECKING:
    from edge_agent.mqtt import MqttClient
    from gateway.service import GatewayService, Peer

log = structlog.get_logger("yiwang.edge")

UPLINK = ("live", "hist", "birth", "death", "hb", "cmdack")
OUTGOING_LIMIT = 10_000  # downlink messages (acks, commands) waiting for the connection
BLOB_PIECE = 4000  # characters of base64 per attribute (the canonical model allows 4096)
MAX_MEASUREMENTS = 1000  # per observation envelope (the canonical model allows 1024)


MAX_ENVELOPE_POINTS = 50_000  # series points per envelope: within the model's 100,000 and its 1 MiB
MAX_SERIES_ENTRIES = 256  # series per envelope (the canonical model's limit)
WORST_POINT_BYTES = 18  # a series point at most: a double and a 10-byte varint time delta
ENVELOPE_HEADROOM = 16 * 1024  # bytes of an envelope left for its other fields (ids, attributes, names)


@dataclass(frozen=True, slots=True)
class SeriesPiece:
    """The part first..last (seqs, inclusive) of a received series: views of its arrays, no copies."""

    block: Series
    first: int
    last: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def _slice(self) -> slice:
        start = self.first - self.block.first_seq
        return slice(start, start + self.count)

    def at_ms(self) -> npt.NDArray[np.int64]:
        return self.block.at_ms[self._slice()]

    def values(self) -> npt.NDArray[np.float64]:
        return self.block.values[self._slice()]

    def first_at_ms(self) -> int:
        return int(self.at_ms().min())

    def split(self, size: int) -> list[SeriesPiece]:
        return [
            SeriesPiece(self.block, first, min(first + size - 1, self.last))
            for first in range(self.first, self.last + 1, size)
        ]

    def series(self) -> Series:
        return Series(self.block.metric, self.block.priority, self.first, self.at_ms(), self.values())


def _varints(numbers: npt.NDArray[np.uint64]) -> bytes:
    """Protobuf varints of unsigned 64-bit numbers, whole arrays at a time."""
    if not len(numbers) or int(numbers.max()) < 0x80:
        return numbers.astype(np.uint8).tobytes()
    lengths = np.ones(len(numbers), dtype=np.int64)
    for k in range(1, 10):
        lengths += numbers >= np.uint64(1 << (7 * k))
    groups = np.empty((len(numbers), 10), dtype=np.uint8)
    for k in range(10):
        more = (k < lengths - 1).astype(np.uint8) << 7
        groups[:, k] = ((numbers >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8) | more
    return groups[np.arange(10) < lengths[:, None]].tobytes()


def _key(field: int, wire_type: int) -> bytes:
    return bytes([field << 3 | wire_type])


def _varint(number: int) -> bytes:
    """One protobuf varint (a length, or an int64 as its two's complement), without numpy's set-up cost."""
    number &= (1 << 64) - 1
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


_length = _varint


def series_message(metric: str, unit: str, at_ms: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> bytes:
    """The encoded ``pb.Series`` of points (all GOOD), written from the arrays directly: parsing it
    is C work, where filling the repeated fields from Python would touch every point."""
    deltas = np.zeros(len(at_ms), dtype=np.int64)
    np.subtract(at_ms[1:], at_ms[:-1], out=deltas[1:])
    zigzag = ((deltas << 1) ^ (deltas >> 63)).view(np.uint64)
    packed_deltas = _varints(zigzag)
    packed_values = np.ascontiguousarray(values, dtype="<f8").tobytes()
    metric_raw, unit_raw = metric.encode(), unit.encode()
    parts = [_key(1, 2), _length(len(metric_raw)), metric_raw]
    if unit_raw:
        parts += [_key(2, 2), _length(len(unit_raw)), unit_raw]
    start = int(at_ms[0])
    if start:
        parts += [_key(3, 0), _varint(start)]
    parts += [_key(4, 2), _length(len(packed_deltas)), packed_deltas]
    parts += [_key(5, 2), _length(len(packed_values)), packed_values]
    return b"".join(parts)


@dataclass
class Terminal:
    """What the node knows of one terminal."""

    cn: str  # REGION/AGENCY/edge/NAME
    region: str
    agency: str
    name: str
    session: int = 0
    link: str = ""
    interval_s: float = 60.0
    catalogue: dict[int, Metric] = field(default_factory=dict)
    state: str = "unknown"  # online, offline, stale
    last_seen: float = 0.0
    readings: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # "P2/expired" -> count reported
    pending: dict[str, Command] = field(default_factory=dict)  # commands waiting for the terminal
    missing_since: dict[tuple[int, Range], float] = field(default_factory=dict)
    resend_asked: dict[tuple[int, Range], int] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "terminal": self.cn,
            "region": self.region,
            "agency": self.agency,
            "state": self.state,
            "session": self.session,
            "link": self.link,
            "interval_s": self.interval_s,
            "last_seen": self.last_seen,
            "readings": self.readings,
            "drops": dict(self.drops),
        }


class IngestMetrics:
    def __init__(self, registry: Any) -> None:
        r = registry
        self.readings = Counter("yiwang_edge_readings", "Readings stored from field terminals", registry=r)
        self.duplicates = Counter(
            "yiwang_edge_duplicate_readings", "Readings received again and not stored twice", registry=r
        )
        self.batches = Counter("yiwang_edge_batches", "Batches received from field terminals", ["topic"], registry=r)
        self.refused = Counter(
            "yiwang_edge_refused", "Messages from terminals refused, by reason", ["reason"], registry=r
        )
        self.resends = Counter("yiwang_edge_resend_requests", "Ranges asked to be sent again", registry=r)
        self.drops = Counter(
            "yiwang_edge_drops_reported",
            "Readings terminals report they dropped, by class and reason",
            ["priority", "reason"],
            registry=r,
        )
        self.terminals = Gauge("yiwang_edge_terminals", "Terminals by liveness", ["state"], registry=r)


@dataclass(frozen=True)
class IngestSettings:
    stale_after: float = 3.0  # intervals of silence before a terminal is stale
    resend_after_s: float = 5.0  # a hole this old is asked for again
    resend_attempts: int = 3
    check_interval_s: float = 1.0


class EdgeIngest:
    def __init__(
        self,
        service: GatewayService,
        peer: Peer,
        ledger: EdgeLedger,
        metrics: IngestMetrics,
        letters: DeadLetters,
        *,
        node_id: str,
        settings: IngestSettings | None = None,
    ) -> None:
        self.service = service
        self.peer = peer
        self.ledger = ledger
        self.metrics = metrics
        self.letters = letters
        self.node_id = node_id
        self.settings = settings or IngestSettings()
        self.terminals: dict[str, Terminal] = {}
        self.client: MqttClient | None = None
        self.subscribed = asyncio.Event()  # set while the ingest listens to the terminals
        self._outgoing: asyncio.Queue[tuple[str, bytes]] | None = None

    # -- the connection -----------------------------------------------------------------------------

    async def serve(self, client: MqttClient) -> None:
        """One connection's life: subscribe, then handle messages until it ends (a lost connection
        raises, and ``connect_forever`` connects again; a closed one returns)."""
        self.client = client
        try:
            await client.subscribe([(wire.subscription(leaf), 1) for leaf in UPLINK])
            self.subscribed.set()
            log.info("edge_ingest_subscribed", node=self.node_id, broker=client.address)
            self._outgoing = asyncio.Queue(OUTGOING_LIMIT)
            async with asyncio.TaskGroup() as tasks:
                watcher = tasks.create_task(self._watch(), name="edge-liveness")
                sender = tasks.create_task(self._downlink(client, self._outgoing), name="edge-downlink")
                async for message in client.messages():
                    await self.handle(message.topic, message.payload)
                watcher.cancel()
                sender.cancel()
        finally:
            self.client = None
            self._outgoing = None
            self.subscribed.clear()

    async def handle(self, topic: str, payload: bytes) -> None:
        """One message from a terminal. Bad input is refused, counted and logged; it never stops the ingest."""
        try:
            cn, leaf = wire.parse_topic(topic)
            terminal = self._terminal(cn)
            terminal.last_seen = time.time()
            if leaf in {"live", "hist"}:
                await self._batch(terminal, wire.decode_batch(payload), leaf)
            elif leaf == "birth":
                await self._birth(terminal, wire.decode_birth(payload))
            elif leaf == "death":
                death = wire.decode_death(payload)
                if death.session >= terminal.session:
                    await self._liveness(terminal, "offline")
            elif leaf == "hb":
                heartbeat = wire.decode_heartbeat(payload)
                terminal.session = max(terminal.session, heartbeat.session)
                if terminal.state != "online":
                    await self._liveness(terminal, "online")
            elif leaf == "cmdack":
                await self._command_reply(terminal, wire.decode_command_reply(payload))
        except (YiwangError, ValueError) as exc:
            reason = type(exc).__name__
            self.metrics.refused.labels(reason).inc()
            log.warning("edge_message_refused", topic=topic, reason=str(exc), bytes=len(payload))

    def _terminal(self, cn: str) -> Terminal:
        terminal = self.terminals.get(cn)
        if terminal is None:
            region, agency, _, name = cn.split("/")
            terminal = self.terminals[cn] = Terminal(cn, region, agency, name)
        return terminal

    # -- readings -----------------------------------------------------------------------------------

    async def _batch(self, terminal: Terminal, batch: Batch, leaf: str) -> None:
        if batch.terminal != terminal.name:
            raise wire.WireError(
                f"the batch says terminal {batch.terminal!r} but came on {terminal.cn}'s topic", field="terminal"
            )
        self.metrics.batches.labels(leaf).inc()
        for drop in batch.drops:
            key = f"P{int(drop.priority)}/{drop.reason}"
            terminal.drops[key] = terminal.drops.get(key, 0) + drop.count
            self.metrics.drops.labels(f"P{int(drop.priority)}", str(drop.reason)).inc(drop.count)
        if terminal.state != "online":
            await self._liveness(terminal, "online")
        have = self.ledger.stored(terminal.cn, batch.session)
        fresh = [r for r in batch.readings if r.seq not in have]
        # A series' range is new, stored, or partly stored: only its new parts go on (array slices).
        fresh_pieces = [
            SeriesPiece(block, first, last)
            for block in batch.series
            for first, last in have.missing(block.first_seq, block.last_seq)
        ]
        received = len(batch.readings) + sum(block.count for block in batch.series)
        fresh_count = len(fresh) + sum(piece.count for piece in fresh_pieces)
        self.metrics.duplicates.inc(received - fresh_count)
        if fresh_count:
            envelopes = self._envelopes(terminal, batch.session, fresh)
            if fresh_pieces:
                envelopes += self._series_envelopes(terminal, batch.session, fresh_pieces)
                envelopes.sort(key=lambda env: env.priority)  # P0 first, as _envelopes orders its own
            request = gw.PublishRequest(envelopes=envelopes)
            reply = await self.service.publish_batch(request.SerializeToString(), self.peer)
            stored: list[Range] = []
            refused: list[Range] = []
            reasons: list[str] = []
            for env, result in zip(envelopes, reply.results, strict=True):
                ranges = parse_ranges(env.attributes["edge.seq"])
                if result.outcome == gw.PublishResult.REJECTED:
                    refused += ranges
                    reasons.append(f"{result.field}: {result.reason}")
                else:
                    stored += ranges
            if refused:
                # a verdict, not an outage: kept in the dead-letter store, and acknowledged like the rest
                refused_set = RangeSet(refused)
                refused_count = sum(last - first + 1 for first, last in refused)
                self.metrics.refused.labels("rejected").inc(refused_count)
                log.warning("edge_readings_refused", terminal=terminal.cn, readings=refused_count, reason=reasons[0])
                kept = Batch(
                    terminal.name,
                    batch.session,
                    tuple(r for r in fresh if r.seq in refused_set),
                    series=tuple(
                        piece.series()
                        for piece in fresh_pieces
                        if piece.first in refused_set and piece.last in refused_set
                    ),
                )
                await asyncio.to_thread(
                    functools.partial(
                        self.letters.add,
                        f"edge:{terminal.cn}",
                        "yiwang-edge",
                        source=terminal.cn,
                        kind="rejected",
                        reason="; ".join(sorted(set(reasons)))[:2000],
                        data=wire.encode_batch(kept),
                    )
                )
            offsets = [r.offset for r in reply.results if r.outcome != gw.PublishResult.REJECTED]
            await asyncio.to_thread(
                self.ledger.record,
                [(terminal.cn, batch.session, merge(stored + refused))],
                max(offsets, default=0) + 1,
            )
            stored_count = sum(last - first + 1 for first, last in stored)
            self.metrics.readings.inc(stored_count)
            terminal.readings += stored_count
        terminal.session = max(terminal.session, batch.session)
        received_ranges = ranges_of(r.seq for r in batch.readings if r.seq)
        received_ranges += [(block.first_seq, block.last_seq) for block in batch.series]
        await self._acknowledge(terminal, batch.session, received_ranges)

    async def _acknowledge(self, terminal: Terminal, session: int, received: list[Range]) -> None:
        have = self.ledger.stored(terminal.cn, session)
        stored = [r for r in merge(received) if r[0] in have and r[1] in have]
        resend = self._due_resends(terminal, session)
        ack = Ack(session=session, stored=tuple(stored), resend=tuple(resend))
        await self._send(terminal, "ack", wire.encode_ack(ack))

    def _due_resends(self, terminal: Terminal, session: int) -> list[Range]:
        """Holes that have stayed open for a while, asked for a few times, not on every batch."""
        now = time.monotonic()
        due = []
        for hole in self.ledger.stored(terminal.cn, session).holes():
            key = (session, hole)
            since = terminal.missing_since.setdefault(key, now)
            asked = terminal.resend_asked.get(key, 0)
            wait = self.settings.resend_after_s * (2**asked)
            if asked < self.settings.resend_attempts and now - since >= wait:
                terminal.resend_asked[key] = asked + 1
                due.append(hole)
                self.metrics.resends.inc()
        return due

    def _envelopes(self, terminal: Terminal, session: int, readings: Sequence[Sequenced]) -> list[pb.Envelope]:
        """Observations grouped per station (one envelope per batch and station); positions, alarms,
        status and bulk one envelope each. Ids come from the readings' numbers, so the same readings
        always make the same envelopes."""
        now_ns = time.time_ns()
        by_station: dict[str, list[Sequenced]] = {}
        singles: list[tuple[Sequenced, Metric]] = []
        for item in readings:
            index = item.reading.metric
            metric = terminal.catalogue.get(index) or Metric(index, f"m{index}")
            if metric.kind is MetricKind.OBSERVATION and item.reading.priority > 0:
                by_station.setdefault(metric.station_id or terminal.name, []).append(item)
            else:
                singles.append((item, metric))
        out = []
        chunks = [
            (station, items[i : i + MAX_MEASUREMENTS])
            for station, items in by_station.items()
            for i in range(0, len(items), MAX_MEASUREMENTS)
        ]
        for station, items in chunks:
            env = self._base(terminal, session, [i.seq for i in items], now_ns, f"obs-{station}")
            env.kind = pb.OBSERVATION
            env.priority = min(int(i.reading.priority) for i in items)
            env.observed_at.FromMilliseconds(min(i.reading.at_ms for i in items))
            env.observation.station_id = station
            env.observation.device_id = terminal.name
            for item in items:
                metric = terminal.catalogue.get(item.reading.metric) or Metric(item.reading.metric, "")
                m = env.observation.measurements.add(
                    metric=metric.code or f"m{item.reading.metric}", value=item.reading.value, unit=metric.unit
                )
                m.quality = pb.GOOD
                m.at.FromMilliseconds(item.reading.at_ms)
            out.append(env)
        for item, metric in singles:
            r = item.reading
            env = self._base(terminal, session, [item.seq], now_ns, metric.kind.value)
            env.priority = int(r.priority)
            env.observed_at.FromMilliseconds(r.at_ms)
            if r.lat is not None and r.lon is not None:
                env.geometry.point.lat, env.geometry.point.lon = r.lat, r.lon
            if metric.kind is MetricKind.POSITION:
                env.kind = pb.POSITION
                env.position.unit_id = terminal.name
                env.position.speed_mps = r.value
                env.position.status = r.text
            elif metric.kind is MetricKind.STATUS:
                env.kind = pb.HEARTBEAT
                env.heartbeat.subject = terminal.cn
                env.heartbeat.state = r.text or str(r.value)
                env.heartbeat.interval_s = int(terminal.interval_s)
            else:  # observations of class P0, alarms and bulk: an observation each
                env.kind = pb.OBSERVATION
                env.observation.station_id = metric.station_id or terminal.name
                env.observation.device_id = terminal.name
                m = env.observation.measurements.add(metric=metric.code, value=r.value, unit=metric.unit)
                m.quality = pb.GOOD
                m.at.FromMilliseconds(r.at_ms)
                if r.text:
                    env.attributes["edge.text"] = r.text
                if metric.kind is MetricKind.ALARM or r.priority == 0:
                    env.attributes["edge.alarm"] = metric.code
                if r.blob:  # base64 in pieces an attribute value can hold
                    text = base64.b64encode(r.blob).decode("ascii")
                    pieces = [text[i : i + BLOB_PIECE] for i in range(0, len(text), BLOB_PIECE)]
                    env.attributes["edge.blob.pieces"] = str(len(pieces))
                    for i, piece in enumerate(pieces):
                        env.attributes[f"edge.blob.{i}"] = piece
            out.append(env)
        out.sort(key=lambda env: env.priority)  # P0 first: an alarm never waits behind a batch of routine readings
        return out

    def _series_envelopes(self, terminal: Terminal, session: int, pieces: Sequence[SeriesPiece]) -> list[pb.Envelope]:
        """One OBSERVATION envelope per batch and station (more when it would pass the canonical
        model's limits) holding the pieces as packed Series, built from the arrays at C speed."""
        now_ns = time.time_ns()
        # Within the node's own limits, whatever its config: a point takes at most 18 bytes (a
        # double and a 10-byte varint), and some room is left for the envelope's other fields.
        limits = self.service.validator.limits
        most_points = max(
            1,
            min(
                MAX_ENVELOPE_POINTS,
                limits.max_series_points,
                limits.max_points_per_series,
                (limits.max_envelope_bytes - ENVELOPE_HEADROOM) // WORST_POINT_BYTES,
            ),
        )
        most_series = max(1, min(MAX_SERIES_ENTRIES, limits.max_series))
        by_station: dict[str, list[tuple[SeriesPiece, Metric]]] = {}
        for piece in pieces:
            index = piece.block.metric
            metric = terminal.catalogue.get(index) or Metric(index, f"m{index}")
            for part in piece.split(most_points):
                by_station.setdefault(metric.station_id or terminal.name, []).append((part, metric))
        out = []
        for station, parts in by_station.items():
            groups: list[list[tuple[SeriesPiece, Metric]]] = [[]]
            points = 0
            for part, metric in parts:
                if groups[-1] and (points + part.count > most_points or len(groups[-1]) >= most_series):
                    groups.append([])
                    points = 0
                groups[-1].append((part, metric))
                points += part.count
            for group in groups:
                ranges = merge((part.first, part.last) for part, _ in group)
                env = self._base(terminal, session, [], now_ns, f"series-{station}", ranges=ranges)
                env.kind = pb.OBSERVATION
                env.priority = min(int(part.block.priority) for part, _ in group)
                env.observed_at.FromMilliseconds(min(part.first_at_ms() for part, _ in group))
                env.observation.station_id = station
                env.observation.device_id = terminal.name
                for part, metric in group:
                    env.observation.series.add().MergeFromString(
                        series_message(metric.code or f"m{metric.index}", metric.unit, part.at_ms(), part.values())
                    )
                out.append(env)
        return out

    def _from(self, terminal: Terminal, envelope_id: str) -> pb.Envelope:
        """An envelope the terminal is the origin of, entered through this node."""
        env = pb.Envelope(id=envelope_id, region=terminal.region, status=pb.ACTUAL)
        env.origin.agency = terminal.agency
        env.origin.region = terminal.region
        env.origin.node = self.node_id
        env.origin.system = f"edge:{terminal.name}"
        env.sent_at.GetCurrentTime()
        return env

    def _base(
        self,
        terminal: Terminal,
        session: int,
        seqs: list[int],
        now_ns: int,
        what: str,
        *,
        ranges: list[Range] | None = None,
    ) -> pb.Envelope:
        if ranges is None:
            ranges = ranges_of(seqs)
        text = format_ranges(ranges)
        span = text.replace(",", ".") if len(text) <= 48 else hashlib.sha256(text.encode()).hexdigest()[:32]
        env = self._from(terminal, f"edge-{terminal.region}-{terminal.agency}-{terminal.name}-{session}-{span}-{what}")
        env.sent_at.FromNanoseconds(now_ns)
        env.provenance.original_format = "yiwang-edge"
        env.attributes["edge.terminal"] = terminal.cn
        env.attributes["edge.session"] = str(session)
        env.attributes["edge.seq"] = text
        return env

    # -- liveness --------------------------------------------------------------------------------------

    async def _birth(self, terminal: Terminal, birth: Birth) -> None:
        if birth.terminal != terminal.name:
            raise wire.WireError(
                f"the birth names {birth.terminal!r} but came on {terminal.cn}'s topic", field="terminal"
            )
        terminal.session = max(terminal.session, birth.session)
        terminal.link = birth.link
        terminal.interval_s = birth.interval_s
        terminal.catalogue = {m.index: m for m in birth.catalogue}
        await self._liveness(terminal, "online", force=True)
        await self._flush_pending()
        # ranges stored for earlier sessions may not have been acknowledged before the link fell
        for session in self.ledger.sessions(terminal.cn):
            stored = self.ledger.stored(terminal.cn, session).ranges
            if stored:
                await self._send(terminal, "ack", wire.encode_ack(Ack(session=session, stored=tuple(stored))))

    async def _liveness(self, terminal: Terminal, state: str, *, force: bool = False) -> None:
        if terminal.state == state and not force:
            return
        terminal.state = state
        log.info("edge_terminal_liveness", terminal=terminal.cn, state=state, session=terminal.session)
        self._count_states()
        env = self._from(terminal, f"edge-live-{terminal.region}-{terminal.agency}-{terminal.name}-{time.time_ns()}")
        env.kind = pb.HEARTBEAT
        env.heartbeat.subject = terminal.cn
        env.heartbeat.state = state
        env.heartbeat.interval_s = int(terminal.interval_s)
        env.attributes["edge.link"] = terminal.link
        env.attributes["edge.session"] = str(terminal.session)
        reply = await self.service.publish_batch(gw.PublishRequest(envelopes=[env]).SerializeToString(), self.peer)
        if reply.results and reply.results[0].outcome == gw.PublishResult.REJECTED:
            log.warning("edge_liveness_refused", terminal=terminal.cn, reason=reply.results[0].reason)

    def _count_states(self) -> None:
        counts: dict[str, int] = {}
        for t in self.terminals.values():
            counts[t.state] = counts.get(t.state, 0) + 1
        for state in ("online", "offline", "stale", "unknown"):
            self.metrics.terminals.labels(state).set(counts.get(state, 0))

    async def _watch(self) -> None:
        """Marks terminals stale that have been silent past their expected interval."""
        while True:
            await asyncio.sleep(self.settings.check_interval_s)
            now = time.time()
            for terminal in list(self.terminals.values()):
                silent = now - terminal.last_seen
                if terminal.state == "online" and silent > self.settings.stale_after * terminal.interval_s:
                    await self._liveness(terminal, "stale")
            await self._flush_pending()

    async def _command_reply(self, terminal: Terminal, reply: CommandReply) -> None:
        env = self._from(terminal, f"edge-cmdack-{terminal.name}-{reply.id}-{reply.state}"[:256])
        env.kind = pb.COMMAND_ACK
        env.references.append(reply.id)
        env.command_ack.command_id = reply.id
        env.command_ack.state = ACK_STATES.get(str(reply.state), pb.ACK_STATE_UNSPECIFIED)
        env.command_ack.detail = reply.detail
        await self.service.publish_batch(gw.PublishRequest(envelopes=[env]).SerializeToString(), self.peer)

    async def _send(self, terminal: Terminal, leaf: str, payload: bytes) -> None:
        """Queues a message to a terminal. The consumer of the uplink never waits for a downlink's
        PUBACK: while it waits, the client would not read the socket, and the PUBACK would never come."""
        queue = self._outgoing
        if queue is None or self.client is None:
            return  # the terminal asks again (its readings stay in its outbox until acknowledged)
        try:
            queue.put_nowait((wire.topic(terminal.cn, leaf), payload))
        except asyncio.QueueFull:
            # acknowledgements are derived from the ledger: the terminal's resend gets a new one
            self.metrics.refused.labels("downlink_full").inc()
            log.warning("edge_downlink_full", terminal=terminal.cn, leaf=leaf)

    async def _downlink(self, client: MqttClient, queue: asyncio.Queue[tuple[str, bytes]]) -> None:
        while True:
            topic, payload = await queue.get()
            await client.publish(topic, payload, qos=1)

    def report(self) -> list[dict[str, Any]]:
        return [t.report() for t in sorted(self.terminals.values(), key=lambda t: t.cn)]

    # -- downlink ---------------------------------------------------------------------------------------

    async def commands(self) -> None:
        """Follows the log for COMMAND envelopes addressed to terminals (a target naming a terminal's
        identity, REGION/AGENCY/edge/NAME) and sends each to its terminal; a command that expires
        before it can be delivered is answered EXPIRED. Commands for terminals not connected now wait
        for their next birth."""
        log_ = self.service.log
        position = log_.next_offset  # commands issued from now on; earlier ones were for earlier sessions
        while not log_.closed:
            await log_.wait_beyond(position, timeout=5.0)  # returns once next_offset > position
            _stop_if_cancelled()
            if log_.next_offset <= position:
                continue
            request = gw.QueryRequest(from_offset=position, filter=gw.Filter(kinds=[pb.COMMAND]), page_size=500)
            reply = gw.QueryReply.FromString(await self.service.query_bytes(request, self.peer))
            for delivery in reply.deliveries:
                await self._command(delivery.envelope)
            position = log_.next_offset if not reply.next_page_token else reply.deliveries[-1].offset + 1
            await self._flush_pending()

    async def _command(self, env: pb.Envelope) -> None:
        for target in env.command.targets:
            try:
                wire.check_cn(target)
            except wire.WireError:
                continue  # not a terminal: another system's command
            terminal = self._terminal(target)
            expires_ms = env.expires_at.ToMilliseconds() if env.HasField("expires_at") else 0
            command = Command(env.id, env.command.action, expires_ms, dict(env.command.parameters))
            terminal.pending[env.id] = command

    async def _flush_pending(self) -> None:
        now_ms = time.time() * 1000
        for terminal in self.terminals.values():
            for command_id, command in list(terminal.pending.items()):
                if command.expires_ms and command.expires_ms < now_ms:
                    del terminal.pending[command_id]
                    reply = CommandReply(command_id, AckState.EXPIRED, "expired before the terminal could be reached")
                    await self._command_reply(terminal, reply)
                elif terminal.state == "online" and self.client is not None:
                    del terminal.pending[command_id]
                    await self._send(terminal, "cmd", wire.encode_command(command))


def _stop_if_cancelled() -> None:
    """Raises CancelledError when this task was asked to stop. On Python 3.11 ``asyncio.wait_for``
    (inside the log's ``wait_beyond``) can swallow a cancellation that arrives just as its wait ends;
    a loop that then carried on would keep the node's stop waiting for it forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


ACK_STATES = {
    "received": pb.RECEIVED,
    "executed": pb.EXECUTED,
    "failed": pb.FAILED,
    "expired": pb.EXPIRED,
    "refused": pb.REFUSED,
}


async def replay_into_ledger(service: GatewayService, ledger: EdgeLedger) -> int:
    """Records in the ledger the edge envelopes appended after its last commit (after a crash)."""
    start = ledger.complete_to
    if start == 0:
        start = 1
    request = gw.QueryRequest(from_offset=start, page_size=1000)
    entries: list[tuple[str, int, list[Range]]] = []
    last = 0
    while True:
        reply = gw.QueryReply.FromString(await service.query_bytes(request))
        for delivery in reply.deliveries:
            attributes = delivery.envelope.attributes
            if "edge.seq" in attributes and "edge.terminal" in attributes:
                session = int(attributes["edge.session"])
                entries.append((attributes["edge.terminal"], session, parse_ranges(attributes["edge.seq"])))
            last = max(last, delivery.offset)
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    if entries or last:
        await asyncio.to_thread(ledger.record, entries, last + 1)
    return len(entries)
