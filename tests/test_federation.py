"""Federation: a province, a city and a county node linked over mutual TLS, store-and-forward."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import federation_pb2 as fed
from yiwang.v1 import gateway_pb2 as gw

from gateway import federation
from gateway.config import from_dict
from gateway.federation import JITTER, LINK_METHOD, MAX_RETRY_S
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.regions import default_table
from gateway.routing import ALARM_ATTRIBUTE, SUMMARY_ATTRIBUTE
from gateway.selection import FLAG_RELAYED, FLAGS_AT, RECORD
from gateway.signing import Verifier
from gateway.summaries import CURSOR as SUMMARIES_CURSOR
from gateway.tls import ClientTls
from tests import factories
from tests.conftest import client_as, free_port, issued_signer

DOMAIN = "yjt.henan.gov.cn"
GATEWAYS = {
    "henan-province": "410000",
    "zhengzhou-city": "410100",
    "zhongyuan-county": "410102",
    "erqi-county": "410103",
    "luoyang-city": "410300",
    "laocheng-county": "410302",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    ca = Authority.init(tmp_path_factory.mktemp("federation") / "pki", trust_domain=DOMAIN)
    for name, region in GATEWAYS.items():
        ca.issue(ca.identity(Role.GATEWAY, region, name, name), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.GATEWAY, "410105", "jinshui-county", "jinshui-county"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.DEPARTMENT, "410102", "zy-emergency", "emergency"))
    ca.issue(ca.identity(Role.DEPARTMENT, "410102", "zy-water", "water"))
    ca.issue(ca.identity(Role.DEPARTMENT, "410000", "henan-qxj", "meteorology"))
    return ca


def gateway_uri(name: str) -> str:
    return f"spiffe://{DOMAIN}/{GATEWAYS[name]}/{name}/gateway/{name}"


class Network:
    """Nodes of one test, started and restarted with their own data directories and fixed ports."""

    def __init__(
        self,
        pki: Authority,
        folder: Path,
        reports: dict[str, Any] | None = None,
        summaries: dict[str, Any] | None = None,
        *,
        routing: Path | None = None,
        link: dict[str, Any] | None = None,
        limits: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.pki = pki
        self.folder = folder
        self.reports = reports or {}
        self.summaries = summaries or {}
        self.routing = routing  # a routing file of the nodes' own
        self.link = link or {}  # more settings of a child's [parent] section
        self.limits = limits or {}  # more [limits] settings, by node
        self.ports = {name: free_port() for name in GATEWAYS}
        self.nodes: dict[str, Node] = {}

    def config(self, name: str, parent: str = "") -> Any:
        return from_dict(self.table(name, parent), source=f"test {name}")

    def toml(self, name: str, parent: str = "") -> Path:
        """The node's configuration as a TOML file, as the command line reads it."""
        lines = []
        for section, values in self.table(name, parent).items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        path = self.folder / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def table(self, name: str, parent: str = "") -> dict[str, Any]:
        issued = self.pki.dir / "issued"
        table: dict[str, Any] = {
            "node": {"id": name, "region": GATEWAYS[name]},
            "listen": {"grpc": f"127.0.0.1:{self.ports[name]}", "http": "127.0.0.1:0"},
            "log": {"data_dir": str(self.folder / name), "fsync": False},
            "limits": {"admission_workers": 0, **self.limits.get(name, {})},
            "tls": {
                "ca": str(self.pki.dir / "ca.pem"),
                "cert": str(issued / f"{name}.chain.pem"),
                "key": str(issued / f"{name}.key"),
                "crl": str(self.pki.dir / "crl.pem"),
            },
        }
        if parent:
            table["parent"] = {"address": f"127.0.0.1:{self.ports[parent]}", "identity": gateway_uri(parent)}
            table["parent"].update(self.link)
        if self.routing is not None:
            table["routing"] = {"file": str(self.routing)}
        if self.reports:
            table["reports"] = self.reports
        if self.summaries:
            table["summaries"] = self.summaries
        return table

    async def start(self, name: str, parent: str = "") -> Node:
        node = Node(self.config(name, parent), grace_s=0.2)
        await node.start()
        self.nodes[name] = node
        return node

    async def stop(self, name: str) -> None:
        await self.nodes.pop(name).stop()

    async def close(self) -> None:
        for name in list(self.nodes):
            await self.stop(name)


@pytest.fixture
async def network(pki: Authority, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Network]:
    reports = request.node.get_closest_marker("reports")
    summaries = request.node.get_closest_marker("summaries")
    net = Network(pki, tmp_path, reports.kwargs if reports else None, summaries.kwargs if summaries else None)
    try:
        await net.start("henan-province")
        await net.start("zhengzhou-city", parent="henan-province")
        await net.start("zhongyuan-county", parent="zhengzhou-city")
        yield net
    finally:
        await net.close()


async def hops_at(node: Node, envelope_id: str) -> list[str] | None:
    """The hop nodes of an envelope in a node's log, or None if it is not there."""
    assert node.log is not None
    found = await node.log.find([envelope_id])
    if envelope_id not in found:
        return None
    batch, index = found[envelope_id]
    env = gw.DeliveryBatch.FromString(batch.entry(index)).deliveries[0].envelope
    return [hop.node for hop in env.provenance.hops]


async def reaches(node: Node, envelope_id: str, timeout: float = 10.0) -> list[str]:
    """Waits until the envelope is in the node's log; returns its hop nodes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (hops := await hops_at(node, envelope_id)) is None:
        if loop.time() > deadline:
            raise AssertionError(f"{envelope_id} did not reach {node.config.node.id}")
        await asyncio.sleep(0.05)
    return hops


async def moved_past(node: Node, cursor: str, envelope_id: str) -> None:
    """Waits until a link's cursor in ``node``'s log has moved past the envelope."""
    assert node.log is not None
    ((batch, index),) = (await node.log.find([envelope_id])).values()
    while (await node.log.load_position(cursor) or 0) <= batch.first_offset + index:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


def county_incident(envelope_id: str, grade: pb.IncidentGrade = pb.GRADE_LARGER) -> pb.Envelope:
    """The initial report of an incident of its own (a report of the same incident with a higher
    grade would take this one up with it)."""
    env = factories.incident(envelope_id=envelope_id, region="410102", grade=grade)
    env.incident.incident_id = f"incident-{envelope_id}"
    return env


def square(lat: float, lon: float, d: float) -> list[tuple[float, float]]:
    return [(lat - d, lon - d), (lat - d, lon + d), (lat + d, lon + d), (lat + d, lon - d), (lat - d, lon - d)]


ERQI_TOWER = square(34.7536, 113.6650, 0.002)  # inside 二七区 (410103) only
ERQI_ZHONGYUAN_BORDER = square(34.7046, 113.6041, 0.003)  # across 中原区 (410102) and 二七区


def provincial_alert(envelope_id: str, region: str, area: list[tuple[float, float]] | None) -> pb.Envelope:
    env = factories.alert(envelope_id=envelope_id, region=region, polygon=area)
    env.origin.region = "410000"
    if area is None:
        env.ClearField("geometry")
        env.alert.infos[0].ClearField("areas")
    return env


async def test_incidents_go_up_as_far_as_their_grade_with_a_hop_record_each(network: Network, pki: Authority) -> None:
    county, city, province = (network.nodes[n] for n in ("zhongyuan-county", "zhengzhou-city", "henan-province"))
    async with client_as(pki, county, "zy-emergency") as client:
        reply = await client.publish([county_incident("general", pb.GRADE_GENERAL), county_incident("larger")])
    assert [r.outcome for r in reply.results] == [gw.PublishResult.ACCEPTED] * 2
    assert await reaches(province, "larger") == ["zhongyuan-county", "zhengzhou-city", "henan-province"]
    assert await hops_at(city, "larger") == ["zhongyuan-county", "zhengzhou-city"]
    assert await reaches(city, "general") == ["zhongyuan-county", "zhengzhou-city"]
    # A general (一般) incident stops at the city: its link up has moved past it without sending it.
    await moved_past(city, "federation/up", "general")
    assert await hops_at(province, "general") is None


async def test_a_follow_up_that_raises_the_grade_takes_the_chain_up(network: Network, pki: Authority) -> None:
    county, city, province = (network.nodes[n] for n in ("zhongyuan-county", "zhengzhou-city", "henan-province"))
    chain = []
    for number, (grade, stage) in enumerate(
        [(pb.GRADE_GENERAL, pb.STAGE_INITIAL), (pb.GRADE_GENERAL, pb.STAGE_FOLLOW_UP)], start=1
    ):
        report = county_incident(f"fire-{number}", grade)
        report.incident.incident_id, report.incident.stage, report.incident.report_number = "fire", stage, number
        chain.append(report)
    async with client_as(pki, county, "zy-emergency") as client:
        await client.publish(chain)
        await reaches(city, "fire-2")
        await moved_past(city, "federation/up", "fire-2")
        assert await hops_at(province, "fire-1") is None  # a general incident stays with the city
        raised = county_incident("fire-3", pb.GRADE_LARGER)
        raised.incident.incident_id, raised.incident.stage, raised.incident.report_number = (
            "fire",
            pb.STAGE_FOLLOW_UP,
            3,
        )
        await client.publish([raised])
    for report_id in ("fire-1", "fire-2", "fire-3"):  # the whole chain, once the grade is 较大
        assert await reaches(province, report_id) == ["zhongyuan-county", "zhengzhou-city", "henan-province"]
    assert province.log is not None
    found = await province.log.find(["fire-1", "fire-2", "fire-3"])
    offsets = [batch.first_offset + index for batch, index in (found[f"fire-{n}"] for n in (1, 2, 3))]
    assert offsets == sorted(offsets)  # in the order of the chain


async def test_a_provincial_warning_reaches_exactly_the_counties_its_polygon_touches(
    network: Network, pki: Authority
) -> None:
    """The issue's topology: one province, two cities, three counties."""
    await network.start("erqi-county", parent="zhengzhou-city")
    await network.start("luoyang-city", parent="henan-province")
    await network.start("laocheng-county", parent="luoyang-city")
    for name in ("zhongyuan-county", "erqi-county", "laocheng-county"):
        link = network.nodes[name].parent_link
        assert link is not None
        await asyncio.wait_for(link.connected.wait(), 10)
    luoyang_old_town = square(34.6842, 112.4698, 0.002)
    async with client_as(pki, network.nodes["henan-province"], "henan-qxj") as client:
        reply = await client.publish(
            [
                provincial_alert("zhengzhou-border", "410100", ERQI_ZHONGYUAN_BORDER),
                provincial_alert("luoyang-old-town", "410300", luoyang_old_town),
            ]
        )
    assert [r.outcome for r in reply.results] == [gw.PublishResult.ACCEPTED] * 2
    expected = {
        "zhengzhou-border": {"zhengzhou-city", "zhongyuan-county", "erqi-county"},
        "luoyang-old-town": {"luoyang-city", "laocheng-county"},
    }
    for warning, reached in expected.items():
        for name in reached:
            await reaches(network.nodes[name], warning)
    for warning, reached in expected.items():  # and, once every link has moved past it, nowhere else
        for name in set(network.nodes) - reached - {"henan-province"}:
            node = network.nodes[name]
            parent = next(p for p, n in network.nodes.items() if GATEWAYS[p] == default_table().parent(GATEWAYS[name]))
            if await hops_at(network.nodes[parent], warning) is None:
                continue  # the parent has not got it either: its own check, one level up, covers it
            child_path = f"{GATEWAYS[name]}/{name}/gateway/{name}"
            await moved_past(network.nodes[parent], f"federation/down/{child_path}", warning)
            assert await hops_at(node, warning) is None, f"{warning} reached {name}"


async def test_warnings_go_down_to_the_counties_their_area_touches(network: Network, pki: Authority) -> None:
    province = network.nodes["henan-province"]
    async with client_as(pki, province, "henan-qxj") as client:
        reply = await client.publish(
            [
                provincial_alert("across", "410100", ERQI_ZHONGYUAN_BORDER),
                provincial_alert("erqi-only", "410100", ERQI_TOWER),  # for the city, its area in Erqi
                provincial_alert("province-wide", "410000", None),  # no area: its region decides
            ]
        )
    assert [r.outcome for r in reply.results] == [gw.PublishResult.ACCEPTED] * 3
    city, county = network.nodes["zhengzhou-city"], network.nodes["zhongyuan-county"]
    assert await reaches(county, "across") == ["henan-province", "zhengzhou-city", "zhongyuan-county"]
    assert await reaches(county, "province-wide") == ["henan-province", "zhengzhou-city", "zhongyuan-county"]
    assert await reaches(city, "erqi-only") == ["henan-province", "zhengzhou-city"]
    # The city's link down to Zhongyuan moves past the Erqi warning without sending it.
    await moved_past(city, "federation/down/410102/zhongyuan-county/gateway/zhongyuan-county", "erqi-only")
    assert await hops_at(county, "erqi-only") is None
    # Nothing went back up where it came from: the province holds each warning once, with one hop.
    assert await hops_at(province, "across") == ["henan-province"]


async def cut_and_restore(network: Network, pki: Authority, seconds: float) -> None:
    """Stops the city between the county and the province for ``seconds`` while the county reports up
    and the province warns down, then starts it again: each side gets everything the other
    published, once, in the order it was published."""
    county, province = network.nodes["zhongyuan-county"], network.nodes["henan-province"]
    up: list[str] = []
    down: list[str] = []
    async with client_as(pki, county, "zy-emergency") as reporter, client_as(pki, province, "henan-qxj") as warner:
        await reporter.publish([county_incident("before")])
        await reaches(province, "before")
        await network.stop("zhengzhou-city")
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while not up or loop.time() < end:
            up.append(f"up-{len(up)}")
            reply = await reporter.publish([county_incident(up[-1])])
            assert reply.results[0].outcome == gw.PublishResult.ACCEPTED
            down.append(f"down-{len(down)}")
            reply = await warner.publish([provincial_alert(down[-1], "410100", ERQI_ZHONGYUAN_BORDER)])
            assert reply.results[0].outcome == gw.PublishResult.ACCEPTED
            await asyncio.sleep(min(0.5, seconds / 10))
    await network.start("zhengzhou-city", parent="henan-province")
    # The county tries its parent again after a pause that grew while the city was away.
    relinked = 10 + MAX_RETRY_S * (1 + JITTER)
    for node, ids in ((province, up), (county, down)):
        assert await reaches(node, ids[-1], timeout=relinked) is not None
        assert node.log is not None
        found = await node.log.find(ids)
        assert sorted(found) == sorted(ids), "lost on the way"
        offsets = [batch.first_offset + index for batch, index in (found[i] for i in ids)]
        assert offsets == sorted(offsets), "out of the order published"
        assert len(set(offsets)) == len(ids)
    assert await reaches(province, "up-0") == ["zhongyuan-county", "zhengzhou-city", "henan-province"]
    assert await reaches(county, "down-0") == ["henan-province", "zhengzhou-city", "zhongyuan-county"]
    assert province.log is not None
    assert province.log.stats().next_offset - 1 == 1 + 2 * len(up)  # "before", the reports, the warnings


async def test_a_link_down_for_a_while_resumes_where_it_stopped(network: Network, pki: Authority) -> None:
    await cut_and_restore(network, pki, 1.0)


@pytest.mark.soak
async def test_a_link_down_for_minutes_resumes_where_it_stopped(network: Network, pki: Authority) -> None:
    await cut_and_restore(network, pki, 180.0)


async def test_only_a_gateway_of_a_direct_subregion_may_link(network: Network, pki: Authority) -> None:
    province = network.nodes["henan-province"]
    issued = pki.dir / "issued"
    for name, expected in (
        ("jinshui-county", "a node of 410105 links under 410100, not under 410000"),
        ("zy-emergency", "only gateway nodes link to their parent"),
    ):
        tls = ClientTls(pki.dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key")
        async with grpc.aio.secure_channel(province.grpc_target, tls.credentials()) as channel:
            # The province refuses on the certificate alone, before it reads anything: writing a hello
            # could race with that refusal, so the test only reads.
            call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(LINK_METHOD)()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert expected in (caught.value.details() or "")


async def link_message(call: grpc.aio.StreamStreamCall[bytes, bytes]) -> fed.LinkMessage:
    raw = await call.read()
    assert isinstance(raw, bytes), raw
    return fed.LinkMessage.FromString(raw)


async def test_a_link_answers_its_batches_in_their_order_while_it_takes_the_next(
    pki: Authority, tmp_path: Path
) -> None:
    """The parent admits a link's next batch while the last one is being made durable; its answers
    still come in the order of the batches, a batch refused whole included."""
    net = Network(pki, tmp_path)
    province = await net.start("henan-province")
    try:
        issued = pki.dir / "issued"
        tls = ClientTls(pki.dir / "ca.pem", issued / "zhengzhou-city.chain.pem", issued / "zhengzhou-city.key")
        async with grpc.aio.secure_channel(province.grpc_target, tls.credentials()) as channel:
            call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(LINK_METHOD)()
            hello = fed.LinkMessage(hello=fed.LinkHello(node_id="zhengzhou-city", region="410100"))
            await call.write(hello.SerializeToString())
            assert (await link_message(call)).WhichOneof("body") == "hello"
            refused = gw.PublishRequest(envelopes=[county_incident("refused")], batch_id=20)
            refused.batch_signatures.add()  # links send full signatures: the batch is refused whole
            batches = [
                gw.PublishRequest(envelopes=[county_incident(f"first-{i}") for i in range(50)], batch_id=10),
                refused,
                gw.PublishRequest(envelopes=[county_incident(f"third-{i}") for i in range(50)], batch_id=30),
            ]
            for batch in batches:
                await call.write(fed.LinkMessage(batch=batch).SerializeToString())
            acks = [(await link_message(call)).ack for _ in batches]
            call.cancel()
        assert [(ack.cursor, ack.accepted, len(ack.refused)) for ack in acks] == [(10, 50, 0), (20, 0, 1), (30, 50, 0)]
        assert "full signature" in acks[1].refused[0].reason
    finally:
        await net.close()


OBSERVATIONS_UP = """\
[[up]]
name = "test-observations-up"
kinds = ["OBSERVATION"]
reach = "province"
reason = "the test moves every observation up"
"""


@pytest.mark.parametrize(("entries", "entry_bytes", "upto"), [(1, 40, 2), (3, 150, 300), (2_000, 190, 2**40)])
def test_the_entries_message_is_written_as_the_generated_classes_write_it(
    entries: int, entry_bytes: int, upto: int
) -> None:
    """A link writes its LinkEntries messages by hand; they are the very bytes protobuf would make,
    with and without records, for short and multi-byte lengths and cursors."""
    data = [bytes([n % 251]) * entry_bytes for n in range(entries)]
    for records in ([], [b"r" * RECORD.size * entries]):
        gathered = federation._Entries()
        gathered.data, gathered.records = list(data), list(records)
        gathered.count, gathered.size, gathered.upto = entries, entries * entry_bytes, upto
        expected = fed.LinkMessage(
            entries=fed.LinkEntries(batch_id=upto, deliveries=b"".join(data)), records=b"".join(records)
        )
        assert gathered.message() == expected.SerializeToString()


@pytest.mark.parametrize("limit", ["entries", "bytes", "parent's limit"])
async def test_a_backlog_of_small_batches_crosses_a_link_in_few_messages(
    pki: Authority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    """What piles up while the parent is away goes in messages of as many entries as the link's
    batch and byte limits allow, across the county's own batches, and no more than the parent
    takes in one batch (it says so when the link opens). The parent appends each message as one
    batch, so its log shows how they went."""
    routing = tmp_path / "routing.toml"
    routing.write_text(OBSERVATIONS_UP, encoding="utf-8")
    net = Network(
        pki,
        tmp_path,
        routing=routing,
        link={"batch": 700 if limit == "entries" else 2000},
        limits={"zhengzhou-city": {"max_batch_envelopes": 400}} if limit == "parent's limit" else None,
    )
    try:
        county = await net.start("zhongyuan-county", parent="zhengzhou-city")
        async with client_as(pki, county, "zy-water") as client:
            for batch in range(5):
                envelopes = [
                    factories.observation(envelope_id=f"obs-{batch}-{i:03d}", region="410102") for i in range(300)
                ]
                reply = await client.publish(envelopes)
                assert [r.outcome for r in reply.results] == [gw.PublishResult.ACCEPTED] * 300
        assert county.log is not None
        sent = await county.log.read(1, 10_000)
        assert [stored.count for stored in sent] == [300] * 5
        sizes = [end - begin for stored in sent for begin, end in (stored.span(i) for i in range(stored.count))]
        if limit == "bytes":
            monkeypatch.setattr(federation, "MAX_BATCH_BYTES", sum(sizes[:450]))  # about 450 entries a message

        city = await net.start("zhengzhou-city")
        assert city.log is not None
        deadline = asyncio.get_running_loop().time() + 30
        while city.log.next_offset <= 1500:  # the link appends in the background
            assert asyncio.get_running_loop().time() < deadline, f"the city has {city.log.next_offset - 1} of 1500"
            await asyncio.sleep(0.05)
        counts = [stored.count for stored in await city.log.read(1, 10_000)]
        if limit == "entries":
            assert counts == [700, 700, 100]
        elif limit == "parent's limit":
            assert counts == [400, 400, 400, 300]
        else:  # each message as many entries as fit in the bytes
            fitting: list[int] = []
            size = count = 0
            for entry in sizes:
                if count and size + entry > federation.MAX_BATCH_BYTES:
                    fitting.append(count)
                    size = count = 0
                size, count = size + entry, count + 1
            assert counts == [*fitting, count]
            assert len(counts) == 4
        ids = [i for stored in await city.log.read(1, 10_000) for i in stored.ids]
        assert ids == [f"obs-{batch}-{i:03d}" for batch in range(5) for i in range(300)]
        await moved_past(county, "federation/up", "obs-4-299")  # each message acknowledged
    finally:
        await net.close()


@pytest.mark.parametrize("shared", [False, True], ids=["own-proofs", "shared"])
async def test_batch_signatures_stay_verifiable_across_hops(network: Network, pki: Authority, shared: bool) -> None:
    """Whether the county got the batch with each envelope's own proof or with one shared signature,
    the links carry each envelope with its full signature, and every level verifies it."""
    signer = issued_signer(pki, "zy-emergency")
    incidents = [county_incident(f"signed-{shared}-{i}") for i in range(3)]
    signature = signer.sign_batch(incidents, shared=shared)
    batch_signatures = [signature] if shared else []
    county, province = network.nodes["zhongyuan-county"], network.nodes["henan-province"]
    async with client_as(pki, county, "zy-emergency") as client:
        reply = await client.publish(
            incidents, certificates=[signer.certificate_der], batch_signatures=batch_signatures
        )
    assert [r.outcome for r in reply.results] == [gw.PublishResult.ACCEPTED] * 3
    for i in range(3):  # the province verified each on entry, with the certificate the city passed on
        await reaches(province, f"signed-{shared}-{i}")
    assert province.log is not None
    batch, index = (await province.log.find([f"signed-{shared}-1"]))[f"signed-{shared}-1"]
    stored = gw.DeliveryBatch.FromString(batch.entry(index)).deliveries[0].envelope
    verifier = Verifier(pki.ca_cert)
    verifier.learn(signer.certificate_der)
    assert verifier.verify(stored) == f"spiffe://{DOMAIN}/410102/emergency/department/zy-emergency"


async def test_route_explain_prints_the_rule_behind_each_hop(network: Network, pki: Authority) -> None:
    county, city = network.nodes["zhongyuan-county"], network.nodes["zhengzhou-city"]
    async with client_as(pki, county, "zy-emergency") as client:
        await client.publish([county_incident("explained", pb.GRADE_GENERAL)])
    await reaches(city, "explained")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "route", "explain", "--config",
        str(network.toml("zhengzhou-city", parent="henan-province")), "explained", "missing-id",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    lines = out.decode().splitlines()
    assert process.returncode == 1  # one of the ids is not there
    assert lines[0] == "explained: INCIDENT for 410102 (中原区) at zhengzhou-city, city 410100"
    assert lines[1] == "came through zhongyuan-county: never sent back to those"
    assert lines[2].startswith("up: not sent: rule incidents-to-city: reaches only the city; ")
    assert "down to 410102 (中原区): not sent: no down rule for INCIDENT" in lines
    assert "'missing-id' is not in the log of zhengzhou-city" in err.decode()


# -- reporting that cannot go missing ----------------------------------------------------------------

SHORT = {"onward_minutes": [0.01] * 4, "follow_up_minutes": [0.01] * 4, "link_tolerance_minutes": 0.01}
SHORT_CHECKS = {**SHORT, "check_interval_s": 0.1}


def overdue_cli(network: Network, name: str, parent: str = "") -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "reports", "overdue", "--config", str(network.toml(name, parent))],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [json.loads(line) for line in result.stdout.splitlines()]


async def overdue_alert(node: Node, kind: str, subject: str, timeout: float = 10.0) -> pb.Envelope:
    """Waits for the overdue alert a node raises in its own log."""
    assert node.log is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for batch in await node.log.read(node.log.oldest_offset, 10_000):
            for delivery in gw.DeliveryBatch.FromString(batch.data).deliveries:
                env = delivery.envelope
                overdue = env.attributes.get("yiwang.overdue")
                if overdue == kind and env.attributes.get("yiwang.overdue.subject") == subject:
                    return env
        if loop.time() > deadline:
            raise AssertionError(f"no {kind} alert for {subject} at {node.config.node.id}")
        await asyncio.sleep(0.05)


@pytest.mark.reports(**SHORT_CHECKS)
async def test_a_report_not_passed_on_in_time_raises_an_alert_that_follows_it_up(
    network: Network, pki: Authority
) -> None:
    county, province = network.nodes["zhongyuan-county"], network.nodes["henan-province"]
    await network.stop("zhengzhou-city")
    report = county_incident("late-report")
    report.incident.incident_id = "flood-7"
    report.incident.stage = pb.STAGE_INITIAL
    async with client_as(pki, county, "zy-emergency") as client:
        await client.publish([report])
    alert = await overdue_alert(county, "onward", "flood-7")
    assert alert.kind == pb.ALERT
    assert alert.alert.infos[0].event == "上报超时"
    assert list(alert.references) == ["late-report"]  # the chain's reports, by id
    assert "reports so far: late-report" in alert.alert.infos[0].description
    listed = await asyncio.to_thread(overdue_cli, network, "zhongyuan-county", "zhengzhou-city")
    assert [(o["kind"], o["subject"], o["alert_raised"]) for o in listed] == [("onward", "flood-7", True)]
    await network.start("zhengzhou-city", parent="henan-province")
    await reaches(province, "late-report")
    await reaches(province, alert.id)  # the duty officers above learn that it was late
    city = network.nodes["zhengzhou-city"]
    assert await hops_at(city, alert.id) == ["zhongyuan-county", "zhengzhou-city"]

    async def met() -> bool:
        return not await asyncio.to_thread(overdue_cli, network, "zhongyuan-county", "zhengzhou-city")

    while not await met():  # noqa: ASYNC110 - the link acknowledged the report: the obligation is met
        await asyncio.sleep(0.1)


@pytest.mark.reports(**{**SHORT_CHECKS, "follow_up_minutes": [0.02] * 4})
async def test_an_open_incident_without_follow_up_is_overdue_at_the_level_above(
    network: Network, pki: Authority
) -> None:
    county, city = network.nodes["zhongyuan-county"], network.nodes["zhengzhou-city"]
    first = county_incident("first-report", pb.GRADE_GENERAL)
    first.incident.incident_id = "collapse-3"
    first.incident.stage = pb.STAGE_INITIAL
    async with client_as(pki, county, "zy-emergency") as client:
        await client.publish([first])
        alert = await overdue_alert(city, "follow_up", "collapse-3")
        assert alert.alert.infos[0].event == "续报超时"
        assert list(alert.references) == ["first-report"]
        final = county_incident("final-report", pb.GRADE_GENERAL)
        final.incident.incident_id = "collapse-3"
        final.incident.stage = pb.STAGE_FINAL
        await client.publish([final])
    await reaches(city, "final-report")
    assert await hops_at(county, alert.id) is None  # an overdue alert never goes down
    # The final report closes the incident: nothing is due any more (the alert stays in the log).
    while await asyncio.to_thread(overdue_cli, network, "zhengzhou-city", "henan-province"):  # noqa: ASYNC110
        await asyncio.sleep(0.1)


@pytest.mark.reports(**SHORT_CHECKS)
async def test_a_child_link_down_too_long_raises_an_alert_at_the_parent(network: Network) -> None:
    city, county = network.nodes["zhengzhou-city"], network.nodes["zhongyuan-county"]
    assert county.parent_link is not None
    await asyncio.wait_for(county.parent_link.connected.wait(), 10)  # the city knows a child only once linked
    await network.stop("zhongyuan-county")
    alert = await overdue_alert(city, "link", "zhongyuan-county")
    assert alert.alert.infos[0].event == "链路中断超时"
    assert "the link of zhongyuan-county is down since" in alert.alert.infos[0].description


async def test_the_report_tracker_waits_for_the_log_instead_of_spinning(network: Network) -> None:
    tracker = network.nodes["zhengzhou-city"].reports
    assert tracker is not None
    checks = 0
    check = tracker.check

    async def counted() -> list[Any]:
        nonlocal checks
        checks += 1
        return await check()

    tracker.check = counted  # type: ignore[method-assign]
    await asyncio.sleep(0.5)  # an idle node, checks every 5 s by default: at most one check here
    assert checks <= 1


# -- station summaries ------------------------------------------------------------------------


async def summaries_at(node: Node, station: str) -> list[pb.Envelope]:
    """The station summaries in a node's log for one station."""
    assert node.log is not None
    found = []
    for stored in await node.log.read(node.log.oldest_offset, 10_000):
        for delivery in gw.DeliveryBatch.FromString(stored.entries(0, stored.count)).deliveries:
            env = delivery.envelope
            if SUMMARY_ATTRIBUTE in env.attributes and env.observation.station_id == station:
                found.append(env)
    return found


def totals(summaries: list[pb.Envelope]) -> dict[str, float]:
    """Count, minimum and maximum of water level (39) over all periods' summaries."""
    values: dict[str, list[float]] = {}
    for env in summaries:
        for m in env.observation.measurements:
            values.setdefault(m.metric, []).append(m.value)
    return {"count": sum(values["39-count"]), "min": min(values["39-min"]), "max": max(values["39-max"])}


async def summed_up(node: Node, station: str, count: int, timeout: float = 15.0) -> list[pb.Envelope]:
    """Waits until the node holds summaries of ``count`` readings of the station."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (found := await summaries_at(node, station)) or totals(found)["count"] < count:
        if loop.time() > deadline:
            raise AssertionError(f"no summary of {count} readings of {station} at {node.config.node.id}")
        await asyncio.sleep(0.1)
    return found


def readings(prefix: str, values: list[float]) -> list[pb.Envelope]:
    return [
        factories.observation(envelope_id=f"{prefix}-{i}", region="410102", value=value)
        for i, value in enumerate(values)
    ]


@pytest.mark.summaries(period_minutes=1 / 60)
async def test_raw_readings_stay_and_a_summary_per_station_goes_up(network: Network, pki: Authority) -> None:
    county, city, province = (network.nodes[n] for n in ("zhongyuan-county", "zhengzhou-city", "henan-province"))
    async with client_as(pki, county, "zy-water") as client:
        reply = await client.publish(readings("raw", [90.5, 92.0, 91.25]))
        assert all(r.outcome == gw.PublishResult.ACCEPTED for r in reply.results)
    at_city = await summed_up(city, "41100050", 3)
    assert totals(at_city) == {"count": 3, "min": 90.5, "max": 92.0}
    summary = at_city[0]
    assert summary.attributes[SUMMARY_ATTRIBUTE] == "PT1S"
    assert summary.origin.agency == "water"
    assert summary.origin.node == "zhongyuan-county"
    assert [h.node for h in summary.provenance.hops] == ["zhongyuan-county", "zhengzhou-city"]
    metrics = {m.metric for m in summary.observation.measurements}
    assert {"39-count", "39-min", "39-max", "39-avg", "39-last"} <= metrics
    # The raw readings went before the summary on the same link, had they been sent: they were not.
    assert await hops_at(city, "raw-0") is None
    # The city passes the county's summary on, and does not sum up a summary again.
    assert totals(await summed_up(province, "41100050", 3)) == {"count": 3, "min": 90.5, "max": 92.0}
    assert await summaries_at(city, "41100050") == at_city


@pytest.mark.summaries(period_minutes=1 / 60)
async def test_a_node_sums_up_only_what_entered_the_network_through_it(network: Network, pki: Authority) -> None:
    county, city = (network.nodes[n] for n in ("zhongyuan-county", "zhengzhou-city"))
    [crossing] = readings("crossing", [99.0])
    crossing.attributes[ALARM_ATTRIBUTE] = "39"  # a threshold crossing goes up raw, as it happens
    async with client_as(pki, county, "zy-water") as client:
        reply = await client.publish([crossing])
        assert reply.results[0].outcome == gw.PublishResult.ACCEPTED
    await summed_up(city, "41100050", 1)  # the county's summary of its own reading
    assert await hops_at(city, crossing.id) == ["zhongyuan-county", "zhengzhou-city"]
    assert city.log is not None
    stored, index = (await city.log.find([crossing.id]))[crossing.id]
    assert stored.records[index * RECORD.size + FLAGS_AT] & FLAG_RELAYED  # its record says where it came from
    at = stored.first_offset + index
    # Once the city's summaries have read past the crossing, the only summary of the station is the county's.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (await city.log.load_position(SUMMARIES_CURSOR) or 0) <= at:
        assert loop.time() < deadline, "the city's summaries never read past the crossing"
        await asyncio.sleep(0.1)
    assert {s.origin.node for s in await summaries_at(city, "41100050")} == {"zhongyuan-county"}


@pytest.mark.summaries(period_minutes=60)
async def test_a_period_open_at_a_restart_is_summed_up_all_the_same(network: Network, pki: Authority) -> None:
    county = network.nodes["zhongyuan-county"]
    async with client_as(pki, county, "zy-water") as client:
        await client.publish(readings("before-restart", [80.0, 85.0]))
    # Stopped in the middle of its hour; it comes back with short periods, and reads the hour again.
    await network.stop("zhongyuan-county")
    network.summaries = {"period_minutes": 1 / 60}
    county = await network.start("zhongyuan-county", parent="zhengzhou-city")
    async with client_as(pki, county, "zy-water") as client:
        await client.publish(readings("after-restart", [70.0]))
    found = await summed_up(network.nodes["zhengzhou-city"], "41100050", 3)
    assert totals(found) == {"count": 3, "min": 70.0, "max": 85.0}
