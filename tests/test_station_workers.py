"""The node accepts the stations' connections and hands them to its station worker processes.

With two workers, connections are spread evenly (asked of the workers themselves, not timed); a
worker that dies with connections handed to it but not yet taken costs no acknowledged reading and
the node goes on accepting for the other worker; ``max_connections`` holds for all workers
together; and only the node holds the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from gateway import station_workers
from gateway.node import Node
from gateway.station_workers import StationWorkers
from tests.conftest import NodeFactory, eventually, hang_up
from tests.test_stations_e2e import closed_by_node, hj212_packet, hj212_reply, sl651_reply, sl651_report, started
from tests.test_stations_e2e import stored_count as stored_since_start


async def two_workers(start_node: NodeFactory, tmp_path: Path, **settings: object) -> tuple[Node, StationWorkers]:
    node = await started(start_node, tmp_path, processes=2, **settings)
    workers = node.station_workers
    assert workers is not None
    await asyncio.wait_for(workers.ready(), 30)
    return node, workers


def reported(workers: StationWorkers, protocol: str) -> list[float]:
    """The connections each worker says it serves (its own gauge, sent to the node every second)."""
    return [worker.counts.connections.get(protocol, 0.0) for worker in workers.workers]


def gauge(node: Node, protocol: str) -> float:
    registry: CollectorRegistry = node.metrics.registry
    return registry.get_sample_value("yiwang_station_connections", {"protocol": protocol}) or 0.0


def descriptors_of(pid: int) -> set[str]:
    """What the open file descriptors of a process are (``socket:[inode]`` for a socket), from /proc."""
    return {str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()}


async def answered_connection(port: int, upload: bytes, protocol: str) -> asyncio.StreamWriter:
    """A station connection that sent one upload and got its answer (so a worker serves it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upload)
    reply = await (hj212_reply(reader) if protocol == "hj212" else sl651_reply(reader))
    assert reply, reply
    return writer


async def test_connections_are_spread_evenly_over_two_workers_and_only_the_node_listens(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    node, workers = await two_workers(start_node, tmp_path)
    ports = node.station_ports
    writers = await asyncio.gather(
        *(answered_connection(ports["hj212"], hj212_packet(n), "hj212") for n in range(40)),
        *(answered_connection(ports["sl651"], sl651_report(n), "sl651") for n in range(10)),
    )
    assert [worker.live["hj212"] for worker in workers.workers] == [20, 20]
    assert [worker.live["sl651"] for worker in workers.workers] == [5, 5]
    await eventually(lambda: reported(workers, "hj212") == [20.0, 20.0] and reported(workers, "sl651") == [5.0, 5.0])
    assert gauge(node, "hj212") == 40
    assert gauge(node, "sl651") == 10

    # Nobody but the node can accept on the port: the workers do not hold the listening sockets.
    listening = {f"socket:[{os.fstat(sock.fileno()).st_ino}]" for sock in workers.listening.values()}
    for worker in workers.workers:
        assert worker.pid is not None
        assert not descriptors_of(worker.pid) & listening

    for writer in writers:
        await hang_up(writer)
    # Each worker reports the connections it closed: the node's counts go back to nothing.
    await eventually(lambda: workers.live("hj212") == 0 and workers.live("sl651") == 0)
    assert gauge(node, "hj212") == 0


async def test_a_worker_dying_with_connections_not_yet_taken_loses_no_acknowledged_reading(
    start_node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dead worker stays dead for the whole test: every station ends up on the other one.
    monkeypatch.setattr(station_workers, "FIRST_RESTART_DELAY_S", 60.0)
    node, workers = await two_workers(start_node, tmp_path)
    stopped, other = workers.workers
    assert stopped.pid is not None
    port = node.station_ports["hj212"]
    stations, per_station = 6, 5
    acknowledged = [0] * stations
    connections = [0] * stations
    before = await stored_since_start(node)

    release = asyncio.Event()

    async def station(index: int) -> None:
        """Sends its readings, and sends again what was not acknowledged when its connection ends; once
        all are acknowledged it stays connected until released (so the node's counts only grow)."""
        readings = [hj212_packet(index * per_station + k) for k in range(per_station)]
        while True:
            connections[index] += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"".join(readings[acknowledged[index] :]))
            try:
                while acknowledged[index] < per_station:
                    reply = await reader.readuntil(b"\r\n")
                    assert f"QN=2026110108{index * per_station + acknowledged[index]:02d}".encode() in reply
                    acknowledged[index] += 1
                    # acknowledged only once durable: the log holds at least every reading answered so far
                    assert await stored_since_start(node) - before >= sum(acknowledged)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # its worker died: this station connects again
            else:
                await release.wait()
                return
            finally:
                await hang_up(writer)

    os.kill(stopped.pid, signal.SIGSTOP)  # it takes no connection from now on; they wait in its socket pair
    try:
        with capture_logs() as logs:
            running = [asyncio.create_task(station(index)) for index in range(stations)]
            # the node hands out to the worker with fewer connections: half go to the stopped one
            await eventually(lambda: [w.live.get("hj212", 0) for w in workers.workers] == [3, 3])
            os.kill(stopped.pid, signal.SIGKILL)
            await eventually(lambda: acknowledged == [per_station] * stations, 30)
            release.set()
            await asyncio.wait_for(asyncio.gather(*running), 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped.pid, signal.SIGKILL)

    assert acknowledged == [per_station] * stations
    assert await stored_since_start(node) - before == stations * per_station  # each reading once
    assert sum(connections) == stations + stations // 2  # those handed to the dead worker connected again
    # The node kept accepting while one worker was dead: the other one served them all.
    assert [entry["outcome"] for entry in logs if entry["event"] == "station_worker_died"] == ["killed by signal 9"]
    assert stopped.starts == 1
    assert not stopped.ready.is_set()
    assert stopped.live == {}
    await eventually(lambda: other.live.get("hj212", 0) == 0)


async def test_max_connections_holds_for_all_workers_together(start_node: NodeFactory, tmp_path: Path) -> None:
    node, workers = await two_workers(start_node, tmp_path, max_connections=3)
    port = node.station_ports["hj212"]
    writers = [await answered_connection(port, hj212_packet(n), "hj212") for n in range(3)]
    assert sorted(worker.live["hj212"] for worker in workers.workers) == [1, 2]

    # The fourth is one too many, though each worker alone serves fewer than three.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hj212_packet(3))
    assert await closed_by_node(reader)
    await hang_up(writer)
    registry: CollectorRegistry = node.metrics.registry
    refused = {"protocol": "hj212", "reason": "connections"}
    assert registry.get_sample_value("yiwang_station_refused_total", refused) == 1
    await eventually(lambda: sum(reported(workers, "hj212")) == 3)

    # Once a station hangs up and its worker says so, there is room again.
    await hang_up(writers.pop())
    await eventually(lambda: workers.live("hj212") == 2)
    writers.append(await answered_connection(port, hj212_packet(4), "hj212"))
    assert workers.live("hj212") == 3
    for open_writer in writers:
        await hang_up(open_writer)


async def test_a_listening_socket_on_port_zero_gets_a_port_the_node_knows() -> None:
    sock = station_workers.listening_socket("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0
        assert sock.gettimeout() == 0.0  # the node accepts on it from its event loop
        with pytest.raises(OSError, match=rf"cannot listen for stations on 127.0.0.1:{port}"):
            station_workers.listening_socket("127.0.0.1", port)  # taken: the error names the address
    finally:
        sock.close()
    assert sock.family == socket.AF_INET
