"""Reading an observation's measurements, whatever form they came in.

An ``Observation`` carries single ``measurements`` (one message each, with its own time and
quality) and packed ``series`` (one metric's sampled block: a start time, time deltas, values and
qualities as packed arrays). Consumers that want every point alike iterate ``measurements(obs)``,
which yields the singles and then each series' points, lazily; consumers that sum points up read
``series_arrays`` instead and work on whole arrays, so a block of thousands of points costs no
Python object per point.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from yiwang.v1 import envelope_pb2 as pb

_NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Measured:
    """One point of an observation: a single measurement or one point of a series."""

    metric: str
    unit: str
    value: float
    quality: int  # a pb.Quality value
    at_ns: int | None  # the point's own time; None for a single measurement without one
    flag: str = ""  # the source's own quality flag (single measurements only)


@dataclass(frozen=True, slots=True)
class SeriesArrays:
    """A series as arrays: times (ms since the epoch), values and qualities, one entry per point."""

    metric: str
    unit: str
    at_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    quality: npt.NDArray[np.int32]


def series_arrays(series: pb.Series) -> SeriesArrays:
    """The points of ``series`` as arrays (built at C speed from the packed fields).

    Expects a valid series (``gateway.validation`` checks that lengths agree).
    """
    values = np.array(series.values, dtype=np.float64)
    deltas = np.array(series.at_delta_ms, dtype=np.int64)
    at_ms = np.cumsum(deltas, dtype=np.int64) + np.int64(series.start_ms) if len(deltas) else deltas
    if len(series.quality):
        quality = np.array(series.quality, dtype=np.int32)
    else:
        quality = np.full(len(values), pb.GOOD, dtype=np.int32)
    return SeriesArrays(series.metric, series.unit, at_ms, values, quality)


def point_count(obs: pb.Observation) -> int:
    """How many points ``obs`` holds in both forms."""
    return len(obs.measurements) + sum(len(series.values) for series in obs.series)


def single_measurements(obs: pb.Observation) -> Iterator[Measured]:
    """The single measurements of ``obs`` only (for consumers that read its series as arrays)."""
    for m in obs.measurements:
        at_ns = m.at.seconds * 1_000_000_000 + m.at.nanos if m.HasField("at") else None
        yield Measured(m.metric, m.unit, m.value, m.quality, at_ns, m.flag)


def measurements(obs: pb.Observation) -> Iterator[Measured]:
    """Every point of ``obs``: its single measurements in order, then each series' points in order."""
    yield from single_measurements(obs)
    for series in obs.series:
        arrays = series_arrays(series)
        metric, unit = arrays.metric, arrays.unit
        for at_ms, value, quality in zip(
            arrays.at_ms.tolist(), arrays.values.tolist(), arrays.quality.tolist(), strict=True
        ):
            yield Measured(metric, unit, value, quality, at_ms * _NS_PER_MS)
