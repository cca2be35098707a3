"""The earthquake list of the China Earthquake Networks Center (中国地震台网中心, CENC).

``{"shuju": [{...}, ...], "jieguo": "..."}``, one object per event; a bare list of such objects is
read too. Numbers come as JSON numbers or as text ("28.50"); times are Beijing time (UTC+8)
written ``YYYY-MM-DD hh:mm:ss``. The fields read:

========== ===================================================================
CATA_ID    catalogue id of the event: the incident id
O_TIME     origin time, Beijing time
EPI_LAT    epicentre latitude, EPI_LON longitude (degrees)
EPI_DEPTH  hypocentre depth in km (may be empty)
M          magnitude, the one CENC publishes (its type is written "M")
LOCATION_C place name in Chinese
SYNC_TIME  when the record was last written (SAVE_TIME when absent): the version stamp
IS_DEL     set ("1", 1, true, "Y") when CENC withdrew the record
AUTO_FLAG  automatic or formal determination, EQ_TYPE, NEW_DID: kept as attributes
========== ===================================================================
"""

from __future__ import annotations

import datetime as dt

from adapters.errors import AdapterError
from adapters.quake import event as ev
from adapters.quake.event import Item, QuakeEvent

FORMAT = "cenc-json"
BEIJING = dt.timezone(dt.timedelta(hours=8), "CST")
_DELETED = frozenset({"1", "y", "yes", "true"})


def parse(data: bytes, now: float) -> list[Item]:
    """One item per record of ``shuju``; AdapterError for a document that is not a CENC list."""
    document = ev.json_document(data)
    if isinstance(document, dict):
        records = document.get("shuju")
        if not isinstance(records, list):
            raise AdapterError("expected a list of earthquake records", field="shuju", kind="missing")
    elif isinstance(document, list):
        records = document
    else:
        raise AdapterError("expected an object with a shuju list", kind="unsupported")
    items: list[Item] = []
    for i, record in enumerate(records):
        path = f"shuju[{i}]"
        try:
            items.append(_event(record, path, now))
        except AdapterError as exc:
            items.append(exc)
    return items


def _event(record: object, path: str, now: float) -> QuakeEvent:
    if not isinstance(record, dict):
        raise AdapterError("expected an earthquake record object", field=path)
    event_id = ev.identifier(record.get("CATA_ID"), f"{path}.CATA_ID")
    origin = ev.date_time(record.get("O_TIME"), f"{path}.O_TIME", now, default_zone=BEIJING)
    updated = origin
    for key in ("SYNC_TIME", "SAVE_TIME"):
        if record.get(key):
            updated = ev.date_time(record.get(key), f"{path}.{key}", now, default_zone=BEIJING)
            break
    lat = ev.latitude(record.get("EPI_LAT"), f"{path}.EPI_LAT")
    lon = ev.longitude(record.get("EPI_LON"), f"{path}.EPI_LON")
    km = ev.depth(ev.number(record.get("EPI_DEPTH"), f"{path}.EPI_DEPTH", required=False), f"{path}.EPI_DEPTH")
    mag = ev.magnitude(record.get("M"), f"{path}.M")
    place = ev.text(record.get("LOCATION_C"), f"{path}.LOCATION_C") or ev.text(
        record.get("LOCATION_S"), f"{path}.LOCATION_S"
    )
    attributes = [("source_time_zone", "+08:00")]
    for key, name in (("AUTO_FLAG", "cenc_auto_flag"), ("EQ_TYPE", "cenc_eq_type"), ("NEW_DID", "cenc_new_did")):
        value = record.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            attributes.append((name, ev.clip(str(value).strip(), 100)))
    return QuakeEvent(
        path=path,
        event_id=event_id,
        aliases=(),
        origin_time=origin,
        updated=updated,
        lat=lat,
        lon=lon,
        depth_km=km,
        magnitude=mag,
        magnitude_type="M",
        place=place,
        title=f"{place}{mag:.1f}级地震" if place else f"{mag:.1f}级地震",
        description=_description(origin=origin, place=place, lat=lat, lon=lon, km=km, mag=mag),
        reporter="中国地震台网中心",
        retracted=_deleted(record.get("IS_DEL")),
        attributes=tuple(attributes),
    )


def _deleted(flag: object) -> bool:
    if isinstance(flag, bool):
        return flag
    if isinstance(flag, int | float):
        return flag != 0
    return isinstance(flag, str) and flag.strip().lower() in _DELETED


def _description(*, origin: dt.datetime, place: str, lat: float, lon: float, km: float | None, mag: float) -> str:
    """The sentence CENC itself publishes, in Beijing time as it writes it."""
    local = origin.astimezone(BEIJING)
    north = f"北纬{lat:.2f}度" if lat >= 0 else f"南纬{-lat:.2f}度"
    east = f"东经{lon:.2f}度" if lon >= 0 else f"西经{-lon:.2f}度"
    depth_text = f"，震源深度{km:g}千米" if km is not None else ""
    where = place or "未注明地点"
    return (
        f"中国地震台网测定：{local.month:02d}月{local.day:02d}日{local.hour:02d}时{local.minute:02d}分"
        f"在{where}（{north}，{east}）发生{mag:.1f}级地震{depth_text}。"
    )
