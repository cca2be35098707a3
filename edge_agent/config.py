"""The edge agent's configuration (TOML), checked strictly at load like the node's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import fill_dataclass, parse_address, parse_size, read_toml
from gateway.errors import ConfigError


@dataclass(frozen=True)
class BrokerSection:
    address: str = "127.0.0.1:8883"  # HOST:PORT of the MQTT broker
    ca: str = ""  # the network's CA (PEM); with cert and key, mutual TLS
    cert: str = ""  # the terminal's certificate (chain) from `yiwang pki issue --role edge`
    key: str = ""
    insecure: bool = False  # plaintext to a broker on loopback, for development; never a fallback
    keepalive_s: int = 30


@dataclass(frozen=True)
class TerminalSection:
    name: str = ""  # defaults to the NAME of the certificate's identity
    cn: str = ""  # REGION/AGENCY/edge/NAME; read from the certificate when it is given
    interval_s: float = 60.0  # heartbeats when there is nothing else to send


@dataclass(frozen=True)
class OutboxSection:
    path: str = "outbox.sqlite"
    max_bytes: int | str = "64MiB"
    p2_ttl_s: float = 86_400.0


@dataclass(frozen=True)
class SourceSection:
    type: str = "simulate"  # simulate (a built-in terminal kind) or stdin (readings as JSON lines)
    kind: str = "rain_gauge"  # simulate: the terminal kind
    seed: int = 0
    speedup: float = 1.0  # simulate: simulated seconds per real second


@dataclass(frozen=True)
class EdgeConfig:
    broker: BrokerSection = field(default_factory=BrokerSection)
    terminal: TerminalSection = field(default_factory=TerminalSection)
    outbox: OutboxSection = field(default_factory=OutboxSection)
    link: str = "cellular"  # lan, cellular or satellite
    source: SourceSection = field(default_factory=SourceSection)
    file: str = field(default="", metadata={"internal": True})

    def path(self, value: str) -> Path:
        path = Path(value)
        if not path.is_absolute() and self.file:
            path = Path(self.file).parent / path
        return path

    @property
    def max_outbox_bytes(self) -> int:
        return parse_size(self.outbox.max_bytes, "outbox.max_bytes", self.file)


def edge_config(table: dict[str, Any], source: str = "") -> EdgeConfig:
    config: EdgeConfig = fill_dataclass(EdgeConfig, table, "", source)
    config = EdgeConfig(config.broker, config.terminal, config.outbox, config.link, config.source, source)
    parse_address(config.broker.address, "broker.address", source)
    if config.broker.insecure:
        host, _ = parse_address(config.broker.address, "broker.address", source)
        from gateway.config import is_loopback  # noqa: PLC0415

        if not is_loopback(host):
            raise ConfigError("plaintext is only for a broker on loopback", key="broker.insecure", source=source)
        if not config.terminal.cn:
            raise ConfigError("without a certificate, give the terminal's cn", key="terminal.cn", source=source)
    else:
        for key in ("ca", "cert", "key"):
            if not getattr(config.broker, key):
                raise ConfigError(
                    "required for mutual TLS (or insecure = true on loopback)", key=f"broker.{key}", source=source
                )
    if config.source.type not in {"simulate", "stdin"}:
        raise ConfigError("must be simulate or stdin", key="source.type", source=source)
    config.max_outbox_bytes  # noqa: B018 - checks the size now, naming the key
    return config


def load_edge_config(path: Path) -> EdgeConfig:
    return edge_config(read_toml(None, str(path), path), str(path))
