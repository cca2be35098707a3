"""Where one CoT event ends and the next begins, on a TCP stream or in a UDP datagram. Sans-IO.

TAK clients and servers write XML events back to back on one TCP connection (TAK protocol
version 0): each ``<event>...</event>`` (or ``<event .../>``), often with its own XML declaration,
sometimes with white space between, never with a length prefix. A read from the socket may end
anywhere, even inside a tag. ``StreamDecoder`` keeps what it was given until an event is complete
and hands out each complete event's bytes (with the XML declaration written just before it, which
may name its encoding); it never parses XML, the codec does that with the hardened parser.

It scans tags, comments, CDATA sections and processing instructions, with quoted attribute values,
so a ``>`` or ``</event>`` inside any of them does not end an event early. Everything it was handed
is either part of an event it returns or reported in an ``AdapterError``: bytes that do not start
an event (garbage), an event larger than the limit, a markup declaration inside an event. After an
error it skips to the next ``<event`` or ``<?xml`` and goes on, so one bad event costs only itself.

TAK protocol version 1 carries each event as a protobuf ``TakMessage`` (``takproto`` reads it). On a
TCP stream each message is ``0xbf``, its length as a varint, then the message; a stream starts in
XML and switches once both sides agreed (``use_protobuf``, called by the server between two
events), or is version 1 from its first byte when the decoder is told to look (a client configured
for protobuf). A length-prefixed stream has no marker to find the next message by: after a byte
that is not ``0xbf`` where a message must start, or a length that cannot be one, the decoder says
so and reads nothing more (``lost``), and the connection must be closed. A message over the limit
is skipped by its length, and a payload is handed out even when it does not decode, so one bad
message costs only itself. A UDP datagram is either one XML event or the mesh form ``0xbf``,
version varint, ``0xbf``, message (``read_datagram``).
"""

from __future__ import annotations

import enum
import re

from adapters.errors import AdapterError
from gateway.wire import varint

#: The largest event accepted, in bytes (declaration included). TAK events are a few kilobytes.
MAX_EVENT_BYTES = 256 * 1024
#: The TAK protocol's magic byte, which starts every protobuf (version 1) message.
TAK_MAGIC = 0xBF
#: The longest varint (a 64-bit value, 7 bits a byte).
MAX_VARINT_BYTES = 10
#: A version 1 message over the limit is skipped by its length up to this size; a length beyond it
#: is taken for garbage, not a message, and the stream is given up.
MAX_SKIPPED_MESSAGE_BYTES = 64 << 20

_WHITESPACE = frozenset(b" \t\r\n")
_BOM = b"\xef\xbb\xbf"
_EVENT_OPEN = b"<event"
_DECLARATION_OPEN = b"<?xml"
_MAX_DECLARATION_BYTES = 512
_EVENT_START = re.compile(rb"<event[\s/>]")
_RESYNC = re.compile(rb"<event[\s/>]|<\?xml[\s?]")
# The rest of a tag after its '<': anything up to a '>' that is not inside a quoted value.
_TAG_REST = re.compile(rb"""[^"'>]*(?:(?:"[^"]*"|'[^']*')[^"'>]*)*>""")
_SECTIONS = ((b"<!--", b"-->"), (b"<![CDATA[", b"]]>"), (b"<?", b"?>"))
_LONGEST_SECTION_OPEN = max(len(open_) for open_, _ in _SECTIONS)


class _State(enum.Enum):
    BETWEEN = "between"  # between events: white space, a declaration, an event start
    EVENT = "event"  # inside an event
    SKIP = "skip"  # after an error: looking for the next event start
    PROTOBUF = "protobuf"  # version 1: at the start of a message (0xbf, varint length)
    SKIP_BYTES = "skip-bytes"  # version 1: inside a message over the limit, skipped by its length
    LOST = "lost"  # version 1: no way to find the next message; nothing more is read


class StreamDecoder:
    """The events of one TCP connection, from its bytes as they arrive (any split).

    ``feed`` returns, in stream order, the bytes of each complete event and an ``AdapterError`` for
    each run of bytes it had to skip (``kind`` ``framing`` for garbage or a broken event, ``hostile``
    for a DTD or other markup declaration, ``size`` for an event over the limit, ``unsupported`` for
    TAK protobuf; ``offset`` is the position in the stream). The outcome does not depend on how the
    stream was split. ``end`` says whether the stream stopped inside an event (``truncated``).
    Memory is bounded: at most one event of ``max_event_bytes`` plus the last read is held.

    Once the stream is version 1 (``version``), the bytes handed out are ``TakMessage`` payloads.
    A caller that may switch the stream between two events takes them one at a time (``receive``
    then ``next_item`` until it returns None), so that what follows the switch is read as version 1.
    ``detect_protobuf`` makes a stream whose first byte is ``0xbf`` version 1 from the start.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES, *, detect_protobuf: bool = False) -> None:
        if max_event_bytes < 64:
            raise ValueError(f"max_event_bytes {max_event_bytes} is too small for any CoT event")
        self.max_event_bytes = max_event_bytes
        self.detect_protobuf = detect_protobuf
        self._skip_left = 0  # version 1: bytes of an oversized message still to skip
        self._buffer = bytearray()
        self._base = 0  # stream offset of _buffer[0]
        self._state = _State.BETWEEN
        self._pos = 0  # between events / skipping: the next byte to look at
        self._declaration: int | None = None  # where a declaration before the coming event starts
        self._start = 0  # inside an event: where it starts (its declaration, if any)
        self._open = 0  # inside an event: where its <event> tag starts
        self._scan = 0  # inside an event: where scanning resumes
        self._depth = 0  # open elements
        self._section_end = b""  # inside a comment, CDATA or PI: what ends it
        self._find_from = 0  # where to look for _section_end

    @property
    def buffered(self) -> int:
        """Bytes held for an event not yet complete."""
        return len(self._buffer)

    @property
    def version(self) -> int:
        """The TAK protocol version the stream is read in: 0 (XML events) or 1 (protobuf messages)."""
        return 0 if self._state in (_State.BETWEEN, _State.EVENT, _State.SKIP) else 1

    @property
    def lost(self) -> bool:
        """Whether the stream cannot be followed any more (a version 1 stream out of step)."""
        return self._state is _State.LOST

    def use_protobuf(self) -> None:
        """Reads what follows as TAK protocol version 1 messages (after a negotiation between two
        events; what was received but not yet taken with ``next_item`` is read that way too)."""
        if self._state is _State.EVENT:
            raise RuntimeError("the stream switches to protobuf between two events, not inside one")
        if self.version == 1:
            return
        if self._declaration is not None:  # an XML declaration with no event after it: not an event
            self._pos = self._declaration
            self._declaration = None
        self._state = _State.PROTOBUF

    def feed(self, data: bytes) -> list[bytes | AdapterError]:
        """The events (and refusals) that ``data`` completes."""
        self.receive(data)
        out: list[bytes | AdapterError] = []
        while (item := self.next_item()) is not None:
            out.append(item)
        return out

    def receive(self, data: bytes) -> None:
        """Takes the next bytes of the stream (``next_item`` hands out what they complete)."""
        if self._state is _State.LOST:
            self._base += len(data)
            return
        self._buffer += data

    def next_item(self) -> bytes | AdapterError | None:
        """The next complete event (or refusal), or None until more bytes are received."""
        out: list[bytes | AdapterError] = []
        while not out:
            if not self._step(out):
                self._compact()
                return out[0] if out else None
        return out[0]

    def end(self) -> list[AdapterError]:
        """At the end of the stream: an error if it stopped inside an event (or a declaration)."""
        if self._state in (_State.PROTOBUF, _State.SKIP_BYTES, _State.LOST):
            return self._end_protobuf()
        skipping = self._state is _State.SKIP
        kept = self._first_kept()
        rest = bytes(self._buffer[kept:])
        offset = self._base + kept
        self._base += len(self._buffer)
        self._buffer.clear()
        self._state, self._pos, self._declaration, self._section_end = _State.BETWEEN, 0, None, b""
        if skipping or not rest.strip(b" \t\r\n").removeprefix(_BOM).strip(b" \t\r\n"):
            return []
        return [
            AdapterError(
                f"the stream ended inside an event ({len(rest)} bytes held: {_excerpt(rest)})",
                offset=offset,
                kind="truncated",
            )
        ]

    # -- the state machine ------------------------------------------------------------------------

    def _end_protobuf(self) -> list[AdapterError]:
        state, kept = self._state, self._pos
        rest = bytes(self._buffer[kept:]).lstrip(b" \t\r\n")
        offset = self._base + len(self._buffer) - len(rest)
        self._base += len(self._buffer)
        self._buffer.clear()
        self._pos = 0
        if state is not _State.PROTOBUF or not rest:
            return []  # an oversized message was reported when it began; a lost stream when it was lost
        return [
            AdapterError(
                f"the stream ended inside a TAK protocol version 1 message ({len(rest)} bytes held: {_excerpt(rest)})",
                offset=offset,
                kind="truncated",
            )
        ]

    def _step(self, out: list[bytes | AdapterError]) -> bool:
        state = self._state
        if state is _State.BETWEEN:
            return self._between(out)
        if state is _State.SKIP:
            return self._skip()
        if state is _State.EVENT:
            return self._event(out)
        if state is _State.PROTOBUF:
            return self._message(out)
        if state is _State.SKIP_BYTES:
            return self._skip_bytes()
        return False  # lost

    # -- version 1 --------------------------------------------------------------------------------

    def _message(self, out: list[bytes | AdapterError]) -> bool:
        buf, pos = self._buffer, self._pos
        # white space between messages is let through: a client may end its last XML event with a newline
        while pos < len(buf) and buf[pos] in _WHITESPACE:
            pos += 1
        self._pos = pos
        if pos >= len(buf):
            return False
        if buf[pos] != TAK_MAGIC:
            return self._lose(
                out, f"byte {buf[pos]:#04x} where a TAK protocol version 1 message must start with 0xbf", pos
            )
        try:
            header = read_varint(buf, pos + 1)
        except ValueError as exc:
            return self._lose(out, f"a message length that is not a varint ({exc})", pos)
        if header is None:
            return False  # the length is cut by the read
        length, start = header
        if length > self.max_event_bytes:
            if length > MAX_SKIPPED_MESSAGE_BYTES:
                return self._lose(out, f"a message length of {length} bytes, beyond any TAK message", pos)
            out.append(
                AdapterError(
                    f"a TAK protocol version 1 message of {length} bytes, more than the limit of "
                    f"{self.max_event_bytes}; skipped",
                    offset=self._base + pos,
                    kind="size",
                )
            )
            self._state, self._skip_left, self._pos = _State.SKIP_BYTES, length, start
            return True
        end = start + length
        if end > len(buf):
            return False
        out.append(bytes(buf[start:end]))
        self._pos = end
        return True

    def _skip_bytes(self) -> bool:
        taken = min(self._skip_left, len(self._buffer) - self._pos)
        self._pos += taken
        self._skip_left -= taken
        if self._skip_left:
            return False
        self._state = _State.PROTOBUF
        return True

    def _lose(self, out: list[bytes | AdapterError], reason: str, at: int) -> bool:
        out.append(
            AdapterError(
                f"{reason}: a length-prefixed stream has no marker to find the next message by, so nothing "
                "more is read from it and the connection must be closed",
                offset=self._base + at,
                kind="framing",
            )
        )
        self._state = _State.LOST
        self._base += len(self._buffer)
        self._buffer.clear()
        self._pos = 0
        return False

    # -- version 0 --------------------------------------------------------------------------------

    def _between(self, out: list[bytes | AdapterError]) -> bool:
        buf, pos = self._buffer, self._pos
        while pos < len(buf) and buf[pos] in _WHITESPACE:
            pos += 1
        if buf.startswith(_BOM, pos):
            pos += len(_BOM)
        self._pos = pos
        rest = bytes(buf[pos : pos + len(_EVENT_OPEN) + 1])
        if not rest or (len(rest) < len(_BOM) and _BOM.startswith(rest)):
            return False
        if rest[0] == TAK_MAGIC:
            if self.detect_protobuf and self._base + pos == 0 and self._declaration is None:
                self._state = _State.PROTOBUF  # a client configured for protobuf: version 1 from its first byte
                return True
            return self._refuse(
                out,
                "a TAK protocol version 1 (protobuf, magic byte 0xbf) message on a stream that reads XML CoT "
                "events (version 0): version 1 is used only once the server agreed to it (t-x-takp-q)",
                pos,
                "unsupported",
            )
        if rest.startswith(_DECLARATION_OPEN):
            if self._declaration is not None:
                return self._refuse(out, "two XML declarations in a row, without an event between", pos, "framing")
            close = buf.find(b"?>", pos, pos + _MAX_DECLARATION_BYTES)
            if close < 0:
                if len(buf) - pos >= _MAX_DECLARATION_BYTES:
                    return self._refuse(
                        out,
                        f"an XML declaration that does not end within {_MAX_DECLARATION_BYTES} bytes",
                        pos,
                        "framing",
                    )
                return False
            self._declaration = pos
            self._pos = close + 2
            return True
        if len(rest) <= len(_EVENT_OPEN) and (_EVENT_OPEN.startswith(rest) or _DECLARATION_OPEN.startswith(rest)):
            return False  # the start of an event or a declaration, cut by the read
        if rest.startswith(b"<!"):
            return self._refuse(
                out, "a document type declaration or other markup declaration (<!...>) is not accepted", pos, "hostile"
            )
        if _EVENT_START.match(buf, pos):
            self._state = _State.EVENT
            self._start = pos if self._declaration is None else self._declaration
            self._declaration = None
            self._open = self._scan = pos
            self._depth, self._section_end = 0, b""
            return True
        # as many bytes as it took to tell, so that the message is the same however the stream was split
        told = 1 + max(_common_prefix(rest, _EVENT_OPEN), _common_prefix(rest, _DECLARATION_OPEN))
        return self._refuse(out, f"bytes that do not start a CoT <event>: {_excerpt(rest[:told])}", pos, "framing")

    def _skip(self) -> bool:
        buf = self._buffer
        found = _RESYNC.search(buf, self._pos)
        if found is None:
            self._pos = max(self._pos, len(buf) - len(_EVENT_OPEN))  # keep what may be a cut event start
            return False
        self._pos = found.start()
        self._state = _State.BETWEEN
        return True

    def _event(self, out: list[bytes | AdapterError]) -> bool:
        buf = self._buffer
        while True:
            if self._section_end:
                close = buf.find(self._section_end, self._find_from)
                if close < 0:
                    self._find_from = max(self._find_from, len(buf) - len(self._section_end) + 1)
                    return self._wait_or_refuse(out)
                self._scan = close + len(self._section_end)
                self._section_end = b""
                continue
            lt = buf.find(b"<", self._scan)
            if lt < 0:
                self._scan = len(buf)
                return self._wait_or_refuse(out)
            self._scan = lt
            head = bytes(buf[lt : lt + _LONGEST_SECTION_OPEN])
            section = _section_of(head)
            if section is None:
                return self._wait_or_refuse(out)
            if section:
                self._section_end = section
                self._find_from = lt + 2
                continue
            if head.startswith(b"<!"):
                return self._refuse(out, "a markup declaration (<!...>) inside an event is not accepted", lt, "hostile")
            tag = _TAG_REST.match(buf, lt + 1)
            if tag is None:
                return self._wait_or_refuse(out)
            end = tag.end()
            if end - self._start > self.max_event_bytes:
                return self._too_big(out)
            if lt != self._open and _EVENT_START.match(buf, lt):
                out.append(
                    AdapterError(
                        "an event that did not end before the next <event> began; skipped",
                        offset=self._base + self._start,
                        kind="framing",
                    )
                )
                self._state, self._pos, self._declaration = _State.BETWEEN, lt, None
                return True
            if buf[lt + 1] == ord("/"):
                self._depth -= 1
            elif buf[end - 2] != ord("/"):
                self._depth += 1
            self._scan = end
            if self._depth == 0:
                out.append(bytes(buf[self._start : end]))
                self._state, self._pos = _State.BETWEEN, end
                return True

    def _wait_or_refuse(self, out: list[bytes | AdapterError]) -> bool:
        """More bytes are needed, unless the event already holds more than the limit."""
        if len(self._buffer) - self._start > self.max_event_bytes:
            return self._too_big(out)
        return False

    def _too_big(self, out: list[bytes | AdapterError]) -> bool:
        out.append(
            AdapterError(
                f"an event larger than the limit of {self.max_event_bytes} bytes; skipped to the next event",
                offset=self._base + self._start,
                kind="size",
            )
        )
        # the same place however the stream was split: just past the limit
        self._pos = self._start + self.max_event_bytes + 1
        self._state, self._section_end, self._declaration = _State.SKIP, b"", None
        return True

    def _refuse(self, out: list[bytes | AdapterError], reason: str, at: int, kind: str) -> bool:
        where = self._declaration if self._declaration is not None and self._state is _State.BETWEEN else at
        out.append(AdapterError(f"{reason}; skipped to the next event", offset=self._base + where, kind=kind))
        self._pos = at + 1
        self._state, self._section_end, self._declaration = _State.SKIP, b"", None
        return True

    # -- the buffer -------------------------------------------------------------------------------

    def _first_kept(self) -> int:
        if self._state is _State.LOST:
            return len(self._buffer)
        if self._state is _State.EVENT:
            return self._start
        if self._declaration is not None:
            return self._declaration
        return self._pos

    def _compact(self) -> None:
        cut = self._first_kept()
        if cut == 0:
            return
        del self._buffer[:cut]
        self._base += cut
        self._pos -= cut
        if self._declaration is not None:
            self._declaration -= cut
        if self._state is _State.EVENT:
            self._start -= cut
            self._open -= cut
            self._scan -= cut
            self._find_from = max(0, self._find_from - cut)


def _section_of(head: bytes) -> bytes | None:
    """What ends the comment, CDATA section or processing instruction ``head`` starts; ``b""`` when
    it starts a tag; None when the read cut it too short to tell."""
    for open_, close in _SECTIONS:
        if head.startswith(open_):
            return close
        if len(head) < len(open_) and open_.startswith(head):
            return None
    if len(head) < 2:
        return None
    return b""


def check_datagram(data: bytes, max_event_bytes: int = MAX_EVENT_BYTES) -> bytes:
    """The event a UDP datagram carries (one per datagram), once it is known to be XML of a sane size."""
    if len(data) > max_event_bytes:
        raise AdapterError(
            f"a datagram of {len(data)} bytes, more than the limit of {max_event_bytes}", offset=0, kind="size"
        )
    body = data.lstrip(b" \t\r\n")
    if body[:1] == bytes([TAK_MAGIC]):
        raise AdapterError(
            "a TAK protocol version 1 (protobuf, magic byte 0xbf) datagram: only XML CoT events are read",
            offset=len(data) - len(body),
            kind="unsupported",
        )
    return data


def read_datagram(data: bytes, max_event_bytes: int = MAX_EVENT_BYTES) -> tuple[int, bytes]:
    """What a UDP datagram carries, with its TAK protocol version: ``(0, the XML event)`` or, for the
    mesh form ``0xbf`` version ``0xbf`` message, ``(1, the TakMessage bytes)``."""
    if data[:1] != bytes([TAK_MAGIC]):
        return 0, check_datagram(data, max_event_bytes)
    if len(data) > max_event_bytes + 3:  # the mesh header of version 1 is three bytes
        raise AdapterError(
            f"a datagram of {len(data)} bytes, more than the limit of {max_event_bytes}", offset=0, kind="size"
        )
    try:
        header = read_varint(data, 1)
    except ValueError as exc:
        raise AdapterError(
            f"a TAK mesh header whose version is not a varint ({exc})", offset=1, kind="framing"
        ) from None
    if header is None:
        raise AdapterError("a datagram that ends inside its TAK mesh header", offset=len(data), kind="truncated")
    version, at = header
    if at >= len(data) or data[at] != TAK_MAGIC:
        raise AdapterError(
            "a datagram starting with 0xbf without the TAK mesh header's second 0xbf after the version",
            offset=at,
            kind="framing",
        )
    if version != 1:
        raise AdapterError(
            f"TAK protocol version {version} is not read (only 0, XML, and 1, protobuf)", offset=1, kind="unsupported"
        )
    return 1, data[at + 1 :]


def read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """The unsigned varint at ``pos`` and where it ends, or None when ``data`` ends inside it; a
    ValueError when it runs past the ten bytes a 64-bit value takes."""
    value = 0
    for k in range(MAX_VARINT_BYTES):
        if pos + k >= len(data):
            return None
        byte = data[pos + k]
        value |= (byte & 0x7F) << (7 * k)
        if not byte & 0x80:
            if value >= 1 << 64:
                raise ValueError("more than 64 bits")
            return value, pos + k + 1
    raise ValueError(f"more than {MAX_VARINT_BYTES} bytes")


def encode_varint(value: int) -> bytes:
    """``value`` (0 .. 2**64-1) as an unsigned varint."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{value} is not an unsigned 64-bit value")
    return varint(value)


def _common_prefix(a: bytes, b: bytes) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _excerpt(data: bytes, limit: int = 24) -> str:
    shown = repr(bytes(data[:limit]))
    return shown + ("..." if len(data) > limit else "")
