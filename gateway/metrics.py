"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.log import LogStats


class _LiveState(Collector):
    """Gauges read at scrape time from the log and the open subscriptions."""

    def __init__(self, stats: Callable[[], LogStats], lags: Callable[[], dict[str, int]]) -> None:
        self._stats = stats
        self._lags = lags

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats()
        yield GaugeMetricFamily("yiwang_log_bytes", "Bytes of envelopes retained in the log", value=stats.bytes)
        yield GaugeMetricFamily("yiwang_log_batches", "Batches retained in the log", value=stats.batches)
        yield GaugeMetricFamily("yiwang_log_next_offset", "Offset the next envelope will get", value=stats.next_offset)
        yield GaugeMetricFamily("yiwang_log_oldest_offset", "Oldest retained offset", value=stats.oldest_offset)
        lags = self._lags()
        yield GaugeMetricFamily("yiwang_subscribers", "Open Subscribe streams", value=len(lags))
        lag = GaugeMetricFamily(
            "yiwang_subscriber_lag",
            "Envelopes between a subscriber's position and the head",
            labels=["subscription"],
        )
        for name, value in sorted(lags.items()):
            lag.add_metric([name], value)
        yield lag


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter("yiwang_envelopes_published", "Envelopes appended to the log", registry=r)
        self.duplicates = Counter(
            "yiwang_envelopes_duplicate", "Envelopes already in the log when published", registry=r
        )
        self.rejected = Counter(
            "yiwang_envelopes_rejected",
            "Envelopes refused at the door, by offending field",
            ["reason"],
            registry=r,
        )
        self.delivered = Counter("yiwang_envelopes_delivered", "Envelopes sent to subscribers", registry=r)
        self.commits = Counter("yiwang_log_commit_batches", "Batches written by log commits", registry=r)
        self.auth_failures = Counter(
            "yiwang_authentication_failures", "Calls refused for a missing, revoked or foreign certificate", registry=r
        )
        self.denials = Counter(
            "yiwang_permission_denials",
            "Envelopes and calls the sharing policy refused, by action",
            ["action"],
            registry=r,
        )
        self.subscription_gaps = Counter(
            "yiwang_subscription_gaps",
            "Subscriptions that resumed behind the oldest retained offset (retention removed what they missed)",
            registry=r,
        )

    def watch(self, stats: Callable[[], LogStats], lags: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_LiveState(stats, lags))

    def render(self) -> bytes:
        return generate_latest(self.registry)
