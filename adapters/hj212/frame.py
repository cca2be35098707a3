"""HJ 212 framing: ``##`` + four decimal digits (the data segment's length) + data segment + CRC + CRLF.

``Framer`` is sans-IO, like h11's receive buffer: give it bytes in any split, get back complete
data segments and refused frames in order. Bytes outside a frame (noise on the line, a receiver's
log lines) are skipped up to the next ``##`` and counted. A refused frame gives up only its first ``#``:
the search for the next frame starts right after it, so a packet cut short and followed by a good
one costs only the broken one. A frame is complete at its CRC: the CRLF that should follow is
taken when present, and its absence is not an error (the length and the CRC already fix the frame).

Memory: the buffer holds at most one frame (``max_segment_bytes`` + 12) plus what one ``feed``
brings; a frame announcing a longer segment is refused as soon as its length is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.hj212.crc import crc16, crc_text
from adapters.hj212.errors import Hj212Error
from adapters.hj212.packet import Header, parse_header

START = b"##"
END = b"\r\n"
_HEAD = 6  # "##" and the four length digits
_TAIL = 6  # the four CRC digits and CRLF
#: HJ 212-2017 caps the data segment at 1024 bytes, but stations in service send longer ones
#: (minute data of many factors); 4096 holds those and keeps a session's buffer small.
MAX_SEGMENT_BYTES = 4096
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame whose length, CRC and end checked out."""

    segment: bytes
    offset: int  # of its "##" in the stream
    size: int  # bytes on the wire, "##" to CRLF


def frame(segment: bytes) -> bytes:
    """The packet carrying ``segment``: length, CRC and CRLF added."""
    if len(segment) > 9999:
        raise ValueError(f"a data segment of {len(segment)} bytes does not fit the four length digits")
    return b"##%04d%s%s\r\n" % (len(segment), segment, crc_text(segment))


class Framer:
    """Finds frames in a byte stream; keeps only the bytes of the frame not yet complete."""

    __slots__ = ("_buffer", "_consumed", "max_segment_bytes", "skipped")

    def __init__(self, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        if not 0 < max_segment_bytes <= 9999:
            raise ValueError(f"max_segment_bytes must be 1..9999 (four length digits), got {max_segment_bytes}")
        self.max_segment_bytes = max_segment_bytes
        self.skipped = 0  # bytes outside any frame, dropped
        self._buffer = bytearray()
        self._consumed = 0  # stream offset of _buffer[0]

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | Hj212Error]:
        """The frames completed by ``data`` and the refused ones, in stream order."""
        self._buffer += data
        out: list[Frame | Hj212Error] = []
        while (found := self._next()) is not None:
            out.append(found)
        return out

    def end(self) -> Hj212Error | None:
        """The stream has ended: the partial frame left, if any, as a ``truncated`` error."""
        buffer = self._buffer
        start = buffer.find(START)
        error = None
        if start >= 0:
            error = Hj212Error(
                f"the stream ends {len(buffer) - start} bytes into a frame",
                offset=self._consumed + start,
                kind="truncated",
            )
        self._drop(len(buffer))
        return error

    def _next(self) -> Frame | Hj212Error | None:
        buffer = self._buffer
        while True:
            start = buffer.find(START)
            if start < 0:
                # keep a last '#', it may be the first half of the next "##"
                self._skip(len(buffer) - 1 if buffer.endswith(b"#") else len(buffer))
                return None
            if start:
                self._skip(start)
            if buffer[2:3] != b"#":
                break
            self._skip(1)  # a run of '#': a frame starts at its last two at the earliest
        if len(buffer) < _HEAD:
            return None
        offset = self._consumed
        digits = bytes(buffer[2:_HEAD])
        if not digits.isdigit():
            return self._refuse(f"the length {digits!r} is not four decimal digits", offset, "length")
        length = int(digits)
        if length > self.max_segment_bytes:
            return self._refuse(
                f"the data segment is announced as {length} bytes, more than the limit of {self.max_segment_bytes}",
                offset,
                "length",
            )
        total = _HEAD + length + _TAIL
        # A CRLF cannot occur inside a data segment: one before the announced end means the packet
        # was cut short (or its length is wrong), and waiting for more would swallow the next one.
        early = buffer.find(END, _HEAD, min(len(buffer), total - 2))
        if early >= 0:
            return self._refuse(
                f"the packet ends after {early - _HEAD} bytes of a data segment announced as {length}",
                offset,
                "truncated",
            )
        crc_end = total - 2
        if len(buffer) < crc_end:
            return None
        segment = bytes(buffer[_HEAD : _HEAD + length])
        crc = bytes(buffer[_HEAD + length : crc_end])
        if not set(crc) <= _HEX:
            return self._refuse(
                f"the data segment announced as {length} bytes is not followed by four hex CRC digits "
                f"(found {crc!r}): the length is wrong",
                offset,
                "length",
            )
        expected = crc16(segment)
        if int(crc, 16) != expected:
            return self._refuse(
                f"CRC {crc.decode()} does not match the data segment's {expected:04X}", offset, "crc", segment
            )
        # The frame is complete once its CRC checks out. Its CRLF is taken when it is there; a frame
        # without one (receiver logs write CR CR LF) loses nothing, the rest is skipped as noise.
        self._drop(total if buffer[crc_end:total] == END else crc_end)
        return Frame(segment, offset, total)

    def _refuse(self, reason: str, offset: int, kind: str, segment: bytes = b"") -> Hj212Error:
        self._drop(1)  # look for the next frame from this one's second '#' on
        header = None
        if segment:
            header = _header_of(segment)
        return Hj212Error(reason, offset=offset, kind=kind, header=header)

    def _skip(self, count: int) -> None:
        self.skipped += count
        self._drop(count)

    def _drop(self, count: int) -> None:
        del self._buffer[:count]
        self._consumed += count


def _header_of(segment: bytes) -> Header | None:
    """The header of a segment whose CRC failed, if it reads as one (for the refusal's answer)."""
    text = segment.decode("ascii", errors="replace")
    end = text.find(";CP=")
    if end < 0:
        return None
    try:
        return parse_header(text[:end])
    except Hj212Error:
        return None
