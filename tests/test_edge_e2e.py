"""Field readings end to end, with a real Mosquitto (mutual TLS, the deploy ACL) between edge agents
and a node: each reading arrives in the log exactly once with its own timestamp, through broker
crashes, agent crashes, node restarts, cut and lossy links; budgets hold; commands go down and
their answers come back; silent terminals go stale."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from edge_agent import wire
from edge_agent.agent import EdgeAgent
from edge_agent.cli import connector
from edge_agent.links import Budget, LinkProfile, profile
from edge_agent.model import Batch, Metric, MetricKind, Priority, Reading, Sequenced, Series
from edge_agent.mqtt import MqttClient
from edge_agent.outbox import Outbox
from gateway.client import GatewayClient
from gateway.edge_ledger import parse_ranges
from gateway.node import Node
from gateway.observations import measurements, series_arrays
from gateway.pki import Authority, Role
from gateway.tls import ClientTls
from tests.broker import Broker
from tests.conftest import client_as, eventually, tls_node_config

T0 = 1_784_000_000_000  # 2026-07-14, the readings' own clock (not the test's)
CATALOGUE = (
    Metric(0, "39", MetricKind.OBSERVATION, "m", "41010050", "贾鲁河水位", Priority.P2, 80.0),
    Metric(1, "rain_5min", MetricKind.OBSERVATION, "mm", "41010050", "雨量"),
    Metric(2, "flood_stage", MetricKind.ALARM, "m", "41010050", "超警戒", Priority.P0),
    Metric(3, "position", MetricKind.POSITION, "m/s", "", "位置", Priority.P1),
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    ca = Authority.init(tmp_path_factory.mktemp("edge") / "pki", trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.GATEWAY, "410000", "mqtt-broker", "mqtt-broker"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    for name in ("gauge-1", "gauge-2", "boat-1"):
        ca.issue(ca.identity(Role.EDGE, "410105", name, "water"))
    ca.issue(ca.identity(Role.PLATFORM, "410000", "province-desk", "emergency"))
    return ca


@pytest.fixture
def broker(pki: Authority, tmp_path: Path) -> Iterator[Broker]:
    folder = tmp_path / "broker"
    folder.mkdir()
    running = Broker(pki, folder)
    running.start()
    try:
        yield running
    finally:
        running.stop()


class NodeRunner:
    """A TLS node ingesting from the broker; can be stopped and started again on the same data."""

    def __init__(self, pki: Authority, data: Path, broker_port: int) -> None:
        self.pki = pki
        self.data = data
        self.broker_port = broker_port
        self.node: Node | None = None

    async def start(self, **mqtt: Any) -> Node:
        config = tls_node_config(
            self.pki,
            self.data,
            mqtt={"broker": f"127.0.0.1:{self.broker_port}", "resend_after_s": 0.5, **mqtt},
        )
        self.node = Node(config, grace_s=0.2)
        await self.node.start()
        return self.node

    async def stop(self) -> None:
        if self.node is not None:
            await self.node.stop()
            self.node = None


@pytest.fixture
async def gateway(pki: Authority, broker: Broker, tmp_path: Path) -> AsyncIterator[NodeRunner]:
    runner = NodeRunner(pki, tmp_path / "node", broker.port)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


def terminal_tls(pki: Authority, name: str) -> ClientTls:
    issued = pki.dir / "issued"
    return ClientTls(pki.dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key")


class AgentRunner:
    """An in-process edge agent with its own outbox file."""

    def __init__(self, pki: Authority, broker: Broker, folder: Path, name: str, link: LinkProfile) -> None:
        self.cn = f"410105/water/edge/{name}"
        self.outbox = Outbox.open(folder / f"{name}.outbox.sqlite", max_bytes=64 << 20, p2_ttl_s=86_400)
        self.agent = EdgeAgent(
            cn=self.cn,
            outbox=self.outbox,
            link=link,
            budget=Budget(link, self.outbox),
            catalogue=CATALOGUE,
            connect=connector("127.0.0.1", broker.port, self.cn, terminal_tls(pki, name)),
            interval_s=2.0,
            ack_timeout_s=2.0,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.agent.run(), name=f"agent-{self.cn}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        self.outbox.close()


@pytest.fixture
async def agents(pki: Authority, broker: Broker, tmp_path: Path) -> AsyncIterator[Callable[..., AgentRunner]]:
    made: list[AgentRunner] = []

    def make(name: str = "gauge-1", link: str = "cellular", **changes: Any) -> AgentRunner:
        chosen = profile(link)
        if changes:
            chosen = dataclasses.replace(chosen, **changes)
        runner = AgentRunner(pki, broker, tmp_path, name, chosen)
        made.append(runner)
        runner.start()
        return runner

    yield make
    for runner in made:
        await runner.stop()


def readings(count: int, *, start: int = 0, metric: int = 0, priority: Priority = Priority.P2) -> list[Reading]:
    return [
        Reading(metric=metric, at_ms=T0 + (start + i) * 60_000, value=70.0 + (start + i) / 100, priority=priority)
        for i in range(count)
    ]


async def stored_readings(node: Node) -> dict[tuple[str, int, int], tuple[int, pb.Envelope]]:
    """Every reading in the node's log by (terminal, session, seq), with its offset; fails on a duplicate."""
    found: dict[tuple[str, int, int], tuple[int, pb.Envelope]] = {}
    async with GatewayClient(node.grpc_target, tls=terminal_tls_of_desk(node)) as client:
        async for delivery in client.query_all(gw.QueryRequest(page_size=1000)):
            attributes = delivery.envelope.attributes
            if "edge.seq" not in attributes:
                continue
            terminal, session = attributes["edge.terminal"], int(attributes["edge.session"])
            for first, last in parse_ranges(attributes["edge.seq"]):
                for seq in range(first, last + 1):
                    key = (terminal, session, seq)
                    assert key not in found, f"reading {key} stored twice"
                    found[key] = (delivery.offset, delivery.envelope)
    return found


def terminal_tls_of_desk(node: Node) -> ClientTls:
    """The node's own identity: a gateway reads every kind in its region."""
    config = node.config
    issued = Path(config.tls.ca).parent / "issued"
    return ClientTls(Path(config.tls.ca), issued / "henan-province.chain.pem", issued / "henan-province.key")


async def wait_for_readings(node: Node, count: int, timeout: float = 30.0) -> dict[tuple[str, int, int], Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await stored_readings(node)
        if len(found) >= count or loop.time() > deadline:
            return found
        await asyncio.sleep(0.2)


def measurement_times(found: dict[tuple[str, int, int], tuple[int, pb.Envelope]]) -> set[int]:
    times = set()
    for _, env in found.values():
        for m in env.observation.measurements:
            times.add(m.at.ToMilliseconds())
    return times


# -- exactly once --------------------------------------------------------------------------------------


async def test_readings_arrive_once_with_their_own_timestamps(
    gateway: NodeRunner, agents: Callable[..., AgentRunner]
) -> None:
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1")
    await runner.agent.submit(readings(300))
    found = await wait_for_readings(node, 300)
    assert sorted(seq for (_, session, seq) in found) == list(range(1, 301))
    assert {session for (_, session, _) in found} == {1}
    assert measurement_times(found) == {T0 + i * 60_000 for i in range(300)}  # never rewritten to "now"
    _, env = next(iter(found.values()))
    assert (env.kind, env.region, env.origin.agency) == (pb.OBSERVATION, "410105", "water")
    assert env.observation.station_id == "41010050"
    await eventually(lambda: runner.outbox.stats().total_readings == 0)  # acknowledged, so deleted


async def test_the_broker_killed_mid_stream(
    gateway: NodeRunner, agents: Callable[..., AgentRunner], broker: Broker
) -> None:
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1", link="lan", batch_interval_s=0.05)
    for chunk in range(10):
        await runner.agent.submit(readings(200, start=chunk * 200))
        if chunk == 4:
            broker.kill()  # nothing saved: in-flight QoS 1 messages die with it
            await asyncio.sleep(0.5)
            broker.start()
    found = await wait_for_readings(node, 2000, timeout=60)
    assert len(found) == 2000
    assert measurement_times(found) == {T0 + i * 60_000 for i in range(2000)}


async def test_the_node_restarted(gateway: NodeRunner, agents: Callable[..., AgentRunner]) -> None:
    runner = agents("gauge-1", link="lan", batch_interval_s=0.05)
    await runner.agent.submit(readings(500))
    assert gateway.node is not None
    await wait_for_readings(gateway.node, 100)
    await gateway.stop()
    await runner.agent.submit(readings(500, start=500))  # while the node is away
    node = await gateway.start()
    found = await wait_for_readings(node, 1000, timeout=60)
    assert sorted(seq for (_, _, seq) in found) == list(range(1, 1001))


async def test_an_agent_killed_mid_batch_and_restarted(
    gateway: NodeRunner, pki: Authority, broker: Broker, tmp_path: Path
) -> None:
    outbox_path = tmp_path / "killed.outbox.sqlite"
    outbox = Outbox.open(outbox_path, max_bytes=64 << 20, p2_ttl_s=86_400)
    outbox.put(readings(3000))  # session 1, durable before the agent process ever runs
    outbox.put_series(1, *sampled(5000), chunk_points=500)  # and ten chunks of a sampled block: seqs 3001-8000
    outbox.close()
    issued = pki.dir / "issued"
    config = tmp_path / "edge.toml"
    config.write_text(
        f'link = "lan"\n[broker]\naddress = "127.0.0.1:{broker.port}"\nca = "{pki.dir / "ca.pem"}"\n'
        f'cert = "{issued / "gauge-2.chain.pem"}"\nkey = "{issued / "gauge-2.key"}"\n'
        f'[outbox]\npath = "{outbox_path}"\n[source]\ntype = "stdin"\n',
        encoding="utf-8",
    )

    async def agent_process() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "edge", "--config", str(config), "--log-level", "warning",
            stdin=asyncio.subprocess.PIPE,
        )  # fmt: skip

    node = gateway.node
    assert node is not None
    first = await agent_process()
    await wait_for_readings(node, 1, timeout=30)
    first.send_signal(signal.SIGKILL)  # mid-stream: some batches sent, some acknowledged, some not
    await first.wait()
    second = await agent_process()
    try:
        found = await wait_for_readings(node, 8000, timeout=60)
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    assert {(terminal, session) for (terminal, session, _) in found} == {("410105/water/edge/gauge-2", 1)}
    assert sorted(seq for (_, _, seq) in found) == list(range(1, 8001))


# -- links that fail ---------------------------------------------------------------------------------------


async def test_a_cut_link_sends_p0_before_the_backlog(
    gateway: NodeRunner, agents: Callable[..., AgentRunner], broker: Broker
) -> None:
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1", link="lan", batch_interval_s=0.05)
    await runner.agent.submit(readings(10))
    await wait_for_readings(node, 10)
    broker.stop()  # the link is down: readings pile up on the terminal
    await runner.agent.submit(readings(1500, start=10))
    await runner.agent.submit(readings(3, start=5000, metric=2, priority=Priority.P0))
    await asyncio.sleep(1.0)
    broker.start()
    found = await wait_for_readings(node, 1513, timeout=60)
    assert len(found) == 1513
    alarm_offsets = [offset for (offset, env) in found.values() if "edge.alarm" in env.attributes]
    backlog_offsets = [
        offset for key, (offset, env) in found.items() if key[2] > 10 and "edge.alarm" not in env.attributes
    ]
    assert len(alarm_offsets) == 3
    assert max(alarm_offsets) < min(backlog_offsets)  # the alarms went first


class LossyProxy:
    """A TCP proxy that delays and throttles traffic and cuts connections at random."""

    def __init__(self, target_port: int, *, seed: int = 7) -> None:
        self.target_port = target_port
        self.random = random.Random(seed)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.cuts = 0
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        writers = [writer]
        pipes: list[asyncio.Task[None]] = []
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            writers.append(up_writer)
            lifetime = self.random.uniform(0.5, 2.0)  # then the link drops

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(2048):  # throttled: small pieces, each delayed
                    await asyncio.sleep(self.random.uniform(0.0, 0.01))
                    dst.write(data)
                    await dst.drain()

            pipes = [asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))]
            _, pending = await asyncio.wait(pipes, timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                self.cuts += 1
        except OSError:
            pass
        finally:
            for piping in pipes:
                piping.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for w in writers:
                w.transport.abort()  # a cut link: no goodbye, and nothing left open behind it
            self._handlers.discard(task)


@pytest.mark.soak  # its teardown can take minutes in the full suite: a cancellation still waits somewhere
async def test_a_lossy_slow_link(gateway: NodeRunner, pki: Authority, broker: Broker, tmp_path: Path) -> None:
    node = gateway.node
    assert node is not None
    proxy = LossyProxy(broker.port)
    await proxy.start()
    cn = "410105/water/edge/gauge-1"
    link = dataclasses.replace(profile("cellular"), batch_interval_s=0.05, max_message_bytes=4096)
    outbox = Outbox.open(tmp_path / "lossy.sqlite", max_bytes=64 << 20, p2_ttl_s=86_400)
    agent = EdgeAgent(
        cn=cn,
        outbox=outbox,
        link=link,
        budget=Budget(link, outbox),
        catalogue=CATALOGUE,
        connect=connector("127.0.0.1", proxy.port, cn, terminal_tls(pki, "gauge-1")),
        interval_s=2.0,
        ack_timeout_s=1.0,
    )
    task = asyncio.create_task(agent.run())
    try:
        for chunk in range(8):
            await agent.submit(readings(250, start=chunk * 250))
            await asyncio.sleep(0.2)
        found = await wait_for_readings(node, 2000, timeout=90)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        outbox.close()
        await proxy.stop()
    assert len(found) == 2000
    assert measurement_times(found) == {T0 + i * 60_000 for i in range(2000)}
    assert proxy.cuts >= 1  # the link really did drop under it
    assert agent.connections >= 2


async def test_a_spent_budget_lets_only_p0_through(gateway: NodeRunner, agents: Callable[..., AgentRunner]) -> None:
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1", link="satellite", batch_interval_s=0.05, budget_bytes_per_hour=600)
    await runner.agent.submit(readings(400))  # far more than 600 bytes an hour carries
    await runner.agent.submit(readings(2, start=9000, metric=2, priority=Priority.P0))
    await eventually(lambda: runner.agent.batches_sent >= 1, timeout=20)
    found = await wait_for_readings(node, 2, timeout=30)
    alarms = [env for (_, env) in found.values() if "edge.alarm" in env.attributes]
    assert len(alarms) == 2  # P0 is never held back
    spent = runner.agent.budget.spent(runner.agent.clock())["hour"]
    routine = [key for key, (_, env) in found.items() if "edge.alarm" not in env.attributes]
    assert spent <= 600 + 1500 or not routine  # beyond the budget only P0 went
    assert runner.outbox.stats().total_readings >= 400 - len(routine)


# -- downlink, liveness ----------------------------------------------------------------------------


async def test_commands_reach_the_terminal_and_are_answered(
    gateway: NodeRunner, agents: Callable[..., AgentRunner], pki: Authority
) -> None:
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1")
    await runner.agent.submit(readings(1))
    await wait_for_readings(node, 1)
    command = pb.Envelope(id="cmd-interval-1", kind=pb.COMMAND, region="410105", status=pb.ACTUAL)
    command.origin.agency = "emergency"
    command.origin.region = "410000"
    command.sent_at.GetCurrentTime()
    command.expires_at.FromSeconds(int(command.sent_at.seconds) + 600)
    command.command.targets.append(runner.cn)
    command.command.action = "set_interval"
    command.command.parameters["interval_s"] = "5"
    expired = pb.Envelope()  # for a terminal that is not connected, and expires before it is
    expired.CopyFrom(command)
    expired.id = "cmd-too-late"
    expired.expires_at.FromMilliseconds(command.sent_at.ToMilliseconds() + 1500)
    del expired.command.targets[:]
    expired.command.targets.append("410105/water/edge/gauge-2")
    async with client_as(pki, node, "province-desk") as desk:
        reply = await desk.publish([command, expired])
        assert [r.outcome for r in reply.results] == [gw.PublishResult.ACCEPTED] * 2, reply

        async def answers() -> dict[str, list[int]]:
            got = await desk.query(gw.QueryRequest(filter=gw.Filter(kinds=[pb.COMMAND_ACK]), page_size=100))
            out: dict[str, list[int]] = {}
            for delivery in got.deliveries:
                ack = delivery.envelope.command_ack
                out.setdefault(ack.command_id, []).append(ack.state)
            return out

        for _ in range(100):
            found = await answers()
            if pb.EXECUTED in found.get("cmd-interval-1", []) and found.get("cmd-too-late"):
                break
            await asyncio.sleep(0.1)
    assert found["cmd-interval-1"] == [pb.RECEIVED, pb.EXECUTED]
    assert found["cmd-too-late"] == [pb.EXPIRED]
    assert runner.agent.interval_s == 5.0


async def test_a_silent_terminal_goes_stale_and_the_node_says_so(
    pki: Authority, broker: Broker, tmp_path: Path, agents: Callable[..., AgentRunner]
) -> None:
    runner = NodeRunner(pki, tmp_path / "stale-node", broker.port)
    node = await runner.start(stale_after=1.0)
    try:
        assert node.ingest is not None
        node.ingest.settings = type(node.ingest.settings)(stale_after=1.0, resend_after_s=0.5, check_interval_s=0.1)
        agent = agents("boat-1")
        agent.agent.interval_s = 0.5
        await eventually(lambda: any(t["state"] == "online" for t in node.ingest.report()))  # type: ignore[union-attr]
        await agent.stop()  # silent, and its outbox closed: no more heartbeats
        await eventually(lambda: any(t["state"] in {"stale", "offline"} for t in node.ingest.report()), timeout=15)  # type: ignore[union-attr]
        ssl = terminal_tls_of_desk(node).ssl_context()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"https://127.0.0.1:{node.http_port}/terminals", ssl=ssl) as response,
        ):
            body = await response.json()
        (terminal,) = body["terminals"]
        assert terminal["terminal"] == "410105/water/edge/boat-1"
        assert terminal["state"] in {"stale", "offline"}
        async with GatewayClient(node.grpc_target, tls=terminal_tls_of_desk(node)) as client:
            beats = await client.query(gw.QueryRequest(filter=gw.Filter(kinds=[pb.HEARTBEAT])))
        states = [
            d.envelope.heartbeat.state for d in beats.deliveries if d.envelope.heartbeat.subject.endswith("boat-1")
        ]
        assert states[0] == "online"
        assert states[-1] in {"stale", "offline"}
        metrics = node.metrics.render().decode()
        assert "yiwang_edge_terminals" in metrics
    finally:
        await runner.stop()


async def test_a_batch_naming_another_terminal_is_refused(gateway: NodeRunner, pki: Authority, broker: Broker) -> None:
    node = gateway.node
    assert node is not None
    cn = "410105/water/edge/gauge-1"
    forged = Batch("gauge-2", 1, (Sequenced(1, 1, readings(1)[0]),))  # says gauge-2, sent by gauge-1
    tls = terminal_tls(pki, "gauge-1").ssl_context()
    assert node.ingest is not None
    await asyncio.wait_for(node.ingest.subscribed.wait(), 10)
    async with MqttClient("127.0.0.1", broker.port, client_id=cn, tls=tls) as client:
        await client.publish(wire.topic(cn, "live"), wire.encode_batch(forged), qos=1)
        await client.publish(wire.topic(cn, "live"), b"\x00not a batch", qos=1)
    metrics = node.metrics

    def refused() -> float:
        text = metrics.render().decode()
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("yiwang_edge_refused_total")
        )

    await eventually(lambda: refused() >= 2)
    assert await stored_readings(node) == {}


@pytest.mark.soak
async def test_a_link_cut_for_minutes(gateway: NodeRunner, agents: Callable[..., AgentRunner], broker: Broker) -> None:
    """Two minutes without a broker while a gauge keeps measuring; everything arrives once, P0 first."""
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1", link="cellular", batch_interval_s=0.2)
    broker.stop()
    for minute in range(120):
        await runner.agent.submit(readings(50, start=minute * 50))
        await asyncio.sleep(1.0)
    await runner.agent.submit(readings(2, start=90_000, metric=2, priority=Priority.P0))
    broker.start()
    found = await wait_for_readings(node, 6002, timeout=120)
    assert len(found) == 6002
    alarms = [offset for (offset, env) in found.values() if "edge.alarm" in env.attributes]
    assert max(alarms) < min(offset for (offset, env) in found.values() if "edge.alarm" not in env.attributes)


async def test_the_ledger_is_rebuilt_from_the_log_after_a_crash(
    gateway: NodeRunner, agents: Callable[..., AgentRunner], tmp_path: Path
) -> None:
    """A crash between the log's append and the ledger's commit: the next start replays the log's tail
    into the ledger, so the same readings sent again are not stored twice."""
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1", link="lan", batch_interval_s=0.05)
    await runner.agent.submit(readings(120))
    await wait_for_readings(node, 120)
    await runner.stop()
    await gateway.stop()
    (tmp_path / "node" / "edge-ledger.sqlite").unlink()  # as if its commits never happened
    for leftover in (tmp_path / "node").glob("edge-ledger.sqlite-*"):
        leftover.unlink()
    node = await gateway.start()
    assert node.edge_ledger is not None
    stored = node.edge_ledger.stored("410105/water/edge/gauge-1", 1)
    assert stored.ranges == [(1, 120)]  # rebuilt from the envelopes' edge.* attributes
    assert node.edge_ledger.new("410105/water/edge/gauge-1", 1, range(1, 125)) == [121, 122, 123, 124]


# -- series: sampled blocks --------------------------------------------------------------------------


def series_points(found: dict[tuple[str, int, int], tuple[int, pb.Envelope]]) -> list[tuple[str, int, float]]:
    """(metric, time in ms, value) of every point in the envelopes of ``found``, each envelope once."""
    envelopes = {env.id: env for _, env in found.values()}
    return sorted(
        (point.metric, (point.at_ns or 0) // 1_000_000, point.value)
        for env in envelopes.values()
        for point in measurements(env.observation)
    )


def sampled(count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    at = T0 + (start + np.arange(count, dtype=np.int64)) * 10  # 100 Hz
    return at, np.round(np.sin((start + np.arange(count)) / 50.0), 3)


async def test_series_arrive_once_with_their_own_timestamps(
    gateway: NodeRunner, agents: Callable[..., AgentRunner]
) -> None:
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1", link="lan", batch_interval_s=0.05)
    await runner.agent.submit(readings(3))
    at, values = sampled(60_000)
    chunks = await runner.agent.submit_series(1, at, values)
    assert [(c.first_seq, c.count) for c in chunks] == [(4, 60_000)]  # one outbox row
    await runner.agent.submit(readings(1, start=5, metric=2, priority=Priority.P0))
    found = await wait_for_readings(node, 60_004, timeout=60)
    assert sorted(seq for (_, _, seq) in found) == list(range(1, 60_005))
    points = series_points(found)
    assert [(code, at_ms) for code, at_ms, _ in points if code == "rain_5min"] == [
        ("rain_5min", int(t)) for t in at
    ]  # never rewritten to "now"
    by_time = {at_ms: value for code, at_ms, value in points if code == "rain_5min"}
    assert [by_time[int(t)] for t in at] == values.tolist()
    series_envelopes = {env.id: env for _, env in found.values() if env.observation.series}
    assert len(series_envelopes) == 2  # 60,000 points: more than one envelope may hold
    for env in series_envelopes.values():
        assert env.observation.station_id == "41010050"
        assert env.kind == pb.OBSERVATION
    await eventually(lambda: runner.outbox.stats().total_readings == 0, timeout=30)


async def test_series_through_a_broker_killed_mid_stream(
    gateway: NodeRunner, agents: Callable[..., AgentRunner], broker: Broker
) -> None:
    node = gateway.node
    assert node is not None
    runner = agents("gauge-1", link="cellular", batch_interval_s=0.05)
    for part in range(6):
        await runner.agent.submit_series(1, *sampled(2_000, start=part * 2_000))
        await runner.agent.submit(readings(5, start=part * 5))
        if part == 2:
            broker.kill()
            await asyncio.sleep(0.5)
            broker.start()
    found = await wait_for_readings(node, 12_030, timeout=90)
    assert len(found) == 12_030
    # by the series they came in, not by metric code: a batch that overtakes the birth after the
    # broker's restart names its metric by index (m1), as single readings do
    envelopes = {env.id: env for _, env in found.values()}
    times = sorted(
        int(t) for env in envelopes.values() for series in env.observation.series for t in series_arrays(series).at_ms
    )
    at, _ = sampled(12_000)
    assert times == [int(t) for t in at]


async def test_a_series_sent_again_in_other_pieces_is_stored_once(
    gateway: NodeRunner, pki: Authority, broker: Broker
) -> None:
    """A chunk whose range is partly stored is split: only its new part goes into the log."""
    node = gateway.node
    assert node is not None
    cn = "410105/water/edge/gauge-1"
    tls = terminal_tls(pki, "gauge-1").ssl_context()
    assert node.ingest is not None
    await asyncio.wait_for(node.ingest.subscribed.wait(), 10)
    at, values = sampled(150)
    first = Batch("gauge-1", 1, (), series=(Series(0, Priority.P2, 1, at[:100], values[:100]),))
    again = Batch(
        "gauge-1",
        1,
        (),
        series=(Series(0, Priority.P2, 41, at[40:90], values[40:90]), Series(0, Priority.P2, 91, at[90:], values[90:])),
    )
    async with MqttClient("127.0.0.1", broker.port, client_id=cn, tls=tls) as client:
        await client.publish(wire.topic(cn, "live"), wire.encode_batch(first), qos=1)
        await wait_for_readings(node, 100)
        await client.publish(wire.topic(cn, "hist"), wire.encode_batch(again, compress=False), qos=1)
        found = await wait_for_readings(node, 150)
    assert sorted(seq for (_, _, seq) in found) == list(range(1, 151))  # and none twice (stored_readings checks)
    assert [at_ms for _, at_ms, _ in series_points(found)] == [int(t) for t in at]
