"""Realistic sample traffic for Henan: what a rainstorm day looks like on the network.

Meteorological warnings for Zhengzhou districts, water levels and rainfall rising at hydrological
stations, air quality from environmental stations, incident reports that move from 首报 to 终报,
rescue vehicles moving, and the heartbeats of the systems that send all this. Used by ``yiwang demo``,
by the tests and by the benchmarks.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Final

from yiwang.v1 import envelope_pb2 as pb

from gateway.ids import uuid7
from gateway.observations import measurements, point_count


@dataclass(frozen=True)
class Station:
    id: str
    name: str
    region: str
    lat: float
    lon: float
    agency: str
    metrics: tuple[tuple[str, str, float], ...]  # (code, unit, base value)


DESCRIBED_POINTS = 8  # points of an observation shown in its line; a long series is summed up by its count

STATIONS = (
    Station("41100050", "花园口", "410105", 34.9100, 113.6600, "water", (("39", "m", 91.2), ("20", "mm", 0.0))),
    Station(
        "41102500",
        "中牟(贾鲁河)",
        "410122",
        34.7210,
        113.9760,
        "water",
        (("39", "m", 78.4), ("20", "mm", 0.0)),
    ),
    Station("41101810", "常庄水库", "410102", 34.7300, 113.5560, "water", (("39", "m", 124.6), ("20", "mm", 0.0))),
    Station(
        "41300210",
        "洛阳(洛河)",
        "410305",
        34.6420,
        112.4180,
        "water",
        (("39", "m", 139.8), ("20", "mm", 0.0)),
    ),
    Station("41600120", "新乡(卫河)", "410702", 35.3030, 113.9270, "water", (("39", "m", 69.1), ("20", "mm", 0.0))),
    Station(
        "410100AQ01",
        "郑州市监测站",
        "410105",
        34.7570,
        113.6860,
        "ecology_environment",
        (("a34004", "ug/m3", 38.0), ("a34002", "ug/m3", 61.0)),
    ),
    Station(
        "410300AQ01",
        "洛阳市监测站",
        "410302",
        34.6800,
        112.4700,
        "ecology_environment",
        (("a34004", "ug/m3", 44.0), ("a34002", "ug/m3", 70.0)),
    ),
)

#: Zhengzhou districts and their rough extents, for warning polygons (lat, lon of the corners).
DISTRICTS = (
    ("410102", "中原区", (34.70, 113.50, 34.80, 113.63)),
    ("410105", "金水区", (34.75, 113.64, 34.90, 113.78)),
    ("410122", "中牟县", (34.55, 113.80, 34.90, 114.20)),
    ("410181", "巩义市", (34.55, 112.80, 34.85, 113.25)),
    ("410185", "登封市", (34.30, 112.85, 34.60, 113.30)),
)

COLOURS = ((pb.BLUE, "蓝色"), (pb.YELLOW, "黄色"), (pb.ORANGE, "橙色"), (pb.RED, "红色"))


def _stamp(env: pb.Envelope, now: float) -> None:
    env.sent_at.FromNanoseconds(int(now * 1e9))
    env.observed_at.FromNanoseconds(int(now * 1e9))


# The protocols the demo's stations would report in: their metric codes are those protocols' codes.
STATION_FORMATS: Final = {"water": "sl651-2014", "ecology_environment": "hj212-2017"}


def observation(
    station: Station, now: float, rising: float = 0.0, status: pb.Status = pb.ACTUAL, rng: random.Random | None = None
) -> pb.Envelope:
    """A reading of a station; ``rising`` (0..1) drives a flood wave on water levels and rainfall."""
    rng = rng or random.Random()
    env = pb.Envelope(id=uuid7(), kind=pb.OBSERVATION, region=station.region, status=status, priority=2)
    env.origin.agency = station.agency
    env.origin.region = station.region[:4] + "00"
    env.origin.system = f"{station.agency}-telemetry"
    env.provenance.original_format = STATION_FORMATS.get(station.agency, "")
    _stamp(env, now)
    env.geometry.point.lat = station.lat
    env.geometry.point.lon = station.lon
    obs = env.observation
    obs.station_id = station.id
    obs.station_name = station.name
    obs.interval = "PT5M"
    for code, unit, base in station.metrics:
        if code == "39":
            value = base + 3.5 * rising + rng.uniform(-0.02, 0.02)
        elif code == "20":
            value = max(0.0, 40.0 * rising + rng.uniform(-1, 3))
        else:
            value = base * (1 + rng.uniform(-0.1, 0.1))
        m = obs.measurements.add(metric=code, value=round(value, 2), unit=unit, quality=pb.GOOD)
        m.at.FromNanoseconds(int(now * 1e9))
    return env


def warning(district: tuple[str, str, tuple[float, float, float, float]], level: int, now: float) -> pb.Envelope:
    """A rainstorm warning of the meteorological bureau for one district, with its area as a polygon."""
    code, name, (lat0, lon0, lat1, lon1) = district
    severity, colour = COLOURS[level]
    env = pb.Envelope(
        id=f"41010041600000_{time.strftime('%Y%m%d%H%M%S', time.localtime(now))}_{uuid7()[-6:]}",
        kind=pb.ALERT,
        region=code,
        severity=severity,
        status=pb.ACTUAL,
        priority=0,
    )
    env.origin.agency = "meteorology"
    env.origin.region = "410100"
    env.origin.system = "zhengzhou-qxj-warning"
    _stamp(env, now)
    env.expires_at.FromNanoseconds(int((now + 6 * 3600) * 1e9))
    ring = [(lat0, lon0), (lat0, lon1), (lat1, lon1), (lat1, lon0), (lat0, lon0)]
    polygon = env.geometry.polygons.add()
    for lat, lon in ring:
        polygon.points.add(lat=lat, lon=lon)
    alert = env.alert
    alert.sender = "郑州市气象台"
    alert.msg_type = "Alert"
    alert.scope = "Public"
    alert.event_type_code = "11B03"
    info = alert.infos.add(language="zh-CN", event="暴雨", urgency="Immediate", severity=colour, certainty="Likely")
    info.categories.append("Met")
    info.headline = f"郑州市气象台发布{name}暴雨{colour}预警"
    info.description = f"预计未来6小时{name}降雨量将达50毫米以上，请注意防范。"
    info.sender_name = "郑州市气象台"
    area = info.areas.add(description=name)
    area.polygons.add().CopyFrom(polygon)
    area.geocodes.add(name="GB/T 2260", value=code)
    return env


def incident(stage: pb.ReportStage, number: int, incident_id: str, now: float, casualties: int) -> pb.Envelope:
    """A waterlogging report of the emergency-management bureau, at one stage of its report chain."""
    env = pb.Envelope(
        id=f"{incident_id}-{number}",
        kind=pb.INCIDENT,
        region="410105",
        status=pb.ACTUAL,
        severity=pb.ORANGE,
        priority=0,
    )
    env.origin.agency = "emergency"
    env.origin.region = "410105"
    env.origin.system = "jinshui-yjj"
    _stamp(env, now)
    env.geometry.point.lat, env.geometry.point.lon = 34.7730, 113.6820
    inc = env.incident
    inc.incident_id = incident_id
    inc.event_type = "11B33"
    inc.event_name = "城市内涝"
    inc.grade = pb.GRADE_LARGER if casualties >= 3 else pb.GRADE_GENERAL
    inc.stage = stage
    inc.report_number = number
    inc.title = "金水区京广路隧道积水"
    inc.description = "京广路隧道积水深度超过1米，多辆车辆被困，消防救援力量已到场。"
    inc.address = "郑州市金水区京广北路隧道"
    inc.casualties.trapped = casualties
    inc.occurred_at.FromNanoseconds(int((now - 600) * 1e9))
    if number > 1:
        env.references.append(f"{incident_id}-{number - 1}")
    return env


COUNTY_CYCLE = 40  # ticks between the county's incidents


def county_reports(tick: int, now: float | None = None) -> list[pb.Envelope]:
    """What the Zhongyuan county emergency bureau reports at a tick: an incident every COUNTY_CYCLE
    ticks, 首报 as general, a 续报 that raises it to 较大 (so it, and the chain before it, go on up to
    the province), then the 终报."""
    now = time.time() if now is None else now
    step, cycle = tick % COUNTY_CYCLE, tick // COUNTY_CYCLE
    stages = {3: (1, pb.STAGE_INITIAL, 1), 13: (2, pb.STAGE_FOLLOW_UP, 4), 23: (3, pb.STAGE_FINAL, 4)}
    if step not in stages:
        return []
    number, stage, trapped = stages[step]
    day = time.strftime("%Y%m%d", time.localtime(now))
    env = incident(stage, number, f"ZZ-ZY-{day}-{cycle:03d}", now, casualties=trapped)
    env.region = env.origin.region = "410102"
    env.origin.system = "zhongyuan-yjj"
    env.geometry.point.lat, env.geometry.point.lon = 34.7484, 113.6126
    inc = env.incident
    inc.event_type, inc.event_name = "11B33", "城市内涝"
    inc.title = "中原区建设路下穿隧道积水"
    inc.description = "下穿隧道积水，车辆被困，区消防救援大队已到场。"
    inc.address = "郑州市中原区建设西路下穿隧道"
    return [env]


def position(unit: int, now: float) -> pb.Envelope:
    """A fire-rescue vehicle circling through Zhengzhou."""
    angle = (now / 60.0 + unit) % (2 * math.pi)
    env = pb.Envelope(id=uuid7(), kind=pb.POSITION, region="410105", status=pb.ACTUAL, priority=1)
    env.origin.agency = "fire_rescue"
    env.origin.region = "410100"
    env.origin.system = "zz-119-dispatch"
    _stamp(env, now)
    env.geometry.point.lat = 34.77 + 0.04 * math.sin(angle)
    env.geometry.point.lon = 113.68 + 0.05 * math.cos(angle)
    pos = env.position
    pos.unit_id = f"ZZ-XF-{unit:03d}"
    pos.callsign = f"金水{unit}号"
    pos.unit_type = "a-f-G-U-C-F"
    pos.speed_mps = 8.0
    pos.course_deg = math.degrees(angle) % 360
    pos.status = "en route"
    return env


def heartbeat(system: str, agency: str, region: str, now: float) -> pb.Envelope:
    env = pb.Envelope(id=uuid7(), kind=pb.HEARTBEAT, region=region, status=pb.ACTUAL, priority=3)
    env.origin.agency = agency
    env.origin.region = region
    env.origin.system = system
    _stamp(env, now)
    env.heartbeat.subject = system
    env.heartbeat.interval_s = 30
    env.heartbeat.state = "ok"
    return env


class Traffic:
    """The day's traffic, one tick (about a second of it) at a time, each envelope stamped when made."""

    def __init__(self, seed: int | None = None, start: float | None = None) -> None:
        self.rng = random.Random(seed)
        self.began = time.time() if start is None else start
        self.tick = 0
        day = time.strftime("%Y%m%d", time.localtime(self.began))
        self.incident_id = f"ZZ-JS-{day}-{self.rng.randint(100, 999)}"

    def next_tick(self, now: float | None = None) -> list[pb.Envelope]:
        now = time.time() if now is None else now
        tick = self.tick
        self.tick += 1
        rising = min(1.0, (now - self.began) / 600.0)
        out = [observation(station, now, rising, rng=self.rng) for station in STATIONS]
        out += [position(unit, now) for unit in range(1, 4)]
        if tick % 10 == 0:
            district = DISTRICTS[(tick // 10) % len(DISTRICTS)]
            out.append(warning(district, min(3, int(rising * 4)), now))
        number = tick // 15 + 1
        if tick % 15 == 5 and number <= 4:
            stage = pb.STAGE_INITIAL if number == 1 else (pb.STAGE_FINAL if number == 4 else pb.STAGE_FOLLOW_UP)
            out.append(incident(stage, number, self.incident_id, now, casualties=number))
        if tick % 30 == 0:
            out.append(heartbeat("zhengzhou-qxj-warning", "meteorology", "410100", now))
            out.append(heartbeat("henan-water-telemetry", "water", "410000", now))
        return out


def describe(env: pb.Envelope, region_name: str) -> str:
    """One human line for the demo's subscriber."""
    kind = pb.Kind.Name(env.kind)
    head = f"{kind:<11} {region_name}({env.region}) {env.origin.agency:<19}"
    payload = env.WhichOneof("payload")
    if payload == "observation":
        shown = list(itertools.islice(measurements(env.observation), DESCRIBED_POINTS + 1))
        readings = ", ".join(f"{m.metric}={m.value:g}{m.unit}" for m in shown[:DESCRIBED_POINTS])
        if len(shown) > DESCRIBED_POINTS:
            readings += f", ... ({point_count(env.observation)} points)"
        return f"{head} {env.observation.station_name}: {readings}"
    if payload == "alert":
        return f"{head} [{pb.Severity.Name(env.severity)}] {env.alert.infos[0].headline}"
    if payload == "incident":
        inc = env.incident
        return (
            f"{head} [{pb.ReportStage.Name(inc.stage)} #{inc.report_number} {pb.IncidentGrade.Name(inc.grade)}] "
            f"{inc.title}, trapped {inc.casualties.trapped}"
        )
    if payload == "position":
        p = env.geometry.point
        return f"{head} {env.position.callsign} at {p.lat:.4f},{p.lon:.4f}"
    if payload == "heartbeat":
        return f"{head} {env.heartbeat.subject} {env.heartbeat.state}"
    return head
