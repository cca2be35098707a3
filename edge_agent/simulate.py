"""Simulated field terminals of a Henan rainstorm day, for the CLI, the tests and the benchmarks.

Each terminal is sans-IO: it never reads a clock, opens a socket or sleeps. The caller passes the
time (milliseconds since the epoch) to :meth:`SimulatedTerminal.advance` and gets every reading
that fell due up to then, each stamped with its own due time, so an hour can be simulated in one
call. Randomness comes from one seeded :class:`random.Random` per terminal and is drawn in the
order of due times, so the same seed gives the same readings however the time is advanced.

The scenario follows the 20 July 2021 Zhengzhou rainstorm in shape and size: a rain cell passes
two to three hours after the start and peaks near 201.9 mm/h (the hour 16:00-17:00 at the
Zhengzhou station), rivers rise past their flood stage a few hours later, loess slopes creep
with the accumulated rain, and rescue boats, trucks and responders move in the city while an
emergency communication vehicle reports over a satellite link that rain fades.
"""

from __future__ import annotations

import enum
import math
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.model import Birth, Metric, MetricKind, Priority, Reading
from gateway.places import default_places
from gateway.regions import Level, default_table, level_of

AGENT = "yiwang-edge-sim/0.1"

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

#: Zhengzhou's extent (south, west, north, east); every simulated position there stays inside it.
ZHENGZHOU_BOUNDS = (34.26, 112.71, 34.99, 114.24)

#: The wettest hour of 20 July 2021 at the Zhengzhou national station, mm.
ZHENGZHOU_PEAK_MM_H = 201.9

TIPPING_BUCKET_MM = 0.5  # the resolution of the tipping-bucket gauges in SL 651 telemetry
PHOTO_CHUNK_BYTES = 1024  # fits a satellite link's 1,500-byte message with its header
M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON_EQUATOR = 111_320.0


class TerminalKind(enum.StrEnum):
    """What a simulated terminal is; the value is the middle part of its name (``zz-rain-003``)."""

    RAIN_GAUGE = "rain"
    RIVER_STATION = "river"
    LANDSLIDE_MONITOR = "slope"
    RESCUE_BOAT = "boat"
    RESCUE_TRUCK = "truck"
    HANDSET = "handset"
    COMMS_VEHICLE = "satcom"


#: How many of each kind a fleet of 20 holds: stations outnumber movers, one satellite vehicle.
FLEET_MIX: tuple[tuple[TerminalKind, int], ...] = (
    (TerminalKind.RAIN_GAUGE, 5),
    (TerminalKind.HANDSET, 5),
    (TerminalKind.RIVER_STATION, 3),
    (TerminalKind.LANDSLIDE_MONITOR, 2),
    (TerminalKind.RESCUE_BOAT, 2),
    (TerminalKind.RESCUE_TRUCK, 2),
    (TerminalKind.COMMS_VEHICLE, 1),
)

#: The link each kind is usually on; ``fleet(profile=...)`` puts them all on one instead.
DEFAULT_LINK = {
    TerminalKind.RAIN_GAUGE: "cellular",
    TerminalKind.RIVER_STATION: "cellular",
    TerminalKind.LANDSLIDE_MONITOR: "cellular",
    TerminalKind.RESCUE_BOAT: "cellular",
    TerminalKind.RESCUE_TRUCK: "cellular",
    TerminalKind.HANDSET: "cellular",
    TerminalKind.COMMS_VEHICLE: "satellite",
}

#: A river per Zhengzhou county and the usual stage at its station (m, 1985 height datum, rough).
RIVERS = {
    "410102": ("须水河", 103.0),
    "410103": ("金水河", 108.0),
    "410104": ("熊耳河", 95.0),
    "410105": ("东风渠", 90.5),
    "410106": ("枯河", 122.0),
    "410108": ("索须河", 89.0),
    "410122": ("贾鲁河", 78.4),
    "410181": ("伊洛河", 110.0),
    "410182": ("索河", 140.0),
    "410183": ("双洎河", 180.0),
    "410184": ("黄水河", 115.0),
    "410185": ("颍河", 280.0),
}

#: The loess hill counties where Zhengzhou's landslide hazard points are.
HILLY_COUNTIES = frozenset({"410181", "410182", "410183", "410185"})

#: Short city prefixes for terminal names.
CITY_PREFIX = {"410100": "zz", "410300": "ly", "410700": "xx"}

SOS_TEXTS = (
    "队员落水，请求支援",
    "被困于积水区域，水深过胸，请求救援",
    "发现被困群众多人，需要冲锋舟支援",
    "队员受伤，请求医疗支援",
)


@dataclass(frozen=True, slots=True)
class Storm:
    """The rain over one place: a passing cell on a broad band of steady rain, in mm/h."""

    peak_ms: int
    cell_sigma_ms: float
    cell_peak_mm_h: float
    band_sigma_ms: float
    band_peak_mm_h: float

    def intensity(self, at_ms: int) -> float:
        """Rain rate in mm/h at a moment."""
        cell = self.cell_peak_mm_h * math.exp(-0.5 * ((at_ms - self.peak_ms) / self.cell_sigma_ms) ** 2)
        band = self.band_peak_mm_h * math.exp(-0.5 * ((at_ms - self.peak_ms) / self.band_sigma_ms) ** 2)
        return cell + band

    def rain_between(self, from_ms: int, to_ms: int) -> float:
        """Expected rain in mm over an interval (the closed form of the Gaussian's integral)."""
        return self._cumulative(to_ms) - self._cumulative(from_ms)

    def total(self) -> float:
        """The whole storm's rain in mm."""
        root_2pi_h = math.sqrt(2 * math.pi) / HOUR_MS
        return (self.cell_peak_mm_h * self.cell_sigma_ms + self.band_peak_mm_h * self.band_sigma_ms) * root_2pi_h

    def _cumulative(self, at_ms: int) -> float:
        half_root_2pi_h = math.sqrt(2 * math.pi) / (2 * HOUR_MS)
        total = 0.0
        for peak_mm_h, sigma in ((self.cell_peak_mm_h, self.cell_sigma_ms), (self.band_peak_mm_h, self.band_sigma_ms)):
            total += (
                peak_mm_h * sigma * half_root_2pi_h * (1 + math.erf((at_ms - self.peak_ms) / (sigma * math.sqrt(2))))
            )
        return total


class ThresholdWatch:
    """Tells when a series crosses its threshold upward, once per crossing.

    It re-arms only after the value falls below the threshold by the hysteresis, so sensor noise
    around the line does not count as new crossings (and new P0 alarms).
    """

    def __init__(self, threshold: float, hysteresis: float) -> None:
        self.threshold = threshold
        self.hysteresis = hysteresis
        self._armed = True

    def crossed(self, value: float) -> bool:
        if self._armed and value >= self.threshold:
            self._armed = False
            return True
        if not self._armed and value < self.threshold - self.hysteresis:
            self._armed = True
        return False


def metres_between(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Distance in metres on a local flat approximation, good to well under 1% across a city."""
    dy = (lat2 - lat1) * M_PER_DEG_LAT
    dx = (lon2 - lon1) * M_PER_DEG_LON_EQUATOR * math.cos(math.radians((lat1 + lat2) / 2))
    return math.hypot(dx, dy)


def _offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    return (
        lat + north_m / M_PER_DEG_LAT,
        lon + east_m / (M_PER_DEG_LON_EQUATOR * math.cos(math.radians(lat))),
    )


@dataclass(slots=True)
class _Channel:
    """A set of metrics read together at one interval, and when they are next due."""

    interval_ms: int
    next_ms: int
    emit: Callable[[int, list[Reading]], None]


class _Route:
    """A vehicle's back-and-forth along waypoints, with a stop at each end to load or unload."""

    def __init__(self, waypoints: Sequence[tuple[float, float]]) -> None:
        self.waypoints = list(waypoints)
        self.leg_ends = [0.0]
        for (lat1, lon1), (lat2, lon2) in zip(self.waypoints, self.waypoints[1:], strict=False):
            self.leg_ends.append(self.leg_ends[-1] + metres_between(lat1, lon1, lat2, lon2))
        self.length = self.leg_ends[-1]

    def point_at(self, along_m: float) -> tuple[float, float]:
        for leg in range(1, len(self.leg_ends)):
            if along_m <= self.leg_ends[leg] or leg == len(self.leg_ends) - 1:
                start, end = self.leg_ends[leg - 1], self.leg_ends[leg]
                share = 0.0 if end == start else min(1.0, max(0.0, (along_m - start) / (end - start)))
                (lat1, lon1), (lat2, lon2) = self.waypoints[leg - 1], self.waypoints[leg]
                return lat1 + (lat2 - lat1) * share, lon1 + (lon2 - lon1) * share
        return self.waypoints[0]


class SimulatedTerminal:
    """One field terminal of the rainstorm scenario: its catalogue, its birth and its readings.

    ``region`` is a county-level GB/T 2260 code with a representative point in the gateway's
    places table; the terminal sits within a few kilometres of it. The scenario's clock starts
    at ``start_ms``: the rain cell passes two to three hours later.
    """

    def __init__(self, kind: TerminalKind | str, name: str, region: str, seed: int, start_ms: int) -> None:
        self.kind = TerminalKind(kind)
        self.name = name
        self.region = region
        self.seed = seed
        self.start_ms = start_ms
        self.link = DEFAULT_LINK[self.kind]
        place = default_places().point_of(region)
        if place is None or level_of(region) is not Level.COUNTY:
            raise ValueError(f"region {region!r} is not a county-level code with a known place")
        self.county_name = default_table().name(region)
        self._rng = random.Random(seed)  # noqa: S311 - simulation, not security: reproducible by seed
        rng = self._rng
        self.lat, self.lon = _offset(place.lat, place.lon, rng.uniform(-3000, 3000), rng.uniform(-3000, 3000))
        self.station_id = f"{region}{zlib.crc32(name.encode()) % 10000:04d}"  # SL 651: ten digits
        self.storm = Storm(
            peak_ms=start_ms + int(rng.uniform(2.0, 3.0) * HOUR_MS),
            cell_sigma_ms=rng.uniform(40, 50) * MINUTE_MS,
            cell_peak_mm_h=ZHENGZHOU_PEAK_MM_H * rng.uniform(0.35, 1.0),
            band_sigma_ms=rng.uniform(3.0, 5.0) * HOUR_MS,
            band_peak_mm_h=rng.uniform(3.0, 8.0),
        )
        self._catalogue: tuple[Metric, ...] = ()
        self._channels: list[_Channel] = []
        self.interval_s = 60.0
        setup = {
            TerminalKind.RAIN_GAUGE: self._setup_rain_gauge,
            TerminalKind.RIVER_STATION: self._setup_river_station,
            TerminalKind.LANDSLIDE_MONITOR: self._setup_landslide_monitor,
            TerminalKind.RESCUE_BOAT: self._setup_vehicle,
            TerminalKind.RESCUE_TRUCK: self._setup_vehicle,
            TerminalKind.HANDSET: self._setup_handset,
            TerminalKind.COMMS_VEHICLE: self._setup_comms_vehicle,
        }[self.kind]
        setup()

    def __repr__(self) -> str:
        return f"SimulatedTerminal({self.kind.value!r}, {self.name!r}, {self.region!r}, seed={self.seed})"

    def catalogue(self) -> tuple[Metric, ...]:
        return self._catalogue

    def birth(self, session: int, link: str | None = None) -> Birth:
        """The birth message this terminal sends on connect, on ``link`` or its own link profile."""
        return Birth(
            terminal=self.name,
            session=session,
            catalogue=self._catalogue,
            link=self.link if link is None else link,
            interval_s=self.interval_s,
            agent=AGENT,
        )

    def advance(self, until_ms: int) -> list[Reading]:
        """Every reading due after the last call and up to ``until_ms`` (inclusive), in time order."""
        out: list[Reading] = []
        channels = self._channels
        while True:
            # Channels are few (one to three); ties go to the first, so the order of random draws
            # (and with it every value) does not depend on how the caller slices the time.
            channel = min(channels, key=_next_due)
            at_ms = channel.next_ms
            if at_ms > until_ms:
                return out
            channel.emit(at_ms, out)
            channel.next_ms = at_ms + channel.interval_ms

    def copy(self) -> SimulatedTerminal:
        """A fresh terminal with the same identity and seed, at the start of the scenario."""
        twin = SimulatedTerminal(self.kind, self.name, self.region, self.seed, self.start_ms)
        twin.link = self.link
        return twin

    # Each kind's setup builds its catalogue and the channels that emit it.

    def _aligned(self, interval_ms: int) -> int:
        """The first wall-clock multiple of the interval at or after the start, as RTUs report."""
        return -(-self.start_ms // interval_ms) * interval_ms

    def _setup_rain_gauge(self) -> None:
        interval_ms = 5 * MINUTE_MS
        sid = self.station_id
        station = f"{self.county_name}雨量站"
        self._catalogue = (
            Metric(0, "rain_5min", unit="mm", station_id=sid, name=f"{station} 5分钟降水量"),
            Metric(1, "rain_total", unit="mm", station_id=sid, name=f"{station} 累计降水量"),
        )
        self.interval_s = interval_ms / 1000
        storm, rng = self.storm, self._rng
        bucket_mm = 0.0  # rain caught but not yet tipped: carried to the next interval, as a real bucket does
        total_mm = 0.0

        def emit(at_ms: int, out: list[Reading]) -> None:
            nonlocal bucket_mm, total_mm
            bucket_mm += storm.rain_between(at_ms - interval_ms, at_ms) * max(0.0, rng.gauss(1.0, 0.15))
            tips = int(bucket_mm / TIPPING_BUCKET_MM)
            bucket_mm -= tips * TIPPING_BUCKET_MM
            rain_mm = tips * TIPPING_BUCKET_MM
            total_mm += rain_mm
            out.append(Reading(0, at_ms, rain_mm))
            out.append(Reading(1, at_ms, total_mm))

        self._channels = [_Channel(interval_ms, self._aligned(interval_ms), emit)]

    def _setup_river_station(self) -> None:
        interval_ms = 5 * MINUTE_MS
        rng = self._rng
        river, usual_m = RIVERS.get(self.region, ("河道", 100.0))
        base_m = usual_m + rng.uniform(-0.5, 0.5)
        flood_stage_m = round(base_m + rng.uniform(1.8, 3.0), 2)
        rise_m = (flood_stage_m - base_m) * rng.uniform(1.15, 1.6)
        onset_ms = self.start_ms + int(rng.uniform(0.5, 1.0) * HOUR_MS)  # runoff takes time to reach the river
        time_to_peak_ms = rng.uniform(3.0, 4.0) * HOUR_MS
        station = f"{river}{self.county_name}站"
        sid = self.station_id
        self._catalogue = (
            Metric(0, "39", unit="m", station_id=sid, name=f"{station} 河道水位", threshold=flood_stage_m),
            Metric(
                1,
                "flood_stage",
                kind=MetricKind.ALARM,
                unit="m",
                station_id=sid,
                name=f"{station} 超警戒水位",
                priority=Priority.P0,
                threshold=flood_stage_m,
            ),
        )
        self.interval_s = interval_ms / 1000
        watch = ThresholdWatch(flood_stage_m, hysteresis=0.10)

        def emit(at_ms: int, out: list[Reading]) -> None:
            x = max(0.0, (at_ms - onset_ms) / time_to_peak_ms)
            wave = (x * math.exp(1 - x)) ** 2  # a flood hydrograph: 0 before onset, 1 at the crest
            level_m = round(base_m + rise_m * wave + rng.gauss(0.0, 0.005), 2)
            out.append(Reading(0, at_ms, level_m))
            if watch.crossed(level_m):
                text = f"{station}水位{level_m:.2f}米，超警戒水位{level_m - flood_stage_m:.2f}米"
                out.append(Reading(1, at_ms, level_m, Priority.P0, self.lat, self.lon, text))

        self._channels = [_Channel(interval_ms, self._aligned(interval_ms), emit)]

    def _setup_landslide_monitor(self) -> None:
        interval_ms = 10 * MINUTE_MS
        rng, storm = self._rng, self.storm
        threshold_mm = float(rng.choice((30, 40, 50)))
        # How far the storm moves this slope in all: enough to pass the warning value once the
        # larger part of the rain has soaked in, as the loess slopes of Gongyi did in 2021.
        storm_shift_mm = threshold_mm * rng.uniform(1.3, 2.0)
        creep_mm_h = rng.uniform(0.005, 0.02)
        crack_base_mm = rng.uniform(2.0, 15.0)
        soak_lag_ms = HOUR_MS
        storm_total_mm = storm.total()
        site = f"{self.county_name}滑坡隐患点{zlib.crc32(self.name.encode()) % 100:02d}"
        sid = self.station_id
        self._catalogue = (
            Metric(
                0, "displacement", unit="mm", station_id=sid, name=f"{site} GNSS地表累计位移", threshold=threshold_mm
            ),
            Metric(1, "crack", unit="mm", station_id=sid, name=f"{site} 裂缝宽度"),
            Metric(
                2,
                "displacement_alarm",
                kind=MetricKind.ALARM,
                unit="mm",
                station_id=sid,
                name=f"{site} 位移超预警值",
                priority=Priority.P0,
                threshold=threshold_mm,
            ),
        )
        self.interval_s = interval_ms / 1000
        watch = ThresholdWatch(threshold_mm, hysteresis=5.0)  # GNSS noise is about 1 mm, 5 mm is far beyond

        def emit(at_ms: int, out: list[Reading]) -> None:
            soaked = storm.rain_between(self.start_ms, at_ms - soak_lag_ms) / storm_total_mm
            moved_mm = creep_mm_h * (at_ms - self.start_ms) / HOUR_MS + storm_shift_mm * max(0.0, soaked)
            displacement_mm = round(moved_mm + rng.gauss(0.0, 1.0), 1)
            crack_mm = round(crack_base_mm + 0.3 * moved_mm + rng.gauss(0.0, 0.05), 1)
            out.append(Reading(0, at_ms, displacement_mm))
            out.append(Reading(1, at_ms, crack_mm))
            if watch.crossed(displacement_mm):
                text = f"{site}地表累计位移{displacement_mm:.1f}毫米，超过预警值{threshold_mm:.0f}毫米"
                out.append(Reading(2, at_ms, displacement_mm, Priority.P0, self.lat, self.lon, text))

        self._channels = [_Channel(interval_ms, self._aligned(interval_ms), emit)]

    def _setup_vehicle(self) -> None:
        rng = self._rng
        boat = self.kind is TerminalKind.RESCUE_BOAT
        # Assault boats in flooded streets go at a walking-to-jogging pace among debris; trucks
        # at 25-50 km/h on wet city roads. Boats shuttle within a flooded quarter.
        cruise_mps = rng.uniform(1.5, 4.0) if boat else rng.uniform(7.0, 14.0)
        reach_m = 1500.0 if boat else 6000.0
        waypoints = [(self.lat, self.lon)]
        for _ in range(rng.randint(2, 4)):
            bearing = rng.uniform(0, 2 * math.pi)
            distance = reach_m * math.sqrt(rng.random())
            waypoints.append(_offset(self.lat, self.lon, distance * math.cos(bearing), distance * math.sin(bearing)))
        route = _Route(waypoints)
        interval_ms = 15_000
        what = "冲锋舟" if boat else "抢险车"
        self._catalogue = (
            Metric(
                0,
                "position",
                kind=MetricKind.POSITION,
                unit="m/s",
                station_id=self.name,
                name=f"{self.county_name}{what}位置",
                priority=Priority.P1,
            ),
        )
        self.interval_s = interval_ms / 1000
        along_m = 0.0
        heading = 1.0
        dwell_ms = 0

        def emit(at_ms: int, out: list[Reading]) -> None:
            nonlocal along_m, heading, dwell_ms
            if dwell_ms > 0:
                dwell_ms -= interval_ms
                speed_mps = 0.0
            else:
                speed_mps = cruise_mps * min(1.3, max(0.3, rng.gauss(1.0, 0.1)))
                along_m += heading * speed_mps * interval_ms / 1000
                if not 0.0 < along_m < route.length:
                    along_m = min(route.length, max(0.0, along_m))
                    heading = -heading
                    dwell_ms = int(rng.uniform(3, 10) * MINUTE_MS)  # loading evacuees or supplies
            lat, lon = route.point_at(along_m)
            lat, lon = _offset(lat, lon, rng.gauss(0.0, 3.0), rng.gauss(0.0, 3.0))  # GNSS error
            out.append(Reading(0, at_ms, round(speed_mps, 1), Priority.P1, lat, lon, key="position"))

        self._channels = [_Channel(interval_ms, self.start_ms + rng.randrange(interval_ms), emit)]

    def _setup_handset(self) -> None:
        rng = self._rng
        position_ms = 30_000
        battery_ms = 5 * MINUTE_MS
        self._catalogue = (
            Metric(
                0,
                "position",
                kind=MetricKind.POSITION,
                unit="m/s",
                station_id=self.name,
                name="单兵终端位置",
                priority=Priority.P1,
            ),
            Metric(1, "sos", kind=MetricKind.ALARM, station_id=self.name, name="单兵SOS", priority=Priority.P0),
            Metric(2, "battery", unit="%", station_id=self.name, name="单兵终端电量"),
        )
        self.interval_s = position_ms / 1000
        home_lat, home_lon = self.lat, self.lon
        lat, lon = home_lat, home_lon
        bearing = rng.uniform(0, 2 * math.pi)
        sos_chance = position_ms / (24 * HOUR_MS)  # about one SOS per responder a day
        battery_pct = rng.uniform(70.0, 100.0)
        drain_pct_h = rng.uniform(6.0, 10.0)

        def emit_position(at_ms: int, out: list[Reading]) -> None:
            nonlocal lat, lon, bearing
            speed_mps = rng.uniform(0.0, 1.6)  # walking or wading
            if metres_between(home_lat, home_lon, lat, lon) > 1500:
                # Turn back toward the team's post: responders work an assigned area.
                bearing = math.atan2(
                    (home_lon - lon) * math.cos(math.radians(lat)) * M_PER_DEG_LON_EQUATOR,
                    (home_lat - lat) * M_PER_DEG_LAT,
                )
            else:
                bearing += rng.gauss(0.0, 0.6)
            step_m = speed_mps * position_ms / 1000
            lat, lon = _offset(lat, lon, step_m * math.cos(bearing), step_m * math.sin(bearing))
            out.append(Reading(0, at_ms, round(speed_mps, 1), Priority.P1, lat, lon, key="position"))
            if rng.random() < sos_chance:
                text = f"{self.name} SOS：{rng.choice(SOS_TEXTS)}"
                out.append(Reading(1, at_ms, 1.0, Priority.P0, lat, lon, text))

        def emit_battery(at_ms: int, out: list[Reading]) -> None:
            nonlocal battery_pct
            battery_pct -= drain_pct_h * battery_ms / HOUR_MS
            if battery_pct < 10.0:
                battery_pct = 100.0  # responders carry spare batteries and swap them
            out.append(Reading(2, at_ms, float(round(battery_pct))))

        start = self.start_ms + rng.randrange(position_ms)
        self._channels = [
            _Channel(position_ms, start, emit_position),
            _Channel(battery_ms, start, emit_battery),
        ]

    def _setup_comms_vehicle(self) -> None:
        rng, storm = self._rng, self.storm
        status_ms = MINUTE_MS
        clear_sky_db = rng.uniform(10.0, 13.0)
        fuel_pct = rng.uniform(60.0, 100.0)
        photo_count = 0
        self._catalogue = (
            Metric(
                0,
                "link_status",
                kind=MetricKind.STATUS,
                unit="dB",
                station_id=self.name,
                name="应急通信车卫星链路 Es/N0",
                priority=Priority.P1,
            ),
            Metric(
                1,
                "photo",
                kind=MetricKind.BULK,
                unit="B",
                station_id=self.name,
                name="现场照片分片",
                priority=Priority.P3,
            ),
        )
        self.interval_s = status_ms / 1000

        def emit_status(at_ms: int, out: list[Reading]) -> None:
            nonlocal fuel_pct
            # Ku-band rain fade (ITU-R P.838 at 12 GHz: k = 0.0239, alpha = 1.18) over about 3 km of
            # rain on the slant path: a few dB in steady rain, the link lost in the cell's core.
            fade_db = 0.0239 * storm.intensity(at_ms) ** 1.18 * 3.0
            snr_db = round(max(-5.0, clear_sky_db - fade_db + rng.gauss(0.0, 0.3)), 1)
            fuel_pct = max(0.0, fuel_pct - 4.0 * status_ms / HOUR_MS)  # the generator burns about 4% an hour
            state = "正常" if snr_db >= 6.0 else ("雨衰" if snr_db >= 2.0 else "失锁")
            text = f"卫星链路{state}，Es/N0 {snr_db:.1f} dB，油机油量{fuel_pct:.0f}%"
            out.append(Reading(0, at_ms, snr_db, Priority.P1, self.lat, self.lon, text, key="link_status"))

        def emit_photo(at_ms: int, out: list[Reading]) -> None:
            nonlocal photo_count
            if rng.random() >= 1 / 20:  # a photo of the scene about every twenty minutes
                return
            photo_count += 1
            size = rng.randrange(60_000, 240_000)
            body = b"\xff\xd8\xff\xe0" + rng.randbytes(size - 6) + b"\xff\xd9"  # JPEG markers around noise
            parts = -(-size // PHOTO_CHUNK_BYTES)
            image = f"IMG_{self.name}_{photo_count:04d}.jpg"
            for part in range(parts):
                chunk = body[part * PHOTO_CHUNK_BYTES : (part + 1) * PHOTO_CHUNK_BYTES]
                out.append(
                    Reading(
                        1, at_ms, float(size), Priority.P3, text=f"{image} {part + 1}/{parts}", blob=chunk, key=image
                    )
                )

        start = self.start_ms + rng.randrange(status_ms)
        self._channels = [_Channel(status_ms, start, emit_status), _Channel(status_ms, start, emit_photo)]


def _next_due(channel: _Channel) -> int:
    return channel.next_ms


def _fleet_pattern() -> list[TerminalKind]:
    """FLEET_MIX as an interleaved cycle (smooth weighted round-robin), so small fleets are mixed too."""
    total = sum(weight for _, weight in FLEET_MIX)
    credit = dict.fromkeys((kind for kind, _ in FLEET_MIX), 0)
    pattern = []
    for _ in range(total):
        for kind, weight in FLEET_MIX:
            credit[kind] += weight
        chosen = max(credit, key=credit.__getitem__)
        credit[chosen] -= total
        pattern.append(chosen)
    return pattern


def fleet(
    n: int, *, region: str = "410100", seed: int = 0, start_ms: int, profile: str | None = None
) -> list[SimulatedTerminal]:
    """``n`` terminals of mixed kinds spread over the counties of a city, named like ``zz-rain-003``.

    ``profile`` puts every terminal on that link profile (lan, cellular, satellite) instead of
    its kind's usual one.
    """
    if n < 0:
        raise ValueError(f"fleet size must not be negative, got {n}")
    places = default_places()
    counties = [c for c in default_table().children(region) if level_of(c) is Level.COUNTY and places.point_of(c)]
    if not counties:
        raise ValueError(f"region {region!r} has no county-level divisions with a known place")
    hilly = [c for c in counties if c in HILLY_COUNTIES] or counties
    prefix = CITY_PREFIX.get(region, region)
    pattern = _fleet_pattern()
    numbers = dict.fromkeys(TerminalKind, 0)
    terminals = []
    for i in range(n):
        kind = pattern[i % len(pattern)]
        numbers[kind] += 1
        number = numbers[kind]
        # Each kind starts at its own county, so the first rain gauge and river station differ.
        offset = list(TerminalKind).index(kind) * 5
        county = (
            hilly[number % len(hilly)]
            if kind is TerminalKind.LANDSLIDE_MONITOR
            else counties[(number + offset) % len(counties)]
        )
        terminal = SimulatedTerminal(
            kind, f"{prefix}-{kind.value}-{number:03d}", county, seed * 1_000_003 + i, start_ms
        )
        if profile is not None:
            terminal.link = profile
        terminals.append(terminal)
    return terminals


def burst(
    terminals: Sequence[SimulatedTerminal], readings_per_terminal: int, *, template_size: int = 256
) -> list[list[Reading]]:
    """Many readings quickly, for benchmarks: per terminal, its first ``template_size`` readings
    replayed later and later in time until there are ``readings_per_terminal``.

    The terminals themselves are not advanced (their twins are). Timestamps stay non-decreasing
    per metric; values repeat each cycle (a cumulative rainfall starts over, an alarm recurs),
    which a benchmark does not mind and a realism test should not use.
    """
    out: list[list[Reading]] = []
    for terminal in terminals:
        if readings_per_terminal <= 0:
            out.append([])
            continue
        twin = terminal.copy()
        wanted = min(template_size, readings_per_terminal) + 1
        sample: list[Reading] = []
        until_ms = terminal.start_ms
        while len(sample) < wanted:
            until_ms += HOUR_MS
            sample += twin.advance(until_ms)
        template = sample[: wanted - 1]
        cycle_ms = max(1, sample[wanted - 1].at_ms - template[0].at_ms)
        readings = list(template[:readings_per_terminal])
        cycle = 1
        while len(readings) < readings_per_terminal:
            shift = cycle * cycle_ms
            readings += [
                Reading(r.metric, r.at_ms + shift, r.value, r.priority, r.lat, r.lon, r.text, r.blob, r.key)
                for r in template[: readings_per_terminal - len(readings)]
            ]
            cycle += 1
        out.append(readings)
    return out


# -- high-rate sampling -------------------------------------------------------------------------------

#: The high-rate metric a sampling terminal adds to its catalogue, per kind: what it samples and its unit.
SAMPLED_METRICS: dict[TerminalKind, tuple[str, str, str]] = {
    TerminalKind.LANDSLIDE_MONITOR: ("vibration", "mm/s", "微震监测 振动速度"),
    TerminalKind.RIVER_STATION: ("level_radar", "m", "雷达水位计 高频水位"),
    TerminalKind.RAIN_GAUGE: ("rain_intensity", "mm/h", "雨强传感器"),
}
_SAMPLED_DEFAULT = ("accel", "m/s2", "振动加速度")


class SampledSensor:
    """One sensor of a terminal sampled at a high rate (a landslide monitor's micro-seismic
    geophone, a river station's radar gauge), delivered in blocks of numpy arrays for
    ``EdgeAgent.submit_series``: the agent stores each block as one outbox row, never one per point.

    Sans-IO like the terminals: the caller says where each block starts. Values are a slow swell
    with the storm, a few-hertz oscillation and Gaussian noise, quantised like the instrument.
    """

    def __init__(self, terminal: SimulatedTerminal, *, rate_hz: float, seed: int = 0) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.terminal = terminal
        self.rate_hz = rate_hz
        code, unit, name = SAMPLED_METRICS.get(terminal.kind, _SAMPLED_DEFAULT)
        self.metric = Metric(
            len(terminal.catalogue()),
            code,
            unit=unit,
            station_id=terminal.station_id,
            name=f"{terminal.name} {name}",
            priority=Priority.P2,
        )
        self._rng = np.random.default_rng(seed * 7919 + zlib.crc32(terminal.name.encode()))
        self._period_ms = 1000.0 / rate_hz

    def catalogue(self) -> tuple[Metric, ...]:
        """The terminal's catalogue with the sampled metric added at the end."""
        return (*self.terminal.catalogue(), self.metric)

    def block(self, start_ms: int, points: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """``points`` samples from ``start_ms`` on: their times (ms) and values."""
        if points < 1:
            raise ValueError(f"a block holds at least one point, got {points}")
        offsets = np.arange(points, dtype=np.float64) * self._period_ms
        at_ms = start_ms + np.floor(offsets).astype(np.int64)
        swell = 1.0 + 0.5 * math.sin(start_ms / HOUR_MS)
        seconds = (at_ms - self.terminal.start_ms) / 1000.0
        values = swell * np.sin(2 * math.pi * 3.0 * seconds) + self._rng.normal(0.0, 0.05, points)
        return at_ms, np.round(values, 2)

    def next_start(self, start_ms: int, points: int) -> int:
        """Where the block after one of ``points`` samples from ``start_ms`` starts."""
        return start_ms + math.floor(points * self._period_ms)
