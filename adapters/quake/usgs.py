"""USGS GeoJSON summary feeds (``earthquake.usgs.gov/earthquakes/feed/v1.0/summary/*.geojson``).

A FeatureCollection of Point features; ``properties.time`` and ``properties.updated`` are
milliseconds since the epoch, ``geometry.coordinates`` is ``[lon, lat, depth_km]``. A single
Feature (the USGS "detail" feed of one event) is read as a collection of one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.errors import AdapterError
from adapters.quake import event as ev
from adapters.quake.event import Item, QuakeEvent, Skipped

FORMAT = "usgs-geojson"


def parse(data: bytes, now: float) -> list[Item]:
    """One item per feature; AdapterError for a document that is not a GeoJSON feed at all."""
    document = ev.json_document(data)
    if not isinstance(document, dict):
        raise AdapterError("expected a GeoJSON object", kind="unsupported")
    kind = document.get("type")
    if kind == "Feature":
        return [_item(document, "", now)]
    if kind != "FeatureCollection":
        raise AdapterError(f"expected a FeatureCollection, got type {ev.clip(str(kind), 40)!r}", field="type")
    features = document.get("features")
    if not isinstance(features, list):
        raise AdapterError("expected a list of features", field="features", kind="missing")
    return [_item(feature, f"features[{i}]", now) for i, feature in enumerate(features)]


def _item(feature: object, path: str, now: float) -> Item:
    try:
        return _event(feature, path, now)
    except AdapterError as exc:
        return exc


def _event(feature: object, path: str, now: float) -> QuakeEvent | Skipped:
    def at(name: str) -> str:
        return f"{path}.{name}" if path else name

    if not isinstance(feature, dict):
        raise AdapterError("expected a GeoJSON Feature object", field=path or "feature")
    properties = feature.get("properties")
    if not isinstance(properties, dict):
        raise AdapterError("expected an object", field=at("properties"), kind="missing")
    event_type = ev.text(properties.get("type"), at("properties.type"))
    if event_type and event_type != "earthquake":  # quarry blasts, explosions, ice quakes
        return Skipped(path, "not-earthquake")
    net = ev.text(properties.get("net"), at("properties.net"))
    code = ev.text(properties.get("code"), at("properties.code"))
    raw_id = feature.get("id") or (net + code if net and code else None)
    event_id = ev.identifier(raw_id, at("id"))
    aliases = tuple(_ids(properties.get("ids"), at("properties.ids"), event_id))

    lon, lat, km = _coordinates(feature.get("geometry"), at("geometry"))
    origin = ev.epoch_millis(properties.get("time"), at("properties.time"), now)
    updated = origin
    if properties.get("updated") is not None:
        updated = ev.epoch_millis(properties.get("updated"), at("properties.updated"), now)
    mag = ev.magnitude(properties.get("mag"), at("properties.mag"))
    mag_type = ev.text(properties.get("magType"), at("properties.magType"))
    place = ev.text(properties.get("place"), at("properties.place"))
    title = ev.text(properties.get("title"), at("properties.title"))
    status = ev.text(properties.get("status"), at("properties.status"))
    return QuakeEvent(
        path=path,
        event_id=event_id,
        aliases=aliases,
        origin_time=origin,
        updated=updated,
        lat=lat,
        lon=lon,
        depth_km=km,
        magnitude=mag,
        magnitude_type=mag_type,
        place=place,
        title=title or ev.english_summary(mag=mag, magnitude_type=mag_type, place=place, origin=origin),
        description=ev.english_description(
            mag=mag, magnitude_type=mag_type, place=place, origin=origin, lat=lat, lon=lon, km=km
        ),
        reporter=f"USGS ({net})" if net else "USGS",
        retracted=status == "deleted",
        attributes=tuple(_attributes(properties, at)),
    )


def _coordinates(geometry: object, path: str) -> tuple[float, float, float | None]:
    if not isinstance(geometry, dict):
        raise AdapterError("expected a Point geometry", field=path, kind="missing")
    if geometry.get("type") != "Point":
        raise AdapterError(f"expected a Point, got {ev.clip(str(geometry.get('type')), 40)!r}", field=f"{path}.type")
    where = f"{path}.coordinates"
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list) or not 2 <= len(coordinates) <= 3:
        raise AdapterError("expected [longitude, latitude, depth_km]", field=where, kind="missing")
    lon = ev.longitude(coordinates[0], f"{where}[0]")
    lat = ev.latitude(coordinates[1], f"{where}[1]")
    km = ev.number(coordinates[2], f"{where}[2]", required=False) if len(coordinates) == 3 else None
    return lon, lat, ev.depth(km, f"{where}[2]")


def _ids(value: object, path: str, event_id: str) -> list[str]:
    """The other ids of the event: USGS writes them as ",us1000bknk,at00p0fr4z,"."""
    listed = ev.text(value, path)
    return [part for part in dict.fromkeys(listed.split(",")) if part and part != event_id and " " not in part]


def _attributes(properties: dict[str, Any], at: Callable[[str], str]) -> list[tuple[str, str]]:
    """What an emergency manager may want from the feed beyond the canonical fields."""
    found: list[tuple[str, str]] = []
    for key, name in (("status", "review_status"), ("url", "url"), ("net", "network"), ("alert", "pager_alert")):
        value = ev.text(properties.get(key), at(f"properties.{key}"))
        if value:
            found.append((name, value))
    for key, name in (("tsunami", "tsunami"), ("sig", "significance"), ("mmi", "mmi"), ("felt", "felt_reports")):
        number = ev.number(properties.get(key), at(f"properties.{key}"), required=False)
        if number is not None:
            found.append((name, f"{number:g}"))
    return found
