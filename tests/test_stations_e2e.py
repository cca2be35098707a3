"""HJ 212 and SL 651 stations reporting to a node over TCP, end to end.

A simulated station sends its packets split at random boundaries, hangs up half way and sends
everything again on a new connection: each acknowledgement arrives only when the data it confirms
is in the node's log, every reading is stored once, and the replies follow the messages' order.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from adapters.hj212.crc import crc_text
from adapters.sl651.frame import ESC, ETX, Header, decode_frame, encode_frame
from gateway.node import Node
from tests.conftest import NodeFactory, eventually, hang_up, send_in_pieces

MN = "41010500000001"
SL651_STATION = "0041101050"
REGISTRY = f"""
[[station]]
protocol = "hj212"
id = "{MN}"
password = "s3cret"
region = "410105"
agency = "ecology_environment"
lat = 34.7996
lon = 113.6869

[[station]]
protocol = "sl651"
id = "{SL651_STATION}"
password = "1234"
region = "410105"
agency = "water"
"""
COUNT = 20


def hj212_packet(n: int, password: str = "s3cret") -> bytes:
    """A real-time upload (2011) asking for a data acknowledgement (Flag=5), minute ``n`` of 2026-11-01."""
    segment = (
        f"QN=2026110108{n:02d}00000;ST=22;CN=2011;PW={password};MN={MN};Flag=5;"
        f"CP=&&DataTime=2026110108{n:02d}00;a34004-Rtd={30 + n}.5,a34004-Flag=N&&"
    ).encode()
    return b"##" + f"{len(segment):04d}".encode() + segment + crc_text(segment) + b"\r\n"


def sl651_report(n: int) -> bytes:
    """A timed report (32H) with serial ``n``: water level 39H of 12.34 m at 08:nn."""
    body = bytes.fromhex(f"{n:04X}261101080{n % 10}00F1F1{SL651_STATION}48F0F0261101080{n % 10}392300012340")
    header = Header("hex", True, 0x01, SL651_STATION, "1234", 0x32, None)
    return encode_frame(header, body, ETX)


async def hj212_reply(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)


async def sl651_reply(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(13), 10)
    length = ((head[11] & 0x0F) << 8) | head[12]
    return head + await asyncio.wait_for(reader.readexactly(length + 4), 10)


async def stored_count(node: Node) -> int:
    assert node.log is not None
    return node.log.stats().next_offset - 1


async def station_run(
    node: Node,
    port: int,
    messages: list[bytes],
    read_reply: Callable[[asyncio.StreamReader], Awaitable[bytes]],
    check_reply: Callable[[bytes, int], None],
) -> None:
    """Sends half, hangs up, then sends everything again; every reply is checked as it arrives."""
    rng = random.Random(port)
    before = await stored_count(node)
    for upto in (COUNT // 2, COUNT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sender = asyncio.create_task(send_in_pieces(writer, b"".join(messages[:upto]), rng, 40))
        for n in range(upto):
            reply = await read_reply(reader)
            check_reply(reply, n)
            # Acknowledged only once durable: the log holds at least the readings confirmed so far.
            assert await stored_count(node) - before >= n + 1
        await sender
        await hang_up(writer)
    assert await stored_count(node) - before == COUNT  # the second connection's repeats are stored once


async def started(start_node: NodeFactory, tmp_path: Path, processes: int = 1, **settings: Any) -> Node:
    """A node listening for both protocols, its station servers in ``processes`` workers (0: in its loop)."""
    (tmp_path / "stations.toml").write_text(REGISTRY, encoding="utf-8")
    node = await start_node(
        stations={
            "registry": str(tmp_path / "stations.toml"),
            "listen": {"hj212": "127.0.0.1:0", "sl651": "127.0.0.1:0"},
            "processes": processes,
            **settings,
        }
    )
    assert set(node.station_ports) == {"hj212", "sl651"}
    assert (node.station_workers is not None) == (processes > 0)
    return node


@pytest.fixture(params=[0, 2], ids=["in-loop", "worker-processes"])
def processes(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def test_hj212_uploads_are_acknowledged_once_durable_and_stored_once(
    start_node: NodeFactory, tmp_path: Path, processes: int
) -> None:
    node = await started(start_node, tmp_path, processes)

    def check(reply: bytes, n: int) -> None:
        assert b"CN=9014" in reply, reply
        assert f"QN=2026110108{n:02d}00000".encode() in reply  # the acknowledgement names its upload

    await station_run(node, node.station_ports["hj212"], [hj212_packet(n) for n in range(COUNT)], hj212_reply, check)


async def test_sl651_reports_are_confirmed_once_durable_and_stored_once(
    start_node: NodeFactory, tmp_path: Path, processes: int
) -> None:
    node = await started(start_node, tmp_path, processes)

    def check(reply: bytes, n: int) -> None:
        frame = decode_frame(reply)
        assert (frame.header.station, frame.header.function, frame.end) == (SL651_STATION, 0x32, ESC)
        assert frame.body[:2] == n.to_bytes(2, "big")  # the serial of the report it confirms

    await station_run(node, node.station_ports["sl651"], [sl651_report(n) for n in range(COUNT)], sl651_reply, check)


async def test_a_wrong_password_is_refused_and_the_uploads_around_it_are_kept(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = await started(start_node, tmp_path)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.station_ports["hj212"])
    writer.write(hj212_packet(1) + hj212_packet(2, password="guess") + hj212_packet(3))
    await writer.drain()
    replies = [await hj212_reply(reader) for _ in range(3)]
    assert b"CN=9014" in replies[0]
    assert b"CN=9011" in replies[1]  # refused, with the reason code the standard has for it
    assert b"CN=9014" in replies[2]
    assert await stored_count(node) == 2
    await hang_up(writer)


def hj212_check(reply: bytes, n: int) -> None:
    assert b"CN=9014" in reply, reply
    assert f"QN=2026110108{n:02d}00000".encode() in reply


async def test_a_killed_worker_is_started_again_and_the_resent_uploads_are_stored_once(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = await started(start_node, tmp_path, processes=1)
    workers = node.station_workers
    assert workers is not None
    await asyncio.wait_for(workers.ready(), 30)
    worker = workers.workers[0]
    first_pid = worker.pid
    assert first_pid is not None
    packets = [hj212_packet(n) for n in range(COUNT)]
    before = await stored_count(node)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.station_ports["hj212"])
    writer.write(b"".join(packets[: COUNT // 2]))
    for n in range(COUNT // 2):
        hj212_check(await hj212_reply(reader), n)
    assert await stored_count(node) - before == COUNT // 2
    with capture_logs() as logs:
        writer.write(b"".join(packets[COUNT // 2 :]))  # mid-stream: some of these may be stored, none answered
        os.kill(first_pid, signal.SIGKILL)
        answered = COUNT // 2
        while True:  # what the worker answered before it died is right; then the connection ends
            try:
                hj212_check(await hj212_reply(reader), answered)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            assert await stored_count(node) - before >= answered + 1
            answered += 1
        await hang_up(writer)
        await eventually(lambda: worker.starts == 2 and worker.ready.is_set(), 30)
    died = [entry for entry in logs if entry["event"] == "station_worker_died"]
    assert [entry["outcome"] for entry in died] == ["killed by signal 9"], logs
    assert worker.pid != first_pid

    # The station connects again and sends everything it has not seen answered (here: all of it).
    reader, writer = await asyncio.open_connection("127.0.0.1", node.station_ports["hj212"])
    writer.write(b"".join(packets))
    for n in range(COUNT):
        hj212_check(await hj212_reply(reader), n)
    await hang_up(writer)
    assert await stored_count(node) - before == COUNT  # every reading once, whatever the dead worker had appended


async def closed_by_node(reader: asyncio.StreamReader) -> bool:
    """Whether the node closes (or resets) the connection with nothing more sent."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


async def test_worker_processes_keep_limits_timeouts_metrics_and_stop_with_the_node(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node = await started(start_node, tmp_path, processes=1, idle_timeout_s=0.5, max_connections=1)
    workers = node.station_workers
    assert workers is not None
    await asyncio.wait_for(workers.ready(), 30)
    process = workers.workers[0].process
    assert process is not None

    reader, writer = await asyncio.open_connection("127.0.0.1", node.station_ports["hj212"])
    writer.write(hj212_packet(1) + hj212_packet(2, password="guess"))
    assert b"CN=9014" in await hj212_reply(reader)
    assert b"CN=9011" in await hj212_reply(reader)  # the registry's password check runs in the worker
    # A second connection is past max_connections: closed at once, never answered.
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", node.station_ports["hj212"])
    extra_writer.write(hj212_packet(3))
    assert await closed_by_node(extra_reader)
    await hang_up(extra_writer)
    # The first, silent now, is closed after idle_timeout_s.
    assert await closed_by_node(reader)
    await hang_up(writer)

    registry: CollectorRegistry = node.metrics.registry

    def counted(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"protocol": "hj212", **labels}) or 0.0

    await eventually(lambda: counted("yiwang_station_messages_total", outcome="stored") == 1, 10)
    await eventually(lambda: counted("yiwang_station_refused_total", reason="password") == 1, 10)
    await eventually(lambda: counted("yiwang_station_refused_total", reason="connections") == 1, 10)
    await eventually(lambda: counted("yiwang_station_envelopes_total") >= 1, 10)

    await node.stop()
    assert process.returncode is not None  # the node's stop ended its worker
    assert node.station_workers is None
