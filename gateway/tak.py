"""The node as a TAK server: Cursor-on-Target in over TCP and UDP, the jurisdiction's picture out.

TAK clients (ATAK, WinTAK, iTAK) connect to a TAK server over TCP, write their CoT events to it
(their own position, markers, the emergency buttons) and read back, on the same connection, the
events of everyone else. Here the node is that server, on the sans-IO codec of ``adapters.cot``:

- **In.** The bytes of a connection go through its ``StreamDecoder`` (events reassembled however
  the reads split them; garbage, DTDs and oversized events refused with a logged, counted reason,
  the next event still taken); each event is parsed with the hardened parser and mapped by the
  codec to an envelope. A UDP datagram carries one event. The envelopes of all connections and
  datagrams are appended together in small batches (``gateway.stations.Batcher``). A ping
  (``t-x-c-t``) on TCP is answered with ``t-x-c-t-r``; types the model has no kind for (GeoChat,
  drawings) are counted and logged, and the connection goes on.
- **Out.** One task follows the node's log from its end and encodes each position, incident and
  warning of the node's jurisdiction (status actual or exercise) once; the bytes of a log batch
  are joined once and the same bytes are handed to every client. It also keeps the picture: the
  latest event per CoT uid, bounded, without what is stale, deleted (a cancelled warning) or
  closed (an incident's final report). A client that connects is sent the picture, then every
  event from then on. What a client sends in comes back out to every client (itself too, as
  ATAK hears itself on the multicast mesh network and ignores its own uid) once it is in the log:
  nothing is delivered that was not appended first.
- **Slow clients.** A client's socket buffer is filled only while the transport takes more; what
  it cannot take yet waits in the connection's queue, as references to the shared bytes. Once
  more than ``max_queue_bytes`` of live events wait, the client is disconnected with a logged,
  counted reason: it reconnects and is sent the picture again, which supersedes what it missed.
  A client that keeps up never loses an event.
- **Cheap connections.** A connection is a transport, a decoder made on its first bytes and a
  queue made only while it is behind: no task per connection. Idle connections (nothing received
  for ``idle_timeout_s``, not even pings) are closed by one sweeper; connections past
  ``max_connections`` are closed at once; a connection with too many events waiting for the log
  stops being read until they are appended.
- **TAK protocol version 1.** Every TCP client is sent, first, the announcement that the server
  reads protobuf (``t-x-takp-v``). A client that asks for it (``t-x-takp-q``) is answered
  (``t-x-takp-r``) and from then on its connection carries ``TakMessage``s both ways. A client
  whose first byte is the protobuf magic byte is configured for version 1: what it writes is read
  as version 1, and it is sent XML, which every TAK client must read (without a negotiation there
  is no point in the stream at which it could know version 1 begins). Live events are encoded
  once per protocol version in use, never per client; the picture and what precedes the switch go
  out in XML. UDP datagrams may be XML or the mesh form of version 1.
- **TLS.** Given an ssl context, the TCP listener requires a client certificate of the network's
  CA naming an identity that is not revoked; a client whose certificate is revoked later is cut
  off (``cut_revoked``). What it sends is still taken as the configured region and agency.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from xml.etree.ElementTree import Element

import structlog
from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters import safexml
from adapters.cot import (
    CotConfig,
    CotEvent,
    StreamDecoder,
    encode_envelope,
    encode_ping,
    takproto,
    to_envelope,
)
from adapters.cot import types as cot_types
from adapters.cot.codec import DELETE_TYPE, parse_time, read_event
from adapters.cot.framing import read_datagram
from adapters.errors import AdapterError
from adapters.plugin import AdapterContext
from gateway.errors import UnauthenticatedError
from gateway.log import Log, StoredBatch
from gateway.selection import Selector
from gateway.service import Peer
from gateway.stations import Batcher, Publish, peer_name
from gateway.validation import Validator

log = structlog.get_logger("yiwang.tak")

#: The uid of the server's answer to a client's ping, as TAK Server writes it.
PONG_UID = "takPong"
#: Kinds and statuses a TAK client is sent.
KINDS_OUT = (pb.POSITION, pb.INCIDENT, pb.ALERT)
STATUSES_OUT = (pb.ACTUAL, pb.EXERCISE)
READ_ENTRIES = 1_000  # log entries read at a time by the follower
# Events are joined into writes of about this size (shared by all clients for live events): a transport
# that is behind copies at most one such write beyond its high-water mark.
CHUNK_BYTES = 64 << 10
MAX_WAITING_PER_CONNECTION = 64  # events of one connection waiting for the log before reading pauses
MAX_WAITING_DATAGRAMS = 10_000  # datagram events waiting for the log before datagrams are refused

_HEAD = re.compile(rb'<event version="2\.0" uid="([^"]*)" type="([^"]*)" how="[^"]*" time="[^"]*" start="[^"]*" '
                   rb'stale="([^"]*)"')  # fmt: skip
_DELETE = DELETE_TYPE.encode()
_DELETE_TARGET = re.compile(rb'<link uid="([^"]*)" relation="none"')


# -- metrics --------------------------------------------------------------------------------------


class TakMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections = Gauge("yiwang_tak_connections", "TAK client connections open", registry=registry)
        self.events_in = Counter(
            "yiwang_tak_events_in", "CoT events received, by transport and outcome", ["transport", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.refused = Counter(
            "yiwang_tak_refused", "CoT input refused, by transport and reason", ["transport", "reason"],
            registry=registry,
        )  # fmt: skip
        self.events_out = Counter("yiwang_tak_events_out", "CoT events encoded for the clients", registry=registry)
        self.unencodable = Counter(
            "yiwang_tak_unencodable", "Envelopes of the jurisdiction that cannot be shown as CoT", registry=registry
        )
        self.dropped = Counter(
            "yiwang_tak_clients_dropped", "TAK clients disconnected by the server, by reason", ["reason"],
            registry=registry,
        )  # fmt: skip
        self.picture = Gauge("yiwang_tak_picture", "Events held in the picture sent to new clients", registry=registry)


# -- the picture ----------------------------------------------------------------------------------


class Picture:
    """The latest event per CoT uid, least recently updated first, for the clients that connect."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"a picture of {max_entries} events holds nothing")
        self.max_entries = max_entries
        self._events: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def put(self, uid: bytes, stale_ns: int, event: bytes) -> None:
        self._events[uid] = (stale_ns, event)
        self._events.move_to_end(uid)
        while len(self._events) > self.max_entries:
            self._events.popitem(last=False)

    def remove(self, uid: bytes) -> None:
        """Takes out an event and the shapes drawn with it (``<uid>.shape<k>``, as the codec names them)."""
        self._events.pop(uid, None)
        k = 0
        while self._events.pop(uid + b".shape%d" % k, None) is not None:
            k += 1

    def events(self, now_ns: int) -> list[bytes]:
        """The events not yet stale, oldest update first; stale ones are dropped from the picture."""
        stale = [uid for uid, (stale_ns, _) in self._events.items() if stale_ns <= now_ns]
        for uid in stale:
            del self._events[uid]
        return [event for _, event in self._events.values()]


# -- TCP connections ------------------------------------------------------------------------------


class TakConnection(asyncio.Protocol):
    """One TAK client: its events in, the picture and the live events out, in order."""

    __slots__ = (
        "backlog",
        "backlog_bytes",
        "configured",
        "decoder",
        "last_seen",
        "out_version",
        "paused_reading",
        "paused_writing",
        "peer",
        "serial",
        "server",
        "snapshot",
        "transport",
        "waiting",
    )

    def __init__(self, server: TakServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.serial: int | None = None  # of the client certificate, with TLS
        self.decoder: StreamDecoder | None = None  # made on the first bytes
        self.out_version = 0  # the TAK protocol version of what is sent: 0 (XML) or 1 (protobuf)
        self.configured = False  # whether it writes version 1 without having negotiated it
        self.last_seen = time.monotonic()
        self.waiting = 0  # events appended but not yet in the log
        self.paused_reading = False
        self.paused_writing = False
        self.snapshot: list[bytes] = []  # picture events still to send, last first
        self.backlog: deque[bytes] | None = None  # live bytes the transport could not take yet
        self.backlog_bytes = 0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = peer_name(transport)
        self.server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # closed, reset or timed out: the client reconnects and is sent the picture again
        self.server.closed(self)
        self.transport = None
        self.snapshot = []
        self.backlog = None
        self.backlog_bytes = 0

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        decoder = self.decoder
        if decoder is None:
            decoder = self.decoder = StreamDecoder(self.server.config.max_event_bytes, detect_protobuf=True)
        decoder.receive(data)
        # one item at a time: a negotiation switches the decoder between two of them
        while (item := decoder.next_item()) is not None:
            if isinstance(item, AdapterError):
                self.server.refuse("tcp", self.peer, item)
            elif decoder.version == 1:
                self.server.take_message(self, item)
            else:
                self.server.take_event(self, item)
        if decoder.version == 1 and self.out_version == 0 and not self.configured:
            # A client configured for protobuf, that did not negotiate: it is still sent XML, which every
            # TAK client reads, where version 1 would begin at a point it could not tell.
            self.configured = True
            log.info("tak_protocol", peer=self.peer, version=1, how="the client's first byte; sent XML")
        if decoder.lost:
            self.server.drop(self, "framing", "its TAK protocol version 1 stream cannot be followed")

    def use_protobuf(self) -> None:
        """Both directions of the connection carry TAK protocol version 1 from here on."""
        if self.decoder is not None:
            self.decoder.use_protobuf()
        self.out_version = 1

    def send_own(self, document: bytes) -> None:
        """Sends an event of this connection alone (a pong, a negotiation answer) in its version."""
        self.send(takproto.stream_frame(takproto.encode_event(document)) if self.out_version else document)

    def eof_received(self) -> bool | None:
        if self.decoder is not None:
            for error in self.decoder.end():
                self.server.refuse("tcp", self.peer, error)
        return None  # close the connection

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self.drain()

    # -- out

    def start_picture(self, events: list[bytes]) -> None:
        events.reverse()
        self.snapshot = events
        self.drain()

    def send(self, data: bytes) -> None:
        """Sends live bytes now, or queues them behind what the client has not taken yet."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.paused_writing and not self.snapshot and not self.backlog:
            transport.write(data)
            return
        if self.backlog is None:
            self.backlog = deque()
        self.backlog.append(data)
        self.backlog_bytes += len(data)
        if self.backlog_bytes > self.server.max_queue_bytes:
            self.server.drop(
                self, "slow", f"more than {self.server.max_queue_bytes} bytes of live events waiting for the client"
            )

    def drain(self) -> None:
        """Writes the picture, then the queued live bytes, while the transport takes them."""
        transport = self.transport
        while transport is not None and not transport.is_closing() and not self.paused_writing:
            if self.snapshot:
                chunk: list[bytes] = []
                size = 0
                while self.snapshot and size < CHUNK_BYTES:
                    event = self.snapshot.pop()
                    chunk.append(event)
                    size += len(event)
                transport.write(b"".join(chunk))
            elif self.backlog:
                data = self.backlog.popleft()
                self.backlog_bytes -= len(data)
                transport.write(data)
            else:
                self.backlog = None
                return

    # -- in

    def appended(self, done: asyncio.Future[list[gw.PublishResult]]) -> None:
        """One of this connection's events is in the log (or was refused): read on if paused."""
        self.waiting -= 1
        self.server.settled("tcp", self.peer, done)
        if self.paused_reading and self.waiting < MAX_WAITING_PER_CONNECTION // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused_reading = False

    def wait_for_log(self, done: asyncio.Future[list[gw.PublishResult]]) -> None:
        self.waiting += 1
        done.add_done_callback(self.appended)
        if self.waiting >= MAX_WAITING_PER_CONNECTION and self.transport is not None and not self.paused_reading:
            self.transport.pause_reading()  # the log is behind: this client waits
            self.paused_reading = True


# -- UDP ------------------------------------------------------------------------------------------


class TakDatagrams(asyncio.DatagramProtocol):
    """CoT events over UDP, one per datagram (TAK clients' "UDP" output), XML or TAK protocol version 1."""

    def __init__(self, server: TakServer) -> None:
        self.server = server
        self.waiting = 0

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        peer = f"{addr[0]}:{addr[1]}" if len(addr) >= 2 else str(addr)
        if self.waiting >= MAX_WAITING_DATAGRAMS:
            self.server.refuse(
                "udp", peer, AdapterError(f"{self.waiting} datagram events wait for the log", kind="overloaded")
            )
            return
        try:
            version, body = read_datagram(data, self.server.config.max_event_bytes)
        except AdapterError as exc:
            self.server.refuse("udp", peer, exc)
            return
        if version == 1:
            done = self.server.take_payload("udp", peer, body)
        else:
            done = self.server.take_document("udp", peer, body)
        if done is not None:
            self.waiting += 1
            done.add_done_callback(lambda future: self.appended(peer, future))

    def appended(self, peer: str, done: asyncio.Future[list[gw.PublishResult]]) -> None:
        self.waiting -= 1
        self.server.settled("udp", peer, done)

    def error_received(self, exc: Exception) -> None:
        log.warning("tak_udp_error", error=str(exc))


# -- the server -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakSettings:
    """What the server needs besides the node's service (from ``[tak]``, see gateway.config)."""

    cot: CotConfig  # region, agency, status and max_event_bytes of what comes in; stale times out
    jurisdiction: str  # the node's region: what goes out
    idle_timeout_s: float = 600.0
    max_connections: int = 10_000
    max_queue_bytes: int = 4 << 20
    picture_hours: float = 24.0
    max_picture: int = 10_000


class TakServer:
    """Listens for TAK clients (TCP, in and out) and CoT datagrams (UDP, in); appends what they send
    through ``publish`` (``GatewayService.publish_batch`` as the node's own peer)."""

    def __init__(
        self,
        settings: TakSettings,
        log_: Log,
        publish: Publish,
        metrics: TakMetrics,
        *,
        validator: Validator,
        context: AdapterContext,
        tls: ssl.SSLContext | None = None,
        authenticate: Callable[[x509.Certificate | None], Peer] | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.cot
        self.log = log_
        self.batcher = Batcher(publish, name="tak-batcher")
        self.metrics = metrics
        self.validator = validator
        self.context = context
        self.tls = tls
        self.authenticate = authenticate
        self.max_queue_bytes = settings.max_queue_bytes
        self.picture = Picture(settings.max_picture)
        self.selector = Selector.compile(
            gw.Filter(kinds=KINDS_OUT, statuses=STATUSES_OUT, regions=[settings.jurisdiction]), validator.regions
        )
        self.connections: set[TakConnection] = set()
        self.protocol_uid = f"yiwang-takp-{uuid.uuid4()}"  # the uid of the server's negotiation events
        self.datagrams: TakDatagrams | None = None
        self._server: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, tcp: tuple[str, int] | None, udp: tuple[str, int] | None) -> dict[str, int]:
        """Starts following the log, then listens; returns the bound ports by transport."""
        loop = asyncio.get_running_loop()
        since_ns = time.time_ns() - int(self.settings.picture_hours * 3600e9)
        position = await self.log.offset_at(since_ns)
        self.batcher.start()
        follow = asyncio.create_task(self._follow(position), name="tak-follow")
        follow.add_done_callback(self._follow_ended)
        self._tasks.append(follow)
        ports: dict[str, int] = {}
        if tcp is not None:
            self._server = await loop.create_server(
                lambda: TakConnection(self), tcp[0], tcp[1], backlog=1024, ssl=self.tls
            )
            ports["tcp"] = int(self._server.sockets[0].getsockname()[1])
            self._tasks.append(asyncio.create_task(self._sweep(), name="tak-idle"))
        if udp is not None:
            datagrams = self.datagrams = TakDatagrams(self)
            transport, _ = await loop.create_datagram_endpoint(lambda: datagrams, local_addr=udp)
            self._udp = transport
            ports["udp"] = int(transport.get_extra_info("sockname")[1])
        return ports

    async def stop(self) -> None:
        for task in self._tasks:
            if task.done():
                continue  # the follower's failure was logged when it ended
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.abort()
            await self._server.wait_closed()
            self._server = None
        await self.batcher.stop()

    # -- connections

    def opened(self, connection: TakConnection) -> None:
        assert connection.transport is not None
        if len(self.connections) >= self.settings.max_connections:
            self.metrics.dropped.labels("connections").inc()
            log.warning("tak_connection_refused", peer=connection.peer,
                        reason=f"more than {self.settings.max_connections} connections")  # fmt: skip
            connection.transport.abort()
            return
        if self.authenticate is not None and not self._authenticated(connection):
            return
        self.connections.add(connection)
        self.metrics.connections.set(len(self.connections))
        log.info("tak_client_connected", peer=connection.peer)
        announce = takproto.protocol_support(self.protocol_uid, time.time())
        connection.start_picture([announce, *self.picture.events(time.time_ns())])

    def _authenticated(self, connection: TakConnection) -> bool:
        """Whether the client certificate names an identity of the network that is not revoked."""
        assert self.authenticate is not None
        assert connection.transport is not None
        ssl_object = connection.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            peer = self.authenticate(x509.load_der_x509_certificate(der) if der else None)
        except (UnauthenticatedError, ValueError) as exc:
            self.drop(connection, "unauthenticated", f"client certificate refused: {exc}")
            return False
        connection.serial = peer.serial
        if peer.identity is not None:
            connection.peer = f"{connection.peer} {peer.identity.uri}"
        return True

    def cut_revoked(self, serials: frozenset[int]) -> int:
        """Disconnects the clients whose certificates were revoked; returns how many."""
        cut = 0
        for connection in list(self.connections):
            if connection.serial is not None and connection.serial in serials:
                self.drop(connection, "revoked", f"certificate {connection.serial:x} was revoked")
                cut += 1
        return cut

    def closed(self, connection: TakConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.metrics.connections.set(len(self.connections))
            log.info("tak_client_disconnected", peer=connection.peer)

    def drop(self, connection: TakConnection, reason: str, why: str) -> None:
        """Disconnects a client the server gives up on, saying why."""
        self.metrics.dropped.labels(reason).inc()
        log.warning("tak_client_dropped", peer=connection.peer, reason=why)
        if connection.transport is not None:
            connection.transport.abort()

    async def _sweep(self) -> None:
        """Closes connections silent for longer than the idle timeout."""
        timeout = self.settings.idle_timeout_s
        while True:
            await asyncio.sleep(max(0.05, timeout / 4))
            cutoff = time.monotonic() - timeout
            for connection in list(self.connections):
                if connection.last_seen < cutoff and connection.transport is not None:
                    self.drop(connection, "idle", f"nothing received for {timeout} s")

    # -- in

    def take_event(self, connection: TakConnection, document: bytes) -> None:
        """One complete XML event of a TCP connection."""
        done = self.take_document("tcp", connection.peer, document, connection)
        if done is not None:
            connection.wait_for_log(done)

    def take_message(self, connection: TakConnection, payload: bytes) -> None:
        """One complete TAK protocol version 1 message of a TCP connection."""
        done = self.take_payload("tcp", connection.peer, payload, connection)
        if done is not None:
            connection.wait_for_log(done)

    def take_document(
        self, transport: str, peer: str, document: bytes, connection: TakConnection | None = None
    ) -> asyncio.Future[list[gw.PublishResult]] | None:
        """Parses and maps one XML event; its envelope goes to the log (the future says when), a ping
        or a negotiation is answered on TCP, anything else is refused with its reason."""
        try:
            root = safexml.parse(document, limit=self.config.max_event_bytes)
            event = read_event(root)
        except AdapterError as exc:
            self.refuse(transport, peer, exc)
            return None
        return self._take_read(transport, peer, event, root, connection)

    def take_payload(
        self, transport: str, peer: str, payload: bytes, connection: TakConnection | None = None
    ) -> asyncio.Future[list[gw.PublishResult]] | None:
        """The same for a TAK protocol version 1 message (a message without an event is counted)."""
        try:
            message = takproto.decode_message(payload)
            if not message.HasField("cotEvent"):
                self.metrics.events_in.labels(transport, "control").inc()
                return None
            root = takproto.event_element(message.cotEvent, limit=self.config.max_event_bytes)
            event = read_event(root)
        except AdapterError as exc:
            self.refuse(transport, peer, exc)
            return None
        return self._take_read(transport, peer, event, root, connection)

    def _take_read(
        self, transport: str, peer: str, event: CotEvent, root: Element, connection: TakConnection | None
    ) -> asyncio.Future[list[gw.PublishResult]] | None:
        if event.type == cot_types.PING:
            self.metrics.events_in.labels(transport, "ping").inc()
            if connection is not None:
                connection.send_own(encode_ping(PONG_UID, time.time(), reply=True))
            return None
        if takproto.is_control(event.type):
            self.metrics.events_in.labels(transport, "control").inc()
            if connection is not None and event.type == takproto.REQUEST_TYPE:
                self._negotiate(connection, root)
            return None
        try:
            envelope = to_envelope(event, self.config, self.context, self.validator)
        except AdapterError as exc:
            self.refuse(transport, peer, exc)
            return None
        return self.batcher.submit([envelope])

    def _negotiate(self, connection: TakConnection, request: Element) -> None:
        """Answers a client's request for a protocol version; yes switches the connection to it."""
        version = takproto.requested_version(request)
        accepted = version == takproto.VERSION
        connection.send_own(takproto.protocol_response(self.protocol_uid, time.time(), accepted=accepted))
        log.info("tak_protocol", peer=connection.peer, version=version, accepted=accepted, how="negotiated")
        if accepted:
            connection.use_protobuf()  # after the answer, which goes out in the version it was asked in

    def settled(self, transport: str, peer: str, done: asyncio.Future[list[gw.PublishResult]]) -> None:
        """Counts and logs what became of an event sent to the log."""
        if done.cancelled() or done.exception() is not None:
            error = None if done.cancelled() else done.exception()
            self.metrics.events_in.labels(transport, "failed").inc()
            log.error("tak_append_failed", transport=transport, peer=peer, error=repr(error))
            return
        for result in done.result():
            if result.outcome == gw.PublishResult.REJECTED:
                self.metrics.events_in.labels(transport, "refused").inc()
                self.metrics.refused.labels(transport, "rejected").inc()
                log.warning("tak_envelope_refused", transport=transport, peer=peer, id=result.id,
                            field=result.field, reason=result.reason)  # fmt: skip
            else:
                outcome = "stored" if result.outcome == gw.PublishResult.ACCEPTED else "duplicate"
                self.metrics.events_in.labels(transport, outcome).inc()

    def refuse(self, transport: str, peer: str, error: AdapterError) -> None:
        self.metrics.events_in.labels(transport, "refused").inc()
        self.metrics.refused.labels(transport, error.kind).inc()
        log.info("tak_event_refused", transport=transport, peer=peer, kind=error.kind, reason=str(error))

    # -- out

    async def _follow(self, position: int) -> None:
        """Follows the log from the start of the picture's window: the picture, and every client's stream."""
        log_ = self.log
        while not log_.closed:
            while position < log_.next_offset:
                batches = await log_.read(position, READ_ENTRIES)
                if not batches:
                    break
                for stored in batches:
                    self._take(stored, stored.index_at(position))
                    position = stored.next_offset
            position = max(position, log_.oldest_offset)
            await log_.wait_beyond(position)

    def _follow_ended(self, task: asyncio.Task[None]) -> None:
        """A follower that failed leaves the clients without their stream: say so, and cut them, so
        that what they are shown is never silently stale."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("tak_follow_failed", error=repr(task.exception()), clients=len(self.connections))
        if self._server is not None:
            self._server.close()  # no new client is shown a picture that no longer moves
        for connection in list(self.connections):
            self.drop(connection, "follow-failed", "the server stopped following the log")

    def _take(self, stored: StoredBatch, start: int) -> None:
        chosen = self.selector.select(stored.records)
        indexes = list(range(start, stored.count)) if chosen is None else [i for i in chosen if i >= start]
        if not indexes:
            return
        out: list[bytes] = []
        now_ns = time.time_ns()
        for delivery in stored.deliveries(indexes):
            out += self._events_of(delivery.envelope, now_ns)
        if not out:
            return
        self.metrics.events_out.inc(len(out))
        by_version: tuple[list[TakConnection], list[TakConnection]] = ([], [])
        for connection in self.connections:
            by_version[connection.out_version].append(connection)
        xml_clients, protobuf_clients = by_version
        if xml_clients:
            for chunk in _chunks(out):
                for connection in xml_clients:
                    connection.send(chunk)
        if protobuf_clients:
            for chunk in _chunks(self._messages_of(out)):
                for connection in protobuf_clients:
                    connection.send(chunk)

    def _messages_of(self, events: list[bytes]) -> list[bytes]:
        """The version 1 stream frames of XML events (once for all the clients that speak it)."""
        out: list[bytes] = []
        for event in events:
            try:
                out.append(takproto.stream_frame(takproto.encode_event(event)))
            except AdapterError as exc:
                self.metrics.unencodable.inc()
                log.info("tak_event_not_encoded", version=1, reason=str(exc))
        return out

    def _events_of(self, env: pb.Envelope, now_ns: int) -> list[bytes]:
        """The events of one envelope to send now (those not stale yet), the picture updated."""
        try:
            events = encode_envelope(env, self.config, self.context)
        except AdapterError as exc:
            self.metrics.unencodable.inc()
            log.info("tak_envelope_not_shown", id=env.id, kind=pb.Kind.Name(env.kind), reason=str(exc))
            return []
        closed = env.kind == pb.INCIDENT and env.incident.stage == pb.STAGE_FINAL
        out: list[bytes] = []
        for event in events:
            head = _HEAD.search(event, 0, 1024)
            if head is None:  # the codec writes every event's head this way
                raise AssertionError(f"an encoded event without its head: {event[:200]!r}")
            uid, cot_type, stale = head.groups()
            stale_ns = parse_time(stale.decode(), "event.stale").ToNanoseconds()
            line = event + b"\n"
            if cot_type == _DELETE:
                target = _DELETE_TARGET.search(event)
                if target is not None:
                    self.picture.remove(target.group(1))
            elif closed:
                self.picture.remove(uid)
            else:
                self.picture.put(uid, stale_ns, line)
            if stale_ns > now_ns:
                out.append(line)
        self.metrics.picture.set(len(self.picture))
        return out


def _chunks(events: list[bytes]) -> list[bytes]:
    """The events joined into writes of about ``CHUNK_BYTES`` (an event is never split)."""
    out: list[bytes] = []
    start, size = 0, 0
    for end, event in enumerate(events, 1):
        size += len(event)
        if size >= CHUNK_BYTES:
            out.append(b"".join(events[start:end]))
            start, size = end, 0
    if start < len(events):
        out.append(b"".join(events[start:]))
    return out
