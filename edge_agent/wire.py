"""The bytes an edge terminal and the gateway exchange over MQTT, and the topics they use.

Sans-IO: every function takes or returns bytes (or topic strings); nothing here opens a socket or
knows about asyncio. Batches of readings, the hot path and what crosses satellite links, use a
compact binary format; control messages (birth, death, heartbeat, ack, command and its reply) are
low-rate JSON, strict on decode. Every decoder raises only ``WireError``.

Batch format, version 1 (all integers little-endian)::

    prefix   "YW" (2 bytes), version (1 byte, = 1), flags (1 byte)
             flags: bit 0 compressed, bit 1 historical, bit 2 wide records; bits 3-7 zero
    body     raw deflate (wbits -15, preset dictionary ``BATCH_ZDICT``) when compressed, else as is:
      terminal     uvarint byte length, UTF-8 (at most 255 bytes)
      session      uvarint (< 2**64)
      base_seq     uvarint (< 2**64)
      base_at_ms   zigzag varint (a signed 64-bit integer)
      count        uvarint, number of readings
      drops        uvarint number of reports (at most 16), each one byte
                   (priority in bits 0-1, reason in bits 2-3, bits 4-7 zero) and a uvarint count
      columns      count entries each, every column byte-shuffled (all first bytes, then all
                   second bytes, ...) so deflate sees runs:
                   seq           int32: seq minus the previous reading's seq, the first one's
                                 minus base_seq (wide records: uint64, the seq itself)
                   at_ms         int32: the same way from base_at_ms (wide records: int64, the
                                 time itself); wide records, for the rare batch whose numbers
                                 jump by 2**31 or more, have base_seq and base_at_ms 0
                   metric        uint16, index into the terminal's catalogue
                   flags         uint8: priority in bits 0-1; bit 2 lat, bit 3 lon, bit 4 text,
                                 bit 5 blob, bit 6 key present; bit 7 zero
                   value         float64, finite
      extras       for each reading with presence bits, in reading order, the fields present:
                   lat float64, lon float64, text (uvarint length, UTF-8), blob (uvarint
                   length, bytes), key (uvarint length, UTF-8)
      nothing may follow.

Batch format, version 2: version 1 with a series section after the extras (a batch without
series is still written as version 1, byte for byte, so a gateway that reads only version 1 keeps
working with terminals that never submit series)::

      series       uvarint number of series (at most 4096), each a sampled block of one metric
                   taking a range of seq numbers of its own (no reading or other series of the
                   batch may share one):
                   metric        uvarint, index into the terminal's catalogue (< 65536)
                   priority      uint8, 2 or 3 (P0 and P1 readings are never packed in series)
                   first_seq     uvarint; the series holds seqs first_seq .. first_seq + count - 1
                   count         uvarint, at least 1; all series together at most 1,000,000
                   start_at_ms   zigzag varint, the first point's time, |start_at_ms| < 2**62
                   at_deltas     count - 1 int32, byte-shuffled: each point's time minus the
                                 previous point's
                   values        count float64, byte-shuffled, finite
      nothing may follow.

Offsets in ``WireError`` count from the start of the message as it would be uncompressed (the
4-byte prefix, then the body), so they point at the same field whether or not it was compressed.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from base64 import b64decode
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise, repeat
from itertools import compress as select
from operator import attrgetter, sub
from typing import Any, Final, NoReturn

import grpc
import numpy as np
import numpy.typing as npt

from edge_agent.model import (
    Ack,
    AckState,
    Batch,
    Birth,
    Command,
    CommandReply,
    DropReason,
    DropReport,
    Metric,
    MetricKind,
    Priority,
    Reading,
    Sequenced,
    Series,
)
from gateway.errors import YiwangError


class WireError(YiwangError):
    """A message cannot be encoded or decoded; ``field`` names the part, ``offset`` where it is."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, reason: str, *, offset: int | None = None, field: str = "") -> None:
        where = " ".join(part for part in (field, "" if offset is None else f"at byte {offset}") if part)
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.offset = offset
        self.field = field

    def __reduce__(self) -> tuple[Callable[..., WireError], tuple[Any, ...]]:  # crosses process pools
        return _rebuild_wire_error, (self.reason, self.offset, self.field)


def _rebuild_wire_error(reason: str, offset: int | None, field: str) -> WireError:
    return WireError(reason, offset=offset, field=field)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------

MAGIC: Final = b"YW"
VERSION: Final = 1  # batches of single readings only
SERIES_VERSION: Final = 2  # batches with a series section
_VERSIONS: Final = (VERSION, SERIES_VERSION)
PREFIX_SIZE: Final = 4
FLAG_COMPRESSED: Final = 0x01
FLAG_HISTORICAL: Final = 0x02
FLAG_WIDE: Final = 0x04
_KNOWN_FLAGS: Final = FLAG_COMPRESSED | FLAG_HISTORICAL | FLAG_WIDE

# Per-reading presence bits, above the two priority bits.
HAS_LAT: Final = 0x04
HAS_LON: Final = 0x08
HAS_TEXT: Final = 0x10
HAS_BLOB: Final = 0x20
HAS_KEY: Final = 0x40
_PRIORITY_BITS: Final = 0x03
_EXTRA_BITS: Final = HAS_LAT | HAS_LON | HAS_TEXT | HAS_BLOB | HAS_KEY

MAX_READINGS: Final = 100_000
MAX_BATCH_BYTES: Final = 16 * 1024 * 1024  # a batch as it would be uncompressed
MAX_TERMINAL_BYTES: Final = 255
MAX_TEXT_BYTES: Final = 65_535  # a reading's text and key
MAX_BLOB_BYTES: Final = 1024 * 1024  # a bulk chunk
MAX_DROP_REPORTS: Final = 16  # one per (priority, reason)
MAX_SERIES: Final = 4096  # series per batch
MAX_SERIES_POINTS: Final = 1_000_000  # points of all series of a batch together
SERIES_START_LIMIT: Final = 1 << 62  # keeps start plus a million int32 deltas inside 64 bits
SERIES_POINT_SIZE: Final = 4 + 8  # bytes a point takes in a series entry: a time delta and a value
_SERIES_PRIORITIES: Final = (Priority.P2, Priority.P3)
UINT64_LIMIT: Final = 1 << 64
INT64_MIN: Final = -(1 << 63)
INT64_LIMIT: Final = 1 << 63

# The wire numbers reasons by this table, not by the enum's declaration order, so reordering the
# enum cannot change the format.
DROP_REASONS: Final[tuple[DropReason, ...]] = (
    DropReason.SUPERSEDED,
    DropReason.EXPIRED,
    DropReason.OUTBOX_FULL,
    DropReason.BUDGET,
)
_REASON_CODE: Final = {reason: code for code, reason in enumerate(DROP_REASONS)}
_PRIORITIES: Final = tuple(Priority)

_NARROW_SIZE: Final = 4  # bytes of a seq or time delta
_WIDE_SIZE: Final = 8  # bytes of a seq or time itself
_FIXED_COLUMNS_SIZE: Final = 2 + 1 + 8  # metric, flags, value

# The preset dictionary of version 1: part of the format, so never to be changed within it. It
# is the uncompressed bodies of five small batches of a realistic terminal (a rain gauge and a
# water-level sensor every 5 minutes, an alarm, a patrol boat's positions), largest first so the
# patterns of the smallest batches, the ones a dictionary helps most, sit nearest the data.
# tests/test_edge_wire.py::test_batch_dictionary_follows_its_recipe rebuilds it from that recipe.
BATCH_ZDICT: Final = b64decode(
    "CGdhdWdlLTE3AQGAoMS0+GVkAAABAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB"
    "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AABoeADgAOAA4ADgAOAAaHgA4ADgAOAA4ADgAABoeADgAOAA4ADgAOAAaHgA4ADgAOAA4ADgAABoeADgAOAA4ADgAOAAaHgA4ADgAOAA4ADgAABo"
    "eADgAOAA4ADgAOAAaHgAAAAAQlEAkwCTAJMAkwCTAEJRAJMAkwCTAJMAkwAAQlEAkwCTAJMAkwCTAEJRAJMAkwCTAJMAkwAAQlEAkwCTAJMAkwCT"
    "AEJRAJMAkwCTAJMAkwAAQlEAkwCTAJMAkwCTAEJRAAAAAAAEAAQABAAEAAQABAAABAAEAAQABAAEAAQAAAAEAAQABAAEAAQABAAABAAEAAQABAAE"
    "AAQAAAAEAAQABAAEAAQABAAABAAEAAQABAAEAAQAAAAEAAQABAAEAAQABAAABAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEDAgABAAEAAQABAAEAAQIAAQAB"
    "AAEAAQABAAEDAgABAAEAAQABAAEAAQIAAQABAAEAAQABAAEDAgABAAEAAQABAAEAAQIAAQABAAEAAQABAAEDAgABAAEAAQABAAEAAQIAAQAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAACAgINAgICAgICAgICAgICDQICAgICAgICAgICAgINAgICAgICAgICAgICDQICAgICAgICAgICAgINAgICAgICAgICAgICDQIC"
    "AgICAgICAgICAgINAgICAgICAgICAgICDQICAM1SMwBcAM0AzQBcAFwAzZoAzQDNAD0AXAA9AFwfmgDNAM0AzQDNAFwAzTMAPQBcAD0AXABcAFxc"
    "MwBcAD0AXABcAFwAzZoAzQBcAFwAzQDNAM3XmgDNAFwAzQCuAD0ArgAArgDMuDMAjwDMAMwAjwCPAMyZAMwAzAAKAI8ACgCPhZkAzADMAMwAzACP"
    "AMwzAAoAjwAKAI8AjwCPjzMAjwAKAI8AjwCPAMyZAMwAjwCPAMwAzADMo5kAzACPAMwARwAKAEcAAEcAzB4zAMIAzADMAMIAwgDMmQDMAMwA1wDC"
    "ANcAwuuZAMwAzADMAMwAwgDMMwDXAMIA1wDCAMIAwsIzAMIA1wDCAMIAwgDMmQDMAMIAwgDMAMwAzHCZAMwAwgDMAOEA1wDhAADhAMyFMwD1AMwA"
    "zAD1APUAzJkAzADMAKMA9QCjAPVRmQDMAMwAzADMAPUAzDMAowD1AKMA9QD1APX1MwD1AKMA9QD1APUAzJkAzAD1APUAzADMAMw9mQDMAPUAzAB6"
    "AKMAegAAegDM6zMAKADMAMwAKAAoAMyZAMwAzABwACgAcAAouJkAzADMAMwAzAAoAMwzAHAAKABwACgAKAAoKDMAKABwACgAKAAoAMyZAMwAKAAo"
    "AMwAzADMCpkAzAAoAMwAFABwABQAABQATFEzAEwATABMAEwATABMmQBMAEwATQBMAE0ATB6ZAEwATABMAEwATABMMwBNAEwATQBMAEwATNwzAEwA"
    "TQBMAEwATABMmQBMAEwATABMAEwATNeZAEwATABMAE4ATQBOAABOAFUq0wBVAFUAVQBVAFUAVQHgVQBVAFUAVQBVAFUq2QBVAFUAVQBVAFUAVdMA"
    "VeBVAFUAVQBVAFUpAwBVAFUAVQBVAFUAVdngVQBVAFUAVQBVAFUp2QBVAFUAVQBVAFUAVeAAVQBAQD8AQABAAEAAQABAAEBAP0AAQABAAEAAQABA"
    "QD8AQABAAEAAQABAAEA/AEA/QABAAEAAQABAQEAAQABAAEAAQABAAEA/P0AAQABAAEAAQABAQD8AQABAAEAAQABAAEA/AEDImLuWkF9BQBWMSuoE"
    "aFxAHcnlP6RfQUAAAAAAAGhcQHL5D+m3X0FA63O1FftnXEDHKTqSy19BQNXnaiv2Z1xAHVpkO99fQUDAWyBB8WdcQHKKjuTyX0FAq8/VVuxnXEDH"
    "uriNBmBBQJZDi2znZ1xAHOviNhpgQUCAt0CC4mdcQAhnYXVnZS0xNwEBgKDEtPhlFAAAAQEBAQEBAQEBAQEBAQEBAQEBAQAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAGh4AOAA4ADgAOAA4ABoeADgAAAAQlEAkwCTAJMAkwCTAEJR"
    "AJMAAAAABAAEAAQABAAEAAQAAAQABAAAAAAAAAAAAAAAAAAAAAAAAAAAAAEDAgABAAEAAQABAAEAAQIAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAIC"
    "Ag0CAgICAgICAgICAgINAgICAM1SMwBcAM0AzQBcAFwAzZoAzQAAzLgzAI8AzADMAI8AjwDMmQDMAADMHjMAwgDMAMwAwgDCAMyZAMwAAMyFMwD1"
    "AMwAzAD1APUAzJkAzAAAzOszACgAzADMACgAKADMmQDMAABMUTMATABMAEwATABMAEyZAEwAAFUq0wBVAFUAVQBVAFUAVQHgVQAAQEA/AEAAQABA"
    "AEAAQABAQD9AAMiYu5aQX0FAFYxK6gRoXEAdyeU/pF9BQAAAAAAAaFxACGdhdWdlLTE3AQGAoMS0+GUFAAABAQEBAAAAAAAAAAAAAAAAAAAAAAAA"
    "aHgAAABCUQAAAAAEAAAAAAAAAQMCAAAAAAAAAgICDQIAzVIzAADMuDMAAMweMwAAzIUzAADM6zMAAExRMwAAVSrTAABAQD8AyJi7lpBfQUAVjErq"
    "BGhcQAhnYXVnZS0xNwEBgKDEtPhlAgAAAQAAAAAAAAAAAAAAAAAAAAEAAAICAM0AzADMAMwAzABMAFUAQAhnYXVnZS0xNwEBgKDEtPhlAQAAAAAA"
    "AAAAAAAAAgAAAAAAAAAA"
)
_COMPRESS_LEVEL: Final = 6

_SEQUENCED_PARTS: Final = attrgetter("session", "seq", "reading")
_READING_CORE: Final = attrgetter("metric", "at_ms", "value", "priority")
_READING_EXTRAS: Final = attrgetter("lat", "lon", "text", "blob", "key")
_NO_EXTRAS: Final = (None, None, "", b"", "")


def encode_batch(batch: Batch, *, compress: bool = True, series_entries: Sequence[bytes] = ()) -> bytes:
    """The bytes of a batch; compressed when asked and when that makes it smaller.

    ``series_entries`` are series already encoded (``encode_series``, as the outbox stores them);
    they follow ``batch.series``. With any series the batch is version 2, else version 1.
    Refuses (``WireError`` naming the reading and field) what the format cannot carry exactly:
    non-finite values, readings of another session, numbers out of their range.
    """
    count = len(batch.readings)
    if count > MAX_READINGS:
        raise WireError(f"{count} readings, at most {MAX_READINGS}", field="readings")
    if count:
        sessions, seqs, readings = zip(*map(_SEQUENCED_PARTS, batch.readings), strict=True)
        metrics, ats, values, priorities = zip(*map(_READING_CORE, readings), strict=True)
    else:
        sessions = seqs = readings = metrics = ats = values = priorities = ()
    if sessions.count(batch.session) != count:
        _refuse_reading(sessions, lambda session: session != batch.session, "session", "not the batch's session")
    _check_range(seqs, 0, UINT64_LIMIT, "seq")
    _check_range(ats, INT64_MIN, INT64_LIMIT, "reading.at_ms")
    if not all(map(_is_finite_number, values)):
        _refuse_reading(values, lambda value: not _is_finite_number(value), "reading.value", "not a finite number")
    base_seq = seqs[0] if count else 0
    base_at = ats[0] if count else 0
    wide = False
    try:
        number_columns = _pack_column("i", _NARROW_SIZE, list(map(sub, seqs, (base_seq, *seqs[:-1]))))
        number_columns += _pack_column("i", _NARROW_SIZE, list(map(sub, ats, (base_at, *ats[:-1]))))
    except struct.error:  # a jump of 2**31 or more: this batch takes the wide records
        wide = True
        base_seq = base_at = 0
        number_columns = _pack_column("Q", _WIDE_SIZE, seqs) + _pack_column("q", _WIDE_SIZE, ats)

    head = bytearray()
    _put_text(head, batch.terminal, MAX_TERMINAL_BYTES, "terminal")
    _put_uint64(head, batch.session, "session")
    _put_uvarint(head, base_seq)
    _put_int64(head, base_at, "base_at_ms")
    _put_uvarint(head, count)
    _put_drops(head, batch.drops)
    try:
        metric_column = _pack_column("H", 2, metrics)
    except struct.error:
        _refuse_reading(metrics, lambda metric: not _fits(metric, 0, 1 << 16), "reading.metric", "not in 0..65535")
    flags, extras = _flags_of(readings, priorities)
    parts: list[bytes | bytearray] = [head, number_columns, metric_column, flags, _pack_column("d", 8, values), extras]
    version = VERSION
    if batch.series or series_entries:
        version = SERIES_VERSION
        entries = len(batch.series) + len(series_entries)
        if entries > MAX_SERIES:
            raise WireError(f"{entries} series, at most {MAX_SERIES}", field="series")
        section = bytearray()
        _put_uvarint(section, entries)
        parts.append(bytes(section))
        for index, block in enumerate(batch.series):
            parts.append(
                encode_series(block.metric, block.priority, block.first_seq, block.at_ms, block.values, index=index)
            )
        parts.extend(series_entries)
    body = b"".join(parts)

    prefix_flags = (FLAG_HISTORICAL if batch.historical else 0) | (FLAG_WIDE if wide else 0)
    if compress:
        packer = zlib.compressobj(_COMPRESS_LEVEL, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, BATCH_ZDICT)
        packed = packer.compress(body) + packer.flush()
        if len(packed) < len(body):
            return bytes((*MAGIC, version, prefix_flags | FLAG_COMPRESSED)) + packed
    return bytes((*MAGIC, version, prefix_flags)) + body


def series_arrays(
    at_ms: object, values: object, *, field: str = "series"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """``at_ms`` and ``values`` (sequences or numpy arrays) as int64 and float64 arrays of one length,
    checked as the batch format needs them; ``WireError`` names the field and the point."""
    try:
        times = np.asarray(at_ms)
        numbers = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"not arrays of numbers ({exc})", field=field) from None
    if times.ndim != 1 or numbers.ndim != 1:
        raise WireError("at_ms and values must be one-dimensional", field=field)
    if len(times) != len(numbers):
        raise WireError(f"{len(times)} times for {len(numbers)} values", field=field)
    if not len(numbers):
        raise WireError("no points", field=field)
    if times.dtype.kind not in "iu":
        raise WireError(f"times must be integers (milliseconds), not {times.dtype}", field=f"{field}.at_ms")
    if times.dtype.kind == "u" and times.max() >= INT64_LIMIT:
        raise WireError("a time is past the 64-bit range", field=f"{field}.at_ms")
    times = times.astype(np.int64, copy=False)
    finite = np.isfinite(numbers)
    if not finite.all():
        index = int(np.argmin(finite))
        raise WireError(f"{numbers[index]} is not a finite number", field=f"{field}.values[{index}]")
    return times, numbers


def encode_series(
    metric: int, priority: int, first_seq: int, at_ms: object, values: object, *, index: int = 0
) -> bytes:
    """One series entry of the batch format (version 2); see the module's documentation."""
    field = f"series[{index}]"
    times, numbers = series_arrays(at_ms, values, field=field)
    if not _fits(metric, 0, 1 << 16):
        raise WireError(f"{metric!r} is not in 0..65535", field=f"{field}.metric")
    if priority not in _SERIES_PRIORITIES:
        raise WireError(f"{priority!r}: series carry only P2 and P3", field=f"{field}.priority")
    count = len(numbers)
    if not _fits(first_seq, 1, UINT64_LIMIT - count + 1):
        raise WireError(f"{first_seq!r}: the series' seqs do not fit 1..2**64-1", field=f"{field}.first_seq")
    start = int(times[0])
    if not -SERIES_START_LIMIT < start < SERIES_START_LIMIT:
        raise WireError(f"{start} is out of the series' time range", field=f"{field}.at_ms[0]")
    deltas = np.diff(times)
    if len(deltas) and (deltas.min() < -(1 << 31) or deltas.max() >= 1 << 31):
        wild = (deltas < -(1 << 31)) | (deltas >= 1 << 31)
        point = int(np.argmax(wild)) + 1
        raise WireError(
            "jumps by 2**31 ms or more from the point before; submit it apart", field=f"{field}.at_ms[{point}]"
        )
    head = bytearray()
    _put_uvarint(head, metric)
    head.append(int(priority))
    _put_uvarint(head, first_seq)
    _put_uvarint(head, count)
    _put_uvarint(head, (start << 1) ^ (start >> 63))
    return b"".join((head, _shuffle(deltas.astype("<i4")), _shuffle(numbers.astype("<f8", copy=False))))


def _shuffle(column: npt.NDArray[Any]) -> bytes:
    """The bytes of a column grouped by position within an item (all first bytes, then all second ...)."""
    if len(column) < 2:
        return column.tobytes()
    return np.ascontiguousarray(column.view(np.uint8).reshape(len(column), column.itemsize).T).tobytes()


def _unshuffle(raw: bytes, dtype: str, count: int) -> npt.NDArray[Any]:
    size = np.dtype(dtype).itemsize
    if count < 2:
        return np.frombuffer(raw, dtype=dtype, count=count).copy()
    grouped = np.frombuffer(raw, dtype=np.uint8, count=size * count).reshape(size, count)
    return np.ascontiguousarray(grouped.T).view(dtype).reshape(count)


def decode_batch(
    data: bytes,
    *,
    max_readings: int = MAX_READINGS,
    max_bytes: int = MAX_BATCH_BYTES,
    max_points: int = MAX_SERIES_POINTS,
) -> Batch:
    """The batch ``data`` holds, checked throughout; ``WireError`` names what is wrong and where.

    ``max_bytes`` bounds the message as it would be uncompressed, so a small hostile message
    cannot inflate into gigabytes.
    """
    if len(data) < PREFIX_SIZE:
        raise WireError(f"{len(data)} bytes, shorter than the {PREFIX_SIZE}-byte prefix", offset=0, field="prefix")
    if data[:2] != MAGIC:
        raise WireError(f"magic {bytes(data[:2])!r}, not {MAGIC!r}", offset=0, field="magic")
    if data[2] not in _VERSIONS:
        raise WireError(
            f"version {data[2]} is not supported (this side reads {VERSION} and {SERIES_VERSION})",
            offset=2,
            field="version",
        )
    prefix_flags = data[3]
    if prefix_flags & ~_KNOWN_FLAGS:
        raise WireError(f"unknown flag bits 0x{prefix_flags & ~_KNOWN_FLAGS:02x}", offset=3, field="flags")
    if len(data) > max_bytes:
        raise WireError(f"{len(data)} bytes, more than {max_bytes}", offset=0, field="length")
    body = data[PREFIX_SIZE:]
    if prefix_flags & FLAG_COMPRESSED:
        body = _inflate(body, max_bytes - PREFIX_SIZE)
    return _BodyReader(bytes(body), max_readings, max_points).batch(
        historical=bool(prefix_flags & FLAG_HISTORICAL),
        wide=bool(prefix_flags & FLAG_WIDE),
        with_series=data[2] == SERIES_VERSION,
    )


def _inflate(packed: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(-15, BATCH_ZDICT)
    try:
        body = inflater.decompress(packed, limit)
        if inflater.unconsumed_tail:
            raise WireError(f"inflates past {limit} bytes", offset=PREFIX_SIZE, field="body")
        body += inflater.flush()
    except zlib.error as exc:
        raise WireError(f"not valid deflate data ({exc})", offset=PREFIX_SIZE, field="body") from None
    if not inflater.eof:
        raise WireError("the compressed body ends before its last block", offset=PREFIX_SIZE, field="body")
    if inflater.unused_data:
        raise WireError(
            f"{len(inflater.unused_data)} bytes follow the compressed body",
            offset=PREFIX_SIZE + len(packed) - len(inflater.unused_data),
            field="trailing",
        )
    if len(body) > limit:
        raise WireError(f"inflates past {limit} bytes", offset=PREFIX_SIZE, field="body")
    return body


class _BodyReader:
    """Reads a batch body front to back; every error names the field and its offset."""

    def __init__(self, body: bytes, max_readings: int, max_points: int = MAX_SERIES_POINTS) -> None:
        self.body = body
        self.position = 0
        self.max_readings = max_readings
        self.max_points = max_points

    def error(self, reason: str, field: str, at: int | None = None) -> WireError:
        return WireError(reason, offset=PREFIX_SIZE + (self.position if at is None else at), field=field)

    def take(self, size: int, field: str) -> bytes:
        end = self.position + size
        if end > len(self.body):
            raise self.error(f"needs {size} bytes, {len(self.body) - self.position} left", field)
        chunk = self.body[self.position : end]
        self.position = end
        return chunk

    def uvarint(self, field: str, limit: int = UINT64_LIMIT) -> int:
        start = self.position
        value = shift = 0
        for position in range(start, min(start + 10, len(self.body))):
            byte = self.body[position]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                self.position = position + 1
                if value >= limit:
                    raise self.error(f"{value} is out of range (at most {limit - 1})", field, start)
                return value
            shift += 7
        if start + 10 <= len(self.body):
            raise self.error("varint longer than 10 bytes", field, start)
        raise self.error("truncated varint", field, start)

    def text(self, limit: int, field: str) -> str:
        start = self.position
        raw = self.take(self.uvarint(f"{field}.length", limit + 1), field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"not UTF-8 ({exc.reason})", field, start) from None

    def batch(self, *, historical: bool, wide: bool, with_series: bool = False) -> Batch:
        terminal = self.text(MAX_TERMINAL_BYTES, "terminal")
        session = self.uvarint("session")
        base_seq_at = self.position
        base_seq = self.uvarint("base_seq")
        zigzag = self.uvarint("base_at_ms")
        base_at = (zigzag >> 1) ^ -(zigzag & 1)
        if wide and (base_seq or base_at):
            raise self.error("base_seq and base_at_ms must be 0 with wide records", "base_seq", base_seq_at)
        count_at = self.position
        count = self.uvarint("count")
        if count > self.max_readings:
            raise self.error(f"{count} readings, at most {self.max_readings}", "count", count_at)
        drops = self.drops()
        number_size = _WIDE_SIZE if wide else _NARROW_SIZE
        columns_size = count * (2 * number_size + _FIXED_COLUMNS_SIZE)
        if columns_size > len(self.body) - self.position:
            raise self.error(
                f"{count} readings need {columns_size} bytes, {len(self.body) - self.position} left", "count"
            )
        seqs_at = self.position
        if wide:
            seqs = list(self.column("Q", _WIDE_SIZE, count))
            ats_at = self.position
            ats = list(self.column("q", _WIDE_SIZE, count))
        else:
            seqs = list(accumulate(self.column("i", _NARROW_SIZE, count), initial=base_seq))
            del seqs[0]
            ats_at = self.position
            ats = list(accumulate(self.column("i", _NARROW_SIZE, count), initial=base_at))
            del ats[0]
        metrics = self.column("H", 2, count)
        flags_at = self.position
        flags = self.take(count, "flags")
        values_at = self.position
        values = self.column("d", 8, count)
        if count:
            # Whole-column checks run at C speed; the loops that find the culprit run only on failure.
            if min(seqs) < 0 or max(seqs) >= UINT64_LIMIT:
                index = next(i for i, seq in enumerate(seqs) if not 0 <= seq < UINT64_LIMIT)
                raise self.error(f"reading {index}'s seq {seqs[index]} is out of 0..2**64-1", "seq_deltas", seqs_at)
            if min(ats) < INT64_MIN or max(ats) >= INT64_LIMIT:
                index = next(i for i, at in enumerate(ats) if not INT64_MIN <= at < INT64_LIMIT)
                raise self.error(
                    f"reading {index}'s at_ms {ats[index]} is out of the 64-bit range", "at_deltas", ats_at
                )
            if max(flags) & 0x80:
                index = next(i for i, flag in enumerate(flags) if flag & 0x80)
                raise self.error(f"reading {index} has reserved flag bit 7 set", "flags", flags_at + index)
            if not all(map(math.isfinite, values)):
                index = next(i for i, value in enumerate(values) if not math.isfinite(value))
                raise self.error(f"reading {index}'s value {values[index]} is not finite", "values", values_at)
        priorities = map(_PRIORITIES.__getitem__, map(_PRIORITY_BITS.__and__, flags))
        readings = list(map(Reading, metrics, ats, values, priorities))
        if count and max(flags) > _PRIORITY_BITS:
            for index in select(range(count), map(_EXTRA_BITS.__and__, flags)):
                readings[index] = self.extras(readings[index], flags[index], index)
        series = self.series_section(seqs) if with_series else ()
        if self.position != len(self.body):
            raise self.error(f"{len(self.body) - self.position} bytes follow the last field", "trailing")
        return Batch(
            terminal=terminal,
            session=session,
            readings=tuple(map(Sequenced, repeat(session), seqs, readings)),
            historical=historical,
            drops=drops,
            series=series,
        )

    def series_section(self, seqs: list[int]) -> tuple[Series, ...]:
        count_at = self.position
        count = self.uvarint("series.count")
        if count > MAX_SERIES:
            raise self.error(f"{count} series, at most {MAX_SERIES}", "series.count", count_at)
        blocks: list[Series] = []
        points = 0
        for index in range(count):
            block = self.series(index, self.max_points - points)
            points += block.count
            blocks.append(block)
        # Seq ranges must be disjoint, or one reading could be stored twice under one number.
        spans = sorted((block.first_seq, block.last_seq, index) for index, block in enumerate(blocks))
        for (_, last, _), (first, _, index) in pairwise(spans):
            if first <= last:
                raise self.error(
                    f"series {index}'s seqs overlap another series'", f"series[{index}].first_seq", count_at
                )
        if seqs and spans:
            firsts = [first for first, _, _ in spans]
            for seq in seqs:
                at = bisect_right(firsts, seq) - 1
                if at >= 0 and spans[at][1] >= seq:
                    raise self.error(
                        f"seq {seq} is both a reading's and series {spans[at][2]}'s",
                        f"series[{spans[at][2]}].first_seq",
                        count_at,
                    )
        return tuple(blocks)

    def series(self, index: int, points_left: int) -> Series:
        field = f"series[{index}]"
        metric = self.uvarint(f"{field}.metric", 1 << 16)
        priority_at = self.position
        priority = self.take(1, f"{field}.priority")[0]
        if priority not in _SERIES_PRIORITIES:
            raise self.error(f"priority {priority}: series carry only P2 and P3", f"{field}.priority", priority_at)
        first_at = self.position
        first_seq = self.uvarint(f"{field}.first_seq")
        count_at = self.position
        count = self.uvarint(f"{field}.count")
        if count < 1:
            raise self.error("a series has at least one point", f"{field}.count", count_at)
        if count > points_left:
            raise self.error(
                f"{count} points take the batch past {self.max_points} series points", f"{field}.count", count_at
            )
        if first_seq < 1 or first_seq + count > UINT64_LIMIT:
            raise self.error(
                f"seqs {first_seq}.. (count {count}) do not fit 1..2**64-1", f"{field}.first_seq", first_at
            )
        start_at = self.position
        zigzag = self.uvarint(f"{field}.start_at_ms")
        start = (zigzag >> 1) ^ -(zigzag & 1)
        if not -SERIES_START_LIMIT < start < SERIES_START_LIMIT:
            raise self.error(f"{start} is out of the series' time range", f"{field}.start_at_ms", start_at)
        needed = count * SERIES_POINT_SIZE - 4
        if needed > len(self.body) - self.position:
            raise self.error(
                f"{count} points need {needed} bytes, {len(self.body) - self.position} left", f"{field}.count", count_at
            )
        deltas = _unshuffle(self.take(4 * (count - 1), f"{field}.at_deltas"), "<i4", count - 1)
        values_at = self.position
        values = _unshuffle(self.take(8 * count, f"{field}.values"), "<f8", count)
        finite = np.isfinite(values)
        if not finite.all():
            point = int(np.argmin(finite))
            raise self.error(f"point {point}'s value {values[point]} is not finite", f"{field}.values", values_at)
        at_ms = np.empty(count, dtype=np.int64)
        at_ms[0] = start
        np.cumsum(deltas, dtype=np.int64, out=at_ms[1:])
        at_ms[1:] += start
        return Series(metric, _PRIORITIES[priority], first_seq, at_ms, values.astype(np.float64, copy=False))

    def drops(self) -> tuple[DropReport, ...]:
        count_at = self.position
        count = self.uvarint("drops.count")
        if count > MAX_DROP_REPORTS:
            raise self.error(f"{count} drop reports, at most {MAX_DROP_REPORTS}", "drops.count", count_at)
        reports = []
        for index in range(count):
            field = f"drops[{index}]"
            code = self.take(1, field)[0]
            if code & 0xF0:
                raise self.error(f"reserved bits set in 0x{code:02x}", field, self.position - 1)
            dropped = self.uvarint(f"{field}.count")
            reports.append(DropReport(_PRIORITIES[code & 0x03], DROP_REASONS[code >> 2], dropped))
        return tuple(reports)

    def column(self, code: str, size: int, count: int) -> tuple[Any, ...]:
        shuffled = self.take(size * count, "columns")
        if size == 1 or count < 2:
            packed = shuffled
        else:
            unshuffled = bytearray(size * count)
            for byte in range(size):
                unshuffled[byte::size] = shuffled[byte * count : (byte + 1) * count]
            packed = bytes(unshuffled)
        return struct.unpack(f"<{count}{code}", packed)

    def extras(self, reading: Reading, flag: int, index: int) -> Reading:
        field = f"readings[{index}]"
        lat = lon = None
        if flag & HAS_LAT:
            lat = self.finite(f"{field}.lat")
        if flag & HAS_LON:
            lon = self.finite(f"{field}.lon")
        text = self.text(MAX_TEXT_BYTES, f"{field}.text") if flag & HAS_TEXT else ""
        blob = b""
        if flag & HAS_BLOB:
            blob = self.take(self.uvarint(f"{field}.blob.length", MAX_BLOB_BYTES + 1), f"{field}.blob")
        key = self.text(MAX_TEXT_BYTES, f"{field}.key") if flag & HAS_KEY else ""
        # A present field must not hold its default, so each reading has exactly one encoding.
        if (flag & HAS_TEXT and not text) or (flag & HAS_BLOB and not blob) or (flag & HAS_KEY and not key):
            raise self.error("a field marked present is empty", field)
        return Reading(reading.metric, reading.at_ms, reading.value, reading.priority, lat, lon, text, blob, key)

    def finite(self, field: str) -> float:
        start = self.position
        (number,) = struct.unpack("<d", self.take(8, field))
        if not math.isfinite(number):
            raise self.error(f"{number} is not finite", field, start)
        return float(number)


def _pack_column(code: str, size: int, items: tuple[Any, ...] | list[Any]) -> bytes:
    """Packs a column and groups its bytes by position within an item, so deflate sees runs."""
    packed = struct.pack(f"<{len(items)}{code}", *items)
    if size == 1 or len(items) < 2:
        return packed
    return b"".join(packed[byte::size] for byte in range(size))


def _flags_of(readings: tuple[Reading, ...], priorities: tuple[Any, ...]) -> tuple[bytes, bytes]:
    """Each reading's flag byte (its priority and which optional fields it carries) and the extras."""
    try:
        flags = bytearray(priorities)
    except (TypeError, ValueError):
        flags = bytearray(4)  # a stand-in that fails the range check below
    if flags and max(flags) > _PRIORITY_BITS:
        _refuse_reading(priorities, lambda priority: not _fits(priority, 0, 4), "reading.priority", "not 0..3")
    extras = list(map(_READING_EXTRAS, readings))
    if extras.count(_NO_EXTRAS) == len(extras):
        return bytes(flags), b""
    out = bytearray()
    for index in select(range(len(extras)), map(_NO_EXTRAS.__ne__, extras)):
        lat, lon, text, blob, key = extras[index]
        field = f"readings[{index}].reading"
        flags[index] |= (
            (HAS_LAT if lat is not None else 0)
            | (HAS_LON if lon is not None else 0)
            | (HAS_TEXT if text else 0)
            | (HAS_BLOB if blob else 0)
            | (HAS_KEY if key else 0)
        )
        for name, number in (("lat", lat), ("lon", lon)):
            if number is None:
                continue
            if not _is_finite_number(number):
                raise WireError(f"{number!r} is not a finite number", field=f"{field}.{name}")
            out += struct.pack("<d", number)
        if text:
            _put_text(out, text, MAX_TEXT_BYTES, f"{field}.text")
        if blob:
            if not isinstance(blob, bytes | bytearray) or len(blob) > MAX_BLOB_BYTES:
                raise WireError(f"not bytes of at most {MAX_BLOB_BYTES}", field=f"{field}.blob")
            _put_uvarint(out, len(blob))
            out += blob
        if key:
            _put_text(out, key, MAX_TEXT_BYTES, f"{field}.key")
    return bytes(flags), bytes(out)


def _put_drops(out: bytearray, drops: tuple[DropReport, ...]) -> None:
    if len(drops) > MAX_DROP_REPORTS:
        raise WireError(f"{len(drops)} drop reports, at most {MAX_DROP_REPORTS}", field="drops")
    _put_uvarint(out, len(drops))
    for index, report in enumerate(drops):
        reason = _REASON_CODE.get(report.reason)
        if reason is None or not _fits(report.priority, 0, 4):
            raise WireError("unknown priority or reason", field=f"drops[{index}]")
        out.append(report.priority | reason << 2)
        _put_uint64(out, report.count, f"drops[{index}].count")


def _refuse_reading(items: tuple[Any, ...], is_wrong: Callable[[Any], bool], name: str, reason: str) -> NoReturn:
    index = next(i for i, item in enumerate(items) if is_wrong(item))
    raise WireError(f"{items[index]!r} is {reason}", field=f"readings[{index}].{name}")


def _check_range(items: tuple[Any, ...], low: int, limit: int, name: str) -> None:
    if items and not all(map(_is_int, items)):
        _refuse_reading(items, lambda item: not _is_int(item), name, "not an integer")
    if items and (min(items) < low or max(items) >= limit):
        _refuse_reading(items, lambda item: not low <= item < limit, name, f"not in {low}..{limit - 1}")


def _is_int(item: object) -> bool:
    return isinstance(item, int)


def _fits(item: object, low: int, limit: int) -> bool:
    return isinstance(item, int) and low <= item < limit


def _is_finite_number(item: object) -> bool:
    return isinstance(item, int | float) and math.isfinite(item)


def _put_uvarint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_uint64(out: bytearray, value: object, field: str) -> None:
    if not _fits(value, 0, UINT64_LIMIT):
        raise WireError(f"{value!r} is not an integer in 0..2**64-1", field=field)
    assert isinstance(value, int)
    _put_uvarint(out, value)


def _put_int64(out: bytearray, value: object, field: str) -> None:
    if not _fits(value, INT64_MIN, INT64_LIMIT):
        raise WireError(f"{value!r} is not a signed 64-bit integer", field=field)
    assert isinstance(value, int)
    _put_uvarint(out, (value << 1) ^ (value >> 63))


def _put_text(out: bytearray, text: object, limit: int, field: str) -> None:
    if not isinstance(text, str):
        raise WireError(f"{text!r} is not a string", field=field)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"cannot be UTF-8 ({exc.reason})", field=field) from None
    if len(raw) > limit:
        raise WireError(f"{len(raw)} bytes, at most {limit}", field=field)
    _put_uvarint(out, len(raw))
    out += raw


# --------------------------------------------------------------------------------------------
# Control messages: compact JSON, strict on decode
# --------------------------------------------------------------------------------------------

CONTROL_VERSION: Final = 1
MAX_CONTROL_BYTES: Final = 64 * 1024
MAX_BIRTH_BYTES: Final = 1024 * 1024  # a catalogue of thousands of metrics
MAX_NAME_CHARS: Final = 255  # identifiers, codes, units, names
MAX_DETAIL_CHARS: Final = 4096  # free text: a reply's detail, a parameter's value
MAX_PARAMETERS: Final = 64
MAX_RANGES: Final = 4096
MAX_CATALOGUE: Final = 1 << 16  # metric indexes are uint16 in batches


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A terminal's sign of life when it has nothing else to send, with the state of its outbox."""

    terminal: str
    session: int
    at_ms: int  # the terminal's clock when it sent this
    link: str = ""  # the link profile in use: lan, cellular, satellite
    outbox_readings: int = 0  # readings waiting for the gateway's ack
    outbox_bytes: int = 0
    drops: tuple[DropReport, ...] = ()  # totals this session, by class and reason


@dataclass(frozen=True, slots=True)
class Death:
    """A terminal's last word (sent on a clean stop, and left with the broker as its will)."""

    terminal: str
    session: int


class _Fields:
    """A JSON object read field by field; each miss names the field's path, leftovers are refused."""

    def __init__(self, item: object, path: str) -> None:
        if not isinstance(item, dict):
            raise WireError(f"expected an object, got {_json_type(item)}", field=path or "message")
        self.items: dict[str, object] = item
        self.path = path
        self.seen: set[str] = set()

    def field(self, name: str) -> str:
        label = name or '""'  # an empty key still needs a visible name
        return f"{self.path}.{label}" if self.path else label

    def get(self, name: str, default: object = None) -> object:
        self.seen.add(name)
        if name in self.items:
            return self.items[name]
        if default is None:
            raise WireError("missing", field=self.field(name))
        return default

    def text(self, name: str, default: str | None = None, limit: int = MAX_NAME_CHARS) -> str:
        return _json_text(self.get(name, default), self.field(name), limit)

    def integer(self, name: str, low: int, limit: int, default: int | None = None) -> int:
        return _json_integer(self.get(name, default), self.field(name), low, limit)

    def number(self, name: str, default: float | None = None) -> float:
        item = self.get(name, default)
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise WireError(f"expected a finite number, got {_json_type(item)}", field=self.field(name))
        return float(item)

    def optional_number(self, name: str) -> float | None:
        self.seen.add(name)
        return None if self.items.get(name) is None else self.number(name)

    def array(self, name: str, limit: int, default: list[object] | None = None) -> list[object]:
        item = self.get(name, default)
        if not isinstance(item, list):
            raise WireError(f"expected an array, got {_json_type(item)}", field=self.field(name))
        if len(item) > limit:
            raise WireError(f"{len(item)} entries, at most {limit}", field=self.field(name))
        return item

    def done(self) -> None:
        unknown = sorted(set(self.items) - self.seen)
        if unknown:
            raise WireError("unknown field", field=self.field(unknown[0]))


def _json_type(item: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array"}
    return "null" if item is None else names.get(type(item), "an object")


def _json_text(item: object, field: str, limit: int) -> str:
    if not isinstance(item, str):
        raise WireError(f"expected a string, got {_json_type(item)}", field=field)
    if len(item) > limit:
        raise WireError(f"{len(item)} characters, at most {limit}", field=field)
    return item


def _json_integer(item: object, field: str, low: int, limit: int) -> int:
    if isinstance(item, bool) or not isinstance(item, int):
        raise WireError(f"expected an integer, got {_json_type(item)}", field=field)
    if not low <= item < limit:
        raise WireError(f"{item} is not in {low}..{limit - 1}", field=field)
    return item


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        counts = Counter(name for name, _ in pairs)
        raise WireError("appears twice", field=next(name for name, seen in counts.items() if seen > 1))
    return mapping


def _refuse_constant(name: str) -> NoReturn:
    raise WireError(f"{name} is not a number this protocol carries", field="message")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise WireError(f"{text} overflows a float", field="message")
    return number


def _load(data: bytes, kind: str, limit: int) -> _Fields:
    """The top-level object of a control message, its version checked and its kind matched."""
    if len(data) > limit:
        raise WireError(f"{len(data)} bytes, more than {limit}", offset=0, field="length")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"not UTF-8 ({exc.reason})", offset=exc.start, field="message") from None
    try:
        item = json.loads(
            text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except json.JSONDecodeError as exc:
        raise WireError(f"not JSON ({exc.msg})", offset=len(text[: exc.pos].encode()), field="message") from None
    except (ValueError, RecursionError) as exc:  # integers past the digit limit, nesting past the stack
        raise WireError(f"not acceptable JSON ({type(exc).__name__})", field="message") from None
    fields = _Fields(item, "")
    version = fields.integer("v", 0, 256)
    if version != CONTROL_VERSION:
        raise WireError(f"version {version} is not supported (this side reads {CONTROL_VERSION})", field="v")
    found = fields.text("type")
    if found != kind:
        raise WireError(f"a {found!r} message where {kind!r} was expected", field="type")
    return fields


def _dump(kind: str, body: dict[str, object], check: Callable[[_Fields], object], limit: int) -> bytes:
    """The bytes of a control message, after checking them as the decoder will (so both agree)."""
    message = {"v": CONTROL_VERSION, "type": kind, **body}
    fields = _Fields(message, "")
    fields.get("v")
    fields.get("type")
    check(fields)
    try:
        data = json.dumps(message, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"cannot be UTF-8 ({exc.reason})", field=kind) from None
    if len(data) > limit:
        raise WireError(f"{len(data)} bytes, more than {limit}", field=kind)
    return data


def _without_defaults(pairs: Mapping[str, object], defaults: Mapping[str, object]) -> dict[str, object]:
    """Omits fields at their default value: control messages stay short on narrow links."""
    return {name: value for name, value in pairs.items() if name not in defaults or value != defaults[name]}


_METRIC_DEFAULTS: Final[Mapping[str, object]] = {
    "kind": MetricKind.OBSERVATION.value,
    "unit": "",
    "station_id": "",
    "name": "",
    "priority": int(Priority.P2),
    "threshold": None,
}
_BIRTH_DEFAULTS: Final[Mapping[str, object]] = {"link": "", "interval_s": 60.0, "agent": ""}
_HEARTBEAT_DEFAULTS: Final[Mapping[str, object]] = {"link": "", "outbox_readings": 0, "outbox_bytes": 0, "drops": []}


def _metric_json(metric: Metric) -> dict[str, object]:
    kind = metric.kind.value if isinstance(metric.kind, MetricKind) else metric.kind
    return _without_defaults(
        {
            "index": metric.index,
            "code": metric.code,
            "kind": kind,
            "unit": metric.unit,
            "station_id": metric.station_id,
            "name": metric.name,
            "priority": metric.priority,
            "threshold": metric.threshold,
        },
        _METRIC_DEFAULTS,
    )


def _metric_from(item: object, path: str) -> Metric:
    fields = _Fields(item, path)
    kind_text = fields.text("kind", MetricKind.OBSERVATION.value)
    try:
        kind = MetricKind(kind_text)
    except ValueError:
        raise WireError(f"unknown kind {kind_text!r}", field=fields.field("kind")) from None
    metric = Metric(
        index=fields.integer("index", 0, MAX_CATALOGUE),
        code=fields.text("code"),
        kind=kind,
        unit=fields.text("unit", ""),
        station_id=fields.text("station_id", ""),
        name=fields.text("name", ""),
        priority=_PRIORITIES[fields.integer("priority", 0, 4, Priority.P2)],
        threshold=fields.optional_number("threshold"),
    )
    fields.done()
    return metric


def _drops_json(drops: tuple[DropReport, ...]) -> list[object]:
    return [[report.priority, getattr(report.reason, "value", report.reason), report.count] for report in drops]


def _drops_from(items: list[object], path: str) -> tuple[DropReport, ...]:
    reports = []
    for index, item in enumerate(items):
        field = f"{path}[{index}]"
        if not isinstance(item, list) or len(item) != 3:
            raise WireError("expected [priority, reason, count]", field=field)
        priority = _json_integer(item[0], f"{field}[0]", 0, 4)
        reason_text = _json_text(item[1], f"{field}[1]", MAX_NAME_CHARS)
        try:
            reason = DropReason(reason_text)
        except ValueError:
            raise WireError(f"unknown reason {reason_text!r}", field=f"{field}[1]") from None
        reports.append(
            DropReport(_PRIORITIES[priority], reason, _json_integer(item[2], f"{field}[2]", 0, UINT64_LIMIT))
        )
    return tuple(reports)


def _birth_from(fields: _Fields) -> Birth:
    catalogue = tuple(
        _metric_from(item, f"catalogue[{index}]") for index, item in enumerate(fields.array("catalogue", MAX_CATALOGUE))
    )
    indexes: set[int] = set()
    for position, metric in enumerate(catalogue):
        if metric.index in indexes:
            raise WireError(f"index {metric.index} appears twice", field=f"catalogue[{position}].index")
        indexes.add(metric.index)
    interval = fields.number("interval_s", 60.0)
    if interval <= 0:
        raise WireError(f"{interval} is not a positive number of seconds", field="interval_s")
    birth = Birth(
        terminal=fields.text("terminal"),
        session=fields.integer("session", 0, UINT64_LIMIT),
        catalogue=catalogue,
        link=fields.text("link", ""),
        interval_s=interval,
        agent=fields.text("agent", ""),
    )
    fields.done()
    return birth


def encode_birth(birth: Birth) -> bytes:
    """The bytes of a birth message: the terminal, its session and its catalogue."""
    body = {
        "terminal": birth.terminal,
        "session": birth.session,
        "catalogue": [_metric_json(metric) for metric in birth.catalogue],
        **_without_defaults(
            {"link": birth.link, "interval_s": birth.interval_s, "agent": birth.agent}, _BIRTH_DEFAULTS
        ),
    }
    return _dump("birth", body, _birth_from, MAX_BIRTH_BYTES)


def decode_birth(data: bytes) -> Birth:
    """The birth message ``data`` holds; ``WireError`` names the field that is wrong."""
    return _birth_from(_load(data, "birth", MAX_BIRTH_BYTES))


def _ranges_from(items: list[object], path: str) -> tuple[tuple[int, int], ...]:
    ranges = []
    for index, item in enumerate(items):
        field = f"{path}[{index}]"
        if not isinstance(item, list) or len(item) != 2:
            raise WireError("expected [first, last]", field=field)
        first = _json_integer(item[0], f"{field}[0]", 0, UINT64_LIMIT)
        last = _json_integer(item[1], f"{field}[1]", 0, UINT64_LIMIT)
        if last < first:
            raise WireError(f"range ends ({last}) before it starts ({first})", field=field)
        ranges.append((first, last))
    return tuple(ranges)


def _ack_from(fields: _Fields) -> Ack:
    ack = Ack(
        session=fields.integer("session", 0, UINT64_LIMIT),
        stored=_ranges_from(fields.array("stored", MAX_RANGES, []), "stored"),
        resend=_ranges_from(fields.array("resend", MAX_RANGES, []), "resend"),
    )
    fields.done()
    return ack


def encode_ack(ack: Ack) -> bytes:
    """The bytes of the gateway's ack: the ranges it stored and the ones it asks again."""
    body: dict[str, object] = {"session": ack.session}
    if ack.stored:
        body["stored"] = [list(pair) for pair in ack.stored]
    if ack.resend:
        body["resend"] = [list(pair) for pair in ack.resend]
    return _dump("ack", body, _ack_from, MAX_CONTROL_BYTES)


def decode_ack(data: bytes) -> Ack:
    """The ack ``data`` holds; ``WireError`` names the field that is wrong."""
    return _ack_from(_load(data, "ack", MAX_CONTROL_BYTES))


def _command_from(fields: _Fields) -> Command:
    parameters_item = fields.get("parameters", {})
    parameters = _Fields(parameters_item, "parameters").items
    if len(parameters) > MAX_PARAMETERS:
        raise WireError(f"{len(parameters)} parameters, at most {MAX_PARAMETERS}", field="parameters")
    for name, value in parameters.items():
        field = f"parameters.{str(name)[:40]}"
        _json_text(name, field, MAX_NAME_CHARS)
        _json_text(value, field, MAX_DETAIL_CHARS)
    command = Command(
        id=fields.text("id"),
        action=fields.text("action"),
        expires_ms=fields.integer("expires_ms", INT64_MIN, INT64_LIMIT),
        parameters={name: str(value) for name, value in parameters.items()},  # each checked above
    )
    fields.done()
    return command


def encode_command(command: Command) -> bytes:
    """The bytes of a command from the gateway to a terminal."""
    body: dict[str, object] = {"id": command.id, "action": command.action, "expires_ms": command.expires_ms}
    if command.parameters:
        body["parameters"] = dict(command.parameters)
    return _dump("cmd", body, _command_from, MAX_CONTROL_BYTES)


def decode_command(data: bytes) -> Command:
    """The command ``data`` holds; ``WireError`` names the field that is wrong."""
    return _command_from(_load(data, "cmd", MAX_CONTROL_BYTES))


def _command_reply_from(fields: _Fields) -> CommandReply:
    state_text = fields.text("state")
    try:
        state = AckState(state_text)
    except ValueError:
        raise WireError(f"unknown state {state_text!r}", field="state") from None
    reply = CommandReply(id=fields.text("id"), state=state, detail=fields.text("detail", "", MAX_DETAIL_CHARS))
    fields.done()
    return reply


def encode_command_reply(reply: CommandReply) -> bytes:
    """The bytes of a terminal's answer to a command."""
    body: dict[str, object] = {"id": reply.id, "state": getattr(reply.state, "value", reply.state)}
    if reply.detail:
        body["detail"] = reply.detail
    return _dump("cmdack", body, _command_reply_from, MAX_CONTROL_BYTES)


def decode_command_reply(data: bytes) -> CommandReply:
    """The command reply ``data`` holds; ``WireError`` names the field that is wrong."""
    return _command_reply_from(_load(data, "cmdack", MAX_CONTROL_BYTES))


def _heartbeat_from(fields: _Fields) -> Heartbeat:
    heartbeat = Heartbeat(
        terminal=fields.text("terminal"),
        session=fields.integer("session", 0, UINT64_LIMIT),
        at_ms=fields.integer("at_ms", INT64_MIN, INT64_LIMIT),
        link=fields.text("link", ""),
        outbox_readings=fields.integer("outbox_readings", 0, UINT64_LIMIT, 0),
        outbox_bytes=fields.integer("outbox_bytes", 0, UINT64_LIMIT, 0),
        drops=_drops_from(fields.array("drops", MAX_DROP_REPORTS, []), "drops"),
    )
    fields.done()
    return heartbeat


def encode_heartbeat(heartbeat: Heartbeat) -> bytes:
    """The bytes of a heartbeat."""
    body = {
        "terminal": heartbeat.terminal,
        "session": heartbeat.session,
        "at_ms": heartbeat.at_ms,
        **_without_defaults(
            {
                "link": heartbeat.link,
                "outbox_readings": heartbeat.outbox_readings,
                "outbox_bytes": heartbeat.outbox_bytes,
                "drops": _drops_json(heartbeat.drops),
            },
            _HEARTBEAT_DEFAULTS,
        ),
    }
    return _dump("hb", body, _heartbeat_from, MAX_CONTROL_BYTES)


def decode_heartbeat(data: bytes) -> Heartbeat:
    """The heartbeat ``data`` holds; ``WireError`` names the field that is wrong."""
    return _heartbeat_from(_load(data, "hb", MAX_CONTROL_BYTES))


def _death_from(fields: _Fields) -> Death:
    death = Death(terminal=fields.text("terminal"), session=fields.integer("session", 0, UINT64_LIMIT))
    fields.done()
    return death


def encode_death(death: Death) -> bytes:
    """The bytes of a death message (also the terminal's MQTT will)."""
    return _dump("death", {"terminal": death.terminal, "session": death.session}, _death_from, MAX_CONTROL_BYTES)


def decode_death(data: bytes) -> Death:
    """The death message ``data`` holds; ``WireError`` names the field that is wrong."""
    return _death_from(_load(data, "death", MAX_CONTROL_BYTES))


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------

TOPIC_PREFIX: Final = "yiwang/edge"
UPLINK_LEAVES: Final = ("live", "hist", "birth", "death", "hb", "cmdack")  # terminal -> gateway
DOWNLINK_LEAVES: Final = ("ack", "cmd")  # gateway -> terminal
# What the gateway subscribes to: every terminal's uplink topics, one filter per leaf.
GATEWAY_FILTERS: Final = tuple(f"{TOPIC_PREFIX}/+/+/edge/+/{leaf}" for leaf in UPLINK_LEAVES)
_REGION: Final = re.compile(r"[0-9]{6}")
# A name part: no MQTT wildcards, separators or control characters can slip in.
_NAME_PART: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_cn(cn: str) -> str:
    """``cn`` itself if it is a terminal identity, REGION/AGENCY/edge/NAME; else ``WireError``."""
    parts = cn.split("/")
    if len(parts) != 4:
        raise WireError(f"{cn[:80]!r} has {len(parts)} parts, not REGION/AGENCY/edge/NAME", field="cn")
    region, agency, role, name = parts
    if not _REGION.fullmatch(region):
        raise WireError(f"region {region[:80]!r} is not 6 digits", field="cn.region")
    if role != "edge":
        raise WireError(f"{role[:80]!r} where 'edge' belongs", field="cn.role")
    for part_name, part in (("agency", agency), ("name", name)):
        if not _NAME_PART.fullmatch(part):
            raise WireError(f"{part[:80]!r} is not 1-64 of A-Z a-z 0-9 . _ -", field=f"cn.{part_name}")
    return cn


def topic(cn: str, leaf: str) -> str:
    """The MQTT topic of one of a terminal's messages."""
    if leaf not in UPLINK_LEAVES and leaf not in DOWNLINK_LEAVES:
        raise WireError(f"unknown leaf {leaf!r}", field="leaf")
    return f"{TOPIC_PREFIX}/{check_cn(cn)}/{leaf}"


def parse_topic(name: str) -> tuple[str, str]:
    """The terminal identity and the leaf a topic names; ``WireError`` for any other topic."""
    head, _, rest = name.partition(f"{TOPIC_PREFIX}/")
    if head or not rest:
        raise WireError(f"{name[:120]!r} is not under {TOPIC_PREFIX}/", field="topic")
    cn, _, leaf = rest.rpartition("/")
    if leaf not in UPLINK_LEAVES and leaf not in DOWNLINK_LEAVES:
        raise WireError(f"unknown leaf {leaf[:80]!r}", field="topic.leaf")
    return check_cn(cn), leaf


def subscription(leaf: str) -> str:
    """The gateway's filter for one uplink leaf of every terminal."""
    if leaf not in UPLINK_LEAVES:
        raise WireError(f"{leaf!r} is not an uplink leaf", field="leaf")
    return f"{TOPIC_PREFIX}/+/+/edge/+/{leaf}"


def terminal_filters(cn: str) -> tuple[str, ...]:
    """What a terminal subscribes to: its own downlink topics."""
    return tuple(topic(cn, leaf) for leaf in DOWNLINK_LEAVES)
