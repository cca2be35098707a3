"""HJ 212 data uploads into canonical envelopes: readings as OBSERVATION, a logger's restart as HEARTBEAT.

One packet gives one OBSERVATION envelope with a ``Measurement`` per value: metric ``code-kind``
as the station sends it (``w01018-Rtd``, ``a34004-Avg``, ``011-Rtd`` for a 2005-era code), the unit
from ``codes``, ``at`` the pollutant's SampleTime or else the packet's DataTime (Beijing time,
UTC+8), quality from the pollutant's data flag (``FLAG_QUALITY``; the letter itself is kept in
``Measurement.flag``). An empty value is kept as a MISSING reading of 0.

Threshold crossings. A reading outside the station's ``limits`` (looked up by ``code-kind``, then
for concentrations and levels by the bare code and by the code's 2017 successor) moves, with the
other values of its pollutant, into an envelope of its own that carries
``attributes[ALARM_ATTRIBUTE] = code``, priority 1 and severity YELLOW (ORANGE at twice the upper
limit or more), so the routing sends it up as a threshold crossing while routine readings stay.

Ids. ``stable_id("hj212", MN, CN, DataTime, QN or "", "PNO/PNUM" or "")``, and for a crossing's
envelope ``"alarm"`` and the code added: the same packet sent again gets the same ids and is stored
once. A logger's reports on itself (2081 restart, 3019 serial numbers, 3020 device information) are
HEARTBEAT envelopes with the same kind of id. Split messages (PNUM/PNO) are taken packet by
packet: each carries its own DataTime.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from yiwang.v1 import envelope_pb2 as pb

from adapters.hj212 import codes
from adapters.hj212.errors import Hj212Error
from adapters.hj212.packet import Header, Packet
from adapters.plugin import stable_id
from adapters.station_protocol import Limits, Station
from gateway.routing import ALARM_ATTRIBUTE
from gateway.validation import EARLIEST_TIME_S
from gateway.validation import Limits as DoorLimits

BEIJING = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")
NAMESPACE = "hj212"

#: Data flags (HJ 212-2017 data-flag table; HJ/T 212-2005 uses the same letters) as canonical quality.
FLAG_QUALITY: dict[str, pb.Quality] = {
    "N": pb.GOOD,  # the instrument works normally
    "F": pb.MISSING,  # the instrument is stopped
    "M": pb.MAINTENANCE,
    "S": pb.SUSPECT,  # a value set by hand
    "D": pb.BAD,  # the instrument is faulty
    "C": pb.CALIBRATION,
    "T": pb.SUSPECT,  # above the instrument's measuring range
    "B": pb.BAD,  # the instrument's communication failed
}
UNKNOWN_FLAG_QUALITY = pb.SUSPECT

ROUTINE_PRIORITY = 2
ALARM_PRIORITY = 1
_MAX_CLOCK_SKEW_S = DoorLimits().max_clock_skew_s
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")
_MAX_UNPARSED_CHARS = 512
_MAX_STATUS_FIELDS = 40  # the validator admits 64 attributes; the base ones take a few
_MAX_STATUS_VALUE_CHARS = 256

#: The logger's reports on itself and the heartbeat state each one gives.
STATUS_STATES: dict[str, str] = {
    codes.CN_RESTART: "restarted",
    codes.CN_SERIAL_NUMBERS: "serial numbers",
    codes.CN_DEVICE_INFO: "device information",
}


@dataclass(frozen=True, slots=True)
class Reading:
    code: str
    kind: str
    value: float
    quality: pb.Quality
    flag: str
    at: dt.datetime

    @property
    def metric(self) -> str:
        return f"{self.code}-{self.kind}"


def parse_time(text: str, field: str, header: Header | None = None) -> dt.datetime:
    """A time as HJ 212 writes it (YYYYMMDDhhmmss, or with milliseconds: 17 digits), in Beijing time."""
    if len(text) not in (14, 17) or not text.isascii() or not text.isdigit():
        raise Hj212Error(f"{text[:40]!r} is not a time YYYYMMDDhhmmss[SSS]", field=field, header=header)
    try:  # by hand: datetime.strptime costs ten times as much, on every packet
        moment = dt.datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
            tzinfo=BEIJING,
        )
    except ValueError:
        raise Hj212Error(f"{text!r} is not a valid date and time", field=field, header=header) from None
    return moment + dt.timedelta(milliseconds=int(text[14:] or 0))


def observation_envelopes(
    packet: Packet, station: Station, now: float, original_format: str, system: str = NAMESPACE
) -> list[pb.Envelope]:
    """The envelopes of a data upload (CN 2011, 2051, 2061, 2031, 2021, 2041): routine readings, then crossings."""
    header = packet.header
    data_time = _cp_required(packet, "DataTime")
    observed = _checked_time(data_time, "CP.DataTime", header, now)
    readings, unparsed = _readings(packet, observed)
    if not readings:
        raise Hj212Error("the data upload carries no readings", field="CP", kind="missing", header=header)
    crossing: dict[str, list[str]] = {}  # code -> what crossed
    for reading in readings:
        limits = _limits_of(station, reading)
        if limits is not None and reading.quality != pb.MISSING and (how := _crossing(reading, limits)):
            crossing.setdefault(reading.code, []).append(how)
    id_parts = _id_parts(header, data_time)
    source = _Source(packet, station, now, original_format, system, observed, _millis(observed))
    out = []
    routine = [r for r in readings if r.code not in crossing]
    if routine:
        env = _observation(source, routine)
        env.id = stable_id(NAMESPACE, *id_parts)
        if unparsed:
            env.attributes["hj212.unparsed"] = ",".join(unparsed)[:_MAX_UNPARSED_CHARS]
        out.append(env)
    for code, described in crossing.items():
        of_code = [r for r in readings if r.code == code]
        env = _observation(source, of_code)
        env.id = stable_id(NAMESPACE, *id_parts, "alarm", code)
        env.priority = ALARM_PRIORITY
        env.severity = _severity(of_code, station)
        env.attributes[ALARM_ATTRIBUTE] = code
        env.attributes["hj212.crossing"] = "; ".join(described)[:_MAX_UNPARSED_CHARS]
        out.append(env)
    return out


def status_envelope(
    packet: Packet, station: Station, now: float, original_format: str, system: str = NAMESPACE
) -> pb.Envelope:
    """The HEARTBEAT of a data logger reporting on itself: its (re)start (CN 2081), its instruments'
    serial numbers (3019) or information (3020). The CP fields go into ``attributes["hj212.cp.KEY"]``."""
    header = packet.header
    data_time = _cp_required(packet, "DataTime")
    observed = _checked_time(data_time, "CP.DataTime", header, now)
    env = _base(_Source(packet, station, now, original_format, system, observed, _millis(observed)), pb.HEARTBEAT)
    env.id = stable_id(NAMESPACE, *_id_parts(header, data_time))
    env.heartbeat.subject = header.mn
    env.heartbeat.state = STATUS_STATES.get(header.cn, f"CN {header.cn}")
    fields = [(key, value) for key, value in packet.cp if key != "DataTime"]
    for key, value in fields[:_MAX_STATUS_FIELDS]:
        env.attributes[f"hj212.cp.{key[:64]}"] = value[:_MAX_STATUS_VALUE_CHARS]
    if len(fields) > _MAX_STATUS_FIELDS:
        env.attributes["hj212.cp.omitted"] = str(len(fields) - _MAX_STATUS_FIELDS)
    restart = packet.get("RestartTime")
    if restart is not None:
        env.attributes["hj212.restart_time"] = parse_time(restart, "CP.RestartTime", header).isoformat()
    return env


# -- pieces ------------------------------------------------------------------------------------------


def _id_parts(header: Header, data_time: str) -> tuple[str, ...]:
    part = f"{header.pno}/{header.pnum}" if header.pno is not None else ""
    return header.mn, header.cn, data_time, header.qn or "", part


def _cp_required(packet: Packet, key: str) -> str:
    value = packet.get(key)
    if not value:
        raise Hj212Error("required in CP", field=f"CP.{key}", kind="missing", header=packet.header)
    return value


def _checked_time(text: str, field: str, header: Header, now: float) -> dt.datetime:
    moment = parse_time(text, field, header)
    seconds = moment.timestamp()
    if seconds < EARLIEST_TIME_S:
        raise Hj212Error(
            f"{text} is before 2000 (the station's clock is not set)", field=field, kind="clock", header=header
        )
    if seconds > now + _MAX_CLOCK_SKEW_S:
        raise Hj212Error(
            f"{text} (Beijing time) is more than {_MAX_CLOCK_SKEW_S:g} s ahead of the gateway's clock "
            "(the station's clock is wrong)",
            field=field,
            kind="clock",
            header=header,
        )
    return moment


def _readings(packet: Packet, observed: dt.datetime) -> tuple[list[Reading], list[str]]:
    """The numeric values of the packet, and the keys it carries that are neither values nor known."""
    header = packet.header
    flags: dict[str, str] = {}
    sampled: dict[str, dt.datetime] = {}
    values: list[tuple[str, str, str]] = []
    unparsed: list[str] = []
    for key, value in packet.cp:
        code, dash, kind = key.rpartition("-")
        if not dash or not code or not kind:
            if key != "DataTime":
                unparsed.append(key)
            continue
        if kind == "Flag":
            flags[code] = value
        elif kind == "SampleTime":
            sampled[code] = parse_time(value, f"CP.{key}", header)
        elif kind in codes.QUALIFIER_KINDS:
            continue  # EFlag: the instrument's own state code, not a reading
        elif kind in codes.NUMERIC_KINDS or _NUMBER.fullmatch(value):
            values.append((code, kind, value))
        else:
            unparsed.append(key)
    readings = []
    for code, kind, text in values:
        flag = flags.get(code, "")
        if not text:
            number, quality = 0.0, pb.MISSING
        elif _NUMBER.fullmatch(text) and math.isfinite(number := float(text)):
            quality = FLAG_QUALITY.get(flag, UNKNOWN_FLAG_QUALITY) if flag else pb.QUALITY_UNSPECIFIED
        else:
            raise Hj212Error(f"{text[:40]!r} is not a number", field=f"CP.{code}-{kind}", header=header)
        readings.append(Reading(code, kind, number, quality, flag, sampled.get(code, observed)))
    return readings, unparsed


def _limits_of(station: Station, reading: Reading) -> Limits | None:
    limits = station.limits
    if not limits:
        return None
    found = limits.get(reading.metric)
    if found is None and reading.kind in codes.LIMITED_KINDS:
        found = limits.get(reading.code)
        known = codes.pollutant(reading.code)
        if found is None and known is not None and known.current:
            found = limits.get(known.current)
    return found


def _crossing(reading: Reading, limits: Limits) -> str:
    """How ``reading`` crosses ``limits`` ("" when it does not)."""
    if limits.high is not None and reading.value > limits.high:
        return f"{reading.metric} {reading.value:g} above {limits.high:g}"
    if limits.low is not None and reading.value < limits.low:
        return f"{reading.metric} {reading.value:g} below {limits.low:g}"
    return ""


def _severity(readings: list[Reading], station: Station) -> pb.Severity:
    for reading in readings:
        limits = _limits_of(station, reading)
        if limits is not None and limits.high is not None and limits.high > 0 and reading.value >= 2 * limits.high:
            return pb.ORANGE
    return pb.YELLOW


@dataclass(frozen=True, slots=True)
class _Source:
    """What every envelope of one packet is made from."""

    packet: Packet
    station: Station
    now: float
    original_format: str
    system: str
    observed: dt.datetime
    observed_ms: int  # of ``observed``, computed once for the envelope and every reading taken then


def _observation(source: _Source, readings: list[Reading]) -> pb.Envelope:
    header = source.packet.header
    env = _base(source, pb.OBSERVATION)
    obs = env.observation
    obs.station_id = header.mn
    obs.station_name = source.station.name
    obs.station_type = codes.SYSTEMS.get(header.st, f"ST {header.st}")
    obs.interval = codes.DATA_INTERVALS[header.cn]
    for reading in readings:
        m = obs.measurements.add(
            metric=reading.metric,
            value=reading.value,
            unit=codes.unit_of(reading.code, reading.kind, header.st),
            quality=reading.quality,
            flag=reading.flag,
        )
        _set_millis(m.at, source.observed_ms if reading.at is source.observed else _millis(reading.at))
    return env


def _base(source: _Source, kind: pb.Kind) -> pb.Envelope:
    packet, station = source.packet, source.station
    header = packet.header
    env = pb.Envelope(kind=kind, region=station.region, status=pb.ACTUAL, priority=ROUTINE_PRIORITY)
    env.origin.agency = station.agency
    env.origin.region = station.region
    env.origin.system = source.system
    _set_millis(env.observed_at, source.observed_ms)
    _set_millis(env.sent_at, int(source.now * 1000))
    if station.lat is not None and station.lon is not None:
        env.geometry.point.lat = station.lat
        env.geometry.point.lon = station.lon
    env.provenance.original_format = source.original_format
    env.provenance.original_id = header.qn or f"{header.mn}/{header.cn}/{packet.get('DataTime')}"
    env.attributes["hj212.cn"] = header.cn
    env.attributes["hj212.st"] = header.st
    if header.pno is not None:
        env.attributes["hj212.packet"] = f"{header.pno}/{header.pnum}"
    return env


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MILLISECOND = dt.timedelta(milliseconds=1)


def _millis(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _MILLISECOND


def _set_millis(timestamp: Timestamp, millis: int) -> None:
    """``Timestamp.FromMilliseconds`` without its checks and call layers (a few per reading, on every upload)."""
    seconds, rest = divmod(millis, 1000)
    timestamp.seconds = seconds
    timestamp.nanos = rest * 1_000_000
