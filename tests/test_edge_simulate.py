"""The simulated terminals: reproducible, physically plausible, and raising alarms once per crossing."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict

import pytest

from edge_agent.model import MetricKind, Priority, Reading
from edge_agent.simulate import (
    HOUR_MS,
    ZHENGZHOU_BOUNDS,
    SimulatedTerminal,
    TerminalKind,
    ThresholdWatch,
    burst,
    fleet,
    metres_between,
)
from gateway.regions import Level, default_table, level_of

START_MS = 1_626_739_200_000  # 2021-07-20 08:00 in Zhengzhou (00:00 UTC)
DAY_MS = 24 * HOUR_MS


def day_of(terminal: SimulatedTerminal) -> list[Reading]:
    return terminal.advance(START_MS + DAY_MS)


def by_metric(readings: list[Reading], metric: int) -> list[Reading]:
    return [r for r in readings if r.metric == metric]


@pytest.fixture(scope="module")
def day() -> list[tuple[SimulatedTerminal, list[Reading]]]:
    """A day of a 40-terminal Zhengzhou fleet, every kind several times."""
    return [(t, day_of(t)) for t in fleet(40, seed=7, start_ms=START_MS)]


def of_kind(
    day: list[tuple[SimulatedTerminal, list[Reading]]], kind: TerminalKind
) -> list[tuple[SimulatedTerminal, list[Reading]]]:
    found = [(t, r) for t, r in day if t.kind is kind]
    assert found, kind
    return found


def test_same_seed_same_readings() -> None:
    first = [day_of(t) for t in fleet(14, seed=3, start_ms=START_MS)]
    again = [day_of(t) for t in fleet(14, seed=3, start_ms=START_MS)]
    other = [day_of(t) for t in fleet(14, seed=4, start_ms=START_MS)]
    assert first == again
    assert first != other


def test_slicing_time_does_not_change_the_readings() -> None:
    for kind in TerminalKind:
        whole = SimulatedTerminal(kind, f"zz-{kind.value}-001", "410105", 11, START_MS)
        sliced = SimulatedTerminal(kind, f"zz-{kind.value}-001", "410105", 11, START_MS)
        pieces: list[Reading] = []
        for minute in range(0, 6 * 60 + 1, 7):
            pieces += sliced.advance(START_MS + minute * 60_000)
        pieces += sliced.advance(START_MS + 6 * HOUR_MS)
        assert whole.advance(START_MS + 6 * HOUR_MS) == pieces, kind


def test_accelerated_time_gives_an_hour_of_readings_at_once() -> None:
    gauge = SimulatedTerminal(TerminalKind.RAIN_GAUGE, "zz-rain-001", "410105", 1, START_MS)
    hour = gauge.advance(START_MS + HOUR_MS)
    assert len(by_metric(hour, 0)) == 13  # 08:00 through 09:00 at five minutes, both ends included
    assert gauge.advance(START_MS + HOUR_MS) == []  # nothing is due twice
    assert len(by_metric(gauge.advance(START_MS + 2 * HOUR_MS), 0)) == 12
    truck = SimulatedTerminal(TerminalKind.RESCUE_TRUCK, "zz-truck-001", "410105", 1, START_MS)
    assert len(truck.advance(START_MS + HOUR_MS - 1)) == 240  # every fifteen seconds


def test_timestamps_are_the_terminals_own_and_monotone_per_metric(
    day: list[tuple[SimulatedTerminal, list[Reading]]],
) -> None:
    for terminal, readings in day:
        assert readings, terminal
        last: dict[int, int] = {}
        for reading in readings:
            assert START_MS <= reading.at_ms <= START_MS + DAY_MS
            assert reading.at_ms >= last.get(reading.metric, 0), terminal
            last[reading.metric] = reading.at_ms
        assert [r.at_ms for r in readings] == sorted(r.at_ms for r in readings)


def test_catalogue_indexes_match_the_readings(day: list[tuple[SimulatedTerminal, list[Reading]]]) -> None:
    for terminal, readings in day:
        catalogue = terminal.catalogue()
        assert [m.index for m in catalogue] == list(range(len(catalogue)))
        assert all(m.code and m.station_id and m.name for m in catalogue)
        for reading in readings:
            metric = catalogue[reading.metric]
            assert reading.priority is metric.priority, (terminal, metric.code)
            if metric.kind is MetricKind.POSITION:
                assert reading.lat is not None
                assert reading.lon is not None
                assert reading.key == "position"
            if metric.kind is MetricKind.ALARM:
                assert reading.priority is Priority.P0
                assert reading.text
            if metric.kind is MetricKind.BULK:
                assert reading.blob
                assert reading.priority is Priority.P3
        birth = terminal.birth(session=5)
        assert (birth.terminal, birth.session, birth.catalogue) == (terminal.name, 5, catalogue)
        assert birth.link == terminal.link
        assert birth.interval_s > 0
        assert terminal.birth(session=5, link="lan").link == "lan"


def test_rain_gauges_measure_a_zhengzhou_rainstorm(day: list[tuple[SimulatedTerminal, list[Reading]]]) -> None:
    peak_hours = []
    for terminal, readings in of_kind(day, TerminalKind.RAIN_GAUGE):
        five_minutes = [r.value for r in by_metric(readings, 0)]
        totals = [r.value for r in by_metric(readings, 1)]
        assert all(0 <= v <= 25 and (v * 2).is_integer() for v in five_minutes), terminal  # 0.5 mm tips
        assert totals == sorted(totals)
        assert totals[-1] == pytest.approx(sum(five_minutes))
        assert 100 <= totals[-1] <= 700, terminal  # 20 July 2021: 624 mm in 24 h at the city station
        hourly = [sum(five_minutes[i : i + 12]) for i in range(len(five_minutes) - 11)]
        assert max(hourly) <= 230
        peak_hours.append(max(hourly))
    assert max(peak_hours) >= 100  # the cell's core passes over at least one gauge


def test_rivers_pass_flood_stage_within_hours_and_alarm_once(
    day: list[tuple[SimulatedTerminal, list[Reading]]],
) -> None:
    for terminal, readings in of_kind(day, TerminalKind.RIVER_STATION):
        flood_stage = terminal.catalogue()[0].threshold
        assert flood_stage is not None
        levels = by_metric(readings, 0)
        alarms = by_metric(readings, 1)
        assert len(alarms) == 1, terminal
        first_over = next(r for r in levels if r.value >= flood_stage)
        assert alarms[0].at_ms == first_over.at_ms
        assert alarms[0].value == first_over.value
        assert alarms[0].at_ms - START_MS <= 6 * HOUR_MS
        assert "超警戒水位" in alarms[0].text
        values = [r.value for r in levels]
        assert max(values) - min(values) < 6.0
        for before, after in itertools.pairwise(levels):
            rate_m_h = abs(after.value - before.value) / ((after.at_ms - before.at_ms) / HOUR_MS)
            assert rate_m_h <= 3.0, terminal


def test_landslide_monitors_creep_with_the_rain_and_alarm_once(
    day: list[tuple[SimulatedTerminal, list[Reading]]],
) -> None:
    for terminal, readings in of_kind(day, TerminalKind.LANDSLIDE_MONITOR):
        assert terminal.region in {"410181", "410182", "410183", "410185"}  # the loess hills
        threshold = terminal.catalogue()[0].threshold
        assert threshold is not None
        displacement = [r.value for r in by_metric(readings, 0)]
        cracks = [r.value for r in by_metric(readings, 1)]
        assert min(displacement) >= -5
        assert max(displacement) <= 120
        assert min(cracks) > 0
        assert max(cracks) <= 60
        assert displacement[-1] > displacement[0] + threshold  # it moved, and mostly with the storm
        alarms = by_metric(readings, 2)
        assert len(alarms) == 1, terminal
        assert alarms[0].value >= threshold
        assert alarms[0].at_ms - START_MS <= 8 * HOUR_MS


@pytest.mark.parametrize(
    ("kind", "fastest_mps"),
    [(TerminalKind.RESCUE_BOAT, 6.0), (TerminalKind.RESCUE_TRUCK, 20.0), (TerminalKind.HANDSET, 2.5)],
)
def test_movers_stay_in_zhengzhou_at_plausible_speeds(
    day: list[tuple[SimulatedTerminal, list[Reading]]], kind: TerminalKind, fastest_mps: float
) -> None:
    south, west, north, east = ZHENGZHOU_BOUNDS
    for terminal, readings in of_kind(day, kind):
        positions = by_metric(readings, 0)
        travelled = 0.0
        for before, after in itertools.pairwise(positions):
            assert before.lat is not None
            assert before.lon is not None
            assert after.lat is not None
            assert after.lon is not None
            metres = metres_between(before.lat, before.lon, after.lat, after.lon)
            travelled += metres
            # GNSS error of a few metres is allowed on top of the fastest plausible speed.
            assert metres <= fastest_mps * (after.at_ms - before.at_ms) / 1000 + 25, terminal
        assert all(south < r.lat < north and west < r.lon < east for r in positions if r.lat and r.lon)
        assert all(0 <= r.value <= fastest_mps for r in positions)
        assert travelled > 1000, terminal  # they do move


def test_handsets_send_a_rare_sos(day: list[tuple[SimulatedTerminal, list[Reading]]]) -> None:
    handsets = of_kind(day, TerminalKind.HANDSET)
    sos = [r for _, readings in handsets for r in by_metric(readings, 1)]
    assert 1 <= len(sos) <= 4 * len(handsets)  # about one a day each
    assert all("SOS" in r.text and r.lat is not None for r in sos)
    for _, readings in handsets:
        assert all(5 <= r.value <= 100 for r in by_metric(readings, 2))  # battery, swapped when low


def test_the_comms_vehicle_reports_rain_fade_and_sends_photos_in_chunks(
    day: list[tuple[SimulatedTerminal, list[Reading]]],
) -> None:
    for terminal, readings in of_kind(day, TerminalKind.COMMS_VEHICLE):
        assert terminal.link == "satellite"
        status = by_metric(readings, 0)
        assert all(-5 <= r.value <= 15 and "卫星链路" in r.text for r in status)
        assert min(r.value for r in status) < 6 < max(r.value for r in status)  # the cell fades the link
        chunks = by_metric(readings, 1)
        images: dict[str, list[Reading]] = defaultdict(list)
        for chunk in chunks:
            images[chunk.key].append(chunk)
        assert 20 <= len(images) <= 120  # about three an hour
        for parts in images.values():
            photo = b"".join(p.blob for p in parts)
            assert len(photo) == parts[0].value
            assert photo.startswith(b"\xff\xd8")
            assert photo.endswith(b"\xff\xd9")


def test_threshold_watch_alarms_once_per_crossing() -> None:
    watch = ThresholdWatch(10.0, hysteresis=0.5)
    series = [9.0, 10.0, 10.2, 9.8, 10.1, 9.4, 9.6, 10.0, 11.0]  # 9.8 is noise, 9.4 a real fall
    assert [watch.crossed(v) for v in series] == [False, True, False, False, False, False, False, True, False]


def test_fleet_mix_names_and_regions() -> None:
    terminals = fleet(40, seed=1, start_ms=START_MS)
    kinds = Counter(t.kind for t in terminals)
    assert kinds == {
        TerminalKind.RAIN_GAUGE: 10,
        TerminalKind.HANDSET: 10,
        TerminalKind.RIVER_STATION: 6,
        TerminalKind.LANDSLIDE_MONITOR: 4,
        TerminalKind.RESCUE_BOAT: 4,
        TerminalKind.RESCUE_TRUCK: 4,
        TerminalKind.COMMS_VEHICLE: 2,
    }
    assert len({t.name for t in terminals}) == 40
    assert "zz-rain-003" in {t.name for t in terminals}
    assert all(t.name.startswith(f"zz-{t.kind.value}-") for t in terminals)
    assert len({t.kind for t in fleet(9, start_ms=START_MS)}) == 7  # even a small fleet is mixed
    table = default_table()
    assert all(t.region.startswith("4101") and t.region in table for t in terminals)
    assert all(level_of(t.region) is Level.COUNTY for t in terminals)
    assert len({t.region for t in terminals}) >= 10
    assert {t.link for t in fleet(10, start_ms=START_MS, profile="satellite")} == {"satellite"}


def test_fleet_refuses_a_region_without_counties() -> None:
    with pytest.raises(ValueError, match="999900"):
        fleet(3, region="999900", start_ms=START_MS)
    with pytest.raises(ValueError, match="410100"):
        SimulatedTerminal(TerminalKind.RAIN_GAUGE, "zz-rain-001", "410100", 0, START_MS)


def test_burst_gives_the_readings_asked_for_without_advancing_the_terminals() -> None:
    terminals = fleet(14, seed=2, start_ms=START_MS)
    batches = burst(terminals, 1000)
    assert [len(b) for b in batches] == [1000] * 14
    for terminal, readings in zip(terminals, batches, strict=True):
        assert readings[:50] == terminal.copy().advance(START_MS + DAY_MS)[:50]
        last: dict[int, int] = {}
        for reading in readings:
            assert reading.at_ms >= last.get(reading.metric, 0)
            last[reading.metric] = reading.at_ms
    assert batches[0][:5] == terminals[0].advance(START_MS + DAY_MS)[:5]  # the originals are untouched
    assert burst(terminals[:1], 0) == [[]]
