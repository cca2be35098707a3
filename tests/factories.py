"""Envelopes for tests: valid by default, with keyword overrides for the case at hand."""

from __future__ import annotations

import time

from yiwang.v1 import envelope_pb2 as pb

from gateway.ids import uuid7


def observation(
    *,
    envelope_id: str | None = None,
    region: str = "410105",
    agency: str = "water",
    severity: pb.Severity = pb.SEVERITY_UNSPECIFIED,
    lat: float | None = 34.91,
    lon: float = 113.66,
    value: float = 91.2,
    sent_at: float | None = None,
    status: pb.Status = pb.ACTUAL,
) -> pb.Envelope:
    """A water-level reading at a Zhengzhou station."""
    env = pb.Envelope(
        id=envelope_id or uuid7(), kind=pb.OBSERVATION, region=region, status=status, severity=severity, priority=2
    )
    env.origin.agency = agency
    env.origin.region = region
    env.sent_at.FromNanoseconds(int((time.time() if sent_at is None else sent_at) * 1e9))
    if lat is not None:
        env.geometry.point.lat = lat
        env.geometry.point.lon = lon
    env.observation.station_id = "41100050"
    env.observation.measurements.add(metric="39", value=value, unit="m", quality=pb.GOOD)
    return env


def alert(
    *,
    envelope_id: str | None = None,
    region: str = "410102",
    severity: pb.Severity = pb.ORANGE,
    polygon: list[tuple[float, float]] | None = None,
) -> pb.Envelope:
    """A meteorological rainstorm warning with its area as a polygon."""
    env = pb.Envelope(id=envelope_id or uuid7(), kind=pb.ALERT, region=region, status=pb.ACTUAL, severity=severity)
    env.origin.agency = "meteorology"
    env.origin.region = "410100"
    env.sent_at.GetCurrentTime()
    ring = polygon or [(34.70, 113.50), (34.70, 113.63), (34.80, 113.63), (34.80, 113.50), (34.70, 113.50)]
    shape = env.geometry.polygons.add()
    for lat, lon in ring:
        shape.points.add(lat=lat, lon=lon)
    info = env.alert.infos.add(language="zh-CN", event="暴雨", severity="橙色", headline="暴雨橙色预警")
    info.areas.add(description="中原区").polygons.add().CopyFrom(shape)
    return env


def incident(
    *, envelope_id: str | None = None, region: str = "410105", grade: pb.IncidentGrade = pb.GRADE_GENERAL
) -> pb.Envelope:
    env = pb.Envelope(id=envelope_id or uuid7(), kind=pb.INCIDENT, region=region, status=pb.ACTUAL, severity=pb.YELLOW)
    env.origin.agency = "emergency"
    env.origin.region = region
    env.sent_at.GetCurrentTime()
    env.incident.incident_id = "ZZ-JS-1"
    env.incident.event_type = "11B33"
    env.incident.grade = grade
    env.incident.stage = pb.STAGE_INITIAL
    env.incident.report_number = 1
    return env
