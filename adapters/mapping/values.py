"""Turning one source value into a canonical one: the declared types, code tables and unit conversions.

Every function here takes what a JSON or CSV record holds (text, a number, a boolean; never None,
which the caller treats as absent) and either returns the canonical value or raises ``AdapterError``
whose reason quotes the offending value; the caller adds the record and field it came from.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from adapters.errors import AdapterError

#: The types a mapping rule may declare.
TYPES = ("string", "integer", "float", "boolean", "timestamp", "enum")

#: Named unit conversions: ``value * factor + offset``. Named ones exist so a mapping says what it
#: means (``cm->m``) instead of a bare number a reader has to check.
CONVERSIONS: dict[str, tuple[float, float]] = {
    "km->m": (1000.0, 0.0),
    "cm->m": (0.01, 0.0),
    "mm->m": (0.001, 0.0),
    "m->mm": (1000.0, 0.0),
    "cm->mm": (10.0, 0.0),
    "km/h->m/s": (1 / 3.6, 0.0),
    "t->kg": (1000.0, 0.0),
    "kg->t": (0.001, 0.0),
    "万->1": (10_000.0, 0.0),  # Chinese statistics count in 万 (ten thousands)
}

#: Timestamp formats that are not strptime patterns.
EPOCH_FORMATS = ("epoch-s", "epoch-ms")
ISO_FORMAT = "iso8601"

_INTEGER = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_OFFSET = re.compile(r"([+-])([01][0-9]|2[0-3]):([0-5][0-9])")
_TRUE = frozenset({"true", "1", "yes", "y", "是", "有"})
_FALSE = frozenset({"false", "0", "no", "n", "否", "无"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_QUOTE_LIMIT = 40  # a quoted bad value is cut here, so one huge cell does not make a huge report

Scalar = str | int | float | bool


def quote(value: object) -> str:
    """A bad value as an error message shows it: repr, shortened."""
    text = repr(value)
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "..."


def as_text(value: object) -> str:
    """The text form of a source scalar, as code tables and id templates see it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float):
        return str(value)
    raise AdapterError(f"not a single value: {quote(value)}", kind="value")


def parse_timezone(text: str) -> dt.timezone:
    """A fixed UTC offset written ``+08:00``; raises ValueError otherwise."""
    match = _OFFSET.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a UTC offset like +08:00")
    sign = -1 if match.group(1) == "-" else 1
    return dt.timezone(sign * dt.timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))


@dataclass(frozen=True, slots=True)
class Timestamp:
    """A point in time as the protobuf Timestamp holds it."""

    seconds: int
    nanos: int

    @classmethod
    def of(cls, moment: dt.datetime) -> Timestamp:
        delta = moment - _EPOCH
        return cls(delta.days * 86_400 + delta.seconds, delta.microseconds * 1000)


@dataclass(frozen=True, slots=True)
class ValueRule:
    """How a rule reads its value: type, code table, timestamp format and zone, unit conversion."""

    type: str
    codes: Mapping[str, str]
    time_format: str = ""
    zone: dt.timezone | None = None
    factor: float = 1.0
    offset: float = 0.0
    enum_names: frozenset[str] = frozenset()

    def from_source(self, raw: Scalar) -> object:
        """The canonical value of a source value: code table, then type, then unit conversion."""
        if self.codes:
            text = as_text(raw)
            if text not in self.codes:
                raise AdapterError(f"{quote(text)} is not in the code table", kind="value")
            raw = self.codes[text]
        value = self.canonical(raw)
        if self.type in ("integer", "float") and (self.factor != 1.0 or self.offset != 0.0):
            assert isinstance(value, int | float)
            # 15 significant digits drop the binary noise of the factor (48.3 mm is 0.0483 m, not
            # 0.048299999999999996 m); no department measures to more
            converted = float(f"{value * self.factor + self.offset:.15g}")
            if self.type == "integer":
                rounded = round(converted, 6)  # 1.2 km is 1200 m, not 1200.0000000000002
                if not rounded.is_integer():
                    raise AdapterError(f"{quote(raw)} is not a whole number after conversion", kind="value")
                return int(rounded)
            return converted
        return value

    def canonical(self, raw: Scalar) -> object:
        """A value of the declared type (no code table, no conversion): also how defaults are read."""
        if self.type == "string":
            return as_text(raw)
        if self.type == "integer":
            return _integer(raw)
        if self.type == "float":
            return _decimal(raw)
        if self.type == "boolean":
            return _boolean(raw)
        if self.type == "timestamp":
            return self._timestamp(raw)
        text = as_text(raw)
        if text not in self.enum_names:
            raise AdapterError(f"{quote(text)} is not one of {', '.join(sorted(self.enum_names))}", kind="value")
        return text

    def _timestamp(self, raw: Scalar) -> Timestamp:
        if self.time_format in EPOCH_FORMATS:
            number = _decimal(raw)
            seconds = number / 1000 if self.time_format == "epoch-ms" else number
            if not -62_135_596_800 <= seconds <= 253_402_300_799:  # years 1..9999, as datetime allows
                raise AdapterError(f"{quote(raw)} is out of the range of dates", kind="value")
            return Timestamp(math.floor(seconds), round((seconds - math.floor(seconds)) * 1e9) % 1_000_000_000)
        text = as_text(raw)
        try:
            if self.time_format == ISO_FORMAT:
                moment = dt.datetime.fromisoformat(text)
            else:
                moment = dt.datetime.strptime(text, self.time_format)  # noqa: DTZ007 (the zone is the mapping's)
        except ValueError:
            raise AdapterError(
                f"{quote(text)} is not a time in the format {self.time_format!r}", kind="value"
            ) from None
        if moment.tzinfo is None:
            if self.zone is None:  # the mapping check makes this impossible for declared formats
                raise AdapterError(f"{quote(text)} has no UTC offset and the mapping gives none", kind="value")
            moment = moment.replace(tzinfo=self.zone)
        try:
            return Timestamp.of(moment)
        except OverflowError:
            raise AdapterError(f"{quote(text)} is out of the range of dates", kind="value") from None


def _integer(raw: Scalar) -> int:
    if isinstance(raw, bool):
        raise AdapterError(f"not an integer: {quote(raw)}", kind="value")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if math.isfinite(raw) and raw.is_integer():
            return int(raw)
        raise AdapterError(f"not an integer: {quote(raw)}", kind="value")
    text = raw.strip()
    if not _INTEGER.fullmatch(text) or len(text) > 30:
        raise AdapterError(f"not an integer: {quote(raw)}", kind="value")
    return int(text.split(".")[0])


def _decimal(raw: Scalar) -> float:
    if isinstance(raw, bool):
        raise AdapterError(f"not a number: {quote(raw)}", kind="value")
    if isinstance(raw, int | float):
        number = float(raw) if abs(raw) < 1e308 else math.inf
    else:
        text = raw.strip()
        if not _DECIMAL.fullmatch(text) or len(text) > 64:
            raise AdapterError(f"not a number: {quote(raw)}", kind="value")
        number = float(text)
    if not math.isfinite(number):
        raise AdapterError(f"not a finite number: {quote(raw)}", kind="value")
    return number


def _boolean(raw: Scalar) -> bool:
    if isinstance(raw, bool):
        return raw
    text = as_text(raw).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise AdapterError(f"not a yes/no value: {quote(raw)}", kind="value")
