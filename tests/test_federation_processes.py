"""Federation between real node processes: a city node ``kill -9``-ed mid-stream and started again.

Each node runs as deployed (``python -m gateway.cli gateway --config FILE``), with its own
certificate, data directory and fixed ports. A county department keeps reporting while the city
between it and the province is killed and later restarted: every report reaches the province, once,
in the order the county stored them.
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
from tests.test_federation import Network, county_incident, pki  # noqa: F401 - pki is the module's PKI fixture

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
