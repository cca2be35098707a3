"""Cursor-on-Target (CoT 2.0 XML events, as TAK clients speak them) to canonical envelopes and back.

Sans-IO: ``parse_event`` reads the bytes of one ``<event>`` into a ``CotEvent``; ``to_envelope``
maps it; ``CotCodec.decode`` reads a file or a stream capture of events (framed by
``framing.StreamDecoder``); ``encode_envelope`` writes the events a TAK client shows for one
envelope; ``encode_ping`` writes the keep-alive a TAK server exchanges with its clients.

Decisions this module makes, so that a reader need not reverse them out of the code:

* Inbound, by type (``types`` names them):

  - atoms ``a-<affiliation>-<dimension>-...`` (units, vehicles, aircraft of any affiliation) are
    POSITION envelopes: ``unit_id`` = uid, ``callsign`` = ``<contact callsign>``, ``unit_type`` = the
    CoT type, ``speed_mps``/``course_deg`` = ``<track>``; the point is the envelope's geometry.
  - map points ``b-m-p-...`` (spot markers, waypoints) are POSITION envelopes of the marker too: a
    marker is a placed, labelled thing with an id and a type, and updates of it replace it (TAK
    moves a marker by sending its uid again), exactly like a unit's position.
  - emergency alerts ``b-a-o-...`` (the TAK 911 / ring-the-bell / troops-in-contact buttons) and
    MITRE alarms ``b-l-...`` are INCIDENT envelopes, ``incident_id`` = uid (TAK keeps one uid per
    alert), ``event_type`` = the CoT type, stage initial, priority 0; ``b-a-o-can`` (the alert
    cancelled) is the final report of the same incident.
  - GeoChat ``b-t-f``, pings ``t-x-c-t``, deletes ``t-x-d-d``, drawings ``u-d-...`` and any other
    type are refused with kind ``unsupported`` and the reason: chat is talk between TAK users, not
    information the canonical model has a kind for, and the others are TAK's own control or
    presentation traffic.

* Times: ``time`` is both ``observed_at`` and ``sent_at``; ``stale`` is ``expires_at`` (when it is
  after ``time``). The id is ``stable_id("cot", uid, time)`` with the time normalised to the
  nanosecond, so the same event received twice (or from two TAK servers) is stored once.
* Region: CoT carries no administrative region, so it is the config's ``region`` (required).
  Agency: the config's, ``fire_rescue`` by default. Status: the config's ``status`` (``actual`` by
  default), and TEST for any event whose ``how`` is ``m-s`` (simulated).
* ``hae``, ``ce`` and ``le`` of 9999999 mean unknown (CoT's convention) and are left out; a known
  ``hae`` is the point's altitude (metres above the WGS 84 ellipsoid). ``how``, the team
  (``__group``), remarks, the creator (``link`` relation ``p-p``), the colour and the icon set
  are kept as ``cot.*`` attributes so that export gives the same picture back. Other ``<detail>``
  children (device, battery, precision) are not carried: CoT's detail is open-ended by design.

* Outbound (``encode_envelope``): POSITION -> the unit's event (uid = ``unit_id``, type =
  ``unit_type`` or ``a-f-G``); INCIDENT -> its CoT type when it came from CoT, else a red spot
  marker ``b-m-p-s-m`` (uid = ``incident_id``, so later reports move and update one marker), with
  title, description, address and casualties in the remarks; ALERT -> a spot marker coloured by
  the warning's colour at the first area's centre (or the region's seat), uid = the envelope id,
  with headline, description and instruction in the remarks, plus one drawn shape per polygon
  (``u-d-f``) and circle of some radius (``u-d-c-c``), uids ``<id>.shape<k>``; a Cancel alert deletes the markers
  of the alerts it references (``t-x-d-d``). Other kinds are refused (``unsupported``).
* Stale times out: ``expires_at`` when it is after the event's time, else ``position_stale_s``
  (180 s) after a position, ``incident_stale_s`` (24 h) after an incident and ``alert_stale_s``
  (24 h) after a warning.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from xml.etree.ElementTree import Element

from google.protobuf.timestamp_pb2 import Timestamp
from yiwang.v1 import envelope_pb2 as pb

from adapters import safexml
from adapters.cot import types
from adapters.cot.framing import MAX_EVENT_BYTES, StreamDecoder, check_datagram
from adapters.errors import AdapterError
from adapters.plugin import AdapterConfig, AdapterContext, ReportingCodec, stable_id
from gateway.errors import ConfigError, InvalidEnvelopeError
from gateway.validation import Validator

FORMAT = "cot"
#: CoT's value for an unknown height or error.
UNKNOWN = 9999999.0
#: ``how`` for what did not come from a CoT source (MITRE: "garbage in, garbage out", i.e. non-CoT).
HOW_NOT_COT = "h-g-i-g-o"
DEFAULT_UNIT_TYPE = "a-f-G"
MARKER_TYPE = "b-m-p-s-m"
POLYGON_TYPE = "u-d-f"
CIRCLE_TYPE = "u-d-c-c"
DELETE_TYPE = "t-x-d-d"
#: The warning colours as TAK's signed 32-bit ARGB integers.
ARGB_OF_SEVERITY = {
    pb.RED: -65536,  # 0xFFFF0000
    pb.ORANGE: -23296,  # 0xFFFFA500
    pb.YELLOW: -256,  # 0xFFFFFF00
    pb.BLUE: -16776961,  # 0xFF0000FF
    pb.SEVERITY_UNSPECIFIED: -1,  # white
}
INCIDENT_ARGB = -65536
STATUS_OF_CONFIG = {"actual": pb.ACTUAL, "exercise": pb.EXERCISE, "test": pb.TEST}
#: TAK's own emergency buttons: the highest priority; other alarms come next.
URGENT_TYPES = frozenset({"b-a-o-tbl", "b-a-o-pan", "b-a-o-opn", "b-a-o-c"})

# Attributes kept from <detail> (see the module docstring).
ATTR_HOW = "cot.how"
ATTR_GROUP = "cot.group"
ATTR_ROLE = "cot.role"
ATTR_REMARKS = "cot.remarks"
ATTR_PARENT = "cot.parent_uid"
ATTR_PARENT_TYPE = "cot.parent_type"
ATTR_PARENT_CALLSIGN = "cot.parent_callsign"
ATTR_COLOR = "cot.color"
ATTR_ICON = "cot.iconsetpath"
ATTR_CE = "cot.ce"
ATTR_LE = "cot.le"
ATTR_EMERGENCY = "cot.emergency"

_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9})\d*)?(Z|[+-]\d\d:\d\d)")
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ARGB = re.compile(r"-?\d{1,10}")
_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'


@dataclass(frozen=True, kw_only=True)
class CotConfig(AdapterConfig):
    """Options of the CoT adapter, besides agency, region (required inbound) and system."""

    max_event_bytes: int = field(default=MAX_EVENT_BYTES, metadata={"doc": "largest CoT event accepted, in bytes"})
    status: str = field(
        default="actual",
        metadata={"doc": "status of what comes in: actual, exercise or test (a TAK server used in a drill)"},
    )
    position_stale_s: float = field(
        default=180.0, metadata={"doc": "export: seconds a position stays fresh when its envelope has no expiry"}
    )
    incident_stale_s: float = field(
        default=86400.0, metadata={"doc": "export: seconds an incident stays shown when its envelope has no expiry"}
    )
    alert_stale_s: float = field(
        default=86400.0, metadata={"doc": "export: seconds a warning stays shown when its envelope has no expiry"}
    )

    def __post_init__(self) -> None:
        if self.status not in STATUS_OF_CONFIG:
            raise ConfigError(f"{self.status!r} is not one of {', '.join(STATUS_OF_CONFIG)}", key="status")
        if self.max_event_bytes < 64:
            raise ConfigError(f"{self.max_event_bytes} bytes is too small for any CoT event", key="max_event_bytes")
        for key in ("position_stale_s", "incident_stale_s", "alert_stale_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{value} is not a positive number of seconds", key=key)


# -- the event ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CotPoint:
    lat: float
    lon: float
    hae: float | None  # metres above the WGS 84 ellipsoid; None when unknown
    ce: float | None  # circular error, metres
    le: float | None  # linear (vertical) error, metres


@dataclass(frozen=True, slots=True)
class CotDetail:
    """What is read from ``<detail>``."""

    callsign: str = ""  # <contact callsign>
    group: str = ""  # <__group name> (the team colour)
    role: str = ""  # <__group role>
    speed: float | None = None  # <track speed>, m/s
    course: float | None = None  # <track course>, degrees from true north, 0..360
    remarks: str = ""
    parent_uid: str = ""  # <link relation="p-p" uid>: who made it
    parent_type: str = ""
    parent_callsign: str = ""
    color: str = ""  # <color argb>
    iconsetpath: str = ""  # <usericon iconsetpath>
    emergency: str = ""  # <emergency type>
    chat_sender: str = ""  # <__chat senderCallsign>
    chat_room: str = ""  # <__chat chatroom>


@dataclass(frozen=True, slots=True)
class CotEvent:
    """One CoT event as read, before it is mapped: what a TAK server routes on (uid, type, times)."""

    uid: str
    type: str
    how: str
    time: Timestamp
    start: Timestamp
    stale: Timestamp | None
    point: CotPoint
    detail: CotDetail = field(default_factory=CotDetail)


def parse_event(data: bytes, *, limit: int = MAX_EVENT_BYTES) -> CotEvent:
    """The event of one ``<event>`` document, parsed with DTDs and entities refused."""
    return read_event(safexml.parse(data, limit=limit))


def read_event(root: Element) -> CotEvent:
    """The event of a parsed ``<event>`` element."""
    tag = root.tag if isinstance(root.tag, str) else ""
    if tag != "event":
        raise AdapterError(f"the root element is <{tag}>, not a CoT <event>", field="event", kind="unsupported")
    version = root.get("version")
    if version is not None and version.strip() not in {"2.0", "2"}:
        raise AdapterError(
            f"CoT version {version[:20]!r} is not read (only 2.0)", field="event.version", kind="unsupported"
        )
    uid = _required(root, "uid", "event")
    cot_type = _required(root, "type", "event")
    if not types.TYPE_SYNTAX.fullmatch(cot_type):
        raise AdapterError(f"{cot_type[:60]!r} is not a CoT type (dash-separated parts)", field="event.type")
    time = parse_time(_required(root, "time", "event"), "event.time")
    start_text = (root.get("start") or "").strip()
    start = parse_time(start_text, "event.start") if start_text else time
    stale_text = (root.get("stale") or "").strip()
    stale = parse_time(stale_text, "event.stale") if stale_text else None
    point_element = root.find("point")
    if point_element is None:
        raise AdapterError("required", field="event.point", kind="missing")
    point = _point(point_element)
    detail = root.find("detail")
    return CotEvent(
        uid=uid,
        type=cot_type,
        how=(root.get("how") or "").strip(),
        time=time,
        start=start,
        stale=stale,
        point=point,
        detail=CotDetail() if detail is None else _detail(detail),
    )


def _required(element: Element, name: str, path: str) -> str:
    value = (element.get(name) or "").strip()
    if not value:
        raise AdapterError("required", field=f"{path}.{name}", kind="missing")
    return value


def parse_time(text: str, path: str) -> Timestamp:
    """A CoT time (xs:dateTime, ``2020-02-08T18:11:34.000Z``) as a Timestamp, to the nanosecond."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise AdapterError(f"{text[:40]!r} is not a CoT time (YYYY-MM-DDThh:mm:ss[.fff]Z)", field=path)
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    offset = dt.timedelta(0)
    if zone != "Z":
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 14 or minutes > 59:
            raise AdapterError(f"{text[:40]!r} has an impossible UTC offset", field=path)
        offset = dt.timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
    try:
        moment = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=dt.timezone(offset)
        )
        seconds = int(moment.timestamp())
    except (ValueError, OverflowError) as exc:
        raise AdapterError(f"{text[:40]!r} is not a valid time: {exc}", field=path) from None
    nanos = int((fraction or "0").ljust(9, "0"))
    return Timestamp(seconds=seconds, nanos=nanos)


def _number(element: Element, name: str, path: str, *, required: bool) -> float | None:
    text = element.get(name)
    if text is None or not text.strip():
        if required:
            raise AdapterError("required", field=f"{path}.{name}", kind="missing")
        return None
    if not _NUMBER.fullmatch(text):
        raise AdapterError(f"{text[:40]!r} is not a number", field=f"{path}.{name}")
    value = float(text)
    if not math.isfinite(value):
        raise AdapterError(f"{text[:40]!r} is out of range", field=f"{path}.{name}")
    return value


def _point(element: Element) -> CotPoint:
    lat = _number(element, "lat", "event.point", required=True)
    lon = _number(element, "lon", "event.point", required=True)
    assert lat is not None  # required
    assert lon is not None
    if not -90.0 <= lat <= 90.0:
        raise AdapterError(f"{lat} is not a latitude in -90..90", field="event.point.lat")
    if not -180.0 <= lon <= 180.0:
        raise AdapterError(f"{lon} is not a longitude in -180..180", field="event.point.lon")
    hae, ce, le = (_number(element, name, "event.point", required=False) for name in ("hae", "ce", "le"))
    return CotPoint(lat=lat, lon=lon, hae=_known(hae), ce=_known(ce), le=_known(le))


def _known(value: float | None) -> float | None:
    return None if value is None or value >= UNKNOWN else value


def _track(track: Element | None) -> tuple[float | None, float | None]:
    if track is None:
        return None, None
    speed = _number(track, "speed", "event.detail.track", required=False)
    course = _number(track, "course", "event.detail.track", required=False)
    if speed is not None and speed < 0:
        raise AdapterError(f"{speed} is not a speed (negative)", field="event.detail.track.speed")
    if course is not None:
        course %= 360.0
    return speed, course


def _detail(detail: Element) -> CotDetail:
    speed, course = _track(detail.find("track"))
    values: dict[str, str] = {}
    contact = detail.find("contact")
    if contact is not None:
        values["callsign"] = contact.get("callsign") or ""
    group = detail.find("__group")
    if group is not None:
        values["group"] = group.get("name") or ""
        values["role"] = group.get("role") or ""
    remarks = detail.find("remarks")
    if remarks is not None:
        if len(remarks):
            raise AdapterError("must hold text, not elements", field="event.detail.remarks")
        values["remarks"] = remarks.text or ""
    for link in detail.findall("link"):
        if link.get("relation") == "p-p" and link.get("uid"):
            values["parent_uid"] = (link.get("uid") or "").strip()
            values["parent_type"] = (link.get("type") or "").strip()
            values["parent_callsign"] = link.get("parent_callsign") or ""
            break
    color = detail.find("color")
    if color is not None and _ARGB.fullmatch(color.get("argb") or ""):
        values["color"] = color.get("argb") or ""
    icon = detail.find("usericon")
    if icon is not None:
        values["iconsetpath"] = (icon.get("iconsetpath") or "").strip()
    emergency = detail.find("emergency")
    if emergency is not None:
        values["emergency"] = (emergency.get("type") or emergency.text or "").strip()
    chat = detail.find("__chat")
    if chat is not None:
        values["chat_sender"] = (chat.get("senderCallsign") or "").strip()
        values["chat_room"] = (chat.get("chatroom") or "").strip()
    return CotDetail(speed=speed, course=course, **values)


# -- the event as an envelope -------------------------------------------------------------------


def to_envelope(
    event: CotEvent, config: CotConfig, context: AdapterContext, validator: Validator | None = None
) -> pb.Envelope:
    """The canonical envelope of an event (see the module docstring for the mapping)."""
    kind = _kind_of(event)
    if not config.region:
        raise AdapterError(
            "CoT carries no administrative region: set the adapter config's `region`", field="region", kind="missing"
        )
    env = pb.Envelope(id=stable_id("cot", event.uid, f"{event.time.seconds}.{event.time.nanos:09d}"), kind=kind)
    env.region = config.region
    env.origin.agency = config.agency or "fire_rescue"
    env.origin.region = config.region
    env.origin.system = config.system or FORMAT
    env.status = pb.TEST if event.how.startswith("m-s") else STATUS_OF_CONFIG[config.status]
    env.sent_at.CopyFrom(event.time)
    env.observed_at.CopyFrom(event.time)
    if event.stale is not None and event.stale.ToNanoseconds() > event.time.ToNanoseconds():
        env.expires_at.CopyFrom(event.stale)
    point = env.geometry.point
    point.lat, point.lon = event.point.lat, event.point.lon
    if event.point.hae is not None:
        point.altitude_m = event.point.hae
    env.provenance.original_format = FORMAT
    env.provenance.original_id = event.uid
    _keep_attributes(env, event)
    if kind == pb.POSITION:
        env.priority = 2
        position = env.position
        position.unit_id = event.uid
        position.callsign = event.detail.callsign
        position.unit_type = event.type
        position.speed_mps = event.detail.speed or 0.0
        position.course_deg = event.detail.course or 0.0
    else:
        cancelled = types.is_cancel(event.type)
        env.priority = 0 if event.type in URGENT_TYPES else 1
        incident = env.incident
        incident.incident_id = event.uid
        incident.event_type = event.type
        incident.event_name = types.describe(event.type)
        incident.stage = pb.STAGE_FINAL if cancelled else pb.STAGE_INITIAL
        if not cancelled:
            incident.report_number = 1
        incident.title = event.detail.callsign or incident.event_name
        incident.description = event.detail.remarks
        incident.reporter = event.detail.parent_callsign or event.detail.callsign
        incident.occurred_at.CopyFrom(event.time)
    _check_canonical(env, context, validator)
    return env


def _kind_of(event: CotEvent) -> pb.Kind:
    cot_type = event.type
    if types.is_atom(cot_type) or types.is_marker(cot_type):
        return pb.POSITION
    if types.is_emergency(cot_type):
        return pb.INCIDENT
    name = types.describe(cot_type)
    if cot_type == "b-t-f" or cot_type.startswith("b-t-f-"):
        who = f" from {event.detail.chat_sender}" if event.detail.chat_sender else ""
        room = f" to {event.detail.chat_room}" if event.detail.chat_room else ""
        reason = (
            f"a GeoChat message (b-t-f){who}{room}: chat between TAK users is not information the canonical "
            "model has a kind for, so it is not forwarded"
        )
    elif cot_type.startswith("t-"):
        reason = f"{name} ({cot_type}) is TAK control traffic between a client and its server, not information"
    elif cot_type.startswith("u-"):
        reason = f"{name} ({cot_type}) is a drawing on a TAK client's map; drawings are not read"
    elif cot_type.startswith("a-"):
        reason = (
            f"{cot_type!r} is not an atom with a known affiliation "
            f"({', '.join(types.AFFILIATIONS)}) and dimension ({', '.join(types.DIMENSIONS)})"
        )
    else:
        reason = f"{name}: events of type {cot_type} are not mapped to a canonical kind"
    raise AdapterError(reason, field="event.type", kind="unsupported")


def _keep_attributes(env: pb.Envelope, event: CotEvent) -> None:
    attributes = env.attributes
    for key, value in (
        (ATTR_HOW, event.how),
        (ATTR_GROUP, event.detail.group),
        (ATTR_ROLE, event.detail.role),
        (ATTR_PARENT, event.detail.parent_uid),
        (ATTR_PARENT_TYPE, event.detail.parent_type),
        (ATTR_PARENT_CALLSIGN, event.detail.parent_callsign),
        (ATTR_COLOR, event.detail.color),
        (ATTR_ICON, event.detail.iconsetpath),
        (ATTR_EMERGENCY, event.detail.emergency),
    ):
        if value:
            attributes[key] = value
    if event.detail.remarks and env.kind == pb.POSITION:  # an incident carries them as its description
        attributes[ATTR_REMARKS] = event.detail.remarks
    if event.point.ce is not None:
        attributes[ATTR_CE] = _plain(event.point.ce)
    if event.point.le is not None:
        attributes[ATTR_LE] = _plain(event.point.le)


def _check_canonical(env: pb.Envelope, context: AdapterContext, validator: Validator | None) -> None:
    """What the gateway would refuse at the door is refused here, as the codec's own error."""
    check = validator or Validator(context.regions)
    try:
        check.check(env, env.ByteSize(), None if context.now is None else context.now())
    except InvalidEnvelopeError as exc:
        raise AdapterError(
            f"the envelope breaks the canonical model at {exc.field}: {exc.reason}", field="event", kind="canonical"
        ) from None


# -- the codec ----------------------------------------------------------------------------------


class CotCodec(ReportingCodec):
    """Sans-IO CoT codec: events in (a file, a stream capture or one datagram), events out."""

    def __init__(self, config: CotConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self.validator = Validator(context.regions)

    def decode_report(self, data: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
        """The envelopes of the events in ``data`` (one or many, back to back) and an error for each
        event or run of bytes that could not be read."""
        framer = StreamDecoder(self.config.max_event_bytes)
        items = [*framer.feed(data), *framer.end()]
        if not items:
            raise AdapterError("no CoT <event> in the input", offset=0, kind="missing")
        envelopes: list[pb.Envelope] = []
        errors: list[AdapterError] = []
        for item in items:
            if isinstance(item, AdapterError):
                errors.append(item)
                continue
            try:
                envelopes.append(self.decode_event(item))
            except AdapterError as exc:
                errors.append(exc)
        return envelopes, errors

    def decode_event(self, document: bytes) -> pb.Envelope:
        """The envelope of one complete event (as ``StreamDecoder`` hands them out)."""
        event = parse_event(document, limit=self.config.max_event_bytes)
        return to_envelope(event, self.config, self.context, self.validator)

    def decode_datagram(self, datagram: bytes) -> pb.Envelope:
        """The envelope of the one event a UDP datagram carries."""
        return self.decode_event(check_datagram(datagram, self.config.max_event_bytes))

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:
        """The events of every envelope, back to back (as a TAK stream carries them), each on its line."""
        return b"".join(event + b"\n" for env in envelopes for event in encode_envelope(env, self.config, self.context))


# -- writing ------------------------------------------------------------------------------------


def encode_envelope(env: pb.Envelope, config: CotConfig, context: AdapterContext | None = None) -> list[bytes]:
    """The CoT events that show ``env`` on a TAK client (one for a unit or incident, a marker and its
    shapes for a warning)."""
    if env.kind == pb.POSITION and env.WhichOneof("payload") == "position":
        return [_position_event(env, config)]
    if env.kind == pb.INCIDENT and env.WhichOneof("payload") == "incident":
        return [_incident_event(env, config, context)]
    if env.kind == pb.ALERT and env.WhichOneof("payload") == "alert":
        return _alert_events(env, config, context)
    raise AdapterError(
        f"CoT export carries positions, incidents and warnings, not {pb.Kind.Name(env.kind)}",
        field="kind",
        kind="unsupported",
    )


def encode_ping(uid: str, now: float, *, reply: bool = False, stale_s: float = 20.0) -> bytes:
    """A TAK keep-alive (``t-x-c-t``), or the answer to one (``t-x-c-t-r``), from ``uid`` at ``now``
    (POSIX seconds)."""
    moment = _stamp(now)
    event = _Event(
        uid=uid,
        cot_type=types.PING_REPLY if reply else types.PING,
        how="m-g",
        time=moment,
        stale=_stamp(now + stale_s),
        lat=0.0,
        lon=0.0,
    )
    return event.bytes()


def _position_event(env: pb.Envelope, config: CotConfig) -> bytes:
    position = env.position
    if not env.geometry.HasField("point"):
        raise AdapterError("a position needs geometry.point", field="geometry.point", kind="canonical")
    unit_type = position.unit_type if types.TYPE_SYNTAX.fullmatch(position.unit_type) else DEFAULT_UNIT_TYPE
    time = _time_of(env)
    attributes = env.attributes
    event = _Event(
        uid=position.unit_id or env.id,
        cot_type=unit_type,
        how=attributes.get(ATTR_HOW) or HOW_NOT_COT,
        time=time,
        stale=_stale(env, time, config.position_stale_s),
        lat=env.geometry.point.lat,
        lon=env.geometry.point.lon,
        hae=env.geometry.point.altitude_m if env.geometry.point.HasField("altitude_m") else None,
        ce=attributes.get(ATTR_CE, ""),
        le=attributes.get(ATTR_LE, ""),
    )
    event.contact(position.callsign or position.unit_id or env.id)
    event.group(attributes.get(ATTR_GROUP, ""), attributes.get(ATTR_ROLE, ""))
    event.element("track", speed=_plain(position.speed_mps), course=_plain(position.course_deg))
    event.common(attributes)
    event.remarks(attributes.get(ATTR_REMARKS, ""))
    return event.bytes()


def _incident_event(env: pb.Envelope, config: CotConfig, context: AdapterContext | None) -> bytes:
    incident = env.incident
    lat, lon = _centre(env, context)
    time = _time_of(env)
    from_cot = types.is_emergency(incident.event_type)
    attributes = env.attributes
    event = _Event(
        uid=incident.incident_id or env.id,
        cot_type=incident.event_type if from_cot else MARKER_TYPE,
        how=attributes.get(ATTR_HOW) or HOW_NOT_COT,
        time=time,
        stale=_stale(env, time, config.incident_stale_s),
        lat=lat,
        lon=lon,
        hae=env.geometry.point.altitude_m if env.geometry.point.HasField("altitude_m") else None,
        ce=attributes.get(ATTR_CE, ""),
        le=attributes.get(ATTR_LE, ""),
    )
    title = incident.title or incident.event_name or incident.event_type
    event.contact(title)
    if from_cot and attributes.get(ATTR_EMERGENCY):
        event.element("emergency", text=title, type=attributes[ATTR_EMERGENCY])
    if not attributes.get(ATTR_COLOR) and not from_cot:
        event.element("color", argb=str(INCIDENT_ARGB))
    event.common(attributes)
    lines = [incident.description] if from_cot else _incident_lines(incident)
    event.remarks("\n".join(line for line in lines if line))
    return event.bytes()


def _incident_lines(incident: pb.Incident) -> list[str]:
    lines = [incident.title, incident.event_name, incident.description]
    if incident.address:
        lines.append(f"Address: {incident.address}")
    counts = incident.casualties
    named = [
        f"{label} {value}"
        for label, value in (
            ("dead", counts.dead),
            ("missing", counts.missing),
            ("injured", counts.injured),
            ("trapped", counts.trapped),
            ("evacuated", counts.evacuated),
        )
        if value
    ]
    if named:
        lines.append("Casualties: " + ", ".join(named))
    if incident.reporter:
        lines.append(f"Reported by {incident.reporter}")
    return lines


def _alert_events(env: pb.Envelope, config: CotConfig, context: AdapterContext | None) -> list[bytes]:
    alert = env.alert
    time = _time_of(env)
    if alert.msg_type == "Cancel":
        if not env.references:
            raise AdapterError("a Cancel names no warning to take down", field="references", kind="canonical")
        return [_delete_event(reference, time) for reference in env.references]
    stale = _stale(env, time, config.alert_stale_s)
    info = alert.infos[0] if alert.infos else pb.AlertInfo()
    colour = str(ARGB_OF_SEVERITY.get(env.severity, -1))
    lat, lon = _centre(env, context)
    marker = _Event(uid=env.id, cot_type=MARKER_TYPE, how=HOW_NOT_COT, time=time, stale=stale, lat=lat, lon=lon)
    label = info.headline or info.event or alert.identifier or env.id
    marker.contact(label)
    marker.element("color", argb=colour)
    lines = [info.headline, info.event if info.event != info.headline else "", info.description, info.instruction]
    if info.severity or info.urgency:
        lines.append(" / ".join(part for part in (info.severity, info.urgency, info.certainty) if part))
    if env.HasField("expires_at"):
        lines.append("Expires " + _format_time(env.expires_at))
    marker.remarks("\n".join(line for line in lines if line))
    events = [marker.bytes()]
    for k, (polygons, circles) in enumerate(_shapes(env)):
        shape_uid = f"{env.id}.shape{k}"
        if polygons is not None:
            shape = _Event(
                uid=shape_uid,
                cot_type=POLYGON_TYPE,
                how=HOW_NOT_COT,
                time=time,
                stale=stale,
                lat=polygons.points[0].lat,
                lon=polygons.points[0].lon,
            )
            for p in polygons.points:
                shape.element("link", point=f"{_plain(p.lat)},{_plain(p.lon)}")
        else:
            assert circles is not None
            shape = _Event(
                uid=shape_uid,
                cot_type=CIRCLE_TYPE,
                how=HOW_NOT_COT,
                time=time,
                stale=stale,
                lat=circles.center.lat,
                lon=circles.center.lon,
            )
            radius = _plain(circles.radius_m)
            shape.raw(f'<shape><ellipse major="{radius}" minor="{radius}" angle="360"/></shape>')
        shape.contact(label)
        shape.element("strokeColor", value=colour)
        shape.element("strokeWeight", value="3.0")
        shape.element("fillColor", value=str(_translucent(int(colour))))
        shape.element("labels_on", value="false")
        shape.element("link", uid=env.id, relation="p-p", type=MARKER_TYPE)
        events.append(shape.bytes())
    return events


def _shapes(env: pb.Envelope) -> list[tuple[pb.Polygon | None, pb.Circle | None]]:
    """Each polygon and circle of the warning once (language variants repeat the same areas)."""
    seen: set[bytes] = set()
    shapes: list[tuple[pb.Polygon | None, pb.Circle | None]] = []
    areas = [area for info in env.alert.infos for area in info.areas]
    for polygons, circles in [(a.polygons, a.circles) for a in areas] + [(env.geometry.polygons, env.geometry.circles)]:
        for polygon in polygons:
            key = b"p" + polygon.SerializeToString(deterministic=True)
            if key not in seen and polygon.points:
                seen.add(key)
                shapes.append((polygon, None))
        for circle in circles:
            key = b"c" + circle.SerializeToString(deterministic=True)
            if key not in seen and circle.radius_m > 0:  # a circle of radius 0 is a point: the marker shows it
                seen.add(key)
                shapes.append((None, circle))
    return shapes


def _translucent(argb: int) -> int:
    """The colour with a quarter of its opacity, for a shape's fill."""
    unsigned = argb & 0xFFFFFFFF
    value = (0x40 << 24) | (unsigned & 0xFFFFFF)
    return value - (1 << 32) if value >= 1 << 31 else value


def _delete_event(target: str, time: Timestamp) -> bytes:
    event = _Event(
        uid=f"{target}.delete",
        cot_type=DELETE_TYPE,
        how=HOW_NOT_COT,
        time=time,
        stale=_after(time, 20.0),
        lat=0.0,
        lon=0.0,
    )
    event.element("link", uid=target, relation="none", type="none")
    event.element("__forcedelete")
    return event.bytes()


def _centre(env: pb.Envelope, context: AdapterContext | None) -> tuple[float, float]:
    """Where to put the marker of an incident or warning."""
    geometry = env.geometry
    if geometry.HasField("point"):
        return geometry.point.lat, geometry.point.lon
    areas = [area for info in env.alert.infos for area in info.areas] if env.HasField("alert") else []
    polygons = list(geometry.polygons) + [p for a in areas for p in a.polygons]
    circles = list(geometry.circles) + [c for a in areas for c in a.circles]
    if polygons and polygons[0].points:
        ring = polygons[0].points[:-1] or polygons[0].points
        return sum(p.lat for p in ring) / len(ring), sum(p.lon for p in ring) / len(ring)
    if circles:
        return circles[0].center.lat, circles[0].center.lon
    place = context.places.point_of(env.region) if context is not None else None
    if place is not None:
        return place.lat, place.lon
    raise AdapterError(
        f"nothing to place it at: no geometry, and no known seat for region {env.region!r}",
        field="geometry",
        kind="canonical",
    )


def _time_of(env: pb.Envelope) -> Timestamp:
    if env.HasField("observed_at"):
        return env.observed_at
    if env.HasField("sent_at"):
        return env.sent_at
    raise AdapterError(
        "an envelope without sent_at or observed_at has no time to show", field="sent_at", kind="canonical"
    )


def _stale(env: pb.Envelope, time: Timestamp, default_s: float) -> Timestamp:
    if env.HasField("expires_at") and env.expires_at.ToNanoseconds() > time.ToNanoseconds():
        return env.expires_at
    return _after(time, default_s)


def _after(time: Timestamp, seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.ToNanoseconds() + round(seconds * 1e9))
    return stamp


def _stamp(posix: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(round(posix * 1e9))
    return stamp


def _format_time(stamp: Timestamp) -> str:
    """``2020-02-08T18:11:34.000Z``: milliseconds as TAK writes them, more digits only when needed."""
    try:
        moment = dt.datetime.fromtimestamp(stamp.seconds, dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise AdapterError(f"{stamp.seconds} s is not a time CoT can write", kind="canonical") from None
    nanos = stamp.nanos
    fraction = f"{nanos // 1_000_000:03d}" if nanos % 1_000_000 == 0 else f"{nanos:09d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction}Z"


def _plain(value: float) -> str:
    """A float as the shortest decimal that reads back as the same float, never in exponent form."""
    if not math.isfinite(value):
        raise AdapterError(f"{value} is not a finite number", kind="canonical")
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def _escape_text(text: str) -> str:
    # \n too, so that every event is one line (for line-based tools and logs)
    return safexml.escape_text(text).replace("\n", "&#10;")


_escape_attribute = safexml.escape_attribute


def _legal(text: str, what: str) -> str:
    illegal = _XML_ILLEGAL.search(text)
    if illegal:
        raise AdapterError(
            f"character U+{ord(illegal.group()):04X} cannot be written in XML", field=what, kind="canonical"
        )
    return text


class _Event:
    """One CoT event being written: the event's attributes and point, then ``<detail>`` children."""

    def __init__(
        self,
        *,
        uid: str,
        cot_type: str,
        how: str,
        time: Timestamp,
        stale: Timestamp,
        lat: float,
        lon: float,
        hae: float | None = None,
        ce: str = "",
        le: str = "",
    ) -> None:
        self.head = (
            f'<event version="2.0" uid="{_escape_attribute(_legal(uid, "uid"))}" '
            f'type="{_escape_attribute(_legal(cot_type, "type"))}" how="{_escape_attribute(_legal(how, "how"))}" '
            f'time="{_format_time(time)}" start="{_format_time(time)}" stale="{_format_time(stale)}">'
            f'<point lat="{_plain(lat)}" lon="{_plain(lon)}" hae="{_plain(UNKNOWN if hae is None else hae)}" '
            f'ce="{_number_or_unknown(ce)}" le="{_number_or_unknown(le)}"/>'
        )
        self.detail: list[str] = []

    def element(self, tag: str, /, text: str = "", **attributes: str) -> None:
        written = "".join(f' {key}="{_escape_attribute(_legal(v, key))}"' for key, v in attributes.items())
        if text:
            self.detail.append(f"<{tag}{written}>{_escape_text(_legal(text, tag))}</{tag}>")
        else:
            self.detail.append(f"<{tag}{written}/>")

    def raw(self, xml: str) -> None:
        self.detail.append(xml)

    def contact(self, callsign: str) -> None:
        self.element("contact", callsign=callsign)

    def group(self, name: str, role: str) -> None:
        if name or role:
            self.element("__group", name=name, role=role)

    def remarks(self, text: str) -> None:
        if text:
            self.element("remarks", text=text)

    def common(self, attributes: Mapping[str, str]) -> None:
        """The creator link, colour and icon kept from a CoT source."""
        parent = attributes.get(ATTR_PARENT, "")
        if parent:
            self.element(
                "link",
                uid=parent,
                relation="p-p",
                type=attributes.get(ATTR_PARENT_TYPE) or DEFAULT_UNIT_TYPE,
                parent_callsign=attributes.get(ATTR_PARENT_CALLSIGN, ""),
            )
        colour = attributes.get(ATTR_COLOR, "")
        if colour and _ARGB.fullmatch(colour):
            self.element("color", argb=colour)
        icon = attributes.get(ATTR_ICON, "")
        if icon:
            self.element("usericon", iconsetpath=icon)

    def bytes(self) -> bytes:
        detail = "<detail>" + "".join(self.detail) + "</detail>" if self.detail else "<detail/>"
        return (_DECLARATION + self.head + detail + "</event>").encode("utf-8")


def _number_or_unknown(text: str) -> str:
    if text and _NUMBER.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return _plain(value)
    return _plain(UNKNOWN)
