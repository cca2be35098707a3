"""The canonical model survives the binary and the JSON encodings whole, for every payload it carries."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf import json_format
from yiwang.v1 import envelope_pb2 as pb

T0 = 1_750_000_000


def _envelope(kind: pb.Kind, region: str = "410105") -> pb.Envelope:
    env = pb.Envelope(
        id=f"model-{pb.Kind.Name(kind).lower()}",
        kind=kind,
        region=region,
        origin=pb.Origin(agency="emergency", node="henan-province", system="yjj-platform", region="410000"),
        severity=pb.ORANGE,
        status=pb.EXERCISE,
        priority=1,
        references=["model-ref-1", "model-ref-2"],
        attributes={"source": "test", "批次": "第一批", "empty": ""},
    )
    env.sent_at.FromSeconds(T0)
    env.observed_at.FromNanoseconds(T0 * 10**9 - 123_456_789)
    env.expires_at.FromSeconds(T0 + 6 * 3600)
    env.provenance.original_format = "cap-1.2"
    env.provenance.original_id = "41010041600000_20250615231320"
    env.provenance.hops.add(node="zhengzhou-city", received_at={"seconds": T0 + 1, "nanos": 5})
    env.provenance.hops.add(node="henan-province", received_at={"seconds": T0 + 2, "nanos": 999_999_999})
    env.provenance.signature.signer = "CN=zhengzhou-city"
    env.provenance.signature.algorithm = "ed25519"
    env.provenance.signature.value = bytes(range(64))
    env.provenance.signature.batch_root = b"\x00\xff" * 16
    env.provenance.signature.batch_proof.extend([b"\x01" * 32, b"\x02" * 32])
    return env


def _ring(lat0: float, lon0: float, lat1: float, lon1: float) -> pb.Polygon:
    corners = [(lat0, lon0), (lat0, lon1), (lat1, lon1), (lat1, lon0), (lat0, lon0)]
    return pb.Polygon(points=[pb.Point(lat=lat, lon=lon) for lat, lon in corners])


def alert() -> pb.Envelope:
    env = _envelope(pb.ALERT, "410102")
    env.geometry.point.CopyFrom(pb.Point(lat=34.75, lon=113.6, altitude_m=110.5))
    env.geometry.polygons.append(_ring(34.70, 113.50, 34.80, 113.63))
    env.geometry.circles.add(center=pb.Point(lat=34.75, lon=113.56), radius_m=5_000.0)
    alert = env.alert
    alert.sender = "郑州市气象台"
    alert.msg_type = "Alert"
    alert.scope = "Public"
    alert.codes.extend(["IPAWSv1.0", "GB/T 35965"])
    alert.event_type_code = "11B03"
    alert.dissemination = "短信,广播"
    for language, event in (("zh-CN", "暴雨"), ("en-US", "Rainstorm")):
        info = alert.infos.add(language=language, event=event, urgency="Immediate", severity="橙色")
        info.categories.extend(["Met", "Safety"])
        info.response_types.append("Prepare")
        info.event_codes.add(name="SAME", value="FFW")
        info.effective.FromSeconds(T0)
        info.expires.FromSeconds(T0 + 6 * 3600)
        info.headline = "暴雨橙色预警"
        info.parameters.add(name="rain_mm", value="50")
        info.resources.add(description="map", mime_type="image/png", size=2048, uri="https://example.org/map.png")
        info.resources[0].deref_uri = b"\x89PNG\r\n"
        area = info.areas.add(description="中原区", altitude_m=0.0, ceiling_m=3000.0)
        area.polygons.append(_ring(34.70, 113.50, 34.80, 113.63))
        area.polygons.append(_ring(34.60, 113.40, 34.65, 113.45))
        area.circles.add(center=pb.Point(lat=34.72, lon=113.55), radius_m=1500.0)
        area.circles.add(center=pb.Point(lat=34.78, lon=113.61), radius_m=0.0)
        area.geocodes.add(name="GB/T 2260", value="410102")
        area.geocodes.add(name="SAME", value="006113")
    return env


def incident() -> pb.Envelope:
    env = _envelope(pb.INCIDENT)
    inc = env.incident
    inc.incident_id = "ZZ-JS-20250615-101"
    inc.event_type = "11D01"
    inc.event_name = "地震"
    inc.grade = pb.GRADE_MAJOR
    inc.stage = pb.STAGE_FOLLOW_UP
    inc.report_number = 2
    inc.title = "登封市4.6级地震"
    inc.casualties.CopyFrom(pb.Casualties(dead=1, missing=2, injured=17, trapped=3, evacuated=1200, affected=35_000))
    inc.occurred_at.FromSeconds(T0 - 3600)
    inc.reporter = "登封市应急管理局"
    inc.earthquake.CopyFrom(pb.Earthquake(magnitude=4.6, magnitude_type="Ms", depth_km=10.0, catalog_id="CC2025"))
    return env


def observation() -> pb.Envelope:
    env = _envelope(pb.OBSERVATION)
    obs = env.observation
    obs.station_id = "41100050"
    obs.station_name = "花园口"
    obs.station_type = "hydrological"
    obs.device_id = "RTU-7"
    obs.interval = "PT5M"
    obs.measurements.add(metric="39", value=91.25, unit="m", quality=pb.GOOD, flag="N")
    obs.measurements.add(metric="20", value=0.0, unit="mm", quality=pb.SUSPECT)
    obs.measurements.add(metric="w01018", value=-12.5e-3, unit="mg/L", quality=pb.CALIBRATION, flag="C")
    for i, m in enumerate(obs.measurements):
        m.at.FromSeconds(T0 - 60 * i)
    return env


def position() -> pb.Envelope:
    env = _envelope(pb.POSITION)
    env.geometry.point.CopyFrom(pb.Point(lat=34.77, lon=113.68))
    env.position.CopyFrom(
        pb.Position(
            unit_id="ZZ-XF-001",
            callsign="金水1号",
            unit_type="a-f-G-U-C-F",
            speed_mps=8.25,
            course_deg=271.5,
            status="en route",
        )
    )
    return env


def resource() -> pb.Envelope:
    env = _envelope(pb.RESOURCE)
    env.resource.CopyFrom(
        pb.Resource(
            resource_id="HN-TENT-7",
            name="救灾帐篷",
            resource_type="tent",
            quantity=1200.5,
            unit="顶",
            status="in stock",
            owner="河南省粮食和物资储备局",
        )
    )
    return env


def command() -> pb.Envelope:
    env = _envelope(pb.COMMAND)
    env.command.targets.extend(["zz-119-dispatch", "terminal-42"])
    env.command.action = "dispatch"
    env.command.parameters.update({"unit": "ZZ-XF-001", "destination": "京广路隧道", "eta_s": "600"})
    env.command.issued_by = "郑州市应急指挥中心"
    return env


def command_ack() -> pb.Envelope:
    env = _envelope(pb.COMMAND_ACK)
    env.command_ack.CopyFrom(pb.CommandAck(command_id="model-command", state=pb.REFUSED, detail="unit busy"))
    return env


def heartbeat() -> pb.Envelope:
    env = _envelope(pb.HEARTBEAT)
    env.heartbeat.CopyFrom(pb.Heartbeat(subject="henan-water-telemetry", interval_s=30, state="ok"))
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


@pytest.mark.parametrize("payload", BUILDERS)
def test_binary_round_trip(payload: str) -> None:
    env = BUILDERS[payload]()
    assert env.WhichOneof("payload") == payload
    decoded = pb.Envelope.FromString(env.SerializeToString())
    assert decoded == env
    assert decoded.SerializeToString(deterministic=True) == env.SerializeToString(deterministic=True)


@pytest.mark.parametrize("payload", BUILDERS)
@pytest.mark.parametrize("preserving_proto_field_name", [False, True])
def test_json_round_trip(payload: str, preserving_proto_field_name: bool) -> None:
    env = BUILDERS[payload]()
    text = json_format.MessageToJson(env, preserving_proto_field_name=preserving_proto_field_name)
    decoded = json_format.Parse(text, pb.Envelope())
    assert decoded == env
    assert decoded.WhichOneof("payload") == payload


def test_json_spells_enums_by_name() -> None:
    as_dict = json_format.MessageToDict(alert())
    assert (as_dict["kind"], as_dict["severity"], as_dict["status"]) == ("ALERT", "ORANGE", "EXERCISE")
    assert as_dict["observedAt"] == "2025-06-15T15:06:39.876543211Z"
    assert as_dict["attributes"]["批次"] == "第一批"
    ack = json_format.MessageToDict(command_ack(), preserving_proto_field_name=True)
    assert ack["command_ack"]["state"] == "REFUSED"


def test_round_trip_keeps_provenance_attributes_and_references() -> None:
    decoded = pb.Envelope.FromString(command().SerializeToString())
    assert [hop.node for hop in decoded.provenance.hops] == ["zhengzhou-city", "henan-province"]
    assert decoded.provenance.hops[1].received_at.ToNanoseconds() == (T0 + 3) * 10**9 - 1
    assert decoded.provenance.signature.value == bytes(range(64))
    assert list(decoded.provenance.signature.batch_proof) == [b"\x01" * 32, b"\x02" * 32]
    assert dict(decoded.attributes) == {"source": "test", "批次": "第一批", "empty": ""}
    assert list(decoded.references) == ["model-ref-1", "model-ref-2"]
    assert dict(decoded.command.parameters) == {"unit": "ZZ-XF-001", "destination": "京广路隧道", "eta_s": "600"}


def test_round_trip_keeps_alert_geometry() -> None:
    decoded = pb.Envelope.FromString(alert().SerializeToString())
    assert decoded.geometry.point.HasField("altitude_m")
    info = decoded.alert.infos[1]
    assert info.event == "Rainstorm"
    area = info.areas[0]
    assert [len(p.points) for p in area.polygons] == [5, 5]
    assert [c.radius_m for c in area.circles] == [1500.0, 0.0]
    assert area.HasField("altitude_m")
    assert area.ceiling_m == 3000.0
    assert [(g.name, g.value) for g in area.geocodes] == [("GB/T 2260", "410102"), ("SAME", "006113")]


def test_round_trip_keeps_incident_details() -> None:
    decoded = pb.Envelope.FromString(incident().SerializeToString())
    assert decoded.incident.casualties.affected == 35_000
    assert decoded.incident.earthquake.magnitude == 4.6
    assert decoded.incident.stage == pb.STAGE_FOLLOW_UP


def test_unset_optional_altitude_stays_unset() -> None:
    env = position()
    decoded = json_format.Parse(json_format.MessageToJson(env), pb.Envelope())
    assert decoded.geometry.HasField("point")
    assert not decoded.geometry.point.HasField("altitude_m")


def test_kind_names() -> None:
    assert [(v.name, v.number) for v in pb.Kind.DESCRIPTOR.values] == [
        ("KIND_UNSPECIFIED", 0),
        ("ALERT", 1),
        ("INCIDENT", 2),
        ("OBSERVATION", 3),
        ("POSITION", 4),
        ("RESOURCE", 5),
        ("COMMAND", 6),
        ("COMMAND_ACK", 7),
        ("HEARTBEAT", 8),
    ]


def test_severity_names() -> None:
    assert [(v.name, v.number) for v in pb.Severity.DESCRIPTOR.values] == [
        ("SEVERITY_UNSPECIFIED", 0),
        ("BLUE", 1),
        ("YELLOW", 2),
        ("ORANGE", 3),
        ("RED", 4),
    ]


def test_status_names() -> None:
    assert [(v.name, v.number) for v in pb.Status.DESCRIPTOR.values] == [
        ("STATUS_UNSPECIFIED", 0),
        ("ACTUAL", 1),
        ("EXERCISE", 2),
        ("TEST", 3),
    ]


def test_every_kind_has_a_payload_of_its_name() -> None:
    payloads = [f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields]
    kinds = [v.name.lower() for v in pb.Kind.DESCRIPTOR.values if v.number != pb.KIND_UNSPECIFIED]
    assert payloads == kinds
