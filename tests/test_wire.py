"""The hand-assembled Delivery encoding parses with the generated classes into exactly what it claims."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.log import StoredBatch
from gateway.selection import FLAG_RELAYED, RECORD, record_of
from gateway.wire import (
    delivery_envelope,
    encode_deliveries,
    field_spans,
    hop_suffix,
    next_offset_field,
    timestamp,
    varint,
)
from tests import factories

APPENDED_NS = 1_750_000_000_123_456_789
RECEIVED_NS = 1_750_000_000_000_000_001
NODE = "henan-province"


def envelopes() -> list[pb.Envelope]:
    relayed = factories.alert()
    relayed.provenance.hops.add(node="zhengzhou-city").received_at.FromSeconds(1_749_999_999)
    big = factories.observation(value=1.0)
    big.attributes["note"] = "水位" * 5_000  # an entry whose lengths need multi-byte varints
    return [factories.observation(), relayed, factories.incident(), big, pb.Envelope(id="bare")]


def with_hop(env: pb.Envelope, node: str = NODE, received_ns: int = RECEIVED_NS) -> pb.Envelope:
    expected = pb.Envelope()
    expected.CopyFrom(env)
    hop = expected.provenance.hops.add(node=node)
    hop.received_at.FromNanoseconds(received_ns)
    return expected


def appended_at(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def test_deliveries_parse_into_offsets_envelopes_and_append_time() -> None:
    envs = envelopes()
    data, _ = encode_deliveries(1000, [e.SerializeToString() for e in envs], hop_suffix(NODE, RECEIVED_NS), APPENDED_NS)
    batch = gw.DeliveryBatch.FromString(data)
    assert [d.offset for d in batch.deliveries] == list(range(1000, 1000 + len(envs)))
    for delivery, env in zip(batch.deliveries, envs, strict=True):
        assert delivery.envelope == with_hop(env)
        assert delivery.appended_at == appended_at(APPENDED_NS)
    assert [len(d.envelope.provenance.hops) for d in batch.deliveries] == [1, 2, 1, 1, 1]
    assert batch.deliveries[1].envelope.provenance.hops[0].node == "zhengzhou-city"
    assert batch.next_offset == 0


def test_ends_slice_each_entry() -> None:
    envs = envelopes()
    data, ends = encode_deliveries(7, [e.SerializeToString() for e in envs], hop_suffix(NODE, RECEIVED_NS), APPENDED_NS)
    assert ends.typecode == "Q"
    assert len(ends) == len(envs)
    assert ends[-1] == len(data)
    assert list(ends) == sorted(ends)
    starts = [0, *ends[:-1]]
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        (delivery,) = gw.DeliveryBatch.FromString(data[start:end]).deliveries
        assert delivery.offset == 7 + i
        assert delivery.envelope == with_hop(envs[i])
        assert delivery.appended_at == appended_at(APPENDED_NS)


@pytest.mark.parametrize("first", [0, 100, 16_300, (1 << 21) - 60, (1 << 35) - 60])
def test_offsets_and_lengths_across_varint_boundaries(first: int) -> None:
    """Offsets whose varint grows a byte within the batch, and envelopes of mixed lengths (the encoder
    reuses what repeats within a batch)."""
    envs = [pb.Envelope(id=f"e{i}", attributes={"note": "x" * (i % 3 * 100)}) for i in range(130)]
    data, ends = encode_deliveries(first, [e.SerializeToString() for e in envs], hop_suffix(NODE, RECEIVED_NS), 1)
    deliveries = gw.DeliveryBatch.FromString(data).deliveries
    assert [d.offset for d in deliveries] == [first + i for i in range(130)]
    assert [d.envelope for d in deliveries] == [with_hop(e) for e in envs]
    starts = [0, *ends[:-1]]
    assert [gw.DeliveryBatch.FromString(data[a:b]).deliveries[0].offset for a, b in zip(starts, ends, strict=True)] == [
        first + i for i in range(130)
    ]


def test_entry_is_a_delivery_field_of_the_batch() -> None:
    """Each entry is one element of ``deliveries``, as the generated code reads it."""
    env = factories.observation()
    data, _ = encode_deliveries(42, [env.SerializeToString()], hop_suffix(NODE, RECEIVED_NS), APPENDED_NS)
    expected = gw.DeliveryBatch(
        deliveries=[gw.Delivery(offset=42, envelope=with_hop(env), appended_at=appended_at(APPENDED_NS))]
    )
    assert gw.DeliveryBatch.FromString(data) == expected
    # Byte equality is not expected: the hop is appended after the payload, where protoc would write it before.
    assert data[:1] == b"\x0a"
    assert gw.DeliveryBatch.FromString(expected.SerializeToString() + data) == gw.DeliveryBatch(
        deliveries=[*expected.deliveries, *expected.deliveries]
    )


def test_no_envelopes_encode_to_nothing() -> None:
    data, ends = encode_deliveries(5, [], hop_suffix(NODE, RECEIVED_NS), APPENDED_NS)
    assert data == b""
    assert list(ends) == []


def test_an_empty_suffix_leaves_the_envelope_as_it_was() -> None:
    env = factories.incident()
    data, _ = encode_deliveries(0, [env.SerializeToString()], b"", APPENDED_NS)
    (delivery,) = gw.DeliveryBatch.FromString(data).deliveries
    assert delivery.envelope == env
    assert delivery.offset == 0


def test_hop_suffix_is_an_envelope_with_one_hop() -> None:
    suffix = pb.Envelope.FromString(hop_suffix(NODE, RECEIVED_NS))
    assert [hop.node for hop in suffix.provenance.hops] == [NODE]
    assert suffix.provenance.hops[0].received_at.ToNanoseconds() == RECEIVED_NS


@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_000_000_000, APPENDED_NS])
def test_timestamp(ns: int) -> None:
    assert timestamp(ns).ToNanoseconds() == ns
    assert 0 <= timestamp(ns).nanos < 1_000_000_000


@settings(max_examples=50, deadline=None)
@given(
    first=st.integers(min_value=0, max_value=2**63),
    notes=st.lists(st.text(max_size=400), max_size=6),
    received_ns=st.integers(min_value=0, max_value=4_000_000_000 * 10**9),
    appended_ns=st.integers(min_value=0, max_value=4_000_000_000 * 10**9),
    node=st.text(max_size=80),
)
def test_any_batch_parses_back(first: int, notes: list[str], received_ns: int, appended_ns: int, node: str) -> None:
    envs = [pb.Envelope(id=f"e{i}", attributes={"note": note}) for i, note in enumerate(notes)]
    data, ends = encode_deliveries(
        first, [e.SerializeToString() for e in envs], hop_suffix(node, received_ns), appended_ns
    )
    batch = gw.DeliveryBatch.FromString(data + next_offset_field(first + len(envs)))
    assert [d.offset for d in batch.deliveries] == [first + i for i in range(len(envs))]
    assert [d.envelope for d in batch.deliveries] == [with_hop(e, node, received_ns) for e in envs]
    assert all(d.appended_at == appended_at(appended_ns) for d in batch.deliveries)
    assert batch.next_offset == first + len(envs)
    assert (ends[-1] if envs else 0) == len(data)


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (2**32, b"\x80\x80\x80\x80\x10"),
        (2**63, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"),
        (2**64 - 1, b"\xff" * 9 + b"\x01"),
    ],
)
def test_varint(n: int, encoded: bytes) -> None:
    assert varint(n) == encoded
    assert next_offset_field(n) == b"\x10" + encoded
    if n:  # proto3 leaves a zero out, so there is nothing to compare for 0
        assert gw.DeliveryBatch(next_offset=n).SerializeToString() == b"\x10" + encoded
    assert gw.DeliveryBatch.FromString(next_offset_field(n)).next_offset == n


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_matches_protobuf(n: int) -> None:
    generated = gw.DeliveryBatch(next_offset=n).SerializeToString()
    if n:
        assert next_offset_field(n) == generated
    else:
        assert generated == b""
        assert varint(n) == b"\x00"
    assert gw.DeliveryBatch.FromString(next_offset_field(n)).next_offset == n


def test_next_offset_follows_deliveries() -> None:
    env = factories.observation()
    data, _ = encode_deliveries(10, [env.SerializeToString()] * 3, b"", APPENDED_NS)
    batch = gw.DeliveryBatch.FromString(data + next_offset_field(13))
    assert len(batch.deliveries) == 3
    assert batch.next_offset == 13
    assert gw.DeliveryBatch.FromString(next_offset_field(13)) == gw.DeliveryBatch(next_offset=13)


# -- StoredBatch ---------------------------------------------------------------------------------------


def stored(first_offset: int = 100) -> tuple[StoredBatch, list[pb.Envelope]]:
    envs = [factories.observation(value=float(i)) for i in range(5)]
    data, ends = encode_deliveries(
        first_offset, [e.SerializeToString() for e in envs], hop_suffix(NODE, RECEIVED_NS), APPENDED_NS
    )
    records = b"".join(record_of(e) for e in envs)
    batch = StoredBatch(first_offset, APPENDED_NS, records, ends, data, tuple(e.id for e in envs))
    return batch, envs


def offsets(entries: bytes) -> list[int]:
    return [d.offset for d in gw.DeliveryBatch.FromString(entries).deliveries]


def test_stored_batch_shape() -> None:
    batch, envs = stored()
    assert batch.count == 5
    assert batch.next_offset == 105
    assert len(batch.records) == 5 * RECORD.size
    assert batch.size == len(batch.data) + len(batch.records) + 8 * 5
    assert batch.span(0) == (0, batch.ends[0])
    assert batch.span(3) == (batch.ends[2], batch.ends[3])
    (delivery,) = gw.DeliveryBatch.FromString(batch.entry(3)).deliveries
    assert delivery.offset == 103
    assert delivery.envelope == with_hop(envs[3])


def test_entries_without_indexes() -> None:
    batch, envs = stored()
    assert batch.entries(0, 5) == batch.data
    assert offsets(batch.entries(0, 5)) == [100, 101, 102, 103, 104]
    assert offsets(batch.entries(1, 3)) == [101, 102]
    assert offsets(batch.entries(4, 5)) == [104]
    assert batch.entries(1, 3) == batch.entry(1) + batch.entry(2)
    assert batch.entries(2, 2) == b""
    assert batch.entries(3, 1) == b""
    deliveries = gw.DeliveryBatch.FromString(batch.entries(0, 5)).deliveries
    assert [d.envelope for d in deliveries] == [with_hop(e) for e in envs]


def test_entries_with_indexes() -> None:
    batch, _ = stored()
    assert offsets(batch.entries(0, 5, [0, 2, 4])) == [100, 102, 104]
    assert batch.entries(0, 5, [0, 2, 4]) == batch.entry(0) + batch.entry(2) + batch.entry(4)
    assert offsets(batch.entries(1, 4, [0, 1, 3, 4])) == [101, 103]  # indexes outside start..stop are left out
    assert batch.entries(0, 5, []) == b""
    assert batch.entries(2, 2, [2]) == b""
    assert batch.entries(0, 5, [0, 1, 2, 3, 4]) == batch.entries(0, 5)


@given(st.data())
def test_entries_agree_with_and_without_indexes(data: st.DataObject) -> None:
    batch, _ = stored()
    start = data.draw(st.integers(0, 5))
    stop = data.draw(st.integers(start, 5))
    assert batch.entries(start, stop, list(range(5))) == batch.entries(start, stop)
    indexes = sorted(data.draw(st.sets(st.integers(0, 4))))
    assert offsets(batch.entries(start, stop, indexes)) == [100 + i for i in indexes if start <= i < stop]


@given(st.lists(st.sampled_from([pb.OBSERVATION, pb.INCIDENT]), max_size=20), st.lists(st.booleans(), min_size=20))
def test_of_kind_picks_entries_by_the_kind_and_flags_of_their_records(kinds: list[int], relayed: list[bool]) -> None:
    envs = [factories.incident() if kind == pb.INCIDENT else factories.observation() for kind in kinds]
    records = b"".join(
        record_of(env, FLAG_RELAYED if by_link else 0) for env, by_link in zip(envs, relayed, strict=False)
    )
    data, ends = encode_deliveries(1, [e.SerializeToString() for e in envs], b"", APPENDED_NS)
    batch = StoredBatch(1, APPENDED_NS, records, ends, data, tuple(e.id for e in envs))
    for start in range(len(kinds) + 2):
        assert batch.of_kind(pb.OBSERVATION, start) == [
            i for i in range(start, len(kinds)) if kinds[i] == pb.OBSERVATION
        ]
        assert batch.of_kind(pb.OBSERVATION, start, without=FLAG_RELAYED) == [
            i for i in range(start, len(kinds)) if kinds[i] == pb.OBSERVATION and not relayed[i]
        ]


def test_field_spans_find_each_envelope_of_a_request() -> None:
    request = gw.PublishRequest(envelopes=envelopes(), batch_id=300, certificates=[b"\x30" * 200])
    raw = request.SerializeToString()
    spans = field_spans(raw, 1)
    assert spans is not None
    assert [pb.Envelope.FromString(raw[a:b]) for a, b in spans] == list(request.envelopes)
    assert field_spans(raw, 3) == [(len(raw) - 200, len(raw))]


@given(st.binary(max_size=64))
def test_field_spans_never_overrun_malformed_bytes(data: bytes) -> None:
    spans = field_spans(data, 1)
    if spans is not None:
        assert all(0 <= a <= b <= len(data) for a, b in spans)


def test_the_envelope_of_an_entry_is_cut_from_its_bytes() -> None:
    envs = envelopes()
    suffix = hop_suffix(NODE, RECEIVED_NS)
    data, ends = encode_deliveries(300, [e.SerializeToString() for e in envs], suffix, APPENDED_NS)
    stored = StoredBatch(300, APPENDED_NS, bytes(RECORD.size * len(envs)), ends, data)
    for index, env in enumerate(envs):
        assert delivery_envelope(stored.entry(index)) == env.SerializeToString() + suffix
    # a Delivery whose fields come in another order (any protobuf encoder may write that)
    first = envs[0].SerializeToString()
    delivery = (
        (
            b"\x1a"
            + varint(len(appended_at(APPENDED_NS).SerializeToString()))
            + appended_at(APPENDED_NS).SerializeToString()
        )
        + (b"\x12" + varint(len(first)) + first)
        + b"\x08\x07"
    )
    assert delivery_envelope(b"\x0a" + varint(len(delivery)) + delivery) == first


@pytest.mark.parametrize(
    "entry",
    [b"", b"\x12\x00", b"\x0a\x05\x08\x01", b"\x0a\x04\x08\x01\x12\x09", b"\x0a\x02\x08\x01", b"\x0a\x80"],
    ids=["empty", "not-field-1", "longer-than-said", "envelope-past-the-end", "no-envelope", "truncated-length"],
)
def test_what_is_not_an_entry_has_no_envelope(entry: bytes) -> None:
    assert delivery_envelope(entry) is None
