"""The node as a TAK server: CoT in over real TCP and UDP sockets, the picture and live events out.

Every test runs a real node with a ``[tak]`` section on port 0 and talks to it as a TAK client
would: CoT XML over a TCP connection (events back to back, split anywhere) or one event per UDP
datagram. What comes out is read back with the codec's own framing and parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import ssl
import time
import tomllib
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.cot import CotEvent, StreamDecoder, encode_ping, parse_event
from adapters.errors import AdapterError
from adapters.plugin import stable_id
from gateway.client import GatewayClient
from gateway.errors import ConfigError
from gateway.ids import uuid7
from gateway.node import Node
from gateway.pki import Authority, Role
from gateway.tak import Picture
from gateway.tls import ClientTls
from tests import factories
from tests.conftest import TRUST_DOMAIN, NodeFactory, eventually, node_config, running_tls_node
from tests.samples import DATA

TAK = {"listen": "127.0.0.1:0", "udp": "127.0.0.1:0"}
SAMPLE = DATA / "cot" / "a-f-G-U-C-1581185446278.xml"


def cot_time(posix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(posix)) + f".{int(posix * 1000) % 1000:03d}Z"


def unit_event(uid: str, *, at: float | None = None, cot_type: str = "a-f-G-U-C", callsign: str = "") -> bytes:
    """A unit's position as ATAK writes it, at ``at`` (now by default), stale two minutes later."""
    now = time.time() if at is None else at
    return (
        f"<?xml version='1.0' encoding='UTF-8' standalone='yes'?>"
        f"<event version='2.0' uid='{uid}' type='{cot_type}' time='{cot_time(now)}' start='{cot_time(now)}' "
        f"stale='{cot_time(now + 120)}' how='m-g'><point lat='34.7466' lon='113.6253' hae='110.0' ce='4.9' "
        f"le='9999999.0'/><detail><contact callsign='{callsign or uid}'/><__group name='Cyan' role='Team Member'/>"
        f"<track speed='1.5' course='90.0'/></detail></event>"
    ).encode()


def cot_id(document: bytes) -> str:
    """The envelope id the codec gives an event (from its uid and time)."""
    event = parse_event(document)
    return stable_id("cot", event.uid, f"{event.time.seconds}.{event.time.nanos:09d}")


def position(unit_id: str, *, seconds_ago: float = 0.0, region: str = "410102") -> pb.Envelope:
    """A fire engine's position, as a department system publishes it over gRPC."""
    env = pb.Envelope(id=uuid7(), kind=pb.POSITION, region=region, status=pb.ACTUAL, priority=2)
    env.origin.agency = "fire_rescue"
    env.origin.region = region
    env.sent_at.FromNanoseconds(int((time.time() - seconds_ago) * 1e9))
    env.observed_at.CopyFrom(env.sent_at)
    env.geometry.point.lat, env.geometry.point.lon = 34.7466, 113.6253
    env.position.unit_id = unit_id
    env.position.callsign = f"{unit_id} 中原消防"
    env.position.unit_type = "a-f-G-E-V"
    return env


class TakClient:
    """A TAK client's TCP connection: writes events, reads the server's events as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = StreamDecoder()
        self.events: list[CotEvent] = []
        self.raw: list[bytes] = []
        self.control: list[CotEvent] = []  # the server's TAK protocol announcement (t-x-takp-v)

    @classmethod
    async def connect(cls, node: Node) -> TakClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.tak_ports["tcp"])
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until(self, uids: set[str], timeout: float = 10.0) -> dict[str, CotEvent]:
        """The last event read of each uid, reading until every uid was seen (or failing at the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not uids <= {event.uid for event in self.events}:
            left = deadline - loop.time()
            if left <= 0:
                seen = sorted({event.uid for event in self.events})
                raise AssertionError(f"not received in {timeout} s: {sorted(uids - set(seen))} (seen: {seen[:20]})")
            data = await asyncio.wait_for(self.reader.read(1 << 16), left)
            if not data:
                raise AssertionError("the server closed the connection")
            for item in self.decoder.feed(data):
                assert not isinstance(item, AdapterError), item
                event = parse_event(item)
                if event.type.startswith("t-x-takp-"):
                    self.control.append(event)
                    continue
                self.raw.append(item)
                self.events.append(event)
        return {event.uid: event for event in self.events if event.uid in uids}

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def stored(node: Node, envelope_ids: list[str], timeout: float = 10.0) -> dict[str, pb.Envelope]:
    """The envelopes of these ids once all are in the node's log."""
    assert node.log is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await node.log.find(envelope_ids)
        if len(found) == len(envelope_ids):
            break
        if loop.time() > deadline:
            raise AssertionError(f"not in the log after {timeout} s: {sorted(set(envelope_ids) - set(found))}")
        await asyncio.sleep(0.02)
    out = {}
    for envelope_id, (batch, index) in found.items():
        out[envelope_id] = gw.DeliveryBatch.FromString(batch.entry(index)).deliveries[0].envelope  # entries are tagged
    return out


def sample(node: Node, name: str, labels: dict[str, str]) -> float:
    value = node.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
async def tak_node(start_node: NodeFactory) -> Node:
    return await start_node(tak=TAK)


async def test_a_position_split_at_random_boundaries_lands_in_the_log_as_a_position(tak_node: Node) -> None:
    documents = [unit_event(f"ANDROID-{k}", callsign=f"中原{k}") for k in range(5)]
    stream = b"\n".join(documents)
    rng = random.Random(20260501)
    client = await TakClient.connect(tak_node)
    client.writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    at = 0
    while at < len(stream):
        step = rng.randint(1, 97)
        await client.send(stream[at : at + step])
        at += step
    envelopes = await stored(tak_node, [cot_id(d) for d in documents])
    await client.close()
    for k, document in enumerate(documents):
        env = envelopes[cot_id(document)]
        assert env.kind == pb.POSITION
        assert env.position.unit_id == f"ANDROID-{k}"
        assert env.position.callsign == f"中原{k}"
        assert env.position.unit_type == "a-f-G-U-C"
        assert env.region == "410000"  # the node's region: CoT names none
        assert env.origin.agency == "fire_rescue"
        assert (env.geometry.point.lat, env.geometry.point.lon) == (34.7466, 113.6253)
    outcome = {"transport": "tcp", "outcome": "stored"}
    await eventually(lambda: sample(tak_node, "yiwang_tak_events_in_total", outcome) == 5)


async def test_a_position_in_a_udp_datagram_lands_in_the_log(start_node: NodeFactory) -> None:
    node = await start_node(tak={**TAK, "region": "410102", "agency": "public_security"})
    document = unit_event("ATAK-UDP-1")
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", node.tak_ports["udp"])
    )
    try:
        transport.sendto(b"not an event at all")
        transport.sendto(document)
        env = (await stored(node, [cot_id(document)]))[cot_id(document)]
    finally:
        transport.close()
    assert env.kind == pb.POSITION
    assert env.position.unit_id == "ATAK-UDP-1"
    assert env.region == "410102"
    assert env.origin.agency == "public_security"
    await eventually(
        lambda: sample(node, "yiwang_tak_events_in_total", {"transport": "udp", "outcome": "refused"}) == 1
    )


async def test_hostile_garbage_and_unsupported_events_are_refused_and_the_next_event_still_lands(
    tak_node: Node,
) -> None:
    garbage = b"\x00\x01 not CoT\n"
    hostile = (
        b'<?xml version="1.0"?><!DOCTYPE event [<!ENTITY boom "boom">]>'
        b'<event version="2.0" uid="x" type="a-f-G" time="2026-05-01T08:00:00Z" start="2026-05-01T08:00:00Z" '
        b'stale="2026-05-01T08:05:00Z" how="m-g"><point lat="1" lon="1"/><detail><remarks>&boom;</remarks>'
        b"</detail></event>"
    )
    inner = b'<event version="2.0" uid="y" type="a-f-G"><!ENTITY x SYSTEM "file:///etc/passwd"></event>'
    chat = unit_event("GeoChat.ANDROID-1.All Chat Rooms.1", cot_type="b-t-f")
    oversized = b"<event " + b'a="' + b"x" * (300 << 10) + b'"/>'
    good = unit_event("ANDROID-AFTER")
    client = await TakClient.connect(tak_node)
    with capture_logs() as logs:
        await client.send(garbage + hostile + inner + chat + oversized + good)
        await stored(tak_node, [cot_id(good)])
        await eventually(lambda: sum(1 for e in logs if e["event"] == "tak_event_refused") >= 6)
    await client.close()
    refused = [e for e in logs if e["event"] == "tak_event_refused"]
    kinds = [e["kind"] for e in refused]
    # the DTD, then the event after it (its entity undefined), the declaration inside an event
    assert kinds == ["framing", "hostile", "xml", "hostile", "unsupported", "size"], kinds
    assert any("GeoChat" in e["reason"] for e in refused)
    for kind in ("hostile", "size", "unsupported"):
        assert sample(tak_node, "yiwang_tak_refused_total", {"transport": "tcp", "reason": kind}) >= 1
    assert tak_node.log is not None
    assert not await tak_node.log.find([cot_id(chat)])


async def test_a_ping_is_answered_with_a_pong_on_the_same_connection(tak_node: Node) -> None:
    client = await TakClient.connect(tak_node)
    await client.send(encode_ping("ANDROID-PING", time.time()))
    pong = (await client.until({"takPong"}))["takPong"]
    await client.close()
    assert pong.type == "t-x-c-t-r"
    assert sample(tak_node, "yiwang_tak_events_in_total", {"transport": "tcp", "outcome": "ping"}) == 1


async def test_a_client_receives_positions_incidents_and_warnings_published_over_grpc(tak_node: Node) -> None:
    client = await TakClient.connect(tak_node)
    await eventually(lambda: tak_node.tak is not None and len(tak_node.tak.connections) == 1)
    unit = position("豫A-119-01")
    incident = factories.incident()
    warning = factories.alert()
    warning.expires_at.FromNanoseconds(warning.sent_at.ToNanoseconds() + 6 * 3600 * 10**9)
    elsewhere = position("晋A-119", region="140100")  # Shanxi: not this node's jurisdiction
    async with GatewayClient(tak_node.grpc_target, insecure=True) as grpc_client:
        reply = await grpc_client.publish([elsewhere, unit, incident, warning])
    assert [r.outcome for r in reply.results] == [1, 1, 1, 1], reply
    events = await client.until({"豫A-119-01", "ZZ-JS-1", warning.id, f"{warning.id}.shape0"})
    await client.close()

    seen = events["豫A-119-01"]
    assert seen.type == "a-f-G-E-V"
    assert seen.detail.callsign == "豫A-119-01 中原消防"
    assert seen.time.ToNanoseconds() // 10**6 == unit.observed_at.ToNanoseconds() // 10**6
    assert seen.stale is not None
    assert seen.stale.ToNanoseconds() - seen.time.ToNanoseconds() == 180 * 10**9  # position_stale_s

    marker = events["ZZ-JS-1"]
    assert marker.type == "b-m-p-s-m"
    assert marker.stale is not None
    assert marker.stale.ToNanoseconds() - marker.time.ToNanoseconds() == 86400 * 10**9  # incident_stale_s

    alert = events[warning.id]
    assert alert.type == "b-m-p-s-m"
    assert alert.stale is not None
    assert alert.stale.ToNanoseconds() == warning.expires_at.ToNanoseconds()
    assert "暴雨橙色预警" in alert.detail.remarks
    assert events[f"{warning.id}.shape0"].type == "u-d-f"
    assert "晋A-119" not in {event.uid for event in client.events}


async def test_what_one_client_sends_the_other_receives_as_the_same_cot(tak_node: Node) -> None:
    """The round trip through real TCP clients: an ATAK phone's own event in, the picture out."""
    now = time.time()
    original = SAMPLE.read_bytes()
    for name, moment in (("time", now), ("start", now), ("stale", now + 30)):
        original = re.sub(rf"{name}='[^']*'".encode(), f"{name}='{cot_time(moment)}'".encode(), original, count=1)
    sender = await TakClient.connect(tak_node)
    listener = await TakClient.connect(tak_node)
    await eventually(lambda: tak_node.tak is not None and len(tak_node.tak.connections) == 2)
    await sender.send(original)
    received = (await listener.until({"ANDROID-R52JB0CDC4E"}))["ANDROID-R52JB0CDC4E"]
    echoed = (await sender.until({"ANDROID-R52JB0CDC4E"}))["ANDROID-R52JB0CDC4E"]
    await sender.close()
    await listener.close()
    sent = parse_event(original)
    for event in (received, echoed):
        assert (event.uid, event.type, event.how) == (sent.uid, sent.type, sent.how)
        assert (event.time, event.stale) == (sent.time, sent.stale)
        assert (event.point.lat, event.point.lon) == (sent.point.lat, sent.point.lon)
        assert event.detail.callsign == "corvTab"
        assert (event.detail.group, event.detail.role) == ("Yellow", "Team Member")
        assert (event.detail.speed, event.detail.course) == (0.0, 0.0)


async def test_a_client_that_connects_is_sent_the_current_picture_without_what_is_stale_or_over(
    tak_node: Node,
) -> None:
    fresh = position("豫A-FRESH")
    old = position("豫A-OLD", seconds_ago=600)  # its 180 s are over
    moved = position("豫A-FRESH")  # the same unit, later
    moved.observed_at.FromNanoseconds(fresh.observed_at.ToNanoseconds() + 10**9)
    moved.geometry.point.lat = 34.8
    warning = factories.alert()
    cancelled = factories.alert()
    cancel = factories.alert()
    cancel.alert.msg_type = "Cancel"
    cancel.references.append(cancelled.id)
    closing = factories.incident()
    closing.incident.incident_id = "ZZ-CLOSED"
    final = factories.incident()
    final.incident.incident_id = "ZZ-CLOSED"
    final.incident.stage = pb.STAGE_FINAL
    final.incident.report_number = 2
    async with GatewayClient(tak_node.grpc_target, insecure=True) as grpc_client:
        for batch in ([fresh, old, warning, cancelled, closing], [moved, cancel, final]):
            reply = await grpc_client.publish(batch)
            assert all(r.outcome == 1 for r in reply.results), reply
    assert tak_node.tak is not None
    # out: fresh, the warning and its shape, the cancelled one and its shape, the incident; then the
    # move, the delete of the cancelled warning, the final report (the old position is stale: not sent)
    await eventually(lambda: sample(tak_node, "yiwang_tak_events_out_total", {}) == 9)
    client = await TakClient.connect(tak_node)
    events = await client.until({"豫A-FRESH", warning.id, f"{warning.id}.shape0"})
    await client.close()
    uids = [event.uid for event in client.events]
    assert sorted(uids) == sorted(["豫A-FRESH", warning.id, f"{warning.id}.shape0"]), uids
    assert events["豫A-FRESH"].point.lat == 34.8  # the latest position only


async def test_a_client_that_does_not_read_is_disconnected_and_one_that_reads_gets_every_event(
    start_node: NodeFactory,
) -> None:
    node = await start_node(tak={**TAK, "max_event_bytes": 4096, "max_queue_bytes": "64KiB"})
    assert node.tak is not None
    slow_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow_socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_socket.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow_socket, ("127.0.0.1", node.tak_ports["tcp"]))
    reader = await TakClient.connect(node)
    await eventually(lambda: node.tak is not None and len(node.tak.connections) == 2)
    # Loopback would otherwise let the kernel take megabytes for the client that does not read.
    slow_peer = f"127.0.0.1:{slow_socket.getsockname()[1]}"
    (slow,) = [c for c in node.tak.connections if c.peer == slow_peer]
    assert slow.transport is not None
    slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    units = [f"豫A-{k:05d}" for k in range(4000)]
    reading = asyncio.create_task(reader.until(set(units), timeout=60))
    with capture_logs() as logs:
        async with GatewayClient(node.grpc_target, insecure=True) as grpc_client:
            for begin in range(0, len(units), 500):
                await grpc_client.publish([position(unit) for unit in units[begin : begin + 500]])
        received = await reading
        await eventually(lambda: sample(node, "yiwang_tak_clients_dropped_total", {"reason": "slow"}) == 1)
    await reader.close()
    slow_socket.close()
    assert set(received) == set(units)
    dropped = [e for e in logs if e["event"] == "tak_client_dropped"]
    assert len(dropped) == 1
    assert "bytes of live events" in dropped[0]["reason"]
    assert len(node.tak.connections) == 0 or all(c.peer != dropped[0]["peer"] for c in node.tak.connections)


async def test_idle_clients_are_closed_and_connections_past_the_limit_refused(start_node: NodeFactory) -> None:
    node = await start_node(tak={"listen": "127.0.0.1:0", "idle_timeout_s": 0.3, "max_connections": 1})
    first = await TakClient.connect(node)
    await eventually(lambda: node.tak is not None and len(node.tak.connections) == 1)
    second = await TakClient.connect(node)
    assert await asyncio.wait_for(second.reader.read(), 5) == b""  # closed at once
    sent = await asyncio.wait_for(first.reader.read(), 5)  # closed once idle
    assert sent.count(b"<event") == 1, sent  # after the server's TAK protocol announcement only
    assert b"t-x-takp-v" in sent
    await first.close()
    await second.close()
    assert sample(node, "yiwang_tak_clients_dropped_total", {"reason": "connections"}) == 1
    assert sample(node, "yiwang_tak_clients_dropped_total", {"reason": "idle"}) == 1


def test_the_tak_section_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tak\.region.*not within the node's region 410100"):
        node_config(tmp_path, region="410100", tak={"listen": "127.0.0.1:0", "region": "140100"})
    with pytest.raises(ConfigError, match=r"tak\.listen"):
        node_config(tmp_path, tak={"listen": "8087"})
    with pytest.raises(ConfigError, match=r"tak\.agency"):
        node_config(tmp_path, tak={"udp": "127.0.0.1:0", "agency": "nobody"})
    with pytest.raises(ConfigError, match=r"tak\.max_queue_bytes"):
        node_config(tmp_path, tak={"listen": "127.0.0.1:0", "max_queue_bytes": "1KiB"})
    assert node_config(tmp_path, tak=TAK).tak.agency == "fire_rescue"


def test_the_picture_keeps_the_latest_event_per_uid_within_its_bound() -> None:
    picture = Picture(2)
    far = time.time_ns() + 10**12
    picture.put(b"a", far, b"A")
    picture.put(b"b", far, b"B")
    picture.put(b"a", far, b"A2")
    picture.put(b"c", far, b"C")
    assert picture.events(time.time_ns()) == [b"A2", b"C"]
    picture.put(b"w", far, b"W")
    picture.put(b"w.shape0", far, b"S0")
    picture.remove(b"w")  # a warning goes with its shapes
    assert picture.events(time.time_ns()) == []
    picture.put(b"x", time.time_ns() - 1, b"X")
    assert picture.events(time.time_ns()) == []


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 30.0) -> bool:
    """Whether the server ends the connection (an end of stream, or a reset or TLS alert) in time."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except (ConnectionError, ssl.SSLError):
        return True


async def test_over_tls_only_certified_clients_are_served_and_a_revoked_one_is_cut_off(tmp_path: Path) -> None:
    ca = Authority.init(tmp_path / "pki", trust_domain=TRUST_DOMAIN)
    ca.issue(ca.identity(Role.GATEWAY, "410000", "henan-province", "henan-province"), ip_addresses=("127.0.0.1",))
    ca.issue(ca.identity(Role.EDGE, "410102", "engine-7", "fire_rescue"))
    issued = ca.dir / "issued"
    certified = ClientTls(ca.dir / "ca.pem", issued / "engine-7.chain.pem", issued / "engine-7.key").ssl_context()
    anonymous = ssl.create_default_context(cafile=str(ca.dir / "ca.pem"))
    async with running_tls_node(ca, tmp_path / "data", tak={"listen": "127.0.0.1:0", "tls": True}) as node:
        port = node.tak_ports["tcp"]
        client = TakClient(*await asyncio.open_connection("127.0.0.1", port, ssl=certified))
        await client.send(encode_ping("ENGINE-7", time.time()))
        assert (await client.until({"takPong"}))["takPong"].type == "t-x-c-t-r"
        assert node.tak is not None
        (connection,) = node.tak.connections
        assert connection.peer.endswith("spiffe://yjt.henan.gov.cn/410102/fire_rescue/edge/engine-7")

        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=anonymous)
        except (ConnectionError, ssl.SSLError):
            pass  # refused in the handshake
        else:
            writer.write(encode_ping("NOBODY", time.time()))
            assert await closed_by_server(reader)
            writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", port)
            plain_writer.write(encode_ping("PLAIN", time.time()))
            assert await closed_by_server(plain_reader)
            plain_writer.close()
        assert len(node.tak.connections) == 1

        ca.revoke("engine-7", "key_compromise")
        assert await closed_by_server(client.reader)
        client.writer.close()
    assert sample(node, "yiwang_tak_clients_dropped_total", {"reason": "revoked"}) == 1


def test_the_readme_tak_section_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```toml\n(\[tak\]\n.*?)```", readme, re.DOTALL)
    assert block is not None, "the README shows no [tak] section"
    table = tomllib.loads(block.group(1))["tak"]
    assert node_config(tmp_path, tak=table).tak.listen == "0.0.0.0:8087"
