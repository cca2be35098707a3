"""Station benchmark: HJ 212 and SL 651 stations reporting to a node over TCP.

Prints, in one run, for each protocol:
  (a) connections held: N stations connect and each sends one upload (answered once durable), then
      stay connected and silent; the resident memory of the node and its processes (station workers,
      admission) before and after, per connection and by process
      (goal: 5,000 stations at once, under 50 KiB each); how many connections each process holds
      (counted from /proc: with workers, the split between them); the CPU each process spent per
      connection (for the node: accepting and handing the connection to a worker, and the append);
  (b) ingest: M stations send uploads as fast as their acknowledgements come back (a window of W
      uploads each), every upload a distinct reading; acknowledgements/s over the window, each one
      sent by the node only after the upload is in its durable log (fsync on; goal: at least
      20,000 packets/s).

The node runs as deployed (``python -m gateway.cli gateway``, plaintext on loopback) with a registry
of the simulated stations and its station servers in ``--processes`` workers (0: on its event
loop; without the flag, the node's default); the stations run in another process (``--role
stations``). Each station's uploads and the answers they must get are built before the clock
starts, so the stations' process spends its time on the network, not on making packets; yet every
answer is checked: an HJ 212 9014 must equal, byte for byte, the one built for its upload (QN, PW,
MN, Flag and CRC), and an SL 651 confirmation must carry the station, function code and serial of
its report (compared as bytes), end in ESC and have a right CRC. A wrong answer stops the run.
(b) also prints the CPU each process spent per acknowledged upload (node, its worker processes,
the stations) and how many of the sending stations each process serves. Usage:

    .venv/bin/python bench/stations.py [--connections 5000] [--stations 200] [--window 8]
                                       [--seconds 10] [--only hj212,sl651] [--no-fsync]
                                       [--processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.crc16 import crc16_modbus
from adapters.hj212.crc import crc_text
from adapters.sl651.frame import ESC, ETX, STX, Header, encode_frame
from bench import throughput

PASSWORD_HJ212 = "bench123"
PASSWORD_SL651 = "1234"
BASE = time.time() - 3 * 86400  # readings of three days ago: never ahead of the node's clock
BEIJING = 8 * 3600


def hj212_id(station: int) -> str:
    return f"4101050{station:07d}"


def sl651_id(station: int) -> str:
    return f"00{station:08d}"


def hj212_upload(station: int, n: int) -> bytes:
    """Real-time data (2011) of minute ``n`` after BASE, asking for the data acknowledgement."""
    at = time.gmtime(BASE + BEIJING + 60 * n)
    stamp = time.strftime("%Y%m%d%H%M%S", at)
    segment = (
        f"QN={stamp}{n % 1000:03d};ST=22;CN=2011;PW={PASSWORD_HJ212};MN={hj212_id(station)};Flag=5;"
        f"CP=&&DataTime={stamp};a34004-Rtd={20 + n % 50}.5,a34004-Flag=N;a34002-Rtd={40 + n % 70}.0,a34002-Flag=N&&"
    ).encode()
    return b"##" + f"{len(segment):04d}".encode() + segment + crc_text(segment) + b"\r\n"


def sl651_upload(station: int, n: int) -> bytes:
    """A timed report (32H), serial ``n``, water level at minute ``n`` after BASE."""
    at = time.gmtime(BASE + BEIJING + 60 * n)
    sent, observed = time.strftime("%y%m%d%H%M%S", at), time.strftime("%y%m%d%H%M", at)
    level = f"{1000 + n % 9000:08d}"
    body = bytes.fromhex(f"{n % 65536:04X}{sent}F1F1{sl651_id(station)}48F0F0{observed}3923{level}")
    header = Header("hex", up=True, centre=0x01, station=sl651_id(station), password=PASSWORD_SL651,
                    function=0x32, packet=None)  # fmt: skip
    return encode_frame(header, body, ETX)


def hj212_answer(station: int, n: int) -> bytes:
    """The 9014 the data centre must send for ``hj212_upload(station, n)``, written out here on its own."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(BASE + BEIJING + 60 * n))
    segment = f"QN={stamp}{n % 1000:03d};ST=91;CN=9014;PW={PASSWORD_HJ212};MN={hj212_id(station)};Flag=4;CP=&&&&"
    data = segment.encode()
    return b"##" + f"{len(data):04d}".encode() + data + crc_text(data) + b"\r\n"


SL651_ANSWER_HEAD = 16  # 7E7E, station, centre, password, function, direction+length, STX, serial


def sl651_answer_head(station: int, n: int) -> bytes:
    """The first bytes of the confirmation of ``sl651_upload(station, n)``: down from the centre to the
    station, function 32H, 8 bytes of body (serial and the centre's time), STX, then the serial."""
    return (
        bytes.fromhex(f"7E7E{sl651_id(station)}01{PASSWORD_SL651}32")
        + (0x8 << 12 | 8).to_bytes(2, "big")
        + bytes([STX])
        + (n % 65536).to_bytes(2, "big")
    )


UPLOADS: dict[str, Callable[[int, int], bytes]] = {"hj212": hj212_upload, "sl651": sl651_upload}
ANSWERS: dict[str, Callable[[int, int], bytes]] = {"hj212": hj212_answer, "sl651": sl651_answer_head}


class WrongAnswerError(Exception):
    """The node sent a station an answer that is not the one its upload must get."""


def take_answers(protocol: str, data: bytearray, expected: list[bytes], at: int) -> int:
    """Checks and takes the complete answers off the front of ``data``, the first of them the answer to
    upload ``at``; returns how many. Raises WrongAnswerError on the first wrong one."""
    count = 0
    if protocol == "hj212":
        while (end := data.find(b"\r\n")) >= 0:
            if data[: end + 2] != expected[at + count]:
                raise WrongAnswerError(f"upload {at + count}: {bytes(data[: end + 2])!r}, not {expected[at + count]!r}")
            del data[: end + 2]
            count += 1
        return count
    while len(data) >= 13:
        size = 17 + (((data[11] & 0x0F) << 8) | data[12])
        if len(data) < size:
            break
        head = expected[at + count]
        if (
            data[:SL651_ANSWER_HEAD] != head
            or data[size - 3] != ESC
            or crc16_modbus(memoryview(data)[: size - 2]) != int.from_bytes(data[size - 2 : size], "big")
        ):
            raise WrongAnswerError(f"report {at + count}: {bytes(data[:size]).hex()}, expected to start {head.hex()}")
        del data[:size]
        count += 1
    return count


# -- the stations' process ----------------------------------------------------------------------


class Station(asyncio.Protocol):
    def __init__(
        self, protocol: str, uploads: list[bytes], answers: list[bytes], window: int, counts: list[int]
    ) -> None:
        self.protocol = protocol
        self.uploads = uploads
        self.answers = answers  # what each upload must get back (SL 651: the answer's first bytes)
        self.window = window
        self.counts = counts  # [acknowledged so far]
        self.sent = 0
        self.acknowledged = 0
        self.wrong: WrongAnswerError | None = None
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.first = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.send(self.window)

    def send(self, count: int) -> None:
        assert self.transport is not None
        end = min(self.sent + count, len(self.uploads))
        if end > self.sent:
            self.transport.write(b"".join(self.uploads[self.sent : end]))
            self.sent = end

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            acked = take_answers(self.protocol, self.buffer, self.answers, self.acknowledged)
        except WrongAnswerError as exc:
            self.wrong = exc
            assert self.transport is not None
            self.transport.close()
            if not self.first.done():
                self.first.set_exception(exc)
            return
        self.acknowledged += acked
        if acked:
            self.counts[0] += acked
            if not self.first.done():
                self.first.set_result(None)
            self.send(acked)


async def role_stations(protocol: str, port: int, first: int, count: int, window: int, per: int) -> None:
    """Connects ``count`` stations; with ``per`` > 1 they send as fast as acknowledged, else once."""
    upload, answer = UPLOADS[protocol], ANSWERS[protocol]
    loop = asyncio.get_running_loop()
    counts = [0]
    stations = []
    for i in range(first, first + count):
        uploads = [upload(i, n) for n in range(per)]
        answers = [answer(i, n) for n in range(per)]
        stations.append(Station(protocol, uploads, answers, window if per > 1 else 1, counts))
    for station in stations:
        await loop.create_connection(lambda s=station: s, "127.0.0.1", port)  # type: ignore[misc]
    await asyncio.gather(*(s.first for s in stations))
    print(json.dumps({"connected": count}), flush=True)
    if per == 1:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # held until told
        return
    start_count, start, start_cpu = counts[0], time.monotonic(), time.process_time()
    seconds = float(os.environ.get("YIWANG_BENCH_SECONDS", "10"))
    await asyncio.sleep(seconds)
    done, elapsed, cpu = counts[0] - start_count, time.monotonic() - start, time.process_time() - start_cpu
    wrong = [str(s.wrong) for s in stations if s.wrong is not None]
    print(json.dumps({"acknowledged": done, "seconds": elapsed, "cpu_s": cpu, "wrong": wrong[:3]}), flush=True)


# -- the driver -----------------------------------------------------------------------------------


def family(pid: int) -> list[int]:
    """``pid`` and its descendants (the node's station workers and admission processes)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            with contextlib.suppress(FileNotFoundError):
                out += family(int(child))
    return out


def rss_by_process(pid: int) -> dict[int, int]:
    """Resident memory (KiB) of ``pid`` and of each of its descendants."""
    out = {}
    for member in family(pid):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[member] = int(line.split()[1])
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants."""
    return sum(rss_by_process(pid).values())


def cpu_s(pid: int) -> float:
    """User and system CPU seconds ``pid`` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of_family(pid: int) -> dict[int, float]:
    out = {}
    for member in family(pid):
        with contextlib.suppress(FileNotFoundError):
            out[member] = cpu_s(member)
    return out


def write_node(folder: Path, stations: int, fsync: bool, processes: int | None) -> tuple[Path, dict[str, int]]:
    ports = {"grpc": throughput.free_port(), "http": throughput.free_port()}
    ports |= {name: throughput.free_port() for name in UPLOADS}
    lines = []
    for i in range(stations):
        for protocol, ident, password, agency in (
            ("hj212", hj212_id(i), PASSWORD_HJ212, "ecology_environment"),
            ("sl651", sl651_id(i), PASSWORD_SL651, "water"),
        ):
            lines += [
                "[[station]]",
                f'protocol = "{protocol}"',
                f'id = "{ident}"',
                f'password = "{password}"',
                'region = "410105"',
                f'agency = "{agency}"',
            ]
    (folder / "stations.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = folder / "node.toml"
    config.write_text(
        f'[node]\nid = "bench"\nregion = "410100"\n'
        f'[listen]\ngrpc = "127.0.0.1:{ports["grpc"]}"\nhttp = "127.0.0.1:{ports["http"]}"\n'
        f'[log]\ndata_dir = "{folder / "data"}"\nfsync = {"true" if fsync else "false"}\nretention_hours = 1\n'
        f"[tls]\ninsecure = true\n"
        f'[stations]\nregistry = "{folder / "stations.toml"}"\nmax_connections = 20000\n'
        + (f"processes = {processes}\n" if processes is not None else "")
        + f'listen = {{ hj212 = "127.0.0.1:{ports["hj212"]}", sl651 = "127.0.0.1:{ports["sl651"]}" }}\n',
        encoding="utf-8",
    )
    return config, ports


def spawn_stations(
    protocol: str, port: int, first: int, count: int, window: int, per: int, seconds: float
) -> subprocess.Popen[str]:
    env = {**os.environ, "YIWANG_BENCH_SECONDS": str(seconds)}
    args = ["--role", "stations", "--protocol", protocol, "--port", str(port), "--first", str(first),
            "--count", str(count), "--window", str(window), "--per", str(per)]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def read_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, float]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line or time.monotonic() > deadline:
        raise RuntimeError(f"the stations' process ended without a result (exit {proc.poll()})")
    return json.loads(line)  # type: ignore[no-any-return]


def finish(stations: subprocess.Popen[str]) -> None:
    """Tells a process of stations that waits with its connections open to end, and waits for it."""
    assert stations.stdin is not None
    stations.stdin.write("\n")
    stations.stdin.close()
    stations.wait(60)


def connections_by_process(node: int, port: int) -> dict[int, int]:
    """How many established TCP connections to ``port`` each process of the node's family holds
    (read from /proc: which worker serves how many stations, whatever the node's own figures say)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rpartition(":")[2], 16) == port:
                    established.add(fields[9])
    out = {}
    for member in family(node):
        count = 0
        with contextlib.suppress(FileNotFoundError):
            for fd in Path(f"/proc/{member}/fd").iterdir():
                with contextlib.suppress(FileNotFoundError):
                    target = str(fd.readlink())
                    if target.startswith("socket:[") and target[8:-1] in established:
                        count += 1
        out[member] = count
    return out


def cpu_text(before: dict[int, float], after: dict[int, float], count: float, node: int) -> str:
    """Each process's CPU between two readings, in µs per one of ``count`` things done."""
    return ", ".join(
        f"{process_name(pid, node)} {(used - before.get(pid, 0.0)) / count * 1e6:.1f}" for pid, used in after.items()
    )


def split_text(split: dict[int, int], node: int) -> str:
    return ", ".join(f"{process_name(pid, node)} {count:,}" for pid, count in split.items())


def process_name(pid: int, node: int) -> str:
    if pid == node:
        return "node"
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return f"process {pid}"
    return f"station worker {pid}" if b"gateway.station_workers" in command else f"node's process {pid}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only", default="hj212,sl651")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--role", default="")
    parser.add_argument("--protocol", default="hj212")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--per", type=int, default=1)
    parser.add_argument("--processes", type=int, default=None, help="[stations] processes of the node")
    args = parser.parse_args()
    if args.role == "stations":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.count + 1024)), hard))
        asyncio.run(role_stations(args.protocol, args.port, args.first, args.count, args.window, args.per))
        return
    print(f"yiwang station benchmark: {args.connections} connections held, {args.stations} stations "
          f"sending with a window of {args.window}, {args.seconds:g} s", flush=True)  # fmt: skip
    per = int(args.seconds * 40_000 / args.stations) + 200  # more than the window can take
    for protocol in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix="yiwang-bench-stations-") as folder:
            stations = args.connections + args.stations
            config, ports = write_node(Path(folder), stations + 1, not args.no_fsync, args.processes)
            node = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config), "--log-level", "warning"]
            )
            try:
                throughput.wait_port(ports[protocol], 60, node, "the node")
                probe = spawn_stations(protocol, ports[protocol], stations, 1, 1, 1, 0)  # answered: all is running
                read_json(probe, 600)
                finish(probe)
                rss_before, cpu_before = rss_by_process(node.pid), cpu_of_family(node.pid)
                held = spawn_stations(protocol, ports[protocol], 0, args.connections, 1, 1, 0)
                read_json(held, 600)
                rss_after, cpu_after = rss_by_process(node.pid), cpu_of_family(node.pid)
                before, after = sum(rss_before.values()), sum(rss_after.values())
                per_connection = (after - before) / args.connections
                print(f"({protocol}) (a) {args.connections:,} stations connected, each answered once: RSS of the "
                      f"node and its processes {before / 1024:,.0f} -> {after / 1024:,.0f} MiB, "
                      f"{per_connection:.1f} KiB per connection (goal: under 50 KiB)", flush=True)  # fmt: skip
                split = connections_by_process(node.pid, ports[protocol])
                print(f"({protocol}) (a) connections held by: {split_text(split, node.pid)}", flush=True)
                grown = {pid: kib - rss_before.get(pid, 0) for pid, kib in rss_after.items()}
                print(f"({protocol}) (a) KiB of RSS grown, by process: {split_text(grown, node.pid)}", flush=True)
                print(f"({protocol}) (a) CPU µs per connection (accepted, one upload answered): "
                      f"{cpu_text(cpu_before, cpu_after, args.connections, node.pid)}", flush=True)  # fmt: skip
                finish(held)
                sending = spawn_stations(
                    protocol, ports[protocol], args.connections, args.stations, args.window, per, args.seconds
                )
                read_json(sending, 600)
                split = connections_by_process(node.pid, ports[protocol])
                cpu_before = cpu_of_family(node.pid)
                result = read_json(sending, args.seconds + 600)
                cpu_after = cpu_of_family(node.pid)
                sending.wait(60)
                if result["wrong"]:
                    raise WrongAnswerError(f"({protocol}) wrong answers: {result['wrong']}")
                done = result["acknowledged"]
                rate = done / result["seconds"]
                print(f"({protocol}) (b) {args.stations} stations, window {args.window}: {rate:,.0f} uploads/s "
                      f"acknowledged after the durable append, every answer checked "
                      f"(goal: at least 20,000/s)", flush=True)  # fmt: skip
                print(f"({protocol}) (b) CPU µs per acknowledged upload: stations {result['cpu_s'] / done * 1e6:.1f}, "
                      f"{cpu_text(cpu_before, cpu_after, done, node.pid)}", flush=True)  # fmt: skip
                print(f"({protocol}) (b) sending stations served by: {split_text(split, node.pid)}", flush=True)
            finally:
                throughput.stop(node)


if __name__ == "__main__":
    main()
