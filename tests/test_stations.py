"""The station server: the node as data centre for stations that connect over TCP.

The protocol here is a line protocol of the test's own (``STATION,PASSWORD,VALUE``), so that what is
tested is the server: the registry, durability before acknowledgement, replies in order, framing
across segments, refusals that keep the messages around them, idle and connection limits.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from adapters.crc16 import crc16_modbus
from adapters.errors import AdapterError
from adapters.station_protocol import Exchange, Message, Station
from gateway.config import from_dict
from gateway.errors import ConfigError
from gateway.node import Node
from gateway.regions import default_table
from gateway.station_workers import stations_from_json, stations_to_json
from gateway.stations import Batcher, StationMetrics, StationServer, load_registry
from tests.conftest import NodeFactory, eventually, hang_up, send_in_pieces

REGISTRY = """
[[station]]
protocol = "line"
id = "S1"
password = "secret"
region = "410102"
agency = "water"
name = "贾鲁河中牟站"
lat = 34.72
lon = 113.97
limits = { "39" = { high = 80.0 } }

[[station]]
protocol = "line"
id = "S2"
password = "other"
region = "410102"
agency = "water"
"""


@dataclass
class LineSession:
    """``S1,secret,12.5``: a reading of station S1, one per line."""

    buffer: bytes = b""
    limit: int = 256

    def feed(self, data: bytes) -> list[Message | AdapterError]:
        self.buffer += data
        out: list[Message | AdapterError] = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            out.append(self._message(line))
        if len(self.buffer) > self.limit:
            self.buffer = b""
            out.append(AdapterError(f"a line longer than {self.limit} bytes", kind="length"))
        return out

    def _message(self, line: bytes) -> Message | AdapterError:
        text = line.decode(errors="replace")
        parts = text.split(",")
        if len(parts) != 3:
            return AdapterError(f"{text!r} is not STATION,PASSWORD,VALUE", kind="value")
        return Message(parts[0], parts[1], parts[2], len(line) + 1)

    def exchange(self, message: Message, station: Station, now: float) -> Exchange:
        value = float(message.content)
        env = pb.Envelope(id=f"{station.id}-{message.content}", kind=pb.OBSERVATION, region=station.region)
        env.status, env.priority = pb.ACTUAL, 2
        env.origin.agency, env.origin.region, env.origin.system = station.agency, station.region, "line"
        env.sent_at.FromNanoseconds(int(now * 1e9))
        env.observation.station_id = station.id
        env.observation.measurements.add(metric="39", value=value, unit="m", quality=pb.GOOD)
        if value < 0:
            env.region = "999999"  # the node refuses it
        return Exchange(envelopes=[env], reply_when_durable=f"ACK {env.id}\n".encode())

    def refusal(self, message: Message | None, error: AdapterError) -> bytes:
        return f"NAK {message.station_id if message else '-'} {error}\n".encode()


class LineProtocol:
    name = "line"
    max_message_bytes = 256

    def session(self) -> LineSession:
        return LineSession()


@dataclass
class Gate:
    """Holds appends until opened: what the station hears before its data is durable."""

    publish: Callable[[bytes], Awaitable[gw.PublishReply]]
    open: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, raw: bytes) -> gw.PublishReply:
        await self.open.wait()
        return await self.publish(raw)


@dataclass
class Harness:
    node: Node
    server: StationServer
    port: int
    gate: Gate

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def stored(self, envelope_id: str) -> bool:
        assert self.node.log is not None
        return envelope_id in await self.node.log.find([envelope_id])


@pytest.fixture
async def harness(start_node: NodeFactory, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    node = await start_node()
    assert node.service is not None
    service = node.service
    (tmp_path / "stations.toml").write_text(REGISTRY, encoding="utf-8")
    registry = load_registry(tmp_path / "stations.toml", default_table())
    gate = Gate(service.publish_batch)
    gate.open.set()
    batcher = Batcher(gate)
    batcher.start()
    marker = request.node.get_closest_marker("station_limits")
    limits = marker.kwargs if marker else {}
    server = StationServer(LineProtocol(), registry["line"], batcher, StationMetrics(CollectorRegistry()), **limits)
    port = await server.start("127.0.0.1", 0)
    try:
        yield Harness(node, server, port, gate)
    finally:
        await server.stop()
        await batcher.stop()


async def test_the_acknowledgement_leaves_only_once_the_reading_is_in_the_log(harness: Harness) -> None:
    harness.gate.open.clear()
    reader, writer = await harness.connect()
    writer.write(b"S1,secret,12.5\n")
    await writer.drain()
    await eventually(lambda: not harness.server.batcher._waiting)  # taken for an append, which is held
    writer.write(b"S1,secret,13.5\n")
    await writer.drain()
    with pytest.raises(TimeoutError):  # no acknowledgement while the append is held
        await asyncio.wait_for(reader.readline(), 0.3)
    assert not await harness.stored("S1-12.5")
    harness.gate.open.set()
    assert await reader.readline() == b"ACK S1-12.5\n"
    assert await harness.stored("S1-12.5")
    assert await reader.readline() == b"ACK S1-13.5\n"  # in order, after its own append
    assert await harness.stored("S1-13.5")
    await hang_up(writer)


async def test_messages_split_at_any_point_are_all_stored_and_answered_in_order(harness: Harness) -> None:
    rng = random.Random(651)
    values = [f"{n}.25" for n in range(60)]
    stream = b"".join(f"S1,secret,{v}\n".encode() for v in values)
    reader, writer = await harness.connect()
    await send_in_pieces(writer, stream, rng, 17)
    for value in values:
        assert await asyncio.wait_for(reader.readline(), 10) == f"ACK S1-{value}\n".encode()
    for value in values:
        assert await harness.stored(f"S1-{value}")
    await hang_up(writer)


async def test_refused_messages_are_answered_and_the_ones_around_them_are_kept(harness: Harness) -> None:
    reader, writer = await harness.connect()
    writer.write(b"S1,secret,1.0\nS9,secret,2.0\nS1,wrong,3.0\nnonsense\nS1,secret,-4.0\nS2,other,5.0\n")
    await writer.drain()
    answers = [await asyncio.wait_for(reader.readline(), 10) for _ in range(6)]
    assert answers[0] == b"ACK S1-1.0\n"
    assert answers[1].startswith(b"NAK S9 station: station S9 is not registered")
    assert answers[2].startswith(b"NAK S1 password: wrong password for station S1")
    assert answers[3].startswith(b"NAK - 'nonsense' is not STATION,PASSWORD,VALUE")
    assert answers[4].startswith(b"NAK S1")  # the node refused its envelope: not stored, and said so
    assert answers[5] == b"ACK S2-5.0\n"
    assert [await harness.stored(i) for i in ("S1-1.0", "S9-2.0", "S1-3.0", "S1--4.0", "S2-5.0")] == [
        True,
        False,
        False,
        False,
        True,
    ]
    await hang_up(writer)


async def test_a_station_that_sends_again_after_reconnecting_is_stored_once(harness: Harness) -> None:
    for _ in range(2):
        reader, writer = await harness.connect()
        writer.write(b"S1,secret,7.5\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 10) == b"ACK S1-7.5\n"
        await hang_up(writer)
    assert harness.node.log is not None
    assert harness.node.log.stats().next_offset == 2  # one envelope


@pytest.mark.station_limits(idle_timeout_s=0.2, max_connections=2)
async def test_idle_connections_are_closed_and_too_many_are_refused(harness: Harness) -> None:
    opened = [await harness.connect() for _ in range(3)]
    (first, _), (second, _), (third, _) = opened
    try:
        assert await asyncio.wait_for(third.read(), 5) == b""  # closed at once: over the limit
        assert await asyncio.wait_for(first.read(), 5) == b""  # closed when idle too long
        assert await asyncio.wait_for(second.read(), 5) == b""
        await eventually(lambda: not harness.server.connections)
    finally:
        for _, writer in opened:
            await hang_up(writer)


def test_the_registry_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "stations.toml"
    cases = {
        'region = "999999"': "station[0].region",
        'agency = "nobody"': "station[0].agency",
        "lat = 34.7": "station[0].lat",
        'limits = { "39" = { top = 1 } }': "station[0].limits.39",
        'colour = "red"': "station[0].colour",
    }
    base = '[[station]]\nprotocol = "line"\nid = "S1"\npassword = "p"\nregion = "410102"\nagency = "water"\n'
    for change, key in cases.items():
        name = change.split(" =")[0]
        lines = [line for line in base.splitlines() if not line.startswith(f"{name} =")]
        path.write_text("\n".join([*lines, change]) + "\n", encoding="utf-8")
        with pytest.raises(ConfigError) as info:
            load_registry(path, default_table())
        assert info.value.key == key, change
    path.write_text(base + base, encoding="utf-8")
    with pytest.raises(ConfigError, match="listed twice"):
        load_registry(path, default_table())


def test_the_registry_reaches_a_worker_process_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "stations.toml"
    path.write_text(REGISTRY, encoding="utf-8")
    registry = load_registry(path, default_table())
    assert stations_from_json(json.loads(json.dumps(stations_to_json(registry)))) == registry


def test_crc16_modbus_two_bytes_at_a_time_matches_the_definition() -> None:
    def bit_by_bit(data: bytes, crc: int = 0xFFFF) -> int:
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        return crc

    assert crc16_modbus(b"123456789") == 0x4B37  # the catalogue's check value of CRC-16/MODBUS
    rng = random.Random(651)
    for size in [*range(20), 63, 64, 255]:
        data = rng.randbytes(size)
        start = rng.randrange(0x10000)
        assert crc16_modbus(data, start) == bit_by_bit(data, start), size
        assert crc16_modbus(memoryview(bytearray(data)), start) == bit_by_bit(data, start), size


def test_a_wrong_number_of_station_processes_is_named(tmp_path: Path) -> None:
    stations: dict[str, Any] = {"registry": "stations.toml", "listen": {"hj212": "127.0.0.1:0"}, "processes": -1}
    table = {
        "node": {"id": "n", "region": "410000"},
        "log": {"data_dir": str(tmp_path)},
        "tls": {"insecure": True},
        "stations": stations,
    }
    with pytest.raises(ConfigError) as info:
        from_dict(table, source="test")
    assert info.value.key == "stations.processes"
    stations["processes"] = 0  # on the node's event loop, as before workers existed
    assert from_dict(table, source="test").stations.processes == 0
