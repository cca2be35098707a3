"""Adapter runners end to end against live nodes: an inbox folder, HTTP push over mutual TLS, an
HTTP feed polled with conditional requests, outbound export, dead letters and their replay,
supervision, and the adapter commands of the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
from aiohttp import web
from google.protobuf import json_format
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.deadletter import DeadLetters
from gateway.client import GatewayClient
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.tls import ClientTls
from tests import factories
from tests.conftest import NodeFactory, client_as, eventually, running_tls_node

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"


def cap_alert(
    identifier: str, *, headline: str = "郑州市暴雨红色预警", msg_type: str = "Alert", refs: str = ""
) -> bytes:
    """A CAP 1.2 alert of the Zhengzhou meteorological bureau."""
    references = f"<references>{refs}</references>" if refs else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="{CAP_NS}">
  <identifier>{identifier}</identifier>
  <sender>zzqxj@henan.gov.cn</sender>
  <sent>2026-07-20T08:00:00+08:00</sent>
  <status>Actual</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {references}
  <info>
    <language>zh-CN</language>
    <category>Met</category>
    <event>暴雨</event>
    <urgency>Immediate</urgency>
    <severity>Extreme</severity>
    <certainty>Observed</certainty>
    <expires>2099-07-21T08:00:00+08:00</expires>
    <senderName>郑州市气象台</senderName>
    <headline>{headline}</headline>
    <description>过去3小时降雨量已达100毫米以上，且降雨将持续。</description>
    <area>
      <areaDesc>郑州市金水区</areaDesc>
      <polygon>34.70,113.60 34.70,113.75 34.85,113.75 34.85,113.60 34.70,113.60</polygon>
      <geocode><valueName>GB/T 2260</valueName><value>410105</value></geocode>
    </area>
  </info>
</alert>
""".encode()


def cap_source(**source: Any) -> dict[str, Any]:
    return {"name": "zz-qxj", "adapter": "cap", "source": source, "config": {"region": "410100"}}


async def alerts_in(node: Node) -> list[pb.Envelope]:
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        reply = await client.query(gw.QueryRequest(filter=gw.Filter(kinds=[pb.ALERT]), page_size=100))
    return [d.envelope for d in reply.deliveries]


async def healthz(node: Node, ssl: Any = None) -> dict[str, Any]:
    scheme = "https" if ssl else "http"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{scheme}://127.0.0.1:{node.http_port}/healthz", ssl=ssl) as response,
    ):
        body: dict[str, Any] = await response.json()
        return body


# -- inbound: an inbox folder ------------------------------------------------------------------------


async def test_an_inbox_folder_with_a_bad_file_in_the_middle(start_node: NodeFactory, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "1-good.xml").write_bytes(cap_alert("ZZ-2026-001"))
    (inbox / "2-bad.xml").write_bytes(b"<alert><identifier>broken</alert>")
    (inbox / "3-good.xml").write_bytes(cap_alert("ZZ-2026-002", headline="郑州市暴雨红色预警（更新）"))
    node = await start_node(adapters=[cap_source(type="file", path=str(inbox), interval_s=0.1)])

    def settled() -> bool:
        done = inbox / "done"
        return done.exists() and len(list(done.iterdir())) == 3

    await eventually(settled)
    alerts = await alerts_in(node)
    assert sorted(a.alert.identifier for a in alerts) == ["ZZ-2026-001", "ZZ-2026-002"]
    assert alerts[0].severity == pb.RED
    assert alerts[0].origin.agency == "meteorology"
    letters = DeadLetters(node.config.data_dir / "dead-letters.sqlite")
    try:
        (letter,) = letters.list()
    finally:
        letters.close()
    assert (letter.adapter, letter.source, letter.kind) == ("zz-qxj", "2-bad.xml", "xml")
    assert "not well-formed" in letter.reason
    assert letter.data == b"<alert><identifier>broken</alert>"
    health = await healthz(node)
    assert health["adapters"]["zz-qxj"]["state"] == "up"
    assert health["status"] == "ok"
    metrics = node.metrics.render().decode()
    assert 'yiwang_adapter_received_total{adapter="zz-qxj"} 3.0' in metrics
    assert 'yiwang_adapter_forwarded_total{adapter="zz-qxj"} 2.0' in metrics
    assert 'yiwang_adapter_rejected_total{adapter="zz-qxj",reason="xml"} 1.0' in metrics
    assert 'yiwang_adapter_dead_letters_total{adapter="zz-qxj"} 1.0' in metrics


async def test_a_dead_letter_is_replayed_when_asked(start_node: NodeFactory, tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    letters = DeadLetters(data / "dead-letters.sqlite")
    letter = letters.add(
        "zz-qxj", "cap", source="a.xml", kind="rejected", reason="the gateway was refusing", data=cap_alert("R-1")
    )
    letters.close()
    run = await asyncio.to_thread(yiwang, "dead-letters", "replay", "--data", str(data), str(letter), "77")
    assert run.returncode == 1  # 77 does not exist, and says so
    assert b"no dead letter 77" in run.stderr
    node = await start_node(data, adapters=[cap_source(type="http-push")])

    async def replayed() -> bool:
        return [a.alert.identifier for a in await alerts_in(node)] == ["R-1"]

    for _ in range(100):
        if await replayed():
            break
        await asyncio.sleep(0.1)
    assert await replayed()
    listing = await asyncio.to_thread(yiwang, "dead-letters", "list", "--data", str(data))
    (row,) = [json.loads(line) for line in listing.stdout.decode().splitlines()]
    assert (row["id"], row["state"], row["attempts"]) == (letter, "replayed", 1)


# -- inbound: HTTP push over mutual TLS ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    ca = Authority.init(tmp_path_factory.mktemp("adapters") / "pki", trust_domain="yjt.henan.gov.cn")
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.ADAPTER, "410100", "zz-qxj-cap", "meteorology"))
    ca.issue(ca.identity(Role.DEPARTMENT, "410100", "zz-qxj", "meteorology"))
    ca.issue(ca.identity(Role.DEPARTMENT, "410100", "zz-sw", "water"))
    ca.issue(ca.identity(Role.PLATFORM, "410000", "province-desk", "emergency"))
    return ca


@pytest.fixture
async def tls_node(pki: Authority, tmp_path: Path) -> AsyncIterator[Node]:
    issued = pki.dir / "issued"
    adapter = {
        **cap_source(type="http-push", allow=["spiffe://yjt.henan.gov.cn/410100/meteorology/department/zz-qxj"]),
        "cert": str(issued / "zz-qxj-cap.chain.pem"),
        "key": str(issued / "zz-qxj-cap.key"),
        "sign_key": str(issued / "zz-qxj-cap.sign.key"),
        "sign_cert": str(issued / "zz-qxj-cap.sign.pem"),
    }
    async with running_tls_node(pki, tmp_path / "data", adapters=[adapter]) as node:
        yield node


def ssl_as(pki: Authority, name: str) -> Any:
    issued = pki.dir / "issued"
    return ClientTls(pki.dir / "ca.pem", issued / f"{name}.chain.pem", issued / f"{name}.key").ssl_context()


async def push(node: Node, ssl: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    url = f"https://127.0.0.1:{node.http_port}/adapters/zz-qxj/push"
    async with aiohttp.ClientSession() as session, session.post(url, data=body, ssl=ssl) as response:
        return response.status, await response.json()


async def test_http_push_over_mutual_tls(tls_node: Node, pki: Authority) -> None:
    qxj = ssl_as(pki, "zz-qxj")
    status, body = await push(tls_node, qxj, cap_alert("P-1"))
    assert (status, body["forwarded"], body["dead_letter"]) == (200, 1, None)
    status, body = await push(tls_node, qxj, cap_alert("P-1"))  # the same alert again: stored once
    assert (status, body["forwarded"], body["duplicates"]) == (200, 1, 1)
    hostile = b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><alert>&x;</alert>'
    status, body = await push(tls_node, qxj, hostile)
    assert status == 422
    assert body["dead_letter"] is not None
    assert "DTD" in body["reason"] or "entit" in body["reason"]
    status, body = await push(tls_node, ssl_as(pki, "zz-sw"), cap_alert("P-2"))  # not an allowed pusher
    assert status == 403
    async with client_as(pki, tls_node, "province-desk") as desk:
        reply = await desk.query(gw.QueryRequest(filter=gw.Filter(kinds=[pb.ALERT])))
    (stored,) = [d.envelope for d in reply.deliveries]
    assert stored.alert.identifier == "P-1"
    # published with the adapter's own identity, and signed by it
    assert stored.provenance.signature.signer.endswith("/410100/meteorology/adapter/zz-qxj-cap")
    health = await healthz(tls_node, qxj)
    assert health["adapters"]["zz-qxj"]["ok"]


async def test_the_alert_feed_and_cap_documents(tls_node: Node, pki: Authority) -> None:
    qxj = ssl_as(pki, "zz-qxj")
    await push(tls_node, qxj, cap_alert("F-1"))
    await push(tls_node, qxj, cap_alert("F-2", headline="第二条"))
    cancel = cap_alert("F-3", msg_type="Cancel", refs="zzqxj@henan.gov.cn,F-1,2026-07-20T08:00:00+08:00")
    await push(tls_node, qxj, cancel)
    desk = ssl_as(pki, "province-desk")
    async with aiohttp.ClientSession() as session:
        base = f"https://127.0.0.1:{tls_node.http_port}"
        async with session.get(f"{base}/feeds/alerts.atom", ssl=desk) as response:
            assert response.status == 200
            assert response.content_type == "application/atom+xml"
            feed = await response.text()
        atom = "{http://www.w3.org/2005/Atom}"
        entries = ElementTree.fromstring(feed).findall(f"{atom}entry")
        # F-1 is cancelled by F-3, and a cancellation is not itself an active alert
        assert [e.findtext(f"{atom}title") for e in entries] == ["第二条"]
        (link,) = [x.get("href") for x in entries[0].findall(f"{atom}link") if x.get("type") == "application/cap+xml"]
        assert link is not None
        async with session.get(link, ssl=desk) as response:
            assert response.status == 200
            document = await response.read()
        assert CAP_NS.encode() in document
        assert "第二条".encode() in document


# -- inbound: a polled feed ------------------------------------------------------------------------------


async def test_a_polled_feed_uses_conditional_requests(start_node: NodeFactory) -> None:
    served = {"body": cap_alert("POLL-1"), "etag": '"v1"', "conditional": 0, "requests": 0}

    async def feed(request: web.Request) -> web.Response:
        served["requests"] = int(served["requests"]) + 1  # type: ignore[call-overload]
        if request.headers.get("If-None-Match") == served["etag"]:
            served["conditional"] = int(served["conditional"]) + 1  # type: ignore[call-overload]
            return web.Response(status=304)
        return web.Response(body=served["body"], headers={"ETag": str(served["etag"])})

    app = web.Application()
    app.router.add_get("/alerts.xml", feed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        node = await start_node(
            adapters=[cap_source(type="http-poll", url=f"http://127.0.0.1:{port}/alerts.xml", interval_s=0.05)]
        )
        await eventually(lambda: int(served["conditional"]) >= 2)  # type: ignore[call-overload]
        served["body"], served["etag"] = cap_alert("POLL-2"), '"v2"'
        for _ in range(100):
            if len(await alerts_in(node)) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(a.alert.identifier for a in await alerts_in(node)) == ["POLL-1", "POLL-2"]
    finally:
        await runner.cleanup()


async def test_a_failing_feed_is_restarted_with_backoff_and_shows_in_health(start_node: NodeFactory) -> None:
    app = web.Application()
    app.router.add_get("/alerts.xml", _server_error)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        node = await start_node(
            adapters=[cap_source(type="http-poll", url=f"http://127.0.0.1:{port}/alerts.xml", interval_s=0.05)]
        )
        assert node.adapters is not None
        health = node.adapters.hosted["zz-qxj"].health
        await eventually(lambda: health.restarts >= 2)
        body = await healthz(node)
        assert body["status"] == "degraded"
        assert "HTTP 500" in body["adapters"]["zz-qxj"]["last_error"]
        assert body["log"]["ok"]
    finally:
        await runner.cleanup()


async def _server_error(_request: web.Request) -> web.Response:
    return web.Response(status=500, text="upstream broken")


# -- outbound ---------------------------------------------------------------------------------------------


async def test_alerts_are_exported_as_cap_files(start_node: NodeFactory, tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    (inbox / "a.xml").write_bytes(cap_alert("OUT-1"))
    node = await start_node(
        adapters=[
            cap_source(type="file", path=str(inbox), interval_s=0.05),
            {"name": "cap-out", "adapter": "cap", "direction": "out", "sink": {"type": "file", "path": str(outbox)}},
        ]
    )
    await eventually(lambda: outbox.exists() and any(p.suffix == ".xml" for p in outbox.iterdir()))
    (written,) = [p for p in outbox.iterdir() if p.suffix == ".xml"]
    document = written.read_bytes()
    assert b"<identifier>OUT-1</identifier>" in document
    assert CAP_NS.encode() in document
    assert node.adapters is not None
    assert node.adapters.health()["cap-out"]["direction"] == "out"


async def test_the_national_export_takes_only_what_routing_flags_for_the_national_level(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    outbox = tmp_path / "national"
    node = await start_node(
        node={"id": "henan-province", "region": "410000"},
        adapters=[
            {
                "name": "national",
                "adapter": "canonical",
                "direction": "out",
                "national": True,
                "sink": {"type": "file", "path": str(outbox)},
            }
        ],
    )
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        reply = await client.publish(
            [
                factories.incident(envelope_id="larger", grade=pb.GRADE_LARGER),
                factories.incident(envelope_id="major", grade=pb.GRADE_MAJOR),
                factories.alert(envelope_id="warning"),
                factories.incident(envelope_id="extraordinary", grade=pb.GRADE_EXTRAORDINARY),
            ]
        )
        assert all(r.outcome == gw.PublishResult.ACCEPTED for r in reply.results)
    # The export follows the log in order: once the last one is written, the others were decided.
    await eventually((outbox / "extraordinary.jsonl").exists)
    written = sorted(p.name for p in outbox.iterdir())
    assert written == ["extraordinary.jsonl", "major.jsonl"]
    line = json.loads((outbox / "major.jsonl").read_text(encoding="utf-8"))
    assert (line["id"], line["kind"], line["incident"]["grade"]) == ("major", "INCIDENT", "GRADE_MAJOR")
    assert json_format.ParseDict(line, pb.Envelope()).incident.incident_id == "ZZ-JS-1"


# -- the CLI ----------------------------------------------------------------------------------------------


def yiwang(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], input=stdin, capture_output=True, check=False)


def test_cli_adapt_and_export(tmp_path: Path) -> None:
    listing = yiwang("adapt", "--list")
    assert listing.returncode == 0
    names = {json.loads(line)["adapter"] for line in listing.stdout.decode().splitlines()}
    assert {"cap", "edxl", "gbt35965", "quake", "mapping"} <= names
    good = tmp_path / "good.xml"
    good.write_bytes(cap_alert("CLI-1"))
    run = yiwang("adapt", "cap", str(good), "--region", "410100")
    assert run.returncode == 0, run.stderr
    (line,) = run.stdout.decode().splitlines()
    envelope = json.loads(line)
    assert envelope["kind"] == "ALERT"
    assert envelope["severity"] == "RED"
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<alert>")
    run = yiwang("adapt", "cap", str(bad))
    assert run.returncode == 1
    assert run.stdout == b""
    (error,) = run.stderr.decode().splitlines()
    assert error.startswith(f"yiwang adapt: {bad}: ")
    exported = yiwang("export", "cap", stdin=line.encode() + b"\n")
    assert exported.returncode == 0, exported.stderr
    assert b"<identifier>CLI-1</identifier>" in exported.stdout
    unknown = yiwang("adapt", "no-such-format", str(good))
    assert unknown.returncode == 2
    assert b"unknown format 'no-such-format'" in unknown.stderr
