"""Roles x kinds x regions through a real node: what each identity may publish and read is exactly what
the sharing policy decides (tests/test_policy.py checks the decisions themselves)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.node import Node
from gateway.pki import Authority, Identity, Role
from gateway.policy import Policy
from gateway.selection import RECORD, record_of
from tests import factories
from tests.conftest import client_as, running_tls_node

IDENTITIES = [
    (Role.GATEWAY, "410100", "zhengzhou-city", "zhengzhou-city"),
    (Role.PLATFORM, "410100", "zz-desk", "emergency"),
    (Role.DEPARTMENT, "410105", "jinshui-water", "water"),
    (Role.DEPARTMENT, "410102", "zy-met", "meteorology"),
    (Role.ADAPTER, "410105", "js-hj212", "ecology_environment"),
    (Role.EDGE, "410105", "gauge-17", "water"),
]
KINDS = [pb.ALERT, pb.INCIDENT, pb.OBSERVATION, pb.POSITION, pb.RESOURCE, pb.COMMAND, pb.COMMAND_ACK, pb.HEARTBEAT]
REGIONS = ["410105", "410102", "410202"]  # Jinshui, Zhongyuan (same city), Kaifeng's Longting (another city)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    ca = Authority.init(tmp_path_factory.mktemp("matrix") / "pki", trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    for role, region, name, principal in IDENTITIES:
        ca.issue(ca.identity(role, region, name, principal))
    return ca


@pytest.fixture
async def node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    async with running_tls_node(pki, tmp_path / "data") as running:
        yield running


def envelope(kind: int, region: str, agency: str, envelope_id: str) -> pb.Envelope:
    """A valid envelope of any kind for the region, in the agency's name."""
    env = factories.observation(envelope_id=envelope_id, region=region, agency=agency)
    env.ClearField("observation")
    env.kind = kind  # type: ignore[assignment]
    if kind == pb.ALERT:
        env.alert.infos.add(event="暴雨")
    elif kind == pb.INCIDENT:
        env.incident.CopyFrom(pb.Incident(incident_id="i-1", event_type="11B33", stage=pb.STAGE_INITIAL))
    elif kind == pb.OBSERVATION:
        env.observation.station_id = "s-1"
        env.observation.measurements.add(metric="39", value=1.0)
    elif kind == pb.POSITION:
        env.position.unit_id = "u-1"
    elif kind == pb.RESOURCE:
        env.resource.resource_id = "r-1"
    elif kind == pb.COMMAND:
        env.command.targets.append("gauge-17")
        env.command.action = "report_now"
    elif kind == pb.COMMAND_ACK:
        env.command_ack.CopyFrom(pb.CommandAck(command_id="c-1", state=pb.EXECUTED))
    else:
        env.heartbeat.subject = "s-1"
    return env


async def test_publish_and_read_follow_the_policy(node: Node, pki: Authority) -> None:
    policy = Policy.load()
    stored: list[pb.Envelope] = []
    for role, region, name, principal in IDENTITIES:
        who = Identity("yjt.henan.gov.cn", region, principal, role, name)
        origin = principal if role is not Role.GATEWAY else "water"
        batch = [
            envelope(kind, where, origin, f"{name}-{pb.Kind.Name(kind)}-{where}")
            for kind, where in itertools.product(KINDS, REGIONS)
        ]
        async with client_as(pki, node, name) as client:
            reply = await client.publish(batch)
        for env, result in zip(batch, reply.results, strict=True):
            decision = policy.may_publish(who, env)
            expected = gw.PublishResult.ACCEPTED if decision.allowed else gw.PublishResult.REJECTED
            assert result.outcome == expected, (name, env.id, result.reason, decision.reason)
            if decision.allowed:
                stored.append(env)
            else:
                assert result.code == 7
                assert result.field == decision.field
    assert stored, "the policy let nobody publish anything"
    for role, region, name, principal in IDENTITIES:
        who = Identity("yjt.henan.gov.cn", region, principal, role, name)
        may_read = policy.reader(who)
        expected_ids = [e.id for e in stored if may_read is not None and may_read(RECORD.unpack(record_of(e)))]
        async with client_as(pki, node, name) as client:
            seen = [d.envelope.id async for d in client.query_all(gw.QueryRequest(page_size=50))]
        assert seen == expected_ids, name
