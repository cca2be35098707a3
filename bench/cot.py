"""CoT benchmark: the node as a TAK server, held against taky, the Python TAK server from PyPI.

Prints, in one run, for each server (``--only yiwang,taky``):
  (1) 50 senders x 50 listeners, the senders writing 413-byte position events as fast as TCP takes
      them for ``--seconds``: the events delivered to the listeners per second (in total, over the
      sending window), and, once the deliveries have stopped, whether every listener received every
      event the senders wrote (goal: every listener every event, at least 5x taky's deliveries/s);
  (2) 10 senders x 10 listeners at 200 events/s in total: p50/p99 from a sender's write to a
      listener's read (goal: p99 under 20 ms);
  (3) connections held: 5,000 TAK clients connect and stay; how many the server still holds after a
      few seconds and its resident memory per connection (goal: 5,000 held).

Each role is its own process: the server (the node as deployed, ``python -m gateway.cli gateway``
with ``[tak] listen`` on loopback, plaintext, fsync on; or taky), the senders (two processes of
half the senders each), the listeners (two processes of half the listeners each) and the
connections (one process). Clients are asyncio protocols on raw TCP. A server is started afresh
for each scenario, so that no backlog or picture of one scenario reaches the next.

Every event is a friendly ground unit (``a-f-G-U-C``) of 413 bytes with realistic detail and a
uid of its own, ``bench-<scenario>-<sender>-<seq>-<send time ns>``: the listeners count the events
of their scenario and take the latency from the uid (both servers send the uid back unchanged).
Senders also read what the servers send them (a TAK client is sender and listener on one
connection) and discard it.

taky is installed from PyPI into its own virtualenv under ``~/.cache/yiwang-bench`` (once) and
run with a config file naming the port, plain TCP; if it cannot be installed or started, its rows
say why and the run goes on. Usage:

    .venv/bin/python bench/cot.py [--seconds 10] [--only yiwang,taky] [--senders 50] [--listeners 50]
                                  [--connections 5000] [--no-fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import throughput

EVENT_BYTES = 413
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yiwang-bench"
PROCESSES = 2  # sender processes, and listener processes, per scenario
BATCH = 8  # events per write of an unthrottled sender
DRAIN_LIMIT_S = 180  # longest wait for the deliveries to end once the senders stop
_HEAD = (
    '<event version="2.0" uid="bench-{tag}-{sender:03d}-{seq:08d}-{ns:019d}" type="a-f-G-U-C" how="m-g" '
    'time="{t}" start="{t}" stale="{stale}"><point lat="34.7466" lon="113.6254" hae="112.0" ce="9.9" '
    'le="9999999.0"/><detail><contact endpoint="*:-1:stcp" callsign="ZZ-FIRE-{sender:03d}"/>'
    '<track speed="1.4" course="87.5"/><remarks>'
)
_TAIL = "</remarks></detail></event>"
_PAD = "patrol Zhongyuan district, sector 3; "


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def _remarks() -> str:
    probe = _HEAD.format(tag="x", sender=0, seq=0, ns=0, t=_stamp(0), stale=_stamp(0)) + _TAIL
    need = EVENT_BYTES - len(probe.encode())
    if need < 0:
        raise AssertionError(f"the event's fixed part is {len(probe)} bytes, over {EVENT_BYTES}")
    return (_PAD * (need // len(_PAD) + 1))[:need]


REMARKS = _remarks()


def events(tag: str, sender: int, first: int, count: int) -> bytes:
    """``count`` position events of ``sender`` from sequence number ``first``, stamped now."""
    ns = time.time_ns()
    now = ns / 1e9
    t, stale = _stamp(now), _stamp(now + 120)
    return b"".join(
        (_HEAD.format(tag=tag, sender=sender, seq=seq, ns=ns, t=t, stale=stale) + REMARKS + _TAIL).encode()
        for seq in range(first, first + count)
    )


def marker(tag: str) -> bytes:
    return f'uid="bench-{tag}-'.encode()


# -- client processes -----------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """A TAK client's connection: counts the events of the scenario it reads, samples their latency."""

    def __init__(self, tag: str, *, sample_all: bool) -> None:
        self.mark = marker(tag)
        self.stamp = re.compile(re.escape(self.mark) + rb"\d{3}-\d{8}-(\d{19})")
        self.sample_all = sample_all
        self.tail = b""
        self.count = 0
        self.in_window = 0
        self.window = (0, 0)
        self.samples: list[float] = []
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.paused = False
        self.resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # closed or reset: either way the client no longer hears the server
        self.lost = True
        self.resume_writing()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buffer = self.tail + data
        found = buffer.count(self.mark)
        self.tail = buffer[1 - len(self.mark) :]
        if not found:
            return
        self.count += found
        if self.window[0] <= now < self.window[1]:
            self.in_window += found
            if self.sample_all:
                self.samples += [(now - int(m.group(1))) / 1e6 for m in self.stamp.finditer(buffer)]
            else:  # under load: the last event of each read
                m = self.stamp.search(buffer, max(0, buffer.rfind(self.mark)))
                if m is not None:
                    self.samples.append((now - int(m.group(1))) / 1e6)


async def connect(port: int, clients: list[Client]) -> None:
    loop = asyncio.get_running_loop()
    for client in clients:
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def say(value: dict[str, Any]) -> None:
    print(json.dumps(value), flush=True)


async def role_listeners(port: int, count: int, tag: str, sample_all: bool) -> None:
    """Listens until told ``report``; ``go T0 T1`` opens the counting window, ``progress`` asks."""
    clients = [Client(tag, sample_all=sample_all) for _ in range(count)]
    await connect(port, clients)
    say({"ready": count})
    commands = await stdin_lines()
    while line := (await commands.readline()).decode().split():
        if line[0] == "go":
            for client in clients:
                client.window = (int(line[1]), int(line[2]))
        elif line[0] == "progress":
            say({"received": sum(c.count for c in clients), "lost": sum(c.lost for c in clients)})
        elif line[0] == "report":
            samples = [s for c in clients for s in c.samples]
            step = max(1, len(samples) // 50_000)
            say({"counts": [c.count for c in clients], "in_window": sum(c.in_window for c in clients),
                 "samples": samples[::step], "lost": sum(c.lost for c in clients)})  # fmt: skip
            return


async def send_until(client: Client, tag: str, sender: int, end_ns: int, rate: float, offset: float) -> int:
    """Writes events until ``end_ns``: as fast as the transport takes them, or at ``rate`` per second."""
    seq = 0
    loop = asyncio.get_running_loop()
    start = time.monotonic() + offset
    while time.time_ns() < end_ns and not client.lost:
        assert client.transport is not None
        if rate:
            await asyncio.sleep(max(0.0, start + seq / rate - time.monotonic()))
            client.transport.write(events(tag, sender, seq, 1))
            seq += 1
        elif client.paused:  # until the server reads on, or the time is up
            client.resumed = loop.create_future()
            await asyncio.wait([client.resumed], timeout=max(0.0, (end_ns - time.time_ns()) / 1e9))
        else:
            client.transport.write(events(tag, sender, seq, BATCH))
            seq += BATCH
            await asyncio.sleep(0)
    return seq


async def role_senders(port: int, first: int, count: int, tag: str, rate: float) -> None:
    """``go T0 T1``: sends from T0 until T1 (POSIX ns), says how many; stays connected, reading, until ``stop``."""
    clients = [Client(tag, sample_all=False) for _ in range(count)]
    await connect(port, clients)
    say({"ready": count})
    commands = await stdin_lines()
    line = (await commands.readline()).decode().split()
    begin, end = int(line[1]), int(line[2])
    await asyncio.sleep(max(0.0, (begin - time.time_ns()) / 1e9))
    sent = await asyncio.gather(
        *(send_until(c, tag, first + i, end, rate, i / count / rate if rate else 0.0) for i, c in enumerate(clients))
    )
    say({"sent": sum(sent), "lost": sum(c.lost for c in clients)})
    await commands.readline()


async def role_connections(port: int, count: int) -> None:
    """Opens ``count`` connections (256 at a time); ``check`` says how many are still open."""
    clients = [Client("none", sample_all=False) for _ in range(count)]
    gate = asyncio.Semaphore(256)
    loop = asyncio.get_running_loop()

    async def one(client: Client) -> bool:
        async with gate:
            try:
                await loop.create_connection(lambda: client, "127.0.0.1", port)
            except OSError:
                return False
            return True

    connected = sum(await asyncio.gather(*(one(c) for c in clients)))
    say({"connected": connected})
    commands = await stdin_lines()
    await commands.readline()
    say({"open": sum(c.transport is not None and not c.lost for c in clients)})
    await commands.readline()


# -- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int


def start_yiwang(folder: Path, fsync: bool) -> Server:
    ports = {"grpc": throughput.free_port(), "http": throughput.free_port(), "tak": throughput.free_port()}
    config = folder / "node.toml"
    config.write_text(
        f'[node]\nid = "bench"\nregion = "410100"\n'
        f'[listen]\ngrpc = "127.0.0.1:{ports["grpc"]}"\nhttp = "127.0.0.1:{ports["http"]}"\n'
        f'[log]\ndata_dir = "{folder / "data"}"\nfsync = {"true" if fsync else "false"}\nretention_hours = 1\n'
        f'[tls]\ninsecure = true\n[tak]\nlisten = "127.0.0.1:{ports["tak"]}"\nmax_connections = 20000\n',
        encoding="utf-8",
    )
    with (folder / "server.log").open("wb") as errors:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config), "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=errors,
        )  # fmt: skip
    throughput.wait_port(ports["tak"], 60, proc, "the node")
    return Server("yiwang", proc, ports["tak"])


def taky_program() -> Path | str:
    """taky's executable in its own virtualenv, installed once from PyPI; or why there is none."""
    venv = CACHE / "taky-venv"
    program = venv / "bin" / "taky"
    if program.exists():
        return program
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"installing taky from PyPI into {venv} ...", flush=True)
    for step in ([sys.executable, "-m", "venv", str(venv)], [str(venv / "bin" / "pip"), "install", "-q", "taky"]):
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(step[:3])}: {exc}"
        if done.returncode != 0:
            return f"{' '.join(step[:3])} exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return program if program.exists() else f"pip installed taky but {program} is missing"


def start_taky(folder: Path) -> Server | str:
    program = taky_program()
    if isinstance(program, str):
        return program
    port = throughput.free_port()
    config = folder / "taky.conf"
    config.write_text(
        f"[taky]\nbind_ip = 127.0.0.1\nroot_dir = {folder}\n[cot_server]\nport = {port}\n"
        f"[dp_server]\nupload_path = {folder / 'dp-user'}\n[ssl]\nenabled = false\n",
        encoding="utf-8",
    )
    with (folder / "server.log").open("wb") as errors:
        proc = subprocess.Popen([str(program), "-c", str(config), "-l", "error"], cwd=folder,
                                stdout=subprocess.DEVNULL, stderr=errors)  # fmt: skip
    try:
        throughput.wait_port(port, 60, proc, "taky")
    except SystemExit as exc:
        return str(exc)
    return Server("taky", proc, port)


# -- the driver -----------------------------------------------------------------------------------


class Role:
    """A client process spoken to by lines: commands in on stdin, JSON out on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, *args: str) -> Role:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=64 << 20,
        )  # fmt: skip
        return cls(proc)

    async def read(self, timeout: float = 600) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"a client process ended without a result (exit {await self.proc.wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def end(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


def split(total: int) -> list[tuple[int, int]]:
    """(first, count) of each of the PROCESSES client processes."""
    size = -(-total // PROCESSES)
    return [(first, min(size, total - first)) for first in range(0, total, size)]


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


@dataclass
class Traffic:
    sent: int
    counts: list[int]
    in_window: int
    samples: list[float]
    lost: int
    drain_s: float


async def traffic(server: Server, tag: str, senders: int, listeners: int, seconds: float, rate: float) -> Traffic:
    """Listeners connected first, then senders for ``seconds``; waits until the deliveries stop."""
    sample_all = "1" if rate else "0"
    listening = [await Role.spawn("--role", "listeners", "--port", str(server.port), "--count", str(count),
                                  "--tag", tag, "--all", sample_all) for _, count in split(listeners)]  # fmt: skip
    sending = [await Role.spawn("--role", "senders", "--port", str(server.port), "--first", str(first),
                                "--count", str(count), "--tag", tag, "--rate", str(rate * count / senders))
               for first, count in split(senders)]  # fmt: skip
    try:
        for role in listening + sending:
            await role.read(120)
        start = time.time_ns() + 200_000_000
        end = start + int(seconds * 1e9)
        for role in listening:
            role.tell(f"go {start} {end}")
        for role in sending:
            role.tell(f"go {start} {end}")
        results = [await role.read(seconds + 600) for role in sending]
        sent = sum(r["sent"] for r in results)
        lost = sum(r["lost"] for r in results)
        stopped, last, last_change = time.monotonic(), -1, time.monotonic()
        while True:  # until every listener has every event, or nothing more arrives for 5 s
            for role in listening:
                role.tell("progress")
            progress = [await role.read(60) for role in listening]
            received = sum(p["received"] for p in progress)
            if received != last:
                last, last_change = received, time.monotonic()
            now = time.monotonic()
            if received >= sent * listeners or now - last_change > 5 or now - stopped > DRAIN_LIMIT_S:
                break
            await asyncio.sleep(0.25)
        drain = last_change - stopped
        for role in listening:
            role.tell("report")
        reports = [await role.read(120) for role in listening]
        return Traffic(
            sent=sent,
            counts=[n for r in reports for n in r["counts"]],
            in_window=sum(r["in_window"] for r in reports),
            samples=[s for r in reports for s in r["samples"]],
            lost=lost + sum(r["lost"] for r in reports),
            drain_s=max(0.0, drain),
        )
    finally:
        for role in sending:
            role.tell("stop")
        for role in listening + sending:
            await role.end()


def last_line(folder: str) -> str:
    """The last line a server wrote on stderr (why it exited)."""
    lines = (Path(folder) / "server.log").read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "nothing on stderr"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def held(server: Server, count: int) -> tuple[int, int, int, int, bool]:
    """Connected, still open after 5 s, RSS before and after (KiB), whether the server still runs."""
    before = rss_kib(server.proc.pid)
    role = await Role.spawn("--role", "connections", "--port", str(server.port), "--count", str(count))
    try:
        connected = (await role.read(600))["connected"]
        await asyncio.sleep(5)
        alive = server.proc.poll() is None
        after = rss_kib(server.proc.pid) if alive else 0
        role.tell("check")
        still = (await role.read(60))["open"]
        role.tell("stop")
        return connected, still, before, after, alive
    finally:
        await role.end()


Start = Callable[[Path], "Server | str"]


async def bench_server(name: str, start: Start, args: argparse.Namespace) -> float | None:
    """Runs the three scenarios against one server; returns its deliveries/s of scenario (1)."""
    rate: float | None = None
    s, m = args.senders, args.listeners
    scenarios = ("flood", "latency", "connections")
    for scenario in scenarios:
        with tempfile.TemporaryDirectory(prefix=f"yiwang-bench-cot-{name}-") as folder:
            server = start(Path(folder))
            if isinstance(server, str):
                print(f"({name}) skipped: {server}", flush=True)
                return None
            try:
                if scenario == "flood":
                    t = await traffic(server, "f", s, m, args.seconds, 0)
                    rate = t.in_window / args.seconds
                    overall = sum(t.counts) / (args.seconds + t.drain_s)
                    complete = sum(n >= t.sent for n in t.counts)
                    p50, p99 = percentile(t.samples, 0.5), percentile(t.samples, 0.99)
                    print(f"({name}) (1) {s} senders x {m} listeners, senders unthrottled, {args.seconds:g} s: "
                          f"{rate:,.0f} deliveries/s to the listeners in total while the senders wrote "
                          f"({overall:,.0f}/s until the last delivery); {t.sent:,} events written; "
                          f"p50/p99 latency {p50:,.1f}/{p99:,.1f} ms (goal: at least 5x taky)", flush=True)  # fmt: skip
                    print(f"({name})     every listener received every event: "
                          f"{'yes' if complete == len(t.counts) else 'NO'} ({complete} of {len(t.counts)} listeners "
                          f"complete; per listener min {min(t.counts):,}, max {max(t.counts):,} of {t.sent:,}; "
                          f"last delivery {t.drain_s:.1f} s after the senders stopped; {t.lost} connections lost) "
                          f"(goal: every listener every event)", flush=True)  # fmt: skip
                elif scenario == "latency":
                    t = await traffic(server, "l", 10, 10, args.seconds, 200)
                    print(f"({name}) (2) 10 senders x 10 listeners at 200 events/s: p50 "
                          f"{percentile(t.samples, 0.5):.1f} ms, p99 {percentile(t.samples, 0.99):.1f} ms over "
                          f"{len(t.samples):,} deliveries, {min(t.counts):,}-{max(t.counts):,} of {t.sent:,} "
                          f"per listener (goal: p99 under 20 ms)", flush=True)  # fmt: skip
                else:
                    connected, still, before, after, alive = await held(server, args.connections)
                    memory = (
                        f"RSS {before / 1024:,.0f} -> {after / 1024:,.0f} MiB, "
                        f"{(after - before) / max(1, still):.1f} KiB per connection"
                        if alive
                        else f"the server exited (status {server.proc.returncode}: {last_line(folder)})"
                    )
                    print(f"({name}) (3) {args.connections:,} TAK clients: {connected:,} connected, {still:,} still "
                          f"held after 5 s; {memory} (goal: 5,000 held)", flush=True)  # fmt: skip
            finally:
                throughput.stop(server.proc)
    return rate


async def drive(args: argparse.Namespace) -> None:
    print(f"yiwang CoT benchmark: {EVENT_BYTES}-byte events, {args.seconds:g} s per scenario, {PROCESSES} sender "
          f"and {PROCESSES} listener processes, fsync {'off' if args.no_fsync else 'on'}", flush=True)  # fmt: skip
    starts: dict[str, Start] = {
        "yiwang": lambda folder: start_yiwang(folder, not args.no_fsync),
        "taky": start_taky,
    }
    rates: dict[str, float | None] = {}
    if "taky" in args.only.split(","):
        print("(freetakserver) not run: FreeTAKServer (2.2.1 on PyPI) starts as a set of services with their own "
              "configuration and database, which this benchmark does not set up", flush=True)  # fmt: skip
    for name in args.only.split(","):
        if name not in starts:
            raise SystemExit(f"--only: unknown server {name!r} (yiwang, taky)")
        rates[name] = await bench_server(name, starts[name], args)
    ours, theirs = rates.get("yiwang"), rates.get("taky")
    if ours is not None and theirs:
        print(f"(1) yiwang/taky deliveries/s: {ours / theirs:.1f}x (goal: at least 5x)", flush=True)
    elif ours is not None and theirs == 0:
        print("(1) yiwang/taky deliveries/s: taky delivered nothing in the window (goal: at least 5x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default="yiwang,taky")
    parser.add_argument("--senders", type=int, default=50)
    parser.add_argument("--listeners", type=int, default=50)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--role", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--tag", default="")
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--all", default="0")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections + 1024)), hard))
    if args.role == "listeners":
        asyncio.run(role_listeners(args.port, args.count, args.tag, args.all == "1"))
    elif args.role == "senders":
        asyncio.run(role_senders(args.port, args.first, args.count, args.tag, args.rate))
    elif args.role == "connections":
        asyncio.run(role_connections(args.port, args.count))
    else:
        asyncio.run(drive(args))


if __name__ == "__main__":
    main()
