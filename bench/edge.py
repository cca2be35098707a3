"""Edge benchmark: readings from field terminals through the edge agent, MQTT and the node's ingest.

Prints, in one run:
  (a) anchor: Mosquitto's own C clients moving small messages (one JSON reading per message, as a
      terminal without our agent would send them) through a local broker started here on a free
      loopback port (plain TCP, anonymous, no persistence): ``mosquitto_pub -l`` (one message per
      stdin line) to ``mosquitto_sub -C N``, at QoS 0 (the default of -l) and QoS 1; messages/s at
      the subscriber, from its own per-message timestamps (``-F %U``);
  (b) edge: readings/s stored in a node's durable log (fsync on) from simulated terminals through
      their edge agents (outbox on disk, batches sized and compressed per the link profile), the
      same broker and the node's MQTT ingest, over a steady window after a warm-up, counted from
      the node's ``yiwang_edge_readings_total``; the ratio to the QoS 0 anchor (goal: at least 2x);
      the CPU seconds each process used in the window;
  (c) satellite: bytes on the link per reading for a realistic mix (a simulated fleet over a few
      hours of the rainstorm, packed as the agent packs for the satellite profile: compressed
      batches of at most 1,500 bytes, plus each MQTT PUBLISH's header and topic) against the same
      readings sent as one JSON message each (goal: at most 1/10).

Each role runs in its own process, as a deployment would: the broker, the node (``python -m
gateway.cli gateway``) and the agents (``--role agents``, pre-generated readings from
``edge_agent.simulate.burst`` put into the outboxes as fast as they take them). Usage:

    .venv/bin/python bench/edge.py [--seconds 10] [--terminals 16] [--profile lan] [--agent-procs 1]
                                   [--only a,b,c] [--no-fsync] [--mode series|readings]
                                   [--rate 1000] [--block 10000]

(b) by default has each terminal sample a high-rate sensor (``edge_agent.simulate.SampledSensor``)
and submit blocks with ``EdgeAgent.submit_series`` (one outbox row and one series entry per block);
``--mode readings`` puts single readings instead, for the one-reading-per-put figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from bench.throughput import free_port, wait_port
from edge_agent import wire
from edge_agent.agent import EdgeAgent
from edge_agent.cli import connector, run_until_stopped, until_signalled
from edge_agent.links import SATELLITE, Budget, LinkProfile, profile
from edge_agent.model import Metric, Reading, Sequenced
from edge_agent.outbox import Outbox
from edge_agent.simulate import HOUR_MS, SampledSensor, SimulatedTerminal, burst, fleet
from gateway import logsetup

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PUB = shutil.which("mosquitto_pub") or "mosquitto_pub"
SUB = shutil.which("mosquitto_sub") or "mosquitto_sub"
AGENCY: Final = "water"
# Burst readings are stamped from here on (a year back), so even long bursts stay in the past.
BACKDATE_MS: Final = 365 * 24 * HOUR_MS
# The 20 July 2021 Zhengzhou rainstorm, 14:00 local time: the satellite mix's scenario start.
SCENARIO_START_MS: Final = (
    int(dt.datetime(2021, 7, 20, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=8))).timestamp()) * 1000
)
CLOCK_TICK: Final = os.sysconf("SC_CLK_TCK")


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[Any], what: str, timeout: float) -> None:
    """Waits until ``text`` appears in the file ``path`` (a process's log)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            if text in path.read_text(encoding="utf-8", errors="replace"):
                return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited (status {proc.returncode}) before logging {text!r}; see {path}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not log {text!r} within {timeout:g} s; see {path}")
        time.sleep(0.05)


# -- processes --------------------------------------------------------------------------------------


class Processes:
    """Every process the benchmark starts, stopped (TERM, then KILL) when the block ends, however it ends."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self, args: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(list(args), **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def children_of(pid: int) -> list[int]:
    """Direct children of a process (the node's admission workers)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def json_line(proc: subprocess.Popen[str], timeout: float, what: str) -> dict[str, Any]:
    """The next line of ``proc``'s stdout that is a JSON object, within ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"{what}: no answer within {timeout:g} s")
            if selector.select(left):
                line = proc.stdout.readline()
                if not line:
                    raise SystemExit(f"{what} exited (status {proc.wait(10)}) without an answer")
                if line.startswith("{"):
                    return dict(json.loads(line))


# -- the broker -------------------------------------------------------------------------------------


class Broker:
    """Mosquitto on a free loopback port: plain TCP, anonymous, no persistence, otherwise the
    deployment's defaults (deploy/mosquitto/yiwang.conf sets no queue or in-flight limits: at most
    1,000 messages queued per client beyond the 20 in flight). ``unlimited_queues`` lifts the queue
    limit, for the anchor, whose publisher has no flow control to the subscriber."""

    def __init__(self, folder: Path, procs: Processes, *, unlimited_queues: bool = False) -> None:
        self.port = free_port()
        self.log = folder / "mosquitto.log"
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type subscribe\n"
            + ("max_queued_messages 0\nmax_queued_bytes 0\n" if unlimited_queues else ""),
            encoding="utf-8",
        )
        self.proc = procs.start([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, 20, self.proc, "mosquitto")

    def wait_subscribed(self, client_id: str, timeout: float = 20.0) -> None:
        """Waits for the broker's log line of ``client_id``'s subscription."""
        wait_for_text(self.log, f" {client_id} ", self.proc, "mosquitto", timeout)


# -- (a) the anchor ---------------------------------------------------------------------------------


def anchor_run(broker: Broker, procs: Processes, folder: Path, qos: int, count: int, line: bytes) -> dict[str, Any]:
    """``count`` messages from mosquitto_pub -l to mosquitto_sub -C; rate from the subscriber's timestamps."""
    client_id = f"bench-sub-{qos}-{count}-{time.monotonic_ns()}"
    out = folder / f"{client_id}.txt"
    topic = "bench/anchor"
    port = str(broker.port)
    with out.open("wb") as sink:
        sub = procs.start(
            [SUB, "-h", "127.0.0.1", "-p", port, "-i", client_id, "-t", topic, "-q", str(qos),
             "-C", str(count), "-F", "%U"],
            stdout=sink,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    broker.wait_subscribed(client_id)
    pub = procs.start(
        [PUB, "-h", "127.0.0.1", "-p", port, "-t", topic, "-q", str(qos), "-l"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    stdin = pub.stdin
    assert stdin is not None

    def write() -> None:
        per_block = 4096
        block = line * per_block
        with contextlib.suppress(OSError, ValueError):  # the publisher was stopped
            for _ in range(count // per_block):
                stdin.write(block)
            stdin.write(line * (count % per_block))
            stdin.flush()

    writer = threading.Thread(target=write, name="bench-anchor-writer", daemon=True)
    writer.start()
    # stdin stays open until the subscriber has everything: at end of input, mosquitto_pub -l (2.0.11)
    # disconnects with QoS 1 messages still queued in its library, and they are lost.
    # The subscriber ends at its count; if messages were lost, once nothing has come for 3 s.
    size, still_since = -1, time.monotonic()
    deadline = time.monotonic() + count / 5000 + 60
    while sub.poll() is None:
        now_size = out.stat().st_size
        if now_size != size:
            size, still_since = now_size, time.monotonic()
        elif time.monotonic() - still_since > 3 or time.monotonic() > deadline:
            procs.stop(sub)
            break
        time.sleep(0.1)
    writer.join(1)
    if writer.is_alive():
        procs.stop(pub)  # it stopped reading: the writer fails and ends
        writer.join(10)
    with contextlib.suppress(OSError):
        stdin.close()
    try:
        pub.wait(30)
    except subprocess.TimeoutExpired:
        procs.stop(pub)
    stamps = out.read_text(encoding="ascii").split()
    out.unlink()
    if len(stamps) < 2:
        raise SystemExit(f"anchor at QoS {qos}: the subscriber received {len(stamps)} of {count} messages")
    seconds = float(stamps[-1]) - float(stamps[0])
    return {"sent": count, "received": len(stamps), "seconds": seconds, "rate": (len(stamps) - 1) / seconds}


def run_anchor(args: argparse.Namespace, line: bytes) -> dict[int, dict[str, Any]]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="yiwang-edge-anchor-") as folder, Processes() as procs:
        broker = Broker(Path(folder), procs, unlimited_queues=True)
        for qos in (0, 1):
            calibration = anchor_run(broker, procs, Path(folder), qos, 50_000, line)  # also the warm-up
            count = max(50_000, int(calibration["rate"] * args.seconds))
            results[qos] = anchor_run(broker, procs, Path(folder), qos, count, line)
    return results


# -- (b) agents -> broker -> node's ingest -> log ------------------------------------------------------


@dataclass
class AgentsStats:
    put: int = 0
    puts: int = 0
    put_seconds: float = 0.0
    cycles: int = 0


async def feed(
    agent: EdgeAgent, outbox: Outbox, readings: list[Reading], put: int, backlog: int, stats: AgentsStats
) -> None:
    """Puts ``readings`` (over and over) into the agent's outbox, ``put`` per transaction, as fast as it
    takes them, pausing while the outbox holds more than ``backlog`` readings."""
    since_check = 0
    while True:
        for start in range(0, len(readings), put):
            chunk = readings[start : start + put]
            began = time.perf_counter()
            await agent.submit(chunk)
            stats.put_seconds += time.perf_counter() - began
            stats.put += len(chunk)
            stats.puts += 1
            since_check += len(chunk)
            if backlog and since_check >= backlog // 4:
                since_check = 0
                await below_backlog(outbox, backlog)
        stats.cycles += 1


async def feed_series(
    agent: EdgeAgent, outbox: Outbox, sensor: SampledSensor, block: int, backlog: int, stats: AgentsStats
) -> None:
    """Submits blocks of ``block`` samples of the terminal's high-rate sensor (one outbox transaction
    each) as fast as the agent takes them, pausing while the outbox holds more than ``backlog``
    readings. One block's values are generated up front and replayed later and later in time, so
    the figure measures the path, not the generator."""
    start_ms = sensor.terminal.start_ms
    at_ms, values = sensor.block(start_ms, block)
    offsets = at_ms - start_ms
    step_ms = sensor.next_start(start_ms, block) - start_ms
    since_check = 0
    while True:
        began = time.perf_counter()
        await agent.submit_series(sensor.metric.index, offsets + start_ms, values)
        stats.put_seconds += time.perf_counter() - began
        stats.put += block
        stats.puts += 1
        start_ms += step_ms
        since_check += block
        if backlog and since_check >= backlog // 4:
            since_check = 0
            await below_backlog(outbox, backlog)


async def below_backlog(outbox: Outbox, backlog: int) -> None:
    """Returns once the outbox holds at most ``backlog`` readings (polled: the outbox has no event for it)."""
    while (await asyncio.to_thread(outbox.stats)).total_readings > backlog:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def role_agents(args: argparse.Namespace) -> None:
    """``args.count`` of a fleet's terminals from ``args.first`` on, each with its agent and outbox."""
    logsetup.configure("warning")
    link = profile(args.profile)
    host, port = args.broker.rsplit(":", 1)
    now_ms = int(time.time() * 1000)
    terminals = fleet(args.fleet, start_ms=now_ms - BACKDATE_MS, profile=args.profile)[
        args.first : args.first + args.count
    ]
    generated = time.perf_counter()
    # Photo chunks (P3 bulk, 1 KiB each) are left out: the figure counts small readings, as the
    # anchor's messages are small (the node stores chunks in base64 pieces, see gateway.edge_ingest).
    samplers = {t.name: SampledSensor(t, rate_hz=args.rate, seed=i) for i, t in enumerate(terminals)}
    backlog = args.backlog or (50 * args.block if args.mode == "series" else 20_000)
    if args.mode == "series":
        readings: list[list[Reading]] = [[] for _ in terminals]
    else:
        readings = [[r for r in rs if not r.blob] for rs in burst(terminals, args.per_terminal)]
        latest = max(r.at_ms for rs in readings for r in rs)
        if latest > now_ms:
            raise SystemExit(f"--per-terminal {args.per_terminal} reaches into the future; use fewer")
    generated = time.perf_counter() - generated
    data = Path(args.data)
    stats = AgentsStats()
    agents: list[EdgeAgent] = []
    outboxes: list[Outbox] = []
    work: list[Coroutine[Any, Any, None]] = []
    try:
        for terminal, own in zip(terminals, readings, strict=True):
            outbox = Outbox.open(data / f"{terminal.name}.outbox.sqlite", max_bytes=16 << 30, p2_ttl_s=30 * 86_400)
            outboxes.append(outbox)
            cn = f"{terminal.region}/{AGENCY}/edge/{terminal.name}"
            agent = EdgeAgent(
                cn=cn,
                outbox=outbox,
                link=link,
                budget=Budget(link, outbox),
                catalogue=samplers[terminal.name].catalogue(),
                connect=connector(host, int(port), cn, None),
                interval_s=60.0,
            )
            agents.append(agent)
            if args.mode == "series":
                work += [agent.run(), feed_series(agent, outbox, samplers[terminal.name], args.block, backlog, stats)]
            else:
                work += [agent.run(), feed(agent, outbox, own, args.put, backlog, stats)]
        print(
            json.dumps({"ready": True, "terminals": [t.name for t in terminals], "generate_s": generated}), flush=True
        )
        await run_until_stopped(work, until_signalled())
    finally:
        for outbox in outboxes:
            outbox.close()
    print(
        json.dumps(
            {
                "put": stats.put,
                "puts": stats.puts,
                "put_seconds": stats.put_seconds,
                "cycles": stats.cycles,
                "batches": sum(a.batches_sent for a in agents),
                "bytes": sum(a.bytes_sent for a in agents),
                "connections": sum(a.connections for a in agents),
            }
        ),
        flush=True,
    )


def start_node(
    procs: Processes, folder: Path, broker: Broker, args: argparse.Namespace
) -> tuple[subprocess.Popen[Any], int, Path]:
    grpc_port, http_port = free_port(), free_port()
    data = folder / "node"
    data.mkdir()
    config = folder / "node.toml"
    config.write_text(
        f'[node]\nid = "bench"\nregion = "410000"\n'
        f'[listen]\ngrpc = "127.0.0.1:{grpc_port}"\nhttp = "127.0.0.1:{http_port}"\n'
        f'[log]\ndata_dir = "{data}"\nfsync = {"false" if args.no_fsync else "true"}\nretention_hours = 1\n'
        f"[limits]\nadmission_workers = {args.workers}\n"
        f'[tls]\ninsecure = true\n[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    log = folder / "node.log"
    with log.open("wb") as sink:
        node = procs.start(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "gateway",
                "--config",
                str(config),
                "--log-level",
                "info",
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    wait_port(http_port, 60, node, "the node")
    wait_for_text(log, "edge_ingest_subscribed", node, "the node", 30)
    return node, http_port, log


METRIC_LINE = re.compile(r"^(yiwang_edge_[a-z_]+_total)(\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


def edge_counters(http_port: int) -> dict[str, float]:
    """The node's yiwang_edge_*_total counters (labels summed)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for name, _labels, value in METRIC_LINE.findall(text):
        out[name] = out.get(name, 0.0) + float(value)
    return out


@dataclass
class Window:
    readings: float
    seconds: float
    per_second: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    agents: list[dict[str, Any]] = field(default_factory=list)
    started_s: float = 0.0
    stored_before: float = 0.0


def run_edge(args: argparse.Namespace) -> Window:
    with tempfile.TemporaryDirectory(prefix="yiwang-edge-bench-") as tmp, Processes() as procs:
        folder = Path(tmp)
        broker = Broker(folder, procs)
        node, http_port, _log = start_node(procs, folder, broker, args)
        workers = children_of(node.pid)
        agents_data = folder / "outboxes"
        agents_data.mkdir()
        shares = [len(range(i, args.terminals, args.agent_procs)) for i in range(args.agent_procs)]
        agent_procs: list[subprocess.Popen[str]] = []
        first = 0
        for share in shares:
            agent_procs.append(
                procs.start(
                    [
                        sys.executable,
                        str(HERE),
                        "--role",
                        "agents",
                        "--broker",
                        f"127.0.0.1:{broker.port}",
                        "--fleet",
                        str(args.terminals),
                        "--first",
                        str(first),
                        "--count",
                        str(share),
                        "--profile",
                        args.profile,
                        "--per-terminal",
                        str(args.per_terminal),
                        "--put",
                        str(args.put),
                        "--mode",
                        args.mode,
                        "--block",
                        str(args.block),
                        "--rate",
                        str(args.rate),
                        "--backlog",
                        str(args.backlog),
                        "--data",
                        str(agents_data),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
            first += share
        for i, proc in enumerate(agent_procs):
            json_line(proc, 300, f"agents process {i}")
        started = time.monotonic()
        deadline = started + 120
        while edge_counters(http_port).get("yiwang_edge_readings_total", 0.0) <= 0:
            if time.monotonic() > deadline:
                raise SystemExit("no readings reached the node's log within 120 s; see the node's log")
            for proc in (node, *agent_procs):
                if proc.poll() is not None:
                    raise SystemExit(f"process {proc.args!r} exited with status {proc.returncode}")
            time.sleep(0.1)
        first_s = time.monotonic() - started
        time.sleep(args.warmup)
        pids = {"mosquitto": broker.proc.pid, "node": node.pid}
        pids |= {f"node worker {i}": pid for i, pid in enumerate(workers)}
        pids |= {f"agents {i}": proc.pid for i, proc in enumerate(agent_procs)}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        before = edge_counters(http_port)
        t0 = time.monotonic()
        samples = [(t0, before.get("yiwang_edge_readings_total", 0.0))]
        while time.monotonic() - t0 < args.seconds:
            time.sleep(min(1.0, max(0.0, t0 + args.seconds - time.monotonic())))
            samples.append((time.monotonic(), edge_counters(http_port).get("yiwang_edge_readings_total", 0.0)))
            for proc in (node, *agent_procs):
                if proc.poll() is not None:
                    raise SystemExit(f"process {proc.args!r} exited with status {proc.returncode} during the window")
        after = edge_counters(http_port)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
        elapsed = samples[-1][0] - t0
        window = Window(
            readings=samples[-1][1] - samples[0][1],
            seconds=elapsed,
            per_second=[(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)],
            cpu=cpu,
            counters={name: after.get(name, 0.0) - before.get(name, 0.0) for name in after},
            started_s=first_s,
            stored_before=samples[0][1],
        )
        for i, proc in enumerate(agent_procs):
            proc.send_signal(signal.SIGTERM)
            window.agents.append(json_line(proc, 60, f"agents process {i}"))
    return window


# -- (c) bytes per reading on a satellite link ---------------------------------------------------------


def mqtt_publish_bytes(topic: str, payload: int, qos: int = 1) -> int:
    """An MQTT 5 PUBLISH: fixed header (type, remaining length), topic, packet id (QoS > 0), no properties."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + payload
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + remaining


def json_reading(terminal: str, metric: Metric, reading: Reading, seq: int) -> bytes:
    """One reading as a terminal without our agent would send it: a small JSON object, compact, UTF-8.

    Positions and alarms keep their coordinates and text, so both forms carry the same information.
    """
    at = dt.datetime.fromtimestamp(reading.at_ms / 1000, dt.UTC)
    body: dict[str, Any] = {
        "terminal": terminal,
        "metric": metric.code,
        "value": reading.value,
        "unit": metric.unit,
        "ts": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "seq": seq,
    }
    if reading.lat is not None and reading.lon is not None:
        body["lat"], body["lon"] = reading.lat, reading.lon
    if reading.text:
        body["text"] = reading.text
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class LinkBytes:
    readings: int = 0
    messages: int = 0
    batch_bytes: int = 0
    json_messages: int = 0
    json_bytes: int = 0
    oversize: int = 0  # batch messages above the link's limit (a single reading too big for it)


def pack_like_the_agent(agent: EdgeAgent, pending: list[Sequenced]) -> Iterator[bytes]:
    """Batches of ``pending`` as the agent makes them: takes its current estimate, packs the largest
    prefix that fits the link (EdgeAgent._pack), and offers the rest again."""
    while pending:
        taken = pending[: agent._estimate]
        payload, chosen, _ = agent._pack(taken, [], historical=False, drops=())
        yield payload
        pending = pending[len(chosen) :]


def satellite_bytes(
    terminals: list[SimulatedTerminal], hours: float, gather_s: float, outbox: Outbox
) -> tuple[LinkBytes, LinkBytes]:
    """Bytes on a satellite link for every terminal's readings over ``hours``: telemetry (no photo
    chunks) and bulk (photo chunks) apart. Readings are gathered ``gather_s`` seconds per batch
    (0: each due time on its own, as they are submitted)."""
    link: LinkProfile = SATELLITE
    telemetry, bulk = LinkBytes(), LinkBytes()
    for terminal in terminals:
        twin = terminal.copy()
        cn = f"{terminal.region}/{AGENCY}/edge/{terminal.name}"
        topic = wire.topic(cn, "live")
        catalogue = {m.index: m for m in terminal.catalogue()}
        agent = EdgeAgent(
            cn=cn,
            outbox=outbox,
            link=link,
            budget=Budget(link, outbox),
            catalogue=terminal.catalogue(),
            connect=connector("127.0.0.1", 1, cn, None),
        )
        readings = twin.advance(terminal.start_ms + int(hours * HOUR_MS))
        groups: dict[tuple[bool, int], list[Sequenced]] = {}
        for seq, reading in enumerate(readings, start=1):
            window = reading.at_ms // int(gather_s * 1000) if gather_s else reading.at_ms
            groups.setdefault((bool(reading.blob), window), []).append(Sequenced(1, seq, reading))
        for (is_bulk, _), items in groups.items():
            into = bulk if is_bulk else telemetry
            items.sort(key=lambda s: (s.reading.priority != 0, s.seq))  # P0 first, as the outbox takes them
            into.readings += len(items)
            for payload in pack_like_the_agent(agent, items):
                into.messages += 1
                into.batch_bytes += mqtt_publish_bytes(topic, len(payload))
                into.oversize += len(payload) > link.max_message_bytes
            for item in items:
                body = json_reading(terminal.name, catalogue[item.reading.metric], item.reading, item.seq)
                if item.reading.blob:  # JSON carries bytes as base64
                    body = body[:-1] + b',"blob":"' + b"x" * (4 * -(-len(item.reading.blob) // 3)) + b'"}'
                into.json_messages += 1
                into.json_bytes += mqtt_publish_bytes(topic, len(body))
    return telemetry, bulk


def run_satellite(args: argparse.Namespace) -> dict[str, tuple[LinkBytes, LinkBytes]]:
    terminals = fleet(args.sat_terminals, start_ms=SCENARIO_START_MS, profile="satellite")
    with tempfile.TemporaryDirectory(prefix="yiwang-edge-sat-") as folder:
        outbox = Outbox.open(Path(folder) / "scratch.sqlite", max_bytes=1 << 20, p2_ttl_s=86_400)
        try:
            return {"gathered": satellite_bytes(terminals, args.sat_hours, SATELLITE.batch_interval_s, outbox)}
        finally:
            outbox.close()


# -- output ---------------------------------------------------------------------------------------------


def anchor_payload() -> bytes:
    """One line for the anchor: the JSON of a rain gauge's first reading (the same form as in (c))."""
    terminal = fleet(1, start_ms=SCENARIO_START_MS)[0]
    reading = terminal.copy().advance(terminal.start_ms + HOUR_MS)[0]
    metric = {m.index: m for m in terminal.catalogue()}[reading.metric]
    return json_reading(terminal.name, metric, reading, 1) + b"\n"


def print_edge(args: argparse.Namespace, window: Window, anchor_rate: float | None) -> None:
    rate = window.readings / window.seconds if window.seconds else 0.0
    spread = f"{min(window.per_second):,.0f}-{max(window.per_second):,.0f}" if window.per_second else "-"
    if args.mode == "series":
        how = f"each sampling at {args.rate:g} Hz, blocks of {args.block} samples per put (one outbox row)"
    else:
        how = f"{args.put} single readings per put"
    print(
        f"(b) edge    {args.terminals} terminals ({args.profile}, {args.agent_procs} agent process(es), "
        f"{how}) -> agents -> mosquitto -> node ingest -> log "
        f"(fsync {'off' if args.no_fsync else 'on'}):\n"
        f"      {rate:>10,.0f} readings/s stored over {window.seconds:.1f} s "
        f"(per second {spread}; first readings after {window.started_s:.1f} s, then {args.warmup:g} s warm-up)"
    )
    if not window.readings:
        print(
            f"    STALLED: nothing stored in the window ({window.stored_before:,.0f} readings stored before it); "
            "see the node's CPU below"
        )
    if anchor_rate:
        print(f"    ratio edge/anchor (QoS 0): {rate / anchor_rate:.2f}x (goal: at least 2x)")
    counters = window.counters
    batches = counters.get("yiwang_edge_batches_total", 0.0)
    print(
        f"    node in the window: {batches:,.0f} batches ({window.readings / batches if batches else 0:,.0f} readings "
        f"each), duplicates {counters.get('yiwang_edge_duplicate_readings_total', 0):,.0f}, "
        f"refused {counters.get('yiwang_edge_refused_total', 0):,.0f}, "
        f"resend requests {counters.get('yiwang_edge_resend_requests_total', 0):,.0f}"
    )
    put = sum(a["put"] for a in window.agents)
    sent = sum(a["batches"] for a in window.agents)
    print(
        f"    agents over the whole run: {put:,} readings put in {sum(a['puts'] for a in window.agents):,} "
        f"transactions, {sent:,} batches sent ({sum(a['bytes'] for a in window.agents) / max(1, sent):,.0f} bytes "
        f"each), {sum(a['connections'] for a in window.agents)} connections"
    )
    total = sum(window.cpu.values())
    parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in window.cpu.items())
    if window.readings:
        per_reading = ", ".join(f"{name} {seconds / window.readings * 1e6:.2f}" for name, seconds in window.cpu.items())
        print(f"    CPU µs per stored reading: {per_reading}; total {total / window.readings * 1e6:.2f}")
    print(
        f"    CPU seconds in the window: {parts}; total {total:.1f} of {window.seconds * (os.cpu_count() or 1):.1f} "
        f"available ({(rate / (total / window.seconds)) if total else 0:,.0f} readings per CPU second)"
    )


def print_satellite(args: argparse.Namespace, results: dict[str, tuple[LinkBytes, LinkBytes]]) -> None:
    print(
        f"(c) satellite {args.sat_terminals} terminals of the mix over {args.sat_hours:g} simulated hours "
        f"(batches <= {SATELLITE.max_message_bytes} bytes, compressed, + MQTT 5 PUBLISH header and topic; "
        "JSON: one compact message per reading):"
    )
    for mode, (telemetry, _bulk) in results.items():
        per = telemetry.batch_bytes / telemetry.readings
        per_json = telemetry.json_bytes / telemetry.readings
        what = f"{mode} {SATELLITE.batch_interval_s:g} s per batch (the profile's batch_interval_s; P0 goes at once)"
        print(
            f"    {what}:\n"
            f"      {telemetry.readings:,} readings in {telemetry.messages:,} messages: {per:,.1f} bytes/reading; "
            f"as JSON {per_json:,.1f} bytes/reading; ratio {per / per_json:.3f} (goal: at most 0.100)"
        )
    _, bulk = results["gathered"]
    if bulk.readings:
        print(
            f"    not in the mix above: {bulk.readings:,} photo chunks (P3, 1 KiB of JPEG each): "
            f"{bulk.batch_bytes / bulk.readings:,.0f} bytes/chunk batched, {bulk.json_bytes / bulk.readings:,.0f} as "
            f"JSON with base64; {bulk.oversize:,} of {bulk.messages:,} messages exceed the "
            f"{SATELLITE.max_message_bytes}-byte limit"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["agents"])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the first stored reading")
    parser.add_argument("--terminals", type=int, default=16)
    parser.add_argument("--profile", default="lan", help="link profile of the terminals in (b)")
    parser.add_argument("--agent-procs", type=int, default=1, help="processes the terminals' agents are spread over")
    parser.add_argument("--per-terminal", type=int, default=20_000, help="readings generated per terminal")
    parser.add_argument("--put", type=int, default=200, help="readings per outbox transaction")
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="pause putting while an outbox holds more (0: 20,000 readings, 50 blocks)",
    )
    parser.add_argument(
        "--mode",
        choices=["series", "readings"],
        default="series",
        help="(b): terminals sample at --rate and submit blocks (series), or put single readings (readings)",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="(b) series: samples per second per terminal")
    parser.add_argument("--block", type=int, default=10_000, help="(b) series: samples per block (one put)")
    parser.add_argument("--workers", type=int, default=-1, help="the node's admission_workers (-1: its default)")
    parser.add_argument("--no-fsync", action="store_true", help="the node's log commits without fsync")
    parser.add_argument("--sat-terminals", type=int, default=20)
    parser.add_argument("--sat-hours", type=float, default=6.0)
    parser.add_argument("--only", default="a,b,c", help="parts to run, e.g. b or a,c")
    # the agents role
    parser.add_argument("--broker", default="")
    parser.add_argument("--fleet", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--data", default="")
    args = parser.parse_args()

    if args.role == "agents":
        asyncio.run(role_agents(args))
        return

    logsetup.configure("warning")
    parts = set(args.only.split(","))
    print(
        f"yiwang edge benchmark: {os.cpu_count()} cores, {args.seconds:g} s windows, "
        f"mosquitto {subprocess.run([MOSQUITTO, '-h'], capture_output=True, text=True, check=False).stdout.split()[2]}",
        flush=True,
    )
    anchor_rate: float | None = None
    if "a" in parts:
        line = anchor_payload()
        anchors = run_anchor(args, line)
        print(f"(a) anchor  mosquitto_pub -l -> mosquitto -> mosquitto_sub -C, {len(line) - 1}-byte JSON readings:")
        for qos, stats in anchors.items():
            lost = f", {stats['sent'] - stats['received']:,} lost" if stats["received"] < stats["sent"] else ""
            print(
                f"      QoS {qos}: {stats['rate']:>10,.0f} messages/s at the subscriber "
                f"({stats['received']:,} in {stats['seconds']:.2f} s{lost})"
            )
        anchor_rate = anchors[0]["rate"]
        sys.stdout.flush()
    if "b" in parts:
        print_edge(args, run_edge(args), anchor_rate)
        sys.stdout.flush()
    if "c" in parts:
        print_satellite(args, run_satellite(args))


if __name__ == "__main__":
    main()
