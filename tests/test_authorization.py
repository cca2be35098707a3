"""The sharing policy enforced on identities from client certificates: publishing, reading, durable names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from yiwang.v1 import gateway_pb2 as gw

from gateway.node import Node
from gateway.pki import Authority, Role
from tests import factories
from tests.conftest import client_as, henan_network, running_tls_node

DOMAIN = "yjt.henan.gov.cn"
REJECTED = gw.PublishResult.REJECTED
ACCEPTED = gw.PublishResult.ACCEPTED
PERMISSION_DENIED = 7


@pytest.fixture
def pki(tmp_path: Path) -> Authority:
    return henan_network(tmp_path / "pki", (Role.PLATFORM, "410000", "province-desk", "emergency"))


@pytest.fixture
async def node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    async with running_tls_node(pki, tmp_path / "data") as running:
        yield running


async def test_publishing_is_limited_to_ones_own_agency_and_region(node: Node, pki: Authority) -> None:
    async with client_as(pki, node, "jinshui-water") as water:
        reply = await water.publish(
            [
                factories.observation(envelope_id="own", region="410105", agency="water"),
                factories.observation(envelope_id="forged-origin", region="410105", agency="meteorology"),
                factories.observation(envelope_id="other-county", region="410102", agency="water"),
                factories.incident(envelope_id="own-incident", region="410105"),  # origin emergency: not its own
                factories.observation(envelope_id="own-too", region="410105", agency="water"),
            ]
        )
    outcomes = [(r.id, r.outcome, r.code, r.field) for r in reply.results]
    assert outcomes == [
        ("own", ACCEPTED, 0, ""),
        ("forged-origin", REJECTED, PERMISSION_DENIED, "origin.agency"),
        ("other-county", REJECTED, PERMISSION_DENIED, "region"),
        ("own-incident", REJECTED, PERMISSION_DENIED, "origin.agency"),
        ("own-too", ACCEPTED, 0, ""),
    ]
    assert [r.offset for r in reply.results if r.outcome == ACCEPTED] == [1, 2]
    assert "you cannot speak for it" in reply.results[1].reason
    metrics = node.metrics.render().decode()
    assert 'yiwang_permission_denials_total{action="publish"} 3.0' in metrics


async def seed(pki: Authority, node: Node) -> None:
    async with client_as(pki, node, "zz-qxj") as met, client_as(pki, node, "zz-yjj") as emergency:
        for client, envelope in [
            (met, factories.alert(envelope_id="alert-zhongyuan", region="410102")),
            (met, factories.alert(envelope_id="alert-zhengzhou", region="410100")),
            (met, factories.observation(envelope_id="rain-jinshui", region="410105", agency="meteorology")),
            (emergency, factories.incident(envelope_id="incident-jinshui", region="410105")),
        ]:
            reply = await client.publish([envelope])
            assert reply.results[0].outcome == ACCEPTED, reply
    async with client_as(pki, node, "jinshui-water") as water:
        reply = await water.publish(
            [factories.observation(envelope_id="level-jinshui", region="410105", agency="water")]
        )
        assert reply.results[0].outcome == ACCEPTED


async def test_readers_see_only_what_the_policy_shares(node: Node, pki: Authority) -> None:
    await seed(pki, node)
    expectations = {
        # the Jinshui water bureau: its own readings, rainfall (flood forecasting), its city's warning
        "jinshui-water": ["alert-zhengzhou", "rain-jinshui", "level-jinshui"],
        # Zhongyuan's: warnings of its own district and its city; nothing of Jinshui
        "zhongyuan-water": ["alert-zhongyuan", "alert-zhengzhou"],
        # the province platform sees everything of its province
        "province-desk": ["alert-zhongyuan", "alert-zhengzhou", "rain-jinshui", "incident-jinshui", "level-jinshui"],
    }
    for name, expected in expectations.items():
        async with client_as(pki, node, name) as client:
            queried = [d.envelope.id async for d in client.query_all(gw.QueryRequest(page_size=2))]
            assert queried == expected, name
            call = client.subscribe(gw.SubscribeRequest(position=gw.OLDEST))
            seen: list[str] = []
            try:
                while len(seen) < len(expected):
                    batch = await asyncio.wait_for(call.read(), 30)
                    assert isinstance(batch, gw.DeliveryBatch)
                    seen += [d.envelope.id for d in batch.deliveries]
            finally:
                call.cancel()
            assert seen == expected, name
            got = await client.get(["incident-jinshui", "level-jinshui"])
            visible = {d.envelope.id for d in got.deliveries}
            assert visible == {"incident-jinshui", "level-jinshui"} & set(expected), name
            assert set(got.missing) == {"incident-jinshui", "level-jinshui"} - visible, name


async def test_durable_names_belong_to_their_identity(node: Node, pki: Authority) -> None:
    await seed(pki, node)
    async with client_as(pki, node, "province-desk") as desk, client_as(pki, node, "jinshui-water") as water:
        assert await desk.ack("duty", 4) == 4
        assert await water.ack("duty", 2) == 2  # the same name, another identity: its own position
        assert await desk.ack("duty", 4) == 4


async def test_denials_are_audited(node: Node, pki: Authority) -> None:
    async with client_as(pki, node, "jinshui-water") as water:
        await water.publish([factories.observation(region="410102", agency="water")])
    assert node.audit is not None
    node.audit.close()
    lines = (node.config.data_dir / "audit.log").read_text(encoding="utf-8").splitlines()
    denials = [json.loads(line) for line in lines if '"permission_denied"' in line]
    assert denials
    assert denials[0]["identity"] == f"spiffe://{DOMAIN}/410105/water/department/jinshui-water"
    assert denials[0]["field"] == "region"
