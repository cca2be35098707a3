"""Federation between real node processes: the issue's topology, and a city ``kill -9``-ed mid-stream.

Each node runs as deployed (``python -m gateway.cli gateway --config FILE``), with its own
certificate, data directory and fixed ports. One province, two cities and three counties pass
incidents up by grade and warnings down by area. A county department keeps reporting while the
city between it and the province is killed and later restarted: every report reaches the
province, once, in the order the county stored them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.client import GatewayClient
from gateway.pki import Authority
from gateway.tls import ClientTls
from tests.test_durability import GatewayProcess
from tests.test_federation import (  # noqa: F401 - pki is the module's PKI fixture
    ERQI_ZHONGYUAN_BORDER,
    Network,
    county_incident,
    pki,
    provincial_alert,
    square,
)

REPORTS = 300
BATCH = 10


class NodeProcess(GatewayProcess):
    """A mutual-TLS node process: ready once it answers Info to a client with its own identity."""

    def __init__(self, config: Path, run: str, tls: ClientTls) -> None:
        super().__init__(config, 0)
        self.stderr_path = config.parent / f"{run}.stderr"
        self.tls = tls

    def client(self) -> GatewayClient:
        return GatewayClient(self.target, tls=self.tls)


def identity(ca: Authority, name: str) -> ClientTls:
    issued = ca.dir / "issued"
    return ClientTls(ca.dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key")


async def test_a_city_killed_mid_stream_loses_and_repeats_nothing(pki: Authority, tmp_path: Path) -> None:  # noqa: F811
    net = Network(pki, tmp_path)
    topology = {"henan-province": "", "zhengzhou-city": "henan-province", "zhongyuan-county": "zhengzhou-city"}
    nodes = {
        name: NodeProcess(net.toml(name, parent), f"{name}-1", identity(pki, name)) for name, parent in topology.items()
    }
    restarted: NodeProcess | None = None
    try:
        for node in nodes.values():
            await node.start()
        county = f"127.0.0.1:{net.ports['zhongyuan-county']}"
        async with GatewayClient(county, tls=identity(pki, "zy-emergency")) as client:
            for number in range(REPORTS // BATCH):
                if number == 10:
                    await nodes["zhengzhou-city"].kill9()  # mid-stream: links in both directions cut
                if number == 20:
                    restarted = NodeProcess(
                        net.toml("zhengzhou-city", "henan-province"),
                        "zhengzhou-city-2",
                        identity(pki, "zhengzhou-city"),
                    )
                    await restarted.start()
                batch = [county_incident(f"report-{number * BATCH + i:04d}") for i in range(BATCH)]
                published = await client.publish(batch)
                assert all(r.outcome == gw.PublishResult.ACCEPTED for r in published.results)
                await asyncio.sleep(0.02)
        ids = [f"report-{n:04d}" for n in range(REPORTS)]
        province = f"127.0.0.1:{net.ports['henan-province']}"
        async with GatewayClient(province, tls=identity(pki, "henan-province")) as reader:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while (reply := await reader.get(ids)).missing:
                assert loop.time() < deadline, f"{len(reply.missing)} reports never reached the province"
                await asyncio.sleep(0.2)
            info = await reader.info()
        offsets = {d.envelope.id: d.offset for d in reply.deliveries}
        assert [offsets[i] for i in ids] == sorted(offsets.values())  # the county's order, kept
        assert info.next_offset - info.oldest_offset == REPORTS  # and nothing stored twice
        hops = [h.node for h in reply.deliveries[0].envelope.provenance.hops]
        assert hops == ["zhongyuan-county", "zhengzhou-city", "henan-province"]
        assert all(d.envelope.kind == pb.INCIDENT for d in reply.deliveries)
    finally:
        for node in [*nodes.values(), *([restarted] if restarted else [])]:
            await node.cleanup()


TOPOLOGY = {  # parents first, so that each child finds its parent listening
    "henan-province": "",
    "zhengzhou-city": "henan-province",
    "luoyang-city": "henan-province",
    "zhongyuan-county": "zhengzhou-city",
    "erqi-county": "zhengzhou-city",
    "laocheng-county": "luoyang-city",
}


async def holds(node: NodeProcess, ids: list[str], timeout: float = 30.0) -> None:
    """Waits until the node holds every one of ``ids``."""
    async with node.client() as reader:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while missing := (await reader.get(ids)).missing:
            assert loop.time() < deadline, f"{sorted(missing)} never reached {node.config.stem}"
            await asyncio.sleep(0.1)


async def lacks(node: NodeProcess, ids: list[str]) -> list[str]:
    """Which of ``ids`` the node does not hold."""
    async with node.client() as reader:
        return sorted((await reader.get(ids)).missing)


async def test_six_node_processes_move_incidents_up_by_grade_and_warnings_down_by_area(
    pki: Authority,  # noqa: F811
    tmp_path: Path,
) -> None:
    net = Network(pki, tmp_path)
    nodes = {name: NodeProcess(net.toml(name, parent), name, identity(pki, name)) for name, parent in TOPOLOGY.items()}
    try:
        for node in nodes.values():
            await node.start()
        county = nodes["zhongyuan-county"]
        async with GatewayClient(county.target, tls=identity(pki, "zy-emergency")) as client:
            reply = await client.publish(
                [county_incident("general", pb.GRADE_GENERAL), county_incident("larger", pb.GRADE_LARGER)]
            )
        assert all(r.outcome == gw.PublishResult.ACCEPTED for r in reply.results)
        await holds(nodes["zhengzhou-city"], ["general", "larger"])
        await holds(nodes["henan-province"], ["larger"])

        luoyang_old_town = square(34.6842, 112.4698, 0.002)
        async with GatewayClient(nodes["henan-province"].target, tls=identity(pki, "henan-qxj")) as client:
            reply = await client.publish(
                [
                    provincial_alert("zhengzhou-border", "410100", ERQI_ZHONGYUAN_BORDER),
                    provincial_alert("luoyang-old-town", "410300", luoyang_old_town),
                    provincial_alert("province-wide", "410000", None),  # last: every node gets it
                ]
            )
        assert all(r.outcome == gw.PublishResult.ACCEPTED for r in reply.results)
        reached = {
            "zhengzhou-city": ["zhengzhou-border"],
            "zhongyuan-county": ["zhengzhou-border"],
            "erqi-county": ["zhengzhou-border"],
            "luoyang-city": ["luoyang-old-town"],
            "laocheng-county": ["luoyang-old-town"],
        }
        for name, warnings in reached.items():
            # Each link sends in its log's order: once the province-wide warning is there, whatever
            # the node was to get before it is there too, and nothing else will come.
            await holds(nodes[name], [*warnings, "province-wide"])
            others = sorted({"zhengzhou-border", "luoyang-old-town"} - set(warnings))
            assert await lacks(nodes[name], others) == others, f"a warning reached {name} outside its area"
        # The incidents went up only, and the general one no further than the city.
        assert await lacks(nodes["henan-province"], ["general"]) == ["general"]
        assert await lacks(nodes["erqi-county"], ["general", "larger"]) == ["general", "larger"]
    finally:
        for node in nodes.values():
            await node.cleanup()
