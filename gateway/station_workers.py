"""Station servers in worker processes of their own (``[stations] processes = N``).

The codecs of HJ 212 and SL 651 cost tens of microseconds of CPU per upload; on the node's event
loop they compete with admission and the durable append. Here each worker process runs the
station servers of every protocol (``gateway.stations.StationServer``: framing, registry,
sessions, idle timeouts, connection limits) and the node keeps only the append:

- **Listening.** The node binds each protocol's listening socket itself and every worker inherits
  it and accepts on it. Not SO_REUSEPORT: with one socket the node knows its port at once (port 0
  works), no other program of the same user can join the port and take stations' connections, and
  connections waiting in the backlog survive a worker's death (the restarted worker takes them),
  where a SO_REUSEPORT socket's backlog dies with its process.
- **Publishing.** A worker hands its batches to the node over a socket pair the node created and
  passed only to it: a frame holds a ``PublishRequest`` as the gRPC API would carry it; the node
  admits and appends it with its own identity, exactly as the in-loop station server does
  (``GatewayService.publish_batch``), and answers with the ``PublishReply`` only once the append is
  durable. The worker acknowledges to the station only after that answer. Cheaper than dialling
  the node's gRPC port (no HTTP/2, no TLS on loopback, no certificate to hand the worker), equally
  durable before acknowledgement, and nobody else can reach the channel.
- **Failure.** A worker that dies loses only its connections: the node may have stored part of
  what it was sending, but nothing it stored was acknowledged wrongly, and stations resend what was
  not acknowledged (ids come from the readings, so a resent reading is stored once). The node logs
  the death and starts a new worker with growing delays. A worker whose channel closes (the node
  stopped or died) closes its connections and exits.
- **Logs and metrics.** A worker's log events and metric counts are sent to the node over the same
  channel, so they appear in the node's log and on its /metrics as with the in-loop servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import struct
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from yiwang.v1 import gateway_pb2 as gw

from adapters.station_protocol import Limits, Station
from gateway.errors import YiwangError
from gateway.stations import Batcher, Publish, StationMetrics, StationServer, protocol_named

log = structlog.get_logger("yiwang.stations")

# A frame on the channel: payload length, kind, request number, then the payload.
HEADER = struct.Struct(">IBI")
PUBLISH, REPLY, FAILED, SETUP, READY, LOG, METRICS = range(1, 8)
MAX_FRAME_BYTES = 256 * 1024 * 1024
METRICS_INTERVAL_S = 1.0
FIRST_RESTART_DELAY_S = 0.2
MOST_RESTART_DELAY_S = 30.0
HEALTHY_AFTER_S = 60.0  # a worker that ran this long starts again after the first delay
STOP_GRACE_S = 5.0  # how long a stopping worker may take before it is killed
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

    protocols: list[str]
    registry: dict[str, list[dict[str, Any]]]
    idle_timeout_s: float
    max_connections: int  # per protocol, for this worker


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket the workers inherit (the node never accepts on it)."""
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]  # fmt: skip
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen for stations on {host}:{port}: {exc.strerror}") from None
    return sock


@dataclass
class _Counts:
    """A worker's last reported metric totals, to turn them into increments on the node."""

    totals: dict[str, float] = field(default_factory=dict)
    connections: dict[str, float] = field(default_factory=dict)  # by protocol


class StationWorker:
    """One worker process, supervised: started again with growing delays when it dies."""

    def __init__(self, pool: StationWorkers, index: int) -> None:
        self.pool = pool
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0  # how many times a process was started
        self.ready = asyncio.Event()  # the current process listens
        self.counts = _Counts()
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
        listening = self.pool.listening
        fds = [theirs.fileno(), *(sock.fileno() for sock in listening.values())]
        args = ["--channel", str(theirs.fileno())]
        for protocol, sock in listening.items():
            args += ["--listen", f"{protocol}={sock.fileno()}"]
        self.ready.clear()
        self.counts = _Counts()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.station_workers", *args,
                pass_fds=fds, stdin=asyncio.subprocess.DEVNULL, env=_child_environment(),
            )  # fmt: skip
        except OSError as exc:
            ours.close()
            theirs.close()
            return f"cannot start: {exc}"
        finally:
            theirs.close()
        self.starts += 1
        process = self.process
        reader, writer = await asyncio.open_connection(sock=ours)
        try:
            write_frame(writer, SETUP, 0, json.dumps(self.pool.settings.__dict__).encode())
            await self._serve(reader, writer)
        except ChannelClosedError:
            pass
        finally:
            self.ready.clear()
            await self._end_publishing()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._forget_connections()
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
            elif kind == LOG:
                _relay_log(self.index, json.loads(payload))
            elif kind == METRICS:
                self._metrics(json.loads(payload))
            elif kind == READY:
                self.ready.set()
                log.info("station_worker_listening", worker=self.index, pid=self.pid)
            else:
                raise ChannelClosedError(f"a frame of unknown kind {kind} from station worker {self.index}")

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
        self.pool.show_connections()

    def _forget_connections(self) -> None:
        self.counts.connections = {}
        self.pool.show_connections()


class StationWorkers:
    """The node's station workers: the listening sockets, the processes and their channel's other end."""

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
        self.publish = publish
        self.metrics = metrics
        self.settings = WorkerSettings(
            protocols=list(listening),
            registry=stations_to_json({name: registry.get(name, {}) for name in listening}),
            idle_timeout_s=idle_timeout_s,
            max_connections=max(1, math.ceil(max_connections / processes)),
        )
        self.workers = [StationWorker(self, index) for index in range(processes)]

    @property
    def ports(self) -> dict[str, int]:
        return {name: int(sock.getsockname()[1]) for name, sock in self.listening.items()}

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    async def ready(self) -> None:
        """Waits until every worker listens."""
        await asyncio.gather(*(worker.ready.wait() for worker in self.workers))

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        for sock in self.listening.values():
            sock.close()

    def show_connections(self) -> None:
        for protocol in self.listening:
            total = sum(w.counts.connections.get(protocol, 0.0) for w in self.workers)
            self.metrics.connections.labels(protocol).set(total)


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


async def serve_worker(channel_fd: int, listening: Mapping[str, int]) -> None:
    """A worker process's life: station servers on the inherited sockets until the channel closes."""
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
    batcher = Batcher(channel.publish)
    batcher.start()
    servers = []
    try:
        for protocol in settings.protocols:
            server = StationServer(
                protocol_named(protocol),
                registry.get(protocol, {}),
                batcher,
                metrics,
                idle_timeout_s=settings.idle_timeout_s,
                max_connections=settings.max_connections,
            )
            await server.start_on(socket.socket(fileno=listening[protocol]))
            servers.append(server)
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
        for server in servers:
            await server.stop()
        await batcher.stop()
        writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A station worker process, started by the node.")
    parser.add_argument("--channel", type=int, required=True, help="file descriptor of the node's channel")
    parser.add_argument("--listen", action="append", default=[], help="PROTOCOL=FD of an inherited listening socket")
    args = parser.parse_args(argv)
    listening = {}
    for item in args.listen:
        protocol, _, fd = item.partition("=")
        listening[protocol] = int(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the node's to handle; the channel ends us
    with contextlib.suppress(ChannelClosedError):
        asyncio.run(serve_worker(args.channel, listening))


if __name__ == "__main__":
    main()
