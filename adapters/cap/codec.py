"""CAP 1.2 (OASIS Common Alerting Protocol) to canonical ALERT envelopes and back; CAP 1.1 is read too.

Sans-IO: ``CapCodec.decode`` takes the bytes of one ``<alert>`` document, ``CapCodec.encode`` returns
them. ``decode_alert`` reads an already-parsed ``<alert>`` element, for containers such as EDXL-DE.

Decisions this module makes, so that a reader need not reverse them out of the code:

* ``status``: Actual -> ACTUAL, Exercise -> EXERCISE, and System, Test, Draft -> TEST: anything that
  is not a real alert must never be taken for one, and the written value stays in ``Alert.status``.
* ``severity``: Extreme/Severe/Moderate/Minor -> RED/ORANGE/YELLOW/BLUE, Unknown -> unspecified. With
  several info blocks the most severe one sets the envelope's colour.
* ``priority``: from the most urgent info block: Immediate 0, Expected 1, Future and Unknown 2, Past 3.
* Empty optional elements (``<note/>``, as CAP-CP feeds write them) are read as absent. An Update,
  Cancel, Ack or Error must name the messages it acts on in ``<references>``: CAP defines those
  types only by the references, so one without them is refused.
* Elements CAP does not define, in the CAP namespace or another one, are refused rather than dropped,
  so that export can give back every field; the one exception is the XML-DSig ``<Signature>`` CAP
  allows as the alert's last children, kept as received in ``Alert.xml_signature``.
* An alert with no ``<info>`` is refused unless it is a Cancel, Ack or Error (which act on the
  alerts they reference): the canonical model needs an info block to say what a warning is.
* The envelope's region comes from a geocode holding a known GB/T 2260 code, else from the place
  nearest the first area's centre (when within ``max_place_distance_km``), else from the config.
* Export writes times in ``Alert.time_zone`` (the offset the source wrote), UTC (``-00:00``) when
  that is unknown; values CAP enumerates but the envelope lacks get CAP's neutral ``Unknown``/``Other``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from xml.etree.ElementTree import Element

from google.protobuf.timestamp_pb2 import Timestamp
from yiwang.v1 import envelope_pb2 as pb

from adapters import safexml
from adapters.errors import AdapterError
from adapters.plugin import AdapterConfig, AdapterContext, stable_id
from gateway.errors import InvalidEnvelopeError
from gateway.validation import Validator

CAP_1_2 = "urn:oasis:names:tc:emergency:cap:1.2"
CAP_1_1 = "urn:oasis:names:tc:emergency:cap:1.1"
#: The CAP namespaces read, with the provenance format each one is recorded as.
FORMAT_OF_NAMESPACE = {CAP_1_2: "cap-1.2", CAP_1_1: "cap-1.1"}
XMLDSIG = "http://www.w3.org/2000/09/xmldsig#"

# Each container's children in the order the CAP 1.2 schema gives them (export writes this order).
_ALERT_CHILDREN = (
    "identifier",
    "sender",
    "sent",
    "status",
    "msgType",
    "source",
    "scope",
    "restriction",
    "addresses",
    "code",
    "note",
    "references",
    "incidents",
    "info",
)
_INFO_CHILDREN = (
    "language",
    "category",
    "event",
    "responseType",
    "urgency",
    "severity",
    "certainty",
    "audience",
    "eventCode",
    "effective",
    "onset",
    "expires",
    "senderName",
    "headline",
    "description",
    "instruction",
    "web",
    "contact",
    "parameter",
    "resource",
    "area",
)
_RESOURCE_CHILDREN = ("resourceDesc", "mimeType", "size", "uri", "derefUri", "digest")
_AREA_CHILDREN = ("areaDesc", "polygon", "circle", "geocode", "altitude", "ceiling")
_PAIR_CHILDREN = ("valueName", "value")
#: Children that may occur more than once; every other child at most once.
_REPEATED = frozenset(
    {"code", "info", "category", "responseType", "eventCode", "parameter", "resource", "area", "polygon", "circle"}
    | {"geocode"}
)

# The enumerations of CAP 1.2, which include those of CAP 1.1.
STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
CATEGORIES = ("Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env", "Transport", "Infra")
CATEGORIES_ALL = (*CATEGORIES, "CBRNE", "Other")
RESPONSE_TYPES = ("Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess", "AllClear", "None")
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")
#: msgTypes that act on earlier messages, which CAP names only in <references>.
_NEEDS_REFERENCES = frozenset({"Update", "Cancel", "Ack", "Error"})

STATUS_OF_CAP = {"Actual": pb.ACTUAL, "Exercise": pb.EXERCISE, "System": pb.TEST, "Test": pb.TEST, "Draft": pb.TEST}
CAP_OF_STATUS = {pb.ACTUAL: "Actual", pb.EXERCISE: "Exercise", pb.TEST: "Test"}
SEVERITY_OF_CAP: dict[str, pb.Severity] = {
    "Extreme": pb.RED,
    "Severe": pb.ORANGE,
    "Moderate": pb.YELLOW,
    "Minor": pb.BLUE,
    "Unknown": pb.SEVERITY_UNSPECIFIED,
}
CAP_OF_SEVERITY = {pb.RED: "Extreme", pb.ORANGE: "Severe", pb.YELLOW: "Moderate", pb.BLUE: "Minor"}
PRIORITY_OF_URGENCY = {"Immediate": 0, "Expected": 1, "Future": 2, "Unknown": 2, "Past": 3}

FEET_IN_METRES = 0.3048
_CAP_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)([+-])(\d\d):(\d\d)")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_GB2260_GEOCODE = re.compile(r"\d{6}(?:\d{3}|\d{6})?")  # county code, township (9) or village (12) form
_XML_ILLEGAL = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ENCODING_DECLARATION = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z][A-Za-z0-9._-]*)["']""")
_SIGNATURE_START = re.compile(r"<(?:([A-Za-z_][\w.-]*):)?Signature[\s/>]")


@dataclass(frozen=True, kw_only=True)
class CapConfig(AdapterConfig):
    """Options of the CAP adapter, besides agency, region and system."""

    max_document_bytes: int = field(
        default=safexml.MAX_XML_BYTES, metadata={"doc": "largest CAP document accepted, in bytes"}
    )
    max_place_distance_km: float = field(
        default=50.0,
        metadata={
            "doc": "how far an area's centre may lie from the nearest known place and still take its region "
            "(farther away, the config's region is used)"
        },
    )


class CapCodec:
    """Sans-IO CAP codec: one ``<alert>`` document in, one ALERT envelope out, and back."""

    def __init__(self, config: CapConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self.validator = Validator(context.regions)

    def decode(self, data: bytes) -> list[pb.Envelope]:
        root = safexml.parse(data, limit=self.config.max_document_bytes)
        return [decode_alert(root, config=self.config, context=self.context, document=data, validator=self.validator)]

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:
        if len(envelopes) != 1:
            raise AdapterError(f"a CAP document carries one alert, got {len(envelopes)} envelopes", kind="unsupported")
        return encode_alert(envelopes[0], self.context)


# -- reading ------------------------------------------------------------------------------------


class _Children:
    """The children of one CAP container, checked against what CAP allows there."""

    def __init__(self, element: Element, path: str, ns: str, allowed: tuple[str, ...]) -> None:
        self.path = path
        self.by_name: dict[str, list[Element]] = {}
        self.foreign: list[Element] = []
        for child in element:
            tag = child.tag
            name = safexml.local_name(tag)
            if safexml.namespace(tag) != ns:
                self.foreign.append(child)
                continue
            if name not in allowed:
                raise AdapterError(f"<{name}> is not a CAP element here", field=f"{path}.{name}", kind="unsupported")
            found = self.by_name.setdefault(name, [])
            if found and name not in _REPEATED:
                raise AdapterError("occurs more than once", field=f"{path}.{name}")
            found.append(child)

    def refuse_foreign(self) -> None:
        for child in self.foreign:
            tag = str(child.tag)
            raise AdapterError(
                f"element {safexml.local_name(tag)!r} of namespace {safexml.namespace(tag)!r} is not part of CAP "
                "and would be lost",
                field=f"{self.path}.{safexml.local_name(tag)}",
                kind="unsupported",
            )

    def text(self, name: str, *, required: bool = False, strip: bool = False) -> str:
        found = self.by_name.get(name)
        if not found:
            if required:
                raise AdapterError("required", field=f"{self.path}.{name}", kind="missing")
            return ""
        value = _text_of(found[0], f"{self.path}.{name}")
        if strip:
            value = value.strip()
        if required and not value.strip():
            raise AdapterError("required, but empty", field=f"{self.path}.{name}", kind="missing")
        return value

    def texts(self, name: str, *, strip: bool = False) -> list[tuple[str, str]]:
        """(path, text) of each occurrence."""
        out = []
        for i, element in enumerate(self.by_name.get(name, ())):
            path = f"{self.path}.{name}[{i}]"
            value = _text_of(element, path)
            out.append((path, value.strip() if strip else value))
        return out

    def elements(self, name: str) -> Iterator[tuple[str, Element]]:
        for i, element in enumerate(self.by_name.get(name, ())):
            yield f"{self.path}.{name}[{i}]", element


def _text_of(element: Element, path: str) -> str:
    if len(element):
        raise AdapterError("must hold text, not elements", field=path)
    return element.text or ""


def _enumerated(value: str, allowed: tuple[str, ...], path: str) -> str:
    if value not in allowed:
        raise AdapterError(f"{value[:40]!r} is not one of {', '.join(allowed)}", field=path)
    return value


def decode_alert(
    root: Element,
    *,
    config: CapConfig,
    context: AdapterContext,
    document: bytes = b"",
    path: str = "alert",
    validator: Validator | None = None,
) -> pb.Envelope:
    """The ALERT envelope of a parsed CAP ``<alert>`` element.

    ``document`` is the text the element was parsed from, used to keep an XML-DSig signature byte
    for byte; ``path`` prefixes the field paths of errors (an EDXL-DE container passes its own).
    """
    tag = root.tag if isinstance(root.tag, str) else ""
    ns = safexml.namespace(tag)
    if safexml.local_name(tag) != "alert":
        raise AdapterError(
            f"the root element is <{safexml.local_name(tag)}>, not a CAP <alert>", field=path, kind="unsupported"
        )
    original_format = FORMAT_OF_NAMESPACE.get(ns)
    if original_format is None:
        known = ", ".join(FORMAT_OF_NAMESPACE)
        raise AdapterError(f"namespace {ns!r} is not a CAP namespace ({known})", field=path, kind="unsupported")
    children = _Children(root, path, ns, _ALERT_CHILDREN)
    signatures = [c for c in children.foreign if c.tag == f"{{{XMLDSIG}}}Signature"]
    children.foreign = [c for c in children.foreign if c.tag != f"{{{XMLDSIG}}}Signature"]
    children.refuse_foreign()

    alert = pb.Alert()
    alert.identifier = _token(children, "identifier")
    alert.sender = _token(children, "sender")
    sent, alert.time_zone = parse_time(children.text("sent", required=True, strip=True), f"{path}.sent")
    alert.sent.CopyFrom(sent)
    alert.status = _enumerated(children.text("status", required=True, strip=True), STATUSES, f"{path}.status")
    alert.msg_type = _enumerated(children.text("msgType", required=True, strip=True), MSG_TYPES, f"{path}.msgType")
    alert.source = children.text("source")
    alert.scope = _enumerated(children.text("scope", required=True, strip=True), SCOPES, f"{path}.scope")
    alert.restriction = children.text("restriction")
    alert.addresses = children.text("addresses")
    alert.codes.extend(value for _, value in children.texts("code"))
    alert.note = children.text("note")
    alert.references = children.text("references")
    referenced = _referenced_ids(alert.references, f"{path}.references")
    if alert.msg_type in _NEEDS_REFERENCES and not referenced:
        raise AdapterError(
            f"a msgType {alert.msg_type} must name the messages it acts on", field=f"{path}.references", kind="missing"
        )
    alert.incidents = children.text("incidents")
    for info_path, info_element in children.elements("info"):
        alert.infos.append(_info(info_element, info_path, ns))
    if not alert.infos and alert.msg_type not in INFO_OPTIONAL:
        raise AdapterError(
            f"a msgType {alert.msg_type} alert without <info> says nothing: the canonical model needs an info block",
            field=f"{path}.info",
            kind="unsupported",
        )
    if signatures:
        alert.xml_signature = "".join(_signature_text(s, document) for s in signatures)

    env = pb.Envelope(id=stable_id("cap", alert.sender, alert.identifier), kind=pb.ALERT)
    env.sent_at.CopyFrom(alert.sent)
    env.status = STATUS_OF_CAP[alert.status]
    env.severity = max(
        (SEVERITY_OF_CAP.get(info.severity, pb.SEVERITY_UNSPECIFIED) for info in alert.infos),
        default=pb.SEVERITY_UNSPECIFIED,
    )
    env.priority = min((PRIORITY_OF_URGENCY[info.urgency] for info in alert.infos), default=1)
    expiries = [info.expires.ToSeconds() for info in alert.infos if info.HasField("expires")]
    if expiries and min(expiries) > alert.sent.ToSeconds():  # an expiry before sending is kept on the info only
        env.expires_at.FromSeconds(min(expiries))
    _add_geometry(env.geometry, alert.infos)
    if not (env.geometry.polygons or env.geometry.circles):
        env.ClearField("geometry")
    env.region = _region(alert, env.geometry, config, context, path)
    env.origin.agency = config.agency or "meteorology"
    env.origin.region = config.region or env.region
    env.origin.system = config.system or "cap"
    env.references.extend(referenced)
    env.provenance.original_format = original_format
    env.provenance.original_id = alert.identifier
    env.alert.CopyFrom(alert)
    _check_canonical(env, context, validator, path)
    return env


def _token(children: _Children, name: str) -> str:
    """identifier and sender: CAP forbids spaces and commas in them, which references would split."""
    value = children.text(name, required=True, strip=True)
    if re.search(r"[\s,<&]", value):
        raise AdapterError("must not contain spaces, commas, '<' or '&'", field=f"{children.path}.{name}")
    return value


def parse_time(text: str, path: str) -> tuple[Timestamp, str]:
    """A CAP dateTime (``2003-06-17T14:57:00-07:00``) as a Timestamp, and the UTC offset as written."""
    match = _CAP_TIME.fullmatch(text)
    if match is None:
        raise AdapterError(f"{text[:40]!r} is not a CAP time (YYYY-MM-DDThh:mm:ss+hh:mm)", field=path)
    year, month, day, hour, minute, second, sign, off_h, off_m = match.groups()
    if int(off_h) > 14 or int(off_m) > 59:
        raise AdapterError(f"{text!r} has an impossible UTC offset", field=path)
    offset = dt.timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == "-" else 1)
    try:
        moment = dt.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=dt.timezone(offset)
        )
        stamp = Timestamp()
        stamp.FromDatetime(moment.astimezone(dt.UTC))
    except (ValueError, OverflowError) as exc:
        raise AdapterError(f"{text!r} is not a valid time: {exc}", field=path) from None
    return stamp, f"{sign}{off_h}:{off_m}"


def _optional_time(children: _Children, name: str, target: Timestamp) -> None:
    text = children.text(name, strip=True)
    if text:
        stamp, _ = parse_time(text, f"{children.path}.{name}")
        target.CopyFrom(stamp)


INFO_OPTIONAL = frozenset({"Cancel", "Ack", "Error"})  # msgTypes that act on other alerts


def _referenced_ids(references: str, path: str) -> list[str]:
    """The envelope ids of the messages ``sender,identifier,sent`` triples name, in order, once each."""
    ids: list[str] = []
    for i, triple in enumerate(references.split()):
        parts = triple.split(",")
        if len(parts) != 3 or not all(parts):
            raise AdapterError(f"reference {i} ({triple[:60]!r}) is not sender,identifier,sent", field=path)
        parse_time(parts[2], f"{path}[{i}].sent")
        envelope_id = stable_id("cap", parts[0], parts[1])
        if envelope_id not in ids:
            ids.append(envelope_id)
    return ids


def _info(element: Element, path: str, ns: str) -> pb.AlertInfo:
    children = _Children(element, path, ns, _INFO_CHILDREN)
    children.refuse_foreign()
    info = pb.AlertInfo(language=children.text("language", strip=True))
    categories = children.texts("category", strip=True)
    if not categories:
        raise AdapterError("at least one is required", field=f"{path}.category", kind="missing")
    info.categories.extend(_enumerated(value, CATEGORIES_ALL, p) for p, value in categories)
    info.event = children.text("event", required=True)
    info.response_types.extend(
        _enumerated(value, RESPONSE_TYPES, p) for p, value in children.texts("responseType", strip=True)
    )
    info.urgency = _enumerated(children.text("urgency", required=True, strip=True), URGENCIES, f"{path}.urgency")
    info.severity = _enumerated(children.text("severity", required=True, strip=True), SEVERITIES, f"{path}.severity")
    info.certainty = _enumerated(
        children.text("certainty", required=True, strip=True), CERTAINTIES, f"{path}.certainty"
    )
    info.audience = children.text("audience")
    info.event_codes.extend(_pairs(children, "eventCode", ns))
    _optional_time(children, "effective", info.effective)
    _optional_time(children, "onset", info.onset)
    _optional_time(children, "expires", info.expires)
    info.sender_name = children.text("senderName")
    info.headline = children.text("headline")
    info.description = children.text("description")
    info.instruction = children.text("instruction")
    info.web = children.text("web")
    info.contact = children.text("contact")
    info.parameters.extend(_pairs(children, "parameter", ns))
    for resource_path, resource in children.elements("resource"):
        info.resources.append(_resource(resource, resource_path, ns))
    for area_path, area in children.elements("area"):
        info.areas.append(_area(area, area_path, ns))
    return info


def _pairs(children: _Children, name: str, ns: str) -> list[pb.NamedValue]:
    pairs = []
    for pair_path, element in children.elements(name):
        pair = _Children(element, pair_path, ns, _PAIR_CHILDREN)
        pair.refuse_foreign()
        if "value" not in pair.by_name:
            raise AdapterError("required", field=f"{pair_path}.value", kind="missing")
        pairs.append(pb.NamedValue(name=pair.text("valueName", required=True), value=pair.text("value")))
    return pairs


def _resource(element: Element, path: str, ns: str) -> pb.AlertResource:
    children = _Children(element, path, ns, _RESOURCE_CHILDREN)
    children.refuse_foreign()
    resource = pb.AlertResource(
        description=children.text("resourceDesc", required=True),
        mime_type=children.text("mimeType", strip=True),
        uri=children.text("uri"),
        digest=children.text("digest"),
    )
    size = children.text("size", strip=True)
    if size:
        if not size.isascii() or not size.isdigit() or len(size) > 19:
            raise AdapterError(f"{size[:40]!r} is not a size in bytes", field=f"{path}.size")
        resource.size = int(size)
    deref = children.text("derefUri")
    if deref.strip():
        try:
            resource.deref_uri = base64.b64decode("".join(deref.split()), validate=True)
        except (binascii.Error, ValueError):
            raise AdapterError("is not base64", field=f"{path}.derefUri") from None
    return resource


def _area(element: Element, path: str, ns: str) -> pb.AlertArea:
    children = _Children(element, path, ns, _AREA_CHILDREN)
    children.refuse_foreign()
    area = pb.AlertArea(description=children.text("areaDesc", required=True))
    for polygon_path, text in children.texts("polygon", strip=True):
        area.polygons.append(parse_polygon(text, polygon_path))
    for circle_path, text in children.texts("circle", strip=True):
        area.circles.append(parse_circle(text, circle_path))
    area.geocodes.extend(_pairs(children, "geocode", ns))
    altitude = children.text("altitude", strip=True)
    if altitude:
        area.altitude_m = _number(altitude, f"{path}.altitude") * FEET_IN_METRES
    ceiling = children.text("ceiling", strip=True)
    if ceiling:
        if not altitude:
            raise AdapterError("a ceiling needs an altitude", field=f"{path}.ceiling", kind="missing")
        area.ceiling_m = _number(ceiling, f"{path}.ceiling") * FEET_IN_METRES
    return area


def _number(text: str, path: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise AdapterError(f"{text[:40]!r} is not a decimal number", field=path)
    value = float(text)
    if not math.isfinite(value):
        raise AdapterError(f"{text[:40]!r} is out of range", field=path)
    return value


def _point(text: str, path: str) -> pb.Point:
    lat_text, comma, lon_text = text.partition(",")
    if not comma:
        raise AdapterError(f"{text[:40]!r} is not a 'lat,lon' pair", field=path)
    lat, lon = _number(lat_text, path), _number(lon_text, path)
    if not -90.0 <= lat <= 90.0:
        raise AdapterError(f"latitude {lat_text} is out of -90..90", field=path)
    if not -180.0 <= lon <= 180.0:
        raise AdapterError(f"longitude {lon_text} is out of -180..180", field=path)
    return pb.Point(lat=lat, lon=lon)


def parse_polygon(text: str, path: str) -> pb.Polygon:
    points = [_point(pair, path) for pair in text.split()]
    if len(points) < 4:
        raise AdapterError(f"a polygon needs at least 4 points, got {len(points)}", field=path)
    if (points[0].lat, points[0].lon) != (points[-1].lat, points[-1].lon):
        raise AdapterError("is not closed: the first point differs from the last", field=path)
    return pb.Polygon(points=points)


def parse_circle(text: str, path: str) -> pb.Circle:
    parts = text.split()
    if len(parts) != 2:
        raise AdapterError(f"{text[:40]!r} is not 'lat,lon radius'", field=path)
    radius_km = _number(parts[1], path)
    if not 0.0 <= radius_km <= 20_037.0:
        raise AdapterError(f"radius {parts[1]} km is not a radius on the earth", field=path)
    return pb.Circle(center=_point(parts[0], path), radius_m=radius_km * 1000.0)


def _add_geometry(geometry: pb.Geometry, infos: Sequence[pb.AlertInfo]) -> None:
    """The union of every area's shapes, each shape once (language variants repeat the same areas)."""
    seen: set[bytes] = set()
    for info in infos:
        for area in info.areas:
            for polygon in area.polygons:
                key = b"p" + polygon.SerializeToString(deterministic=True)
                if key not in seen:
                    seen.add(key)
                    geometry.polygons.append(polygon)
            for circle in area.circles:
                key = b"c" + circle.SerializeToString(deterministic=True)
                if key not in seen:
                    seen.add(key)
                    geometry.circles.append(circle)


def _region(alert: pb.Alert, geometry: pb.Geometry, config: CapConfig, context: AdapterContext, path: str) -> str:
    regions = context.regions
    codes: list[str] = []
    for info in alert.infos:
        for area in info.areas:
            for geocode in area.geocodes:
                value = geocode.value.strip()
                if _GB2260_GEOCODE.fullmatch(value) and value[:6] in regions and value[:6] not in codes:
                    codes.append(value[:6])
    if codes:
        return _common_region(codes, context)
    centre = _first_centre(geometry)
    if centre is not None:
        try:
            nearest = context.places.nearest(*centre)
        except ValueError:
            nearest = None
        if nearest is not None and nearest.distance_km <= config.max_place_distance_km and nearest.code in regions:
            return nearest.code
    if config.region:
        return config.region
    raise AdapterError(
        "no region: no geocode holds a known GB/T 2260 code, no area lies within "
        f"{config.max_place_distance_km:g} km of a known place, and the adapter config sets no `region`",
        field=f"{path}.info.area.geocode",
        kind="missing",
    )


def _common_region(codes: list[str], context: AdapterContext) -> str:
    """The smallest region that holds every code (the first code when they share none)."""
    chains = [[code, *context.regions.ancestors(code)] for code in codes]
    for candidate in chains[0]:
        if all(candidate in chain for chain in chains[1:]):
            return candidate
    return codes[0]


def _first_centre(geometry: pb.Geometry) -> tuple[float, float] | None:
    if geometry.polygons:
        ring = geometry.polygons[0].points[:-1]  # the closing point repeats the first
        return sum(p.lat for p in ring) / len(ring), sum(p.lon for p in ring) / len(ring)
    if geometry.circles:
        return geometry.circles[0].center.lat, geometry.circles[0].center.lon
    return None


def _check_canonical(env: pb.Envelope, context: AdapterContext, validator: Validator | None, path: str) -> None:
    """What the gateway would refuse at the door is refused here, as the codec's own error."""
    check = validator or Validator(context.regions)
    try:
        check.check(env, env.ByteSize(), None if context.now is None else context.now())
    except InvalidEnvelopeError as exc:
        raise AdapterError(
            f"the envelope breaks the canonical model at {exc.field}: {exc.reason}", field=path, kind="canonical"
        ) from None


# -- the XML-DSig signature ---------------------------------------------------------------------


def _signature_text(signature: Element, document: bytes) -> str:
    """The signature as the source wrote it when its text can be found and stands alone, else the
    element serialised with its namespace declared on itself."""
    text = _document_text(document)
    if text is not None:
        for match in _SIGNATURE_START.finditer(text):
            prefix = match.group(1)
            end_tag = re.compile(rf"</{re.escape(prefix)}:Signature\s*>" if prefix else r"</Signature\s*>")
            end = end_tag.search(text, match.end())
            if end is None:
                continue
            candidate = text[match.start() : end.end()]
            try:
                parsed = safexml.parse(candidate.encode("utf-8"))
            except AdapterError:
                continue
            if _same_tree(parsed, signature):
                return candidate
    return _serialise(signature, parent_ns="")


def _document_text(document: bytes) -> str | None:
    if not document:
        return None
    declared = _ENCODING_DECLARATION.match(document)
    encoding = declared.group(1).decode("ascii") if declared else "utf-8"
    try:
        return document.decode("utf-8-sig" if encoding.lower() in {"utf-8", "utf8"} else encoding)
    except (LookupError, UnicodeDecodeError):
        return None


def _same_tree(a: Element, b: Element) -> bool:
    if a.tag != b.tag or a.attrib != b.attrib or (a.text or "") != (b.text or ""):
        return False
    a_children = [c for c in a if isinstance(c.tag, str)]
    b_children = [c for c in b if isinstance(c.tag, str)]
    return len(a_children) == len(b_children) and all(
        _same_tree(x, y) and (x.tail or "") == (y.tail or "") for x, y in zip(a_children, b_children, strict=True)
    )


def _serialise(element: Element, parent_ns: str) -> str:
    tag = str(element.tag)
    ns, name = safexml.namespace(tag), safexml.local_name(tag)
    head = [name]
    if ns != parent_ns:
        head.append(f'xmlns="{safexml.escape_attribute(ns)}"')
    for i, (key, value) in enumerate(element.attrib.items()):
        key_ns = safexml.namespace(key)
        if key_ns:
            head.append(f'xmlns:a{i}="{safexml.escape_attribute(key_ns)}" a{i}:{safexml.local_name(key)}=')
            head[-1] += f'"{safexml.escape_attribute(value)}"'
        else:
            head.append(f'{key}="{safexml.escape_attribute(value)}"')
    inner = safexml.escape_text(element.text or "")
    for child in element:
        if isinstance(child.tag, str):
            inner += _serialise(child, ns)
        inner += safexml.escape_text(child.tail or "")
    return f"<{' '.join(head)}>{inner}</{name}>"


# -- writing ------------------------------------------------------------------------------------


def encode_alert(env: pb.Envelope, context: AdapterContext | None = None) -> bytes:
    """A CAP 1.2 document (UTF-8) for an ALERT envelope, its elements in the schema's order."""
    if env.kind != pb.ALERT or env.WhichOneof("payload") != "alert":
        raise AdapterError(f"CAP carries alerts, not {pb.Kind.Name(env.kind)}", field="kind", kind="unsupported")
    alert = env.alert
    zone = alert.time_zone if re.fullmatch(r"[+-]\d\d:\d\d", alert.time_zone) else "-00:00"
    writer = _Writer()
    writer.open("alert", f' xmlns="{CAP_1_2}"')
    writer.leaf("identifier", alert.identifier or env.id, "alert.identifier")
    writer.leaf("sender", alert.sender or env.origin.system or env.origin.agency, "alert.sender")
    sent = alert.sent if alert.HasField("sent") else env.sent_at
    writer.leaf("sent", _format_time(sent, zone), "alert.sent")
    writer.leaf("status", alert.status if alert.status in STATUSES else CAP_OF_STATUS.get(env.status, "Test"))
    writer.leaf("msgType", alert.msg_type if alert.msg_type in MSG_TYPES else "Alert")
    writer.optional("source", alert.source, "alert.source")
    writer.leaf("scope", alert.scope if alert.scope in SCOPES else "Public")
    writer.optional("restriction", alert.restriction, "alert.restriction")
    writer.optional("addresses", alert.addresses, "alert.addresses")
    for i, code in enumerate(alert.codes):
        writer.leaf("code", code, f"alert.codes[{i}]")
    writer.optional("note", alert.note, "alert.note")
    writer.optional("references", alert.references, "alert.references")
    writer.optional("incidents", alert.incidents, "alert.incidents")
    if not alert.infos and alert.msg_type not in INFO_OPTIONAL:
        raise AdapterError(
            "an alert needs at least one info block to export (only a Cancel, Ack or Error may have none)",
            field="alert.infos",
            kind="canonical",
        )
    for i, info in enumerate(alert.infos):
        _write_info(writer, info=info, path=f"alert.infos[{i}]", env=env, zone=zone, context=context)
    if alert.xml_signature:
        writer.raw(_checked_signature(alert.xml_signature))
    writer.close("alert")
    return writer.bytes()


def _write_info(
    writer: _Writer, *, info: pb.AlertInfo, path: str, env: pb.Envelope, zone: str, context: AdapterContext | None
) -> None:
    writer.open("info")
    writer.optional("language", info.language, f"{path}.language")
    categories = [c for c in info.categories if c in CATEGORIES_ALL] or ["Other"]
    for category in categories:
        writer.leaf("category", category)
    writer.leaf("event", info.event, f"{path}.event")
    for response_type in info.response_types:
        if response_type in RESPONSE_TYPES:
            writer.leaf("responseType", response_type)
    writer.leaf("urgency", info.urgency if info.urgency in URGENCIES else "Unknown")
    severity = info.severity if info.severity in SEVERITIES else CAP_OF_SEVERITY.get(env.severity, "Unknown")
    writer.leaf("severity", severity)
    writer.leaf("certainty", info.certainty if info.certainty in CERTAINTIES else "Unknown")
    writer.optional("audience", info.audience, f"{path}.audience")
    _write_pairs(writer, "eventCode", info.event_codes, f"{path}.event_codes")
    for name in ("effective", "onset", "expires"):
        if info.HasField(name):
            writer.leaf(name, _format_time(getattr(info, name), zone))
    writer.optional("senderName", info.sender_name, f"{path}.sender_name")
    writer.optional("headline", info.headline, f"{path}.headline")
    writer.optional("description", info.description, f"{path}.description")
    writer.optional("instruction", info.instruction, f"{path}.instruction")
    writer.optional("web", info.web, f"{path}.web")
    writer.optional("contact", info.contact, f"{path}.contact")
    _write_pairs(writer, "parameter", info.parameters, f"{path}.parameters")
    for i, resource in enumerate(info.resources):
        resource_path = f"{path}.resources[{i}]"
        writer.open("resource")
        writer.leaf("resourceDesc", resource.description, f"{resource_path}.description")
        writer.leaf("mimeType", resource.mime_type or "application/octet-stream", f"{resource_path}.mime_type")
        if resource.size:
            writer.leaf("size", str(resource.size))
        writer.optional("uri", resource.uri, f"{resource_path}.uri")
        if resource.deref_uri:
            writer.leaf("derefUri", base64.b64encode(resource.deref_uri).decode("ascii"))
        writer.optional("digest", resource.digest, f"{resource_path}.digest")
        writer.close("resource")
    for i, area in enumerate(info.areas):
        area_path = f"{path}.areas[{i}]"
        writer.open("area")
        description = area.description or (context.regions.name(env.region) if context else "") or env.region
        writer.leaf("areaDesc", description, f"{area_path}.description")
        for polygon in area.polygons:
            writer.leaf("polygon", " ".join(_format_point(p) for p in polygon.points))
        for circle in area.circles:
            radius = _decimal_for(circle.radius_m, 1000.0)
            writer.leaf("circle", f"{_format_point(circle.center)} {radius}")
        _write_pairs(writer, "geocode", area.geocodes, f"{area_path}.geocodes")
        if area.HasField("altitude_m"):
            writer.leaf("altitude", _decimal_for(area.altitude_m, FEET_IN_METRES))
            if area.HasField("ceiling_m"):
                writer.leaf("ceiling", _decimal_for(area.ceiling_m, FEET_IN_METRES))
        writer.close("area")
    writer.close("info")


def _write_pairs(writer: _Writer, name: str, pairs: Sequence[pb.NamedValue], path: str) -> None:
    for i, pair in enumerate(pairs):
        writer.open(name)
        writer.leaf("valueName", pair.name, f"{path}[{i}].name")
        writer.leaf("value", pair.value, f"{path}[{i}].value")
        writer.close(name)


def _format_time(stamp: Timestamp, zone: str) -> str:
    sign = -1 if zone[0] == "-" else 1
    offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign
    try:
        moment = dt.datetime.fromtimestamp(stamp.seconds, dt.timezone(offset))
    except (ValueError, OverflowError, OSError):
        raise AdapterError(f"{stamp.seconds} s is not a time CAP can write", field="alert.sent") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + zone


def _plain_decimal(value: float) -> str:
    """A float as the shortest decimal that reads back as the same float, never in exponent form."""
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def _format_point(point: pb.Point) -> str:
    if not (math.isfinite(point.lat) and math.isfinite(point.lon)):
        raise AdapterError("a coordinate is not a finite number", field="alert.infos.areas", kind="canonical")
    return f"{_plain_decimal(point.lat)},{_plain_decimal(point.lon)}"


def _decimal_for(value: float, factor: float) -> str:
    """The shortest decimal ``d`` with ``float(d) * factor == value``, so that export and re-import
    give back the same canonical value (CAP writes radii in km and altitudes in feet)."""
    if not math.isfinite(value):
        raise AdapterError(f"{value} is not a finite number", kind="canonical")
    exact = value / factor
    for digits in range(18):
        candidate = _plain_decimal(round(exact, digits))
        if float(candidate) * factor == value:
            return candidate
    return _plain_decimal(exact)


def _checked_signature(signature: str) -> str:
    """The stored signature text, once it is known to be well-formed XML-DSig Signature elements."""
    try:
        wrapper = safexml.parse(f"<signatures>{signature}</signatures>".encode())
    except AdapterError as exc:
        raise AdapterError(f"not well-formed: {exc.reason}", field="alert.xml_signature", kind="canonical") from None
    if (wrapper.text or "").strip() or not len(wrapper):
        raise AdapterError("holds no Signature element", field="alert.xml_signature", kind="canonical")
    for element in wrapper:
        if element.tag != f"{{{XMLDSIG}}}Signature" or (element.tail or "").strip():
            raise AdapterError(
                "holds more than XML-DSig Signature elements", field="alert.xml_signature", kind="canonical"
            )
    return signature


class _Writer:
    """An indented XML writer for CAP's text-only leaves; text is checked to be legal XML."""

    def __init__(self) -> None:
        self.parts = ['<?xml version="1.0" encoding="UTF-8"?>\n']
        self.depth = 0

    def open(self, name: str, attributes: str = "") -> None:
        self.parts.append(f"{'  ' * self.depth}<{name}{attributes}>\n")
        self.depth += 1

    def close(self, name: str) -> None:
        self.depth -= 1
        self.parts.append(f"{'  ' * self.depth}</{name}>\n")

    def leaf(self, name: str, text: str, path: str = "") -> None:
        illegal = _XML_ILLEGAL.search(text)
        if illegal:
            raise AdapterError(
                f"character U+{ord(illegal.group()):04X} cannot be written in XML", field=path or name, kind="canonical"
            )
        self.parts.append(f"{'  ' * self.depth}<{name}>{safexml.escape_text(text)}</{name}>\n")

    def optional(self, name: str, text: str, path: str) -> None:
        if text:
            self.leaf(name, text, path)

    def raw(self, text: str) -> None:
        self.parts.append(f"{'  ' * self.depth}{text}\n")

    def bytes(self) -> bytes:
        return "".join(self.parts).encode("utf-8")
