"""Hand-assembled protobuf wire encoding for the hot path.

The log stores each envelope already encoded as a ``Delivery`` entry (field 1 of ``DeliveryBatch``,
``QueryReply`` and ``GetReply``), so a batch for a subscriber is a concatenation of stored bytes: the
node never parses and re-encodes envelopes to deliver them. Everything here follows the protobuf
encoding rules; ``tests/test_wire.py`` checks the output against the generated classes.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp
from yiwang.v1 import envelope_pb2 as pb

_SMALL = [bytes([n]) for n in range(128)]
_CONTINUED = [bytes([n | 0x80]) for n in range(128)]  # a varint's byte with more to follow

# Tags: (field number << 3) | wire type. Wire type 0 is varint, 2 is length-delimited.
TAG_DELIVERIES = b"\x0a"  # field 1, length-delimited (DeliveryBatch/QueryReply/GetReply.deliveries)
TAG_OFFSET = b"\x08"  # Delivery.offset, varint
TAG_ENVELOPE = b"\x12"  # Delivery.envelope
TAG_APPENDED_AT = b"\x1a"  # Delivery.appended_at
TAG_NEXT_OFFSET = b"\x10"  # DeliveryBatch.next_offset, varint
TAG_BATCH_SIGNATURES = b"\x1a"  # DeliveryBatch.batch_signatures
TAG_PAGE_TOKEN = b"\x12"  # QueryReply.next_page_token
TAG_MISSING = b"\x12"  # GetReply.missing


def varint(n: int) -> bytes:
    """The base-128 varint encoding of a non-negative integer."""
    if n < 0x80:
        return _SMALL[n]
    if n < 0x4000:  # lengths of envelopes and entries: two bytes
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + varint(len(payload)) + payload


def timestamp(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def hop_suffix(node: str, received_ns: int) -> bytes:
    """Bytes that, appended to an encoded Envelope, add a provenance hop (protobuf merges concatenations)."""
    hop = pb.Hop(node=node, received_at=timestamp(received_ns))
    return pb.Envelope(provenance=pb.Provenance(hops=[hop])).SerializeToString()


def encode_deliveries(
    first_offset: int, envelopes: Sequence[bytes], suffix: bytes, appended_ns: int
) -> tuple[bytes, array[int]]:
    """Encodes envelopes as consecutive Delivery entries; returns the bytes and each entry's end.

    This runs for every envelope a node appends, so what repeats is encoded once: the offset's
    varint shares its high bytes with the 127 offsets around it, and a batch's envelopes (and so its
    entries) come in few distinct lengths."""
    appended = length_delimited(TAG_APPENDED_AT, timestamp(appended_ns).SerializeToString())
    fixed = len(suffix) + len(appended)  # after the envelope in every entry
    parts: list[bytes] = []
    add = parts.extend
    ends: array[int] = array("Q")
    end = ends.append
    fields: dict[int, bytes] = {}  # envelope length -> its Delivery.envelope tag and length
    prefixes: dict[int, bytes] = {}  # entry length -> its DeliveryBatch.deliveries tag and length
    position = 0
    offset = first_offset
    high_of, high = -1, b""
    for env in envelopes:
        if offset < 0x80:
            offset_field = TAG_OFFSET + _SMALL[offset]
        else:
            if offset >> 7 != high_of:
                high_of = offset >> 7
                high = varint(high_of)
            offset_field = TAG_OFFSET + _CONTINUED[offset & 0x7F] + high
        size = len(env)
        field = fields.get(size)
        if field is None:
            field = fields[size] = TAG_ENVELOPE + varint(size + len(suffix))
        body = len(offset_field) + len(field) + size + fixed
        prefix = prefixes.get(body)
        if prefix is None:
            prefix = prefixes[body] = TAG_DELIVERIES + varint(body)
        add((prefix, offset_field, field, env, suffix, appended))
        position += len(prefix) + body
        end(position)
        offset += 1
    return b"".join(parts), ends


def read_varint(data: bytes, position: int) -> tuple[int, int]:
    """Decodes a varint at ``position``; returns it and the position after it. Raises ValueError."""
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def field_spans(data: bytes, field: int) -> list[tuple[int, int]] | None:
    """Where each occurrence of the length-delimited top-level ``field`` lies in an encoded message,
    as (start, end) of its payload; None if the bytes are not a well-formed message."""
    spans: list[tuple[int, int]] = []
    position, size = 0, len(data)
    try:
        while position < size:
            key, position = read_varint(data, position)
            wire_type = key & 7
            if wire_type == 0:
                _, position = read_varint(data, position)
            elif wire_type == 2:
                length, position = read_varint(data, position)
                if key >> 3 == field:
                    spans.append((position, position + length))
                position += length
            elif wire_type == 1:
                position += 8
            elif wire_type == 5:
                position += 4
            else:
                return None  # groups are not used by this protocol
    except ValueError:
        return None
    return spans if position == size else None


def delivery_envelope(entry: bytes) -> bytes | None:
    """The encoded Envelope inside one stored entry (a ``Delivery`` as field 1 of a DeliveryBatch,
    the form ``encode_deliveries`` writes); None if the bytes are not such an entry."""
    if not entry or entry[0] != TAG_DELIVERIES[0]:
        return None
    try:
        size, start = read_varint(entry, 1)
    except ValueError:
        return None
    if start + size != len(entry):
        return None
    try:  # the layout encode_deliveries writes: offset, then the envelope
        if entry[start] == TAG_OFFSET[0]:
            _, at = read_varint(entry, start + 1)
            if entry[at] == TAG_ENVELOPE[0]:
                length, at = read_varint(entry, at + 1)
                if at + length <= len(entry):
                    return entry[at : at + length]
    except (ValueError, IndexError):
        return None
    spans = field_spans(entry[start:], 2)  # any other order of the Delivery's fields
    if not spans or len(spans) != 1:
        return None
    begin, end = spans[0]
    return entry[start + begin : start + end]


def next_offset_field(next_offset: int) -> bytes:
    return TAG_NEXT_OFFSET + varint(next_offset)
