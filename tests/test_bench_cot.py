"""The pure helpers of the CoT benchmark: event sizes, the presence a client says first, split writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import safexml
from bench import cot


def test_events_are_413_bytes_each_with_a_counted_uid() -> None:
    data = cot.events("f", 7, 3, 2)
    assert len(data) == 2 * cot.EVENT_BYTES
    assert data.count(cot.marker("f")) == 2
    first = safexml.parse(data[: cot.EVENT_BYTES])
    assert first.get("uid", "").startswith("bench-f-007-00000003-")


def test_presence_is_well_formed_and_not_counted_as_a_scenario_event() -> None:
    hello = cot.presence("l", 12)
    event = safexml.parse(hello)
    assert event.get("uid", "").startswith("hello-l-")
    contact = event.find("detail/contact")
    assert contact is not None
    assert contact.get("callsign") == "ZZ-L-00012"
    assert b'uid="bench-' not in hello


@pytest.mark.parametrize("count", [1, 2, 4, 7, 413, 500])
def test_pieces_join_back_to_the_event_and_none_is_empty(count: int) -> None:
    data = cot.events("s", 0, 0, 1)
    parts = cot.pieces(data, count)
    assert b"".join(parts) == data
    assert all(parts)
    assert len(parts) == min(count, len(data))


def test_pieces_refuses_a_count_below_one() -> None:
    with pytest.raises(ValueError, match="count must be at least 1, not 0"):
        cot.pieces(b"<event/>", 0)


def test_freetakserver_settings_keep_its_data_in_the_folder(tmp_path: Path) -> None:
    ports = {name: 40000 + n for n, name in enumerate(cot.FTS_PORTS)}
    env = cot.fts_environment(tmp_path, ports)
    assert env["FTS_COT_PORT"] == str(ports["FTS_COT_PORT"])
    assert env["FTS_FIRST_START"] == "false"
    assert env["FTS_API_ADDRESS"] == "127.0.0.1"
    paths = [value for name, value in env.items() if name.endswith(("PATH", "DIR"))]
    assert paths
    assert all(value.startswith(str(tmp_path)) for value in paths)
    assert "DataPackagePort" not in env  # a command-line option of FreeTAKServer, not a variable
