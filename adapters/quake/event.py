"""One earthquake as every source format describes it, and the strict readers the format parsers share.

Each parser (``usgs``, ``quakeml``, ``cenc``) turns its document into a list of items, one per event:
a ``QuakeEvent`` when the event could be read, a ``Skipped`` when it is well formed but not for us
(a quarry blast), or the ``AdapterError`` that says which field of that event is wrong. The codec
turns ``QuakeEvent`` into envelopes; nothing here knows about envelopes.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field

from adapters.errors import AdapterError

#: The largest document any quake parser reads (USGS's all_month feed is about 10 MB).
MAX_DOCUMENT_BYTES = 32 << 20

#: The network carries nothing observed before 2000-01-01 (gateway.validation.EARLIEST_TIME_S).
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

#: Text copied from a source into a title or attribute is cut here: a feed should not be able to
#: fill an envelope with one place name.
MAX_TEXT_CHARS = 1000

# Plausibility bounds: values outside them are broken input, not earthquakes.
MAGNITUDE_RANGE = (-3.0, 10.5)
DEPTH_RANGE_KM = (-15.0, 1000.0)  # negative: above sea level, which catalogues do report

_MAX_ID_CHARS = 256


@dataclass(frozen=True, slots=True)
class QuakeEvent:
    """One version of one earthquake, read from a source and checked, in source-neutral terms."""

    path: str  # where the event sits in its document, e.g. "features[3]"
    event_id: str  # the source's stable id of the event (not of this version)
    aliases: tuple[str, ...]  # other ids the source gives the same event (USGS "ids")
    origin_time: dt.datetime  # UTC
    updated: dt.datetime  # UTC: when this version was made; tells versions apart
    lat: float
    lon: float
    depth_km: float | None  # None: the source gave no depth
    magnitude: float
    magnitude_type: str
    place: str  # the source's own place name
    title: str
    description: str
    reporter: str  # who measured it, as the source names it
    retracted: bool = False  # the source withdrew the event (USGS "deleted", CENC IS_DEL)
    attributes: tuple[tuple[str, str], ...] = field(default=())  # source details worth keeping


@dataclass(frozen=True, slots=True)
class Skipped:
    """An event the source describes correctly that is not an earthquake report for us."""

    path: str
    reason: str  # a short counter name, e.g. "not-earthquake"


Item = QuakeEvent | Skipped | AdapterError


def json_document(data: bytes) -> object:
    """The parsed JSON of a whole document; AdapterError for anything that is not JSON."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise AdapterError(f"document of {len(data)} bytes, more than the limit of {MAX_DOCUMENT_BYTES}", kind="size")
    if not data.strip():
        raise AdapterError("empty document", kind="json")
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"not JSON: {exc.msg}", offset=exc.pos, kind="json") from None
    except UnicodeDecodeError as exc:
        raise AdapterError(f"not UTF-8 text: {exc.reason}", offset=exc.start, kind="encoding") from None
    except RecursionError:  # nesting deeper than the interpreter's stack: hostile, not a feed
        raise AdapterError("JSON nested too deeply", kind="hostile") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise AdapterError(f"not JSON: {exc}", kind="json") from None


def millis(moment: dt.datetime) -> int:
    """Milliseconds since the epoch: the version stamp, the same whichever format carried it."""
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: object, path: str, *, required: bool = True) -> float | None:
    """A finite number written as a JSON number or as text ("28.50"); None when absent and optional."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise AdapterError("required", field=path, kind="missing")
        return None
    if isinstance(value, bool):  # a bool is an int to Python, never a measurement
        raise AdapterError("expected a number, got true/false", field=path)
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise AdapterError(f"{clip(value, 40)!r} is not a number", field=path) from None
    else:
        raise AdapterError(f"expected a number, got {type(value).__name__}", field=path)
    if not math.isfinite(result):
        raise AdapterError("is not a finite number", field=path)
    return result


def required_number(value: object, path: str) -> float:
    result = number(value, path)
    assert result is not None  # number() raises for a missing required value
    return result


def latitude(value: object, path: str) -> float:
    lat = required_number(value, path)
    if not -90.0 <= lat <= 90.0:
        raise AdapterError(f"{lat} is not a latitude in -90..90", field=path)
    return lat


def longitude(value: object, path: str) -> float:
    lon = required_number(value, path)
    if not -180.0 <= lon <= 180.0:
        raise AdapterError(f"{lon} is not a longitude in -180..180", field=path)
    return lon


def magnitude(value: object, path: str) -> float:
    mag = required_number(value, path)
    low, high = MAGNITUDE_RANGE
    if not low <= mag <= high:
        raise AdapterError(f"{mag} is not a magnitude in {low:g}..{high:g}", field=path)
    return mag


def depth(km: float | None, path: str) -> float | None:
    if km is None:
        return None
    low, high = DEPTH_RANGE_KM
    if not low <= km <= high:
        raise AdapterError(f"{km:g} km is not a hypocentre depth in {low:g}..{high:g} km", field=path)
    return km


def text(value: object, path: str) -> str:
    """Optional text: "" when absent; AdapterError when present but not text."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AdapterError(f"expected text, got {type(value).__name__}", field=path)
    return clip(value.strip())


def identifier(value: object, path: str) -> str:
    """An id usable as incident_id: printable, without white space, at most 256 characters."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or value == "":
        raise AdapterError("required", field=path, kind="missing")
    if not isinstance(value, str):
        raise AdapterError(f"expected text, got {type(value).__name__}", field=path)
    value = value.strip()
    if not value or len(value) > _MAX_ID_CHARS or not value.isprintable() or any(c.isspace() for c in value):
        raise AdapterError(f"{clip(value, 40)!r} is not a usable event id", field=path)
    return value


def in_range(moment: dt.datetime, path: str, now: float) -> dt.datetime:
    """``moment`` if the network can carry it: not before 2000 and not in the future of ``now``."""
    if moment < EARLIEST:
        raise AdapterError(f"{moment.isoformat()} is before 2000-01-01", field=path)
    # the gateway admits up to 600 s of clock skew; an origin time later than that is a broken feed
    if moment.timestamp() > now + 600:
        raise AdapterError(f"{moment.isoformat()} is in the future", field=path)
    return moment


def epoch_millis(value: object, path: str, now: float) -> dt.datetime:
    """A time written as milliseconds since the epoch (USGS GeoJSON)."""
    ms = required_number(value, path)
    if not 0 <= ms < 2.5e14:  # 2.5e14 ms is in year 9892; beyond it datetime cannot represent the time
        raise AdapterError(f"{ms:g} is not a time in milliseconds since 1970", field=path)
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    return in_range(moment, path, now)


_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?", re.ASCII
)


def date_time(value: object, path: str, now: float, *, default_zone: dt.tzinfo = dt.UTC) -> dt.datetime:
    """A time written as ``YYYY-MM-DDThh:mm:ss[.f][Z|±hh:mm]`` (a space may stand for the T).

    Without a zone the time is in ``default_zone``: UTC for QuakeML (INGV writes no "Z"), Beijing
    time for CENC. Stricter than ``datetime.fromisoformat``, which would take a bare date.
    """
    if value is None or value == "":
        raise AdapterError("required", field=path, kind="missing")
    if not isinstance(value, str):
        raise AdapterError(f"expected a date-time text, got {type(value).__name__}", field=path)
    match = _DATE_TIME.fullmatch(value.strip())
    if match is None:
        raise AdapterError(f"{clip(value, 40)!r} is not a date-time (YYYY-MM-DDThh:mm:ss)", field=path)
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zone = match.group(7) or "", match.group(8)
    tz = default_zone
    if zone == "Z":
        tz = dt.UTC
    elif zone:
        sign = -1 if zone[0] == "-" else 1
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        if offset >= dt.timedelta(hours=24):
            raise AdapterError(f"{zone} is not a UTC offset", field=path)
        tz = dt.timezone(sign * offset)
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, int(fraction[:6].ljust(6, "0")), tzinfo=tz)
        utc = moment.astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise AdapterError(f"{value.strip()!r} is not a valid date-time: {exc}", field=path) from None
    return in_range(utc, path, now)


def english_summary(*, mag: float, magnitude_type: str, place: str, origin: dt.datetime) -> str:
    """The title sources in English use: "M 4.7 - 254km SE of Pondaguitan, Philippines"."""
    label = f"M {mag:.1f}"
    if magnitude_type:
        label += f" ({magnitude_type})"
    return f"{label} - {place}" if place else f"{label} - {origin.strftime('%Y-%m-%d %H:%M:%S')} UTC"


def english_description(
    *,
    mag: float,
    magnitude_type: str,
    place: str,
    origin: dt.datetime,
    lat: float,
    lon: float,
    km: float | None,
) -> str:
    where = f" {place}" if place else ""
    depth_text = f", depth {km:.1f} km" if km is not None else ", depth unknown"
    kind = f"{magnitude_type} " if magnitude_type else ""
    return (
        f"M{mag:.1f} {kind}earthquake{where} at {origin.strftime('%Y-%m-%d %H:%M:%S')} UTC, "
        f"epicentre {lat:.3f}, {lon:.3f}{depth_text}."
    )
