"""The replicated log's cost: publish rates through gateway processes on the embedded log and on a
three-server NATS JetStream cluster (stream replicated R3), with the CPU each process used.

Prints, in one run:
  (a) embedded: one gateway on its SQLite log, one publisher;
  (b) jetstream, one replica: one gateway on the cluster, one publisher;
  (c) jetstream, two replicas: two gateways of the same node on the same stream, one publisher each
      (aggregate rate);
each with the CPU seconds of every process (gateways, publishers, NATS servers) over the measured
window. Every role is its own process, as deployed. Usage:

    .venv/bin/python bench/jetstream.py [--seconds 10] [--batch 500] [--depth 4] [--fsync] [--layout batch]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from yiwang.v1 import gateway_pb2 as gw

from bench.edge import cpu_seconds
from bench.throughput import free_port, request_bytes, wait_port
from tests.nats_cluster import NatsCluster

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
PUBLISH = "/yiwang.v1.Gateway/Publish"


# -- the publisher role -----------------------------------------------------------------------------------


async def role_publish(target: str, seconds: float, batch: int, depth: int, prefix: str) -> None:
    """Keeps ``depth`` Publish calls in flight for ``seconds``; prints accepted envelopes as JSON."""
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, gw.PublishReply] = channel.unary_unary(
            PUBLISH, request_serializer=None, response_deserializer=gw.PublishReply.FromString
        )
        print("ready", flush=True)
        sys.stdin.readline()  # the conductor says go
        accepted = 0
        counter = 0
        deadline = time.monotonic() + seconds

        async def worker(lane: int) -> None:
            nonlocal accepted, counter
            while time.monotonic() < deadline:
                counter += 1
                request = request_bytes(f"{prefix}-{lane}", counter * batch, batch, counter)
                reply: gw.PublishReply = await call(request, timeout=60)
                accepted += sum(1 for r in reply.results if r.outcome == gw.PublishResult.ACCEPTED)

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(depth)))
        print(json.dumps({"accepted": accepted, "seconds": time.monotonic() - started}), flush=True)


# -- the conductor ----------------------------------------------------------------------------------------


def gateway_config(
    folder: Path, name: str, port: int, servers: list[str] | None, fsync: bool, stream: str, layout: str
) -> Path:
    backend = ""
    if servers is not None:
        listed = ", ".join(f'"{s}"' for s in servers)
        backend = (
            f'backend = "jetstream"\n\n[log.jetstream]\nservers = [{listed}]\nstream = "{stream}"\nreplicas = 3\n'
            f'layout = "{layout}"\n'
        )
    text = (
        f'[node]\nid = "bench-province"\nregion = "410000"\n\n'
        f'[listen]\ngrpc = "127.0.0.1:{port}"\nhttp = "127.0.0.1:{free_port()}"\n\n'
        f'[log]\ndata_dir = "{folder / name}"\nfsync = {"true" if fsync else "false"}\n{backend}\n'
        "[tls]\ninsecure = true\n"
    )
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config), "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


def run_case(
    label: str, folder: Path, gateways: int, servers: list[str] | None, nats_pids: list[int], args: argparse.Namespace
) -> dict[str, object]:
    procs: list[subprocess.Popen[bytes]] = []
    publishers: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for i in range(gateways):
            port = free_port()
            proc = start_gateway(
                gateway_config(folder, f"{label}-{i}", port, servers, args.fsync, label, args.layout),
                folder / f"{label}-{i}.log",
            )
            procs.append(proc)
            ports.append(port)
        for port, proc in zip(ports, procs, strict=True):
            wait_port(port, 60.0, proc, "gateway")
        for i, port in enumerate(ports):
            publisher = subprocess.Popen(
                [sys.executable, str(HERE), "--role", "publish", "--target", f"127.0.0.1:{port}",
                 "--seconds", str(args.seconds), "--batch", str(args.batch), "--depth", str(args.depth),
                 "--prefix", f"{label}-{i}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            )  # fmt: skip
            publishers.append(publisher)
        for publisher in publishers:
            assert publisher.stdout is not None
            if publisher.stdout.readline().strip() != "ready":
                raise SystemExit("a publisher did not connect")
        watched = {f"gateway{i}": p.pid for i, p in enumerate(procs)}
        watched |= {f"publisher{i}": p.pid for i, p in enumerate(publishers)}
        watched |= {f"nats{i + 1}": pid for i, pid in enumerate(nats_pids)}
        before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        for publisher in publishers:
            assert publisher.stdin is not None
            publisher.stdin.write("go\n")
            publisher.stdin.flush()
        results = []
        for publisher in publishers:
            assert publisher.stdout is not None
            results.append(json.loads(publisher.stdout.readline()))
        after = {name: cpu_seconds(pid) for name, pid in watched.items()}
        seconds = max(r["seconds"] for r in results)
        accepted = sum(r["accepted"] for r in results)
        return {
            "case": label,
            "envelopes_per_s": round(accepted / seconds),
            "cpu_s": {name: round(after[name] - before[name], 2) for name in watched},
            "cpu_us_per_envelope": {
                name: round(1e6 * (after[name] - before[name]) / max(accepted, 1), 1) for name in watched
            },
            "window_s": round(seconds, 2),
        }
    finally:
        for publisher in publishers:
            publisher.kill()
            publisher.wait()
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["conduct", "publish"], default="conduct")
    parser.add_argument("--target", default="")
    parser.add_argument("--prefix", default="bench")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--depth", type=int, default=4, help="Publish calls in flight per publisher")
    parser.add_argument("--fsync", action="store_true", help="embedded log: fsync every commit")
    parser.add_argument(
        "--layout",
        choices=["envelope", "batch"],
        default="batch",
        help="the JetStream log's layout: one stream message per envelope, or per append batch",
    )
    args = parser.parse_args()
    if args.role == "publish":
        asyncio.run(role_publish(args.target, args.seconds, args.batch, args.depth, args.prefix))
        return
    with tempfile.TemporaryDirectory(prefix="yiwang-bench-js-") as tmp:
        folder = Path(tmp)
        rows = [run_case("embedded", folder, 1, None, [], args)]
        cluster = NatsCluster(folder / "nats", size=3)
        cluster.start()
        try:
            pids = [s.proc.pid for s in cluster.servers if s.proc is not None]
            rows.append(run_case("jetstream-1-replica", folder, 1, cluster.urls, pids, args))
            rows.append(run_case("jetstream-2-replicas", folder, 2, cluster.urls, pids, args))
        finally:
            cluster.stop()
    base = rows[0]["envelopes_per_s"]
    assert isinstance(base, int)
    for row in rows:
        rate = row["envelopes_per_s"]
        assert isinstance(rate, int)
        share = f"{100 * rate / base:.0f}% of embedded" if base else ""
        print(f"{row['case']:>22}: {rate:>9,} envelopes/s  {share:>18}  cpu s {row['cpu_s']}")
        print(f"{'':>22}  cpu µs per envelope {row['cpu_us_per_envelope']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
