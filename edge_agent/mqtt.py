"""An asyncio MQTT client for the edge agent and the gateway's ingest: paho-mqtt driven by the event loop.

paho-mqtt keeps the protocol (packets, packet ids, in-flight tracking, keepalive); this module owns the
I/O. No thread runs here: ``loop.add_reader``/``add_writer`` watch the socket that paho's
``on_socket_*`` callbacks announce, and the event loop calls ``loop_read``, ``loop_write`` and, once a
second, ``loop_misc``. paho's ``connect()`` would block on the TCP connect and the TLS handshake, so
this module makes the connection itself with the event loop and hands paho the connected socket.

The protocol is **MQTT 5**: a refused CONNECT, PUBLISH or SUBSCRIBE comes back with a reason code
(Mosquitto 2 answers a publish outside a terminal's ACL with PUBACK "Not authorized", where MQTT 3.1.1
acknowledges it silently), and a session can outlive a connection for a set time (session expiry).

One ``MqttClient`` is one connection: ``async with client:`` connects and disconnects cleanly (so the
broker does not publish the will). A connection that is lost ends everything that depends on it:
publishes waiting for their PUBACK fail with ``ConnectionLost`` (the message may or may not have
arrived), and ``messages()`` raises ``ConnectionLost`` once it has handed out what was already
received. ``connect_forever`` makes new clients with jittered exponential backoff; the owner decides
what each new connection starts with (subscriptions, a birth message).

Flow control:

* QoS 1 and 2 publishes: at most ``max_inflight`` await their acknowledgement at once (fewer if the
  broker announces a smaller Receive Maximum); ``publish`` waits for a free slot, so nothing queues
  without bound inside paho.
* QoS 0 publishes: bytes waiting for the socket are bounded (``_OUTPUT_HIGH_WATER``); beyond that
  ``publish`` waits until the socket has taken them.
* Received messages go into a queue of ``max_queued_messages``. When it is full the client stops
  reading the socket until the consumer has taken half of it; TCP then holds the broker back, which
  keeps QoS 1 and 2 messages in its session. Nothing is dropped here. A QoS 1 or 2 message is
  acknowledged when the consumer takes it from ``messages()``, not when it is read. A consumer that
  stalls for longer than ``keepalive`` lets the connection time out (no PINGRESP is read), and the
  owner reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, Self

import structlog
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, error_string
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = structlog.get_logger("yiwang.mqtt")

_P = ParamSpec("_P")

# Reads take up to this much from the socket at once; paho then parses packets out of it.
_READ_CHUNK = 65536
# Packets handled in one reader callback before other tasks get a turn (more stay buffered).
_READS_PER_TURN = 64
# Bytes paho may have handed us that the socket has not taken yet: above the high water mark paho's
# own queue holds further packets and QoS 0 publishers wait; below the low one they go on.
_OUTPUT_HIGH_WATER = 1 << 20
_OUTPUT_LOW_WATER = 1 << 18
# A stream of QoS 0 publishes is written out (and other tasks get a turn) every this many messages.
_QOS0_BATCH = 256
_MISC_INTERVAL_S = 1.0


class MqttError(Exception):
    """Base of every error this client raises on purpose."""


class MqttConnectError(MqttError):
    """The broker could not be reached or refused the connection; names the broker and the reason."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot connect to MQTT broker {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class ConnectionLost(MqttError, ConnectionError):  # noqa: N818 - named after what happened, as asyncio's own
    """The connection ended before an operation completed: a QoS>0 message may or may not have arrived."""


class PublishRefusedError(MqttError):
    """The broker acknowledged a publish with a failure reason code (e.g. "Not authorized")."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"the broker refused the publish on {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


class SubscribeRefusedError(MqttError):
    """The broker refused one or more filters of a SUBSCRIBE; ``refused`` maps each to its reason."""

    def __init__(self, refused: dict[str, str]) -> None:
        listed = ", ".join(f"{topic_filter!r} ({reason})" for topic_filter, reason in refused.items())
        super().__init__(f"the broker refused the subscription to {listed}")
        self.refused = refused


@dataclass(frozen=True, slots=True)
class Message:
    """One message received on a subscription."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int = 0  # the packet id the broker sent it with (QoS 1 and 2), for its acknowledgement


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for a client whose connection ends without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class _BufferedSocket:
    """The connected (TLS) socket as paho sees it.

    paho reads a packet as recv(1), recv(1)..., recv(rest) and sends each packet with its own send():
    three system calls per received PUBACK and one TLS record per published message. Here reads come
    from a buffer filled ``_READ_CHUNK`` at a time and writes collect in a buffer that ``flush`` sends,
    so a burst costs a few system calls. ``would_block`` tells the reader callback that everything
    available has been read; ``paused`` makes reads stop (backpressure from the consumer); ``failed``
    makes paho see an error on its next read, which runs paho's own connection-lost path.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self._input = bytearray()
        self._input_pos = 0
        self._output = bytearray()
        self.would_block = False
        self.paused = False
        self.failed: OSError | None = None
        self.closed = False

    @property
    def buffered_input(self) -> bool:
        return self._input_pos < len(self._input)

    @property
    def pending_output(self) -> int:
        return len(self._output)

    def recv(self, buffer_size: int) -> bytes:
        if self.failed is not None:
            raise self.failed
        if self.paused:
            self.would_block = True
            raise BlockingIOError
        if self._input_pos >= len(self._input):
            try:
                chunk = self.sock.recv(_READ_CHUNK)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                self.would_block = True
                raise BlockingIOError from None
            except OSError as exc:  # e.g. a TLS alert: kept so the disconnect can say what happened
                self.failed = exc
                raise
            if not chunk:
                return b""  # the peer closed the connection; paho treats this as lost
            self._input = bytearray(chunk)
            self._input_pos = 0
        end = self._input_pos + buffer_size
        data = bytes(self._input[self._input_pos : end])
        self._input_pos += len(data)
        return data

    def send(self, buffer: bytes | bytearray) -> int:
        if self.failed is not None:
            raise self.failed
        if len(self._output) >= _OUTPUT_HIGH_WATER:
            self.flush()
            if len(self._output) >= _OUTPUT_HIGH_WATER:
                raise BlockingIOError  # paho keeps the packet and asks to be called when writable
        self._output += buffer
        return len(buffer)

    def flush(self) -> None:
        """Sends what the socket takes now; raises OSError if the connection is broken."""
        output = self._output
        while output:
            try:
                sent = self.sock.send(output)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError as exc:
                self.failed = exc
                raise
            del output[:sent]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # paho closes right after handing over its DISCONNECT: send it if the socket takes it now.
        with contextlib.suppress(OSError):
            self.flush()
        self.sock.close()

    def fileno(self) -> int:
        return self._fd

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)


class _Paho(Client):
    """paho's client, given a socket this module connected instead of opening one itself (which blocks)."""

    prepared: _BufferedSocket | None = None

    def _create_socket(self) -> SocketLike:
        sock, self.prepared = self.prepared, None
        if sock is None:
            raise ConnectionError("this paho client is connected only by MqttClient, with a prepared socket")
        return sock


class MqttClient:
    """One MQTT 5 connection to a broker, over mutual TLS (or plain TCP when ``tls`` is None).

    ``async with client:`` connects (raising ``MqttConnectError`` naming the broker and the reason) and
    disconnects cleanly; a client connects once — make a new one to reconnect (see ``connect_forever``).
    ``clean_start`` False with ``session_expiry`` > 0 resumes the broker's session for this client id:
    its subscriptions and the QoS>0 messages queued for it while it was away.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        tls: ssl.SSLContext | None,
        will: Will | tuple[str, bytes, int, bool] | None = None,
        keepalive: int = 30,
        clean_start: bool = True,
        session_expiry: int = 0,
        server_hostname: str | None = None,
        max_inflight: int = 100,
        max_queued_messages: int = 1000,
        connect_timeout: float = 10.0,
    ) -> None:
        if not client_id and (not clean_start or session_expiry):
            raise ValueError("a session that outlives the connection needs a client_id")
        if not 0 < max_inflight < 65536:
            raise ValueError("max_inflight must be 1..65535 (MQTT packet ids are 16 bits)")
        if max_queued_messages < 1:
            raise ValueError("max_queued_messages must be at least 1")
        self.host = host
        self.port = port
        self.client_id = client_id
        self.tls = tls
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.server_hostname = server_hostname if server_hostname is not None else host
        self.connect_timeout = connect_timeout
        self.max_inflight = max_inflight
        self.session_present = False
        self.callback_failures = 0  # paho callbacks that raised (each logged as mqtt_callback_failed)

        self._paho = _Paho(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True
        )
        self._paho.max_inflight_messages_set(max_inflight)
        if will is not None:
            will = will if isinstance(will, Will) else Will(*will)
            self._paho.will_set(will.topic, will.payload, will.qos, will.retain)
        self._paho.on_connect = self._guard("on_connect", self._on_connect)
        self._paho.on_disconnect = self._guard("on_disconnect", self._on_disconnect)
        self._paho.on_publish = self._guard("on_publish", self._on_publish)
        self._paho.on_subscribe = self._guard("on_subscribe", self._on_subscribe)
        self._paho.on_message = self._guard("on_message", self._on_message)
        self._paho.on_socket_open = self._guard("on_socket_open", self._on_socket_open)
        self._paho.on_socket_close = self._guard("on_socket_close", self._on_socket_close)
        self._paho.on_socket_register_write = self._guard("on_socket_register_write", self._on_register_write)
        self._paho.on_socket_unregister_write = self._guard("on_socket_unregister_write", self._on_unregister_write)

        self._state = "new"  # new -> connecting -> connected -> closed
        self._lost: str | None = None  # why the connection ended, once it has
        self._closed_by_owner = False
        self._opened: _BufferedSocket | None = None  # the socket paho was given, kept after it is closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io: _BufferedSocket | None = None
        self._writing = False
        self._misc_timer: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[None] | None = None
        self._window = max_inflight
        # One slot per QoS>0 publish awaiting its acknowledgement; a semaphore wakes one waiter per
        # acknowledgement (an Event would wake every waiting publisher for each one).
        self._slots = asyncio.Semaphore(max_inflight)
        self._pending: dict[int, tuple[asyncio.Future[None], str]] = {}
        self._subscribing: dict[int, tuple[asyncio.Future[None], list[str]]] = {}
        self._output_room = asyncio.Event()  # set while output is below the low water mark
        self._output_idle = asyncio.Event()  # set while nothing at all waits to be sent
        self._qos0_unwritten = 0
        self._inbox_limit = max_queued_messages
        # One place more than the limit: reading pauses at the limit, so the end marker always fits.
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue(max_queued_messages + 1)
        self._inbox_ended = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self._state == "connected" and self._lost is None

    @property
    def queued(self) -> int:
        """Messages received and not yet taken from ``messages()``."""
        return self._inbox.qsize() - self._inbox_ended

    @property
    def reading(self) -> bool:
        """False while reading is paused because the consumer has fallen ``max_queued_messages`` behind."""
        return self._io is not None and not self._io.paused

    @property
    def in_flight(self) -> int:
        """QoS 1 and 2 publishes awaiting the broker's acknowledgement."""
        return len(self._pending)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError("an MqttClient connects once; make a new one to connect again")
        self._state = "connecting"
        self._loop = asyncio.get_running_loop()
        self._connack = self._loop.create_future()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.session_expiry:
            properties.SessionExpiryInterval = self.session_expiry
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._paho.prepared = _BufferedSocket(await self._open_socket())
                # Sends CONNECT: paho takes the prepared socket (see _Paho) and asks for writability.
                self._check_connect(
                    self._paho.connect(
                        self.host, self.port, self.keepalive, clean_start=self.clean_start, properties=properties
                    )
                )
                await self._connack
        except TimeoutError:
            self._shut("connect timed out")
            reason = f"timed out after {self.connect_timeout} s (TCP connect, TLS handshake or CONNACK)"
            raise MqttConnectError(self.host, self.port, reason) from None
        except ssl.SSLCertVerificationError as exc:
            self._shut("TLS refused")
            raise MqttConnectError(self.host, self.port, f"the broker's certificate: {exc.verify_message}") from exc
        except ssl.SSLError as exc:
            self._shut("TLS refused")
            raise MqttConnectError(self.host, self.port, _describe(exc)) from exc
        except OSError as exc:
            self._shut("connect failed")
            raise MqttConnectError(self.host, self.port, _describe(exc)) from exc
        except BaseException:
            self._shut("connect failed")
            raise
        self._state = "connected"
        log.info("mqtt_connected", broker=self.address, client_id=self.client_id, session=self.session_present)
        return self

    def _check_connect(self, rc: MQTTErrorCode) -> None:
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttConnectError(self.host, self.port, error_string(rc))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Sends what is still buffered, then DISCONNECT (so the broker discards the will), and closes."""
        if self._state == "closed":
            return
        if self.connected and self._io is not None:
            self._state = "closing"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._written_out()
            if self._lost is None:
                self._closed_by_owner = True
                self._paho.disconnect()
                self._pump_output()  # hands the DISCONNECT to the socket; paho then closes it
        self._shut("closed by its owner")
        self._state = "closed"

    def abort(self) -> None:
        """Drops the connection at once without DISCONNECT, as a crash or a cut link would: the broker
        publishes the will, and everything waiting on this connection fails with ConnectionLost."""
        self._break(ConnectionAbortedError("connection aborted by its owner"))

    async def _open_socket(self) -> socket.socket:
        """A connected, non-blocking socket to the broker, TLS handshake done when ``tls`` is set."""
        loop = asyncio.get_running_loop()
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
            candidates: list[tuple[socket.AddressFamily, Any]] = [(family, (self.host, self.port))]
        except ValueError:  # a name: resolve it (asyncio's resolver, in its executor)
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            candidates = [(info[0], info[4]) for info in infos]
        error: OSError = OSError(f"{self.host} has no address")
        for family, address in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(0.0)  # non-blocking
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # writes are already coalesced
                await loop.sock_connect(sock, address)
                return await self._handshake(sock) if self.tls is not None else sock
            except OSError as exc:  # ssl.SSLError too: close this socket, report the last error
                sock.close()
                if isinstance(exc, ssl.SSLError):
                    raise
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error

    async def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        assert self.tls is not None
        tls_sock = self.tls.wrap_socket(sock, server_hostname=self.server_hostname, do_handshake_on_connect=False)
        try:
            while True:
                try:
                    tls_sock.do_handshake()
                except ssl.SSLWantReadError:
                    await _ready(tls_sock.fileno(), writing=False)
                except ssl.SSLWantWriteError:
                    await _ready(tls_sock.fileno(), writing=True)
                else:
                    return tls_sock
        except BaseException:
            tls_sock.close()
            raise

    # -- publishing and subscribing ------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False) -> None:
        """Publishes; for QoS 1 and 2 returns once the broker has acknowledged, for QoS 0 once handed to the
        socket's buffer. Raises ConnectionLost if the connection ends first, PublishRefusedError on a failure
        reason code."""
        self._require_connection()
        if qos == 0:
            self._check(self._paho.publish(topic, payload, 0, retain).rc, topic)
            self._qos0_unwritten += 1
            if self._qos0_unwritten >= _QOS0_BATCH:
                self._qos0_unwritten = 0
                self._pump_output()
                await self._output_below_high_water()
            return
        await self._slots.acquire()
        if not self.connected:
            self._slots.release()  # wakes the next waiter, which fails the same way
            self._require_connection()
        assert self._loop is not None
        acknowledged = self._loop.create_future()
        try:
            info = self._paho.publish(topic, payload, qos, retain)
            self._check(info.rc, topic)
        except BaseException:
            self._slots.release()
            raise
        self._pending[info.mid] = (acknowledged, topic)
        await acknowledged

    async def subscribe(self, filters: Sequence[tuple[str, int]]) -> None:
        """Subscribes to (filter, qos) pairs; returns on SUBACK, raises SubscribeRefusedError naming the refused."""
        self._require_connection()
        assert self._loop is not None
        rc, mid = self._paho.subscribe(list(filters))
        self._check(rc, ", ".join(topic_filter for topic_filter, _ in filters))
        assert mid is not None
        granted = self._loop.create_future()
        self._subscribing[mid] = (granted, [topic_filter for topic_filter, _ in filters])
        await granted

    def messages(self) -> AsyncIterator[Message]:
        """The messages received on this connection's subscriptions, in order. Ends with ConnectionLost
        when the connection is lost (after what was already received), or normally after ``close()``.
        Iterate it from one task; taking a QoS 1 or 2 message acknowledges it to the broker."""
        return _MessageStream(self)

    def _require_connection(self) -> None:
        if self._lost is not None:
            raise ConnectionLost(f"connection to {self.address} lost: {self._lost}")
        if self._state != "connected":
            raise ConnectionLost(f"not connected to {self.address} ({self._state})")

    def _check(self, rc: MQTTErrorCode, topic: str) -> None:
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise ConnectionLost(f"connection to {self.address} lost: {self._lost or 'no connection'}")
        raise MqttError(f"paho refused the request for {topic!r}: {error_string(rc)}")

    async def _output_below_high_water(self) -> None:
        io = self._io
        while (
            io is not None and self._io is io and (io.pending_output >= _OUTPUT_HIGH_WATER or self._paho.want_write())
        ):
            self._output_room.clear()
            await self._output_room.wait()  # set by _pump_output below the low water mark, or at the end
        self._require_connection()
        await asyncio.sleep(0)  # a publisher that never waits would starve the reader and other tasks

    async def _written_out(self) -> None:
        """Waits until paho and the socket buffer have nothing left to send (or the connection ends)."""
        io = self._io
        while io is not None and self._io is io and (io.pending_output or self._paho.want_write()):
            self._output_idle.clear()
            self._pump_output()
            if self._io is io and (io.pending_output or self._paho.want_write()):
                await self._output_idle.wait()

    async def _next_message(self) -> Message | None:
        """The next received message; None once the owner closed the connection."""
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)  # every later read ends too
            if self._closed_by_owner:
                return None
            raise ConnectionLost(f"connection to {self.address} lost: {self._lost}")
        self._take(message)
        return message

    def _take(self, message: Message) -> None:
        """The consumer took ``message``: acknowledge it, and read again if the queue has room."""
        if message.qos and self._lost is None:
            self._paho.ack(message.mid, message.qos)
        io = self._io
        if io is not None and io.paused and self._inbox.qsize() <= self._inbox_limit // 2:
            io.paused = False
            assert self._loop is not None
            self._loop.add_reader(io.fileno(), self._on_readable)
            self._loop.call_soon(self._on_readable)  # what is already in our buffer makes no read event

    # -- the event loop's side: socket readiness and timers -----------------------------------------------

    def _on_readable(self) -> None:
        io = self._io
        if io is None or io.paused:
            return
        try:
            io.would_block = False
            for _ in range(_READS_PER_TURN):
                if self._paho.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or self._io is not io:
                    return  # the connection ended; paho has called on_disconnect
                if io.would_block or io.paused:
                    break
            else:
                if io.buffered_input:
                    assert self._loop is not None
                    self._loop.call_soon(self._on_readable)
            self._pump_output()  # send acknowledgements now rather than on the next writable event
        except Exception as exc:  # noqa: BLE001 - a fault in paho must end this connection, not the loop
            self._io_failed("read", exc)

    def _pump_output(self) -> None:
        """Lets paho write its queued packets into our buffer, sends the buffer, and watches for
        writability only while something is left."""
        io = self._io
        if io is None:
            return
        try:
            if self._paho.want_write():
                self._paho.loop_write()
            if self._io is not io:
                return
            try:
                io.flush()
            except OSError as exc:
                self._break(exc)
                return
            paho_waiting = self._paho.want_write()
            self._watch_writable(want=bool(io.pending_output) or paho_waiting)
            if io.pending_output < _OUTPUT_LOW_WATER and not paho_waiting:
                self._output_room.set()
                if not io.pending_output:
                    self._output_idle.set()
        except Exception as exc:  # noqa: BLE001 - a fault in paho must end this connection, not the loop
            self._io_failed("write", exc)

    def _on_misc_timer(self) -> None:
        self._misc_timer = None
        if self._io is None:
            return
        try:
            self._paho.loop_misc()  # keepalive: PINGREQ when idle, drop the connection without PINGRESP
            self._pump_output()
        except Exception as exc:  # noqa: BLE001 - a fault in paho must end this connection, not the loop
            self._io_failed("keepalive", exc)
        if self._io is not None and self._loop is not None:
            self._misc_timer = self._loop.call_later(_MISC_INTERVAL_S, self._on_misc_timer)

    def _watch_writable(self, *, want: bool) -> None:
        io = self._io
        if io is None or self._loop is None or want == self._writing:
            return
        if want:
            self._loop.add_writer(io.fileno(), self._pump_output)
        else:
            self._loop.remove_writer(io.fileno())
        self._writing = want

    def _io_failed(self, stage: str, exc: Exception) -> None:
        log.error("mqtt_io_failed", broker=self.address, stage=stage, error=repr(exc), exc_info=exc)
        self._break(ConnectionAbortedError(f"{stage} failed: {exc!r}"))

    def _break(self, error: OSError) -> None:
        """Ends the connection through paho's own connection-lost path (which calls on_disconnect)."""
        io = self._io
        if io is None:
            return
        if io.failed is None:
            io.failed = error
        io.paused = False
        with contextlib.suppress(Exception):
            self._paho.loop_read()  # our socket raises ``error``: paho closes it and reports the loss
        if self._io is io:  # paho did not close it (cannot happen with paho 2.x; kept as a safety net)
            self._on_socket_close(self._paho, None, io)
            io.close()
            self._connection_ended(str(error))

    def _shut(self, reason: str) -> None:
        """Closes whatever is still open and ends every waiter; used on failed connects and after close."""
        if self._connack is not None and not self._connack.done():
            self._connack.cancel()  # the caller already has its error
        self._break(ConnectionAbortedError(reason))
        if self._paho.prepared is not None:
            self._paho.prepared.close()
            self._paho.prepared = None
        self._connection_ended(reason)

    def _connection_ended(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        lost = ConnectionLost(f"connection to {self.address} lost: {self._lost}")
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(
                MqttConnectError(self.host, self.port, f"the connection closed before CONNACK: {self._lost}")
            )
        pending = list(self._pending.values()) + list(self._subscribing.values())
        self._pending.clear()
        self._subscribing.clear()
        for future, _ in pending:
            if not future.done():
                future.set_exception(lost)
        self._slots.release()  # chain-wakes every publisher waiting for a slot (see publish)
        self._output_room.set()
        self._output_idle.set()
        if not self._inbox_ended:
            self._inbox_ended = True
            self._inbox.put_nowait(None)

    # -- paho's callbacks (each wrapped by _guard) ---------------------------------------------------------

    def _guard(self, name: str, callback: Callable[_P, None]) -> Callable[_P, None]:
        """``callback`` made safe for paho: an exception is counted and logged, never raised into paho's
        loop (where it would leave paho's packet state half-updated)."""

        def guarded(*args: _P.args, **kwargs: _P.kwargs) -> None:
            try:
                callback(*args, **kwargs)
            except Exception as exc:  # counted and logged; see the docstring
                self.callback_failures += 1
                log.error("mqtt_callback_failed", broker=self.address, callback=name, error=repr(exc), exc_info=exc)

        return guarded

    def _on_socket_open(self, _client: Client, _userdata: Any, sock: SocketLike) -> None:
        assert isinstance(sock, _BufferedSocket)
        assert self._loop is not None
        self._io = self._opened = sock
        self._writing = False
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._misc_timer = self._loop.call_later(_MISC_INTERVAL_S, self._on_misc_timer)

    def _on_socket_close(self, _client: Client, _userdata: Any, sock: SocketLike) -> None:
        if sock is not self._io or self._loop is None:
            return
        if not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
        self._writing = False
        self._io = None
        if self._misc_timer is not None:
            self._misc_timer.cancel()
            self._misc_timer = None

    def _on_register_write(self, _client: Client, _userdata: Any, _sock: SocketLike) -> None:
        self._watch_writable(want=True)

    def _on_unregister_write(self, _client: Client, _userdata: Any, _sock: SocketLike) -> None:
        if self._io is not None and not self._io.pending_output:
            self._watch_writable(want=False)

    def _on_connect(
        self, _client: Client, _userdata: Any, flags: ConnectFlags, reason: ReasonCode, properties: Properties | None
    ) -> None:
        connack = self._connack
        if reason.is_failure:
            if connack is not None and not connack.done():
                connack.set_exception(MqttConnectError(self.host, self.port, f"the broker refused: {reason}"))
            return
        self.session_present = flags.session_present
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if receive_maximum:  # the broker takes no more QoS>0 publishes at once than this
            # paho keeps its own limit at max_inflight (it refuses a change once connected); ours is
            # the lower, so paho never has to queue.
            self._window = min(self.max_inflight, int(receive_maximum))
            self._slots = asyncio.Semaphore(self._window)  # nobody can be waiting yet: not connected
        log.debug("mqtt_connack", broker=self.address, receive_maximum=receive_maximum, window=self._window)
        if connack is not None and not connack.done():
            connack.set_result(None)

    def _on_disconnect(
        self,
        _client: Client,
        _userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._closed_by_owner:
            log.info("mqtt_disconnected", broker=self.address)
            self._connection_ended("closed by its owner")
            return
        cause = self._opened.failed if self._opened is not None else None
        if flags.is_disconnect_packet_from_server:
            why = f"the broker disconnected: {reason}"
        elif cause is not None:
            why = _describe(cause)
        else:
            why = str(reason)
        if self._state != "connecting":
            log.warning("mqtt_connection_lost", broker=self.address, reason=why, in_flight=len(self._pending))
        self._connection_ended(why)

    def _on_publish(
        self, _client: Client, _userdata: Any, mid: int, reason: ReasonCode, _properties: Properties | None
    ) -> None:
        waiting = self._pending.pop(mid, None)  # QoS 0 publishes are not waited for
        if waiting is None:
            return
        future, topic = waiting
        if not future.done():
            if reason.is_failure:
                future.set_exception(PublishRefusedError(topic, str(reason)))
            else:
                future.set_result(None)
        self._slots.release()

    def _on_subscribe(
        self, _client: Client, _userdata: Any, mid: int, reasons: list[ReasonCode], _properties: Properties | None
    ) -> None:
        waiting = self._subscribing.pop(mid, None)
        if waiting is None:
            return
        future, filters = waiting
        refused = {f: str(r) for f, r in zip(filters, reasons, strict=False) if r.is_failure}
        if future.done():
            return
        if refused:
            future.set_exception(SubscribeRefusedError(refused))
        else:
            future.set_result(None)

    def _on_message(self, _client: Client, _userdata: Any, message: MQTTMessage) -> None:
        self._inbox.put_nowait(Message(message.topic, bytes(message.payload), message.qos, message.retain, message.mid))
        io = self._io
        if io is not None and self._inbox.qsize() >= self._inbox_limit and not io.paused:
            # Stop reading: our socket refuses paho's next read, so no further message arrives until
            # the consumer has taken some (see _take).
            io.paused = True
            assert self._loop is not None
            self._loop.remove_reader(io.fileno())


class _MessageStream:
    """The async iterator ``MqttClient.messages()`` returns."""

    def __init__(self, client: MqttClient) -> None:
        self._client = client

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Message:
        message = await self._client._next_message()
        if message is None:
            raise StopAsyncIteration
        return message


def _describe(error: OSError) -> str:
    """What went wrong, for a person: a TLS alert by its name, a socket error by its message."""
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"  # e.g. TLSV1_ALERT_UNKNOWN_CA, SSLV3_ALERT_CERTIFICATE_REVOKED
    if error.errno:  # asyncio's own messages ("Connect call failed ...") do not say why
        return f"{type(error).__name__}: {os.strerror(error.errno)}"
    return f"{type(error).__name__}: {error}"


async def _ready(fd: int, *, writing: bool) -> None:
    """Waits until ``fd`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writing:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def connect_forever(
    factory: Callable[[], MqttClient],
    session: Callable[[MqttClient], Awaitable[None]],
    *,
    first_delay: float = 0.5,
    max_delay: float = 30.0,
    stable_after: float = 60.0,
) -> None:
    """Keeps a broker connection: runs ``session`` on each new client from ``factory`` and, when connecting
    fails or the connection is lost, waits a jittered, doubling delay (``first_delay`` up to ``max_delay``)
    and connects again. Returns when ``session`` returns. A connection that stayed up ``stable_after``
    seconds starts the delay over, so a broker that drops every connection at once is not hammered.
    Errors other than the connection's own (MqttError, OSError) propagate."""
    loop = asyncio.get_running_loop()
    delay = first_delay
    while True:
        client = factory()
        connected_at: float | None = None
        try:
            async with client:
                connected_at = loop.time()
                await session(client)
                return
        except* (MqttError, OSError) as failures:
            error = failures.exceptions[0]
            log.warning(
                "mqtt_reconnecting",
                broker=client.address,
                error=f"{type(error).__name__}: {error}",
                retry_s=round(delay, 2),
            )
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # the owner cancelled us while the connection was failing: the failure must not eat that
            raise asyncio.CancelledError
        if connected_at is not None and loop.time() - connected_at >= stable_after:
            delay = first_delay
        await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not security
        delay = min(delay * 2, max_delay)


__all__ = [
    "ConnectionLost",
    "Message",
    "MqttClient",
    "MqttConnectError",
    "MqttError",
    "PublishRefusedError",
    "SubscribeRefusedError",
    "Will",
    "connect_forever",
]
