"""The rules of the door: each rejection names the exact field, and every valid envelope we make passes."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yiwang.v1 import envelope_pb2 as pb

from gateway.demo import Traffic
from gateway.errors import InvalidEnvelopeError
from gateway.regions import default_table
from gateway.selection import record_of
from gateway.validation import AGENCIES, EARLIEST_TIME_S, PAYLOAD_OF_KIND, Limits, Validator
from tests import factories

#: The validator's "now" in every test (2025-06-15): times are fixed, so the tests do not depend on the clock.
NOW = 1_750_000_000.0
SENT = NOW - 5.0

VALIDATOR = Validator(default_table())

Mutate = Callable[[pb.Envelope], None]


# -- valid envelopes of every kind, stamped at SENT ----------------------------------------------------


def _stamped(env: pb.Envelope) -> pb.Envelope:
    env.sent_at.FromNanoseconds(int(SENT * 1e9))
    return env


def _base(kind: pb.Kind, agency: str = "emergency") -> pb.Envelope:
    env = pb.Envelope(id=f"test-{pb.Kind.Name(kind).lower()}-1", kind=kind, region="410105", status=pb.ACTUAL)
    env.origin.agency = agency
    env.origin.region = "410100"
    return _stamped(env)


def alert() -> pb.Envelope:
    return _stamped(factories.alert())


def incident() -> pb.Envelope:
    return _stamped(factories.incident())


def observation() -> pb.Envelope:
    return factories.observation(sent_at=SENT)


def position() -> pb.Envelope:
    env = _base(pb.POSITION, "fire_rescue")
    env.geometry.point.lat, env.geometry.point.lon = 34.77, 113.68
    env.position.unit_id = "ZZ-XF-001"
    env.position.speed_mps = 8.0
    env.position.course_deg = 359.5
    return env


def resource() -> pb.Envelope:
    env = _base(pb.RESOURCE)
    env.resource.resource_id = "ZZ-TENT-7"
    env.resource.name = "帐篷"
    env.resource.quantity = 120.0
    return env


def command() -> pb.Envelope:
    env = _base(pb.COMMAND)
    env.command.targets.append("zz-119-dispatch")
    env.command.action = "dispatch"
    env.command.parameters["unit"] = "ZZ-XF-001"
    return env


def command_ack() -> pb.Envelope:
    env = _base(pb.COMMAND_ACK)
    env.command_ack.command_id = "cmd-1"
    env.command_ack.state = pb.EXECUTED
    return env


def heartbeat() -> pb.Envelope:
    env = _base(pb.HEARTBEAT, "water")
    env.heartbeat.subject = "henan-water-telemetry"
    env.heartbeat.interval_s = 30
    return env


BUILDERS: dict[str, Callable[[], pb.Envelope]] = {
    "alert": alert,
    "incident": incident,
    "observation": observation,
    "position": position,
    "resource": resource,
    "command": command,
    "command_ack": command_ack,
    "heartbeat": heartbeat,
}


def rejection(env: pb.Envelope, validator: Validator = VALIDATOR, size: int | None = None) -> InvalidEnvelopeError:
    with pytest.raises(InvalidEnvelopeError) as info:
        validator.check(env, env.ByteSize() if size is None else size, now=NOW)
    return info.value


# -- mutations that break one rule each -----------------------------------------------------------------


def _set(path: str, value: object) -> Mutate:
    """A mutation that sets the dotted field ``path`` (e.g. ``origin.agency``) to ``value``."""
    *parents, name = path.split(".")

    def mutate(env: pb.Envelope) -> None:
        target = env
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return mutate


def _clear(path: str) -> Mutate:
    *parents, name = path.split(".")

    def mutate(env: pb.Envelope) -> None:
        target = env
        for parent in parents:
            target = getattr(target, parent)
        target.ClearField(name)

    return mutate


def _time(field: str, seconds: float, nanos: int | None = None) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        ts = getattr(env, field)
        ts.seconds = math.floor(seconds)  # set directly: FromNanoseconds refuses the out-of-range values under test
        ts.nanos = round((seconds - math.floor(seconds)) * 1e9) if nanos is None else nanos

    return mutate


def _incident_occurred_at(seconds: float) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        env.incident.occurred_at.FromNanoseconds(int(seconds * 1e9))

    return mutate


def _ring(points: list[tuple[float, float]]) -> pb.Polygon:
    return pb.Polygon(points=[pb.Point(lat=lat, lon=lon) for lat, lon in points])


SQUARE = [(34.7, 113.5), (34.7, 113.6), (34.8, 113.6), (34.8, 113.5), (34.7, 113.5)]


def _polygon(points: list[tuple[float, float]]) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        env.geometry.polygons.append(_ring(points))

    return mutate


def _circle(lat: float, lon: float, radius_m: float, *, center: bool = True) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        circle = env.geometry.circles.add(radius_m=radius_m)
        if center:
            circle.center.lat, circle.center.lon = lat, lon

    return mutate


def _shapes(polygons: int, circles: int) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        for _ in range(polygons):
            env.geometry.polygons.append(_ring(SQUARE))
        for _ in range(circles):
            env.geometry.circles.add(center=pb.Point(lat=34.7, lon=113.6), radius_m=500.0)

    return mutate


def _references(*refs: str) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        env.references.extend(refs)

    return mutate


def _attributes(items: dict[str, str]) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        env.attributes.update(items)

    return mutate


def _both(first: Mutate, second: Mutate) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        first(env)
        second(env)

    return mutate


def _info(field: str, value: str) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        setattr(env.alert.infos[0], field, value)

    return mutate


def _add_info(event: str) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        env.alert.infos.add(language="en-US", event=event)

    return mutate


def _alert_area(polygon: list[tuple[float, float]] | None = None, radius_m: float | None = None) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        area = env.alert.infos[0].areas[0]
        if polygon is not None:
            area.polygons.append(_ring(polygon))
        if radius_m is not None:
            area.circles.add(center=pb.Point(lat=34.7, lon=113.6), radius_m=radius_m)

    return mutate


def _measurement(**fields: object) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        env.observation.measurements.add(**{"metric": "20", "value": 1.0, "unit": "mm", **fields})

    return mutate


def _measurements(count: int) -> Mutate:
    def mutate(env: pb.Envelope) -> None:
        for i in range(count):
            env.observation.measurements.add(metric="39", value=float(i))

    return mutate


def _series(**fields: object) -> Mutate:
    """Adds a valid series of three points (the observation's second), with ``fields`` changed."""

    def mutate(env: pb.Envelope) -> None:
        values: dict[str, object] = {
            "metric": "vibration",
            "unit": "mm/s",
            "start_ms": int(SENT * 1000) - 60_000,
            "at_delta_ms": [0, 10, 10],
            "values": [0.1, 0.2, 0.3],
            **fields,
        }
        env.observation.series.add()  # a valid one first, so the index in the field is 1
        env.observation.series[0].CopyFrom(_valid_series())
        env.observation.series.add(**values)

    return mutate


def _valid_series() -> pb.Series:
    return pb.Series(metric="level", unit="m", start_ms=int(SENT * 1000), at_delta_ms=[0, 1000], values=[1.0, 1.5])


def _position_with_polygon_only(env: pb.Envelope) -> None:
    env.geometry.ClearField("point")
    env.geometry.polygons.append(_ring(SQUARE))


def _wrong_payload(env: pb.Envelope) -> None:
    env.kind = pb.ALERT  # the observation payload stays


def _no_geometry(env: pb.Envelope) -> None:
    env.ClearField("geometry")


LONG_TEXT = "雨" * (64 * 1024 + 1)

# (builder, mutation, field, fragment of the reason)
CASES = [
    # id
    pytest.param(observation, _set("id", ""), "id", "required", id="id-missing"),
    pytest.param(observation, _set("id", "a" * 257), "id", "longer than 256 characters", id="id-too-long"),
    pytest.param(observation, _set("id", "abc def"), "id", "white space", id="id-space"),
    pytest.param(observation, _set("id", "abc\tdef"), "id", "white space", id="id-tab"),
    pytest.param(observation, _set("id", "abc\n"), "id", "white space", id="id-newline"),
    pytest.param(observation, _set("id", "abc\u3000def"), "id", "white space", id="id-ideographic-space"),
    pytest.param(observation, _set("id", "abc\x00def"), "id", "control characters", id="id-nul"),
    pytest.param(observation, _set("id", "abc\x1bdef"), "id", "control characters", id="id-escape"),
    pytest.param(observation, _set("id", "abc\x7f"), "id", "control characters", id="id-delete"),
    # kind
    pytest.param(observation, _set("kind", pb.KIND_UNSPECIFIED), "kind", "required", id="kind-missing"),
    pytest.param(observation, _set("kind", 99), "kind", "unknown value 99", id="kind-unknown"),
    # region
    pytest.param(observation, _set("region", ""), "region", "required", id="region-missing"),
    pytest.param(observation, _set("region", "41010"), "region", "six-digit", id="region-5-digits"),
    pytest.param(observation, _set("region", "4101050"), "region", "six-digit", id="region-7-digits"),
    pytest.param(observation, _set("region", "41010x"), "region", "six-digit", id="region-letter"),
    pytest.param(observation, _set("region", "４１０１０５"), "region", "six-digit", id="region-full-width"),
    pytest.param(observation, _set("region", "419999"), "region", "not a known", id="region-unknown"),
    # origin
    pytest.param(observation, _set("origin.agency", ""), "origin.agency", "required", id="agency-missing"),
    pytest.param(
        observation, _set("origin.agency", "red_cross"), "origin.agency", "unknown agency code", id="agency-unknown"
    ),
    pytest.param(observation, _set("origin.region", "4101"), "origin.region", "six-digit", id="origin-region-shape"),
    pytest.param(
        observation, _set("origin.region", "419999"), "origin.region", "not a known", id="origin-region-unknown"
    ),
    pytest.param(observation, _set("origin.node", "n" * 257), "origin.node", "longer than", id="origin-node-long"),
    pytest.param(
        observation, _set("origin.system", "s" * 257), "origin.system", "longer than", id="origin-system-long"
    ),
    # severity, status, priority
    pytest.param(observation, _set("severity", 5), "severity", "unknown value 5", id="severity-unknown"),
    pytest.param(observation, _set("status", pb.STATUS_UNSPECIFIED), "status", "required", id="status-missing"),
    pytest.param(observation, _set("status", 4), "status", "unknown value 4", id="status-unknown"),
    pytest.param(observation, _set("priority", 4), "priority", "got 4", id="priority-4"),
    pytest.param(observation, _set("priority", 2**32 - 1), "priority", "0 (highest) to 3", id="priority-max"),
    # times
    pytest.param(observation, _clear("sent_at"), "sent_at", "required", id="sent-missing"),
    pytest.param(
        observation, _time("sent_at", EARLIEST_TIME_S - 1), "sent_at", "before 2000-01-01", id="sent-before-2000"
    ),
    pytest.param(observation, _time("sent_at", 0), "sent_at", "before 2000-01-01", id="sent-epoch"),
    pytest.param(
        observation,
        _time("observed_at", EARLIEST_TIME_S - 1),
        "observed_at",
        "before 2000-01-01",
        id="observed-before-2000",
    ),
    pytest.param(
        observation,
        _time("expires_at", EARLIEST_TIME_S - 1),
        "expires_at",
        "before 2000-01-01",
        id="expires-before-2000",
    ),
    pytest.param(observation, _time("sent_at", NOW + 601), "sent_at", "600 s in the future", id="sent-future"),
    pytest.param(observation, _time("observed_at", NOW + 601), "observed_at", "in the future", id="observed-future"),
    pytest.param(observation, _time("expires_at", SENT), "expires_at", "not after", id="expires-equal-sent"),
    pytest.param(observation, _time("expires_at", SENT - 1), "expires_at", "not after", id="expires-before-sent"),
    pytest.param(
        observation,
        _both(_time("observed_at", SENT - 60), _time("expires_at", SENT - 120)),
        "expires_at",
        "not after",
        id="expires-before-observed",
    ),
    pytest.param(
        observation, _time("expires_at", 253_402_300_800), "expires_at", "after 9999-12-31", id="expires-after-9999"
    ),
    pytest.param(
        observation, _time("sent_at", SENT, nanos=-1), "sent_at", "nanos -1 out of range", id="nanos-negative"
    ),
    pytest.param(observation, _time("sent_at", SENT, nanos=10**9), "sent_at", "out of range", id="nanos-one-second"),
    pytest.param(observation, _time("observed_at", SENT, nanos=-5), "observed_at", "out of range", id="observed-nanos"),
    # geometry
    pytest.param(observation, _set("geometry.point.lat", 90.5), "geometry.point.lat", "latitude", id="lat-high"),
    pytest.param(observation, _set("geometry.point.lat", -91.0), "geometry.point.lat", "latitude", id="lat-low"),
    pytest.param(observation, _set("geometry.point.lat", math.nan), "geometry.point.lat", "latitude", id="lat-nan"),
    pytest.param(observation, _set("geometry.point.lon", 180.5), "geometry.point.lon", "longitude", id="lon-high"),
    pytest.param(observation, _set("geometry.point.lon", -math.inf), "geometry.point.lon", "longitude", id="lon-inf"),
    pytest.param(observation, _set("geometry.point.lon", math.nan), "geometry.point.lon", "longitude", id="lon-nan"),
    pytest.param(
        observation,
        _set("geometry.point.altitude_m", math.nan),
        "geometry.point.altitude_m",
        "finite",
        id="altitude-nan",
    ),
    pytest.param(
        observation, _polygon(SQUARE[:3]), "geometry.polygons[0]", "at least 4 points, got 3", id="polygon-3-points"
    ),
    pytest.param(observation, _polygon([]), "geometry.polygons[0]", "got 0", id="polygon-empty"),
    pytest.param(observation, _polygon(SQUARE[:4]), "geometry.polygons[0]", "not closed", id="polygon-open"),
    pytest.param(
        observation,
        _polygon([(34.7, 113.5), (34.7, 113.6), (95.0, 113.6), (34.7, 113.5)]),
        "geometry.polygons[0].points[2].lat",
        "latitude",
        id="polygon-point-lat",
    ),
    pytest.param(
        observation,
        _both(_polygon(SQUARE), _polygon(SQUARE[:4])),
        "geometry.polygons[1]",
        "not closed",
        id="second-polygon-open",
    ),
    pytest.param(
        observation, _circle(34.7, 113.6, -1.0), "geometry.circles[0].radius_m", "radius", id="radius-negative"
    ),
    pytest.param(
        observation, _circle(34.7, 113.6, math.nan), "geometry.circles[0].radius_m", "radius", id="radius-nan"
    ),
    pytest.param(
        observation, _circle(34.7, 113.6, math.inf), "geometry.circles[0].radius_m", "radius", id="radius-inf"
    ),
    pytest.param(
        observation,
        _circle(34.7, 113.6, 20_037_001.0),
        "geometry.circles[0].radius_m",
        "radius",
        id="radius-beyond-half-earth",
    ),
    pytest.param(
        observation,
        _circle(0, 0, 10.0, center=False),
        "geometry.circles[0].center",
        "required",
        id="circle-without-center",
    ),
    pytest.param(
        observation,
        _circle(34.7, 190.0, 10.0),
        "geometry.circles[0].center.lon",
        "longitude",
        id="circle-center-lon",
    ),
    pytest.param(observation, _shapes(0, 257), "geometry", "more than 256 shapes", id="257-circles"),
    pytest.param(observation, _shapes(200, 57), "geometry", "more than 256 shapes", id="257-mixed-shapes"),
    # references and attributes
    pytest.param(
        observation,
        _references(*(f"ref-{i}" for i in range(65))),
        "references",
        "more than 64",
        id="references-65",
    ),
    pytest.param(observation, _references(""), "references[0]", "required", id="reference-empty"),
    pytest.param(observation, _references("ok", "a b"), "references[1]", "white space", id="reference-space"),
    pytest.param(observation, _references("r" * 257), "references[0]", "longer than", id="reference-long"),
    pytest.param(
        observation,
        _attributes({f"k{i}": "v" for i in range(65)}),
        "attributes",
        "more than 64",
        id="attributes-65",
    ),
    pytest.param(observation, _attributes({"": "v"}), "attributes", "empty or too long", id="attribute-key-empty"),
    pytest.param(
        observation, _attributes({"k" * 129: "v"}), "attributes", "empty or too long", id="attribute-key-long"
    ),
    pytest.param(
        observation, _attributes({"note": "v" * 4097}), "attributes[note]", "value too long", id="attribute-value-long"
    ),
    # payload against kind
    pytest.param(observation, _wrong_payload, "observation", "does not match kind ALERT", id="payload-not-kind"),
    pytest.param(
        heartbeat,
        _set("kind", pb.COMMAND),
        "heartbeat",
        "does not match kind COMMAND (expected command)",
        id="heartbeat-payload-for-command",
    ),
    # alert
    pytest.param(alert, _clear("alert.infos"), "alert.infos", "at least one info", id="alert-no-infos"),
    pytest.param(alert, _info("event", ""), "alert.infos[0].event", "required", id="info-no-event"),
    pytest.param(alert, _add_info(""), "alert.infos[1].event", "required", id="second-info-no-event"),
    pytest.param(
        alert,
        _info("headline", LONG_TEXT),
        "alert.infos[0].headline",
        "longer than 65536",
        id="info-headline-long",
    ),
    pytest.param(
        alert,
        _info("description", LONG_TEXT),
        "alert.infos[0].description",
        "longer than",
        id="info-description-long",
    ),
    pytest.param(
        alert,
        _info("instruction", LONG_TEXT),
        "alert.infos[0].instruction",
        "longer than",
        id="info-instruction-long",
    ),
    pytest.param(
        alert,
        _alert_area(polygon=SQUARE[:4]),
        "alert.infos[0].areas[0].polygons[1]",
        "not closed",
        id="area-polygon-open",
    ),
    pytest.param(
        alert,
        _alert_area(radius_m=-5.0),
        "alert.infos[0].areas[0].circles[0].radius_m",
        "radius",
        id="area-circle-radius",
    ),
    # incident
    pytest.param(incident, _set("incident.incident_id", ""), "incident.incident_id", "required", id="incident-id"),
    pytest.param(
        incident, _set("incident.incident_id", "ZZ JS"), "incident.incident_id", "white space", id="incident-id-space"
    ),
    pytest.param(incident, _set("incident.event_type", ""), "incident.event_type", "required", id="event-type"),
    pytest.param(incident, _set("incident.grade", 9), "incident.grade", "unknown value 9", id="grade-unknown"),
    pytest.param(
        incident, _set("incident.stage", pb.REPORT_STAGE_UNSPECIFIED), "incident.stage", "required", id="stage-missing"
    ),
    pytest.param(incident, _set("incident.stage", 9), "incident.stage", "required", id="stage-unknown"),
    pytest.param(
        incident, _set("incident.description", LONG_TEXT), "incident.description", "longer than", id="incident-text"
    ),
    pytest.param(
        incident,
        _incident_occurred_at(EARLIEST_TIME_S - 1),
        "incident.occurred_at",
        "before 2000-01-01",
        id="occurred-before-2000",
    ),
    pytest.param(  # judged against the `now` given to check(), like every other time
        incident,
        _incident_occurred_at(NOW + 3600),
        "incident.occurred_at",
        "in the future",
        id="occurred-future",
    ),
    # observation
    pytest.param(
        observation, _set("observation.station_id", ""), "observation.station_id", "required", id="station-missing"
    ),
    pytest.param(
        observation,
        _clear("observation.measurements"),
        "observation.measurements",
        "at least one measurement",
        id="no-measurements",
    ),
    pytest.param(
        observation, _measurements(1024), "observation.measurements", "more than 1024", id="1025-measurements"
    ),
    pytest.param(
        observation, _measurement(metric=""), "observation.measurements[1].metric", "required", id="metric-missing"
    ),
    pytest.param(
        observation, _measurement(value=math.nan), "observation.measurements[1].value", "finite", id="value-nan"
    ),
    pytest.param(
        observation, _measurement(value=-math.inf), "observation.measurements[1].value", "finite", id="value-inf"
    ),
    pytest.param(
        observation,
        _measurement(quality=42),
        "observation.measurements[1].quality",
        "unknown value 42",
        id="quality-unknown",
    ),
    pytest.param(observation, _series(metric=""), "observation.series[1].metric", "required", id="series-metric"),
    pytest.param(
        observation,
        _series(values=[], at_delta_ms=[]),
        "observation.series[1].values",
        "at least one",
        id="series-empty",
    ),
    pytest.param(
        observation,
        _series(at_delta_ms=[0, 10]),
        "observation.series[1].at_delta_ms",
        "2 entries for 3",
        id="series-len",
    ),
    pytest.param(
        observation,
        _series(quality=[pb.GOOD]),
        "observation.series[1].quality",
        "1 entries for 3 values",
        id="series-quality-len",
    ),
    pytest.param(
        observation,
        _series(quality=[pb.GOOD, 42, pb.BAD]),
        "observation.series[1].quality[1]",
        "unknown value 42",
        id="series-quality-unknown",
    ),
    pytest.param(
        observation,
        _series(values=[0.1, math.nan, 0.3]),
        "observation.series[1].values[1]",
        "finite",
        id="series-value-nan",
    ),
    pytest.param(
        observation,
        _series(values=[0.1, 0.2, math.inf]),
        "observation.series[1].values[2]",
        "finite",
        id="series-value-inf",
    ),
    pytest.param(
        observation,
        _series(at_delta_ms=[5, 10, 10]),
        "observation.series[1].at_delta_ms[0]",
        "must be 0",
        id="series-d0",
    ),
    pytest.param(
        observation,
        _series(at_delta_ms=[0, 10, 10**13]),
        "observation.series[1].at_delta_ms[2]",
        "100 years",
        id="series-wild-delta",
    ),
    pytest.param(
        observation,
        _series(at_delta_ms=[0, 10, 700_000]),
        "observation.series[1].at_delta_ms[2]",
        "in the future",
        id="series-future",
    ),
    pytest.param(
        observation,
        _series(at_delta_ms=[0, -(10**12), 10]),
        "observation.series[1].at_delta_ms[1]",
        "before 2000",
        id="series-past",
    ),
    pytest.param(
        observation, _series(start_ms=-1), "observation.series[1].start_ms", "between 2000-01-01", id="series-start"
    ),
    # position
    pytest.param(position, _set("position.unit_id", ""), "position.unit_id", "required", id="unit-missing"),
    pytest.param(position, _no_geometry, "geometry.point", "required for a POSITION", id="position-no-geometry"),
    pytest.param(
        position, _position_with_polygon_only, "geometry.point", "required for a POSITION", id="position-no-point"
    ),
    pytest.param(position, _set("position.speed_mps", -0.1), "position.speed_mps", "non-negative", id="speed-neg"),
    pytest.param(position, _set("position.speed_mps", math.nan), "position.speed_mps", "non-negative", id="speed-nan"),
    pytest.param(position, _set("position.course_deg", 360.0), "position.course_deg", "0..360", id="course-360"),
    pytest.param(position, _set("position.course_deg", -1.0), "position.course_deg", "0..360", id="course-neg"),
    pytest.param(position, _set("position.course_deg", math.nan), "position.course_deg", "0..360", id="course-nan"),
    # resource
    pytest.param(
        resource, _set("resource.resource_id", ""), "resource.resource_id", "required", id="resource-id-missing"
    ),
    pytest.param(
        resource, _set("resource.quantity", -1.0), "resource.quantity", "non-negative", id="quantity-negative"
    ),
    pytest.param(resource, _set("resource.quantity", math.nan), "resource.quantity", "non-negative", id="quantity-nan"),
    # command
    pytest.param(command, _clear("command.targets"), "command.targets", "at least one target", id="no-targets"),
    pytest.param(command, _set("command.action", ""), "command.action", "required", id="no-action"),
    pytest.param(
        command_ack, _set("command_ack.command_id", ""), "command_ack.command_id", "required", id="ack-command-id"
    ),
    pytest.param(
        command_ack,
        _set("command_ack.state", pb.ACK_STATE_UNSPECIFIED),
        "command_ack.state",
        "required",
        id="ack-state-missing",
    ),
    pytest.param(command_ack, _set("command_ack.state", 9), "command_ack.state", "required", id="ack-state-unknown"),
    # heartbeat
    pytest.param(heartbeat, _set("heartbeat.subject", ""), "heartbeat.subject", "required", id="subject-missing"),
    pytest.param(heartbeat, _set("heartbeat.subject", "a\x00b"), "heartbeat.subject", "control", id="subject-control"),
]


@pytest.mark.parametrize(("build", "mutate", "field", "reason"), CASES)
def test_rejection_names_the_field(build: Callable[[], pb.Envelope], mutate: Mutate, field: str, reason: str) -> None:
    env = build()
    VALIDATOR.check(env, env.ByteSize(), now=NOW)  # valid before the mutation: the rule under test is what fails
    mutate(env)
    error = rejection(env)
    assert error.field == field, str(error)
    assert reason in error.reason, str(error)
    assert str(error) == f"{field}: {error.reason}"


@pytest.mark.parametrize("payload", [p for p in PAYLOAD_OF_KIND.values() if p != "heartbeat"])
def test_payload_required_for_its_kind(payload: str) -> None:
    env = BUILDERS[payload]()
    env.ClearField(payload)
    error = rejection(env)
    assert error.field == payload
    assert error.reason == f"required for kind {pb.Kind.Name(env.kind)}"


def test_an_observation_of_series_only_passes_and_limits_count_points() -> None:
    env = observation()
    del env.observation.measurements[:]
    env.observation.series.append(_valid_series())
    VALIDATOR.check(env, env.ByteSize(), now=NOW)
    env.observation.series[0].quality.extend([pb.GOOD, pb.SUSPECT])
    VALIDATOR.check(env, env.ByteSize(), now=NOW)
    small = Validator(default_table(), limits=Limits(max_points_per_series=1))
    assert rejection(env, small).field == "observation.series[0].values"
    env.observation.series.append(_valid_series())
    few = Validator(default_table(), limits=Limits(max_series_points=3))
    assert rejection(env, few).field == "observation.series"
    one = Validator(default_table(), limits=Limits(max_series=1))
    assert rejection(env, one).field == "observation.series"


def test_heartbeat_may_carry_no_payload() -> None:
    env = heartbeat()
    env.ClearField("heartbeat")
    VALIDATOR.check(env, env.ByteSize(), now=NOW)


def test_size_over_the_limit() -> None:
    env = observation()
    limit = Limits().max_envelope_bytes
    VALIDATOR.check(env, limit, now=NOW)
    error = rejection(env, size=limit + 1)
    assert error.field == "envelope"
    assert f"is {limit + 1} bytes, more than the limit of {limit}" in error.reason


def test_size_limit_is_configurable() -> None:
    env = observation()
    small = Validator(default_table(), limits=Limits(max_envelope_bytes=env.ByteSize() - 1))
    assert rejection(env, small).field == "envelope"


def test_polygon_point_limit() -> None:
    env = observation()
    env.geometry.polygons.append(_ring(SQUARE))
    error = rejection(env, Validator(default_table(), limits=Limits(max_polygon_points=4)))
    assert (error.field, error.reason) == ("geometry.polygons[0]", "more than 4 points")


def test_clock_skew_is_configurable() -> None:
    env = observation()
    _time("sent_at", NOW + 30)(env)
    VALIDATOR.check(env, env.ByteSize(), now=NOW)
    error = rejection(env, Validator(default_table(), limits=Limits(max_clock_skew_s=10.0)))
    assert error.field == "sent_at"
    assert "10 s in the future" in error.reason


def test_times_within_the_skew_pass() -> None:
    env = observation()
    _time("sent_at", NOW + 599)(env)
    _time("observed_at", NOW + 599)(env)
    _time("expires_at", NOW + 10 * 365 * 86400)(env)  # expiry is not bounded by the clock
    VALIDATOR.check(env, env.ByteSize(), now=NOW)


def test_an_extra_agency_is_allowed_through_the_argument() -> None:
    env = observation()
    env.origin.agency = "red_cross"
    assert rejection(env).field == "origin.agency"
    Validator(default_table(), agencies=AGENCIES | {"red_cross"}).check(env, env.ByteSize(), now=NOW)
    only_extra = Validator(default_table(), agencies={"red_cross"})
    only_extra.check(env, env.ByteSize(), now=NOW)
    env.origin.agency = "water"
    assert rejection(env, only_extra).field == "origin.agency"


def test_origin_region_is_optional() -> None:
    env = observation()
    env.origin.ClearField("region")
    VALIDATOR.check(env, env.ByteSize(), now=NOW)


def test_id_of_256_characters_passes() -> None:
    env = observation()
    env.id = "i" * 256
    VALIDATOR.check(env, env.ByteSize(), now=NOW)


def test_only_the_first_failing_rule_is_reported() -> None:
    env = observation()
    env.id = ""
    env.region = "x"
    env.origin.agency = ""
    assert rejection(env).field == "id"


PRINTABLE_NO_SPACE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
BAD_ID_CHARS = st.sampled_from(
    [" ", "\t", "\n", "\r", "\x0b", "\x00", "\x1f", "\x7f", "\x85", "\xa0", "\u2028", "\u3000"]
)


@settings(max_examples=200)
@given(st.text(PRINTABLE_NO_SPACE, min_size=1, max_size=256))
def test_any_printable_id_without_spaces_passes(envelope_id: str) -> None:
    env = observation()
    env.id = envelope_id
    VALIDATOR.check(env, env.ByteSize(), now=NOW)


@settings(max_examples=200)
@given(st.text(PRINTABLE_NO_SPACE, max_size=100), BAD_ID_CHARS, st.text(PRINTABLE_NO_SPACE, max_size=100))
def test_any_id_with_white_space_or_control_characters_is_rejected(head: str, bad: str, tail: str) -> None:
    env = observation()
    env.id = head + bad + tail
    error = rejection(env)
    assert error.field == "id"
    assert error.reason == "contains white space or control characters"


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_points_pass_exactly_when_in_range(lat: float, lon: float) -> None:
    env = observation()
    env.geometry.point.lat, env.geometry.point.lon = lat, lon
    lat_ok = math.isfinite(lat) and -90 <= lat <= 90
    lon_ok = math.isfinite(lon) and -180 <= lon <= 180
    if lat_ok and lon_ok:
        VALIDATOR.check(env, env.ByteSize(), now=NOW)
    else:
        assert rejection(env).field == ("geometry.point.lon" if lat_ok else "geometry.point.lat")


# -- what we make ourselves is valid ----------------------------------------------------------------------


@pytest.mark.parametrize("payload", BUILDERS)
def test_every_payload_kind_builder_is_valid(payload: str) -> None:
    env = BUILDERS[payload]()
    assert env.WhichOneof("payload") == payload
    VALIDATOR.check(env, env.ByteSize(), now=NOW)


@pytest.mark.parametrize("factory", [factories.observation, factories.alert, factories.incident])
def test_every_factory_envelope_is_valid(factory: Callable[[], pb.Envelope]) -> None:
    env = factory()
    VALIDATOR.check(env, env.ByteSize())  # factories stamp the real clock, so check against it


def test_factory_variants_are_valid() -> None:
    envs = [
        factories.observation(region="419001", agency="ecology_environment", severity=pb.RED, lat=None),
        factories.observation(status=pb.EXERCISE, value=0.0, sent_at=SENT),
        factories.alert(region="410000", severity=pb.BLUE, polygon=[(0, 0), (0, 1), (1, 1), (0, 0)]),
        factories.incident(region="410122", grade=pb.GRADE_EXTRAORDINARY),
    ]
    for env in envs:
        VALIDATOR.check(env, env.ByteSize())


def test_forty_ticks_of_demo_traffic_are_valid() -> None:
    traffic = Traffic(seed=7, start=NOW)
    kinds: set[int] = set()
    count = 0
    for tick in range(40):
        now = NOW + tick
        for env in traffic.next_tick(now):
            encoded = env.SerializeToString()
            VALIDATOR.check(env, len(encoded), now=now)
            kinds.add(env.kind)
            count += 1
    assert count > 40 * 10
    assert kinds == {pb.ALERT, pb.INCIDENT, pb.OBSERVATION, pb.POSITION, pb.HEARTBEAT}


def test_admit_returns_the_selection_record() -> None:
    envs = [build() for build in BUILDERS.values()]
    alert_with_circle = alert()
    alert_with_circle.geometry.circles.add(center=pb.Point(lat=34.75, lon=113.7), radius_m=2_000.0)
    observed = observation()
    _time("observed_at", SENT - 30)(observed)
    for env in [*envs, alert_with_circle, observed]:
        assert VALIDATOR.admit(env, env.ByteSize(), now=NOW) == record_of(env)
