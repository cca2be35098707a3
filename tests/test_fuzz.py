"""Hostile publish requests: only our own error type may escape admission, and the node survives them.

Admission is the decoder of what publishers send (encoded PublishRequest bytes). Fed random bytes,
mutated valid requests, or valid requests whose fields were set to arbitrary values, it either
admits/refuses envelope by envelope or raises InvalidRequestError naming what is wrong.
"""

from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yiwang.v1 import gateway_pb2 as gw

from gateway.admission import Admission, Admitted
from gateway.client import GatewayClient
from gateway.errors import InvalidRequestError
from gateway.regions import default_table
from gateway.validation import Validator
from tests import factories

ADMISSION = Admission(Validator(default_table()), max_batch_envelopes=100)
NOW = 1_790_000_000.0
VALID = gw.PublishRequest(
    envelopes=[factories.observation(sent_at=NOW), factories.alert(), factories.incident()]
).SerializeToString()


def admit_or_refuse(raw: bytes) -> Admitted | None:
    try:
        admitted = ADMISSION.admit(raw, NOW)
    except InvalidRequestError as exc:
        refused = exc
    else:
        assert len(admitted.ids) + len(admitted.rejections) == admitted.total
        assert admitted.positions == sorted(admitted.positions)
        return admitted
    assert refused.field
    return None


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(raw: bytes) -> None:
    admit_or_refuse(raw)


@settings(max_examples=400)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_valid_request(flips: list[tuple[int, int]]) -> None:
    raw = bytearray(VALID)
    for position, value in flips:
        raw[position] = value
    admit_or_refuse(bytes(raw))


@settings(max_examples=400)
@given(st.binary(max_size=len(VALID)))
def test_truncated_or_extended_request(tail: bytes) -> None:
    admit_or_refuse(VALID[: len(tail)] + tail)


_text = st.text(max_size=40)
_number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**31), 2**31 - 1).map(float))


@settings(max_examples=300)
@given(
    kind=st.integers(0, 12),
    region=_text,
    agency=_text,
    severity=st.integers(0, 9),
    status=st.integers(0, 9),
    priority=st.integers(0, 2**32 - 1),
    seconds=st.integers(-(2**40), 2**40),
    nanos=st.integers(-(2**31), 2**31 - 1),
    lat=_number,
    lon=_number,
    envelope_id=_text,
)
def test_arbitrary_field_values(
    kind: int,
    region: str,
    agency: str,
    severity: int,
    status: int,
    priority: int,
    seconds: int,
    nanos: int,
    lat: float,
    lon: float,
    envelope_id: str,
) -> None:
    env = factories.observation(sent_at=NOW)
    env.id = envelope_id
    env.kind = kind  # type: ignore[assignment]
    env.region = region
    env.origin.agency = agency
    env.severity = severity  # type: ignore[assignment]
    env.status = status  # type: ignore[assignment]
    env.priority = priority
    env.sent_at.seconds = seconds
    env.sent_at.nanos = nanos
    env.geometry.point.lat = lat
    env.geometry.point.lon = lon
    admit_or_refuse(gw.PublishRequest(envelopes=[env, factories.observation(sent_at=NOW)]).SerializeToString())


async def test_the_node_refuses_garbage_and_keeps_serving(client: GatewayClient) -> None:
    raw_publish = client.channel.unary_unary(
        "/yiwang.v1.Gateway/Publish", request_serializer=lambda b: b, response_deserializer=gw.PublishReply.FromString
    )
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05abc", VALID[:-7]):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw_publish(garbage)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
        assert "PublishRequest" in (refused.value.details() or "")
    reply = await client.publish([factories.observation()])
    assert reply.results[0].outcome == gw.PublishResult.ACCEPTED
