"""Node configuration: one TOML file, filled strictly into frozen dataclasses at start.

Unknown keys, wrong types and impossible values are errors that name the key and the file, so a
mistyped setting never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.regions import Level, default_table, is_well_formed, level_of
from gateway.validation import AGENCIES, AGENCY_CODE

_NODE_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB)?")
_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


@dataclass(frozen=True)
class NodeSection:
    id: str
    region: str
    level: str = ""  # derived from the region code when empty


@dataclass(frozen=True)
class ListenSection:
    grpc: str = "127.0.0.1:7400"
    http: str = "127.0.0.1:7480"


@dataclass(frozen=True)
class JetStreamSection:
    """``[log.jetstream]``: the NATS JetStream cluster that keeps the log when ``log.backend = "jetstream"``."""

    servers: list[str] = field(default_factory=list)  # e.g. ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    stream: str = "YIWANG_LOG"
    replicas: int = 3  # copies of every message in the cluster; 1 for a single NATS server
    duplicate_window_s: float = 120.0
    credentials: str = ""  # a NATS .creds file
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    layout: str = "batch"  # "batch": a stream message per append batch; "envelope": one per envelope (older)


@dataclass(frozen=True)
class LogSection:
    data_dir: str = "data"
    fsync: bool = True  # fsync every group commit (power-loss safe); false: safe against process crashes only
    retention_hours: float = 168.0  # 0 keeps everything
    retention_bytes: int | str = 0  # e.g. "20GiB"; 0 means no size limit
    cache_bytes: int | str = "64MiB"
    backend: str = "embedded"  # "embedded" (SQLite in data_dir) or "jetstream" (see [log.jetstream])
    jetstream: JetStreamSection = field(default_factory=JetStreamSection)


@dataclass(frozen=True)
class LimitsSection:
    max_envelope_bytes: int = 1 << 20
    max_batch_envelopes: int = 10_000
    max_clock_skew_s: float = 600.0
    max_message_bytes: int | str = "64MiB"
    admission_workers: int = -1  # processes that validate large publish requests; -1: one per core (up to 4)


@dataclass(frozen=True)
class TlsSection:
    """Mutual TLS of the node's listeners. Paths are relative to the config file."""

    ca: str = ""  # the network's root CA (PEM): clients must present a certificate it issued
    cert: str = ""  # the node's certificate (PEM, chain allowed)
    key: str = ""  # its private key
    crl: str = ""  # the CA's CRL, re-read when it changes; revoked identities are refused and cut off
    insecure: bool = False  # plaintext, for development on loopback only; never a fallback


@dataclass(frozen=True)
class PolicySection:
    file: str = ""  # the sharing policy (TOML); empty: the policy yiwang ships with


@dataclass(frozen=True)
class AgenciesSection:
    extra: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AdapterSourceSection:
    """Where an inbound adapter's input comes from."""

    type: str = "file"  # file (an inbox folder), http-push (POST /adapters/NAME/push), http-poll (a feed URL)
    path: str = ""  # file: the inbox folder
    url: str = ""  # http-poll: the feed
    interval_s: float = 60.0  # file and http-poll: seconds between looks
    allow: list[str] = field(default_factory=list)  # http-push: identities that may push (empty: any)


@dataclass(frozen=True)
class AdapterSinkSection:
    """Where an outbound adapter's output goes."""

    type: str = "file"  # file (a folder, one file per envelope) or http-post (a URL)
    path: str = ""
    url: str = ""


@dataclass(frozen=True)
class AdapterSection:
    """One adapter the node runs: a plugin, its config, and its own identity towards the gateway."""

    name: str  # this instance's name (metrics, health, dead letters, push URL)
    adapter: str  # the plugin (`yiwang adapt --list`)
    format: str = ""  # one of the plugin's formats; empty: its first
    direction: str = "in"  # in or out
    cert: str = ""  # the adapter's own certificate (chain) and key, for mutual TLS to the node
    key: str = ""
    sign_key: str = ""  # optional: sign what it publishes (Ed25519 key and certificate from `yiwang pki`)
    sign_cert: str = ""
    kinds: list[str] = field(default_factory=list)  # out: the kinds to export (empty: the plugin's own)
    national: bool = False  # out: only what the routing flags for the national level (the national export)
    source: AdapterSourceSection = field(default_factory=AdapterSourceSection)
    sink: AdapterSinkSection = field(default_factory=AdapterSinkSection)
    config: dict[str, Any] = field(default_factory=dict)  # the plugin's own config, checked by it


@dataclass(frozen=True)
class MqttSection:
    """The node's connection to the field terminals' MQTT broker (the edge ingest)."""

    broker: str = ""  # HOST:PORT; empty: the node runs no MQTT ingest
    ca: str = ""  # default: tls.ca, tls.cert, tls.key (the node's own identity, as the broker's ACL names it)
    cert: str = ""
    key: str = ""
    insecure: bool = False  # plaintext to a broker on loopback, for development
    client_id: str = ""  # default: yiwang-NODE_ID
    stale_after: float = 3.0  # a terminal silent for this many of its intervals is stale
    resend_after_s: float = 5.0  # a gap in a terminal's readings this old is asked for again


@dataclass(frozen=True)
class ReportsSection:
    """Deadlines of incident reports (see gateway.reports), by grade 一般 IV, 较大 III, 重大 II, 特别重大 I."""

    onward_minutes: list[float] = field(default_factory=lambda: [120.0, 120.0, 30.0, 30.0])
    follow_up_minutes: list[float] = field(default_factory=lambda: [1440.0, 360.0, 120.0, 60.0])
    link_tolerance_minutes: float = 10.0
    check_interval_s: float = 5.0


@dataclass(frozen=True)
class SummariesSection:
    """Periodic station summaries a node with a parent sends up instead of raw telemetry (gateway.summaries)."""

    period_minutes: float = 15.0  # 0: none


@dataclass(frozen=True)
class StationsSection:
    """Monitoring stations that report to the node over TCP as to their data centre (gateway.stations)."""

    registry: str = ""  # the station registry (TOML, see deploy/stations.toml); relative to the config file
    listen: dict[str, str] = field(default_factory=dict)  # protocol (hj212, sl651) -> HOST:PORT
    idle_timeout_s: float = 600.0  # a connection silent this long is closed
    max_connections: int = 10_000  # per protocol
    processes: int = 2  # worker processes that run the station servers; 0: on the node's event loop


@dataclass(frozen=True)
class TakSection:
    """The node as a TAK server: CoT from TAK clients in, the jurisdiction's picture out (gateway.tak)."""

    listen: str = ""  # HOST:PORT for TAK clients over TCP, CoT in and out (8087 is TAK's port); empty: none
    udp: str = ""  # HOST:PORT for CoT datagrams in, one event each (4242 is TAK's port); empty: none
    tls: bool = False  # TCP with mutual TLS: the node's certificate, clients' certificates of the network's CA
    region: str = ""  # the region given to what comes in (CoT carries none); default: node.region
    agency: str = "fire_rescue"  # the agency that speaks for what comes in
    status: str = "actual"  # of what comes in: actual, or exercise for a drill's TAK network
    idle_timeout_s: float = 600.0  # a client that sends nothing, not even a ping, this long is closed
    max_connections: int = 10_000
    max_event_bytes: int = 256 << 10  # largest CoT event taken
    max_queue_bytes: int | str = "4MiB"  # live events a client may fall behind before it is disconnected
    picture_hours: float = 24.0  # how far back in the log the picture sent to new clients starts
    max_picture: int = 10_000  # most events (CoT uids) in that picture


@dataclass(frozen=True)
class RoutingSection:
    file: str = ""  # rules over the shipped gateway/data/default-routing.toml (see gateway.routing)


@dataclass(frozen=True)
class ParentSection:
    """The node's link to its parent node (see gateway.federation); the province has none."""

    address: str = ""  # HOST:PORT of the parent's gRPC listener; empty: no parent
    identity: str = ""  # the spiffe URI the parent's certificate must carry (required with TLS)
    server_name: str = ""  # when the address is not a name or IP the parent's certificate carries
    batch: int = 2000  # most envelopes per batch on the link (a backlog of smaller appends goes together)


@dataclass(frozen=True)
class WebSection:
    """The web command picture on the HTTP listener (gateway.web): who may sign in, what it shows."""

    enabled: bool = False  # serve /picture/ on listen.http
    users_db: str = ""  # users and sessions (SQLite); relative to the config file; empty: DATA_DIR/web-users.sqlite
    session_hours: float = 12.0  # a signed-in session lasts this long
    login_attempts: int = 5  # failed logins per user, and per client address, within login_window_s ...
    login_window_s: float = 300.0  # ... before further attempts are refused for a while (429)
    vendor_dir: str = ""  # the node_modules folder holding echarts; empty: the one next to the package
    window_h: float = 24.0  # how many hours of the log the picture keeps and the time slider replays
    checkpoint_every_envelopes: int = 1_000_000  # save the picture's state after this many envelopes ...
    checkpoint_every_min: float = 10.0  # ... or this many minutes, whichever comes first
    checkpoint_max: int = 160  # checkpoints kept (the oldest go first); 0: none are written or read
    checkpoint_max_mb: float = 2048.0  # and at most this much disk for them
    trusted_proxies: list[str] = field(default_factory=list)  # addresses/networks whose X-Forwarded-For is believed


@dataclass(frozen=True)
class NodeConfig:
    node: NodeSection
    listen: ListenSection = field(default_factory=ListenSection)
    log: LogSection = field(default_factory=LogSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    agencies: AgenciesSection = field(default_factory=AgenciesSection)
    tls: TlsSection = field(default_factory=TlsSection)
    policy: PolicySection = field(default_factory=PolicySection)
    adapters: list[AdapterSection] = field(default_factory=list)
    mqtt: MqttSection = field(default_factory=MqttSection)
    parent: ParentSection = field(default_factory=ParentSection)
    routing: RoutingSection = field(default_factory=RoutingSection)
    reports: ReportsSection = field(default_factory=ReportsSection)
    summaries: SummariesSection = field(default_factory=SummariesSection)
    stations: StationsSection = field(default_factory=StationsSection)
    tak: TakSection = field(default_factory=TakSection)
    web: WebSection = field(default_factory=WebSection)
    source: str = field(default="", metadata={"internal": True})  # the file it was read from, not a key

    @property
    def level(self) -> str:
        return self.node.level or level_of(self.node.region).value

    @property
    def data_dir(self) -> Path:
        path = Path(self.log.data_dir)
        if not path.is_absolute() and self.source:
            path = Path(self.source).parent / path
        return path

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        path = Path(value)
        if not path.is_absolute() and self.source and self.source != "command line":
            path = Path(self.source).parent / path
        return path

    @property
    def all_agencies(self) -> frozenset[str]:
        return AGENCIES | frozenset(self.agencies.extra)


def parse_size(value: int | str, key: str, source: str) -> int:
    if isinstance(value, int):
        if value < 0:
            raise ConfigError("must not be negative", key=key, source=source)
        return value
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ConfigError(f"{value!r} is not a size (e.g. 512MiB, 20GiB or a number of bytes)", key=key, source=source)
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_address(value: str, key: str, source: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{value!r} is not HOST:PORT", key=key, source=source)
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_type_ok(k, key) and _type_ok(v, item) for k, v in value.items())
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def fill_dataclass(cls: type[Any], table: Any, prefix: str, source: str) -> Any:
    """A dataclass filled strictly from a TOML table: unknown keys, wrong types and missing required
    keys are ConfigErrors naming the key and the file."""
    if not isinstance(table, dict):
        raise ConfigError("must be a table", key=prefix, source=source)
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(f"unknown key (known here: {', '.join(sorted(known))})", key=path, source=source)
        hint = hints[key]
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if dataclasses.is_dataclass(hint):
            values[key] = fill_dataclass(hint, value, path, source)  # type: ignore[arg-type]
        elif item is not None and dataclasses.is_dataclass(item):
            if not isinstance(value, list):
                raise ConfigError(f"expected a list of tables, got {type(value).__name__}", key=path, source=source)
            filled = [fill_dataclass(typing.cast(type, item), v, f"{path}[{i}]", source) for i, v in enumerate(value)]
            values[key] = filled
        elif not _type_ok(value, hint):
            raise ConfigError(
                f"expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}",
                key=path,
                source=source,
            )
        else:
            values[key] = value
    for name, f in known.items():
        if name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("required", key=f"{prefix}.{name}" if prefix else name, source=source)
    return cls(**values)


_NATS_URL = re.compile(r"(nats|tls)://[^\s/]+:\d{1,5}")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _check_jetstream(section: LogSection, src: str) -> None:
    if section.backend not in ("embedded", "jetstream"):
        raise ConfigError(
            f"{section.backend!r} is not a log backend (embedded or jetstream)", key="log.backend", source=src
        )
    js = section.jetstream
    # [log.jetstream] is checked whenever it is given: `yiwang log migrate` uses it before the backend changes.
    if section.backend == "jetstream" and not js.servers:
        raise ConfigError(
            'required with log.backend = "jetstream": the NATS servers', key="log.jetstream.servers", source=src
        )
    for i, url in enumerate(js.servers):
        if not _NATS_URL.fullmatch(url):
            raise ConfigError(
                f"{url!r} is not nats://HOST:PORT or tls://HOST:PORT", key=f"log.jetstream.servers[{i}]", source=src
            )
    if not _STREAM_NAME.fullmatch(js.stream):
        raise ConfigError("must be letters, digits, '_' or '-' (up to 64)", key="log.jetstream.stream", source=src)
    if not 1 <= js.replicas <= 5:
        raise ConfigError(
            "must be between 1 and 5 (3 for a three-server cluster)", key="log.jetstream.replicas", source=src
        )
    if js.duplicate_window_s <= 0:
        raise ConfigError("must be positive", key="log.jetstream.duplicate_window_s", source=src)
    if bool(js.tls_cert) != bool(js.tls_key):
        raise ConfigError("give tls_cert and tls_key together", key="log.jetstream.tls_key", source=src)
    if js.layout not in ("envelope", "batch"):
        raise ConfigError(f"{js.layout!r} is not a layout (envelope or batch)", key="log.jetstream.layout", source=src)


def check(config: NodeConfig) -> NodeConfig:
    """Checks the values that types alone cannot; returns the config unchanged."""
    src = config.source
    node = config.node
    if not _NODE_ID.fullmatch(node.id):
        raise ConfigError("must be lower-case letters, digits, '.', '_' or '-' (up to 63)", key="node.id", source=src)
    if not is_well_formed(node.region) or node.region not in default_table():
        raise ConfigError(f"{node.region!r} is not a known GB/T 2260 region code", key="node.region", source=src)
    if node.level:
        if node.level not in {lv.value for lv in Level}:
            raise ConfigError("must be province, city or county", key="node.level", source=src)
        if node.level != level_of(node.region).value:
            raise ConfigError(
                f"{node.level} does not match region {node.region}, which is a {level_of(node.region).value}",
                key="node.level",
                source=src,
            )
    grpc_host, _ = parse_address(config.listen.grpc, "listen.grpc", src)
    http_host, _ = parse_address(config.listen.http, "listen.http", src)
    tls = config.tls
    if tls.insecure:
        for key, host in (("listen.grpc", grpc_host), ("listen.http", http_host)):
            if not is_loopback(host):
                raise ConfigError(
                    f"{host} is not a loopback address: plaintext (tls.insecure) is only for development on loopback",
                    key=key,
                    source=src,
                )
        if tls.ca or tls.cert or tls.key:
            raise ConfigError("give either ca/cert/key or insecure = true, not both", key="tls.insecure", source=src)
    else:
        for key in ("ca", "cert", "key"):
            if not getattr(tls, key):
                raise ConfigError(
                    "required: the node's listeners require mutual TLS (or set tls.insecure = true on loopback)",
                    key=f"tls.{key}",
                    source=src,
                )
    if config.log.retention_hours < 0:
        raise ConfigError("must not be negative", key="log.retention_hours", source=src)
    parse_size(config.log.retention_bytes, "log.retention_bytes", src)
    parse_size(config.log.cache_bytes, "log.cache_bytes", src)
    _check_jetstream(config.log, src)
    parse_size(config.limits.max_message_bytes, "limits.max_message_bytes", src)
    if config.limits.max_envelope_bytes < 1024:
        raise ConfigError("must be at least 1024", key="limits.max_envelope_bytes", source=src)
    if config.limits.admission_workers < -1:
        raise ConfigError(
            "must be -1 (automatic), 0 (inline) or a number of processes",
            key="limits.admission_workers",
            source=src,
        )
    if config.limits.max_batch_envelopes < 1:
        raise ConfigError("must be at least 1", key="limits.max_batch_envelopes", source=src)
    for i, code in enumerate(config.agencies.extra):
        if not AGENCY_CODE.fullmatch(code):
            raise ConfigError(f"{code!r} is not an agency code (a-z, 0-9, _)", key=f"agencies.extra[{i}]", source=src)
    mqtt = config.mqtt
    if mqtt.broker:
        if mqtt.insecure:
            _loopback_only(mqtt.broker, "mqtt.broker", "mqtt.insecure", "plaintext MQTT", src)
        if not mqtt.insecure and tls.insecure and not (mqtt.ca and mqtt.cert and mqtt.key):
            raise ConfigError(
                "a plaintext node has no identity for the broker: give mqtt.ca, cert and key, or mqtt.insecure",
                key="mqtt.broker",
                source=src,
            )
    reports = config.reports
    for key in ("onward_minutes", "follow_up_minutes"):
        values = getattr(reports, key)
        if len(values) != 4 or any(v <= 0 for v in values):
            raise ConfigError("four positive numbers, for grades IV, III, II and I", key=f"reports.{key}", source=src)
    if reports.link_tolerance_minutes <= 0 or reports.check_interval_s <= 0:
        raise ConfigError("must be positive", key="reports.link_tolerance_minutes", source=src)
    stations = config.stations
    for protocol, address in stations.listen.items():
        if protocol not in ("hj212", "sl651"):
            raise ConfigError("one of hj212, sl651", key=f"stations.listen.{protocol}", source=src)
        parse_address(address, f"stations.listen.{protocol}", src)
    if stations.listen and not stations.registry:
        raise ConfigError("stations need a registry of who may report", key="stations.registry", source=src)
    if stations.idle_timeout_s <= 0 or stations.max_connections < 1:
        raise ConfigError("must be positive", key="stations.idle_timeout_s", source=src)
    if not 0 <= stations.processes <= 64:
        raise ConfigError("must be 0 (on the node's event loop) or 1 to 64 processes", key="stations.processes",
                          source=src)  # fmt: skip
    _check_tak(config)
    _check_web(config)
    if config.summaries.period_minutes < 0:
        raise ConfigError("must be 0 (no summaries) or a positive number", key="summaries.period_minutes", source=src)
    parent = config.parent
    if parent.address:
        parse_address(parent.address, "parent.address", src)
        if tls.insecure:
            _loopback_only(parent.address, "parent.address", "parent.address", "a plaintext link", src)
        if not tls.insecure and not parent.identity.startswith("spiffe://"):
            raise ConfigError(
                "the spiffe URI the parent's certificate must carry is required", key="parent.identity", source=src
            )
        if not 1 <= parent.batch <= config.limits.max_batch_envelopes:
            raise ConfigError(
                f"must be 1 to limits.max_batch_envelopes ({config.limits.max_batch_envelopes})",
                key="parent.batch",
                source=src,
            )
    return config


def _check_tak(config: NodeConfig) -> None:
    src, tak = config.source, config.tak
    if tak.listen:
        parse_address(tak.listen, "tak.listen", src)
    if tak.udp:
        parse_address(tak.udp, "tak.udp", src)
    if tak.tls and config.tls.insecure:
        raise ConfigError("TLS for TAK clients needs the node's own tls.ca, cert and key", key="tak.tls", source=src)
    if tak.region:
        if not is_well_formed(tak.region) or tak.region not in default_table():
            raise ConfigError(f"{tak.region!r} is not a known GB/T 2260 region code", key="tak.region", source=src)
        if not default_table().is_within(tak.region, config.node.region):
            raise ConfigError(
                f"{tak.region} is not within the node's region {config.node.region}: TAK clients would not see "
                "their own events",
                key="tak.region",
                source=src,
            )
    if tak.agency not in config.all_agencies:
        raise ConfigError(f"unknown agency code {tak.agency!r}", key="tak.agency", source=src)
    if tak.status not in ("actual", "exercise"):
        raise ConfigError("must be actual or exercise", key="tak.status", source=src)
    for key in ("idle_timeout_s", "picture_hours"):
        value = getattr(tak, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError("must be a positive number", key=f"tak.{key}", source=src)
    for key in ("max_connections", "max_picture"):
        if getattr(tak, key) < 1:
            raise ConfigError("must be at least 1", key=f"tak.{key}", source=src)
    if tak.max_event_bytes < 64:
        raise ConfigError("must be at least 64 (no CoT event is smaller)", key="tak.max_event_bytes", source=src)
    if parse_size(tak.max_queue_bytes, "tak.max_queue_bytes", src) < tak.max_event_bytes:
        raise ConfigError("must be at least tak.max_event_bytes", key="tak.max_queue_bytes", source=src)


def _check_web(config: NodeConfig) -> None:
    src, web = config.source, config.web
    positive = (
        "session_hours",
        "login_window_s",
        "window_h",
        "checkpoint_every_envelopes",
        "checkpoint_every_min",
        "checkpoint_max_mb",
    )
    for key in positive:
        value = getattr(web, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError("must be a positive number", key=f"web.{key}", source=src)
    if web.login_attempts < 1:
        raise ConfigError("must be at least 1", key="web.login_attempts", source=src)
    if web.checkpoint_max < 0:
        raise ConfigError("must be 0 (no checkpoints) or more", key="web.checkpoint_max", source=src)
    for proxy in web.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(
                f"{proxy!r} is not an IP address or network", key="web.trusted_proxies", source=src
            ) from None


def _loopback_only(address: str, address_key: str, key: str, what: str, src: str) -> None:
    host, _ = parse_address(address, address_key, src)
    if not is_loopback(host):
        raise ConfigError(
            f"{host} is not a loopback address: {what} is only for development on loopback", key=key, source=src
        )


def from_dict(table: dict[str, Any], source: str = "") -> NodeConfig:
    config: NodeConfig = fill_dataclass(NodeConfig, table, "", source)
    return check(dataclasses.replace(config, source=source))


def read_toml(text: str | None, source: str, path: Path | None = None) -> dict[str, Any]:
    """Parses TOML (read from ``path`` when given), with errors that name the file."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", source=source) from exc
    try:
        return tomllib.loads(text or "")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from exc


def load(path: Path) -> NodeConfig:
    """Reads and checks a node's TOML configuration file."""
    return from_dict(read_toml(None, str(path), path), str(path))
