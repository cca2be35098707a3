"""GB/T 35965.1 national early-warning XML (the Chinese profile of CAP used by 国家预警信息发布中心
and the provincial meteorological bureaus) to canonical ALERT envelopes and back, sans-IO.

The documents have an ``<alert>`` root without a namespace, times written as
``2020-02-05 10:45:00+08:00`` (a space, not ``T``), dissemination methods under ``<code>``, and
comma-separated 12-digit GB/T 2260 geocodes. Values are kept as written in the ``Alert`` payload;
the envelope gets the four-colour severity, the region and the stable ids.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from xml.etree.ElementTree import Element

from google.protobuf.timestamp_pb2 import Timestamp
from yiwang.v1 import envelope_pb2 as pb

from adapters import safexml
from adapters.errors import AdapterError
from adapters.gbt35965.events import event_name
from adapters.plugin import AdapterConfig, AdapterContext, stable_id
from gateway.errors import ConfigError
from gateway.places import Places
from gateway.regions import RegionTable
from gateway.validation import EARLIEST_TIME_S, Limits

FORMAT = "gbt35965"
#: China Standard Time: what the profile writes, and what a time without an offset is taken to be.
BEIJING_TIME = "+08:00"
#: NamedValue names under which the decoder files geocodes and eventType codes.
GEOCODE_SCHEME = "GB/T 2260"
EVENT_CODE_SCHEME = "GB/T 35965"
#: A warning area whose centre is farther than this from every division is not placed by distance.
NEAREST_PLACE_LIMIT_KM = 200.0
FOOT_M = Decimal("0.3048")

_LIMITS = Limits()
_LATEST_TIME_S = 253_402_300_799  # 9999-12-31T23:59:59Z, the end of protobuf's Timestamp range
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?", re.ASCII
)
_ZONE = re.compile(r"([+-])(\d{2}):?(\d{2})", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_GEOCODE_SPLIT = re.compile(r"[,，、;；\s]+")
#: The profile's own identifier: the 14-digit code of the issuing unit (its first six digits the
#: GB/T 2260 code of the region), the issue time, and in the standard's full form a serial number.
_IDENTIFIER = re.compile(r"(\d{6})\d{8}_\d{14}(?:_\w+)?", re.ASCII)
_SENDER_CODE = re.compile(r"(\d{6})\d{8}", re.ASCII)
# Characters XML 1.0 cannot carry at all, even as references.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_SEVERITY_WORDS: dict[str, int] = {
    **dict.fromkeys(("red", "红色", "红", "i", "1", "特别严重", "extreme"), pb.RED),
    **dict.fromkeys(("orange", "橙色", "橙", "ii", "2", "严重", "severe"), pb.ORANGE),
    **dict.fromkeys(("yellow", "黄色", "黄", "iii", "3", "较重", "moderate"), pb.YELLOW),
    **dict.fromkeys(("blue", "蓝色", "蓝", "iv", "4", "一般", "minor"), pb.BLUE),
    **dict.fromkeys(("unknown", "未知"), pb.SEVERITY_UNSPECIFIED),
}
_SEVERITY_WORD_OUT = {pb.RED: "Red", pb.ORANGE: "Orange", pb.YELLOW: "Yellow", pb.BLUE: "Blue"}

# CAP's System and Draft are not real warnings either: they must never be taken for Actual.
_STATUS_WORDS: dict[str, int] = {
    "actual": pb.ACTUAL,
    "exercise": pb.EXERCISE,
    "test": pb.TEST,
    "system": pb.TEST,
    "draft": pb.TEST,
}
_STATUS_WORD_OUT = {pb.ACTUAL: "Actual", pb.EXERCISE: "Exercise", pb.TEST: "Test"}


def _check_zone(zone: str) -> str:
    """``zone`` written as ``+hh:mm``; ValueError when it is not a UTC offset."""
    match = _ZONE.fullmatch(zone)
    if not match or int(match[2]) > 14 or int(match[3]) > 59:
        raise ValueError(f"{zone!r} is not a UTC offset like +08:00")
    return f"{match[1]}{match[2]}:{match[3]}"


@dataclass(frozen=True, kw_only=True)
class Gbt35965Config(AdapterConfig):
    """Settings of the GB/T 35965 adapter."""

    default_time_zone: str = field(
        default=BEIJING_TIME,
        metadata={"doc": "UTC offset (+hh:mm) of times written without one; the profile's own is +08:00"},
    )

    def __post_init__(self) -> None:
        try:
            _check_zone(self.default_time_zone)
        except ValueError as exc:
            raise ConfigError(str(exc), key="default_time_zone") from None


# -- reading ----------------------------------------------------------------------------------


def _index(parent: Element) -> dict[str, list[Element]]:
    """The child elements of ``parent`` by local name (namespaces are not part of this profile)."""
    children: dict[str, list[Element]] = {}
    for child in parent:
        if isinstance(child.tag, str):
            children.setdefault(safexml.local_name(child.tag), []).append(child)
    return children


def _text(element: Element) -> str:
    return "".join(element.itertext()).strip()


def _one(children: dict[str, list[Element]], name: str, path: str) -> str:
    """The text of a child that may appear once at most ("" when absent)."""
    found = children.get(name, [])
    if len(found) > 1:
        raise AdapterError(f"appears {len(found)} times, at most once is allowed", field=f"{path}.{name}")
    return _text(found[0]) if found else ""


def _first_of(children: dict[str, list[Element]], names: Sequence[str], path: str) -> tuple[str, str]:
    """The text and name of the first of ``names`` that is present (spelling variants of one field)."""
    for name in names:
        if name in children:
            return _one(children, name, path), name
    return "", names[0]


def _all(children: dict[str, list[Element]], name: str) -> list[str]:
    return [text for text in (_text(e) for e in children.get(name, [])) if text]


def _parse_time(text: str, path: str, default_zone: str) -> tuple[Timestamp, str]:
    """A written time and the UTC offset it was written in (``+hh:mm``)."""
    match = _TIME.fullmatch(text)
    if not match:
        raise AdapterError(f"{text[:40]!r} is not a time like 2020-02-05 10:45:00+08:00", field=path)
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    fraction, written_zone = match[7] or "", match[8]
    zone = "+00:00" if written_zone == "Z" else written_zone or default_zone
    try:
        zone = _check_zone(zone)
        sign = -1 if zone[0] == "-" else 1
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign
        local = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone(offset))
        seconds = int(local.astimezone(dt.UTC).timestamp())
    except (ValueError, OverflowError) as exc:
        raise AdapterError(f"{text[:40]!r} is not a valid time: {exc}", field=path) from None
    if not EARLIEST_TIME_S <= seconds <= _LATEST_TIME_S:
        raise AdapterError(f"{text[:40]!r} is before 2000 or after 9999", field=path)
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return Timestamp(seconds=seconds, nanos=nanos), zone


def _number(text: str, path: str) -> Decimal:
    if not _NUMBER.fullmatch(text):
        raise AdapterError(f"{text[:40]!r} is not a decimal number", field=path)
    try:
        return Decimal(text)
    except InvalidOperation:  # not reached for text the pattern admits; kept so no other error escapes
        raise AdapterError(f"{text[:40]!r} is not a decimal number", field=path) from None


def _point(text: str, path: str) -> pb.Point:
    """``lat,lon`` in WGS 84 degrees, as CAP writes a vertex."""
    parts = text.split(",")
    if len(parts) != 2:
        raise AdapterError(f"{text[:40]!r} is not a 'lat,lon' pair", field=path)
    lat, lon = (float(_number(p.strip(), path)) + 0.0 for p in parts)  # + 0.0: no negative zero
    if not -90.0 <= lat <= 90.0 or not -180.0 <= lon <= 180.0:
        raise AdapterError(f"{text[:40]!r} is not a latitude,longitude in range", field=path)
    return pb.Point(lat=lat, lon=lon)


def _polygon(text: str, path: str) -> pb.Polygon:
    points = [_point(pair, path) for pair in text.split()]
    if len(points) < 4:
        raise AdapterError(f"a polygon needs at least 4 points, got {len(points)}", field=path)
    if len(points) > _LIMITS.max_polygon_points:
        raise AdapterError(f"more than {_LIMITS.max_polygon_points} points", field=path, kind="size")
    if (points[0].lat, points[0].lon) != (points[-1].lat, points[-1].lon):
        raise AdapterError("the polygon is not closed (its first point differs from its last)", field=path)
    return pb.Polygon(points=points)


def _circle(text: str, path: str) -> pb.Circle:
    """``lat,lon radius`` with the radius in kilometres, as CAP writes a circle."""
    parts = text.split()
    if len(parts) != 2:
        raise AdapterError(f"{text[:40]!r} is not a 'lat,lon radius_km' circle", field=path)
    center = _point(parts[0], path)
    # Decimal keeps km -> m exact, so writing the radius back in km gives the same metres.
    radius_m = float(_number(parts[1], path) * 1000) + 0.0
    if not 0.0 <= radius_m <= 20_037_000.0:
        raise AdapterError(f"radius {parts[1][:20]!r} km is not a distance on Earth", field=path)
    return pb.Circle(center=center, radius_m=radius_m)


def _severity(text: str, path: str) -> int:
    if not text:
        raise AdapterError("required (Red, Orange, Yellow, Blue or Unknown)", field=path, kind="missing")
    # NFKC turns the Roman-numeral characters (Ⅳ) and full-width letters into plain ones.
    word = unicodedata.normalize("NFKC", text).strip().casefold()
    for candidate in (word, word.removesuffix("预警"), word.removesuffix("级")):
        if candidate in _SEVERITY_WORDS:
            return _SEVERITY_WORDS[candidate]
    raise AdapterError(f"unknown severity {text[:40]!r} (Red, Orange, Yellow, Blue, 红色.., I..IV)", field=path)


def _references(written: str, sender_key: str, sender: str) -> list[str]:
    """Envelope ids of the alerts ``written`` refers to.

    Both forms are read: the profile's bare identifiers (separated by spaces or commas), meaning
    earlier alerts of the same sender, and CAP's ``sender,identifier,sent`` triples.
    """
    ids: list[str] = []
    for token in written.split():
        parts = [p for p in token.split(",") if p]
        if len(parts) == 3 and _TIME.fullmatch(parts[2]):
            key = sender_key if parts[0] in {sender, sender_key} else parts[0]
            ids.append(stable_id(FORMAT, key, parts[1]))
        else:
            ids.extend(stable_id(FORMAT, sender_key, identifier) for identifier in parts)
    return list(dict.fromkeys(ids))


class Gbt35965Codec:
    """GB/T 35965 documents (one ``<alert>`` each) to ALERT envelopes and back."""

    def __init__(self, config: Gbt35965Config, context: AdapterContext) -> None:
        self.config = config
        self.regions: RegionTable = context.regions
        self.places: Places = context.places
        self.now: Callable[[], float] = context.now or time.time

    # -- decode -----------------------------------------------------------------------------

    def decode(self, data: bytes) -> list[pb.Envelope]:
        """The one envelope of a GB/T 35965 document; AdapterError naming the field otherwise."""
        root = safexml.parse(data)
        name = safexml.local_name(root.tag)
        if name != "alert":
            raise AdapterError(f"the root element is <{name[:40]}>, not <alert>", field=name[:40], kind="unsupported")
        children = _index(root)
        alert = pb.Alert()
        alert.identifier = _one(children, "identifier", "alert")
        if not alert.identifier:
            raise AdapterError("required", field="alert.identifier", kind="missing")
        if len(alert.identifier) > _LIMITS.max_id_chars or re.search(r"[\s,]", alert.identifier):
            raise AdapterError("must be one token (no spaces or commas) and not too long", field="alert.identifier")
        alert.sender = _one(children, "sender", "alert")
        alert.sender_code = _one(children, "senderCode", "alert")
        sent_text, sent_name = _first_of(children, ("sendTime", "sent"), "alert")
        if not sent_text:
            raise AdapterError("required", field="alert.sendTime", kind="missing")
        sent, zone = _parse_time(sent_text, f"alert.{sent_name}", self.config.default_time_zone)
        if sent.seconds > self.now() + _LIMITS.max_clock_skew_s:
            raise AdapterError(
                f"{sent_text[:40]!r} is in the future (check the sender's clock)", field=f"alert.{sent_name}"
            )
        alert.sent.CopyFrom(sent)
        alert.time_zone = zone
        alert.status = _one(children, "status", "alert")
        status = _STATUS_WORDS.get(alert.status.casefold())
        if status is None:
            reason = "required" if not alert.status else f"unknown status {alert.status[:40]!r}"
            raise AdapterError(reason, field="alert.status", kind="missing" if not alert.status else "value")
        alert.msg_type = _one(children, "msgType", "alert")
        alert.scope = _one(children, "scope", "alert")
        for name in ("source", "restriction", "addresses", "note", "incidents", "references"):
            setattr(alert, name, _one(children, name, "alert"))
        alert.sec_classification = _one(children, "secClassification", "alert")
        for i, code in enumerate(children.get("code", [])):
            for j, method in enumerate(_index(code).get("method", [])):
                alert.methods.append(self._method(method, f"alert.code[{i}].method[{j}]"))
        alert.dissemination = ",".join(m.name for m in alert.methods)
        infos = children.get("info", [])
        if not infos:
            raise AdapterError("an alert needs at least one <info>", field="alert.info", kind="missing")
        for i, info in enumerate(infos):
            alert.infos.append(self._info(info, f"alert.info[{i}]", alert.time_zone))
        alert.event_type_code = next(
            (code.value for code in alert.infos[0].event_codes if code.name == EVENT_CODE_SCHEME), ""
        )
        return [self._envelope(alert, status)]

    def _method(self, element: Element, path: str) -> pb.DisseminationMethod:
        children = _index(element)
        parts, _ = _first_of(children, ("audenceprt", "audiencePrt", "audiencePart"), path)
        return pb.DisseminationMethod(
            name=_one(children, "methodName", path),
            message=_one(children, "message", path),
            audience_groups=_one(children, "audienceGrp", path),
            audience_parts=parts,
        )

    def _info(self, element: Element, path: str, zone: str) -> pb.AlertInfo:
        children = _index(element)
        info = pb.AlertInfo()
        info.language = _one(children, "language", path)
        code = _one(children, "eventType", path)
        if not code:
            raise AdapterError("required", field=f"{path}.eventType", kind="missing")
        info.event = event_name(code)
        info.event_codes.append(pb.NamedValue(name=EVENT_CODE_SCHEME, value=code))
        info.categories.extend(_all(children, "category"))
        info.response_types.extend(_all(children, "responseType"))
        info.urgency = _one(children, "urgency", path)
        info.severity = _one(children, "severity", path)
        _severity(info.severity, f"{path}.severity")
        info.certainty = _one(children, "certainty", path)
        for name in ("audience", "contact", "headline", "description", "instruction", "web"):
            setattr(info, name, _one(children, name, path))
        for name in ("headline", "description", "instruction"):
            if len(getattr(info, name)) > _LIMITS.max_text_chars:
                raise AdapterError(f"longer than {_LIMITS.max_text_chars} characters", field=f"{path}.{name}")
        info.sender_name = _one(children, "senderName", path)
        for name in ("effective", "onset", "expires"):
            written = _one(children, name, path)
            if written:
                getattr(info, name).CopyFrom(_parse_time(written, f"{path}.{name}", zone)[0])
        for i, parameter in enumerate(children.get("parameter", [])):
            pair = _index(parameter)
            where = f"{path}.parameter[{i}]"
            info.parameters.append(pb.NamedValue(name=_one(pair, "valueName", where), value=_one(pair, "value", where)))
        for i, area in enumerate(children.get("area", [])):
            info.areas.append(self._area(area, f"{path}.area[{i}]"))
        return info

    def _area(self, element: Element, path: str) -> pb.AlertArea:
        children = _index(element)
        area = pb.AlertArea(description=_one(children, "areaDesc", path))
        for kind, parse, target in (("polygon", _polygon, area.polygons), ("circle", _circle, area.circles)):
            for i, shape in enumerate(children.get(kind, [])):
                text = _text(shape)
                if text:
                    target.append(parse(text, f"{path}.{kind}[{i}]"))  # type: ignore[arg-type]
        if len(area.polygons) + len(area.circles) > _LIMITS.max_shapes:
            raise AdapterError(f"more than {_LIMITS.max_shapes} shapes", field=path, kind="size")
        for written in _all(children, "geocode"):
            area.geocodes.extend(
                pb.NamedValue(name=GEOCODE_SCHEME, value=code) for code in _GEOCODE_SPLIT.split(written) if code
            )
        for name, target_name in (("altitude", "altitude_m"), ("ceiling", "ceiling_m")):
            written = _one(children, name, path)
            if written:
                metres = float(_number(written, f"{path}.{name}") * FOOT_M)  # CAP writes them in feet
                if not math.isfinite(metres):
                    raise AdapterError(f"{written[:40]!r} is too large", field=f"{path}.{name}")
                setattr(area, target_name, metres)
        return area

    def _envelope(self, alert: pb.Alert, status: int) -> pb.Envelope:
        sender_key = alert.sender_code or alert.sender
        env = pb.Envelope(
            id=stable_id(FORMAT, sender_key, alert.identifier),
            kind=pb.ALERT,
            status=status,  # type: ignore[arg-type]
            priority=0,  # warnings go first, whatever their colour
        )
        env.sent_at.CopyFrom(alert.sent)
        env.severity = max(  # type: ignore[assignment]
            _severity(info.severity, f"alert.info[{i}].severity") for i, info in enumerate(alert.infos)
        )
        if all(info.HasField("expires") for info in alert.infos):
            last, expires = max(
                enumerate(info.expires for info in alert.infos), key=lambda i: (i[1].seconds, i[1].nanos)
            )
            if (expires.seconds, expires.nanos) <= (alert.sent.seconds, alert.sent.nanos):
                raise AdapterError("is not after sendTime", field=f"alert.info[{last}].expires")
            env.expires_at.CopyFrom(expires)
        references = _references(alert.references, sender_key, alert.sender)
        if len(references) > _LIMITS.max_references:
            raise AdapterError(f"more than {_LIMITS.max_references} references", field="alert.references", kind="size")
        env.references.extend(references)
        polygons = [p for info in alert.infos for area in info.areas for p in area.polygons]
        circles = [c for info in alert.infos for area in info.areas for c in area.circles]
        if len(polygons) + len(circles) > _LIMITS.max_shapes:
            raise AdapterError(f"more than {_LIMITS.max_shapes} shapes in all areas", field="alert.info", kind="size")
        if polygons or circles:
            env.geometry.polygons.extend(polygons)
            env.geometry.circles.extend(circles)
        env.region = self._region(alert, polygons, circles)
        env.origin.agency = self.config.agency or "meteorology"
        env.origin.region = self.config.region or env.region
        env.origin.system = self.config.system or FORMAT
        env.provenance.original_format = FORMAT
        env.provenance.original_id = alert.identifier
        env.alert.CopyFrom(alert)
        if env.ByteSize() > _LIMITS.max_envelope_bytes:
            raise AdapterError(
                f"the alert is {env.ByteSize()} bytes as an envelope, more than {_LIMITS.max_envelope_bytes}",
                kind="size",
            )
        return env

    def _region(self, alert: pb.Alert, polygons: list[pb.Polygon], circles: list[pb.Circle]) -> str:
        """The region the alert concerns: its geocodes, else the issuer's region in a national-form
        identifier, else the place nearest its area, else the issuer's region in its senderCode (the
        sender's seat says less about the area than the area itself), else the configured region."""
        codes = [
            code.value[:6]
            for info in alert.infos
            for area in info.areas
            for code in area.geocodes
            if code.value[:6].isascii() and code.value[:6].isdigit() and code.value[:6] in self.regions
        ]
        if codes:
            return self._common_region(list(dict.fromkeys(codes)))
        issued = _IDENTIFIER.fullmatch(alert.identifier)
        if issued and issued[1] in self.regions:
            return issued[1]
        centre = _centre(polygons, circles)
        if centre is not None:
            nearest = self.places.nearest(*centre)
            if nearest.distance_km <= NEAREST_PLACE_LIMIT_KM:
                return nearest.code
        sender = _SENDER_CODE.fullmatch(alert.sender_code)
        if sender and sender[1] in self.regions:
            return sender[1]
        if self.config.region:
            return self.config.region
        raise AdapterError(
            "no region: no known geocode, no region in the identifier or senderCode, no area near a known "
            "place, and no region configured",
            field="alert.info",
            kind="missing",
        )

    def _common_region(self, codes: list[str]) -> str:
        """The smallest region that holds all ``codes`` (the first one when they share none)."""
        common = [codes[0], *self.regions.ancestors(codes[0])]
        for code in codes[1:]:
            holding = {code, *self.regions.ancestors(code)}
            common = [c for c in common if c in holding]
        return common[0] if common else codes[0]

    # -- encode -----------------------------------------------------------------------------

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:
        """One ALERT envelope as a GB/T 35965 document, in the shape the national system writes."""
        if len(envelopes) != 1:
            raise AdapterError(
                f"a GB/T 35965 document holds exactly one alert, got {len(envelopes)} envelopes", kind="unsupported"
            )
        env = envelopes[0]
        if env.kind != pb.ALERT or env.WhichOneof("payload") != "alert":
            raise AdapterError(
                "only ALERT envelopes with an alert payload can be written", field="kind", kind="canonical"
            )
        alert = env.alert
        if not alert.infos:
            raise AdapterError("an alert needs at least one info block", field="alert.infos", kind="canonical")
        try:
            zone = _check_zone(alert.time_zone or BEIJING_TIME)
        except ValueError as exc:
            raise AdapterError(str(exc), field="alert.time_zone", kind="canonical") from None
        out = _Writer()
        out.open("alert")
        out.leaf("identifier", alert.identifier or env.provenance.original_id or env.id)
        out.leaf("sender", alert.sender)
        out.leaf("senderCode", alert.sender_code)
        out.leaf("sendTime", _format_time(alert.sent if alert.HasField("sent") else env.sent_at, zone))
        status = alert.status if _STATUS_WORDS.get(alert.status.casefold()) == env.status else ""
        out.leaf("status", status or _STATUS_WORD_OUT.get(env.status, ""))
        out.leaf("msgType", alert.msg_type)
        out.leaf("scope", alert.scope)
        for name in ("source", "restriction", "addresses"):
            out.optional(name, getattr(alert, name))
        methods = list(alert.methods) or [
            pb.DisseminationMethod(name=name) for name in alert.dissemination.split(",") if name
        ]
        if methods:
            out.open("code")
            for method in methods:
                out.open("method")
                out.leaf("methodName", method.name)
                out.leaf("message", method.message)
                out.leaf("audienceGrp", method.audience_groups)
                out.leaf("audenceprt", method.audience_parts)
                out.close("method")
            out.close("code")
        else:
            out.leaf("code", "")
        out.leaf("secClassification", alert.sec_classification)
        out.leaf("note", alert.note)
        out.leaf("references", alert.references)
        out.optional("incidents", alert.incidents)
        for info in alert.infos:
            self._write_info(out, info, alert, env, zone)
        out.close("alert")
        return out.finish()

    def _write_info(self, out: _Writer, info: pb.AlertInfo, alert: pb.Alert, env: pb.Envelope, zone: str) -> None:
        out.open("info")
        out.leaf("language", info.language)
        for category in info.categories:
            out.leaf("category", category)
        code = next((c.value for c in info.event_codes if c.name == EVENT_CODE_SCHEME), "")
        out.leaf("eventType", code or alert.event_type_code or info.event)
        for response in info.response_types:
            out.leaf("responseType", response)
        out.leaf("urgency", info.urgency)
        out.leaf(
            "severity",
            info.severity if _is_severity(info.severity) else _SEVERITY_WORD_OUT.get(env.severity, "Unknown"),
        )
        out.leaf("certainty", info.certainty)
        out.optional("audience", info.audience)
        for name in ("effective", "onset", "expires"):
            out.leaf(name, _format_time(getattr(info, name), zone) if info.HasField(name) else "")
        out.leaf("senderName", info.sender_name)
        out.leaf("headline", info.headline)
        out.leaf("description", info.description)
        out.leaf("instruction", info.instruction)
        out.leaf("web", info.web)
        out.optional("contact", info.contact)
        for parameter in info.parameters:
            out.open("parameter")
            out.leaf("valueName", parameter.name)
            out.leaf("value", parameter.value)
            out.close("parameter")
        for area in info.areas:
            out.open("area")
            out.leaf("areaDesc", area.description)
            for polygon in area.polygons or [None]:
                out.leaf("polygon", " ".join(_point_text(p) for p in polygon.points) if polygon else "")
            for circle in area.circles or [None]:
                out.leaf("circle", _circle_text(circle) if circle else "")
            # Only administrative-division codes fit this element; other schemes have nowhere to go.
            codes = [c.value for c in area.geocodes if c.value.isascii() and c.value.isdigit()]
            out.leaf("geocode", ",".join(codes))
            if area.HasField("altitude_m"):
                out.leaf("altitude", _decimal_text(Decimal(repr(area.altitude_m)) / FOOT_M))
            if area.HasField("ceiling_m"):
                out.leaf("ceiling", _decimal_text(Decimal(repr(area.ceiling_m)) / FOOT_M))
            out.close("area")
        out.close("info")


def _centre(polygons: list[pb.Polygon], circles: list[pb.Circle]) -> tuple[float, float] | None:
    """A point inside or near the warning area: the first polygon's vertex mean, else the first circle's centre."""
    if polygons:
        vertices = polygons[0].points[:-1]  # the closing point repeats the first
        return sum(p.lat for p in vertices) / len(vertices), sum(p.lon for p in vertices) / len(vertices)
    if circles:
        return circles[0].center.lat, circles[0].center.lon
    return None


def _format_time(timestamp: Timestamp, zone: str) -> str:
    sign = -1 if zone[0] == "-" else 1
    offset = dt.timezone(dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign)
    try:
        local = dt.datetime.fromtimestamp(timestamp.seconds, offset)
    except (ValueError, OverflowError, OSError) as exc:
        raise AdapterError(f"time {timestamp.seconds} cannot be written: {exc}", kind="canonical") from None
    fraction = f".{timestamp.nanos:09d}".rstrip("0") if timestamp.nanos else ""
    return f"{local:%Y-%m-%d %H:%M:%S}{fraction}{zone}"


def _decimal_text(value: Decimal) -> str:
    """A number in plain positional notation (never 1E-5), as CAP's decimal values are written."""
    text = format(value.normalize(), "f")
    return text if text not in {"-0", ""} else "0"


def _circle_text(circle: pb.Circle) -> str:
    return f"{_point_text(circle.center)} {_decimal_text(Decimal(repr(circle.radius_m)) / 1000)}"


def _is_severity(text: str) -> bool:
    try:
        _severity(text, "")
    except AdapterError:
        return False
    return True


def _point_text(point: pb.Point) -> str:
    return f"{_decimal_text(Decimal(repr(point.lat)))},{_decimal_text(Decimal(repr(point.lon)))}"


class _Writer:
    """Indented XML text, element by element; empty elements written as ``<name/>`` as the
    national system writes them."""

    def __init__(self) -> None:
        self._lines = ['<?xml version="1.0" encoding="UTF-8"?>']
        self._depth = 0

    def open(self, name: str) -> None:
        self._lines.append(f"{'    ' * self._depth}<{name}>")
        self._depth += 1

    def close(self, name: str) -> None:
        self._depth -= 1
        self._lines.append(f"{'    ' * self._depth}</{name}>")

    def leaf(self, name: str, text: str) -> None:
        indent = "    " * self._depth
        if not text:
            self._lines.append(f"{indent}<{name}/>")
            return
        bad = _NOT_XML_CHAR.search(text)
        if bad:
            raise AdapterError(f"character U+{ord(bad[0]):04X} cannot be written in XML", field=name, kind="encoding")
        self._lines.append(f"{indent}<{name}>{safexml.escape_text(text)}</{name}>")

    def optional(self, name: str, text: str) -> None:
        """A CAP element the national profile leaves out unless it has a value."""
        if text:
            self.leaf(name, text)

    def finish(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode("utf-8")
