"""TAK protocol version 1: CoT events as protobuf ``TakMessage``s, read into and written from what the
XML path reads and writes. Sans-IO.

In: a message's ``CotEvent`` becomes the ``<event>`` element its XML form would parse to (its
``xmlDetail`` parsed by the hardened parser, the typed detail messages added as the elements they
stand for), and the codec reads that element as it reads any XML event. So a protobuf event and the
same event in XML give the same ``CotEvent`` and the same envelope, and are refused for the same
reasons. A message with no event (a mesh network's ``TakControl`` announcement) carries nothing to
take.

Out: ``encode_event`` turns an XML event as the codec writes it into a ``TakMessage``: the event's
attributes and point into their fields (times in milliseconds), ``<contact>``, ``<__group>``,
``<precisionlocation>``, ``<status>``, ``<takv>`` and ``<track>`` into their typed messages when
they have exactly the attributes those hold, every other child of ``<detail>`` into ``xmlDetail``.

Negotiation on a stream (TAK's "streaming" protocol): the server announces that it reads version 1
with a ``t-x-takp-v`` event, a client asks for it with ``t-x-takp-q``, the server answers
``t-x-takp-r``; all three are XML events with a ``<TakControl>`` in their detail, written and read
here. After a positive answer both directions carry ``0xbf``, varint length, message
(``stream_frame``); a UDP datagram carries ``0xbf 0x01 0xbf``, message (``mesh_datagram``).
"""

from __future__ import annotations

import datetime as dt
import math
from xml.etree.ElementTree import Element, SubElement

from google.protobuf.message import DecodeError
from yiwang.tak import takmessage_pb2 as tak

from adapters import safexml
from adapters.cot.codec import CotEvent, parse_time, read_event
from adapters.cot.framing import MAX_EVENT_BYTES, TAK_MAGIC, encode_varint
from adapters.errors import AdapterError

#: The protocol version this module speaks besides XML (version 0).
VERSION = 1
SUPPORT_TYPE = "t-x-takp-v"  # the server: "I read these versions"
REQUEST_TYPE = "t-x-takp-q"  # the client: "let us use this version"
RESPONSE_TYPE = "t-x-takp-r"  # the server: yes or no
CONTROL_PREFIX = "t-x-takp-"
#: What starts every version 1 datagram of a mesh network.
MESH_HEADER = bytes([TAK_MAGIC, VERSION, TAK_MAGIC])
#: How long the server's announcement holds (TAK servers accept a request for about a minute).
ANNOUNCE_STALE_S = 60.0

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
_UNKNOWN = "9999999.0"
# <detail> children that have a typed message: the attributes each must have exactly.
_TYPED_ATTRIBUTES = {
    "contact": frozenset({"callsign", "endpoint"}),  # callsign required, endpoint optional
    "__group": frozenset({"name", "role"}),
    "precisionlocation": frozenset({"geopointsrc", "altsrc"}),
    "status": frozenset({"battery"}),
    "takv": frozenset({"device", "platform", "os", "version"}),
    "track": frozenset({"speed", "course"}),
}


# -- in -------------------------------------------------------------------------------------------


def decode_message(payload: bytes) -> tak.TakMessage:
    """The ``TakMessage`` of a stream message's or datagram's payload."""
    try:
        return tak.TakMessage.FromString(payload)
    except DecodeError as exc:
        raise AdapterError(
            f"not a TAK protocol version 1 message (TakMessage protobuf): {exc}", field="TakMessage", kind="protobuf"
        ) from None


def parse_message(payload: bytes, *, limit: int = MAX_EVENT_BYTES) -> CotEvent | None:
    """The event of a version 1 message, read as its XML form would be; None when it carries none."""
    message = decode_message(payload)
    if not message.HasField("cotEvent"):
        return None
    return read_event(event_element(message.cotEvent, limit=limit))


def event_element(event: tak.CotEvent, *, limit: int = MAX_EVENT_BYTES) -> Element:
    """The ``<event>`` element that the XML form of ``event`` parses to."""
    root = Element("event", {"version": "2.0"})
    for name, value in (
        ("uid", event.uid),
        ("type", event.type),
        ("how", event.how),
        ("access", event.access),
        ("qos", event.qos),
        ("opex", event.opex),
    ):
        if value:
            root.set(name, value)
    # proto3 cannot tell a time of 0 from no time: 0 is taken as absent, as in the XML of a sender
    # that left the attribute out (the codec then names what is missing)
    for name, millis in (("time", event.sendTime), ("start", event.startTime), ("stale", event.staleTime)):
        if millis:
            root.set(name, _cot_time(millis, f"event.{name}"))
    SubElement(
        root,
        "point",
        {name: repr(value) for name, value in (("lat", event.lat), ("lon", event.lon), ("hae", event.hae),
                                               ("ce", event.ce), ("le", event.le))},
    )  # fmt: skip
    if event.HasField("detail"):
        root.append(_detail_element(event.detail, limit))
    return root


def _detail_element(detail: tak.Detail, limit: int) -> Element:
    element = Element("detail")
    if detail.xmlDetail.strip():
        wrapped = ("<detail>" + detail.xmlDetail + "</detail>").encode("utf-8")
        try:
            element = safexml.parse(wrapped, limit=limit)
        except AdapterError as exc:
            raise AdapterError(exc.reason, field="event.detail.xmlDetail", kind=exc.kind) from None
    present = {child.tag for child in element}
    # an element in both forms: the XML one is kept, as the TAK protocol says
    typed: list[tuple[str, bool, dict[str, str]]] = [
        ("contact", detail.HasField("contact"), _without_empty(
            {"callsign": detail.contact.callsign, "endpoint": detail.contact.endpoint}, keep="callsign")),
        ("__group", detail.HasField("group"), {"name": detail.group.name, "role": detail.group.role}),
        ("precisionlocation", detail.HasField("precisionLocation"), {
            "geopointsrc": detail.precisionLocation.geopointsrc, "altsrc": detail.precisionLocation.altsrc}),
        ("status", detail.HasField("status"), {"battery": str(detail.status.battery)}),
        ("takv", detail.HasField("takv"), {"device": detail.takv.device, "platform": detail.takv.platform,
                                           "os": detail.takv.os, "version": detail.takv.version}),
        ("track", detail.HasField("track"), {"speed": repr(detail.track.speed), "course": repr(detail.track.course)}),
    ]  # fmt: skip
    for tag, has, attributes in typed:
        if has and tag not in present:
            SubElement(element, tag, attributes)
    return element


def _without_empty(attributes: dict[str, str], *, keep: str) -> dict[str, str]:
    return {name: value for name, value in attributes.items() if value or name == keep}


def _cot_time(millis: int, path: str) -> str:
    seconds, rest = divmod(millis, 1000)
    try:
        moment = _EPOCH + dt.timedelta(seconds=seconds)
    except OverflowError:
        raise AdapterError(f"{millis} ms since 1970 is not a time CoT can carry", field=path) from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:03d}Z"


# -- out ------------------------------------------------------------------------------------------


def encode_event(document: bytes) -> bytes:
    """The ``TakMessage`` bytes of one XML event (as the codec writes it)."""
    root = safexml.parse(document, limit=max(MAX_EVENT_BYTES, len(document)))
    message = tak.TakMessage()
    event = message.cotEvent
    event.SetInParent()
    event.type = root.get("type", "")
    event.uid = root.get("uid", "")
    event.how = root.get("how", "")
    event.access = root.get("access", "")
    event.qos = root.get("qos", "")
    event.opex = root.get("opex", "")
    event.sendTime = _millis(root.get("time", ""), "event.time")
    event.startTime = _millis(root.get("start", ""), "event.start") if root.get("start") else event.sendTime
    if root.get("stale"):
        event.staleTime = _millis(root.get("stale", ""), "event.stale")
    point = root.find("point")
    if point is None:
        raise AdapterError("required", field="event.point", kind="missing")
    event.lat, event.lon = _float(point, "lat", "0"), _float(point, "lon", "0")
    event.hae, event.ce, event.le = (_float(point, name, _UNKNOWN) for name in ("hae", "ce", "le"))
    detail = root.find("detail")
    if detail is not None:
        _fill_detail(detail, event.detail)
    return message.SerializeToString()


def _millis(text: str, path: str) -> int:
    if not text:
        raise AdapterError("required", field=path, kind="missing")
    nanos = parse_time(text, path).ToNanoseconds()
    if nanos < 0:
        raise AdapterError(f"{text!r} is before 1970, which TAK protocol version 1 cannot carry", field=path)
    return nanos // 1_000_000


def _float(element: Element, name: str, default: str) -> float:
    text = element.get(name) or default
    try:
        return float(text)
    except ValueError:
        raise AdapterError(f"{text[:40]!r} is not a number", field=f"event.point.{name}") from None


def _fill_detail(detail: Element, out: tak.Detail) -> None:
    out.SetInParent()
    out.xmlDetail = "".join(_xml(child) for child in detail if not _typed(child, out))


def _typed(child: Element, out: tak.Detail) -> bool:
    """Puts ``child`` into its typed message if it has one, is the first of its kind and has exactly
    the attributes that message holds (and nothing inside); whether it did."""
    tag = child.tag
    allowed = _TYPED_ATTRIBUTES.get(tag)
    if allowed is None or len(child) or (child.text or "").strip():
        return False
    names = set(child.keys())
    get = child.attrib.get
    if tag == "contact":
        if out.HasField("contact") or "callsign" not in names or not names <= allowed:
            return False
        out.contact.callsign = get("callsign", "")
        out.contact.endpoint = get("endpoint", "")
        return True
    if names != allowed:
        return False
    if tag == "__group" and not out.HasField("group"):
        out.group.name, out.group.role = get("name", ""), get("role", "")
        return True
    if tag == "precisionlocation" and not out.HasField("precisionLocation"):
        out.precisionLocation.geopointsrc, out.precisionLocation.altsrc = get("geopointsrc", ""), get("altsrc", "")
        return True
    if tag == "status" and not out.HasField("status"):
        battery = get("battery", "")
        if not (battery.isascii() and battery.isdigit() and int(battery) < 1 << 32):
            return False
        out.status.battery = int(battery)
        return True
    if tag == "takv" and not out.HasField("takv"):
        takv = out.takv
        takv.device, takv.platform, takv.os, takv.version = (
            get(n, "") for n in ("device", "platform", "os", "version")
        )
        return True
    if tag == "track" and not out.HasField("track"):
        try:
            speed, course = float(get("speed", "")), float(get("course", ""))
        except ValueError:
            return False
        if not (math.isfinite(speed) and math.isfinite(course)):
            return False
        out.track.speed, out.track.course = speed, course
        return True
    return False


def _xml(element: Element) -> str:
    """``element`` as XML text, without its tail, escaped so that it parses back to the same values."""
    tag = element.tag
    if "{" in tag:
        raise AdapterError(f"a <detail> child in a namespace ({tag!r}) is not carried", field="event.detail")
    attributes = "".join(f' {name}="{safexml.escape_attribute(value)}"' for name, value in element.items())
    inner = safexml.escape_text(element.text or "") + "".join(
        _xml(child) + safexml.escape_text(child.tail or "") for child in element if isinstance(child.tag, str)
    )
    return f"<{tag}{attributes}>{inner}</{tag}>" if inner else f"<{tag}{attributes}/>"


def stream_frame(message: bytes) -> bytes:
    """A message as a version 1 stream carries it: ``0xbf``, its length as a varint, the message."""
    return bytes([TAK_MAGIC]) + encode_varint(len(message)) + message


def mesh_datagram(message: bytes) -> bytes:
    """A message as a version 1 datagram of a mesh network carries it."""
    return MESH_HEADER + message


# -- negotiation ----------------------------------------------------------------------------------


def protocol_support(uid: str, now: float, versions: tuple[int, ...] = (VERSION,)) -> bytes:
    """The server's announcement (``t-x-takp-v``) that it reads ``versions``."""
    supports = "".join(f'<TakProtocolSupport version="{version}"/>' for version in versions)
    return _control_event(uid, SUPPORT_TYPE, now, supports)


def protocol_request(uid: str, now: float, version: int = VERSION) -> bytes:
    """A client's request (``t-x-takp-q``) to speak ``version`` from now on, with the server's uid."""
    return _control_event(uid, REQUEST_TYPE, now, f'<TakRequest version="{version}"/>')


def protocol_response(uid: str, now: float, *, accepted: bool) -> bytes:
    """The server's answer (``t-x-takp-r``) to a request."""
    return _control_event(uid, RESPONSE_TYPE, now, f'<TakResponse status="{"true" if accepted else "false"}"/>')


def _control_event(uid: str, cot_type: str, now: float, control: str) -> bytes:
    millis = round(now * 1000)
    time = _cot_time(millis, "event.time")
    stale = _cot_time(millis + round(ANNOUNCE_STALE_S * 1000), "event.stale")
    return (
        f'{_DECLARATION}<event version="2.0" uid="{safexml.escape_attribute(uid)}" type="{cot_type}" how="m-g" '
        f'time="{time}" start="{time}" stale="{stale}"><point lat="0.0" lon="0.0" hae="0.0" ce="{_UNKNOWN}" '
        f'le="{_UNKNOWN}"/><detail><TakControl>{control}</TakControl></detail></event>'
    ).encode()


def is_control(cot_type: str) -> bool:
    """Whether an event of this type is part of the protocol negotiation."""
    return cot_type.startswith(CONTROL_PREFIX)


def requested_version(root: Element) -> int | None:
    """The version a ``t-x-takp-q`` event asks for (None when it names none that is a number)."""
    return _version_of(root.find("detail/TakControl/TakRequest"), "version")


def supported_versions(root: Element) -> list[int]:
    """The versions a ``t-x-takp-v`` event announces."""
    found = (_version_of(e, "version") for e in root.iterfind("detail/TakControl/TakProtocolSupport"))
    return [version for version in found if version is not None]


def response_accepted(root: Element) -> bool | None:
    """Whether a ``t-x-takp-r`` event says yes (None when it has no answer)."""
    response = root.find("detail/TakControl/TakResponse")
    if response is None:
        return None
    return (response.get("status") or "").strip().lower() == "true"


def _version_of(element: Element | None, name: str) -> int | None:
    text = "" if element is None else (element.get(name) or "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else None
