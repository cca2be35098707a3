"""Link profiles and the byte budget of paid links: rolling hour and day windows that a restart
does not reset. Times are passed in; nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.links import CELLULAR, LAN, PROFILES, SATELLITE, Budget, BudgetStateError, LinkProfile, profile
from edge_agent.model import Priority
from edge_agent.outbox import Outbox
from gateway.errors import ConfigError

T0 = 1_750_000_000.0  # a multiple of neither bucket size, so windows do not start on a bucket edge
MINUTE = 60.0
HOUR = 3600.0
DAY = 86_400.0
METERED = LinkProfile(
    name="metered",
    max_message_bytes=500,
    budget_bytes_per_hour=1000,
    budget_bytes_per_day=3000,
    batch_interval_s=10.0,
    live_window_s=60.0,
    compress=True,
)


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def outbox(outbox_path: Path) -> Iterator[Outbox]:
    with Outbox.open(outbox_path, max_bytes=1 << 20, p2_ttl_s=3600) as box:
        yield box


def test_built_in_profiles_fit_their_links() -> None:
    assert set(PROFILES) == {"lan", "cellular", "satellite"}
    assert profile("satellite") is SATELLITE
    assert not LAN.limited
    assert LAN.max_message_bytes > CELLULAR.max_message_bytes > SATELLITE.max_message_bytes
    assert SATELLITE.max_message_bytes <= 14_000 // 8  # one BeiDou-3 regional short message
    assert SATELLITE.batch_interval_s > CELLULAR.batch_interval_s > LAN.batch_interval_s
    assert 0 < SATELLITE.budget_bytes_per_hour < SATELLITE.budget_bytes_per_day
    assert SATELLITE.compress
    assert CELLULAR.compress


def test_an_unknown_link_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="'vsat'; known links: cellular, lan, satellite") as caught:
        profile("vsat")
    assert caught.value.key == "link"


def test_the_hour_window_rolls(outbox: Outbox) -> None:
    budget = Budget(METERED, outbox)
    budget.spend(600, T0)
    budget.spend(300, T0 + 30 * MINUTE)
    assert budget.remaining(T0 + 30 * MINUTE) == 100
    assert budget.allows(100, T0 + 30 * MINUTE)
    assert not budget.allows(101, T0 + 30 * MINUTE)
    # The first spend counts until its minute has left the hour, then only the second does.
    assert not budget.allows(101, T0 + HOUR)
    assert budget.remaining(T0 + HOUR + MINUTE) == 700
    assert budget.remaining(T0 + 30 * MINUTE + HOUR + MINUTE) == 1000
    assert budget.spent(T0 + 30 * MINUTE + HOUR + MINUTE) == {"hour": 0, "day": 900}


def test_the_day_window_holds_after_the_hours_have_rolled(outbox: Outbox) -> None:
    budget = Budget(METERED, outbox)
    spends = [T0, T0 + HOUR + 2 * MINUTE, T0 + 2 * HOUR + 4 * MINUTE]
    for at in spends:
        assert budget.allows(1000, at)
        budget.spend(1000, at)
    assert budget.spent(T0 + 4 * HOUR) == {"hour": 0, "day": 3000}
    assert budget.remaining(T0 + 4 * HOUR) == 0  # the hour is free, the day is not
    assert not budget.allows(1, T0 + 4 * HOUR)
    # Day buckets are 24 minutes: a spend is forgotten at most 24 minutes after its day is over.
    assert budget.spent(T0 + DAY + 24 * MINUTE) == {"hour": 0, "day": 2000}
    assert budget.remaining(T0 + DAY + 24 * MINUTE) == 1000
    assert budget.spent(T0 + DAY + 2 * HOUR + 28 * MINUTE) == {"hour": 0, "day": 0}


def test_p0_goes_even_over_budget_and_still_counts(outbox: Outbox) -> None:
    budget = Budget(METERED, outbox)
    budget.spend(1000, T0)
    assert not budget.allows(50, T0)
    assert budget.allows(50, T0, priority=Priority.P0)
    budget.spend(50, T0)
    assert budget.remaining(T0) == 0  # overspent, never negative
    assert budget.spent(T0) == {"hour": 1050, "day": 1050}
    assert not budget.allows(1, T0 + HOUR)  # the extra 50 bytes are paid back by waiting longer
    assert budget.allows(1, T0 + HOUR + MINUTE)


def test_the_spend_survives_a_restart(outbox_path: Path) -> None:
    with Outbox.open(outbox_path, max_bytes=1 << 20, p2_ttl_s=3600) as box:
        Budget(METERED, box).spend(900, T0)
        Budget(SATELLITE, box).spend(5, T0)
    with Outbox.open(outbox_path, max_bytes=1 << 20, p2_ttl_s=3600) as box:
        assert Budget(METERED, box).remaining(T0 + MINUTE) == 100
        assert Budget(SATELLITE, box).spent(T0) == {"hour": 5, "day": 5}  # each link keeps its own


def test_an_unlimited_link_allows_everything_and_stores_nothing(outbox: Outbox) -> None:
    budget = Budget(LAN, outbox)
    budget.spend(10**12, T0)
    assert budget.allows(10**12, T0)
    assert budget.remaining(T0) is None
    assert outbox.load_state(budget.name) is None


def test_spending_negative_bytes_is_refused(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="-1"):
        Budget(METERED, outbox).spend(-1, T0)


def test_an_unreadable_saved_state_is_an_error_naming_it(outbox: Outbox) -> None:
    outbox.save_state("budget/metered", b"{not json")
    with pytest.raises(BudgetStateError, match="budget/metered") as caught:
        Budget(METERED, outbox)
    assert caught.value.name == "budget/metered"
