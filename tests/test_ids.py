"""Envelope ids made by the gateway are RFC 9562 UUIDv7: well formed, time-ordered, unique."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.ids import uuid7

SHAPE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MS = st.integers(min_value=0, max_value=(1 << 48) - 1)


@pytest.mark.parametrize("now_ms", [None, 0, 1, 1_750_000_000_000, (1 << 48) - 1])
def test_version_variant_and_length(now_ms: int | None) -> None:
    value = uuid7(now_ms)
    assert len(value) == 36
    assert SHAPE.fullmatch(value), value
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert str(parsed) == value


@given(MS)
def test_the_time_is_the_first_48_bits(now_ms: int) -> None:
    assert uuid.UUID(uuid7(now_ms)).int >> 80 == now_ms


def test_default_time_is_now() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= uuid.UUID(value).int >> 80 <= after


@given(st.lists(MS, min_size=2, max_size=2, unique=True))
def test_ordered_by_time(times: list[int]) -> None:
    earlier, later = sorted(times)
    assert uuid7(earlier) < uuid7(later)  # as text, which is how they sort in logs and indexes
    assert uuid.UUID(uuid7(earlier)) < uuid.UUID(uuid7(later))


def test_ordered_over_increasing_milliseconds() -> None:
    start = 1_750_000_000_000
    ids = [uuid7(start + i) for i in range(1_000)]
    assert ids == sorted(ids)


def test_unique_over_10000_calls() -> None:
    assert len({uuid7() for _ in range(10_000)}) == 10_000


def test_unique_within_one_millisecond() -> None:
    assert len({uuid7(1_750_000_000_000) for _ in range(10_000)}) == 10_000
