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

TAK protocol version 1 (protobuf payloads behind a ``0xbf`` magic byte, on streams with a varint
length) is recognised and refused with that reason: only XML events are read here.
"""

from __future__ import annotations

import enum
import re

from adapters.errors import AdapterError

#: The largest event accepted, in bytes (declaration included). TAK events are a few kilobytes.
MAX_EVENT_BYTES = 256 * 1024
#: The TAK protocol's magic byte, which starts every protobuf (version 1) message.
TAK_MAGIC = 0xBF

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


class StreamDecoder:
    """The events of one TCP connection, from its bytes as they arrive (any split).

    ``feed`` returns, in stream order, the bytes of each complete event and an ``AdapterError`` for
    each run of bytes it had to skip (``kind`` ``framing`` for garbage or a broken event, ``hostile``
    for a DTD or other markup declaration, ``size`` for an event over the limit, ``unsupported`` for
    TAK protobuf; ``offset`` is the position in the stream). The outcome does not depend on how the
    stream was split. ``end`` says whether the stream stopped inside an event (``truncated``).
    Memory is bounded: at most one event of ``max_event_bytes`` plus the last read is held.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        if max_event_bytes < 64:
            raise ValueError(f"max_event_bytes {max_event_bytes} is too small for any CoT event")
        self.max_event_bytes = max_event_bytes
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

    def feed(self, data: bytes) -> list[bytes | AdapterError]:
        """The events (and refusals) that ``data`` completes."""
        self._buffer += data
        out: list[bytes | AdapterError] = []
        while self._step(out):
            pass
        self._compact()
        return out

    def end(self) -> list[AdapterError]:
        """At the end of the stream: an error if it stopped inside an event (or a declaration)."""
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

    def _step(self, out: list[bytes | AdapterError]) -> bool:
        if self._state is _State.BETWEEN:
            return self._between(out)
        if self._state is _State.SKIP:
            return self._skip()
        return self._event(out)

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
            return self._refuse(
                out,
                "a TAK protocol version 1 (protobuf, magic byte 0xbf) message: only XML CoT events "
                "(TAK protocol version 0) are read",
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


def _common_prefix(a: bytes, b: bytes) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _excerpt(data: bytes, limit: int = 24) -> str:
    shown = repr(bytes(data[:limit]))
    return shown + ("..." if len(data) > limit else "")
