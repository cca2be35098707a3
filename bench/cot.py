"""CoT benchmark: the node as a TAK server, held against the Python TAK servers from PyPI (taky, FreeTAKServer).

Prints, in one run, for each server (``--only yiwang,taky,freetakserver``):
  (1) 50 senders x 50 listeners, the senders writing 413-byte position events as fast as TCP takes
      them for ``--seconds``: the events delivered to the listeners per second (in total, over the
      sending window), and, once the deliveries have stopped, whether every listener received every
      event the senders wrote (goal: every listener every event, at least 5x taky's deliveries/s);
  (2) 10 senders x 10 listeners at 200 events/s in total: p50/p99 from a sender's write to a
      listener's read (goal: p99 under 20 ms);
  (3) connections held: 5,000 TAK clients connect and stay; how many the server still holds after a
      few seconds and its resident memory per connection (goal: 5,000 held);
  (4) events split across TCP reads: 5 senders x 5 listeners, each sender writing every event in 4
      pieces 25 ms apart, so that the server's reads end mid-event: how many events each listener
      received of those written (goal: every event arrives);
and then the ratio of the node's deliveries/s in (1) to taky's and to FreeTAKServer's.

Each role is its own process: the server (the node as deployed, ``python -m gateway.cli gateway``
with ``[tak] listen`` on loopback, plaintext, fsync on; or taky; or FreeTAKServer), the senders (two
processes of half the senders each), the listeners (two processes of half the listeners each) and
the connections (one process). Clients are asyncio protocols on raw TCP. A server is started afresh
for each scenario, so that no backlog or picture of one scenario reaches the next.

Every event is a friendly ground unit (``a-f-G-U-C``) of 413 bytes with realistic detail and a
uid of its own, ``bench-<scenario>-<sender>-<seq>-<send time ns>``: the listeners count the events
of their scenario and take the latency from the uid (all three servers send the uid back unchanged).
Senders also read what the servers send them (a TAK client is sender and listener on one
connection) and discard it. The deliveries are awaited until every listener has every event, or
nothing more arrived for 5 s (30 s before a first delivery), or the server's drain limit.

The servers from PyPI are installed into virtualenvs of their own under ``~/.cache/yiwang-bench``
(once); if one cannot be installed or started, its rows say why and the run goes on.

- taky runs with a config file naming the loopback port, plain TCP.
- FreeTAKServer 2.2.1 (Python 3.11 or later, as the bench; installed with opentelemetry-sdk below
  1.28, since its digitalpy fails at start with a newer one) runs as ``python -m
  FreeTAKServer.controllers.services.FTS`` with its FTS_* variables: every port it opens on a free
  loopback port, its databases, certificates and data packages in the scenario's temporary folder,
  no first-start questions. Things it does regardless: its two data-package web servers bind
  0.0.0.0 (on the free ports given them); it makes ``/opt/fts`` (some components keep records there)
  and writes its logs under ``/var/log`` when it may. It registers a client only once the client has
  sent its presence, so for it every client sends a presence event (uid ``hello-...``, not counted)
  on connecting, and the scenarios wait until it has answered each (at most 60 s). Being slow, it
  gets a drain limit of 30 s (not 180 s) and scenario (3) opens 1,000 connections (the row says so).
  Its resident memory is that of all the processes it starts.

Usage:

    .venv/bin/python bench/cot.py [--seconds 10] [--only yiwang,taky,freetakserver] [--senders 50]
                                  [--listeners 50] [--connections 5000] [--no-fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import resource
import signal
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
FIRST_DELIVERY_LIMIT_S = 30  # a slow server may deliver nothing for a while, then a lot
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


def presence(role: str, number: int) -> bytes:
    """The situational-awareness event a TAK client sends first on connecting; its uid is not counted."""
    now = time.time()
    t, stale = _stamp(now), _stamp(now + 120)
    return (
        f'<event version="2.0" uid="hello-{role}-{os.getpid()}-{number:05d}" type="a-f-G-U-C" how="h-e" '
        f'time="{t}" start="{t}" stale="{stale}"><point lat="34.7466" lon="113.6254" hae="112.0" ce="9.9" '
        f'le="9999999.0"/><detail><contact endpoint="*:-1:stcp" callsign="ZZ-{role.upper()}-{number:05d}"/>'
        f'<__group name="Cyan" role="Team Member"/></detail></event>'
    ).encode()


def pieces(data: bytes, count: int) -> list[bytes]:
    """``data`` cut into ``count`` writes of about equal size (the last takes the rest)."""
    if count < 1:
        raise ValueError(f"pieces: count must be at least 1, not {count}")
    count = min(count, len(data))  # no empty writes
    size = len(data) // count
    cuts = [n * size for n in range(count)] + [len(data)]
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


# -- client processes -----------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """A TAK client's connection: counts the events of the scenario it reads, samples their latency."""

    def __init__(self, tag: str, *, sample_all: bool, hello: bytes = b"") -> None:
        self.hello = hello
        self.greeted = False
        self.heard = asyncio.Event()  # the server sent something, or closed the connection
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
        if self.hello:
            transport.write(self.hello)

    def connection_lost(self, exc: Exception | None) -> None:
        del exc  # closed or reset: either way the client no longer hears the server
        self.lost = True
        self.heard.set()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.resumed is not None and not self.resumed.done():
            self.resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.greeted = True
        self.heard.set()
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


GREETING_LIMIT_S = 60  # longest wait for a server that registers clients one by one to answer each


async def connect(port: int, clients: list[Client]) -> int:
    """Connects the clients; when they say hello first, waits until the server has answered each (or the
    limit): such a server only routes events to a client it has registered. Returns how many it answered."""
    loop = asyncio.get_running_loop()
    for client in clients:
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
    if not any(c.hello for c in clients):
        return len(clients)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.heard.wait() for c in clients)), GREETING_LIMIT_S)
    return sum(c.greeted for c in clients)


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def say(value: dict[str, Any]) -> None:
    print(json.dumps(value), flush=True)


async def role_listeners(port: int, count: int, tag: str, sample_all: bool, hello: bool) -> None:
    """Listens until told ``report``; ``go T0 T1`` opens the counting window, ``progress`` asks."""
    clients = [Client(tag, sample_all=sample_all, hello=presence("l", n) if hello else b"") for n in range(count)]
    greeted = await connect(port, clients)
    say({"ready": count, "greeted": greeted})
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


SPLIT_PAUSE_S = 0.025  # between the pieces of one event: long enough that each piece is a read of its own


async def send_until(
    client: Client, tag: str, sender: int, end_ns: int, rate: float, offset: float, writes_per_event: int = 1
) -> int:
    """Writes events until ``end_ns``: as fast as the transport takes them, or at ``rate`` per second, or
    (``writes_per_event`` over 1) each event in that many writes with a pause after each, so that reads end
    mid-event."""
    seq = 0
    loop = asyncio.get_running_loop()
    start = time.monotonic() + offset
    while time.time_ns() < end_ns and not client.lost:
        assert client.transport is not None
        if writes_per_event > 1:
            for piece in pieces(events(tag, sender, seq, 1), writes_per_event):
                if client.transport.is_closing():  # the server dropped the connection mid-event
                    return seq
                client.transport.write(piece)
                await asyncio.sleep(SPLIT_PAUSE_S)
            seq += 1
        elif rate:
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


async def role_senders(
    port: int, first: int, count: int, tag: str, rate: float, hello: bool, writes_per_event: int
) -> None:
    """``go T0 T1``: sends from T0 until T1 (POSIX ns), says how many; stays connected, reading, until ``stop``."""
    clients = [Client(tag, sample_all=False, hello=presence("s", first + n) if hello else b"") for n in range(count)]
    greeted = await connect(port, clients)
    say({"ready": count, "greeted": greeted})
    commands = await stdin_lines()
    line = (await commands.readline()).decode().split()
    begin, end = int(line[1]), int(line[2])
    await asyncio.sleep(max(0.0, (begin - time.time_ns()) / 1e9))
    sent = await asyncio.gather(
        *(
            send_until(c, tag, first + i, end, rate, i / count / rate if rate else 0.0, writes_per_event)
            for i, c in enumerate(clients)
        )
    )
    say({"sent": sum(sent), "lost": sum(c.lost for c in clients)})
    await commands.readline()


async def role_connections(port: int, count: int, hello: bool) -> None:
    """Opens ``count`` connections (256 at a time); ``check`` says how many are still open."""
    clients = [Client("none", sample_all=False, hello=presence("c", n) if hello else b"") for n in range(count)]
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
    say(
        {
            "open": sum(c.transport is not None and not c.lost for c in clients),
            "answered": sum(c.greeted for c in clients),
        }
    )
    await commands.readline()


# -- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    hello: bool = False  # its clients must send their presence first, or it does not route to them
    drain_limit_s: float = DRAIN_LIMIT_S
    max_connections: int = 0  # scenario (3) opens at most this many (0: as many as asked)
    group: bool = False  # it starts processes of its own: stop its whole process group


def stop_server(server: Server) -> None:
    if not server.group:
        throughput.stop(server.proc)
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(server.proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            server.proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the children may outlive the parent: end them too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
        break


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


def install(venv: Path, what: str, requirements: list[str]) -> str:
    """Installs ``requirements`` from PyPI into ``venv`` (made if missing); returns why not, or ""."""
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"installing {what} from PyPI into {venv} ...", flush=True)
    steps = [[str(venv / "bin" / "pip"), "install", "-q", *requirements]]
    if not (venv / "bin" / "pip").exists():
        steps.insert(0, [sys.executable, "-m", "venv", str(venv)])
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(step[:3])}: {exc}"
        if done.returncode != 0:
            return f"{' '.join(step[:3])} exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return ""


def taky_program() -> Path | str:
    """taky's executable in its own virtualenv, installed once from PyPI; or why there is none."""
    venv = CACHE / "taky-venv"
    program = venv / "bin" / "taky"
    if program.exists():
        return program
    failed = install(venv, "taky", ["taky"])
    if failed:
        return failed
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


# FreeTAKServer 2.2.1 needs Python 3.11 or later (its PyPI metadata: >=3.11,<4.0). It names
# opentelemetry-sdk without a bound, and its digitalpy (0.3.13.7) sets ``span_exporter`` on the batch
# span processor, which opentelemetry-sdk made read-only in 1.28: with a newer SDK its CoT services die
# at start. Hence the bound.
FTS_REQUIREMENTS = ["FreeTAKServer==2.2.1", "opentelemetry-sdk<1.28"]
FTS_START_LIMIT_S = 180  # it starts a dozen processes and builds its databases first
FTS_DRAIN_LIMIT_S = 30  # it delivers tens of events per second: waiting longer shows nothing new
FTS_CONNECTIONS = 1000  # it registers clients one by one, each in tens of milliseconds
FTS_PORTS = [  # every port it opens that its configuration names, each given a free loopback port
    "FTS_COT_PORT", "FTS_SSLCOT_PORT", "FTS_API_PORT", "FTS_FED_PORT", "FTS_ROUTING_PROXY_SUBSCRIBE_PORT",
    "FTS_ROUTING_PROXY_PUBLISHER_PORT", "FTS_ROUTING_PROXY_SERVER_PORT", "FTS_INTEGRATION_MANAGER_PULLER_PORT",
    "FTS_INTEGRATION_MANAGER_PUBLISHER_PORT", "DataPackagePort", "SSLDataPackagePort",
]  # fmt: skip


def fts_python() -> Path | str:
    """The Python of FreeTAKServer's own virtualenv, installed once from PyPI; or why there is none."""
    venv = CACHE / "fts-venv"
    python, stamp = venv / "bin" / "python", venv / "yiwang-bench-requirements.txt"
    wanted = "\n".join(FTS_REQUIREMENTS)
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return python
    failed = install(venv, "FreeTAKServer", FTS_REQUIREMENTS)
    if failed:
        return failed
    stamp.write_text(wanted, encoding="utf-8")
    return python


def fts_environment(folder: Path, ports: dict[str, int]) -> dict[str, str]:
    """FreeTAKServer's settings (it reads FTS_* variables): loopback, free ports, its data in ``folder``."""
    data, certs = folder / "fts", folder / "fts" / "certs"
    certs.mkdir(parents=True)
    env = {name: str(port) for name, port in ports.items() if name.startswith("FTS_")}
    env |= {
        "FTS_FIRST_START": "false",  # else it asks its setup questions on the terminal
        "FTS_CONFIG_PATH": str(data / "FTSConfig.yaml"),  # absent: the defaults and these variables rule
        "FTS_PERSISTENCE_PATH": str(data),
        "FTS_DB_PATH": str(data / "FTSDataBase.db"),
        "FTS_API_ADDRESS": "127.0.0.1",
        "FTS_DP_ADDRESS": "127.0.0.1",
        "FTS_USER_ADDRESS": "127.0.0.1",
        "FTS_CERTS_PATH": str(certs),
        "FTS_CLIENT_PACKAGES_PATH": str(certs / "clientPackages"),
        "FTS_CRLDIR": str(certs / "FTS_CRL.json"),
        "FTS_EXCHECK_PATH": str(data / "ExCheck"),
        "FTS_EXCHECK_TEMPLATE_PATH": str(data / "ExCheck" / "template"),
        "FTS_EXCHECK_CHECKLIST_PATH": str(data / "ExCheck" / "checklist"),
        "FTS_DATAPACKAGE_PATH": str(data / "datapackages"),
        "FTS_LOGFILE_PATH": str(data / "logs"),
        "FTS_LOG_LEVEL": "error",
    }
    for name, file in (("SERVER_KEYDIR", "server.key"), ("SERVER_PEMDIR", "server.pem"),
                       ("TESTCLIENT_PEMDIR", "server.pem"), ("TESTCLIENT_KEYDIR", "server.key"),
                       ("UNENCRYPTED_KEYDIR", "server.key.unencrypted"), ("SERVER_P12DIR", "server.p12"),
                       ("CADIR", "ca.pem"), ("CAKEYDIR", "ca.key"), ("FEDERATION_CERTDIR", "server.pem"),
                       ("FEDERATION_KEYDIR", "server.key")):  # fmt: skip
        env[f"FTS_{name}"] = str(certs / file)
    return env


def start_freetakserver(folder: Path) -> Server | str:
    python = fts_python()
    if isinstance(python, str):
        return python
    ports = {name: throughput.free_port() for name in FTS_PORTS}
    listen = {"CoT": "FTS_COT_PORT", "SSLCoT": "FTS_SSLCOT_PORT", "DataPackage": "DataPackagePort",
              "SSLDataPackage": "SSLDataPackagePort", "RestAPI": "FTS_API_PORT"}  # fmt: skip
    command = [str(python), "-m", "FreeTAKServer.controllers.services.FTS", "-AutoStart", "True"]
    for option, port in listen.items():
        command += [f"-{option}IP", "127.0.0.1", f"-{option}Port", str(ports[port])]
    with (folder / "server.log").open("wb") as errors:
        proc = subprocess.Popen(command, cwd=folder, env=os.environ | fts_environment(folder, ports),
                                stdout=errors, stderr=errors, start_new_session=True)  # fmt: skip
    server = Server("freetakserver", proc, ports["FTS_COT_PORT"], hello=True, drain_limit_s=FTS_DRAIN_LIMIT_S,
                    max_connections=FTS_CONNECTIONS, group=True)  # fmt: skip
    try:
        throughput.wait_port(server.port, FTS_START_LIMIT_S, proc, "FreeTAKServer")
    except SystemExit as exc:
        stop_server(server)
        return f"{exc} ({last_line(str(folder))})"
    return server


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
    drain_s: float  # from the senders' end to the last delivery
    waited_s: float  # from the senders' end to the end of the wait for deliveries


async def traffic(
    server: Server, tag: str, senders: int, listeners: int, seconds: float, rate: float, writes_per_event: int = 1
) -> Traffic:
    """Listeners connected first, then senders for ``seconds``; waits until the deliveries stop."""
    sample_all = "1" if rate else "0"
    hello = "1" if server.hello else "0"
    listening = [await Role.spawn("--role", "listeners", "--port", str(server.port), "--count", str(count),
                                  "--tag", tag, "--all", sample_all, "--hello", hello)
                 for _, count in split(listeners)]  # fmt: skip
    sending = [await Role.spawn("--role", "senders", "--port", str(server.port), "--first", str(first),
                                "--count", str(count), "--tag", tag, "--rate", str(rate * count / senders),
                                "--hello", hello, "--split", str(writes_per_event))
               for first, count in split(senders)]  # fmt: skip
    try:
        ready = [await role.read(GREETING_LIMIT_S + 120) for role in listening + sending]
        greeted = sum(r["greeted"] for r in ready)
        if greeted < senders + listeners:
            print(f"({server.name})     only {greeted} of {senders + listeners} clients were answered by the server "
                  f"within {GREETING_LIMIT_S} s of saying hello; going on", flush=True)  # fmt: skip
        start = time.time_ns() + 200_000_000
        end = start + int(seconds * 1e9)
        for role in listening:
            role.tell(f"go {start} {end}")
        for role in sending:
            role.tell(f"go {start} {end}")
        results = [await role.read(seconds + 600) for role in sending]
        sent = sum(r["sent"] for r in results)
        lost = sum(r["lost"] for r in results)
        stopped = last_change = time.monotonic()
        last = 0
        while True:  # until every listener has every event, or nothing more arrives for 5 s after a first delivery
            for role in listening:
                role.tell("progress")
            progress = [await role.read(60) for role in listening]
            received = sum(p["received"] for p in progress)
            if received != last:
                last, last_change = received, time.monotonic()
            now = time.monotonic()
            idle = now - last_change > (5 if received else FIRST_DELIVERY_LIMIT_S)
            if received >= sent * listeners or idle or now - stopped > server.drain_limit_s:
                break
            await asyncio.sleep(0.25)
        drain, waited = last_change - stopped, time.monotonic() - stopped
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
            waited_s=waited,
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


def pss_kib(pid: int) -> int:
    """The proportional set size: resident memory with the pages shared among processes split among them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0  # a zombie has no memory left


def server_rss_kib(server: Server) -> int:
    """The server's resident memory; when it starts processes of its own, the PSS of all of its group."""
    if not server.group:
        return rss_kib(server.proc.pid)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == server.proc.pid:
                total += pss_kib(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return total


@dataclass
class Held:
    connected: int
    still: int  # open after 5 s
    answered: int  # connections the server has sent something on
    before_kib: int  # the server's RSS before the connections, and after
    after_kib: int
    alive: bool  # whether the server still runs


async def held(server: Server, count: int) -> Held:
    before = server_rss_kib(server)
    role = await Role.spawn("--role", "connections", "--port", str(server.port), "--count", str(count),
                            "--hello", "1" if server.hello else "0")  # fmt: skip
    try:
        connected = (await role.read(600))["connected"]
        await asyncio.sleep(5)
        alive = server.proc.poll() is None
        after = server_rss_kib(server) if alive else 0
        role.tell("check")
        check = await role.read(60)
        role.tell("stop")
        return Held(connected, check["open"], check["answered"], before, after, alive)
    finally:
        await role.end()


Start = Callable[[Path], "Server | str"]


SPLIT_CLIENTS = 5  # senders, and listeners, of scenario (4)
SPLIT_WRITES = 4  # writes per event in scenario (4)


async def scenario(name: str, number: int, server: Server, args: argparse.Namespace, folder: str) -> float | None:
    """Runs scenario ``number`` against ``server`` and prints its rows; (1) returns its deliveries/s."""
    s, m = args.senders, args.listeners
    if number == 1:
        t = await traffic(server, "f", s, m, args.seconds, 0)
        rate = t.in_window / float(args.seconds)
        overall = sum(t.counts) / (args.seconds + t.drain_s)
        complete = sum(n >= t.sent for n in t.counts)
        p50, p99 = percentile(t.samples, 0.5), percentile(t.samples, 0.99)
        note = drained(server, t)
        ending = (
            note[2:]
            if t.sent and not sum(t.counts)
            else f"last delivery {t.drain_s:.1f} s after the senders stopped{note}"
        )
        print(f"({name}) (1) {s} senders x {m} listeners, senders unthrottled, {args.seconds:g} s: "
              f"{rate:,.0f} deliveries/s to the listeners in total while the senders wrote "
              f"({overall:,.0f}/s until the last delivery); {t.sent:,} events written; "
              f"p50/p99 latency {p50:,.1f}/{p99:,.1f} ms (goal: at least 5x taky)", flush=True)  # fmt: skip
        print(f"({name})     every listener received every event: "
              f"{'yes' if complete == len(t.counts) else 'NO'} ({complete} of {len(t.counts)} listeners "
              f"complete; per listener min {min(t.counts):,}, max {max(t.counts):,} of {t.sent:,}; "
              f"{ending}; {t.lost} connections lost) (goal: every listener every event)", flush=True)  # fmt: skip
        return rate
    if number == 2:
        t = await traffic(server, "l", 10, 10, args.seconds, 200)
        if not t.samples:
            print(f"({name}) (2) 10 senders x 10 listeners at 200 events/s: delivered nothing within the drain limit "
                  f"({t.sent:,} events written, {t.lost} connections lost)", flush=True)  # fmt: skip
            return None
        print(f"({name}) (2) 10 senders x 10 listeners at 200 events/s: p50 "
              f"{percentile(t.samples, 0.5):.1f} ms, p99 {percentile(t.samples, 0.99):.1f} ms over "
              f"{len(t.samples):,} deliveries, {min(t.counts):,}-{max(t.counts):,} of {t.sent:,} "
              f"per listener{drained(server, t)} (goal: p99 under 20 ms)", flush=True)  # fmt: skip
        return None
    if number == 3:
        count = args.connections
        if server.max_connections and count > server.max_connections:
            count = server.max_connections
            print(f"({name}) (3) opening {count:,} connections, not {args.connections:,}: {name} registers "
                  f"clients one at a time", flush=True)  # fmt: skip
        h = await held(server, count)
        memory = (
            f"{'PSS of all its processes' if server.group else 'RSS'} "
            f"{h.before_kib / 1024:,.0f} -> {h.after_kib / 1024:,.0f} MiB, "
            f"{(h.after_kib - h.before_kib) / max(1, h.still):.1f} KiB per connection"
            if h.alive
            else f"the server exited (status {server.proc.returncode}: {last_line(folder)})"
        )
        answered = f" ({h.answered:,} answered the clients' hello)" if server.hello else ""
        print(f"({name}) (3) {count:,} TAK clients: {h.connected:,} connected, {h.still:,} still "
              f"held after 5 s{answered}; {memory} (goal: 5,000 held)", flush=True)  # fmt: skip
        return None
    n, w = SPLIT_CLIENTS, SPLIT_WRITES
    t = await traffic(server, "s", n, n, args.seconds, 0, writes_per_event=w)
    complete = sum(c >= t.sent for c in t.counts)
    every = "yes" if t.sent and complete == len(t.counts) else "NO"
    print(f"({name}) (4) events split across TCP reads, {n} senders x {n} listeners, each event in {w} writes "
          f"{SPLIT_PAUSE_S * 1000:.0f} ms apart, {args.seconds:g} s: {t.sent:,} events written whole, "
          f"{sum(t.counts):,} of {t.sent * n:,} deliveries; every listener received every event: {every} "
          f"(per listener min {min(t.counts):,}, max {max(t.counts):,}{drained(server, t)}; {t.lost} connections "
          f"closed by the server) (goal: every event arrives)", flush=True)  # fmt: skip
    return None


def drained(server: Server, t: Traffic) -> str:
    """A note when nothing was delivered, or the deliveries were still going on as the drain limit ended the wait."""
    if t.sent and not sum(t.counts):
        return f", delivered nothing within {t.waited_s:.0f} s after the senders stopped"
    if sum(t.counts) < t.sent * len(t.counts) and t.drain_s >= server.drain_limit_s - 5:
        return f", still delivering when the {server.drain_limit_s:g} s drain limit ended the wait"
    return ""


async def bench_server(name: str, start: Start, args: argparse.Namespace) -> float | None:
    """Runs the four scenarios against one server, each on a fresh server; returns (1)'s deliveries/s."""
    rate: float | None = None
    for number in (1, 2, 3, 4):
        with tempfile.TemporaryDirectory(prefix=f"yiwang-bench-cot-{name}-") as folder:
            begun = time.monotonic()
            server = start(Path(folder))
            if isinstance(server, str):
                print(f"({name}) skipped: {server}", flush=True)
                return None
            if server.group:
                print(f"({name})     started in {time.monotonic() - begun:.0f} s", flush=True)
            try:
                result = await scenario(name, number, server, args, folder)
                if number == 1:
                    rate = result
            except (RuntimeError, TimeoutError, OSError) as exc:  # one scenario failing must not end the run
                print(f"({name}) ({number}) failed: {type(exc).__name__}: {exc}", flush=True)
            finally:
                stop_server(server)
    return rate


def ratio(rates: dict[str, float | None], theirs: str) -> None:
    ours, other = rates.get("yiwang"), rates.get(theirs)
    if ours is None or other is None:
        return
    if other:
        print(f"(1) yiwang/{theirs} deliveries/s: {ours / other:,.1f}x (goal: at least 5x taky)", flush=True)
    else:
        print(f"(1) yiwang/{theirs} deliveries/s: {theirs} delivered nothing in the window", flush=True)


async def drive(args: argparse.Namespace) -> None:
    print(f"yiwang CoT benchmark: {EVENT_BYTES}-byte events, {args.seconds:g} s per scenario, {PROCESSES} sender "
          f"and {PROCESSES} listener processes, fsync {'off' if args.no_fsync else 'on'}", flush=True)  # fmt: skip
    starts: dict[str, Start] = {
        "yiwang": lambda folder: start_yiwang(folder, not args.no_fsync),
        "taky": start_taky,
        "freetakserver": start_freetakserver,
    }
    names = args.only.split(",")
    for name in names:
        if name not in starts:
            raise SystemExit(f"--only: unknown server {name!r} (yiwang, taky, freetakserver)")
    rates = {name: await bench_server(name, starts[name], args) for name in names}
    ratio(rates, "taky")
    ratio(rates, "freetakserver")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default="yiwang,taky,freetakserver")
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
    parser.add_argument("--hello", default="0")
    parser.add_argument("--split", type=int, default=1)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.connections + 1024)), hard))
    if args.role == "listeners":
        asyncio.run(role_listeners(args.port, args.count, args.tag, args.all == "1", args.hello == "1"))
    elif args.role == "senders":
        asyncio.run(role_senders(args.port, args.first, args.count, args.tag, args.rate, args.hello == "1", args.split))
    elif args.role == "connections":
        asyncio.run(role_connections(args.port, args.count, args.hello == "1"))
    else:
        asyncio.run(drive(args))


if __name__ == "__main__":
    main()
