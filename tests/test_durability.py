"""``kill -9`` of a real gateway process: nothing it acknowledged is lost, and it starts again whole.

The node runs as its own process (``python -m gateway.cli gateway --config FILE``), exactly as it is
deployed, and is killed with SIGKILL while clients publish and subscribe. After a restart on the same
data directory every acknowledged envelope must be where the node said it put it, the id index must
still know every id (it is rebuilt from the log past its watermark), and durable subscriptions must
resume at their last acknowledged position.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.client import GatewayClient
from tests import factories
from tests.conftest import eventually, free_port

ACCEPTED = gw.PublishResult.ACCEPTED
DUPLICATE = gw.PublishResult.DUPLICATE
BATCH = 200
START_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 60.0


def write_config(tmp_path: Path, *, fsync: bool) -> Path:
    """The node's TOML file: province node on loopback ports, its log in ``tmp_path / "data"``."""
    path = tmp_path / "node.toml"
    path.write_text(
        f"""\
[node]
id = "henan-durability"
region = "410000"

[listen]
grpc = "127.0.0.1:{free_port()}"
http = "127.0.0.1:{free_port()}"

[log]
data_dir = "{tmp_path / "data"}"
fsync = {"true" if fsync else "false"}

[tls]
insecure = true
""",
        encoding="utf-8",
    )
    return path


def grpc_target(config: Path) -> str:
    for line in config.read_text(encoding="utf-8").splitlines():
        if line.startswith("grpc = "):
            return line.split('"')[1]
    raise AssertionError(f"no listen.grpc in {config}")


class GatewayProcess:
    """One run of ``yiwang gateway --config FILE`` as a child process in its own process group."""

    def __init__(self, config: Path, run: int) -> None:
        self.config = config
        self.target = grpc_target(config)
        self.stderr_path = config.parent / f"gateway-{run}.stderr"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.stderr_path.open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli",
                "gateway",
                "--config",
                str(self.config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its admission workers join its group, so cleanup can find them
            )
        await self.wait_ready()

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def client(self) -> GatewayClient:
        """A client of the node (plaintext: the node of these tests is a development node)."""
        return GatewayClient(self.target, insecure=True)

    async def wait_ready(self) -> None:
        """Waits until the node answers Info (it listens only after the log is open and checked)."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        async with self.client() as client:
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.stderr()}")
                try:
                    await client.info()
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                        raise AssertionError(f"gateway did not come up: {exc.details()}\n{self.stderr()}") from exc
                    await asyncio.sleep(0.1)
                else:
                    return

    async def kill9(self) -> None:
        """SIGKILL to the node's own pid, as ``kill -9 PID`` does, then reaps whatever it left behind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        code = await asyncio.wait_for(self.proc.wait(), START_TIMEOUT_S)
        assert code == -signal.SIGKILL
        self.reap_group()

    def reap_group(self) -> None:
        # The node's spawned admission workers outlive a SIGKILL of the node itself (a supervisor
        # would kill the whole cgroup); end them by the group id of the process this test started.
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    async def terminate(self) -> int:
        """SIGTERM and wait: the node stops gracefully and exits 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), START_TIMEOUT_S)

    async def cleanup(self) -> None:
        """For ``finally``: whatever happened, no process of this run is left."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), START_TIMEOUT_S)
        self.reap_group()


@contextlib.asynccontextmanager
async def gateway(config: Path, run: int) -> AsyncIterator[GatewayProcess]:
    node = GatewayProcess(config, run)
    try:
        await node.start()
        yield node
    finally:
        await node.cleanup()


def make_batch(tag: str, number: int) -> list[pb.Envelope]:
    """BATCH valid envelopes of mixed kinds, with ids this test chooses."""
    envelopes: list[pb.Envelope] = []
    for i in range(BATCH):
        envelope_id = f"kill9-{tag}-{number:05d}-{i:03d}"
        if i % 10 == 0:
            envelopes.append(factories.alert(envelope_id=envelope_id))
        elif i % 10 == 1:
            envelopes.append(factories.incident(envelope_id=envelope_id))
        else:
            envelopes.append(factories.observation(envelope_id=envelope_id, value=float(i)))
    return envelopes


@dataclass
class Ledger:
    """What the publishers sent and what the node acknowledged."""

    sent: dict[str, pb.Envelope] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)  # id -> offset the node reported
    acked_batches: list[list[pb.Envelope]] = field(default_factory=list)
    unanswered: list[list[str]] = field(default_factory=list)  # in flight when the node died


async def publish_until_the_node_dies(client: GatewayClient, ledger: Ledger, tag: str) -> None:
    number = 0
    while True:
        batch = make_batch(tag, number)
        for env in batch:
            ledger.sent[env.id] = env
        try:
            reply = await client.publish(batch, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise  # the node answered with an error: that is a failure, not the kill
            ledger.unanswered.append([env.id for env in batch])
            return
        assert len(reply.results) == len(batch)
        for env, result in zip(batch, reply.results, strict=True):
            assert (result.id, result.outcome) == (env.id, ACCEPTED), result
            ledger.acked[env.id] = result.offset
        ledger.acked_batches.append(batch)
        number += 1


async def query_everything(client: GatewayClient, *, page_size: int = 1000) -> list[gw.Delivery]:
    request = gw.QueryRequest(page_size=page_size)
    return [delivery async for delivery in client.query_all(request)]


async def get_all(client: GatewayClient, ids: Sequence[str]) -> dict[str, int]:
    """Offsets of the given ids by Get, in requests of a size the node accepts; fails on a missing id."""
    found: dict[str, int] = {}
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        reply = await client.get(chunk)
        assert list(reply.missing) == []
        for delivery in reply.deliveries:
            found[delivery.envelope.id] = delivery.offset
    return found


async def read_subscription(
    call: grpc.aio.UnaryStreamCall[gw.SubscribeRequest, gw.DeliveryBatch], until_offset: int
) -> list[gw.Delivery]:
    """Deliveries of a subscription up to and including ``until_offset``."""
    out: list[gw.Delivery] = []
    while not out or out[-1].offset < until_offset:
        batch = await asyncio.wait_for(call.read(), RPC_TIMEOUT_S)
        assert isinstance(batch, gw.DeliveryBatch), "the subscription ended early"
        out.extend(batch.deliveries)
    return out


def without_hops(env: pb.Envelope) -> pb.Envelope:
    """The envelope as its publisher sent it: the node only adds its own provenance hop."""
    copy = pb.Envelope()
    copy.CopyFrom(env)
    copy.ClearField("provenance")
    return copy


@pytest.mark.parametrize("fsync", [False, True], ids=["fsync-off", "fsync-on"])
async def test_kill_9_while_publishing_loses_nothing_acknowledged(tmp_path: Path, fsync: bool) -> None:
    config = write_config(tmp_path, fsync=fsync)
    ledger = Ledger()

    async with gateway(config, run=1) as node, GatewayClient(node.target, insecure=True) as client:
        publishers = [
            asyncio.create_task(publish_until_the_node_dies(client, ledger, tag), name=f"publisher-{tag}")
            for tag in ("a", "b")
        ]
        try:
            await eventually(lambda: len(ledger.acked) >= 3000 or any(p.done() for p in publishers), timeout=120.0)
            for p in publishers:
                if p.done():
                    p.result()  # a publisher that stopped before the kill failed: show why
            await node.kill9()
            await asyncio.wait_for(asyncio.gather(*publishers), RPC_TIMEOUT_S)
        finally:
            for p in publishers:
                p.cancel()
            await asyncio.gather(*publishers, return_exceptions=True)
    acked = ledger.acked
    assert len(acked) >= 3000
    assert len(set(acked.values())) == len(acked), "two acknowledged ids share an offset"
    assert len(ledger.unanswered) == 2, "each publisher was cut off with a request unanswered"

    async with gateway(config, run=2) as node, GatewayClient(node.target, insecure=True) as client:
        info = await client.info()
        assert info.oldest_offset == 1
        head = info.next_offset
        assert head > max(acked.values())

        # The log reads end to end: offsets 1..head-1, each once, each an envelope that was sent.
        log = await query_everything(client)
        assert [d.offset for d in log] == list(range(1, head))
        at = {d.offset: d.envelope.id for d in log}
        stored_ids = set(at.values())
        assert len(stored_ids) == len(log), "an id is stored twice"
        for d in log:
            assert without_hops(d.envelope) == ledger.sent[d.envelope.id]
            assert [hop.node for hop in d.envelope.provenance.hops] == ["henan-durability"]
        for envelope_id, offset in acked.items():
            assert at[offset] == envelope_id

        # A request the node never answered was appended whole or not at all.
        for ids in ledger.unanswered:
            stored = [i for i in ids if i in stored_ids]
            assert stored in ([], ids)
            if stored:
                got = await client.get(ids)
                offsets = [d.offset for d in got.deliveries]
                assert offsets == list(range(offsets[0], offsets[0] + len(ids)))

        # Get finds every acknowledged id where it was acknowledged.
        assert await get_all(client, list(acked)) == acked

        # The id index survived the crash: the same envelopes again are duplicates at their offsets.
        for batch in ledger.acked_batches:
            reply = await client.publish(batch, timeout=RPC_TIMEOUT_S)
            assert [(r.id, r.outcome, r.offset) for r in reply.results] == [
                (env.id, DUPLICATE, acked[env.id]) for env in batch
            ]
        assert (await client.info()).next_offset == head

        # New envelopes continue at the next offset.
        fresh = make_batch("after-restart", 0)
        reply = await client.publish(fresh, timeout=RPC_TIMEOUT_S)
        assert [(r.id, r.outcome, r.offset) for r in reply.results] == [
            (env.id, ACCEPTED, head + i) for i, env in enumerate(fresh)
        ]
        end = head + len(fresh)

        # A subscriber from the oldest gets everything, in order, with nothing missing or repeated.
        call = client.subscribe(gw.SubscribeRequest(position=gw.OLDEST))
        try:
            delivered = await read_subscription(call, end - 1)
        finally:
            call.cancel()
        assert [d.offset for d in delivered] == list(range(1, end))
        assert [d.envelope.id for d in delivered] == [at[o] for o in range(1, head)] + [env.id for env in fresh]

        assert await node.terminate() == 0


async def test_kill_9_keeps_durable_subscriptions_at_their_acknowledged_position(tmp_path: Path) -> None:
    config = write_config(tmp_path, fsync=False)

    async with gateway(config, run=1) as node, GatewayClient(node.target, insecure=True) as client:
        for number in range(5):
            reply = await client.publish(make_batch("before", number), timeout=RPC_TIMEOUT_S)
            assert {r.outcome for r in reply.results} == {ACCEPTED}
        assert (await client.info()).next_offset == 1001

        desk = client.subscribe(gw.SubscribeRequest(durable_name="flood-desk", position=gw.OLDEST, max_batch=150))
        # A durable subscription that starts at the head is remembered there before any ack.
        late = client.subscribe(gw.SubscribeRequest(durable_name="late-desk", position=gw.LATEST))
        try:
            acknowledged = 1
            seen: list[int] = []
            while acknowledged < 600:
                batch = await asyncio.wait_for(desk.read(), RPC_TIMEOUT_S)
                assert isinstance(batch, gw.DeliveryBatch)
                seen += [d.offset for d in batch.deliveries]
                acknowledged = await client.ack("flood-desk", batch.next_offset)
                assert acknowledged == batch.next_offset
            assert seen == list(range(1, acknowledged))
            # Delivered but not acknowledged: these must come again after the crash.
            batch = await asyncio.wait_for(desk.read(), RPC_TIMEOUT_S)
            assert isinstance(batch, gw.DeliveryBatch)
            assert batch.deliveries[0].offset == acknowledged
            # The call returns before the node has saved the new subscription's position; the
            # node logs the opening only after it has, so wait for that line.
            await eventually(lambda: '"late-desk"' in node.stderr(), timeout=RPC_TIMEOUT_S)
            await node.kill9()
        finally:
            desk.cancel()
            late.cancel()

    async with gateway(config, run=2) as node, GatewayClient(node.target, insecure=True) as client:
        reply = await client.publish(make_batch("after", 0), timeout=RPC_TIMEOUT_S)
        assert [r.offset for r in reply.results] == list(range(1001, 1201))

        # The start position is only for a new subscription: OLDEST here must not rewind it.
        desk = client.subscribe(gw.SubscribeRequest(durable_name="flood-desk", position=gw.OLDEST))
        late = client.subscribe(gw.SubscribeRequest(durable_name="late-desk", position=gw.OLDEST))
        try:
            resumed = await read_subscription(desk, 1200)
            late_resumed = await read_subscription(late, 1200)
        finally:
            desk.cancel()
            late.cancel()
        assert [d.offset for d in resumed] == list(range(acknowledged, 1201))
        assert [d.offset for d in late_resumed] == list(range(1001, 1201))

        assert await node.terminate() == 0
