"""The links a terminal sends over, and the byte budget that paid links allow.

A link profile says how large one message may be, how long to gather readings before sending,
which readings still count as live, whether to compress, and how many bytes an hour and a day the
link may carry. ``Budget`` keeps the bytes spent in rolling windows, in the outbox's file, so a
restart (or a crash loop) never gives a paid link a fresh allowance.

P0 readings (SOS, alarms, threshold crossings) may always be sent, even over budget: a warning that
arrives is worth more than the bill. Their bytes are still spent, so the other classes wait longer
afterwards. ``Budget.allows`` takes the most urgent class a message carries to make that decision.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final, Protocol

from edge_agent.model import Priority
from gateway.errors import ConfigError, YiwangError

KIB: Final = 1024
MIB: Final = 1024 * KIB


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """How the agent uses one kind of link; byte budgets of 0 mean unlimited."""

    name: str
    max_message_bytes: int  # one MQTT payload, after compression
    budget_bytes_per_hour: int
    budget_bytes_per_day: int
    batch_interval_s: float  # how long readings are gathered before a batch is sent
    live_window_s: float  # readings put less than this ago go on the live topic, older ones are backlog
    compress: bool

    @property
    def limited(self) -> bool:
        return bool(self.budget_bytes_per_hour or self.budget_bytes_per_day)


LAN: Final = LinkProfile(
    name="lan",
    # A wired or Wi-Fi network to the gateway: large messages amortise the per-message cost, the
    # broker's own limit (MQTT allows 256 MB) is far away, and nobody pays per byte.
    max_message_bytes=1 * MIB,
    budget_bytes_per_hour=0,
    budget_bytes_per_day=0,
    batch_interval_s=0.2,
    live_window_s=30.0,
    compress=False,  # bandwidth is plentiful; the CPU of a small terminal is not
)

CELLULAR: Final = LinkProfile(
    name="cellular",
    # 4G/5G with an IoT SIM. 64 KiB keeps a message to a few dozen radio frames, so a weak signal
    # still gets whole messages through. Typical IoT plans give a few GB a month: 100 MiB a day,
    # with at most 20 MiB in one hour so a backlog flush after an outage cannot spend the day in
    # minutes.
    max_message_bytes=64 * KIB,
    budget_bytes_per_hour=20 * MIB,
    budget_bytes_per_day=100 * MIB,
    batch_interval_s=1.0,
    live_window_s=120.0,
    compress=True,
)

SATELLITE: Final = LinkProfile(
    name="satellite",
    # BeiDou-3 regional short messages carry up to 14,000 bits (1,750 bytes) each, and civil
    # terminals may send about one a minute; Tiantong-1 data is slow (kbit/s) and billed per byte.
    # 1,500 bytes fits one BeiDou-3 message with room for framing, and one IP packet on Tiantong
    # without fragmentation. One message a minute is about 2.5 MB a day; 2 MB a day and 256 KiB
    # an hour keep a paid link within a monthly bill an agency can plan for, while letting an
    # hour's alarms and positions through in a burst.
    max_message_bytes=1500,
    budget_bytes_per_hour=256 * KIB,
    budget_bytes_per_day=2_000_000,
    # Routine telemetry is gathered for a quarter of an hour (the timed-report rhythm of hydrological
    # stations in the flood season), so each paid message is full; P0 goes at once regardless.
    batch_interval_s=900.0,
    live_window_s=3600.0,  # four send intervals: on a slow link an hour-old reading is still news
    compress=True,
)

PROFILES: Final = {profile.name: profile for profile in (LAN, CELLULAR, SATELLITE)}


def profile(name: str) -> LinkProfile:
    """The built-in profile called ``name``."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConfigError(f"unknown link {name!r}; known links: {known}", key="link") from None


class BudgetStateError(YiwangError):
    """The budget's saved state cannot be read; ``name`` is its key in the store."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"budget state {name!r}: {reason}")
        self.name = name
        self.reason = reason


class StateStore(Protocol):
    """Where the budget keeps its spend durably (the outbox's file: ``Outbox`` is one)."""

    def load_state(self, name: str) -> bytes | None: ...

    def save_state(self, name: str, value: bytes) -> None: ...


_BUCKETS_PER_WINDOW: Final = 60


class _RollingWindow:
    """Bytes spent within the last ``span_s`` seconds, in 60 buckets.

    A spend counts until its whole bucket has left the window, so the window errs on the safe side
    by at most one bucket (a minute for the hour, 24 minutes for the day).
    """

    __slots__ = ("bucket_s", "limit", "span_s", "spent_by_bucket")

    def __init__(self, span_s: int, limit: int) -> None:
        self.span_s = span_s
        self.bucket_s = span_s // _BUCKETS_PER_WINDOW
        self.limit = limit
        self.spent_by_bucket: dict[int, int] = {}

    def _oldest_bucket(self, now: float) -> int:
        return math.floor((now - self.span_s) / self.bucket_s)

    def spent(self, now: float) -> int:
        oldest = self._oldest_bucket(now)
        return sum(spent for bucket, spent in self.spent_by_bucket.items() if bucket >= oldest)

    def spend(self, nbytes: int, now: float) -> None:
        bucket = math.floor(now / self.bucket_s)
        self.spent_by_bucket[bucket] = self.spent_by_bucket.get(bucket, 0) + nbytes
        oldest = self._oldest_bucket(now)
        for old in [bucket for bucket in self.spent_by_bucket if bucket < oldest]:
            del self.spent_by_bucket[old]

    def remaining(self, now: float) -> int:
        return max(0, self.limit - self.spent(now))


class Budget:
    """A link's byte budget per hour and per day, in rolling windows kept across restarts.

    Times are seconds since the epoch (``time.time()``), passed in so tests and the agent's clock
    agree. With no limit in the profile, everything is allowed and nothing is stored.
    """

    def __init__(self, link: LinkProfile, store: StateStore) -> None:
        self.link = link
        self.name = f"budget/{link.name}"
        self._store = store
        self._windows = {
            "hour": _RollingWindow(3600, link.budget_bytes_per_hour),
            "day": _RollingWindow(86_400, link.budget_bytes_per_day),
        }
        self._load()

    def _limited_windows(self) -> list[_RollingWindow]:
        return [window for window in self._windows.values() if window.limit > 0]

    def allows(self, nbytes: int, now: float, *, priority: Priority = Priority.P2) -> bool:
        """Whether a message of ``nbytes`` may be sent now; ``priority`` is the most urgent class
        it carries (P0 is always allowed)."""
        if priority == Priority.P0:
            return True
        return all(window.spent(now) + nbytes <= window.limit for window in self._limited_windows())

    def spend(self, nbytes: int, now: float) -> None:
        """Records bytes sent (durably, when the link is limited)."""
        if nbytes < 0:
            raise ValueError(f"cannot spend {nbytes} bytes")
        limited = self._limited_windows()
        if not limited:
            return
        for window in limited:
            window.spend(nbytes, now)
        self._save()

    def remaining(self, now: float) -> int | None:
        """Bytes that may still be sent now within every limited window; None when unlimited."""
        limited = self._limited_windows()
        if not limited:
            return None
        return min(window.remaining(now) for window in limited)

    def spent(self, now: float) -> dict[str, int]:
        """Bytes spent in the last hour and the last day (for status and metrics)."""
        return {name: window.spent(now) for name, window in self._windows.items()}

    def _save(self) -> None:
        state = {
            name: {str(bucket): spent for bucket, spent in window.spent_by_bucket.items()}
            for name, window in self._windows.items()
        }
        self._store.save_state(self.name, json.dumps(state, separators=(",", ":")).encode())

    def _load(self) -> None:
        raw = self._store.load_state(self.name)
        if raw is None:
            return
        try:
            state = json.loads(raw)
            for name, window in self._windows.items():
                buckets = state.get(name, {})
                window.spent_by_bucket = {int(bucket): int(spent) for bucket, spent in buckets.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise BudgetStateError(self.name, f"unreadable ({exc})") from exc
