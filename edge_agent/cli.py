"""`yiwang edge`: run an edge agent from its config, or a fleet of simulated terminals."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from cryptography import x509

from edge_agent.agent import EdgeAgent
from edge_agent.config import EdgeConfig, load_edge_config
from edge_agent.links import Budget, profile
from edge_agent.model import Metric, Priority, Reading
from edge_agent.mqtt import MqttClient, Will
from edge_agent.outbox import Outbox
from edge_agent.simulate import SampledSensor, SimulatedTerminal, TerminalKind, fleet
from gateway.config import parse_address
from gateway.errors import ConfigError
from gateway.pki import Authority, Identity, Role
from gateway.tls import ClientTls

log = structlog.get_logger("yiwang.edge")


def connector(
    host: str, port: int, cn: str, tls: ClientTls | None, keepalive: int = 30
) -> Callable[[Will], MqttClient]:
    """Builds a fresh client (with the agent's will) for each connection."""
    context = tls.ssl_context() if tls is not None else None

    def make(will: Will) -> MqttClient:
        return MqttClient(host, port, client_id=cn, tls=context, will=will, keepalive=keepalive)

    return make


async def feed_simulated(agent: EdgeAgent, terminal: SimulatedTerminal, speedup: float, tick_s: float = 1.0) -> None:
    """Advances a simulated terminal with the clock (``speedup`` simulated seconds per second)."""
    started_real = time.time()
    started_sim = terminal.start_ms
    while True:
        now_sim = started_sim + int((time.time() - started_real) * speedup * 1000)
        readings = terminal.advance(now_sim)
        if readings:
            await agent.submit(readings)
        await asyncio.sleep(tick_s)


async def feed_sampled(agent: EdgeAgent, sensor: SampledSensor, speedup: float, tick_s: float = 1.0) -> None:
    """Samples a terminal's high-rate sensor with the clock and submits each tick's samples as one
    block (``EdgeAgent.submit_series``: one outbox row, however many samples)."""
    started_real = time.time()
    next_ms = sensor.terminal.start_ms
    while True:
        now_sim = sensor.terminal.start_ms + int((time.time() - started_real) * speedup * 1000)
        points = int((now_sim - next_ms) * sensor.rate_hz / 1000)
        if points > 0:
            at_ms, values = sensor.block(next_ms, points)
            await agent.submit_series(sensor.metric.index, at_ms, values)
            next_ms = sensor.next_start(next_ms, points)
        await asyncio.sleep(tick_s)


async def feed_stdin(agent: EdgeAgent) -> None:
    """Readings as JSON lines on stdin: {"metric": 0, "at_ms": ..., "value": ..., "priority": 2, ...}."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    number = 0
    while line := await reader.readline():
        number += 1
        try:
            raw = json.loads(line)
            reading = Reading(
                metric=int(raw["metric"]),
                at_ms=int(raw["at_ms"]),
                value=float(raw.get("value", 0.0)),
                priority=Priority(int(raw.get("priority", 2))),
                lat=raw.get("lat"),
                lon=raw.get("lon"),
                text=str(raw.get("text", "")),
                key=str(raw.get("key", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            print(f"yiwang edge: stdin line {number}: not a reading: {exc}", file=sys.stderr)
            continue
        await agent.submit([reading])


def build_agent(config: EdgeConfig, catalogue: tuple[Metric, ...]) -> tuple[EdgeAgent, Outbox]:
    host, port = parse_address(config.broker.address, "broker.address", config.file)
    tls: ClientTls | None = None
    cn = config.terminal.cn
    if not config.broker.insecure:
        tls = ClientTls(config.path(config.broker.ca), config.path(config.broker.cert), config.path(config.broker.key))
        cert = x509.load_pem_x509_certificate(config.path(config.broker.cert).read_bytes())
        identity = Identity.of(cert)
        if identity.role is not Role.EDGE:
            raise ConfigError(f"{identity.uri} is not an edge identity", key="broker.cert", source=config.file)
        cn = identity.path
    link = profile(config.link)
    outbox = Outbox.open(
        config.path(config.outbox.path), max_bytes=config.max_outbox_bytes, p2_ttl_s=config.outbox.p2_ttl_s
    )
    agent = EdgeAgent(
        cn=cn,
        outbox=outbox,
        link=link,
        budget=Budget(link, outbox),
        catalogue=catalogue,
        connect=connector(host, port, cn, tls, config.broker.keepalive_s),
        interval_s=config.terminal.interval_s,
    )
    return agent, outbox


async def run_agent(config: EdgeConfig) -> None:
    source = config.source
    terminal: SimulatedTerminal | None = None
    if source.type == "simulate":
        name = config.terminal.cn.rsplit("/", 1)[-1] if config.terminal.cn else "terminal"
        terminal = SimulatedTerminal(TerminalKind(source.kind), name, "410100", source.seed, int(time.time() * 1000))
    catalogue = terminal.catalogue() if terminal is not None else ()
    agent, outbox = build_agent(config, catalogue)
    feed = feed_simulated(agent, terminal, source.speedup) if terminal is not None else feed_stdin(agent)
    try:
        await run_until_stopped([agent.run(), feed], until_signalled())
    finally:
        outbox.close()


async def run_until_stopped(work: list[Coroutine[Any, Any, None]], stop: Coroutine[Any, Any, None]) -> None:
    """Runs ``work`` until ``stop`` returns (then cancels it) or a piece of it fails (then raises)."""
    tasks = [asyncio.create_task(w) for w in work]
    waiter = asyncio.create_task(stop)
    done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
    for task in [*tasks, waiter]:
        task.cancel()
    await asyncio.gather(*tasks, waiter, return_exceptions=True)
    for task in done:
        if task is not waiter and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def until_signalled() -> None:
    """Returns on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def simulate(args: argparse.Namespace) -> None:
    """N simulated terminals, each with its own agent and outbox, against one broker."""
    host, port = parse_address(args.broker, "--broker", "command line")
    data = Path(args.data)
    await asyncio.to_thread(data.mkdir, parents=True, exist_ok=True)
    start_ms = int(time.time() * 1000)
    terminals = fleet(args.terminals, region=args.region, seed=args.seed, start_ms=start_ms, profile=args.profile)
    authority = Authority(Path(args.pki)) if args.pki else None
    agents: list[tuple[EdgeAgent, SimulatedTerminal]] = []
    sensors = {
        t.name: SampledSensor(t, rate_hz=args.sample_hz, seed=args.seed) for t in terminals if args.sample_hz > 0
    }
    outboxes: list[Outbox] = []
    link = profile(args.profile)
    for terminal in terminals:
        tls = None
        cn = f"{terminal.region}/{args.agency}/edge/{terminal.name}"
        if authority is not None:
            identity = authority.identity(Role.EDGE, terminal.region, terminal.name, args.agency)
            issued = authority.dir / "issued"
            if not (issued / f"{terminal.name}.chain.pem").exists():
                authority.issue(identity)
            tls = ClientTls(
                authority.dir / "ca.pem", issued / f"{terminal.name}.chain.pem", issued / f"{terminal.name}.key"
            )
            cn = identity.path
        outbox = Outbox.open(data / f"{terminal.name}.outbox.sqlite", max_bytes=64 << 20, p2_ttl_s=86_400)
        outboxes.append(outbox)
        agent = EdgeAgent(
            cn=cn,
            outbox=outbox,
            link=link,
            budget=Budget(link, outbox),
            catalogue=sensors[terminal.name].catalogue() if sensors else terminal.catalogue(),
            connect=connector(host, port, cn, tls),
            interval_s=60.0,
        )
        agents.append((agent, terminal))
    print(
        f"yiwang edge simulate: {len(agents)} terminals on {args.profile} links to {args.broker}, "
        f"{args.speedup:g}x time; Ctrl-C stops",
        flush=True,
    )
    work: list[Coroutine[Any, Any, None]] = []
    for agent, terminal in agents:
        work += [agent.run(), feed_simulated(agent, terminal, args.speedup)]
        if sensors:
            work.append(feed_sampled(agent, sensors[terminal.name], args.speedup))
    try:
        await run_until_stopped(work, asyncio.sleep(args.duration) if args.duration else until_signalled())
    finally:
        for outbox in outboxes:
            outbox.close()
    sent = sum(a.batches_sent for a, _ in agents)
    print(f"yiwang edge simulate: stopped after {sent} batches", flush=True)


def edge(args: argparse.Namespace) -> int:
    if args.edge_command == "simulate":
        asyncio.run(simulate(args))
        return 0
    if not args.config:
        raise ConfigError("give --config FILE (or `yiwang edge simulate ...`)")
    asyncio.run(run_agent(load_edge_config(Path(args.config))))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "edge",
        parents=[common],
        help="run a field terminal's edge agent, or simulated terminals",
        description="Runs an edge agent: readings go to a durable outbox and on to the gateway over MQTT, "
        "in batches sized to the link, by priority, within its byte budget.",
    )
    p.add_argument("--config", metavar="FILE", help="the agent's config (TOML)")
    p.set_defaults(run=edge, edge_command="")
    actions = p.add_subparsers(dest="edge_command", metavar="ACTION")
    q = actions.add_parser("simulate", help="simulated terminals of mixed kinds (rain, river, slope, boats, ...)")
    q.add_argument("--terminals", type=int, default=10)
    q.add_argument("--profile", default="cellular", help="link profile: lan, cellular, satellite")
    q.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT")
    q.add_argument("--pki", metavar="DIR", help="issue each terminal a certificate from this CA (mutual TLS)")
    q.add_argument("--agency", default="water")
    q.add_argument("--region", default="410100", help="the city whose counties the terminals are spread over")
    q.add_argument("--data", default="edge-data", metavar="DIR", help="where the terminals' outboxes live")
    q.add_argument("--speedup", type=float, default=1.0, help="simulated seconds per second")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--sample-hz",
        type=float,
        default=0.0,
        metavar="HZ",
        help="also sample a high-rate sensor per terminal at HZ and submit it in blocks (series); 0: off",
    )
    q.add_argument("--duration", type=float, default=0, metavar="S", help="stop after S seconds")
