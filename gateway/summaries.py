"""Periodic station summaries: what goes up instead of raw telemetry.

Raw readings stay at the node that receives them; the levels above get, per station and period,
one OBSERVATION envelope that sums up what the node received in that period: for each metric the
count, minimum, maximum, mean and the last value (with its time), and the range of observation
times. Routing sends these up by the rule `station-summaries-up` (the attribute
``yiwang.summary``); threshold crossings go up on their own as they happen.

A node sums up the readings that entered the network through it (its adapters, stations and
terminals), not those that came from another node over a federation link: the node they entered
through sums them up, and a threshold crossing sent up alone is not a station's whole period.

Periods are periods of the node's clock at append time, not of the readings' own times: a backlog
that arrives hours late from a satellite link is summed up in the period it arrived, and its
summary says which observation times it covers. So a period's summary is complete when the period
has passed, and needs no waiting for late readings.

Nothing is kept but the log: the summary follows the log from a durable cursor that moves only once
a period's summaries are in the log, so after a restart the open period is read again. Summaries
have ids fixed by node, station and period, so one written twice (a crash between the append and the
cursor) is stored once.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import CollectorRegistry, Counter
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.log import StoredBatch
from gateway.observations import series_arrays
from gateway.routing import SUMMARY_ATTRIBUTE
from gateway.selection import FLAG_RELAYED, RECORD_FIELDS
from gateway.service import GatewayService, Peer

log = structlog.get_logger("yiwang.summaries")

CURSOR = "summaries"
SYSTEM = "yiwang-summaries"
MAX_STATIONS_PER_BATCH = 500


@dataclass(slots=True)
class _Metric:
    unit: str
    count: int = 0
    low: float = math.inf
    high: float = -math.inf
    total: float = 0.0
    last: float = 0.0
    last_ns: int = 0

    def add(self, value: float, at_ns: int) -> None:
        self.count += 1
        self.low = min(self.low, value)
        self.high = max(self.high, value)
        self.total += value
        if at_ns >= self.last_ns:
            self.last, self.last_ns = value, at_ns

    def add_many(self, values: npt.NDArray[np.float64], at_ns: npt.NDArray[np.int64]) -> None:
        """Adds points at once, as ``add`` would one by one in order (non-finite values skipped)."""
        finite = np.isfinite(values)
        if not finite.all():
            values, at_ns = values[finite], at_ns[finite]
        if not len(values):
            return
        self.count += len(values)
        self.low = min(self.low, float(values.min()))
        self.high = max(self.high, float(values.max()))
        self.total += float(values.sum())
        latest = len(at_ns) - 1 - int(np.argmax(at_ns[::-1]))  # the last of the points at the latest time
        if int(at_ns[latest]) >= self.last_ns:
            self.last, self.last_ns = float(values[latest]), int(at_ns[latest])


@dataclass(slots=True)
class _Station:
    region: str
    origin_region: str
    severity: int = 0
    first_ns: int = 0
    last_ns: int = 0
    point: tuple[float, float] | None = None
    name: str = ""
    station_type: str = ""
    metrics: dict[str, _Metric] = field(default_factory=dict)


def iso_period(seconds: float) -> str:
    """An ISO 8601 duration for a period (PT15M, PT1H, PT90S)."""
    whole = round(seconds)
    if whole % 3600 == 0:
        return f"PT{whole // 3600}H"
    if whole % 60 == 0:
        return f"PT{whole // 60}M"
    return f"PT{whole}S"


@dataclass(slots=True)
class _Pending:
    """What a batch of observations leaves to be done once for the batch (``_flush``)."""

    # by id(station) and metric name: the metric, and its points' values and times
    points: dict[tuple[int, str], tuple[_Metric, list[float], list[int]]] = field(default_factory=dict)
    latest: dict[int, tuple[_Station, pb.Envelope]] = field(default_factory=dict)  # by id(station)


def _flush(pending: _Pending) -> None:
    """Adds the points gathered per metric, in the order they were gathered, and takes each
    station's region and place from its latest observation."""
    for metric, values, at_ns in pending.points.values():
        metric.add_many(np.array(values, dtype=np.float64), np.array(at_ns, dtype=np.int64))
    for station, env in pending.latest.values():
        station.region = env.region
        geometry = env.geometry
        if geometry.HasField("point"):
            point = geometry.point
            station.point = (point.lat, point.lon)
        obs = env.observation
        if name := obs.station_name:
            station.name = name
        if station_type := obs.station_type:
            station.station_type = station_type


def _agencies_and_severities(records: bytes, chosen: list[int]) -> tuple[list[str], list[int]]:
    """The origin agency and the severity of the chosen entries, read from their selection records
    for the whole batch. An agency that fills the record's field may have been cut short there: it
    is "" (the caller reads the envelope's)."""
    table = np.frombuffer(records, dtype=RECORD_FIELDS)[chosen]
    distinct, which = np.unique(table["agency"], return_inverse=True)
    names = [raw.decode() if len(raw) < RECORD_FIELDS["agency"].itemsize else "" for raw in distinct.tolist()]
    return [names[i] for i in which.tolist()], table["severity"].tolist()


class StationSummaries:
    """Follows the node's log for raw observations and appends a summary per station and period."""

    def __init__(self, service: GatewayService, peer: Peer, *, period_s: float, registry: CollectorRegistry) -> None:
        if period_s <= 0:
            raise ValueError("the summary period must be positive")
        self.service = service
        self.peer = peer
        self.period_ns = int(period_s * 1e9)
        self.period = iso_period(period_s)
        self.written = Counter("yiwang_summaries", "Station summaries appended to the log", registry=registry)
        self._window = -1  # the period being summed up (append time // period)
        self._stations: dict[tuple[str, str], _Station] = {}
        self._position = 0  # where the open period starts in the log (the cursor to save when it closes)

    async def run(self) -> None:
        """Follows the log until cancelled, closing each period once it has passed."""
        log_ = self.service.log
        position = await log_.load_position(CURSOR) or log_.oldest_offset
        self._position = position
        while not log_.closed:
            while position < log_.next_offset:
                for stored in await log_.read(position, 1000):
                    window = stored.appended_ns // self.period_ns
                    if window != self._window:
                        await self._close(stored.first_offset)
                        self._window = window
                    self._take(stored, stored.index_at(position))
                    position = stored.next_offset
            now_window = time.time_ns() // self.period_ns
            if self._window >= 0 and now_window > self._window:
                await self._close(position)
                self._window = now_window
            wait = self.period_ns - time.time_ns() % self.period_ns
            with contextlib.suppress(TimeoutError):
                await log_.wait_beyond(position, timeout=wait / 1e9 + 0.05)

    def _take(self, stored: StoredBatch, start: int) -> None:
        """Sums up the raw observations of ``stored`` from ``start`` on (summaries themselves are not
        summed up again). Each observation's single measurements are gathered per metric, to be added
        at once for the whole batch (``_flush``), with the station's latest observation, for its place.

        This runs for every observation the node takes in, and each field read of a parsed envelope
        costs about a tenth of a microsecond: each is read once, what the selection records already
        hold (agency, severity) is taken from them for the whole batch, and what only the latest
        observation of a station decides (its region, place, name and type) is read only for that.
        """
        chosen = stored.of_kind(pb.OBSERVATION, start, without=FLAG_RELAYED)  # the node below summed those up
        if not chosen:
            return
        pending = _Pending()
        latest, gathered = pending.latest, pending.points
        stations = self._stations
        whole = len(chosen) == stored.count - start  # every entry from start on: one slice, no join
        entries = stored.entries(start, stored.count) if whole else stored.entries(0, stored.count, chosen)
        deliveries = gw.DeliveryBatch.FromString(entries).deliveries
        agencies, severities = _agencies_and_severities(stored.records, chosen)
        for agency, severity, delivery in zip(agencies, severities, deliveries, strict=True):
            env = delivery.envelope
            attributes = env.attributes
            if attributes and SUMMARY_ATTRIBUTE in attributes:
                continue
            obs = env.observation
            key = (agency or env.origin.agency, obs.station_id)
            station = stations.get(key)
            if station is None:
                station = stations[key] = _Station(env.region, env.origin.region)
            stamp = env.observed_at if env.HasField("observed_at") else env.sent_at
            observed = stamp.seconds * 1_000_000_000 + stamp.nanos
            if not station.first_ns or observed < station.first_ns:
                station.first_ns = observed
            held = id(station)
            if observed >= station.last_ns:
                station.last_ns = observed
                latest[held] = (station, env)
            if severity > station.severity:  # noqa: PLR1730 - a comparison costs less than a call to max
                station.severity = severity
            measurements = obs.measurements
            # One measurement is the common case: taken by index, without an iterator over them.
            for m in (measurements[0],) if len(measurements) == 1 else measurements:
                metric_name = m.metric
                points = gathered.get((held, metric_name))
                if points is None:
                    metric = station.metrics.get(metric_name)
                    if metric is None:
                        metric = station.metrics[metric_name] = _Metric(m.unit)
                    points = gathered[held, metric_name] = (metric, [], [])
                points[1].append(m.value)
                if m.HasField("at"):
                    at = m.at
                    points[2].append(at.seconds * 1_000_000_000 + at.nanos)
                else:
                    points[2].append(observed)
            sampled = obs.series
            for series in sampled if sampled else ():  # whole arrays at a time: no object per point
                arrays = series_arrays(series)
                metric = station.metrics.get(arrays.metric)
                if metric is None:
                    metric = station.metrics[arrays.metric] = _Metric(arrays.unit)
                metric.add_many(arrays.values, arrays.at_ms * 1_000_000)
        _flush(pending)

    def summaries(self, window: int, now_ns: int) -> list[pb.Envelope]:
        """The summary envelopes of the stations seen in ``window``."""
        out = []
        node = self.service.node_id
        start_ns = window * self.period_ns
        for (agency, station_id), station in sorted(self._stations.items()):
            env = pb.Envelope(
                id=f"summary-{node}-{agency}-{station_id}-{start_ns // 1_000_000_000}"[:256],
                kind=pb.OBSERVATION,
                region=station.region,
                status=pb.ACTUAL,
                severity=station.severity,  # type: ignore[arg-type]
                priority=2,
            )
            env.origin.agency = agency
            env.origin.region = station.origin_region or station.region
            env.origin.node = node
            env.origin.system = SYSTEM
            env.sent_at.FromNanoseconds(now_ns)
            env.observed_at.FromNanoseconds(station.first_ns)
            if station.point is not None:
                env.geometry.point.lat, env.geometry.point.lon = station.point
            env.attributes[SUMMARY_ATTRIBUTE] = self.period
            env.attributes["yiwang.summary.received"] = f"{_iso(start_ns)}/{_iso(start_ns + self.period_ns)}"
            env.attributes["yiwang.summary.observed"] = f"{_iso(station.first_ns)}/{_iso(station.last_ns)}"
            obs = env.observation
            obs.station_id = station_id
            obs.station_name = station.name
            obs.station_type = station.station_type
            obs.interval = self.period
            for name, metric in sorted(station.metrics.items()):
                for suffix, value, unit in (
                    ("count", float(metric.count), "1"),
                    ("min", metric.low, metric.unit),
                    ("max", metric.high, metric.unit),
                    ("avg", metric.total / metric.count, metric.unit),
                ):
                    obs.measurements.add(metric=f"{name}-{suffix}", value=value, unit=unit, quality=pb.GOOD)
                last = obs.measurements.add(metric=f"{name}-last", value=metric.last, unit=metric.unit)
                last.quality = pb.GOOD
                last.at.FromNanoseconds(metric.last_ns)
            out.append(env)
        return out

    async def _close(self, upto: int) -> None:
        """Appends the open period's summaries; the cursor then moves to ``upto``."""
        if self._stations:
            envelopes = self.summaries(self._window, time.time_ns())
            for begin in range(0, len(envelopes), MAX_STATIONS_PER_BATCH):
                request = gw.PublishRequest(envelopes=envelopes[begin : begin + MAX_STATIONS_PER_BATCH])
                reply = await self.service.publish_batch(request.SerializeToString(), self.peer)
                for result in reply.results:
                    if result.outcome == gw.PublishResult.REJECTED:
                        log.error("summary_refused", id=result.id, field=result.field, reason=result.reason)
                    else:
                        self.written.inc()
            self._stations = {}
        if upto != self._position:
            await self.service.log.save_position(CURSOR, upto)
            self._position = upto


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))
