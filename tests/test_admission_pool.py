"""The admission pool: requests reach its workers through shared memory, or the pipe when too large."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from yiwang.v1 import gateway_pb2 as gw

from gateway.admission import Admission, AdmissionPool, Admitted
from gateway.errors import InvalidRequestError
from gateway.regions import default_table
from gateway.validation import Validator
from tests import factories


def observations(prefix: str, count: int) -> bytes:
    envelopes = [factories.observation(envelope_id=f"{prefix}-{n}") for n in range(count)]
    envelopes[1].region = "12345"  # one refused, so that rejections travel back too
    return gw.PublishRequest(envelopes=envelopes, batch_id=7).SerializeToString()


def fields(admitted: Admitted) -> tuple[object, ...]:
    return (admitted.batch_id, admitted.ids, admitted.hashes, admitted.envelopes, admitted.records,
            admitted.positions, admitted.signers, admitted.rejections)  # fmt: skip


VALIDATOR = Validator(default_table())


@pytest.fixture
async def pool() -> AsyncIterator[AdmissionPool]:
    started = AdmissionPool(1, VALIDATOR, 1_000, slots=2, slot_bytes=32 << 10)
    await started.start()
    try:
        yield started
    finally:
        await asyncio.to_thread(started.shutdown)


async def test_the_pool_admits_as_inline_admission_does(pool: AdmissionPool) -> None:
    now = time.time()
    inline = Admission(VALIDATOR, 1_000)
    small, large = observations("s", 20), observations("l", 600)
    assert len(small) < pool.slot_bytes < len(large)  # one through shared memory, one through the pipe
    for raw in (small, large):
        assert fields(await pool.admit(raw, now, frozenset())) == fields(inline.admit(raw, now))


async def test_many_requests_share_few_slots(pool: AdmissionPool) -> None:
    now = time.time()
    requests = [observations(f"r{n}", 50) for n in range(10)]
    results = await asyncio.gather(*(pool.admit(raw, now, frozenset()) for raw in requests))
    assert [r.ids[0] for r in results] == [f"r{n}-0" for n in range(10)]
    assert pool._free.qsize() == pool.slots


async def test_a_refused_request_or_a_cancelled_one_gives_its_slot_back(pool: AdmissionPool) -> None:
    now = time.time()
    with pytest.raises(InvalidRequestError, match="not a valid PublishRequest"):
        await pool.admit(b"\x0a\xff\xff", now, frozenset())
    for _ in range(pool.slots):
        task = asyncio.create_task(pool.admit(observations("c", 200), now, frozenset()))
        await asyncio.sleep(0)  # in a worker now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # The cancelled requests keep their slots until the worker is done with them; then the pool
    # goes on with every slot, and what it admits is not mixed up with what they held.
    admitted = await pool.admit(observations("after", 30), now, frozenset())
    assert admitted.ids[:2] == ["after-0", "after-2"]
    deadline = time.monotonic() + 10
    while pool._free.qsize() < pool.slots:
        assert time.monotonic() < deadline, "a slot was never given back"
        await asyncio.sleep(0.01)
