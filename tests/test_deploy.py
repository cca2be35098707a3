"""The example configurations in deploy/ load as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.plugin import discover
from edge_agent.config import load_edge_config
from gateway.config import load
from gateway.regions import default_table
from gateway.stations import load_registry

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("name", ["node-province.toml", "node-city.toml", "node-county.toml"])
def test_example_configs_load(name: str) -> None:
    config = load(DEPLOY / name)
    assert (
        config.level == {"node-province.toml": "province", "node-city.toml": "city", "node-county.toml": "county"}[name]
    )
    assert str(config.data_dir) == "/var/lib/yiwang"


def test_the_city_examples_adapters_are_installed_and_configured_soundly() -> None:
    config = load(DEPLOY / "node-city.toml")
    plugins = discover()
    assert config.adapters
    for index, section in enumerate(config.adapters):
        plugin = plugins[section.adapter]
        formats = plugin.manifest.inbound if section.direction == "in" else plugin.manifest.outbound
        fmt = section.format or formats[0]
        assert fmt in formats
        adapter_config = plugin.load_config(
            section.config, str(DEPLOY / "node-city.toml"), prefix=f"adapters[{index}].config"
        )
        plugin.open(fmt, adapter_config)  # the codec can be built as configured


def test_the_edge_agent_example_loads() -> None:
    config = load_edge_config(DEPLOY / "edge-agent.toml")
    assert config.link == "cellular"
    assert config.max_outbox_bytes == 64 << 20
    assert load(DEPLOY / "node-province.toml").mqtt.broker.endswith(":8883")


def test_the_county_examples_station_registry_loads() -> None:
    config = load(DEPLOY / "node-county.toml")
    registry = load_registry(config.path(config.stations.registry), default_table())
    assert set(registry) == set(config.stations.listen) == {"hj212", "sl651"}
    assert registry["sl651"]["0041101050"].limits["39"].high == 86.5
