"""Station servers in worker processes of their own (``[stations] processes = N``).

The codecs of HJ 212 and SL 651 cost tens of microseconds of CPU per upload; on the node's event
loop they compete with admission and the durable append. Here each worker process runs the
station servers of every protocol (``gateway.stations.StationServer``: framing, registry,
sessions, idle timeouts) and the node keeps only accepting and the append:

- **Listening and accepting.** The node binds each protocol's listening socket and is the only
  process that holds it: it accepts the stations' connections itself and hands each one's file
  descriptor to a worker (SCM_RIGHTS over a socket pair of its own per worker, several descriptors
  in one message), choosing the ready worker with the fewest live connections of that protocol
  (ties in turn), so stations are spread evenly whoever wakes first. A worker reports every
  connection it closes, so the node knows each worker's count and the total: past
  ``max_connections`` (per protocol, all workers together) a new connection is closed at once by
  the node and counted. Accepting costs the node an accept and its share of one sendmsg per
  connection, nothing per upload. With one socket the node knows its port at once (port 0 works)
  and no other program of the same user can join the port (no SO_REUSEPORT). While no worker is
  ready (at the start, or all of them died) the node does not accept: connections wait in the
  backlog, which lives in the node, and are taken when a worker is ready again.
- **Publishing.** A worker hands its batches to the node over a socket pair the node created and
  passed only to it: a frame holds a ``PublishRequest`` as the gRPC API would carry it; the node
  admits and appends it with its own identity, exactly as the in-loop station server does
  (``GatewayService.publish_batch``), and answers with the ``PublishReply`` only once the append is
  durable. The worker acknowledges to the station only after that answer. Cheaper than dialling
  the node's gRPC port (no HTTP/2, no TLS on loopback, no certificate to hand the worker), equally
  durable before acknowledgement, and nobody else can reach the channel.
- **Failure.** A worker that dies loses only its connections: the node may have stored part of
  what it was sending, but nothing it stored was acknowledged wrongly, and stations resend what was
  not acknowledged (ids come from the readings, so a resent reading is stored once). Connections
  handed to a worker that died before it took them are closed by the kernel with its end of the
  socket pair; those stations, never answered, connect again and reach another worker. Connections
  the node accepted but had not yet sent go to another ready worker. The node logs the death and
  starts a new worker with growing delays. A worker whose channel closes (the node stopped or
  died) closes its connections and exits.
- **Logs and metrics.** A worker's log events and metric counts are sent to the node over the same
  channel, so they appear in the node's log and on its /metrics as with the in-loop servers; the
  connections gauge is the node's own count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import signal
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from yiwang.v1 import gateway_pb2 as gw

from adapters.station_protocol import Limits, Station
from gateway.errors import YiwangError
from gateway.stations import Batcher, Publish, StationConnection, StationMetrics, StationServer, protocol_named

log = structlog.get_logger("yiwang.stations")

# A frame on the channel: payload length, kind, request number, then the payload.
HEADER = struct.Struct(">IBI")
PUBLISH, REPLY, FAILED, SETUP, READY, LOG, METRICS, CLOSED = range(1, 9)
MAX_FRAME_BYTES = 256 * 1024 * 1024
METRICS_INTERVAL_S = 1.0
FIRST_RESTART_DELAY_S = 0.2
MOST_RESTART_DELAY_S = 30.0
HEALTHY_AFTER_S = 60.0  # a worker that ran this long starts again after the first delay
STOP_GRACE_S = 5.0  # how long a stopping worker may take before it is killed
HANDOFF_BATCH = 64  # most descriptors in one handoff message (the kernel's limit is 253)
ACCEPT_BURST = 256  # most connections accepted per wake-up of one listening socket, so the loop stays fair
ACCEPT_PAUSE_S = 1.0  # how long the node stops accepting after running out of descriptors or memory
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RELAYED_COUNTERS = frozenset({"messages", "refused", "envelopes"})  # StationMetrics' counters a worker reports
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ChannelClosedError(ConnectionError):
    """The other end of the node-worker channel is gone."""


class AppendRefusedError(YiwangError):
    """The node could not append a worker's batch (its reason is in the message)."""


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """The next (kind, number, payload) from the channel; ChannelClosedError at its end."""
    try:
        size, kind, number = HEADER.unpack(await reader.readexactly(HEADER.size))
        if size > MAX_FRAME_BYTES:
            raise ChannelClosedError(f"a channel frame of {size} bytes (most {MAX_FRAME_BYTES})")
        return kind, number, await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosedError(f"the channel closed: {exc!r}") from None


def write_frame(writer: asyncio.StreamWriter, kind: int, number: int, payload: bytes) -> None:
    writer.write(HEADER.pack(len(payload), kind, number) + payload)


# -- the registry across the channel --------------------------------------------------------------


def stations_to_json(registry: Mapping[str, Mapping[str, Station]]) -> dict[str, list[dict[str, Any]]]:
    return {
        protocol: [
            {
                "id": s.id,
                "password": s.password,
                "region": s.region,
                "agency": s.agency,
                "name": s.name,
                "lat": s.lat,
                "lon": s.lon,
                "limits": {metric: [bound.low, bound.high] for metric, bound in s.limits.items()},
            }
            for s in stations.values()
        ]
        for protocol, stations in registry.items()
    }


def stations_from_json(table: Mapping[str, list[dict[str, Any]]]) -> dict[str, dict[str, Station]]:
    out: dict[str, dict[str, Station]] = {}
    for protocol, rows in table.items():
        out[protocol] = {
            row["id"]: Station(
                id=row["id"],
                password=row["password"],
                region=row["region"],
                agency=row["agency"],
                name=row["name"],
                lat=row["lat"],
                lon=row["lon"],
                limits={metric: Limits(low, high) for metric, (low, high) in row["limits"].items()},
            )
            for row in rows
        }
    return out


# -- the node's side ------------------------------------------------------------------------------


@dataclass
class WorkerSettings:
    """What every worker is told at its start (sent as JSON in the SETUP frame)."""

    protocols: list[str]  # in this order: a handed connection names its protocol by index
    registry: dict[str, list[dict[str, Any]]]
    idle_timeout_s: float
    max_connections: int  # per protocol (the node enforces it across all workers; here only a safety net)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; only the node holds it and accepts on it."""
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]  # fmt: skip
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.settimeout(0.0)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen for stations on {host}:{port}: {exc.strerror}") from None
    return sock


@dataclass
class _Counts:
    """A worker's last reported metric totals, to turn them into increments on the node."""

    totals: dict[str, float] = field(default_factory=dict)
    connections: dict[str, float] = field(default_factory=dict)  # by protocol, as the worker counts them


class StationWorker:
    """One worker process, supervised: started again with growing delays when it dies."""

    def __init__(self, pool: StationWorkers, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0  # how many times a process was started
        self.ready = asyncio.Event()  # the current process takes connections
        self.counts = _Counts()
        self.live: dict[str, int] = {}  # connections handed to the current process and not closed, by protocol
        self.handoff: socket.socket | None = None  # the node's end of the socket pair connections go over
        self._outbox: list[tuple[int, socket.socket]] = []  # (protocol index, connection) not yet sent
        self._waiting_writable = False
        self._publishing: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"station-worker-{self.index}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _supervise(self) -> None:
        delay = FIRST_RESTART_DELAY_S
        while True:
            started = time.monotonic()
            outcome = await self._run_once()
            if time.monotonic() - started >= HEALTHY_AFTER_S:
                delay = FIRST_RESTART_DELAY_S
            log.error("station_worker_died", worker=self.index, pid=self.pid, outcome=outcome,
                      restart_in_s=round(delay, 2))  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, MOST_RESTART_DELAY_S)

    async def _run_once(self) -> str:
        """Runs one worker process until it ends; says how it ended."""
        ours, theirs = socket.socketpair()
        # SOCK_SEQPACKET: one handoff is one message, its descriptors never split from its bytes
        handoff, their_handoff = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handoff.settimeout(0.0)
        args = ["--channel", str(theirs.fileno()), "--handoff", str(their_handoff.fileno())]
        self.ready.clear()
        self.counts = _Counts()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.station_workers", *args,
                pass_fds=[theirs.fileno(), their_handoff.fileno()], stdin=asyncio.subprocess.DEVNULL,
                env=_child_environment(),
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            handoff.close()
            return f"cannot start: {exc}"
        finally:
            theirs.close()
            their_handoff.close()
        self.starts += 1
        self.handoff = handoff
        process = self.process
        reader, writer = await asyncio.open_connection(sock=ours)
        try:
            write_frame(writer, SETUP, 0, json.dumps(self.pool.settings.__dict__).encode())
            await self._serve(reader, writer)
        except ChannelClosedError:
            pass
        finally:
            self.ready.clear()
            self._end_handoff()
            await self._end_publishing()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if process.returncode is None:
                await self._end(process)
        code = process.returncode
        return f"killed by signal {-code}" if code is not None and code < 0 else f"exit {code}"

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        """Waits for a process whose channel is closed to exit (it does at once); kills it if not."""
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE_S)
        except TimeoutError:
            log.error("station_worker_killed", worker=self.index, pid=process.pid,
                      reason=f"did not exit within {STOP_GRACE_S} s of its channel closing")  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await asyncio.shield(process.wait())
            raise

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            kind, number, payload = await read_frame(reader)
            if kind == PUBLISH:
                task = asyncio.create_task(self._publish(writer, number, payload))
                self._publishing.add(task)
                task.add_done_callback(self._published)
            elif kind == CLOSED:
                self._closed(json.loads(payload))
            elif kind == LOG:
                _relay_log(self.index, json.loads(payload))
            elif kind == METRICS:
                self._metrics(json.loads(payload))
            elif kind == READY:
                self.ready.set()
                log.info("station_worker_listening", worker=self.index, pid=self.pid)
                self.pool.accept_when_ready()
            else:
                raise ChannelClosedError(f"a frame of unknown kind {kind} from station worker {self.index}")

    # -- handing connections over

    def take(self, protocol_index: int, protocol: str, connection: socket.socket) -> None:
        """Counts ``connection`` as this worker's; it leaves with the next ``send_taken``."""
        self.live[protocol] = self.live.get(protocol, 0) + 1
        self._outbox.append((protocol_index, connection))

    def send_taken(self) -> None:
        """Sends the connections taken so far to the worker, HANDOFF_BATCH descriptors a message; the
        node's copies close once sent. Waits for the socket pair to be writable when it is full."""
        handoff = self.handoff
        while self._outbox and handoff is not None:
            batch = self._outbox[:HANDOFF_BATCH]
            try:
                socket.send_fds(handoff, [bytes(index for index, _ in batch)], [conn.fileno() for _, conn in batch])
            except BlockingIOError:
                if not self._waiting_writable:
                    asyncio.get_running_loop().add_writer(handoff.fileno(), self.send_taken)
                    self._waiting_writable = True
                return
            except (BrokenPipeError, ConnectionResetError):
                return  # the worker is gone: its channel ends too, and _end_handoff passes these on
            except OSError as exc:  # e.g. too many descriptors in flight: these stations connect again
                log.error("station_handoff_failed", worker=self.index, connections=len(batch), error=repr(exc))
                self._forget([index for index, _ in batch])
            for _, connection in batch:
                connection.close()
            del self._outbox[: len(batch)]
        if self._waiting_writable and handoff is not None:
            asyncio.get_running_loop().remove_writer(handoff.fileno())
            self._waiting_writable = False

    def _forget(self, protocol_indexes: list[int]) -> None:
        for index in protocol_indexes:
            protocol = self.pool.protocols[index]
            self.live[protocol] = max(0, self.live.get(protocol, 0) - 1)
        self.pool.show_connections()

    def _end_handoff(self) -> None:
        """The process ended: what it was handed is gone with it (the kernel closes what it had not
        taken); what was not sent yet goes to another worker, or is closed when the node stops."""
        handoff, self.handoff = self.handoff, None
        if handoff is not None:
            if self._waiting_writable:
                asyncio.get_running_loop().remove_writer(handoff.fileno())
                self._waiting_writable = False
            handoff.close()
        unsent, self._outbox = self._outbox, []
        self.live = {}
        self.pool.accept_when_ready()
        self.pool.hand_on(unsent)
        self.pool.show_connections()

    def _closed(self, report: dict[str, int]) -> None:
        for protocol, count in report.items():
            self.live[protocol] = max(0, self.live.get(protocol, 0) - count)
        self.pool.show_connections()

    # -- publishing

    async def _publish(self, writer: asyncio.StreamWriter, number: int, raw: bytes) -> None:
        """Appends a worker's batch with the node's identity; answers once it is durable (or refused)."""
        kind, answer = FAILED, b"the node did not append the batch"
        try:
            reply = await self.pool.publish(raw)
            kind, answer = REPLY, reply.SerializeToString()
        except (YiwangError, sqlite3.Error, OSError) as exc:  # the worker refuses its stations' messages
            answer = repr(exc).encode()
        finally:  # also when cancelled or failing unexpectedly: the worker must not wait for ever
            if not writer.is_closing():
                write_frame(writer, kind, number, answer)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("station_worker_publish_failed", worker=self.index, error=repr(task.exception()),
                      exc_info=task.exception())  # fmt: skip

    async def _end_publishing(self) -> None:
        """Lets the appends of a dead worker's batches finish (their answers go nowhere: the stations
        were not acknowledged and send again); cancels them when the node stops."""
        tasks = list(self._publishing)
        if tasks and not self._stopping:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _metrics(self, report: dict[str, Any]) -> None:
        metrics = self.pool.metrics
        for key, total in report["counters"].items():
            name, *labels = key.split("|")
            if name not in _RELAYED_COUNTERS:
                continue
            delta = total - self.counts.totals.get(key, 0.0)
            self.counts.totals[key] = total
            if delta > 0:
                getattr(metrics, name).labels(*labels).inc(delta)
        self.counts.connections = dict(report["connections"])


class StationWorkers:
    """The node's station workers: the listening sockets it accepts on, the processes it hands the
    connections to, and their channels' other ends."""

    def __init__(
        self,
        processes: int,
        listening: Mapping[str, socket.socket],
        registry: Mapping[str, Mapping[str, Station]],
        publish: Publish,
        metrics: StationMetrics,
        *,
        idle_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.listening = dict(listening)
        self.protocols = list(listening)
        self.publish = publish
        self.metrics = metrics
        self.max_connections = max_connections
        self.settings = WorkerSettings(
            protocols=self.protocols,
            registry=stations_to_json({name: registry.get(name, {}) for name in listening}),
            idle_timeout_s=idle_timeout_s,
            max_connections=max_connections,
        )
        self.workers = [StationWorker(self, index) for index in range(processes)]
        self._turn = 0  # where the search for the least busy worker starts, so ties go round
        self._accepting = False
        self._paused: asyncio.TimerHandle | None = None  # accepting again after running out of descriptors
        self._stopping = False

    @property
    def ports(self) -> dict[str, int]:
        return {name: int(sock.getsockname()[1]) for name, sock in self.listening.items()}

    def start(self) -> None:
        for sock in self.listening.values():
            sock.settimeout(0.0)
        for worker in self.workers:
            worker.start()

    async def ready(self) -> None:
        """Waits until every worker takes connections."""
        await asyncio.gather(*(worker.ready.wait() for worker in self.workers))

    async def stop(self) -> None:
        self._stopping = True
        self.accept_when_ready()
        if self._paused is not None:
            self._paused.cancel()
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        for sock in self.listening.values():
            sock.close()

    def live(self, protocol: str) -> int:
        """Connections of ``protocol`` open in all workers together (as far as the node knows)."""
        return sum(worker.live.get(protocol, 0) for worker in self.workers)

    def show_connections(self) -> None:
        for protocol in self.protocols:
            self.metrics.connections.labels(protocol).set(self.live(protocol))

    # -- accepting

    def accept_when_ready(self) -> None:
        """Accepts while at least one worker is ready; otherwise connections wait in the backlog."""
        wanted = not self._stopping and self._paused is None and any(w.ready.is_set() for w in self.workers)
        if wanted == self._accepting:
            return
        loop = asyncio.get_running_loop()
        for index, sock in enumerate(self.listening.values()):
            if wanted:
                loop.add_reader(sock.fileno(), self._accept, index)
            else:
                loop.remove_reader(sock.fileno())
        self._accepting = wanted

    def _accept(self, protocol_index: int) -> None:
        """Accepts the connections waiting on one protocol's socket (a bounded number, so the loop
        stays fair) and hands them out, one message per worker."""
        protocol = self.protocols[protocol_index]
        listening = self.listening[protocol]
        taken: set[StationWorker] = set()
        for _ in range(ACCEPT_BURST):
            try:
                connection, peer = listening.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause(protocol, exc)
                    break
                continue  # e.g. ECONNABORTED: that station is gone already
            if self.live(protocol) >= self.max_connections:
                self._refuse(protocol, connection, peer)
                continue
            worker = self._least_busy(protocol)
            if worker is None:
                connection.close()
                continue
            worker.take(protocol_index, protocol, connection)
            taken.add(worker)
        for worker in taken:
            worker.send_taken()
        if taken:
            self.show_connections()

    def hand_on(self, unsent: list[tuple[int, socket.socket]]) -> None:
        """Connections accepted for a worker that ended before they were sent: to another one."""
        taken: set[StationWorker] = set()
        for protocol_index, connection in unsent:
            worker = None if self._stopping else self._least_busy(self.protocols[protocol_index])
            if worker is None:
                connection.close()  # never answered: the station connects again
                continue
            worker.take(protocol_index, self.protocols[protocol_index], connection)
            taken.add(worker)
        for worker in taken:
            worker.send_taken()

    def _least_busy(self, protocol: str) -> StationWorker | None:
        """The ready worker with the fewest live connections of ``protocol``; ties go in turn."""
        count = len(self.workers)
        start, self._turn = self._turn, (self._turn + 1) % count
        best: StationWorker | None = None
        for step in range(count):
            worker = self.workers[(start + step) % count]
            if (
                worker.ready.is_set()
                and worker.handoff is not None
                and (best is None or worker.live.get(protocol, 0) < best.live.get(protocol, 0))
            ):
                best = worker
        return best

    def _refuse(self, protocol: str, connection: socket.socket, peer: Any) -> None:
        """Past max_connections: closed at once. Not with a reset: one that reaches the station before
        its connect call returned makes the connect fail, where a refusal must look like a close."""
        self.metrics.refused.labels(protocol, "connections").inc()
        log.warning("station_connection_refused", protocol=protocol, peer=_peer_text(peer),
                    reason=f"more than {self.max_connections} connections")  # fmt: skip
        connection.close()

    def _pause(self, protocol: str, error: OSError) -> None:
        log.error("station_accept_paused", protocol=protocol, error=repr(error), resume_in_s=ACCEPT_PAUSE_S)
        self._paused = asyncio.get_running_loop().call_later(ACCEPT_PAUSE_S, self._resume)
        self.accept_when_ready()

    def _resume(self) -> None:
        self._paused = None
        self.accept_when_ready()


def _peer_text(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


def _relay_log(index: int, event: dict[str, Any]) -> None:
    level = event.pop("level", "info")
    name = event.pop("event", "station_worker_log")
    method = getattr(log, level if level in LOG_LEVELS else "info")
    method(name, worker=index, **event)


def _child_environment() -> dict[str, str]:
    """The node's environment, with the folder this package is in first on the module path."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


# -- the worker's side ----------------------------------------------------------------------------


class NodeChannel:
    """The worker's end of the channel: publishes batches and waits for the node's answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._answers: dict[int, asyncio.Future[gw.PublishReply]] = {}
        self._number = 0

    async def publish(self, raw: bytes) -> gw.PublishReply:
        if self.writer.is_closing():
            raise ChannelClosedError("the node's channel is closed")
        self._number += 1
        answer: asyncio.Future[gw.PublishReply] = asyncio.get_running_loop().create_future()
        self._answers[self._number] = answer
        write_frame(self.writer, PUBLISH, self._number, raw)
        return await answer

    def send(self, kind: int, payload: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            write_frame(self.writer, kind, 0, json.dumps(payload, default=str, ensure_ascii=False).encode())

    async def answers(self) -> None:
        """Reads the node's answers until the channel closes (then every waiting batch fails)."""
        try:
            while True:
                kind, number, payload = await read_frame(self.reader)
                answer = self._answers.pop(number, None)
                if answer is None or answer.done():
                    continue
                if kind == REPLY:
                    answer.set_result(gw.PublishReply.FromString(payload))
                else:
                    answer.set_exception(AppendRefusedError(payload.decode(errors="replace")))
        finally:
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(ChannelClosedError("the node's channel closed"))
            self._answers.clear()


def _forward_logs(channel: NodeChannel) -> None:
    """structlog in the worker: every event goes to the node, which logs it with its own settings."""

    def forward(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        event["level"] = method
        channel.send(LOG, dict(event))
        raise structlog.DropEvent

    # exc_info becomes the traceback's text here: an exception object cannot cross the channel
    structlog.configure(processors=[structlog.processors.format_exc_info, forward], cache_logger_on_first_use=False)


def _metric_report(registry: CollectorRegistry, protocols: list[str]) -> dict[str, Any]:
    counters: dict[str, float] = {}
    connections: dict[str, float] = dict.fromkeys(protocols, 0.0)
    names = {"yiwang_station_messages": "messages", "yiwang_station_refused": "refused",
             "yiwang_station_envelopes": "envelopes"}  # fmt: skip
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "yiwang_station_connections":
                connections[sample.labels["protocol"]] = sample.value
            elif sample.name.endswith("_total") and sample.name[: -len("_total")] in names:
                attribute = names[sample.name[: -len("_total")]]
                labels = [sample.labels["protocol"], *(v for k, v in sample.labels.items() if k != "protocol")]
                counters["|".join([attribute, *labels])] = sample.value
    return {"counters": counters, "connections": connections}


@dataclass
class HandedStationServer(StationServer):
    """A station server for the connections the node accepted and handed over; it reports each one
    it closes, so the node knows how many this worker holds."""

    report_closed: Callable[[str], None] = field(kw_only=True)  # told the protocol of each closed connection

    def start_serving(self) -> None:
        """Starts closing idle connections (there is no listening socket to start)."""
        self._sweeper = asyncio.create_task(self._sweep(), name=f"{self.protocol.name}-idle")

    async def adopt(self, sock: socket.socket) -> None:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: StationConnection(self), sock)

    def closed(self, connection: StationConnection) -> None:
        super().closed(connection)
        self.report_closed(self.protocol.name)

    async def stop(self) -> None:
        await super().stop()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()


class ClosedReports:
    """Tells the node of closed connections: those of one turn of the event loop in one frame."""

    def __init__(self, channel: NodeChannel) -> None:
        self.channel = channel
        self._counts: dict[str, int] = {}

    def closed(self, protocol: str) -> None:
        if not self._counts:
            asyncio.get_running_loop().call_soon(self._send)
        self._counts[protocol] = self._counts.get(protocol, 0) + 1

    def _send(self) -> None:
        counts, self._counts = self._counts, {}
        self.channel.send(CLOSED, counts)


class Handoff:
    """The worker's end of the socket pair the node hands accepted connections over: each message
    carries descriptors, and one byte per descriptor naming its protocol (an index of the servers)."""

    def __init__(self, sock: socket.socket, servers: list[HandedStationServer], reports: ClosedReports) -> None:
        self.sock = sock
        self.servers = servers
        self.reports = reports
        self._adopting: set[asyncio.Task[None]] = set()
        self._reading = False

    def start(self) -> None:
        self.sock.settimeout(0.0)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)
        self._reading = True

    async def stop(self) -> None:
        self._stop_reading()
        for task in self._adopting:
            task.cancel()
        await asyncio.gather(*self._adopting, return_exceptions=True)
        self.sock.close()

    def _stop_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._reading = False

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, HANDOFF_BATCH, HANDOFF_BATCH)
            except BlockingIOError:
                return
            except ConnectionError:
                data, fds = b"", []
            if not data and not fds:
                self._stop_reading()  # the node closed its end; the channel's end stops this worker
                return
            handed: list[tuple[HandedStationServer, socket.socket]] = []
            for position, fd in enumerate(fds):
                sock = socket.socket(fileno=fd)
                if position < len(data) and data[position] < len(self.servers):
                    handed.append((self.servers[data[position]], sock))
                else:  # cannot happen with the node's messages; closed rather than served by a guess
                    sock.close()
            for index in data[len(fds) :]:  # descriptors the kernel did not pass: gone, and so reported
                if index < len(self.servers):
                    self.reports.closed(self.servers[index].protocol.name)
            task = asyncio.create_task(self._adopt(handed), name="adopt-connections")
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)

    async def _adopt(self, handed: list[tuple[HandedStationServer, socket.socket]]) -> None:
        """Serves the connections of one handoff message, one after the other (no task each)."""
        adopted = 0
        try:
            for server, sock in handed:
                try:
                    await server.adopt(sock)
                except OSError:  # the station is gone already: nothing to serve
                    sock.close()
                    self.reports.closed(server.protocol.name)
                adopted += 1
        finally:  # cancelled when the worker stops: what it did not take is closed (and reported)
            for server, sock in handed[adopted:]:
                sock.close()
                self.reports.closed(server.protocol.name)


async def serve_worker(channel_fd: int, handoff_fd: int) -> None:
    """A worker process's life: serves the connections the node hands over until the channel closes."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=channel_fd))
    channel = NodeChannel(reader, writer)
    _forward_logs(channel)
    kind, _, payload = await read_frame(reader)
    if kind != SETUP:
        raise ChannelClosedError(f"the node's first frame is of kind {kind}, not SETUP")
    settings = WorkerSettings(**json.loads(payload))
    registry = stations_from_json(settings.registry)
    metrics_registry = CollectorRegistry()
    metrics = StationMetrics(metrics_registry)
    reports = ClosedReports(channel)
    batcher = Batcher(channel.publish)
    batcher.start()
    servers = [
        HandedStationServer(
            protocol_named(protocol),
            registry.get(protocol, {}),
            batcher,
            metrics,
            idle_timeout_s=settings.idle_timeout_s,
            max_connections=settings.max_connections,
            report_closed=reports.closed,
        )
        for protocol in settings.protocols
    ]
    handoff = Handoff(socket.socket(fileno=handoff_fd), servers, reports)
    try:
        for server in servers:
            server.start_serving()
        handoff.start()
        channel.send(READY, {})
        answers = asyncio.create_task(channel.answers(), name="node-answers")
        try:
            while not answers.done():
                await asyncio.wait({answers}, timeout=METRICS_INTERVAL_S)
                channel.send(METRICS, _metric_report(metrics_registry, settings.protocols))
        finally:
            answers.cancel()
            with contextlib.suppress(asyncio.CancelledError, ChannelClosedError):
                await answers
    finally:
        await handoff.stop()
        for server in servers:
            await server.stop()
        await batcher.stop()
        writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A station worker process, started by the node.")
    parser.add_argument("--channel", type=int, required=True, help="file descriptor of the node's channel")
    parser.add_argument("--handoff", type=int, required=True,
                        help="file descriptor of the socket pair the node hands connections over")  # fmt: skip
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the node's to handle; the channel ends us
    with contextlib.suppress(ChannelClosedError):
        asyncio.run(serve_worker(args.channel, args.handoff))


if __name__ == "__main__":
    main()
