"""Station summaries sum up a batch of observations as the envelopes themselves say, field by field."""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry
from yiwang.v1 import envelope_pb2 as pb

from gateway.log import StoredBatch
from gateway.routing import SUMMARY_ATTRIBUTE
from gateway.selection import FLAG_RELAYED, record_of
from gateway.service import GatewayService, Peer
from gateway.summaries import StationSummaries
from gateway.wire import encode_deliveries, hop_suffix
from tests import factories

LONG_AGENCY = "provincial-hydrology-and-water-resources"  # longer than a selection record holds
AT = 1_790_000_000


class _Node:
    node_id = "jinshui-county"


def _observation(n: int, station: str, agency: str = "water", **fields: Any) -> pb.Envelope:
    env = factories.observation(envelope_id=f"o-{n}", agency=agency, value=float(n % 7), sent_at=AT + n)
    env.observation.station_id = station
    if "severity" in fields:
        env.severity = fields["severity"]
    if "name" in fields:
        env.observation.station_name = fields["name"]
    if "observed_at" in fields:
        env.observed_at.FromSeconds(fields["observed_at"])
    if "region" in fields:
        env.region = fields["region"]
    if "extra" in fields:  # a second measurement of another metric, with its own time
        extra = env.observation.measurements.add(metric="w", value=fields["extra"], unit="m3/s")
        extra.at.FromSeconds(AT - n)
    return env


def _batch(envelopes: list[pb.Envelope], flags: list[int]) -> StoredBatch:
    data, ends = encode_deliveries(
        1, [env.SerializeToString() for env in envelopes], hop_suffix("jinshui-county", AT * 10**9), AT * 10**9
    )
    records = b"".join(record_of(env, flag) for env, flag in zip(envelopes, flags, strict=True))
    return StoredBatch(1, AT * 10**9, records, ends, data, tuple(env.id for env in envelopes), b"")


def _expected(envelopes: list[pb.Envelope]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each station's figures, computed envelope by envelope."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for env in envelopes:
        when = env.observed_at if env.HasField("observed_at") else env.sent_at
        observed = when.ToNanoseconds()
        station = out.setdefault(
            (env.origin.agency, env.observation.station_id),
            {"first": observed, "last": observed, "severity": 0, "metrics": {}, "latest": env},
        )
        station["first"] = min(station["first"], observed)
        if observed >= station["last"]:
            station["last"], station["latest"] = observed, env
        station["severity"] = max(station["severity"], env.severity)
        for m in env.observation.measurements:
            at = m.at.ToNanoseconds() if m.HasField("at") else observed
            figures = station["metrics"].setdefault(m.metric, [])
            figures.append((m.value, at))
    return out


def test_a_batch_is_summed_up_as_its_envelopes_say() -> None:
    envelopes = [
        _observation(0, "A", name="Huayuankou"),
        _observation(1, "A", severity=pb.ORANGE),
        _observation(2, "B", extra=3.5, region="410102"),
        _observation(3, "A", agency=LONG_AGENCY),
        _observation(4, "B", observed_at=AT - 100, extra=1.25),
        _observation(5, "A", name="Huayuankou station", severity=pb.YELLOW),
        _observation(6, "C", agency="emergency"),
        _observation(7, "C"),  # relayed: summed up by the node below
        _observation(8, "B"),  # a summary itself
    ]
    envelopes[8].attributes[SUMMARY_ATTRIBUTE] = "PT15M"
    flags = [0] * len(envelopes)
    flags[7] = FLAG_RELAYED
    summaries = StationSummaries(
        cast(GatewayService, _Node()), Peer(None, None), period_s=900, registry=CollectorRegistry()
    )
    summaries._take(_batch(envelopes, flags), 0)

    expected = _expected(envelopes[:7])
    assert set(summaries._stations) == set(expected)
    for key, station in summaries._stations.items():
        want = expected[key]
        latest = want["latest"]
        assert (station.first_ns, station.last_ns, station.severity) == (want["first"], want["last"], want["severity"])
        assert (station.region, station.name) == (latest.region, latest.observation.station_name)
        assert set(station.metrics) == set(want["metrics"])
        for name, metric in station.metrics.items():
            points = want["metrics"][name]
            values = [value for value, _ in points]
            assert (metric.count, metric.low, metric.high, metric.total) == (
                len(points),
                min(values),
                max(values),
                sum(values),
            )
            latest_at = max(at for _, at in points)
            assert (metric.last, metric.last_ns) == ([v for v, at in points if at == latest_at][-1], latest_at)
    assert summaries._stations[LONG_AGENCY, "A"].metrics["39"].count == 1  # its agency from the envelope
