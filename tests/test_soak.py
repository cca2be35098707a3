"""Soak run: hours of a node's life compressed into minutes. Not part of `make test`; run `make soak`.

A publisher streams batches for YIWANG_SOAK_SECONDS (default 300) while a durable subscriber reads,
acknowledges, and reconnects every few seconds, and retention keeps removing the oldest batches.
At the end every envelope was delivered exactly once, in order, and the node's memory stayed flat.
"""

from __future__ import annotations

import asyncio
import os
import resource

import pytest
from yiwang.v1 import gateway_pb2 as gw

from gateway.client import GatewayClient
from gateway.sqlite_log import SqliteLog
from tests import factories
from tests.conftest import NodeFactory

pytestmark = pytest.mark.soak


async def test_soak_publish_subscribe_retention(start_node: NodeFactory) -> None:
    seconds = float(os.environ.get("YIWANG_SOAK_SECONDS", "300"))
    node = await start_node(log={"retention_bytes": "64MiB", "cache_bytes": "8MiB"})
    log = node.log
    assert isinstance(log, SqliteLog)  # the embedded log, whose retention the soak drives
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    published: list[int] = []
    rss_samples: list[int] = []

    async def publish(client: GatewayClient) -> None:
        while loop.time() < deadline:
            reply = await client.publish([factories.observation() for _ in range(200)])
            published.extend(r.offset for r in reply.results)
            if len(published) % 20_000 < 200:
                rss_samples.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                await log.enforce_retention()

    async def subscribe(client: GatewayClient) -> list[int]:
        seen: list[int] = []
        while True:
            call = client.subscribe(gw.SubscribeRequest(durable_name="soak", position=gw.OLDEST))
            round_end = loop.time() + 5
            async for batch in call:
                seen.extend(d.offset for d in batch.deliveries)
                await client.ack("soak", batch.next_offset)
                if loop.time() > round_end or (loop.time() > deadline and seen and seen[-1] == published[-1]):
                    break
            call.cancel()
            if loop.time() > deadline and published and seen and seen[-1] == published[-1]:
                return seen

    async with GatewayClient(node.grpc_target, insecure=True) as client:
        reader = asyncio.create_task(subscribe(client))
        await publish(client)
        seen = await asyncio.wait_for(reader, 120)
    assert seen == sorted(set(seen)), "a delivery was repeated or out of order"
    assert seen[0] == 1
    assert seen[-1] == published[-1]
    assert len(seen) == len(published), "retention removed envelopes before the subscriber read them"
    growth = rss_samples[-1] - rss_samples[len(rss_samples) // 4]
    assert growth < 200 * 1024, f"resident memory grew by {growth} KiB in the second part of the run"
