"""Foundation benchmark: the durable publish -> log -> subscribe path against a bare gRPC anchor.

Prints, in one run:
  (a) anchor: envelopes/s that a bare grpc.aio server receives (deserialises and discards) over
      PublishStream, from one publisher process;
  (b) durable: envelopes/s sustained from PublishStream through a node's durable log to a Subscribe
      client, measured at the subscriber, with the same publisher;
  (c) latency: p50/p99 publish-to-delivery at a fixed offered rate (default 10,000 envelopes/s).

Each role runs in its own process (``--role``), as a deployment would. Usage:

    .venv/bin/python bench/throughput.py [--seconds 10] [--batch 500] [--rate 10000] [--no-fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.signing import Signer
from gateway.tls import ClientTls
from gateway.wire import varint

HERE = Path(__file__).resolve()
PUBLISH_STREAM = "/yiwang.v1.Gateway/PublishStream"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- envelopes ----------------------------------------------------------------------------------------


def fill(env: pb.Envelope, now_ns: int) -> pb.Envelope:
    """Makes ``env`` a small, realistic water-level observation (its id is the caller's)."""
    env.kind = pb.OBSERVATION
    env.region = "410105"
    env.status = pb.ACTUAL
    env.priority = 2
    env.origin.agency = "water"
    env.origin.region = "410100"
    env.origin.system = "bench"
    env.sent_at.FromNanoseconds(now_ns)
    env.geometry.point.lat, env.geometry.point.lon = 34.91, 113.66
    env.observation.station_id = "41100050"
    env.observation.measurements.add(metric="39", value=91.23, unit="m", quality=pb.GOOD)
    return env


def template(now_ns: int) -> bytes:
    """The observation without its id (field 1 is prepended per envelope)."""
    return fill(pb.Envelope(), now_ns).SerializeToString()


def filled_request(prefix: str, start: int, count: int, batch_id: int) -> gw.PublishRequest:
    """A request of ``count`` envelopes as a client library builds it: an Envelope message per envelope."""
    now_ns = time.time_ns()
    request = gw.PublishRequest(batch_id=batch_id)
    for n in range(start, start + count):
        fill(request.envelopes.add(id=f"{prefix}-{n}"), now_ns)
    return request


def request_built(prefix: str, start: int, count: int, batch_id: int) -> bytes:
    """``filled_request``, encoded."""
    return filled_request(prefix, start, count, batch_id).SerializeToString()


def request_signed(prefix: str, start: int, count: int, batch_id: int, shared: bool = False) -> bytes:
    """As ``request_built``, with one batch signature of the publisher's identity over the envelopes;
    with ``shared``, the signature is sent once, each envelope referring to it."""
    request = filled_request(prefix, start, count, batch_id)
    signer = bench_signer()
    signature = signer.sign_batch(request.envelopes, shared=shared)
    if shared:
        request.batch_signatures.append(signature)
    request.certificates.append(signer.certificate_der)
    return request.SerializeToString()


@functools.cache
def bench_signer() -> Signer:
    tls_dir, name = Path(os.environ["YIWANG_BENCH_TLS_DIR"]), os.environ["YIWANG_BENCH_IDENTITY"]
    issued = tls_dir / "issued"
    return Signer.load((issued / f"{name}.sign.key").read_bytes(), (issued / f"{name}.sign.pem").read_bytes())


def bench_channel(target: str, options: list[tuple[str, Any]]) -> grpc.aio.Channel:
    """Plaintext, or mutual TLS as the identity YIWANG_BENCH_IDENTITY of the PKI in YIWANG_BENCH_TLS_DIR."""
    tls_dir = os.environ.get("YIWANG_BENCH_TLS_DIR")
    if not tls_dir:
        return grpc.aio.insecure_channel(target, options=options)
    name = os.environ["YIWANG_BENCH_IDENTITY"]
    issued = Path(tls_dir) / "issued"
    tls = ClientTls(Path(tls_dir) / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key")
    return grpc.aio.secure_channel(target, tls.credentials(), options=options)


def request_bytes(prefix: str, start: int, count: int, batch_id: int) -> bytes:
    """A PublishRequest encoded by hand: unique ids, one template, the current time."""
    rest = template(time.time_ns())
    parts = []
    for n in range(start, start + count):
        ident = f"{prefix}-{n}".encode()
        env = b"\x0a" + varint(len(ident)) + ident + rest
        parts.append(b"\x0a" + varint(len(env)) + env)
    parts.append(b"\x10" + varint(batch_id))
    return b"".join(parts)


# -- roles --------------------------------------------------------------------------------------------


async def role_anchor(port: int) -> None:
    """A bare grpc.aio server: receives PublishStream batches, deserialises them, discards them."""

    async def publish_stream(
        requests: AsyncIterator[gw.PublishRequest], _context: Any
    ) -> AsyncIterator[gw.PublishReply]:
        async for request in requests:
            yield gw.PublishReply(batch_id=request.batch_id)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    handler = grpc.method_handlers_generic_handler(
        "yiwang.v1.Gateway",
        {
            "PublishStream": grpc.stream_stream_rpc_method_handler(
                publish_stream, gw.PublishRequest.FromString, gw.PublishReply.SerializeToString
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


async def role_publisher(
    target: str, seconds: float, batch: int, rate: float, window: int, build: str, ahead: int = 0
) -> None:
    """Publishes for ``seconds``: as fast as acknowledgements allow, or at ``rate`` envelopes/s.

    With ``ahead``, that many envelopes are built (and signed) before the clock starts, as origins
    on machines of their own would have done, and the run ends early if they are all sent.
    """
    channel = bench_channel(target, [("grpc.max_send_message_length", 64 << 20)])
    await asyncio.wait_for(channel.channel_ready(), 30)
    call = channel.stream_stream(
        PUBLISH_STREAM, request_serializer=lambda b: b, response_deserializer=gw.PublishReply.FromString
    )
    prefix = f"p{os.getpid()}-{time.time_ns()}"
    builders: dict[str, Callable[[str, int, int, int], bytes]] = {
        "messages": request_built,
        "signed": request_signed,
        "shared": functools.partial(request_signed, shared=True),
    }
    make: Callable[[str, int, int, int], bytes] = builders.get(build, request_bytes)
    if ahead:
        prepared = iter([make(prefix, n, batch, n // batch + 1) for n in range(0, ahead, batch)])

        def take(_prefix: str, _start: int, _count: int, _batch_id: int) -> bytes:
            return next(prepared, b"")

        make = take
    in_flight = asyncio.Semaphore(window)
    sent = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def requests() -> AsyncIterator[bytes]:
        nonlocal sent
        batch_id = 0
        while time.perf_counter() < deadline:
            if rate:
                due = started + sent / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await in_flight.acquire()
            batch_id += 1
            request = make(prefix, sent, batch, batch_id)
            if not request:
                in_flight.release()
                return  # everything prepared ahead is sent
            yield request
            sent += batch

    acked = accepted = 0
    stream = call(requests())
    async for reply in stream:
        in_flight.release()
        acked += batch  # every request carries `batch` envelopes; the anchor's replies carry no results
        accepted += sum(1 for r in reply.results if r.outcome == gw.PublishResult.ACCEPTED)
    elapsed = time.perf_counter() - started
    await channel.close()
    print(json.dumps({"sent": sent, "acked": acked, "accepted": accepted, "seconds": elapsed}), flush=True)


async def role_subscriber(target: str, expect_idle: float, sample_every: int, shared: bool = False) -> None:
    """Counts deliveries from the live tail and measures publish-to-delivery latency (now - sent_at);
    with ``shared``, it takes batch-signed envelopes in their shared form (SubscribeRequest.shared_signatures)."""
    channel = bench_channel(target, [("grpc.max_receive_message_length", 64 << 20)])
    await asyncio.wait_for(channel.channel_ready(), 30)
    call = channel.unary_stream(
        "/yiwang.v1.Gateway/Subscribe",
        request_serializer=gw.SubscribeRequest.SerializeToString,
        response_deserializer=gw.DeliveryBatch.FromString,
    )
    stream = call(gw.SubscribeRequest(position=gw.LATEST, max_batch=5000, shared_signatures=shared))
    print(json.dumps({"ready": True}), flush=True)
    count = 0
    latencies: list[float] = []
    first = last = 0.0
    iterator = stream.__aiter__()
    while True:
        try:
            batch = await asyncio.wait_for(iterator.__anext__(), expect_idle if count else 120)
        except (TimeoutError, StopAsyncIteration):
            break
        now = time.time_ns()
        if not batch.deliveries:
            continue
        if not count:
            first = time.perf_counter()
        last = time.perf_counter()
        deliveries = batch.deliveries
        latencies.extend(
            (now - deliveries[i].envelope.sent_at.ToNanoseconds()) / 1e6
            for i in range(0, len(deliveries), sample_every)
        )
        count += len(deliveries)
    stream.cancel()
    await channel.close()
    latencies.sort()
    print(
        json.dumps(
            {
                "delivered": count,
                "seconds": last - first,
                "p50_ms": statistics.median(latencies) if latencies else None,
                "p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
                "max_ms": latencies[-1] if latencies else None,
            }
        ),
        flush=True,
    )


# -- orchestration --------------------------------------------------------------------------------------


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE), *args], stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1]))


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None, what: str = "") -> None:
    """Waits until something listens on a loopback port; with ``proc``, gives up if that process exits."""
    deadline = time.monotonic() + timeout
    who = f"{what}: " if what else ""
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{who}exited (status {proc.returncode}) before listening on 127.0.0.1:{port}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{who}nothing listens on 127.0.0.1:{port} after {timeout:g} s")
        time.sleep(0.05)


def metric(http_port: int, name: str, labels: str = "") -> float:
    """The sum of a node's samples of a Prometheus metric (those whose labels contain ``labels``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if (head == name or head.startswith(name + "{")) and labels in head:
            total += float(value)
    return total


def wait_metric(http_port: int, name: str, at_least: float, labels: str = "", timeout: float = 30.0) -> None:
    """Waits until a node's metric reaches ``at_least`` (polled: the process is another one). A node
    opens its HTTP port after its gRPC port, so a refused connection counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if metric(http_port, name, labels) >= at_least:
                return
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise SystemExit(f"{name}{{{labels}}} on 127.0.0.1:{http_port} did not reach {at_least:g}")
        time.sleep(0.05)


def start_node(
    data: str, fsync: bool, tls_dir: Path | None = None, workers: int = -1
) -> tuple[subprocess.Popen[bytes], int]:
    port, http = free_port(), free_port()
    config = Path(data) / "node.toml"
    tls = "[tls]\ninsecure = true\n"
    if tls_dir is not None:
        issued = tls_dir / "issued"
        tls = (
            f'[tls]\nca = "{tls_dir / "ca.pem"}"\ncert = "{issued / "henan-province.chain.pem"}"\n'
            f'key = "{issued / "henan-province.key"}"\ncrl = "{tls_dir / "crl.pem"}"\n'
        )
    config.write_text(
        f'[node]\nid = "bench"\nregion = "410000"\n[listen]\ngrpc = "127.0.0.1:{port}"\nhttp = "127.0.0.1:{http}"\n'
        f'[log]\ndata_dir = "{data}"\nfsync = {"true" if fsync else "false"}\nretention_hours = 1\n'
        f"[limits]\nadmission_workers = {workers}\n" + tls,
        encoding="utf-8",
    )
    node = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config), "--log-level", "warning"],
    )
    wait_port(port)
    return node, port


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def run_durable(
    args: argparse.Namespace,
    rate: float,
    idle: float,
    sample: int,
    *,
    build: str = "bytes",
    tls_dir: Path | None = None,
    ahead: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One durable run; with ``tls_dir``, over mutual TLS as a water department (publisher) and the
    province's duty platform (subscriber)."""
    pub_env = sub_env = None
    if tls_dir is not None:
        pub_env = {"YIWANG_BENCH_TLS_DIR": str(tls_dir), "YIWANG_BENCH_IDENTITY": "jinshui-water"}
        sub_env = {"YIWANG_BENCH_TLS_DIR": str(tls_dir), "YIWANG_BENCH_IDENTITY": "province-desk"}
    with tempfile.TemporaryDirectory(prefix="yiwang-bench-") as data:
        node, port = start_node(data, not args.no_fsync, tls_dir, getattr(args, "workers", -1))
        try:
            target = f"127.0.0.1:{port}"
            shared = ["--shared"] if build == "shared" else []
            sub = spawn(
                "--role", "subscriber", "--target", target, "--idle", str(idle), "--sample", str(sample), *shared,
                env=sub_env,
            )  # fmt: skip
            assert sub.stdout is not None
            sub.stdout.readline()  # ready
            time.sleep(0.3)
            pub = spawn(
                "--role",
                "publisher",
                "--target",
                target,
                "--seconds",
                str(args.seconds),
                "--batch",
                str(args.batch if not rate else args.rate_batch),
                "--rate",
                str(rate),
                "--window",
                str(args.window),
                "--build",
                build,
                "--ahead",
                str(ahead),
                env=pub_env,
            )
            published = result(pub, args.seconds + 120)
            delivered = result(sub, 120)
        finally:
            stop(node)
    return published, delivered


def run_anchor(args: argparse.Namespace, build: str) -> float:
    port = free_port()
    anchor = spawn("--role", "anchor", "--port", str(port))
    wait_port(port)
    try:
        pub = spawn(
            "--role", "publisher", "--target", f"127.0.0.1:{port}", "--seconds", str(args.seconds),
            "--batch", str(args.batch), "--rate", "0", "--window", str(args.window), "--build", build,
        )  # fmt: skip
        stats = result(pub, args.seconds + 60)
    finally:
        stop(anchor)
    return float(stats["acked"] / stats["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", choices=["anchor", "publisher", "subscriber"])
    parser.add_argument("--target", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=500, help="envelopes per request at full speed")
    parser.add_argument("--rate", type=float, default=10_000.0, help="offered rate for the latency run")
    parser.add_argument("--rate-batch", type=int, default=50, help="envelopes per request in the latency run")
    parser.add_argument("--window", type=int, default=8, help="requests in flight per stream")
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--sample", type=int, default=1)
    parser.add_argument("--build", choices=["bytes", "messages", "signed", "shared"], default="bytes")
    parser.add_argument("--shared", action="store_true", help="subscriber: take shared batch signatures")
    parser.add_argument("--ahead", type=int, default=0, help="envelopes the publisher prepares before the clock starts")
    parser.add_argument("--no-fsync", action="store_true", help="commit without fsync (crash-safe, not power-safe)")
    args = parser.parse_args()

    if args.role == "anchor":
        asyncio.run(role_anchor(args.port))
        return
    if args.role == "publisher":
        asyncio.run(
            role_publisher(args.target, args.seconds, args.batch, args.rate, args.window, args.build, args.ahead)
        )
        return
    if args.role == "subscriber":
        asyncio.run(role_subscriber(args.target, args.idle, args.sample, args.shared))
        return

    print(
        f"yiwang foundation benchmark: {os.cpu_count()} cores, batch {args.batch}, window {args.window}, "
        f"{args.seconds:g} s per run, fsync {'off' if args.no_fsync else 'on'}",
        flush=True,
    )
    anchors = {build: run_anchor(args, build) for build in ("messages", "bytes")}
    print(
        "(a) anchor  bare grpc.aio server, PublishStream batches received, parsed and discarded:\n"
        f"      client building Envelope messages (as a client library does): "
        f"{anchors['messages']:>10,.0f} envelopes/s\n"
        f"      client sending pre-encoded batches (the transport's ceiling):   {anchors['bytes']:>10,.0f} envelopes/s"
    )

    published, delivered = run_durable(args, 0.0, args.idle, 10)
    durable_rate = delivered["delivered"] / delivered["seconds"] if delivered["seconds"] else 0.0
    acked_rate = published["acked"] / published["seconds"]
    print(
        f"(b) durable PublishStream -> log -> Subscribe, at the subscriber: {durable_rate:>10,.0f} envelopes/s "
        f"(publisher acknowledged {acked_rate:,.0f}/s; "
        f"delivered {delivered['delivered']:,} of {published['accepted']:,})"
    )
    print(
        f"    ratio durable/anchor: {durable_rate / anchors['messages']:.1%} of the message-building anchor, "
        f"{durable_rate / anchors['bytes']:.1%} of the pre-encoded one (goal: at least 25%)"
    )

    published, delivered = run_durable(args, args.rate, args.idle, 1)
    print(
        f"(c) latency at {args.rate:,.0f} envelopes/s offered ({args.rate_batch} per request): "
        f"p50 {delivered['p50_ms']:.1f} ms, p99 {delivered['p99_ms']:.1f} ms, max {delivered['max_ms']:.1f} ms "
        f"(goal: p99 under 50 ms); delivered {delivered['delivered']:,} of {published['accepted']:,}"
    )


if __name__ == "__main__":
    main()
