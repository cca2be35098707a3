"""The example configurations in deploy/ load as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize("name", ["node-province.toml", "node-city.toml", "node-county.toml"])
def test_example_configs_load(name: str) -> None:
    config = load(DEPLOY / name)
    assert (
        config.level == {"node-province.toml": "province", "node-city.toml": "city", "node-county.toml": "county"}[name]
    )
    assert str(config.data_dir) == "/var/lib/yiwang"
