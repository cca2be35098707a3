"""What a field terminal says, in the terms the agent, the link and the gateway share.

A terminal announces a catalogue of metrics in its birth message; each reading then names its
metric by index in that catalogue, carries the source's own timestamp (never rewritten), and is
numbered within the terminal's session (a counter persisted on the terminal and raised at every
start) so the gateway can store each reading exactly once and ask for the ones it misses.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


class Priority(enum.IntEnum):
    """Classes with their own policy when the outbox or the link budget is full."""

    P0 = 0  # SOS, alarms, threshold crossings: never dropped, sent first
    P1 = 1  # positions and status: only the latest per key is kept
    P2 = 2  # routine telemetry: the oldest past its time-to-live is dropped
    P3 = 3  # bulk: the newest is dropped


class MetricKind(enum.StrEnum):
    OBSERVATION = "observation"  # a station reading: value in the metric's unit
    POSITION = "position"  # where the terminal is: lat/lon, value = speed in m/s
    ALARM = "alarm"  # an alarm or SOS: value = the reading that crossed, text = what happened
    STATUS = "status"  # a state of the terminal or a sensor: text
    BULK = "bulk"  # a chunk of a larger object (a photo, a log): blob


@dataclass(frozen=True, slots=True)
class Metric:
    """One entry of a terminal's catalogue."""

    index: int
    code: str  # e.g. "39" (SL 651 water level), "rain_5min", "displacement", "position", "sos"
    kind: MetricKind = MetricKind.OBSERVATION
    unit: str = ""
    station_id: str = ""  # the station or device it belongs to (a terminal may serve several)
    name: str = ""
    priority: Priority = Priority.P2  # the class its readings take unless a reading says otherwise
    threshold: float | None = None  # a value at or above it is a threshold crossing (alarm, P0)


@dataclass(frozen=True, slots=True)
class Reading:
    """One value a terminal measured or one event it raised, as it arrives from the source."""

    metric: int  # index into the terminal's catalogue
    at_ms: int  # the source's timestamp, milliseconds since the epoch (UTC)
    value: float = 0.0
    priority: Priority = Priority.P2
    lat: float | None = None  # positions, and alarms with a place
    lon: float | None = None
    text: str = ""  # alarm or status text
    blob: bytes = b""  # bulk payload
    key: str = ""  # P1: readings with the same key supersede each other (default: the metric)


@dataclass(frozen=True, slots=True)
class Sequenced:
    """A reading with the place the outbox gave it: its session and its number in that session."""

    session: int
    seq: int
    reading: Reading


class DropReason(enum.StrEnum):
    SUPERSEDED = "superseded"  # P1: a newer reading of the same key replaced it
    EXPIRED = "expired"  # P2: older than its time-to-live while it could not be sent
    OUTBOX_FULL = "outbox_full"  # the outbox reached its byte bound
    BUDGET = "budget"  # the link's byte budget was spent


@dataclass(frozen=True, slots=True)
class DropReport:
    """How many readings of a class were dropped and why (reported upstream in batches)."""

    priority: Priority
    reason: DropReason
    count: int


@dataclass(frozen=True, slots=True)
class Birth:
    """What a terminal announces on connect: who it is, what it measures, and its session."""

    terminal: str  # its identity's name part (REGION/AGENCY/edge/NAME is in the topic)
    session: int
    catalogue: tuple[Metric, ...]
    link: str = ""  # the link profile it is on: lan, cellular, satellite
    interval_s: float = 60.0  # how often it reports at least (a heartbeat otherwise): silence beyond is stale
    agent: str = ""  # agent software and version


#: Classes a sampled block (a series) may have: routine telemetry and bulk. P0 and P1 readings
#: stay single, so an alarm is never held inside a block and "latest per key" stays per reading.
SERIES_PRIORITIES = (Priority.P2, Priority.P3)


@dataclass(frozen=True, slots=True)
class Series:
    """A sampled block of one metric: ``len(values)`` readings numbered ``first_seq`` on, point i
    measured at ``at_ms[i]``. The arrays are numpy arrays (int64 and float64), never per-point objects."""

    metric: int
    priority: Priority
    first_seq: int
    at_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.values) - 1


@dataclass(frozen=True, slots=True)
class Chunk:
    """A stored series as the outbox hands it out: its numbers and its wire encoding (``body``,
    a series entry of the batch format), so a batch is built by concatenation."""

    session: int
    first_seq: int
    count: int
    priority: Priority
    metric: int
    body: bytes

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass(frozen=True, slots=True)
class Batch:
    """Readings of one session, packed for one MQTT message."""

    terminal: str
    session: int
    readings: tuple[Sequenced, ...]
    historical: bool = False  # backlog, sent on its own topic so live data is never stuck behind it
    drops: tuple[DropReport, ...] = ()
    series: tuple[Series, ...] = ()  # sampled blocks (batch format version 2)

    @property
    def count(self) -> int:
        """Readings in the batch, single ones and series points together."""
        return len(self.readings) + sum(len(block.values) for block in self.series)


@dataclass(frozen=True, slots=True)
class Ack:
    """The gateway's answer for a session: readings it has durably (ranges, inclusive) and the
    ranges it misses and asks to be sent again."""

    session: int
    stored: tuple[tuple[int, int], ...] = ()
    resend: tuple[tuple[int, int], ...] = ()


class AckState(enum.StrEnum):
    RECEIVED = "received"
    EXECUTED = "executed"
    FAILED = "failed"
    EXPIRED = "expired"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Command:
    """An instruction from the gateway to the terminal; handled once per id, refused past expiry."""

    id: str
    action: str  # set_interval, resend, reboot_sensor, ...
    expires_ms: int
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandReply:
    id: str
    state: AckState
    detail: str = ""
