"""The replicated province node: a three-server NATS JetStream cluster (real nats-server processes on
loopback) holding the log, and gateway replicas sharing one node identity in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from yiwang.v1 import gateway_pb2 as gw

from gateway import id_index
from gateway.client import GatewayClient
from gateway.config import from_dict, load
from gateway.errors import ConfigError, LogCorruptError
from gateway.jetstream_log import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    JetStreamBatchLog,
    JetStreamLog,
    JetStreamSettings,
    migrate_node_log,
    settings_from_config,
)
from gateway.log import AppendBatch, AppendResult
from gateway.pki import Authority, Role
from gateway.selection import record_of
from gateway.sqlite_log import SqliteLog
from tests import factories
from tests.conftest import NodeFactory, eventually, free_port, wait_listening
from tests.nats_cluster import NatsCluster, required_nats_server

ROOT = Path(__file__).resolve().parent.parent
NODE_ID = "henan-province"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats_cluster = NatsCluster(tmp_path / "nats", size=3)
    nats_cluster.start()
    yield nats_cluster
    nats_cluster.stop()


def batch_of(count: int) -> AppendBatch:
    batch = AppendBatch()
    for _ in range(count):
        env = factories.observation()
        batch.add(env.id, env.SerializeToString(), record_of(env))
    return batch


@contextlib.asynccontextmanager
async def opened(settings: JetStreamSettings, cache_bytes: int = 64 << 20) -> AsyncIterator[JetStreamLog]:
    log = await JetStreamLog.open(settings, node_id=NODE_ID, cache_bytes=cache_bytes)
    try:
        yield log
    finally:
        await log.close()


@pytest.mark.parametrize("layout", ["envelope", "batch"])
async def test_replicas_share_one_replicated_log(cluster: NatsCluster, tmp_path: Path, layout: str) -> None:
    settings = JetStreamSettings(servers=tuple(cluster.urls), stream="SHARED", replicas=3, layout=layout)
    async with (
        opened(dataclasses.replace(settings, index_dir=tmp_path / "a")) as a,
        opened(dataclasses.replace(settings, index_dir=tmp_path / "b")) as b,
    ):
        batch = batch_of(3)
        first = await a.append(batch)
        await asyncio.wait_for(b.wait_beyond(first.offsets[-1]), 10)
        assert b.next_offset == a.next_offset
        stored = await b.read(first.offsets[0], 10)
        assert [i for s in stored for i in s.ids] == batch.ids
        again = await b.append(batch)  # the same ids through the other replica: duplicates, same offsets
        assert again.offsets == first.offsets
        assert again.duplicates == frozenset(range(3))
        assert await a.save_position("sub", first.offsets[2]) == first.offsets[2]
        assert await b.save_position("sub", first.offsets[0]) == first.offsets[2]  # never backwards
        assert await b.load_position("sub") == first.offsets[2]


async def test_an_id_stored_before_the_duplicate_window_is_still_a_duplicate(cluster: NatsCluster) -> None:
    """The node's own check for old ids: a message already on the id's subject, stored without a
    Nats-Msg-Id (as if the duplicate window had long forgotten it), makes a new append a duplicate."""
    settings = JetStreamSettings(servers=tuple(cluster.urls), stream="OLD_IDS", replicas=3, layout="envelope")
    async with opened(settings) as log:
        batch = batch_of(2)
        nc = await nats.connect(cluster.urls[1])
        try:
            js = nc.jetstream()
            payload = b"\0" * 8 + batch.records[0] + batch.envelopes[0]
            stored = await js.publish(settings.subject_for(batch.ids[0]), payload, headers={"Nats-Msg-Id": "other"})
            with pytest.raises(nats.js.errors.APIError):  # the server's check itself
                await js.publish(
                    settings.subject_for(batch.ids[0]), payload, headers={EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}
                )
        finally:
            await nc.close()
        result = await log.append(batch)
        assert result.offsets[0] == stored.seq
        assert result.duplicates == frozenset({0})
        assert result.offsets[1] == stored.seq + 1


@pytest.mark.parametrize("layout", ["envelope", "batch"])
async def test_appends_survive_the_loss_of_a_nats_server(cluster: NatsCluster, tmp_path: Path, layout: str) -> None:
    settings = JetStreamSettings(
        servers=tuple(cluster.urls), stream="KILLED", replicas=3, ack_timeout_s=2.0, layout=layout, index_dir=tmp_path
    )
    async with opened(settings) as log:
        acknowledged = [o for _ in range(5) for o in (await log.append(batch_of(20))).offsets]
        await asyncio.to_thread(cluster.servers[0].kill)
        for _ in range(5):
            acknowledged += (await log.append(batch_of(20))).offsets
        assert acknowledged == list(range(1, 201))
        cluster.restart(0)
        await cluster.wait_healthy_async(cluster.servers[0])
    async with opened(settings) as reopened:
        assert reopened.next_offset == 201


# -- the batch layout: one stream message per append ------------------------------------------------------


async def test_batch_replicas_racing_on_the_same_ids_keep_one_order_and_one_offset_per_id(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """Two replicas append at once, many batches each, half of the ids shared: the stream refuses the
    replica that is behind, it catches up and tries again. Every id ends at one offset, reported alike by
    both, stored once, and the offsets are contiguous."""
    settings = JetStreamSettings(servers=tuple(cluster.urls), stream="RACE", replicas=3, layout="batch")
    shared = [factories.observation() for _ in range(300)]
    rng = random.Random(9)

    def batches() -> list[AppendBatch]:
        out = []
        for k in range(30):
            batch = AppendBatch()
            for env in [*rng.sample(shared, 10), *(factories.observation() for _ in range(10))]:
                batch.add(env.id, env.SerializeToString(), record_of(env))
            out.append(batch)
            del k
        return out

    async def run(log: JetStreamLog, work: list[AppendBatch]) -> list[tuple[AppendBatch, AppendResult]]:
        futures = [log.append_nowait(b) for b in work]
        return [(b, await f) for b, f in zip(work, futures, strict=True)]

    async with (
        opened(dataclasses.replace(settings, index_dir=tmp_path / "a"), cache_bytes=1) as a,
        opened(dataclasses.replace(settings, index_dir=tmp_path / "b"), cache_bytes=1) as b,
    ):
        results = await asyncio.gather(run(a, batches()), run(b, batches()))
        head = max(a.next_offset, b.next_offset)
        await asyncio.wait_for(a.wait_beyond(head - 1), 10)
        await asyncio.wait_for(b.wait_beyond(head - 1), 10)
        stored: list[tuple[int, str]] = []
        position = 1
        while position < a.next_offset:
            for got in await a.read(position, 1000):
                start = got.index_at(position)
                stored += [(got.first_offset + i, got.ids[i]) for i in range(start, got.count)]
                position = got.next_offset
    assert [o for o, _ in stored] == list(range(1, len(stored) + 1))  # contiguous, in one order
    where = {envelope_id: offset for offset, envelope_id in stored}
    assert len(where) == len(stored)  # every id stored once
    accepted = 0
    for batch, result in [pair for run_results in results for pair in run_results]:
        for i, envelope_id in enumerate(batch.ids):
            assert result.offsets[i] == where[envelope_id]
            accepted += i not in result.duplicates
    assert accepted == len(stored)  # each id accepted once, a duplicate everywhere else


async def test_batch_layout_finds_old_ids_through_the_on_disk_index(cluster: NatsCluster, tmp_path: Path) -> None:
    """Ids that left memory for the replica's on-disk index, and a replica started later (which replays
    the stream only after its index's watermark), still answer DUPLICATE with the first offset."""
    settings = JetStreamSettings(
        servers=tuple(cluster.urls), stream="OLD_BATCHES", replicas=3, layout="batch", index_dir=tmp_path / "a"
    )
    first = batch_of(20)
    index_dir = tmp_path / "a" / "OLD_BATCHES-ids"

    def ids_on_disk() -> int:
        try:
            return sum(id_index._Run.load(path).count for path in index_dir.glob("*.run"))
        except FileNotFoundError:  # merged meanwhile
            return 0

    async with opened(settings, cache_bytes=1) as log:
        assert isinstance(log, JetStreamBatchLog)
        batch_log: JetStreamBatchLog = log
        batch_log._index.chunk_entries = 8  # hand ids to the on-disk index early
        stored = await log.append(first)
        for _ in range(3):
            await log.append(batch_of(5))
        await eventually(lambda: ids_on_disk() >= 20, 30)
        again = await log.append(first)
        assert again.offsets == stored.offsets
        assert again.duplicates == frozenset(range(20))
    async with (
        opened(settings, cache_bytes=1) as reopened,
        opened(dataclasses.replace(settings, index_dir=tmp_path / "b"), cache_bytes=1) as fresh,
    ):
        for log in (reopened, fresh):
            mixed = batch_of(2)
            mixed.add(first.ids[7], first.envelopes[7], first.records[7])
            result = await log.append(mixed)
            assert result.offsets[2] == stored.offsets[7]
            assert result.duplicates == frozenset({2})
            found = await log.find([first.ids[3]])
            batch, index = found[first.ids[3]]
            assert batch.first_offset + index == stored.offsets[3]


async def test_batch_layout_resends_a_batch_whose_answer_was_lost_without_storing_it_twice(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """The stream stores a batch but its answer never reaches the replica (here: dropped on purpose after
    the real publish). The replica sends it again; it is stored once, and the append reports it accepted."""
    settings = JetStreamSettings(
        servers=tuple(cluster.urls), stream="LOST_ACK", replicas=3, layout="batch", index_dir=tmp_path
    )
    async with opened(settings) as log:
        await log.append(batch_of(3))
        js = log._js
        assert js is not None
        real_publish = js.publish
        dropped: list[int] = []

        async def publish_and_lose_the_answer(*args: Any, **kwargs: Any) -> Any:
            answer = await real_publish(*args, **kwargs)
            if not dropped:
                dropped.append(answer.seq)
                raise nats.errors.TimeoutError
            return answer

        js.publish = publish_and_lose_the_answer  # type: ignore[method-assign]
        batch = batch_of(4)
        result = await log.append(batch)
        assert dropped
        assert result.offsets == [4, 5, 6, 7]
        assert result.duplicates == frozenset()
        await log.append(batch_of(1))
        stored = [i for b in await log.read(1, 100) for i in b.ids]
        assert len(stored) == len(set(stored)) == 8


async def test_a_stream_of_the_other_layout_is_refused_by_name(cluster: NatsCluster, tmp_path: Path) -> None:
    settings = JetStreamSettings(
        servers=tuple(cluster.urls), stream="LAYOUTS", replicas=3, layout="envelope", index_dir=tmp_path
    )
    async with opened(settings) as log:
        await log.append(batch_of(1))
    with pytest.raises(LogCorruptError, match="layout = 'envelope'"):
        await JetStreamLog.open(dataclasses.replace(settings, layout="batch"), node_id=NODE_ID)


# -- two gateway replicas as processes -------------------------------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_file: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def replica_config(folder: Path, name: str, servers: list[str], port: int, layout: str = "envelope") -> Path:
    servers_toml = ", ".join(f'"{s}"' for s in servers)
    text = f"""
[node]
id = "{NODE_ID}"
region = "410000"

[listen]
grpc = "127.0.0.1:{port}"
http = "127.0.0.1:{free_port()}"

[log]
data_dir = "{folder / name}"
fsync = false
backend = "jetstream"

[log.jetstream]
servers = [{servers_toml}]
stream = "PROVINCE"
replicas = 3
layout = "{layout}"

[limits]
admission_workers = 0

[tls]
insecure = true
"""
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def replicas(request: pytest.FixtureRequest, cluster: NatsCluster, tmp_path: Path) -> Iterator[list[Replica]]:
    layout = getattr(request, "param", "envelope")
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            config = replica_config(tmp_path, name, cluster.urls, port, layout)
            log_file = tmp_path / f"replica-{name}.log"
            with log_file.open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", "gateway", "--config", str(config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            replica = Replica(name, port, proc, log_file)
            started.append(replica)
            try:
                wait_listening(port, proc, f"replica {name}", timeout=60)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {log_file.read_text(errors='replace')[-3000:]}") from None
        yield started
    finally:
        for replica in started:
            replica.stop()


@dataclass
class Reader:
    """A durable subscriber: processes each batch, then acknowledges it.

    A delivery below the position the node confirmed to have saved would be a duplicate delivery.
    (The batch whose acknowledgement was in flight when its replica died may come again: the reader
    never learnt whether it was saved, as with any at-least-once consumer.)
    """

    name: str
    processed: list[str] = field(default_factory=list)
    resumed_on: list[str] = field(default_factory=list)
    confirmed: int = 0  # the position the node last confirmed to have saved
    redelivered: list[int] = field(default_factory=list)  # offsets delivered below ``confirmed``

    async def run(self, targets: list[str]) -> None:
        """Reads through the first replica that answers, resuming on the next one when a stream breaks."""
        turn = 0
        while True:
            target = targets[turn % len(targets)]
            self.resumed_on.append(target)
            async with GatewayClient(target, insecure=True) as client:
                request = gw.SubscribeRequest(durable_name=self.name, position=gw.OLDEST)
                try:
                    async for batch in client.subscribe(request):
                        self.redelivered += [d.offset for d in batch.deliveries if d.offset < self.confirmed]
                        self.processed += [d.envelope.id for d in batch.deliveries]
                        self.confirmed = await client.ack(self.name, batch.next_offset)
                except grpc.aio.AioRpcError:
                    turn += 1  # that replica is gone: resume on another one from the durable position
                    continue


async def publish_until(targets: list[str], acknowledged: set[str], stop: asyncio.Event, failovers: list[str]) -> None:
    """Publishes batches through one client of both replicas (gRPC round robin); a batch whose reply
    is lost goes again, and the channel sends it to a replica that is still there."""
    pending = [factories.observation() for _ in range(10)]
    async with GatewayClient(targets, insecure=True) as client:
        while not stop.is_set():
            try:
                reply = await client.publish(pending, timeout=10)
            except grpc.aio.AioRpcError as exc:
                failovers.append(exc.code().name)
                continue
            outcomes = {r.outcome for r in reply.results}
            assert outcomes <= {gw.PublishResult.ACCEPTED, gw.PublishResult.DUPLICATE}, reply
            acknowledged.update(r.id for r in reply.results)
            pending = [factories.observation() for _ in range(10)]
            await asyncio.sleep(0.005)  # a steady trickle, so that the kills land mid-stream


@pytest.mark.parametrize("replicas", ["envelope", "batch"], indirect=True)
async def test_two_replicas_survive_a_killed_nats_server_and_a_killed_replica(
    cluster: NatsCluster, replicas: list[Replica]
) -> None:
    a, b = replicas
    acknowledged: set[str] = set()
    stop = asyncio.Event()
    failovers: list[str] = []
    readers = [Reader("reader-a"), Reader("reader-b")]
    tasks = [
        asyncio.create_task(publish_until([a.target, b.target], acknowledged, stop, failovers), name="pub-a"),
        asyncio.create_task(publish_until([b.target, a.target], acknowledged, stop, failovers), name="pub-b"),
        asyncio.create_task(readers[0].run([a.target, b.target]), name="read-a"),
        asyncio.create_task(readers[1].run([b.target, a.target]), name="read-b"),
    ]

    async def reach(condition: Callable[[], bool]) -> None:
        """Waits for ``condition``; on failure says where things stood, with the replicas' log tails."""
        try:
            await eventually(condition, 60)
        except AssertionError:
            tails = {r.name: r.log_file.read_text(errors="replace")[-2000:] for r in replicas}
            processed = [len(r.processed) for r in readers]
            finished = [t for t in tasks if t.done()]
            raise AssertionError(
                f"acknowledged {len(acknowledged)}, processed {processed}, {finished}, {tails}"
            ) from None

    try:
        await reach(lambda: len(acknowledged) >= 1000 and all(len(r.processed) >= 500 for r in readers))
        await asyncio.to_thread(cluster.servers[0].kill)  # mid-stream: publishes and reads are in flight
        await asyncio.to_thread(a.kill)
        mark = len(acknowledged)
        await reach(lambda: len(acknowledged) >= mark + 1000)  # the publishers' channels went on with b
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks[:2]), 30)
        final = set(acknowledged)
        await reach(lambda: all(final <= set(r.processed) for r in readers))
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for reader in readers:
        assert not reader.redelivered, f"{reader.name} got envelopes again below its saved position"
        assert reader.confirmed > 0
        assert final <= set(reader.processed), f"{reader.name} lost acknowledged envelopes"
    assert readers[0].resumed_on[-1] == b.target  # the reader of the dead replica resumed on the survivor


# -- migration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["envelope", "batch"])
async def test_log_migrate_copies_the_embedded_log_and_is_idempotent(
    cluster: NatsCluster, tmp_path: Path, layout: str
) -> None:
    data = tmp_path / "node"
    embedded = await SqliteLog.open(data / "log.sqlite", node_id=NODE_ID, fsync=False)
    try:
        for n in (3, 1, 4):
            await embedded.append(batch_of(n))
        await embedded.save_position("reader", 5)
        await embedded.save_position("federation/up", 8)
        wanted = await embedded.read(embedded.oldest_offset, 100)
    finally:
        await embedded.close()
    servers = ", ".join(f'"{u}"' for u in cluster.urls)
    config_file = tmp_path / "node.toml"
    config_file.write_text(
        f'[node]\nid = "{NODE_ID}"\nregion = "410000"\n\n[log]\ndata_dir = "node"\nbackend = "jetstream"\n\n'
        f'[log.jetstream]\nservers = [{servers}]\nstream = "MIGRATED"\nlayout = "{layout}"\n\n[tls]\ninsecure = true\n',
        encoding="utf-8",
    )
    report = await migrate_node_log(load(config_file))
    assert (report.copied, report.positions, report.next_offset) == (8, 2, 9)
    again = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "log", "migrate", "--config", str(config_file),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await again.communicate()
    assert again.returncode == 0
    assert json.loads(out) == {"copied": 0, "already_there": 0, "positions": 2, "next_offset": 9}
    settings = JetStreamSettings(
        servers=tuple(cluster.urls), stream="MIGRATED", replicas=3, layout=layout, index_dir=tmp_path / "replica"
    )
    async with opened(settings) as log:
        got = await log.read(1, 100)
        # Same offsets, ids, envelopes, append times: the very same Delivery bytes as the embedded log's.
        assert [b.entries(0, b.count) for b in got] == [b.entries(0, b.count) for b in wanted]
        assert await log.load_position("reader") == 5
        assert await log.load_position("federation/up") == 8
        assert (await log.append(batch_of(1))).offsets == [9]


async def test_log_migrate_while_the_node_runs_stops_with_an_error(tmp_path: Path) -> None:
    """The README says to stop the node first; a migration that was not told so is refused, not
    left to race the node for its id index."""
    running = await SqliteLog.open(tmp_path / "node" / "log.sqlite", node_id=NODE_ID, fsync=False)
    try:
        await running.append(batch_of(2))
        config_file = tmp_path / "node.toml"
        config_file.write_text(
            f'[node]\nid = "{NODE_ID}"\nregion = "410000"\n\n[log]\ndata_dir = "node"\nbackend = "jetstream"\n\n'
            '[log.jetstream]\nservers = ["nats://127.0.0.1:1"]\nstream = "MIGRATED"\n\n[tls]\ninsecure = true\n',
            encoding="utf-8",
        )
        migrate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "log", "migrate", "--config", str(config_file),
            stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        _, err = await migrate.communicate()
        assert migrate.returncode != 0
        assert "log-ids is in use by another process: is a node running on this data directory?" in err.decode()
        assert (await running.append(batch_of(1))).offsets == [3]  # the node went on
    finally:
        await running.close()


# -- deploy/nats -----------------------------------------------------------------------------------------


def test_the_deploy_files_are_valid(tmp_path: Path) -> None:
    """deploy/nats: the replica's config loads, and nats-server accepts the cluster's config as written
    (pointed at a test PKI, since /etc/yiwang does not exist here)."""
    config = load(ROOT / "deploy" / "nats" / "replica.toml")
    assert config.log.backend == "jetstream"
    assert len(config.log.jetstream.servers) == 3
    binary = required_nats_server()
    pki = Authority.init(tmp_path / "pki", trust_domain="yjt.henan.gov.cn")
    pki.issue(pki.identity(Role.GATEWAY, "410000", "nats", "nats"), dns_names=("nats-1.yjt.henan.gov.cn",))
    shared = (ROOT / "deploy" / "nats" / "cluster.conf").read_text(encoding="utf-8")
    shared = shared.replace("/etc/yiwang/pki", str(pki.dir)).replace("/var/lib/nats", str(tmp_path / "store"))
    (tmp_path / "cluster.conf").write_text(shared, encoding="utf-8")
    for i in (1, 2, 3):
        server = (ROOT / "deploy" / "nats" / f"nats-{i}.conf").read_text(encoding="utf-8")
        (tmp_path / f"nats-{i}.conf").write_text(server, encoding="utf-8")
        checked = subprocess.run(
            [binary, "-c", str(tmp_path / f"nats-{i}.conf"), "-t"], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


# -- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("log_table", "key"),
    [
        ({"backend": "postgres"}, "log.backend"),
        ({"backend": "jetstream"}, "log.jetstream.servers"),
        ({"backend": "jetstream", "jetstream": {"servers": ["127.0.0.1:4222"]}}, "log.jetstream.servers[0]"),
        (
            {"backend": "jetstream", "jetstream": {"servers": ["nats://h:4222"], "stream": "a.b"}},
            "log.jetstream.stream",
        ),
        (
            {"backend": "jetstream", "jetstream": {"servers": ["nats://h:4222"], "replicas": 0}},
            "log.jetstream.replicas",
        ),
        ({"jetstream": {"servers": ["nats://h:4222"], "tls_cert": "c.pem"}}, "log.jetstream.tls_key"),
        ({"jetstream": {"server": ["nats://h:4222"]}}, "log.jetstream.server"),
        ({"jetstream": {"servers": ["nats://h:4222"], "layout": "envelopes"}}, "log.jetstream.layout"),
    ],
)
def test_bad_jetstream_settings_are_named(log_table: dict[str, object], key: str) -> None:
    table = {"node": {"id": NODE_ID, "region": "410000"}, "log": log_table, "tls": {"insecure": True}}
    with pytest.raises(ConfigError) as caught:
        from_dict(table, source="node.toml")
    assert caught.value.key == key
    assert "node.toml" in str(caught.value)


def test_jetstream_settings_follow_the_config(tmp_path: Path) -> None:
    table = {
        "node": {"id": NODE_ID, "region": "410000"},
        "log": {
            "backend": "jetstream",
            "retention_hours": 24,
            "retention_bytes": "1GiB",
            "jetstream": {"servers": ["tls://h1:4222", "tls://h2:4222"], "replicas": 1, "tls_ca": "ca.pem"},
        },
        "tls": {"insecure": True},
    }
    settings = settings_from_config(from_dict(table, source=str(tmp_path / "node.toml")))
    assert settings.servers == ("tls://h1:4222", "tls://h2:4222")
    assert (settings.stream, settings.replicas) == ("YIWANG_LOG", 1)
    assert (settings.max_age_s, settings.max_bytes) == (24 * 3600.0, 1 << 30)
    assert settings.tls_ca == tmp_path / "ca.pem"  # relative to the config file
    assert settings.credentials is None
    assert (settings.layout, settings.index_dir) == ("batch", tmp_path / "data")  # the replica's id index


# -- a node on the cluster, in process ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["envelope", "batch"])
async def test_a_node_on_jetstream_serves_publish_get_query_and_info(
    cluster: NatsCluster, start_node: NodeFactory, layout: str
) -> None:
    jetstream = {"servers": cluster.urls, "stream": "NODE", "replicas": 3, "layout": layout}
    node = await start_node(log={"backend": "jetstream", "jetstream": jetstream})
    assert isinstance(node.log, JetStreamLog)
    envelopes = [factories.observation() for _ in range(5)]
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        before = time.time_ns()
        first = await client.publish(envelopes)
        assert [r.outcome for r in first.results] == [gw.PublishResult.ACCEPTED] * 5
        again = await client.publish(envelopes)
        assert [r.outcome for r in again.results] == [gw.PublishResult.DUPLICATE] * 5
        assert [r.offset for r in again.results] == [r.offset for r in first.results]
        got = await client.get([envelopes[3].id, "missing-id"])
        assert [d.envelope.id for d in got.deliveries] == [envelopes[3].id]
        assert got.deliveries[0].offset == first.results[3].offset
        assert list(got.missing) == ["missing-id"]
        query = gw.QueryRequest()
        query.from_time.FromNanoseconds(before)
        found = [d.envelope.id async for d in client.query_all(query)]
        assert found == [e.id for e in envelopes]
        info = await client.info()
        assert (info.oldest_offset, info.next_offset) == (1, 6)


def test_a_test_cluster_whose_port_was_taken_meanwhile_starts_on_new_ports(tmp_path: Path) -> None:
    """The fixtures' servers choose free ports before they bind them; another program may take one in
    between. The cluster then starts again on new ports instead of failing the test."""
    cluster = NatsCluster(tmp_path / "nats", size=1)
    taken = cluster.servers[0].port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        cluster.start()
        try:
            assert cluster.servers[0].port != taken
            assert cluster.servers[0].healthy()
        finally:
            cluster.stop()
