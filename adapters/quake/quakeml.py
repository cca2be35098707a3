"""QuakeML 1.2 event documents (FDSN event web services, USGS/ANSS products, INGV).

Elements are matched by namespace (BED 1.2 or its real-time variant), so extension elements of
other namespaces (``anss:``, ``catalog:``, ``ingv:``) are never mistaken for BED ones. Each event
is read at its preferred origin and preferred magnitude (the first of each when none is named).

QuakeML differs from the GeoJSON feed in ways that matter here: depth is in metres, times may lack
a zone (they are UTC), and an event may have no publicID; its id is then derived from its origin
time and place, so the same event read twice gets the same id. ANSS documents carry the
``catalog:eventsource``/``catalog:eventid`` attributes: their concatenation ("usc000nwtr") is
the id the USGS GeoJSON feed uses, so the same event from both formats is recognised as one.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from adapters import safexml
from adapters.errors import AdapterError
from adapters.plugin import stable_id
from adapters.quake import event as ev
from adapters.quake.event import Item, QuakeEvent, Skipped

FORMAT = "quakeml"
QUAKEML_NS = "http://quakeml.org/xmlns/quakeml/1.2"
BED_NAMESPACES = frozenset({"http://quakeml.org/xmlns/bed/1.2", "http://quakeml.org/xmlns/bed-rt/1.2"})
ANSS_CATALOG_NS = "{http://anss.org/xmlns/catalog/0.1}"

#: QuakeML event types reported as earthquakes; "not existing" marks a retracted event and any
#: other type (quarry blast, explosion, landslide, ...) is skipped.
EARTHQUAKE_TYPES = frozenset({"", "earthquake", "induced or triggered event", "not reported"})
RETRACTED_TYPE = "not existing"


def parse(data: bytes, now: float) -> list[Item]:
    """One item per event; AdapterError for a document that is not QuakeML 1.2."""
    root = safexml.parse(data, limit=ev.MAX_DOCUMENT_BYTES)
    name, space = safexml.local_name(root.tag), safexml.namespace(root.tag)
    if name == "quakeml" and space == QUAKEML_NS:
        parameters = _child(root, "eventParameters")
        if parameters is None:
            raise AdapterError("required", field="eventParameters", kind="missing")
    elif name == "eventParameters" and space in BED_NAMESPACES:
        parameters = root
    else:
        raise AdapterError(f"expected a QuakeML 1.2 document, got <{ev.clip(name, 40)}>", kind="unsupported")
    items: list[Item] = []
    for i, element in enumerate(_children(parameters, "event")):
        path = f"eventParameters.event[{i}]"
        try:
            items.append(_event(element, path, now))
        except AdapterError as exc:
            items.append(exc)
    return items


def _event(element: Element, path: str, now: float) -> QuakeEvent | Skipped:
    event_type = _text(element, "type")
    if event_type not in EARTHQUAKE_TYPES and event_type != RETRACTED_TYPE:
        return Skipped(path, "not-earthquake")
    origin, origin_path = _preferred(element, "origin", "preferredOriginID", path)
    magnitude, magnitude_path = _preferred(element, "magnitude", "preferredMagnitudeID", path)

    origin_time = ev.date_time(_text(origin, "time", "value"), f"{origin_path}.time.value", now)
    lat = ev.latitude(_text(origin, "latitude", "value") or None, f"{origin_path}.latitude.value")
    lon = ev.longitude(_text(origin, "longitude", "value") or None, f"{origin_path}.longitude.value")
    depth_path = f"{origin_path}.depth.value"
    metres = ev.number(_text(origin, "depth", "value"), depth_path, required=False)
    km = ev.depth(None if metres is None else metres / 1000.0, depth_path)
    mag = ev.magnitude(_text(magnitude, "mag", "value") or None, f"{magnitude_path}.mag.value")
    mag_type = ev.clip(_text(magnitude, "type"), 40)

    stamps = [origin_time]
    for part, part_path in ((element, path), (origin, origin_path), (magnitude, magnitude_path)):
        created = _text(part, "creationInfo", "creationTime")
        if created:
            stamps.append(ev.date_time(created, f"{part_path}.creationInfo.creationTime", now))

    public_id = element.get("publicID", "").strip()
    source, catalog_id = element.get(ANSS_CATALOG_NS + "eventsource"), element.get(ANSS_CATALOG_NS + "eventid")
    if source and catalog_id:
        event_id = ev.identifier(source + catalog_id, f"{path}.catalog:eventid")
    elif public_id:
        event_id = ev.identifier(public_id, f"{path}.publicID")
    else:  # no id of its own: the same origin read again must come out with the same id
        event_id = stable_id("quakeml-event", str(ev.millis(origin_time)), f"{lat:.4f}", f"{lon:.4f}")
    aliases = (public_id,) if public_id and public_id != event_id else ()

    place = _place(element)
    reporter = _text(element, "creationInfo", "agencyID") or _text(origin, "creationInfo", "agencyID")
    attributes = [("quakeml_public_id", ev.clip(public_id))] if public_id else []
    for name in ("evaluationMode", "evaluationStatus"):
        value = _text(origin, name)
        if value:
            attributes.append((name, ev.clip(value, 40)))
    return QuakeEvent(
        path=path,
        event_id=event_id,
        aliases=aliases,
        origin_time=origin_time,
        updated=max(stamps),
        lat=lat,
        lon=lon,
        depth_km=km,
        magnitude=mag,
        magnitude_type=mag_type,
        place=place,
        title=ev.english_summary(mag=mag, magnitude_type=mag_type, place=place, origin=origin_time),
        description=ev.english_description(
            mag=mag, magnitude_type=mag_type, place=place, origin=origin_time, lat=lat, lon=lon, km=km
        ),
        reporter=ev.clip(reporter, 100),
        retracted=event_type == RETRACTED_TYPE,
        attributes=tuple(attributes),
    )


def _preferred(event: Element, name: str, preferred_tag: str, path: str) -> tuple[Element, str]:
    """The event's preferred origin or magnitude and its field path; the first when none is named."""
    candidates = _children(event, name)
    wanted = _text(event, preferred_tag)
    if wanted:
        for i, candidate in enumerate(candidates):
            if candidate.get("publicID", "").strip() == wanted:
                return candidate, f"{path}.{name}[{i}]"
        raise AdapterError(f"names no {name} of this event", field=f"{path}.{preferred_tag}", kind="missing")
    if not candidates:
        raise AdapterError("required", field=f"{path}.{name}", kind="missing")
    return candidates[0], f"{path}.{name}[0]"


def _place(event: Element) -> str:
    """The event's region name: the description of type "region name", else the first one."""
    descriptions = _children(event, "description")
    for description in descriptions:
        if _text(description, "type") == "region name":
            return ev.clip(_text(description, "text"))
    return ev.clip(_text(descriptions[0], "text")) if descriptions else ""


def _children(element: Element, name: str) -> list[Element]:
    return [
        child
        for child in element
        if isinstance(child.tag, str)
        and safexml.local_name(child.tag) == name
        and safexml.namespace(child.tag) in BED_NAMESPACES
    ]


def _child(element: Element, name: str) -> Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _text(element: Element, *names: str) -> str:
    """The stripped text at a path of BED children ("" when any step is absent)."""
    for name in names:
        child = _child(element, name)
        if child is None:
            return ""
        element = child
    return (element.text or "").strip()
