"""The node as the data centre of monitoring stations: HJ 212 and SL 651 over TCP.

Environmental and hydrological stations open a TCP connection to their data centre and send their
readings; the centre answers each message as the standard says. Here the node listens for them
itself. A protocol (``adapters.station_protocol``) turns the bytes of one connection into messages
and a message into envelopes and replies; this module owns the sockets, the station registry and
the durable append:

- **Registry.** A station is known by protocol and address, with its password, region, agency,
  place and alarm limits (``[stations] registry``, a TOML file). A message from an unknown station,
  or with the wrong password, is refused with the protocol's refusal and counted; nothing of it is
  stored.
- **Durability before acknowledgement.** The envelopes of many connections are appended together
  in small batches; a message's data acknowledgement leaves only once its envelopes are in the log,
  and the replies of one connection leave in the order of its messages.
- **Cheap connections.** A connection is a transport and the protocol's session (a bounded buffer):
  thousands of idle stations cost little. Idle connections are closed after ``idle_timeout_s``; past
  ``max_connections`` new ones are closed at once; a connection with too many messages waiting for
  the log stops being read until they are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import sqlite3
import time
import tomllib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.errors import AdapterError
from adapters.station_protocol import Exchange, Limits, Message, Session, Station, StationProtocol
from gateway.errors import ConfigError, YiwangError
from gateway.regions import RegionTable
from gateway.validation import AGENCIES
from gateway.wire import length_delimited

log = structlog.get_logger("yiwang.stations")

BATCH_ENVELOPES = 2_000  # most envelopes per append
BATCH_DELAY_S = 0.005  # how long a batch waits for more before it is appended
MAX_WAITING_PER_CONNECTION = 32  # messages of one connection waiting for the log before reading pauses


# -- the registry ---------------------------------------------------------------------------------


def load_registry(
    path: Path, regions: RegionTable, agencies: frozenset[str] = AGENCIES
) -> dict[str, dict[str, Station]]:
    """The stations of a registry file, by protocol and station address.

    ```toml
    [[station]]
    protocol = "hj212"            # or sl651
    id = "41050022000017"          # HJ 212 MN, or the SL 651 station address (10 hex digits)
    password = "123456"
    region = "410502"              # the county it lies in
    agency = "ecology"
    name = "安阳市环保局监测站"
    lat = 36.0977
    lon = 114.3926
    limits = { a34004 = { high = 75.0 }, w01018 = { low = 0.0, high = 40.0 } }
    ```
    """
    source = str(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the station registry: {exc}", source=source) from None
    unknown = set(table) - {"station"}
    if unknown:
        raise ConfigError("unknown key (the registry holds [[station]] entries)", key=sorted(unknown)[0], source=source)
    out: dict[str, dict[str, Station]] = {}
    for index, row in enumerate(table.get("station", [])):
        key = f"station[{index}]"
        out.setdefault(_text(row, "protocol", key, source), {})
        station = _station(row, key, source, regions, agencies)
        stations = out[row["protocol"]]
        if station.id in stations:
            raise ConfigError(f"station {station.id} is listed twice", key=f"{key}.id", source=source)
        stations[station.id] = station
    return out


_STATION_KEYS = {"protocol", "id", "password", "region", "agency", "name", "lat", "lon", "limits"}


def _text(row: Mapping[str, Any], name: str, key: str, source: str, *, required: bool = True) -> str:
    value = row.get(name, "")
    if not isinstance(value, str) or (required and not value):
        raise ConfigError("a non-empty string is required", key=f"{key}.{name}", source=source)
    return value


def _number(row: Mapping[str, Any], name: str, key: str, source: str) -> float | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError("a number is required", key=f"{key}.{name}", source=source)
    return float(value)


def _station(row: Mapping[str, Any], key: str, source: str, regions: RegionTable, agencies: frozenset[str]) -> Station:
    unknown = set(row) - _STATION_KEYS
    if unknown:
        raise ConfigError("unknown key", key=f"{key}.{sorted(unknown)[0]}", source=source)
    region = _text(row, "region", key, source)
    if region not in regions:
        raise ConfigError(f"{region} is not a known GB/T 2260 region code", key=f"{key}.region", source=source)
    agency = _text(row, "agency", key, source)
    if agency not in agencies:
        raise ConfigError(f"unknown agency code {agency!r}", key=f"{key}.agency", source=source)
    limits: dict[str, Limits] = {}
    raw_limits = row.get("limits", {})
    if not isinstance(raw_limits, dict):
        raise ConfigError("a table of metric = { low, high } is required", key=f"{key}.limits", source=source)
    for metric, bounds in raw_limits.items():
        where = f"{key}.limits.{metric}"
        if not isinstance(bounds, dict) or set(bounds) - {"low", "high"} or not bounds:
            raise ConfigError("give low, high or both", key=where, source=source)
        limits[metric] = Limits(_number(bounds, "low", where, source), _number(bounds, "high", where, source))
    lat, lon = _number(row, "lat", key, source), _number(row, "lon", key, source)
    if (lat is None) != (lon is None):
        raise ConfigError("give both lat and lon, or neither", key=f"{key}.lat", source=source)
    return Station(
        id=_text(row, "id", key, source),
        password=_text(row, "password", key, source, required=False),
        region=region,
        agency=agency,
        name=_text(row, "name", key, source, required=False),
        lat=lat,
        lon=lon,
        limits=limits,
    )


# -- metrics --------------------------------------------------------------------------------------


class StationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge(
            "yiwang_station_connections", "Station connections open", ["protocol"], registry=registry
        )
        self.messages = Counter(
            "yiwang_station_messages", "Station messages, by outcome", ["protocol", "outcome"], registry=registry
        )
        self.refused = Counter(
            "yiwang_station_refused", "Station messages refused, by reason", ["protocol", "reason"], registry=registry
        )
        self.envelopes = Counter(
            "yiwang_station_envelopes", "Envelopes from stations appended to the log", ["protocol"], registry=registry
        )


# -- batching -------------------------------------------------------------------------------------

Publish = Callable[[bytes], Awaitable[gw.PublishReply]]
_TAG_ENVELOPES = b"\x0a"  # PublishRequest.envelopes: field 1, length-delimited


@dataclass(slots=True)
class _Waiting:
    envelopes: list[pb.Envelope]
    done: asyncio.Future[list[gw.PublishResult]]


class Batcher:
    """Appends the envelopes of many messages together; each message learns its own results."""

    def __init__(self, publish: Publish, name: str = "station-batcher") -> None:
        self.publish = publish
        self.name = name  # of its task
        self._waiting: list[_Waiting] = []
        self._count = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for waiting in self._waiting:
            if not waiting.done.done():
                waiting.done.set_exception(ConnectionAbortedError("the node is stopping"))
                waiting.done.exception()  # retrieved: nobody may be waiting any more
        self._waiting = []

    def submit(self, envelopes: list[pb.Envelope]) -> asyncio.Future[list[gw.PublishResult]]:
        done: asyncio.Future[list[gw.PublishResult]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(envelopes, done))
        self._count += len(envelopes)
        self._wake.set()
        return done

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._count < BATCH_ENVELOPES:
                await asyncio.sleep(BATCH_DELAY_S)  # let a few more connections join this append
            self._wake.clear()
            taken: list[_Waiting] = []
            count = 0
            while self._waiting and (not taken or count + len(self._waiting[0].envelopes) <= BATCH_ENVELOPES):
                waiting = self._waiting.pop(0)
                taken.append(waiting)
                count += len(waiting.envelopes)
            self._count -= count
            if self._waiting:
                self._wake.set()
            await self._append(taken)

    async def _append(self, taken: list[_Waiting]) -> None:
        # A PublishRequest written out by hand: its field 1 once per envelope. Each envelope is
        # serialised where it is, not first copied into a request message (half the time).
        raw = b"".join(
            [length_delimited(_TAG_ENVELOPES, env.SerializeToString()) for w in taken for env in w.envelopes]
        )
        try:
            reply = await self.publish(raw)
        except (YiwangError, sqlite3.Error, OSError) as exc:  # each waiting connection refuses and logs it
            for waiting in taken:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            return
        results = list(reply.results)
        start = 0
        for waiting in taken:
            end = start + len(waiting.envelopes)
            if not waiting.done.done():
                waiting.done.set_result(results[start:end])
            start = end


# -- connections ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Reply:
    data: bytes
    close: bool = False
    waiting: asyncio.Future[list[gw.PublishResult]] | None = None
    message: Message | None = None


def peer_name(transport: asyncio.BaseTransport) -> str:
    """HOST:PORT of the other end of a connection, for the logs."""
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


class StationConnection(asyncio.Protocol):
    """One station's TCP connection: its protocol session and its replies in order."""

    def __init__(self, server: StationServer) -> None:
        self.server = server
        self.session: Session = server.protocol.session()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.last_seen = time.monotonic()
        self.replies: deque[_Reply] = deque()
        self.waiting = 0
        self.paused = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = peer_name(transport)
        self.server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # closed, reset or timed out: the station reconnects and sends again what was not answered
        self.server.closed(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        for item in self.session.feed(data):
            if isinstance(item, AdapterError):
                self.server.refuse(self, None, item)
            else:
                self.server.handle(self, item)

    def add(self, reply: _Reply) -> None:
        self.replies.append(reply)
        if reply.waiting is not None:
            self.waiting += 1
            if self.waiting >= MAX_WAITING_PER_CONNECTION and self.transport is not None and not self.paused:
                self.transport.pause_reading()  # the log is behind: this station waits for its answers
                self.paused = True
            reply.waiting.add_done_callback(lambda _: self.flush())
        self.flush()

    def flush(self) -> None:
        """Sends the replies that are ready, in order; stops at the first still waiting for the log.
        The replies of one batch go out in one write (one system call, not one per message)."""
        ready: list[bytes] = []
        while self.replies:
            reply = self.replies[0]
            if reply.waiting is not None:
                if not reply.waiting.done():
                    break
                self.waiting -= 1
                data = self.server.settled(self, reply)
            else:
                data = reply.data
            self.replies.popleft()
            if self.transport is None or self.transport.is_closing():
                continue
            if data:
                ready.append(data)
            if reply.close:
                self.transport.write(b"".join(ready))
                ready = []
                self.transport.close()
        if ready and self.transport is not None and not self.transport.is_closing():
            self.transport.write(ready[0] if len(ready) == 1 else b"".join(ready))
        if self.paused and self.waiting < MAX_WAITING_PER_CONNECTION // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False


@dataclass
class StationServer:
    """Listens for the stations of one protocol."""

    protocol: StationProtocol
    stations: Mapping[str, Station]
    batcher: Batcher
    metrics: StationMetrics
    idle_timeout_s: float = 600.0
    max_connections: int = 10_000
    connections: set[StationConnection] = field(default_factory=set)
    _server: asyncio.Server | None = None
    _sweeper: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        # the two counters every stored message moves, looked up once (labels() costs a lock and a dict)
        self._stored_counted = self.metrics.messages.labels(self.protocol.name, "stored")
        self._envelopes_counted = self.metrics.envelopes.labels(self.protocol.name)

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: StationConnection(self), host, port, backlog=1024)
        self._sweeper = asyncio.create_task(self._sweep(), name=f"{self.protocol.name}-idle")
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            await self._server.wait_closed()
            self._server = None

    def opened(self, connection: StationConnection) -> None:
        if len(self.connections) >= self.max_connections:
            self.metrics.refused.labels(self.protocol.name, "connections").inc()
            log.warning("station_connection_refused", protocol=self.protocol.name, peer=connection.peer,
                        reason=f"more than {self.max_connections} connections")  # fmt: skip
            assert connection.transport is not None
            connection.transport.abort()
            return
        self.connections.add(connection)
        self.metrics.connections.labels(self.protocol.name).set(len(self.connections))

    def closed(self, connection: StationConnection) -> None:
        self.connections.discard(connection)
        self.metrics.connections.labels(self.protocol.name).set(len(self.connections))

    def handle(self, connection: StationConnection, message: Message) -> None:
        name = self.protocol.name
        station = self.stations.get(message.station_id)
        if station is None:
            self.refuse(connection, message, AdapterError(f"station {message.station_id} is not registered",
                                                          field="station", kind="unknown-station"))  # fmt: skip
            return
        if message.password is not None and not hmac.compare_digest(
            message.password.encode(), station.password.encode()
        ):
            self.refuse(connection, message, AdapterError(f"wrong password for station {station.id}",
                                                          field="password", kind="password"))  # fmt: skip
            return
        try:
            exchange: Exchange = connection.session.exchange(message, station, time.time())
        except AdapterError as exc:
            self.refuse(connection, message, exc)
            return
        if exchange.reply_now:
            connection.add(_Reply(exchange.reply_now))
        if exchange.envelopes:
            waiting = self.batcher.submit(exchange.envelopes)
            connection.add(_Reply(exchange.reply_when_durable, exchange.close, waiting, message=message))
        else:
            self.metrics.messages.labels(name, "answered").inc()
            if exchange.reply_when_durable or exchange.close:
                connection.add(_Reply(exchange.reply_when_durable, exchange.close))

    def settled(self, connection: StationConnection, reply: _Reply) -> bytes:
        """The reply to send now that a message's envelopes were appended (or refused)."""
        assert reply.waiting is not None
        name = self.protocol.name
        if reply.waiting.cancelled() or reply.waiting.exception() is not None:
            error = reply.waiting.exception() if not reply.waiting.cancelled() else None
            self.metrics.messages.labels(name, "failed").inc()
            log.error("station_append_failed", protocol=name, peer=connection.peer, error=repr(error))
            return self._not_stored(connection, reply)
        results = reply.waiting.result()
        refused = [r for r in results if r.outcome == gw.PublishResult.REJECTED]
        self._envelopes_counted.inc(len(results) - len(refused))
        if refused:
            self.metrics.messages.labels(name, "refused").inc()
            for result in refused:
                self.metrics.refused.labels(name, "rejected").inc()
                log.warning("station_envelope_refused", protocol=name, peer=connection.peer, id=result.id,
                            field=result.field, reason=result.reason)  # fmt: skip
            return self._not_stored(connection, reply)
        self._stored_counted.inc()
        return reply.data

    @staticmethod
    def _not_stored(connection: StationConnection, reply: _Reply) -> bytes:
        """The protocol's refusal of a message whose envelopes did not reach the log (built only then)."""
        return connection.session.refusal(reply.message, AdapterError("not stored", kind="stored"))

    def refuse(self, connection: StationConnection, message: Message | None, error: AdapterError) -> None:
        self.metrics.messages.labels(self.protocol.name, "refused").inc()
        self.metrics.refused.labels(self.protocol.name, error.kind).inc()
        log.info("station_message_refused", protocol=self.protocol.name, peer=connection.peer,
                 station=message.station_id if message else "", reason=str(error))  # fmt: skip
        answer = connection.session.refusal(message, error)
        if answer:
            connection.add(_Reply(answer))

    async def _sweep(self) -> None:
        """Closes connections silent for longer than the idle timeout."""
        while True:
            await asyncio.sleep(max(0.05, self.idle_timeout_s / 4))
            cutoff = time.monotonic() - self.idle_timeout_s
            for connection in list(self.connections):
                if connection.last_seen < cutoff and not connection.replies and connection.transport is not None:
                    log.info("station_idle_closed", protocol=self.protocol.name, peer=connection.peer)
                    connection.transport.close()


# -- the node's side ------------------------------------------------------------------------------

PROTOCOLS: dict[str, str] = {"hj212": "adapters.hj212", "sl651": "adapters.sl651"}  # module with PROTOCOL


def protocol_named(name: str) -> StationProtocol:
    import importlib  # noqa: PLC0415 - a node loads only the protocols it listens for

    module = importlib.import_module(PROTOCOLS[name])
    protocol: StationProtocol = module.PROTOCOL
    return protocol
