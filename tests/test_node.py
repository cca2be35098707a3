"""A node end to end: real in-process nodes on loopback, driven over real gRPC and HTTP.

Every wait is on a condition (``eventually``) or on the next item of a stream with a generous
timeout, never on a fixed sleep, so the tests hold on a slow, busy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw
from yiwang.v1 import gateway_pb2_grpc as gw_grpc

from gateway import __version__
from gateway.client import GatewayClient, channel_target
from gateway.errors import ConfigError
from gateway.ids import uuid7
from gateway.node import Node
from gateway.sqlite_log import SqliteLog
from gateway.tls import ClientTls
from tests import factories
from tests.conftest import NodeFactory, eventually

ACCEPTED = gw.PublishResult.ACCEPTED
DUPLICATE = gw.PublishResult.DUPLICATE
REJECTED = gw.PublishResult.REJECTED
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
STREAM_TIMEOUT = 30.0  # for one stream item; generous, only a failing test ever waits this long
PROGRESS_TIMEOUT = 10.0  # an empty progress batch is due about once a second; ten is plenty

Subscription: TypeAlias = "grpc.aio.UnaryStreamCall[gw.SubscribeRequest, gw.DeliveryBatch]"
PublishCall: TypeAlias = "grpc.aio.StreamStreamCall[gw.PublishRequest, gw.PublishReply]"


# -- helpers ------------------------------------------------------------------------------------


def log_of(node: Node) -> SqliteLog:
    assert isinstance(node.log, SqliteLog)
    return node.log


def open_subscriptions(node: Node) -> dict[str, int]:
    """The node's open Subscribe streams (label -> lag), as its metrics see them."""
    assert node.service is not None
    return node.service.lags()


def observations(count: int, **overrides: Any) -> list[pb.Envelope]:
    return [factories.observation(**overrides) for _ in range(count)]


def bulky(pad_bytes: int = 16_000) -> pb.Envelope:
    """An observation padded with attributes to about ``pad_bytes`` (each value under the 4 KiB limit)."""
    env = factories.observation()
    for i in range(pad_bytes // 4000):
        env.attributes[f"pad{i}"] = f"{i}" * 4000
    return env


async def publish(client: GatewayClient, envelopes: Sequence[pb.Envelope]) -> list[int]:
    """Publishes a batch that must be accepted whole; returns its offsets."""
    reply = await client.publish(envelopes)
    assert [r.outcome for r in reply.results] == [ACCEPTED] * len(envelopes), reply
    assert [r.id for r in reply.results] == [e.id for e in envelopes]
    return [r.offset for r in reply.results]


@contextlib.asynccontextmanager
async def subscribed(client: GatewayClient, request: gw.SubscribeRequest) -> AsyncIterator[Subscription]:
    """A Subscribe call that is cancelled when the block ends, however it ends."""
    call = client.subscribe(request)
    try:
        yield call
    finally:
        call.cancel()


@contextlib.asynccontextmanager
async def registered(node: Node, client: GatewayClient, request: gw.SubscribeRequest) -> AsyncIterator[Subscription]:
    """Like ``subscribed``, and only enters once the node has fixed the stream's start position."""
    before = set(open_subscriptions(node))
    async with subscribed(client, request) as call:
        await eventually(lambda: bool(set(open_subscriptions(node)) - before))
        yield call


async def next_batch(call: Subscription, timeout: float = STREAM_TIMEOUT) -> gw.DeliveryBatch:
    batch = await asyncio.wait_for(call.read(), timeout)
    assert batch is not grpc.aio.EOF, "the subscription ended"
    assert isinstance(batch, gw.DeliveryBatch)
    return batch


async def read_until(call: Subscription, head: int, *, after: int = 0) -> list[gw.Delivery]:
    """Reads batches until the stream's next_offset reaches ``head``, checking the ordering rules of
    every batch on the way: offsets strictly increasing within and across batches, next_offset past
    the last delivery and never moving back. ``after`` is a lower bound for the first offset."""
    deliveries: list[gw.Delivery] = []
    next_offset = after
    last = after - 1
    while next_offset < head:
        batch = await next_batch(call)
        offsets = [d.offset for d in batch.deliveries]
        for offset in offsets:
            assert offset > last, f"offset {offset} after {last}"
            last = offset
        if offsets:
            assert batch.next_offset > offsets[-1]
        assert batch.next_offset >= next_offset, "next_offset moved backwards"
        next_offset = batch.next_offset
        deliveries += batch.deliveries
    return deliveries


async def read_to_end(call: Subscription) -> None:
    """Reads a stream until it ends; raises its error status if it ends with one."""
    while await asyncio.wait_for(call.read(), STREAM_TIMEOUT) is not grpc.aio.EOF:
        pass


def offsets_of(deliveries: Sequence[gw.Delivery]) -> list[int]:
    return [d.offset for d in deliveries]


async def query_offsets(client: GatewayClient, request: gw.QueryRequest) -> list[int]:
    return [d.offset async for d in client.query_all(request)]


def ns_of(ts: Timestamp) -> int:
    return ts.ToNanoseconds()


def timestamp_ns(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


async def stream_requests(batches: Sequence[Sequence[pb.Envelope]]) -> AsyncIterator[gw.PublishRequest]:
    """Every request at once: the node pipelines them, nothing here waits for a reply."""
    for i, envelopes in enumerate(batches):
        yield gw.PublishRequest(envelopes=envelopes, batch_id=1000 + i)


def open_publish_stream(client: GatewayClient, batches: Sequence[Sequence[pb.Envelope]]) -> PublishCall:
    """A PublishStream call the caller can cancel (``GatewayClient.publish_stream`` hides the call)."""
    stub = gw_grpc.GatewayStub(client.channel)  # type: ignore[no-untyped-call]  # generated, untyped
    call: PublishCall = stub.PublishStream(stream_requests(batches))
    return call


async def publish_stream(client: GatewayClient, batches: Sequence[Sequence[pb.Envelope]]) -> list[gw.PublishReply]:
    """Sends ``batches`` on one PublishStream and reads the replies to the end of the stream."""
    call = open_publish_stream(client, batches)
    replies: list[gw.PublishReply] = []
    try:
        while (reply := await asyncio.wait_for(call.read(), STREAM_TIMEOUT)) is not grpc.aio.EOF:
            assert isinstance(reply, gw.PublishReply)
            replies.append(reply)
    finally:
        call.cancel()
    return replies


# -- 1. offsets and idempotence -----------------------------------------------------------------


async def test_offsets_start_at_one_and_count_up_by_one_across_batches(client: GatewayClient) -> None:
    assert (await client.info()).next_offset == 1
    offsets: list[int] = []
    for size in (1, 4, 2, 7):
        offsets += await publish(client, observations(size))
    assert offsets == list(range(1, 15))
    info = await client.info()
    assert (info.oldest_offset, info.next_offset) == (1, 15)


async def test_a_started_node_has_its_id_indexer_running_before_its_first_envelope(node: Node) -> None:
    """Started with the node, not by the first chunk of ids."""
    assert isinstance(node.log, SqliteLog)
    assert node.log.next_offset == 1
    indexer = node.log.index._indexer
    assert indexer is not None
    assert indexer.is_alive()


async def test_a_repeated_id_is_a_duplicate_with_its_original_offset_and_stored_once(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    data = tmp_path / "idem"
    a, b, c = observations(3)
    node = await start_node(data)
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        assert await publish(client, [a, b]) == [1, 2]

        # The same id twice in one batch: stored once, the second answered with the first's offset.
        reply = await client.publish([c, c])
        assert [(r.id, r.outcome, r.offset) for r in reply.results] == [(c.id, ACCEPTED, 3), (c.id, DUPLICATE, 3)]

        # Again in a later batch, beside a new one that still gets the next offset.
        fresh = factories.observation()
        reply = await client.publish([a, fresh, c])
        assert [(r.outcome, r.offset) for r in reply.results] == [(DUPLICATE, 1), (ACCEPTED, 4), (DUPLICATE, 3)]

        # A batch of nothing but duplicates appends nothing.
        reply = await client.publish([b, a])
        assert [(r.outcome, r.offset) for r in reply.results] == [(DUPLICATE, 2), (DUPLICATE, 1)]
        assert (await client.info()).next_offset == 5
    await node.stop()

    node = await start_node(data)
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        later = factories.observation()
        reply = await client.publish([later, b, fresh, c])
        assert [(r.id, r.outcome, r.offset) for r in reply.results] == [
            (later.id, ACCEPTED, 5),
            (b.id, DUPLICATE, 2),
            (fresh.id, DUPLICATE, 4),
            (c.id, DUPLICATE, 3),
        ]
        stored = [d.envelope.id async for d in client.query_all(gw.QueryRequest(page_size=2))]
        assert stored == [a.id, b.id, c.id, fresh.id, later.id]
        got = await client.get([a.id, c.id])
        assert [(d.offset, d.envelope.id) for d in got.deliveries] == [(1, a.id), (3, c.id)]
        assert list(got.missing) == []


async def test_one_id_published_concurrently_by_many_clients_is_stored_once(client: GatewayClient) -> None:
    shared = factories.observation()
    replies = await asyncio.gather(*(client.publish([factories.observation(), shared]) for _ in range(20)))
    outcomes = [reply.results[1] for reply in replies]
    assert sorted(r.outcome for r in outcomes) == [ACCEPTED] + [DUPLICATE] * 19
    assert len({r.offset for r in outcomes}) == 1
    stored = [d.envelope.id async for d in client.query_all(gw.QueryRequest(page_size=100))]
    assert len(stored) == 21
    assert stored.count(shared.id) == 1
    own = [reply.results[0].offset for reply in replies]
    assert sorted([*own, outcomes[0].offset]) == list(range(1, 22))


async def test_an_invalid_envelope_mid_batch_is_rejected_and_the_others_stored_consecutively(
    client: GatewayClient,
) -> None:
    await publish(client, observations(2))
    before, bad, after = factories.observation(), factories.observation(region="999999"), factories.incident()
    reply = await client.publish([before, bad, after])
    first, rejected, last = reply.results
    assert (first.id, first.outcome, first.offset) == (before.id, ACCEPTED, 3)
    assert (last.id, last.outcome, last.offset) == (after.id, ACCEPTED, 4)
    assert rejected.id == bad.id
    assert rejected.outcome == REJECTED
    assert rejected.code == INVALID_ARGUMENT
    assert rejected.field == "region"
    assert "999999" in rejected.reason
    assert rejected.offset == 0

    stored = [(d.offset, d.envelope.id) async for d in client.query_all(gw.QueryRequest())]
    assert stored[2:] == [(3, before.id), (4, after.id)]
    assert list((await client.get([bad.id])).missing) == [bad.id]
    assert (await client.info()).next_offset == 5


# -- 2. PublishStream ---------------------------------------------------------------------------


async def test_publish_stream_answers_pipelined_requests_in_order(client: GatewayClient) -> None:
    batches = [observations(1 + i % 5) for i in range(200)]
    # A few requests that repeat an earlier id or carry an invalid envelope, to mix the outcomes.
    repeated = batches[3][0]
    batches[50].insert(1, repeated)
    batches[61].append(batches[60][0])  # likely in the same group commit as its original
    batches[120].insert(0, factories.observation(agency="nobody"))

    replies = await publish_stream(client, batches)

    assert [r.batch_id for r in replies] == [1000 + i for i in range(200)]
    expected_next = 1
    for request, reply in zip(batches, replies, strict=True):
        assert [r.id for r in reply.results] == [e.id for e in request]
        for result in reply.results:
            if result.outcome == ACCEPTED:
                assert result.offset == expected_next
                expected_next += 1
    assert replies[50].results[1].outcome == DUPLICATE
    assert replies[50].results[1].offset == replies[3].results[0].offset
    assert replies[61].results[-1].outcome == DUPLICATE
    assert replies[61].results[-1].offset == replies[60].results[0].offset
    assert (replies[120].results[0].outcome, replies[120].results[0].field) == (REJECTED, "origin.agency")
    total = sum(len(b) for b in batches) - 3
    assert expected_next == total + 1
    assert await query_offsets(client, gw.QueryRequest(page_size=1000)) == list(range(1, total + 1))


async def test_publish_stream_refuses_a_request_over_the_batch_limit(start_node: NodeFactory) -> None:
    node = await start_node(limits={"max_batch_envelopes": 10})
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        call = open_publish_stream(client, [observations(3), observations(11), observations(2)])
        try:
            first = await asyncio.wait_for(call.read(), STREAM_TIMEOUT)
            assert isinstance(first, gw.PublishReply)
            assert [r.offset for r in first.results] == [1, 2, 3]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(call.read(), STREAM_TIMEOUT)
        finally:
            call.cancel()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "envelopes" in (refused.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await client.publish(observations(11))
        assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (await client.info()).next_offset == 4


async def test_large_batches_through_the_admission_pool_get_the_same_results_as_inline(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    envelopes = observations(500)
    envelopes[200] = factories.observation(region="12345")
    envelopes[300].CopyFrom(envelopes[10])  # a repeated id
    request = gw.PublishRequest(envelopes=envelopes)
    too_many = observations(700)

    pooled = await start_node(tmp_path / "pooled", limits={"admission_workers": 1, "max_batch_envelopes": 600})
    inline = await start_node(tmp_path / "inline", limits={"admission_workers": 0, "max_batch_envelopes": 600})
    assert pooled.pool is not None
    assert inline.pool is None
    assert pooled.service is not None
    assert request.ByteSize() >= pooled.service.limits.pool_min_request_bytes  # so it goes to the pool

    # Large requests go to the pool and small ones are admitted inline, so they finish out of order;
    # the replies and the log must keep the request order all the same.
    smalls = [observations(3), observations(2)]
    larges = [observations(500) for _ in range(2)]
    stream = [envelopes, smalls[0], larges[0], smalls[1], larges[1]]
    outcomes: list[list[list[tuple[str, int, int, int, str]]]] = []
    for node in (pooled, inline):
        async with GatewayClient(node.grpc_target, insecure=True) as client:
            replies = await publish_stream(client, stream)
            outcomes.append(
                [[(r.id, r.outcome, r.offset, r.code, r.field) for r in reply.results] for reply in replies]
            )
            assert [r.batch_id for r in replies] == [1000 + i for i in range(len(stream))]
            assert await query_offsets(client, gw.QueryRequest(page_size=10_000)) == list(range(1, 1504))

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await publish_stream(client, [too_many])
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "envelopes" in (refused.value.details() or "")
            assert (await client.info()).next_offset == 1504

    pooled_outcomes, inline_outcomes = outcomes
    assert pooled_outcomes == inline_outcomes
    first = pooled_outcomes[0]
    assert first[200][1:] == (REJECTED, 0, INVALID_ARGUMENT, "region")
    assert first[300][1:3] == (DUPLICATE, 11)
    assert [o[2] for o in first if o[1] == ACCEPTED] == list(range(1, 499))
    later = [o[2] for reply in pooled_outcomes[1:] for o in reply]
    assert later == list(range(499, 1504))


# -- 3. Subscribe -------------------------------------------------------------------------------


async def test_subscribe_starts_at_oldest_latest_or_an_offset(client: GatewayClient, node: Node) -> None:
    await publish(client, observations(6))
    await publish(client, observations(4))

    async with subscribed(client, gw.SubscribeRequest(position=gw.OLDEST)) as oldest:
        assert offsets_of(await read_until(oldest, 11)) == list(range(1, 11))

    async with subscribed(client, gw.SubscribeRequest(offset=4, max_batch=3)) as from_four:
        assert offsets_of(await read_until(from_four, 11)) == list(range(4, 11))

    async with registered(node, client, gw.SubscribeRequest(position=gw.LATEST)) as latest:
        later = await publish(client, observations(3))
        deliveries = await read_until(latest, 14)
        assert offsets_of(deliveries) == later == [11, 12, 13]

    # An offset past the head waits for it.
    async with registered(node, client, gw.SubscribeRequest(offset=15)) as ahead:
        await publish(client, observations(3))
        assert offsets_of(await read_until(ahead, 17, after=15)) == [15, 16]

    # No start at all means LATEST too.
    async with registered(node, client, gw.SubscribeRequest()) as unspecified:
        later = await publish(client, observations(2))
        assert offsets_of(await read_until(unspecified, 19)) == later == [17, 18]


async def test_subscribe_starts_at_a_time(client: GatewayClient) -> None:
    await publish(client, observations(3))
    await publish(client, observations(2))
    await publish(client, observations(4))
    stored = [d async for d in client.query_all(gw.QueryRequest())]
    second_batch_at = ns_of(stored[3].appended_at)
    assert ns_of(stored[2].appended_at) < second_batch_at

    async with subscribed(client, gw.SubscribeRequest(time=timestamp_ns(second_batch_at))) as at:
        assert offsets_of(await read_until(at, 10)) == list(range(4, 10))
    async with subscribed(client, gw.SubscribeRequest(time=timestamp_ns(second_batch_at + 1))) as after:
        assert offsets_of(await read_until(after, 10)) == list(range(6, 10))


async def test_each_delivery_batch_is_ordered_and_carries_its_next_offset(client: GatewayClient) -> None:
    for size in (5, 1, 9, 3):
        await publish(client, observations(size))
    async with subscribed(client, gw.SubscribeRequest(position=gw.OLDEST, max_batch=4)) as call:
        batches: list[gw.DeliveryBatch] = []
        while not batches or batches[-1].next_offset < 19:
            batches.append(await next_batch(call))
    everything = [o for b in batches for o in offsets_of(b.deliveries)]
    assert everything == list(range(1, 19))
    for batch in batches:
        assert 1 <= len(batch.deliveries) <= 4
        assert offsets_of(batch.deliveries) == list(range(batch.deliveries[0].offset, batch.next_offset))


LUOYANG_RING = [(34.60, 112.35), (34.60, 112.50), (34.70, 112.50), (34.70, 112.35), (34.60, 112.35)]


def filter_corpus() -> list[tuple[str, pb.Envelope]]:
    """Envelopes that differ in one property at a time, named, in the order they are published."""
    named = [
        ("zz-obs", factories.observation(region="410102", severity=pb.BLUE)),  # a point in Zhengzhou
        ("ly-obs", factories.observation(region="410305", severity=pb.YELLOW, lat=34.66, lon=112.40)),
        ("zz-alert", factories.alert(region="410102", severity=pb.ORANGE)),  # a polygon west of Zhengzhou
    ]
    named += [("filler", factories.observation(region="410305", lat=None)) for _ in range(5)]
    named += [
        ("ly-alert", factories.alert(region="410305", severity=pb.RED, polygon=LUOYANG_RING)),
        ("zz-incident", factories.incident(region="410105")),  # YELLOW, emergency, no geometry
        ("zz-exercise", factories.observation(region="410105", status=pb.EXERCISE, lat=None)),
        ("province", factories.observation(region="410000", agency="emergency", lat=None)),
    ]
    return named


EVERY_NAME = {"zz-obs", "ly-obs", "zz-alert", "filler", "ly-alert", "zz-incident", "zz-exercise", "province"}
FILTER_CASES: dict[str, tuple[gw.Filter, set[str]]] = {
    "city-subtree": (gw.Filter(regions=["410100"]), {"zz-obs", "zz-alert", "zz-incident", "zz-exercise"}),
    "county": (gw.Filter(regions=["410102"]), {"zz-obs", "zz-alert"}),
    "two-counties": (gw.Filter(regions=["410102", "410305"]), {"zz-obs", "zz-alert", "ly-obs", "ly-alert", "filler"}),
    "province-subtree": (gw.Filter(regions=["410000"]), EVERY_NAME),
    "other-province": (gw.Filter(regions=["420000"]), set()),
    "kinds": (gw.Filter(kinds=[pb.ALERT]), {"zz-alert", "ly-alert"}),
    "two-kinds": (gw.Filter(kinds=[pb.ALERT, pb.INCIDENT]), {"zz-alert", "ly-alert", "zz-incident"}),
    "agencies": (gw.Filter(agencies=["meteorology"]), {"zz-alert", "ly-alert"}),
    "two-agencies": (gw.Filter(agencies=["emergency", "water"]), EVERY_NAME - {"zz-alert", "ly-alert"}),
    "min-severity-orange": (gw.Filter(min_severity=pb.ORANGE), {"zz-alert", "ly-alert"}),
    "min-severity-yellow": (gw.Filter(min_severity=pb.YELLOW), {"ly-obs", "zz-alert", "ly-alert", "zz-incident"}),
    "bbox-zhengzhou": (
        gw.Filter(bbox=gw.BoundingBox(min_lat=34.6, min_lon=113.4, max_lat=35.0, max_lon=113.9)),
        {"zz-obs", "zz-alert"},
    ),
    "bbox-inside-the-alert-polygon": (
        gw.Filter(bbox=gw.BoundingBox(min_lat=34.72, min_lon=113.55, max_lat=34.75, max_lon=113.58)),
        {"zz-alert"},
    ),
    "bbox-luoyang": (
        gw.Filter(bbox=gw.BoundingBox(min_lat=34.5, min_lon=112.3, max_lat=34.8, max_lon=112.6)),
        {"ly-obs", "ly-alert"},
    ),
    "statuses": (gw.Filter(statuses=[pb.EXERCISE]), {"zz-exercise"}),
    "combined": (gw.Filter(regions=["410100"], kinds=[pb.OBSERVATION], min_severity=pb.BLUE), {"zz-obs"}),
}


@pytest.mark.parametrize("case", list(FILTER_CASES))
async def test_subscribe_and_query_filter_end_to_end(client: GatewayClient, case: str) -> None:
    flt, wanted = FILTER_CASES[case]
    corpus = filter_corpus()
    await publish(client, [env for _, env in corpus[:3]])
    await publish(client, [env for _, env in corpus[3:8]])
    await publish(client, [env for _, env in corpus[8:]])
    expected = [env.id for name, env in corpus if name in wanted]
    head = (await client.info()).next_offset

    async with subscribed(client, gw.SubscribeRequest(filter=flt, position=gw.OLDEST)) as call:
        delivered = await read_until(call, head)
    assert [d.envelope.id for d in delivered] == expected

    queried = [d async for d in client.query_all(gw.QueryRequest(filter=flt, page_size=2))]
    assert [d.envelope.id for d in queried] == expected
    newest = [d async for d in client.query_all(gw.QueryRequest(filter=flt, page_size=2, newest_first=True))]
    assert [d.envelope.id for d in newest] == expected[::-1]


async def test_a_filtered_out_stretch_still_moves_the_stream_forward(client: GatewayClient, node: Node) -> None:
    request = gw.SubscribeRequest(filter=gw.Filter(kinds=[pb.INCIDENT]), position=gw.LATEST)
    async with registered(node, client, request) as call:
        await publish(client, observations(30))
        progress = await next_batch(call, PROGRESS_TIMEOUT)
        assert list(progress.deliveries) == []
        assert progress.next_offset == 31

        [incident_offset] = await publish(client, [factories.incident()])
        deliveries = await read_until(call, incident_offset + 1, after=31)
        assert offsets_of(deliveries) == [incident_offset]


# -- 4. durable subscriptions -------------------------------------------------------------------


async def test_a_durable_subscription_resumes_right_after_its_acknowledged_position(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    data = tmp_path / "durable"
    node = await start_node(data)
    processed: list[int] = []
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        await publish(client, observations(10))
        request = gw.SubscribeRequest(durable_name="flood-desk", position=gw.OLDEST, max_batch=4)
        async with subscribed(client, request) as call:
            first = await next_batch(call)
            assert offsets_of(first.deliveries) == [1, 2, 3, 4]
            processed += offsets_of(first.deliveries)
            assert await client.ack("flood-desk", first.next_offset) == 5
            unacked = await next_batch(call)  # read, never acknowledged: must come again
            assert offsets_of(unacked.deliveries) == [5, 6, 7, 8]
        await eventually(lambda: not open_subscriptions(node))

        # The start fields apply only to a new subscription: LATEST here is ignored.
        resumed = gw.SubscribeRequest(durable_name="flood-desk", position=gw.LATEST, max_batch=4)
        async with subscribed(client, resumed) as call:
            deliveries = await read_until(call, 11, after=5)
            processed += offsets_of(deliveries)
            assert await client.ack("flood-desk", 11) == 11
        assert processed == list(range(1, 11))
        # An acknowledgement never moves a position back.
        assert await client.ack("flood-desk", 3) == 11
        await eventually(lambda: not open_subscriptions(node))
    await node.stop()

    node = await start_node(data)
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        later = await publish(client, observations(3))
        assert later == [11, 12, 13]
        async with subscribed(client, gw.SubscribeRequest(durable_name="flood-desk", max_batch=2)) as call:
            deliveries = await read_until(call, 14, after=11)
        assert offsets_of(deliveries) == later
        # An acknowledgement past the head is held at the head.
        assert await client.ack("flood-desk", 1000) == 14


async def test_a_durable_position_survives_a_restart_even_without_a_new_envelope(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    data = tmp_path / "durable-restart"
    node = await start_node(data)
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        await publish(client, observations(6))
        request = gw.SubscribeRequest(durable_name="relay/zz", position=gw.OLDEST, max_batch=2)
        async with subscribed(client, request) as call:
            batch = await next_batch(call)
            assert offsets_of(batch.deliveries) == [1, 2]
            await client.ack("relay/zz", batch.next_offset)
    await node.stop()

    node = await start_node(data)
    request = gw.SubscribeRequest(durable_name="relay/zz")
    async with GatewayClient(node.grpc_target, insecure=True) as client, subscribed(client, request) as call:
        assert offsets_of(await read_until(call, 7, after=3)) == [3, 4, 5, 6]


async def test_stopping_the_node_ends_open_streams_unavailable_and_they_resume_after_restart(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    data = tmp_path / "durable-stop"
    node = await start_node(data)
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        await publish(client, observations(5))
        request = gw.SubscribeRequest(durable_name="province-desk", position=gw.OLDEST, max_batch=3)
        async with registered(node, client, request) as call:
            batch = await next_batch(call)
            assert offsets_of(batch.deliveries) == [1, 2, 3]
            assert await client.ack("province-desk", batch.next_offset) == 4
            await node.stop()
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_to_end(call)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE

    node = await start_node(data)
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        await publish(client, observations(2))
        async with subscribed(client, gw.SubscribeRequest(durable_name="province-desk")) as call:
            assert offsets_of(await read_until(call, 8, after=4)) == [4, 5, 6, 7]


async def test_a_second_subscribe_with_the_same_durable_name_aborts_the_first(
    client: GatewayClient, node: Node
) -> None:
    await publish(client, observations(3))
    request = gw.SubscribeRequest(durable_name="county-relay", position=gw.OLDEST)
    async with registered(node, client, request) as first:
        assert offsets_of(await read_until(first, 4)) == [1, 2, 3]
        async with subscribed(client, request) as second:
            with pytest.raises(grpc.aio.AioRpcError) as aborted:
                await read_to_end(first)
            assert aborted.value.code() == grpc.StatusCode.ABORTED

            # The second stream starts where the name stood (nothing was acknowledged) and goes on live.
            assert offsets_of(await read_until(second, 4)) == [1, 2, 3]
            await publish(client, observations(2))
            assert offsets_of(await read_until(second, 6, after=4)) == [4, 5]
    await eventually(lambda: "county-relay" not in open_subscriptions(node))


@pytest.mark.parametrize("name", ["has space", "-leading-dash", "x" * 129, "名字", "tab\there"])
async def test_invalid_durable_names_are_invalid_argument(client: GatewayClient, name: str) -> None:
    async with subscribed(client, gw.SubscribeRequest(durable_name=name, position=gw.OLDEST)) as call:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await next_batch(call)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "durable_name" in (refused.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as ack_refused:
        await client.ack(name, 1)
    assert ack_refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ack_without_a_name_or_offset_is_invalid_argument(client: GatewayClient) -> None:
    for name, offset in (("", 1), ("ok-name", 0)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.ack(name, offset)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- 5. the replay/live seam --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "max_batch"),
    [("64MiB", 0), ("16KiB", 7)],
    ids=["replay-from-cache", "replay-from-sqlite"],
)
async def test_a_subscriber_joining_mid_stream_sees_every_offset_once_in_order(
    start_node: NodeFactory, cache: str, max_batch: int
) -> None:
    batches, per_batch = 400, 5
    total = batches * per_batch
    node = await start_node(log={"cache_bytes": cache})
    async with (
        GatewayClient(node.grpc_target, insecure=True) as publisher,
        GatewayClient(node.grpc_target, insecure=True) as reader,
    ):
        partway = asyncio.Event()

        async def publish_all() -> None:
            for i in range(batches):
                offsets = await publish(publisher, observations(per_batch))
                assert offsets == list(range(i * per_batch + 1, (i + 1) * per_batch + 1))
                if i == batches // 4:
                    partway.set()

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publish_all(), name="publisher")
            await asyncio.wait_for(partway.wait(), STREAM_TIMEOUT)
            assert log_of(node).next_offset < total  # the publisher is still going
            request = gw.SubscribeRequest(position=gw.OLDEST, max_batch=max_batch)
            async with subscribed(reader, request) as call:
                deliveries = await read_until(call, total + 1)
    assert offsets_of(deliveries) == list(range(1, total + 1))


# -- 6. slow subscriber isolation ---------------------------------------------------------------


async def test_a_subscriber_that_never_reads_holds_back_neither_publishers_nor_memory(
    start_node: NodeFactory,
) -> None:
    node = await start_node(log={"cache_bytes": "4MiB"})
    log = log_of(node)
    per_batch, batches = 60, 25  # about 24 MB of 16 KB envelopes in requests of about 1 MB
    total = per_batch * batches
    largest_batch = 0

    async with (
        GatewayClient(node.grpc_target, insecure=True) as publisher,
        GatewayClient(node.grpc_target, insecure=True) as slow_client,
        GatewayClient(node.grpc_target, insecure=True) as reader,
    ):
        async with (
            registered(node, slow_client, gw.SubscribeRequest(position=gw.OLDEST)) as slow,
            registered(node, reader, gw.SubscribeRequest(position=gw.OLDEST)) as reading,
        ):
            received = asyncio.create_task(read_until(reading, total + 1), name="reading-subscriber")
            try:
                for i in range(batches):
                    offsets = await publish(publisher, [bulky() for _ in range(per_batch)])
                    assert offsets[0] == i * per_batch + 1
                    largest_batch = max(largest_batch, *(b.size for b in log._cache.batches))
                    assert log._cache.size <= log.cache_bytes + largest_batch
                deliveries = await asyncio.wait_for(received, 120)
            finally:
                received.cancel()
            assert offsets_of(deliveries) == list(range(1, total + 1))
            assert log._cache.size <= log.cache_bytes + largest_batch
            assert log._cache.firsts[0] > 1  # the start of the log is only in SQLite now

            # The laggard, once it reads, still gets everything from the start, out of the log.
            late = await read_until(slow, total + 1)
            assert offsets_of(late) == list(range(1, total + 1))
            assert len(late[0].envelope.attributes) == 4

        async with subscribed(reader, gw.SubscribeRequest(position=gw.OLDEST)) as fresh:
            assert offsets_of(await read_until(fresh, total + 1)) == list(range(1, total + 1))

        # A page of big envelopes is cut by size, not only by count, and paging still sees each once.
        assert node.service is not None
        max_reply = node.service.limits.max_reply_bytes
        for newest_first in (False, True):
            request = gw.QueryRequest(page_size=10_000, newest_first=newest_first)
            seen: list[int] = []
            while True:
                reply = await reader.query(request)
                assert 0 < reply.ByteSize() <= max_reply + 2 * len(reply.deliveries[-1].SerializeToString())
                seen += offsets_of(reply.deliveries)
                if not reply.next_page_token:
                    break
                request.page_token = reply.next_page_token
            assert seen == (list(range(total, 0, -1)) if newest_first else list(range(1, total + 1)))


# -- 7. Query, Get, Info ------------------------------------------------------------------------


async def test_query_pages_forward_through_every_offset_once(client: GatewayClient) -> None:
    for size in (7, 1, 10, 7):
        await publish(client, observations(size))
    seen: list[int] = []
    request = gw.QueryRequest(page_size=4)
    pages = 0
    while True:
        reply = await client.query(request)
        pages += 1
        assert len(reply.deliveries) <= 4
        seen += offsets_of(reply.deliveries)
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert seen == list(range(1, 26))
    assert pages >= 7


async def test_query_pages_newest_first(client: GatewayClient) -> None:
    for size in (3, 9, 1, 8):
        await publish(client, observations(size))
    seen: list[int] = []
    request = gw.QueryRequest(page_size=5, newest_first=True)
    while True:
        reply = await client.query(request)
        assert len(reply.deliveries) <= 5
        seen += offsets_of(reply.deliveries)
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    assert seen == list(range(21, 0, -1))

    ranged = gw.QueryRequest(page_size=3, newest_first=True, from_offset=4, to_offset=15)
    assert await query_offsets(client, ranged) == list(range(14, 3, -1))


async def test_query_by_filter_offset_range_and_time_range(client: GatewayClient) -> None:
    await publish(client, observations(4))  # 1..4
    await publish(client, [factories.alert(), factories.observation(), factories.alert(severity=pb.RED)])  # 5..7
    await publish(client, observations(5))  # 8..12
    stored = [d async for d in client.query_all(gw.QueryRequest())]
    assert offsets_of(stored) == list(range(1, 13))

    alerts = gw.QueryRequest(filter=gw.Filter(kinds=[pb.ALERT]), page_size=1)
    assert await query_offsets(client, alerts) == [5, 7]
    red = gw.QueryRequest(filter=gw.Filter(min_severity=pb.RED))
    assert await query_offsets(client, red) == [7]

    assert await query_offsets(client, gw.QueryRequest(from_offset=3, to_offset=9, page_size=2)) == list(range(3, 9))
    assert await query_offsets(client, gw.QueryRequest(from_offset=10)) == [10, 11, 12]
    assert await query_offsets(client, gw.QueryRequest(to_offset=3)) == [1, 2]

    middle_at = ns_of(stored[4].appended_at)
    last_at = ns_of(stored[7].appended_at)
    assert ns_of(stored[3].appended_at) < middle_at < last_at
    by_time = gw.QueryRequest(from_time=timestamp_ns(middle_at), to_time=timestamp_ns(last_at))
    assert await query_offsets(client, by_time) == [5, 6, 7]
    since = gw.QueryRequest(from_time=timestamp_ns(middle_at + 1))
    assert await query_offsets(client, since) == list(range(8, 13))
    before = gw.QueryRequest(to_time=timestamp_ns(middle_at), newest_first=True)
    assert await query_offsets(client, before) == [4, 3, 2, 1]


async def test_get_returns_the_stored_envelopes_and_names_the_missing(client: GatewayClient) -> None:
    envelopes = [factories.observation(), factories.alert(), factories.incident()]
    await publish(client, observations(2))
    await publish(client, envelopes)
    unknown = uuid7()
    reply = await client.get([envelopes[2].id, unknown, envelopes[0].id])
    assert [(d.offset, d.envelope.id) for d in reply.deliveries] == [(5, envelopes[2].id), (3, envelopes[0].id)]
    assert list(reply.missing) == [unknown]
    got = reply.deliveries[0].envelope
    assert got.incident.incident_id == "ZZ-JS-1"
    assert [hop.node for hop in got.provenance.hops] == ["test-node"]
    assert reply.deliveries[0].HasField("appended_at")


async def test_info_describes_the_node_and_its_log(client: GatewayClient, node: Node) -> None:
    await publish(client, observations(3))
    info = await client.info()
    assert (info.node, info.level, info.region) == ("test-node", "province", "410000")
    assert (info.oldest_offset, info.next_offset) == (1, 4)
    assert info.version == __version__


# -- 8. retention -------------------------------------------------------------------------------


async def test_retention_removes_the_oldest_and_the_node_carries_on(start_node: NodeFactory, tmp_path: Path) -> None:
    data = tmp_path / "retained"
    limit = 100_000
    node = await start_node(data, log={"retention_bytes": limit})
    log = log_of(node)
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        # A durable subscription fixed at offset 1, before anything is published.
        async with registered(node, client, gw.SubscribeRequest(durable_name="laggard", position=gw.OLDEST)):
            pass
        await eventually(lambda: not open_subscriptions(node))

        first_ids: list[str] = []
        for _ in range(60):
            batch = observations(10)
            first_ids.append(batch[0].id)
            await publish(client, batch)
        head = log.next_offset
        assert head == 601
        await log.enforce_retention()

        info = await client.info()
        oldest = info.oldest_offset
        assert 1 < oldest < head
        assert (oldest - 1) % 10 == 0  # whole batches go
        assert info.next_offset == head
        assert log.stats().bytes <= limit

        assert await query_offsets(client, gw.QueryRequest(page_size=100)) == list(range(oldest, head))
        assert await query_offsets(client, gw.QueryRequest(from_offset=1, to_offset=oldest + 2)) == [
            oldest,
            oldest + 1,
        ]
        gone = await client.get([first_ids[0]])
        assert list(gone.missing) == [first_ids[0]]

        async with subscribed(client, gw.SubscribeRequest(durable_name="laggard")) as call:
            resumed = await read_until(call, head)
        assert offsets_of(resumed) == list(range(oldest, head))
        async with subscribed(client, gw.SubscribeRequest(position=gw.OLDEST)) as call:
            assert offsets_of(await read_until(call, head))[0] == oldest
        await eventually(lambda: not open_subscriptions(node))
    await node.stop()

    node = await start_node(data, log={"retention_bytes": limit})
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        info = await client.info()
        assert (info.oldest_offset, info.next_offset) == (oldest, head)
        assert await publish(client, observations(3)) == [head, head + 1, head + 2]
        assert (await query_offsets(client, gw.QueryRequest(newest_first=True, page_size=3)))[:3] == [
            head + 2,
            head + 1,
            head,
        ]


async def test_an_id_published_again_after_retention_removed_it_stays_idempotent_across_a_restart(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    data = tmp_path / "retained-ids"
    node = await start_node(data, log={"retention_bytes": 20_000})
    log = log_of(node)
    # The index moves ids to disk at most every few seconds; hold them in memory for now, as happens
    # whenever an id is published and retained within one flush interval.
    log.index.flush_interval_s = 1e9
    again = factories.observation()
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        await publish(client, observations(2))
        [first_offset] = await publish(client, [again])
        for _ in range(20):
            await publish(client, observations(10))
        await log.enforce_retention()
        assert log.oldest_offset > first_offset
        assert list((await client.get([again.id])).missing) == [again.id]

        # Its first copy is gone, so it is stored anew, once; from then on it is a duplicate of that.
        [stored_at] = await publish(client, [again])
        reply = await client.publish([again])
        assert (reply.results[0].outcome, reply.results[0].offset) == (DUPLICATE, stored_at)

        log.index.flush_interval_s = 0.0  # the next commit moves the index to disk, past stored_at
        await publish(client, observations(1))
    await node.stop()

    node = await start_node(data, log={"retention_bytes": 20_000})
    async with GatewayClient(node.grpc_target, insecure=True) as client:
        reply = await client.publish([again])
        assert (reply.results[0].id, reply.results[0].outcome, reply.results[0].offset) == (
            again.id,
            DUPLICATE,
            stored_at,
        )
        copies = [
            d.offset async for d in client.query_all(gw.QueryRequest(page_size=1000)) if d.envelope.id == again.id
        ]
        assert copies == [stored_at]


# -- 9. health and metrics ----------------------------------------------------------------------


async def test_grpc_health_and_reflection(client: GatewayClient) -> None:
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "yiwang.v1.Gateway"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=STREAM_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    call = reflection.ServerReflectionInfo()
    try:
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        reply = await asyncio.wait_for(call.read(), STREAM_TIMEOUT)
        names = {s.name for s in reply.list_services_response.service}
        assert "yiwang.v1.Gateway" in names
        assert "grpc.health.v1.Health" in names
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="yiwang.v1.Gateway"))
        reply = await asyncio.wait_for(call.read(), STREAM_TIMEOUT)
        assert reply.file_descriptor_response.file_descriptor_proto
        await call.done_writing()
    finally:
        call.cancel()


async def test_http_healthz_and_metrics(client: GatewayClient, node: Node) -> None:
    await publish(client, observations(4))
    rejected = await client.publish([factories.observation(region="999999")])
    assert rejected.results[0].outcome == REJECTED

    base = f"http://127.0.0.1:{node.http_port}"
    request = gw.SubscribeRequest(durable_name="metrics-probe", position=gw.OLDEST)
    async with registered(node, client, request), aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert response.content_type == "application/json"
            body = await response.json()
        assert body["status"] == "ok"
        assert (body["node"], body["level"], body["region"]) == ("test-node", "province", "410000")
        assert (body["log"]["oldest_offset"], body["log"]["next_offset"]) == (1, 5)

        async with http.get(f"{base}/metrics") as response:
            assert response.status == 200
            text = await response.text()
    assert re.search(r"^yiwang_envelopes_published_total 4\.0$", text, re.MULTILINE), text
    assert re.search(r'^yiwang_envelopes_rejected_total\{reason="region"\} 1\.0$', text, re.MULTILINE), text
    match = re.search(r"^yiwang_log_bytes (\S+)$", text, re.MULTILINE)
    assert match is not None
    assert float(match.group(1)) > 0
    assert re.search(r'^yiwang_subscriber_lag\{subscription="metrics-probe"\} \d', text, re.MULTILINE), text


# -- 10. errors ---------------------------------------------------------------------------------


async def test_subscribe_with_an_unknown_region_is_invalid_argument(client: GatewayClient) -> None:
    request = gw.SubscribeRequest(filter=gw.Filter(regions=["419999"]), position=gw.OLDEST)
    async with subscribed(client, request) as call:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await next_batch(call)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter.regions[0]" in (refused.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as query_refused:
        await client.query(gw.QueryRequest(filter=gw.Filter(regions=["410100", "41010x"])))
    assert query_refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter.regions[1]" in (query_refused.value.details() or "")


@pytest.mark.parametrize(
    "token", ["abc", "-5", "12.5", "²", "9" * 5000], ids=["text", "negative", "fraction", "superscript", "huge"]
)
async def test_query_with_a_bad_page_token_is_invalid_argument(client: GatewayClient, token: str) -> None:
    await publish(client, observations(3))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.query(gw.QueryRequest(page_token=token))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (refused.value.details() or "")


# -- several replicas of a node: one client, calls in turn -----------------------------------------


def test_several_addresses_make_one_round_robin_target() -> None:
    assert channel_target("127.0.0.1:7400") == "127.0.0.1:7400"
    assert channel_target("dns:///gateway.example:7400") == "dns:///gateway.example:7400"
    assert channel_target(["10.0.0.1:7400", "10.0.0.2:7400"]) == "ipv4:10.0.0.1:7400,10.0.0.2:7400"
    assert channel_target("10.0.0.1:7400, 10.0.0.2:7401") == "ipv4:10.0.0.1:7400,10.0.0.2:7401"
    assert channel_target(["[fd00::1]:7400", "[fd00::2]:7400"]) == "ipv6:[fd00::1]:7400,[fd00::2]:7400"
    with pytest.raises(ConfigError, match="must be IP addresses"):
        channel_target(["gw-1.example:7400", "gw-2.example:7400"])
    with pytest.raises(ConfigError, match="all be IPv4 or all IPv6"):
        channel_target(["10.0.0.1:7400", "[fd00::2]:7400"])
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        channel_target(["10.0.0.1", "10.0.0.2:7400"])
    with pytest.raises(ConfigError, match="no address"):
        channel_target([])


def test_replicas_over_tls_need_the_name_their_certificate_carries(tmp_path: Path) -> None:
    tls = ClientTls(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises(ConfigError, match="server name"):
        GatewayClient(["10.0.0.1:7400", "10.0.0.2:7400"], tls=tls)


async def test_one_client_spreads_its_calls_over_several_replicas(start_node: NodeFactory, tmp_path: Path) -> None:
    first = await start_node(tmp_path / "first")
    second = await start_node(tmp_path / "second")
    async with GatewayClient([first.grpc_target, second.grpc_target], insecure=True) as client:
        for _ in range(200):  # round robin alternates once both connections are up
            await client.publish([factories.observation()])
            if log_of(first).next_offset > 1 and log_of(second).next_offset > 1:
                break
    assert log_of(first).next_offset > 1
    assert log_of(second).next_offset > 1
    await second.stop()  # a replica goes: the calls go to the one left
    async with GatewayClient([first.grpc_target, second.grpc_target], insecure=True) as client:
        await client.wait_ready()
        before = log_of(first).next_offset
        for _ in range(5):
            reply = await client.publish([factories.observation()], timeout=10)
            assert reply.results[0].outcome == gw.PublishResult.ACCEPTED
        assert log_of(first).next_offset == before + 5
