"""SL 651-2014 frames: the link layer of the hydrological telemetry protocol, sans-IO.

Two encodings share one layout. HEX/BCD frames start with ``7E7E``; ASCII frames start with SOH
(01H) and carry every header field as upper-case hex text:

====================  =========  ==========  ==============================================
field                 HEX bytes  ASCII chars  notes
====================  =========  ==========  ==============================================
start                 2 (7E7E)   1 (SOH)
centre address        1          2            uplink order; a downlink frame carries the
station address       5          10           station address first, then the centre's
password              2          4
function code         1          2
direction + length    2          4            upper 4 bits 0 (up) or 8 (down), lower 12 the
                                              length of what follows the start-of-text byte
start of text         1          1            STX (02H), or SYN (16H) for one packet of many
packet count/serial   3          6            SYN only, counted in the length: upper 12 bits
                                              the packet total, lower 12 the packet number
body                  n          n
end code              1          1            ETX ETB ENQ EOT ACK NAK ESC
CRC                   2          4            CRC-16/MODBUS of everything from the start to
                                              the end code, high byte first
====================  =========  ==========  ==============================================

``FrameReader`` finds frames in a byte stream split anyhow, refuses broken ones with a
``FrameError`` saying why (``crc``, ``length``, ``header``, ``truncated``) and finds the next frame
start by itself; bytes between frames are reported once per run (``garbage``). ``decode_frame``
reads exactly one frame (a line of a sample file); ``encode_frame`` builds one (our replies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from adapters.crc16 import crc16_modbus
from adapters.errors import AdapterError

HEX_START: Final = b"\x7e\x7e"
SOH: Final = 0x01
STX: Final = 0x02
SYN: Final = 0x16

ETX: Final = 0x03  # end of the message, nothing follows
ETB: Final = 0x17  # end of one packet, more follow
ENQ: Final = 0x05  # an enquiry: the sender waits for an answer
EOT: Final = 0x04  # transmission over, the station leaves the link
ACK: Final = 0x06  # positive acknowledgement: go on
NAK: Final = 0x15  # negative acknowledgement: send again
ESC: Final = 0x1B  # transmission over, the station stays online

END_CODES: Final = frozenset({ETX, ETB, ENQ, EOT, ACK, NAK, ESC})
END_NAMES: Final = {ETX: "ETX", ETB: "ETB", ENQ: "ENQ", EOT: "EOT", ACK: "ACK", NAK: "NAK", ESC: "ESC"}

UP: Final = 0x0
DOWN: Final = 0x8
MAX_LENGTH: Final = 0xFFF  # the 12-bit length field

HEX_HEADER: Final = 14  # start .. start-of-text
ASCII_HEADER: Final = 24
HEX_TRAILER: Final = 3  # end code + CRC
ASCII_TRAILER: Final = 5
#: The largest frame either encoding can announce.
MAX_FRAME_BYTES: Final = ASCII_HEADER + MAX_LENGTH + ASCII_TRAILER

#: Skipped bytes are reported at the latest after this many (a stream of noise is not buffered).
GARBAGE_REPORT_BYTES: Final = 4096

Mode = Literal["hex", "ascii"]
_HEX_DIGITS: Final = frozenset(b"0123456789ABCDEFabcdef")


@dataclass(frozen=True, slots=True)
class Header:
    """What a frame says about itself before its body: enough to address a reply to it."""

    mode: Mode
    up: bool
    centre: int  # 0..255
    station: str  # the station address as 10 upper-case hex digits, e.g. "0012345678"
    password: str  # 4 upper-case hex digits, e.g. "1234"
    function: int  # 0..255
    packet: tuple[int, int] | None = None  # (total, number) of a SYN frame


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete frame whose CRC verified."""

    header: Header
    body: bytes  # after the start of text (and packet count), before the end code
    end: int  # the end code
    size: int  # bytes on the wire


class FrameError(AdapterError):
    """A frame refused, with its header when that could be read (so a NAK can be addressed)."""

    def __init__(
        self,
        reason: str,
        *,
        kind: str,
        offset: int | None = None,
        field: str = "",
        header: Header | None = None,
        serial: int | None = None,
    ) -> None:
        super().__init__(reason, field=field, offset=offset, kind=kind)
        self.header = header
        self.serial = serial  # the message's serial number, when its body starts with one

    def __reduce__(self) -> tuple[object, ...]:
        fields = {"kind": self.kind, "offset": self.offset, "field": self.field, "header": self.header}
        return _rebuild, (self.reason, fields, self.serial)


def _rebuild(reason: str, fields: dict[str, Any], serial: int | None) -> FrameError:
    return FrameError(reason, serial=serial, **fields)


def _serial_of(body: bytes, header: Header) -> int | None:
    """The serial number a body starts with (HEX: 2 bytes; ASCII: 4 hex digits), if it is there."""
    if header.mode == "hex":
        return int.from_bytes(body[:2], "big") if len(body) >= 2 else None
    text = body[:4].decode("ascii", errors="replace")
    return int(text, 16) if len(text) == 4 and all(c in "0123456789ABCDEFabcdef" for c in text) else None


# -- reading ---------------------------------------------------------------------------------------


def _hex_header(data: bytes | bytearray) -> tuple[Header, int, int] | FrameError:
    """The header of a HEX frame at the start of ``data`` (at least HEX_HEADER + 3 bytes when SYN),
    with the announced length and the start-of-text byte."""
    word = (data[11] << 8) | data[12]
    direction, length, start = word >> 12, word & MAX_LENGTH, data[13]
    if direction not in (UP, DOWN):
        return FrameError(f"direction nibble {direction:X}H is neither 0 (up) nor 8 (down)", kind="header", offset=11)
    if start not in (STX, SYN):
        return FrameError(f"start of text is {start:02X}H, not STX (02H) or SYN (16H)", kind="header", offset=13)
    up = direction == UP
    if up:
        centre, station = data[2], bytes(data[3:8]).hex().upper()
    else:
        station, centre = bytes(data[2:7]).hex().upper(), data[7]
    header = Header("hex", up, centre, station, bytes(data[8:10]).hex().upper(), data[10])
    return header, length, start


def _ascii_header(data: bytes | bytearray) -> tuple[Header, int, int] | FrameError:
    text = bytes(data[1:23]).decode("ascii").upper()  # checked to be hex digits by the caller
    direction, length, start = int(text[18], 16), int(text[19:22], 16), data[23]
    if direction not in (UP, DOWN):
        return FrameError(f"direction digit {direction:X} is neither 0 (up) nor 8 (down)", kind="header", offset=19)
    if start not in (STX, SYN):
        return FrameError(f"start of text is {start:02X}H, not STX (02H) or SYN (16H)", kind="header", offset=23)
    up = direction == UP
    centre, station = (int(text[0:2], 16), text[2:12]) if up else (int(text[10:12], 16), text[0:10])
    header = Header("ascii", up, centre, station, text[12:16], int(text[16:18], 16))
    return header, length, start


def _with_packet(header: Header, packet: tuple[int, int]) -> Header:
    return Header(header.mode, header.up, header.centre, header.station, header.password, header.function, packet)


def _packet(raw: bytes, header: Header, offset: int) -> tuple[int, int] | FrameError:
    if header.mode == "ascii":
        text = raw.decode("ascii", errors="replace")
        if len(text) != 6 or any(c not in "0123456789ABCDEFabcdef" for c in text):
            return FrameError(f"packet count {text!r} is not 6 hex digits", kind="header", offset=offset)
        word = int(text, 16)
    else:
        word = int.from_bytes(raw, "big")
    total, number = word >> 12, word & 0xFFF
    if total == 0 or not 1 <= number <= total:
        return FrameError(f"packet {number} of {total} is not a packet number", kind="header", offset=offset)
    return total, number


def _complete(data: bytes, header: Header, length: int, start: int) -> Frame | FrameError:
    """The frame of exactly ``data`` (its announced size), checked: end code, CRC, packet count."""
    head, trailer = (HEX_HEADER, HEX_TRAILER) if header.mode == "hex" else (ASCII_HEADER, ASCII_TRAILER)
    end = data[head + length]
    if end not in END_CODES:
        return FrameError(
            f"the announced length {length} ends on {end:02X}H, not an end code: the length is wrong",
            kind="length",
            offset=head + length,
            header=header,
        )
    if header.mode == "hex":
        carried = int.from_bytes(data[-2:], "big")
    else:
        text = data[-4:].decode("ascii", errors="replace")
        if any(c not in "0123456789ABCDEFabcdef" for c in text):
            return FrameError(f"CRC {text!r} is not 4 hex digits", kind="crc", offset=len(data) - 4, header=header)
        carried = int(text, 16)
    computed = crc16_modbus(memoryview(data)[: len(data) - (trailer - 1)])
    body = data[head : head + length]
    if carried != computed:
        width = 0 if start == STX else 3 if header.mode == "hex" else 6
        return FrameError(
            f"CRC is {carried:04X}, the frame's bytes give {computed:04X}",
            kind="crc",
            offset=len(data) - (trailer - 1),
            header=header,
            serial=_serial_of(body[width:], header),
        )
    if start == SYN:
        width = 3 if header.mode == "hex" else 6
        if length < width:
            return FrameError(f"a SYN frame of length {length} has no packet count", kind="length", header=header)
        packet = _packet(body[:width], header, head)
        if isinstance(packet, FrameError):
            return packet
        header = _with_packet(header, packet)
        body = body[width:]
    return Frame(header, body, end, len(data))


def _header_at(data: bytes | bytearray) -> tuple[Header, int, int] | FrameError | None:
    """The header at the start of ``data``, None while too few bytes are there to tell."""
    if data[:2] == HEX_START:
        return _hex_header(data) if len(data) >= HEX_HEADER else None
    if len(data) < ASCII_HEADER:
        return None
    return _ascii_header(data)


def _frame_size(header: Header, length: int) -> int:
    if header.mode == "hex":
        return HEX_HEADER + length + HEX_TRAILER
    return ASCII_HEADER + length + ASCII_TRAILER


def decode_frame(data: bytes) -> Frame:
    """Exactly one frame: ``data`` must start with a frame start and end with its CRC."""
    if data[:2] != HEX_START and (not data or data[0] != SOH or not _ascii_prefix_ok(data)):
        raise FrameError("does not start with 7E7EH (HEX) or SOH and hex digits (ASCII)", kind="header", offset=0)
    head = HEX_HEADER if data[:2] == HEX_START else ASCII_HEADER
    if len(data) < head:
        raise FrameError(f"{len(data)} bytes end inside the {head}-byte header", kind="truncated", offset=len(data))
    found = _header_at(data)
    if isinstance(found, FrameError):
        raise found
    assert found is not None  # long enough
    header, length, start = found
    size = _frame_size(header, length)
    if len(data) < size:
        raise FrameError(
            f"the frame announces {size} bytes (body length {length}) but only {len(data)} are there",
            kind="truncated",
            offset=len(data),
            header=header,
        )
    if len(data) > size:
        raise FrameError(
            f"{len(data) - size} bytes follow the frame's CRC (announced body length {length}): the length is wrong",
            kind="length",
            offset=size,
            header=header,
        )
    frame = _complete(bytes(data), header, length, start)
    if isinstance(frame, FrameError):
        raise frame
    return frame


def _ascii_prefix_ok(data: bytes | bytearray) -> bool:
    """Whether the bytes after an SOH (as many as there are, up to the header) are hex digits."""
    return all(b in _HEX_DIGITS for b in data[1 : ASCII_HEADER - 1])


class FrameReader:
    """Frames out of a byte stream, across any split; a bounded buffer of at most one frame."""

    __slots__ = ("_buffer", "_garbage", "_offset", "_quiet")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0  # stream position of _buffer[0]
        self._garbage = 0  # skipped bytes not yet reported
        self._quiet = False  # after a refused frame, up to the next frame start: its rest, not garbage

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        self._buffer += data
        out: list[Frame | FrameError] = []
        while True:
            item = self._next()
            if item is None:
                return out
            out.append(item)

    def _skip(self, count: int) -> None:
        """Drops ``count`` bytes that are not a frame, counting those that follow no refused frame."""
        if not self._quiet:
            self._garbage += count
        del self._buffer[:count]
        self._offset += count

    def _garbage_report(self, *, before_frame: bool) -> FrameError | None:
        """One report of skipped bytes: those before a frame start, or each full GARBAGE_REPORT_BYTES
        (so a report does not depend on how the stream was split)."""
        if before_frame and self._garbage:
            count, self._garbage = self._garbage, 0
            return FrameError(f"{count} bytes before this frame are not part of any frame", kind="garbage",
                              offset=self._offset)  # fmt: skip
        if self._garbage >= GARBAGE_REPORT_BYTES:
            self._garbage -= GARBAGE_REPORT_BYTES
            return FrameError(f"{GARBAGE_REPORT_BYTES} bytes in a row are not part of any frame", kind="garbage")
        return None

    def _next(self) -> Frame | FrameError | None:
        buffer = self._buffer
        while True:
            start = self._find_start()
            if start:
                self._skip(start)
            report = self._garbage_report(before_frame=False)
            if report is not None:
                return report
            if not buffer or (buffer[0] != SOH and buffer[:2] != HEX_START):
                return None  # only a possible first 7E is left
            if buffer[0] == SOH and buffer[:2] != HEX_START and not _ascii_prefix_ok(buffer):
                self._skip(1)  # an SOH byte that does not start an ASCII header
                continue
            found = _header_at(buffer)
            if found is None:
                return None
            report = self._garbage_report(before_frame=True)  # a frame starts here: say what came before it
            if report is not None:
                return report
            self._quiet = False
            if isinstance(found, FrameError):
                return self._refuse(found)
            header, length, start_byte = found
            size = _frame_size(header, length)
            if len(buffer) < size:
                return None
            frame = _complete(bytes(buffer[:size]), header, length, start_byte)
            if isinstance(frame, FrameError):
                return self._refuse(frame)
            del buffer[:size]
            self._offset += size
            return frame

    def _refuse(self, error: FrameError) -> FrameError:
        """Refuses the frame candidate at the buffer start: drops its first byte and looks for the
        next start from there (a frame may begin inside a broken one, whose length may be what is
        wrong); the bytes up to that start are the broken frame's, not reported again as garbage."""
        error.offset = self._offset + (error.offset or 0)
        self._quiet = True
        del self._buffer[:1]
        self._offset += 1
        return error

    def _find_start(self) -> int:
        """How many leading bytes cannot begin a frame (a lone trailing 7E is kept)."""
        buffer = self._buffer
        hex_at = buffer.find(HEX_START)
        soh_at = buffer.find(SOH)
        candidates = [at for at in (hex_at, soh_at) if at >= 0]
        if candidates:
            return min(candidates)
        if buffer and buffer[-1] == HEX_START[0]:
            return len(buffer) - 1
        return len(buffer)


# -- writing ---------------------------------------------------------------------------------------


def encode_frame(header: Header, body: bytes, end: int) -> bytes:
    """A frame with ``header``'s fields (its direction, addresses in that direction's order), the
    body and end code, and its CRC. SYN and the packet count are written when ``header.packet``."""
    if end not in END_CODES:
        raise AdapterError(f"{end:02X}H is not an end code", field="end", kind="value")
    if header.mode == "hex":
        packet = b""
        if header.packet is not None:
            packet = ((header.packet[0] << 12) | header.packet[1]).to_bytes(3, "big")
        length = len(packet) + len(body)
        if length > MAX_LENGTH:
            raise AdapterError(f"a body of {length} bytes does not fit the 12-bit length", field="body", kind="size")
        station, password = bytes.fromhex(header.station), bytes.fromhex(header.password)
        addresses = bytes([header.centre]) + station if header.up else station + bytes([header.centre])
        word = ((UP if header.up else DOWN) << 12) | length
        frame = (
            HEX_START
            + addresses
            + password
            + bytes([header.function])
            + word.to_bytes(2, "big")
            + bytes([SYN if packet else STX])
            + packet
            + body
            + bytes([end])
        )
        return frame + crc16_modbus(frame).to_bytes(2, "big")
    packet_text = b""
    if header.packet is not None:
        packet_text = f"{(header.packet[0] << 12) | header.packet[1]:06X}".encode("ascii")
    length = len(packet_text) + len(body)
    if length > MAX_LENGTH:
        raise AdapterError(f"a body of {length} characters does not fit the 12-bit length", field="body", kind="size")
    centre = f"{header.centre:02X}"
    address_text = centre + header.station if header.up else header.station + centre
    text = f"{address_text}{header.password}{header.function:02X}{UP if header.up else DOWN:X}{length:03X}"
    frame = (
        bytes([SOH]) + text.encode("ascii") + bytes([SYN if packet_text else STX]) + packet_text + body + bytes([end])
    )
    return frame + f"{crc16_modbus(frame):04X}".encode("ascii")
