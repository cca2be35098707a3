"""Validation at the door: the rules an envelope must meet before it may enter the log.

Each rule that fails yields one ``InvalidEnvelopeError`` naming the field path and the reason, so a
publisher can fix its message without reading our code. Only the first failing rule is reported.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from yiwang.v1 import envelope_pb2 as pb

from gateway.errors import InvalidEnvelopeError
from gateway.regions import RegionTable, is_well_formed
from gateway.selection import FLAG_UNSIGNED, RECORD, bounding_box, with_flags

#: The stable codes of the agencies in the network. A node may add more through its config.
AGENCIES: frozenset[str] = frozenset(
    {
        "emergency",
        "public_security",
        "transport",
        "meteorology",
        "housing",
        "natural_resources",
        "ecology_environment",
        "water",
        "health",
        "fire_rescue",
        "earthquake",
        "grain_reserve",
    }
)

AGENCY_CODE = re.compile(r"[a-z][a-z0-9_]{0,23}")

#: Which payload each kind must carry (HEARTBEAT may carry none).
PAYLOAD_OF_KIND: dict[int, str] = {
    pb.ALERT: "alert",
    pb.INCIDENT: "incident",
    pb.OBSERVATION: "observation",
    pb.POSITION: "position",
    pb.RESOURCE: "resource",
    pb.COMMAND: "command",
    pb.COMMAND_ACK: "command_ack",
    pb.HEARTBEAT: "heartbeat",
}

#: The values of kind, severity and status an envelope may carry (relay admission checks these too).
KINDS = frozenset(pb.Kind.values()) - {pb.KIND_UNSPECIFIED}
SEVERITIES = frozenset(pb.Severity.values())
STATUSES = frozenset(pb.Status.values()) - {pb.STATUS_UNSPECIFIED}
_GRADES = frozenset(pb.IncidentGrade.values())
_STAGES = frozenset(pb.ReportStage.values())
_QUALITIES = frozenset(pb.Quality.values())
_QUALITY_ARRAY = np.array(sorted(_QUALITIES), dtype=np.int64)
_MAX_SERIES_DELTA_MS = 100 * 366 * 86_400_000
_LAST_TIME_MS = 253_402_300_799_999
_ACK_STATES = frozenset(pb.AckState.values()) - {pb.ACK_STATE_UNSPECIFIED}

_NO_BOX = (math.nan, math.nan, math.nan, math.nan)

#: 2000-01-01T00:00:00Z: nothing the network carries was observed before it.
EARLIEST_TIME_S = 946_684_800
_ID_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and time limits applied at the door."""

    max_envelope_bytes: int = 1 << 20
    max_id_chars: int = 256
    max_text_chars: int = 64 * 1024
    max_references: int = 64
    max_attributes: int = 64
    max_attribute_key_chars: int = 128
    max_attribute_value_chars: int = 4096
    max_polygon_points: int = 10_000
    max_shapes: int = 256
    max_measurements: int = 1024
    max_series: int = 256  # series entries per observation
    max_series_points: int = 100_000  # points of all series of one observation together
    max_points_per_series: int = 65_536
    max_clock_skew_s: float = 600.0


class Validator:
    """Checks envelopes against the canonical model, the region table and the limits."""

    def __init__(
        self, regions: RegionTable, *, agencies: Iterable[str] = AGENCIES, limits: Limits | None = None
    ) -> None:
        self.regions = regions
        self.agencies = frozenset(agencies)
        self.limits = limits or Limits()
        self._payload_checks = {
            "alert": self._check_alert,
            "incident": self._check_incident,
            "observation": self._check_observation,
            "position": self._check_position,
            "resource": self._check_resource,
            "command": self._check_command,
            "command_ack": self._check_command_ack,
            "heartbeat": self._check_heartbeat,
        }

    def check(self, env: pb.Envelope, size: int, now: float | None = None) -> None:
        """Raises ``InvalidEnvelopeError`` for the first rule ``env`` breaks; ``size`` is its wire size."""
        self.admit(env, size, now)

    def admit(self, env: pb.Envelope, size: int, now: float | None = None) -> bytes:
        """Checks ``env`` like ``check`` and returns its selection record (``gateway.selection.RECORD``).

        Written for speed (this runs for every envelope): the common valid case takes the cheap
        tests, and the detailed reason is worked out only when one fails.
        """
        limits = self.limits
        if size > limits.max_envelope_bytes:
            raise InvalidEnvelopeError(
                "envelope", f"is {size} bytes, more than the limit of {limits.max_envelope_bytes}"
            )
        envelope_id = env.id
        if (
            not envelope_id
            or len(envelope_id) > limits.max_id_chars
            or not envelope_id.isprintable()
            or " " in envelope_id
        ):
            self._check_id("id", envelope_id, required=True)
        kind = env.kind
        if kind not in KINDS:
            reason = "required" if kind == pb.KIND_UNSPECIFIED else f"unknown value {kind}"
            raise InvalidEnvelopeError("kind", reason)
        if env.region not in self.regions:
            self._check_region("region", env.region)
        origin = env.origin
        if origin.agency not in self.agencies:
            if not origin.agency:
                raise InvalidEnvelopeError("origin.agency", "required")
            raise InvalidEnvelopeError("origin.agency", f"unknown agency code {origin.agency[:40]!r}")
        if origin.region and origin.region not in self.regions:
            self._check_region("origin.region", origin.region)
        if len(origin.node) > limits.max_id_chars or len(origin.system) > limits.max_id_chars:
            self._check_text("origin.node", origin.node, limits.max_id_chars)
            self._check_text("origin.system", origin.system, limits.max_id_chars)
        severity = env.severity
        if severity not in SEVERITIES:
            raise InvalidEnvelopeError("severity", f"unknown value {severity}")
        status = env.status
        if status not in STATUSES:
            reason = "required (ACTUAL, EXERCISE or TEST)" if status == 0 else f"unknown value {status}"
            raise InvalidEnvelopeError("status", reason)
        if env.priority > 3:
            raise InvalidEnvelopeError("priority", f"must be 0 (highest) to 3, got {env.priority}")
        start_now = time.time() if now is None else now
        start = self._check_times(env, start_now)
        box = _NO_BOX
        if env.HasField("geometry"):
            geometry = env.geometry
            self._check_geometry("geometry", geometry)
            box = bounding_box(geometry) or _NO_BOX
        references = env.references
        if references:
            if len(references) > limits.max_references:
                raise InvalidEnvelopeError("references", f"more than {limits.max_references} references")
            for i, ref in enumerate(references):
                self._check_id(f"references[{i}]", ref, required=True)
        attributes = env.attributes
        if attributes:
            if len(attributes) > limits.max_attributes:
                raise InvalidEnvelopeError("attributes", f"more than {limits.max_attributes} attributes")
            for key, value in attributes.items():
                if not key or len(key) > limits.max_attribute_key_chars:
                    raise InvalidEnvelopeError("attributes", f"key {key[:40]!r} is empty or too long")
                if len(value) > limits.max_attribute_value_chars:
                    raise InvalidEnvelopeError(f"attributes[{key[:40]}]", "value too long")
        payload = env.WhichOneof("payload")
        expected = PAYLOAD_OF_KIND[kind]
        if payload == expected:
            self._payload_checks[payload](env, start_now)
        elif payload is None:
            if kind != pb.HEARTBEAT:
                raise InvalidEnvelopeError(expected, f"required for kind {pb.Kind.Name(kind)}")
        else:
            raise InvalidEnvelopeError(payload, f"does not match kind {pb.Kind.Name(kind)} (expected {expected})")
        record = RECORD.pack(kind, severity, status, int(env.region), origin.agency.encode(), *box, start)
        return record if env.provenance.HasField("signature") else with_flags(record, FLAG_UNSIGNED)

    # -- pieces ---------------------------------------------------------------------------------

    def _check_id(self, field: str, value: str, *, required: bool) -> None:
        if not value:
            if required:
                raise InvalidEnvelopeError(field, "required")
            return
        if len(value) > self.limits.max_id_chars:
            raise InvalidEnvelopeError(field, f"longer than {self.limits.max_id_chars} characters")
        if not value.isprintable() or _ID_FORBIDDEN.search(value):
            raise InvalidEnvelopeError(field, "contains white space or control characters")

    def _check_text(self, field: str, value: str, limit: int) -> None:
        if len(value) > limit:
            raise InvalidEnvelopeError(field, f"longer than {limit} characters")

    def _check_region(self, field: str, code: str) -> None:
        if not code:
            raise InvalidEnvelopeError(field, "required")
        if not is_well_formed(code):
            raise InvalidEnvelopeError(field, f"{code[:20]!r} is not a six-digit GB/T 2260 code")
        if code not in self.regions:
            raise InvalidEnvelopeError(field, f"{code} is not a known GB/T 2260 region code")

    def _check_times(self, env: pb.Envelope, now: float) -> float:
        """Checks the times; returns the start (observed_at, else sent_at) in Unix seconds."""
        if not env.HasField("sent_at"):
            raise InvalidEnvelopeError("sent_at", "required")
        latest = now + self.limits.max_clock_skew_s
        sent = env.sent_at
        start = self._check_timestamp("sent_at", sent.seconds, sent.nanos, latest)
        if env.HasField("observed_at"):
            observed = env.observed_at
            start = self._check_timestamp("observed_at", observed.seconds, observed.nanos, latest)
        if env.HasField("expires_at"):
            expires = env.expires_at
            if self._check_timestamp("expires_at", expires.seconds, expires.nanos, None) <= start:
                raise InvalidEnvelopeError("expires_at", "is not after observed_at/sent_at")
        return start

    def _check_timestamp(self, field: str, seconds: int, nanos: int, latest: float | None) -> float:
        if not 0 <= nanos < 1_000_000_000:
            raise InvalidEnvelopeError(field, f"nanos {nanos} out of range")
        if seconds < EARLIEST_TIME_S:
            raise InvalidEnvelopeError(field, "is before 2000-01-01")
        if latest is not None and seconds > latest:
            raise InvalidEnvelopeError(
                field,
                f"is more than {self.limits.max_clock_skew_s:g} s in the future (check the sender's clock)",
            )
        if seconds > 253_402_300_799:
            raise InvalidEnvelopeError(field, "is after 9999-12-31")
        return seconds + nanos / 1e9

    def _check_point(self, field: str, point: pb.Point) -> None:
        lat, lon = point.lat, point.lon
        if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
            raise InvalidEnvelopeError(f"{field}.lat", f"{lat} is not a latitude in -90..90")
        if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
            raise InvalidEnvelopeError(f"{field}.lon", f"{lon} is not a longitude in -180..180")
        if point.HasField("altitude_m") and not math.isfinite(point.altitude_m):
            raise InvalidEnvelopeError(f"{field}.altitude_m", "is not a finite number")

    def _check_polygon(self, field: str, polygon: pb.Polygon) -> None:
        points = polygon.points
        if len(points) < 4:
            raise InvalidEnvelopeError(field, f"a polygon needs at least 4 points, got {len(points)}")
        if len(points) > self.limits.max_polygon_points:
            raise InvalidEnvelopeError(field, f"more than {self.limits.max_polygon_points} points")
        for i, point in enumerate(points):
            self._check_point(f"{field}.points[{i}]", point)
        first, last = points[0], points[-1]
        if (first.lat, first.lon) != (last.lat, last.lon):
            raise InvalidEnvelopeError(field, "is not closed (first point differs from last)")

    def _check_circle(self, field: str, circle: pb.Circle) -> None:
        if not circle.HasField("center"):
            raise InvalidEnvelopeError(f"{field}.center", "required")
        self._check_point(f"{field}.center", circle.center)
        radius = circle.radius_m
        if not (math.isfinite(radius) and 0.0 <= radius <= 20_037_000.0):
            raise InvalidEnvelopeError(f"{field}.radius_m", f"{radius} is not a radius in metres")

    def _check_shapes(self, field: str, polygons: Iterable[pb.Polygon], circles: Iterable[pb.Circle]) -> None:
        polygons, circles = list(polygons), list(circles)
        if len(polygons) + len(circles) > self.limits.max_shapes:
            raise InvalidEnvelopeError(field, f"more than {self.limits.max_shapes} shapes")
        for i, polygon in enumerate(polygons):
            self._check_polygon(f"{field}.polygons[{i}]", polygon)
        for i, circle in enumerate(circles):
            self._check_circle(f"{field}.circles[{i}]", circle)

    def _check_geometry(self, field: str, geometry: pb.Geometry) -> None:
        if geometry.HasField("point"):
            self._check_point(f"{field}.point", geometry.point)
        if geometry.polygons or geometry.circles:
            self._check_shapes(field, geometry.polygons, geometry.circles)

    # -- payloads -------------------------------------------------------------------------------

    def _check_alert(self, env: pb.Envelope, _now: float) -> None:
        alert = env.alert
        if not alert.infos and alert.msg_type not in {"Cancel", "Ack", "Error"}:
            raise InvalidEnvelopeError(
                "alert.infos", "an alert needs at least one info block (only a Cancel, Ack or Error may have none)"
            )
        for i, info in enumerate(alert.infos):
            if not info.event:
                raise InvalidEnvelopeError(f"alert.infos[{i}].event", "required")
            for field in ("headline", "description", "instruction"):
                self._check_text(f"alert.infos[{i}].{field}", getattr(info, field), self.limits.max_text_chars)
            for j, area in enumerate(info.areas):
                self._check_shapes(f"alert.infos[{i}].areas[{j}]", area.polygons, area.circles)

    def _check_incident(self, env: pb.Envelope, now: float) -> None:
        incident = env.incident
        self._check_id("incident.incident_id", incident.incident_id, required=True)
        if not incident.event_type:
            raise InvalidEnvelopeError("incident.event_type", "required")
        if incident.grade not in _GRADES:
            raise InvalidEnvelopeError("incident.grade", f"unknown value {incident.grade}")
        if incident.stage not in _STAGES or incident.stage == pb.REPORT_STAGE_UNSPECIFIED:
            raise InvalidEnvelopeError("incident.stage", "required (STAGE_INITIAL, STAGE_FOLLOW_UP or STAGE_FINAL)")
        self._check_text("incident.description", incident.description, self.limits.max_text_chars)
        if incident.HasField("occurred_at"):
            ts = incident.occurred_at
            self._check_timestamp("incident.occurred_at", ts.seconds, ts.nanos, now + self.limits.max_clock_skew_s)

    def _check_observation(self, env: pb.Envelope, now: float) -> None:
        obs = env.observation
        self._check_id("observation.station_id", obs.station_id, required=True)
        if obs.series:
            self._check_series(obs.series, now)
        elif not obs.measurements:
            raise InvalidEnvelopeError("observation.measurements", "at least one measurement (or a series) is required")
        if len(obs.measurements) > self.limits.max_measurements:
            raise InvalidEnvelopeError("observation.measurements", f"more than {self.limits.max_measurements}")
        for i, m in enumerate(obs.measurements):
            if not m.metric:
                raise InvalidEnvelopeError(f"observation.measurements[{i}].metric", "required")
            if not math.isfinite(m.value):
                raise InvalidEnvelopeError(f"observation.measurements[{i}].value", "is not a finite number")
            if m.quality not in _QUALITIES:
                raise InvalidEnvelopeError(f"observation.measurements[{i}].quality", f"unknown value {m.quality}")

    def _check_series(self, entries: Iterable[pb.Series], now: float) -> None:
        """Checks packed series a whole array at a time; the culprit's index is looked up only on failure."""
        limits = self.limits
        series_list = list(entries)
        if len(series_list) > limits.max_series:
            raise InvalidEnvelopeError(
                "observation.series", f"{len(series_list)} entries, more than {limits.max_series}"
            )
        earliest_ms = EARLIEST_TIME_S * 1000
        latest_ms = int((now + limits.max_clock_skew_s) * 1000)
        total = 0
        for i, series in enumerate(series_list):
            field = f"observation.series[{i}]"
            if not series.metric:
                raise InvalidEnvelopeError(f"{field}.metric", "required")
            count = len(series.values)
            total += count
            if not count:
                raise InvalidEnvelopeError(f"{field}.values", "at least one point is required")
            if count > limits.max_points_per_series:
                raise InvalidEnvelopeError(
                    f"{field}.values", f"{count} points, more than {limits.max_points_per_series}"
                )
            if total > limits.max_series_points:
                raise InvalidEnvelopeError(
                    "observation.series", f"more than {limits.max_series_points} points in the observation"
                )
            if len(series.at_delta_ms) != count:
                raise InvalidEnvelopeError(
                    f"{field}.at_delta_ms", f"{len(series.at_delta_ms)} entries for {count} values (one per value)"
                )
            if len(series.quality) not in (0, count):
                raise InvalidEnvelopeError(
                    f"{field}.quality", f"{len(series.quality)} entries for {count} values (none, or one per value)"
                )
            values = np.array(series.values, dtype=np.float64)
            finite = np.isfinite(values)
            if not finite.all():
                index = int(np.argmin(finite))
                raise InvalidEnvelopeError(f"{field}.values[{index}]", "is not a finite number")
            deltas = np.array(series.at_delta_ms, dtype=np.int64)
            if deltas[0] != 0:
                raise InvalidEnvelopeError(f"{field}.at_delta_ms[0]", "must be 0 (start_ms is the first point's time)")
            # Bounded deltas keep the running sum far from overflowing 64 bits.
            wild = np.abs(deltas) > _MAX_SERIES_DELTA_MS
            if wild.any():
                index = int(np.argmax(wild))
                raise InvalidEnvelopeError(f"{field}.at_delta_ms[{index}]", "jumps by more than 100 years")
            if not earliest_ms <= series.start_ms <= _LAST_TIME_MS:
                raise InvalidEnvelopeError(f"{field}.start_ms", "is not between 2000-01-01 and 9999-12-31")
            at_ms = np.cumsum(deltas) + series.start_ms
            early = at_ms < earliest_ms
            if early.any():
                raise InvalidEnvelopeError(
                    f"{field}.at_delta_ms[{int(np.argmax(early))}]", "the point is before 2000-01-01"
                )
            late = at_ms > latest_ms
            if late.any():
                raise InvalidEnvelopeError(
                    f"{field}.at_delta_ms[{int(np.argmax(late))}]",
                    f"the point is more than {limits.max_clock_skew_s:g} s in the future (check the sender's clock)",
                )
            if len(series.quality):
                qualities = np.array(series.quality, dtype=np.int64)
                unknown = ~np.isin(qualities, _QUALITY_ARRAY)
                if unknown.any():
                    index = int(np.argmax(unknown))
                    raise InvalidEnvelopeError(f"{field}.quality[{index}]", f"unknown value {qualities[index]}")

    def _check_position(self, env: pb.Envelope, _now: float) -> None:
        position = env.position
        self._check_id("position.unit_id", position.unit_id, required=True)
        if not (env.HasField("geometry") and env.geometry.HasField("point")):
            raise InvalidEnvelopeError("geometry.point", "required for a POSITION")
        if not (math.isfinite(position.speed_mps) and position.speed_mps >= 0):
            raise InvalidEnvelopeError("position.speed_mps", "must be a non-negative number")
        if not (math.isfinite(position.course_deg) and 0 <= position.course_deg < 360):
            raise InvalidEnvelopeError("position.course_deg", "must be in 0..360")

    def _check_resource(self, env: pb.Envelope, _now: float) -> None:
        resource = env.resource
        self._check_id("resource.resource_id", resource.resource_id, required=True)
        if not math.isfinite(resource.quantity) or resource.quantity < 0:
            raise InvalidEnvelopeError("resource.quantity", "must be a non-negative number")

    def _check_command(self, env: pb.Envelope, _now: float) -> None:
        command = env.command
        if not command.targets:
            raise InvalidEnvelopeError("command.targets", "at least one target is required")
        if not command.action:
            raise InvalidEnvelopeError("command.action", "required")

    def _check_command_ack(self, env: pb.Envelope, _now: float) -> None:
        ack = env.command_ack
        self._check_id("command_ack.command_id", ack.command_id, required=True)
        if ack.state not in _ACK_STATES:
            raise InvalidEnvelopeError("command_ack.state", "required (RECEIVED, EXECUTED, FAILED, REFUSED or EXPIRED)")

    def _check_heartbeat(self, env: pb.Envelope, _now: float) -> None:
        self._check_id("heartbeat.subject", env.heartbeat.subject, required=True)
