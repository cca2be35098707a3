"""SL 651-2014 message bodies: serial number, send time, station and the element table.

A report body (function codes 30H..34H, and the answers 37H, 38H, 3AH, 44H that carry readings) is

    serial (2 bytes) · send time (BCD YYMMDDHHmmSS) · F1F1 station address (5) station type (1)
    · F0F0 observation time (BCD YYMMDDHHmm) · element · element · ... [· F0F0 time · element ...]

where each element is identifier, definition byte and value (``elements``). A later F0F0 sets the
time of the elements after it. A time-step code (04H, BCD day hour minute) makes the next element
of an even-interval report (31H) or a period answer (38H) a series: all values to the end of the
body, one step apart. F4H and F5H..FCH are the hour's twelve 5-minute values, the first at the
observation time. All times are Beijing time.

Values are BCD with the definition's decimals; a value whose first byte is FFH is negative (the
rest is its magnitude), one of all FFH bytes is missing (left out, and named in ``missing``).
Elements are decoded in order and the first one that cannot be is refused with its offset and
code, since the element after a broken one cannot be found.

In ASCII frames the same body is text: serial and send time as hex and decimal digits, then
space-separated identifiers and values (``ST 0012345678 H TT 1707181100 Z 10.490 PJ 4.0``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from adapters.errors import AdapterError
from adapters.sl651 import elements as el

BEIJING: Final = dt.timezone(dt.timedelta(hours=8), "Beijing")
FIVE_MINUTES: Final = dt.timedelta(minutes=5)

LINK: Final = 0x2F  # link maintenance (keep-alive)
TEST: Final = 0x30
EVEN_INTERVAL: Final = 0x31
TIMED: Final = 0x32
ADDED: Final = 0x33
HOURLY: Final = 0x34
MANUAL_REPORT: Final = 0x35
PICTURE_REPORT: Final = 0x36

FUNCTION_NAMES: Final = {
    0x2F: "链路维持报",
    0x30: "测试报",
    0x31: "均匀时段水文信息报",
    0x32: "定时报",
    0x33: "加报报",
    0x34: "小时报",
    0x35: "人工置数报",
    0x36: "图片报",
    0x37: "实时数据",
    0x38: "时段数据",
    0x39: "人工置数",
    0x3A: "指定要素数据",
    0x44: "水泵电机实时工作数据",
}

#: Bodies with a station type and an element table of readings.
READINGS: Final = frozenset({0x30, 0x31, 0x32, 0x33, 0x34, 0x37, 0x38, 0x3A, 0x44})
#: Bodies where a time-step code makes the next element a series.
SERIES: Final = frozenset({0x31, 0x38})

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True, slots=True)
class Reading:
    code: str  # element identifier as hex, e.g. "39"
    value: float
    at: dt.datetime
    flag: str = ""  # ZT status bits as hex


@dataclass(frozen=True, slots=True)
class Report:
    """The body of one message (of all its packets)."""

    function: int
    serial: int
    sent: dt.datetime
    station: str = ""  # the station address in the body (F1F1), hex
    station_type: str = ""  # its type letter, e.g. "H"
    observed: dt.datetime | None = None  # the first observation time
    readings: tuple[Reading, ...] = ()
    missing: tuple[str, ...] = ()  # codes whose value was all FFH
    manual: str = ""  # F2F2 text of a manual report
    picture_bytes: int = 0  # bytes after F3F3


def bcd_digits(raw: bytes, where: str) -> str:
    text = raw.hex()
    if not text.isdigit():
        raise AdapterError(f"{text.upper()} is not BCD", field=where, kind="value")
    return text


def bcd_time(raw: bytes, where: str) -> dt.datetime:
    """YYMMDDHHmm[SS] in BCD, Beijing time, years 2000..2099."""
    digits = bcd_digits(raw, where)
    parts = [int(digits[i : i + 2]) for i in range(0, len(digits), 2)]
    try:
        year, month, day, hour, minute = parts[:5]
        second = parts[5] if len(parts) > 5 else 0
        return dt.datetime(2000 + year, month, day, hour, minute, second, tzinfo=BEIJING)
    except ValueError as exc:
        raise AdapterError(f"{digits} is not a time ({exc})", field=where, kind="time") from None


def time_bcd(moment: dt.datetime) -> bytes:
    """YYMMDDHHmmSS in BCD of ``moment`` in Beijing time."""
    return bytes.fromhex(moment.astimezone(BEIJING).strftime("%y%m%d%H%M%S"))


def bcd_value(raw: bytes, decimals: int, where: str) -> float | None:
    """A BCD value; None when every byte is FFH (missing); a first byte FFH makes it negative."""
    if all(b == 0xFF for b in raw):
        return None
    negative = len(raw) > 1 and raw[0] == 0xFF
    magnitude = int(bcd_digits(raw[1:] if negative else raw, where)) / float(10**decimals)
    return -magnitude if negative else magnitude


def parse_report(function: int, body: bytes, *, ascii_mode: bool = False) -> Report:
    """The report in ``body`` (a frame's, or the packets' joined). Raises AdapterError."""
    if ascii_mode:
        return _AsciiBody(function, body).parse()
    return _HexBody(function, body).parse()


class _Readings:
    """What a body's elements gave: the readings, and the elements sent as missing (all FFH)."""

    readings: list[Reading]
    missing: dict[str, None]

    def _add(self, code: str, value: float | None, at: dt.datetime) -> None:
        if value is None:
            self.missing[code] = None
        else:
            self.readings.append(Reading(code, value, at))


class _HexBody(_Readings):
    def __init__(self, function: int, body: bytes) -> None:
        self.function = function
        self.body = body
        self.readings: list[Reading] = []
        self.missing: dict[str, None] = {}

    def _take(self, at: int, count: int, what: str) -> bytes:
        raw = self.body[at : at + count]
        if len(raw) < count:
            raise AdapterError(
                f"{what} needs {count} bytes, the body ends after {len(raw)}", field=f"body[{at}]", kind="truncated"
            )
        return raw

    def parse(self) -> Report:
        serial = int.from_bytes(self._take(0, 2, "the serial number"), "big")
        sent = bcd_time(self._take(2, 6, "the send time"), "body[2] send time")
        if self.function not in READINGS and self.function != PICTURE_REPORT:
            manual = ""
            if self.body[8:10] == bytes([el.MANUAL, el.MANUAL]):
                manual = self.body[10:].decode("ascii", errors="replace").strip()
            return Report(self.function, serial, sent, manual=manual)
        if self._take(8, 2, "the station identifier F1F1") != bytes([el.STATION, el.STATION]):
            raise AdapterError(f"{self.body[8:10].hex().upper()} is not F1F1", field="body[8] station", kind="value")
        station = self._take(10, 5, "the station address").hex().upper()
        type_byte = self._take(15, 1, "the station type")[0]
        station_type = chr(type_byte) if 0x41 <= type_byte <= 0x5A else f"{type_byte:02X}"
        observed, first, picture, manual = self._elements(16)
        return Report(
            self.function,
            serial,
            sent,
            station,
            station_type,
            first if first is not None else observed,
            tuple(self.readings),
            tuple(self.missing),
            manual,
            picture,
        )

    def _elements(self, at: int) -> tuple[dt.datetime | None, dt.datetime | None, int, str]:
        """Decodes the element table from ``at``; (last time, first time, picture bytes, manual text)."""
        body, end = self.body, len(self.body)
        observed: dt.datetime | None = None
        first: dt.datetime | None = None
        step: dt.timedelta | None = None
        while at < end:
            ident = body[at]
            if ident in (el.OBSERVED, el.STATION, el.MANUAL, el.PICTURE) and body[at + 1 : at + 2] == bytes([ident]):
                if ident == el.OBSERVED:
                    observed = bcd_time(self._take(at + 2, 5, "an observation time"), f"body[{at}] F0F0")
                    first = first or observed
                    at += 7
                    continue
                if ident == el.PICTURE:
                    return observed, first, end - at - 2, ""
                if ident == el.MANUAL:
                    return observed, first, 0, body[at + 2 :].decode("ascii", errors="replace").strip()
                raise AdapterError("a second station identifier F1F1", field=f"body[{at}]", kind="value")
            start = at
            if ident == 0xFF:  # a two-byte identifier
                code = self._take(at, 2, "a two-byte identifier").hex().upper()
                at += 2
            else:
                code = f"{ident:02X}"
                at += 1
            definition = self._take(at, 1, f"the definition byte of {code}H")[0]
            size, decimals = definition >> 3, definition & 0x07
            if size == 0:
                raise AdapterError(f"definition byte {definition:02X}H gives {code}H no bytes",
                                   field=f"body[{at}] {code}H", kind="value")  # fmt: skip
            at += 1
            where = f"body[{start}] {code}H"
            if code == "04":
                digits = bcd_digits(self._take(at, size, "the time step"), where).rjust(6, "0")[-6:]
                step = dt.timedelta(days=int(digits[0:2]), hours=int(digits[2:4]), minutes=int(digits[4:6]))
                at += size
                continue
            if observed is None:
                raise AdapterError(f"element {code}H comes before any observation time (F0F0)", field=where,
                                   kind="missing")  # fmt: skip
            if code == el.RAIN_SERIES or code in el.LEVEL_SERIES:
                self._five_minutes(code, self._take(at, size, f"the values of {code}H"), observed, where)
                at += size
            elif step is not None and self.function in SERIES:
                raw = body[at:]
                if not raw or len(raw) % size:
                    raise AdapterError(f"a series of {size}-byte values cannot fill the {len(raw)} bytes left",
                                       field=where, kind="length")  # fmt: skip
                for k in range(len(raw) // size):
                    self._add(code, bcd_value(raw[k * size : (k + 1) * size], decimals, where), observed + step * k)
                at = end
            elif code == el.STATUS:
                raw = self._take(at, size, f"the value of {code}H")
                self.readings.append(Reading(code, float(int.from_bytes(raw, "big")), observed, raw.hex().upper()))
                at += size
            else:
                self._add(code, bcd_value(self._take(at, size, f"the value of {code}H"), decimals, where), observed)
                at += size
        return observed, first, 0, ""

    def _five_minutes(self, code: str, raw: bytes, observed: dt.datetime, where: str) -> None:
        width = 1 if code == el.RAIN_SERIES else 2
        if len(raw) % width:
            raise AdapterError(f"{len(raw)} bytes are not whole {width}-byte values", field=where, kind="length")
        scale = 10.0 if width == 1 else 100.0  # 0.1 mm of rain; cm of water level
        for k in range(len(raw) // width):
            number = int.from_bytes(raw[k * width : (k + 1) * width], "big")
            missing = number == (1 << (8 * width)) - 1
            self._add(code, None if missing else number / scale, observed + FIVE_MINUTES * k)


class _AsciiBody(_Readings):
    def __init__(self, function: int, body: bytes) -> None:
        self.function = function
        try:
            self.tokens = body.decode("ascii").split()
        except UnicodeDecodeError as exc:
            raise AdapterError(f"byte {exc.start} is not ASCII", field="body", kind="encoding") from None
        self.at = 0
        self.readings: list[Reading] = []
        self.missing: dict[str, None] = {}

    def _next(self, what: str) -> str:
        if self.at >= len(self.tokens):
            raise AdapterError(f"the body ends before {what}", field=f"body token {self.at}", kind="truncated")
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _time(self, token: str, digits: int, where: str) -> dt.datetime:
        if len(token) != digits or not token.isdigit():
            raise AdapterError(f"{token!r} is not {digits} digits of a time", field=where, kind="time")
        return bcd_time(bytes.fromhex(token), where)

    def parse(self) -> Report:
        head = self._next("the serial number")
        if len(head) == 16:
            serial_text, sent_text = head[:4], head[4:]
        else:
            serial_text, sent_text = head, self._next("the send time")
        try:
            serial = int(serial_text, 16) if len(serial_text) == 4 else -1
        except ValueError:
            serial = -1
        if serial < 0:
            raise AdapterError(f"{serial_text!r} is not a 4-digit hex serial number", field="body serial",
                               kind="value")  # fmt: skip
        sent = self._time(sent_text, 12, "body send time")
        if self.function not in READINGS:
            return Report(self.function, serial, sent)
        if self._next("ST") != "ST":
            raise AdapterError(f"{self.tokens[self.at - 1]!r} is not ST", field="body station", kind="value")
        station = self._next("the station address").upper()
        if len(station) != 10 or any(c not in "0123456789ABCDEF" for c in station):
            raise AdapterError(f"{station!r} is not a 10-digit hex station address", field="body station")
        station_type = self._next("the station type")
        observed: dt.datetime | None = None
        first: dt.datetime | None = None
        step: dt.timedelta | None = None
        while self.at < len(self.tokens):
            where = f"body token {self.at}"
            name = self._next("an identifier")
            if name == "TT":
                observed = self._time(self._next("the observation time"), 10, where)
                first = first or observed
                continue
            if len(name) == 5 and name.startswith("DR") and name[2] in "DHN" and name[3:].isdigit():
                amount = int(name[3:])
                step = {"D": dt.timedelta(days=amount), "H": dt.timedelta(hours=amount)}.get(
                    name[2], dt.timedelta(minutes=amount)
                )
                continue
            element = el.BY_ASCII.get(name)
            if element is None:
                raise AdapterError(f"{name!r} is not an element identifier", field=where, kind="unsupported")
            if observed is None:
                raise AdapterError(f"element {name} comes before any observation time (TT)", field=where,
                                   kind="missing")  # fmt: skip
            text = self._next(f"the value of {name}")
            if element.code == el.RAIN_SERIES or element.code in el.LEVEL_SERIES:
                self._five_minutes(element.code, text, observed, where)
            elif element.code == el.STATUS:
                if len(text) != 8 or any(c not in "0123456789ABCDEFabcdef" for c in text):
                    raise AdapterError(f"{text!r} is not 8 hex digits of status bits", field=where)
                self.readings.append(Reading(element.code, float(int(text, 16)), observed, text.upper()))
            elif step is not None and self.function in SERIES:
                values = [text]
                while self.at < len(self.tokens) and _NUMBER.fullmatch(self.tokens[self.at]):
                    values.append(self._next("a value"))
                for k, value in enumerate(values):
                    self._add(element.code, self._number(value, where), observed + step * k)
            else:
                self._add(element.code, self._number(text, where), observed)
        return Report(self.function, serial, sent, station, station_type, first, tuple(self.readings),
                      tuple(self.missing))  # fmt: skip

    @staticmethod
    def _number(text: str, where: str) -> float:
        if not _NUMBER.fullmatch(text):
            raise AdapterError(f"{text!r} is not a number", field=where, kind="value")
        return float(text)

    def _five_minutes(self, code: str, text: str, observed: dt.datetime, where: str) -> None:
        width = 2 if code == el.RAIN_SERIES else 4
        if len(text) != 12 * width or any(c not in "0123456789ABCDEFabcdef" for c in text):
            raise AdapterError(f"{text!r} is not 12 values of {width} hex digits", field=where, kind="value")
        scale = 10.0 if width == 2 else 100.0
        for k in range(12):
            number = int(text[k * width : (k + 1) * width], 16)
            missing = number == (1 << (4 * width)) - 1
            self._add(code, None if missing else number / scale, observed + FIVE_MINUTES * k)
