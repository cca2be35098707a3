"""What an adapter is to the rest of the system: a manifest, a typed config, and a codec factory.

Adapters are found through the ``yiwang.adapters`` entry-point group (``pyproject.toml``), never by
importing files from a folder. Each entry point names an ``Adapter`` object.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from gateway.config import fill_dataclass
from gateway.errors import ConfigError
from gateway.places import Places, default_places
from gateway.regions import RegionTable, default_table
from gateway.validation import AGENCIES, AGENCY_CODE

ENTRY_POINT_GROUP = "yiwang.adapters"
_NAME = "abcdefghijklmnopqrstuvwxyz0123456789-"


class Direction(enum.StrEnum):
    IN = "in"  # a department's format into canonical envelopes
    OUT = "out"  # canonical envelopes back into the format


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """What every adapter's config has; each adapter's own config class extends it.

    ``agency`` and ``region`` say for whom the adapter speaks (origin.agency, origin.region, and
    the region of envelopes whose source names none); ``system`` goes into origin.system.
    """

    agency: str = ""
    region: str = ""
    system: str = ""


_C = typing.TypeVar("_C", bound=AdapterConfig)


def config_as(cls: type[_C], config: Any) -> _C:
    """``config`` as the adapter's own config class: a base ``AdapterConfig`` is widened, keeping the
    fields it sets and the class's defaults for the others."""
    if isinstance(config, cls):
        return config
    if not isinstance(config, AdapterConfig):
        raise ConfigError(f"expected {cls.__name__}, got {type(config).__name__}")
    base = {f.name: getattr(config, f.name) for f in dataclasses.fields(AdapterConfig) if getattr(config, f.name)}
    return cls(**base)


class ReportingCodec:
    """A codec that reads many messages from one input: ``decode_report`` gives the envelopes and an
    error per message it refused; ``decode`` fails only when nothing at all could be read."""

    def decode_report(self, data: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
        raise NotImplementedError

    def decode(self, data: bytes) -> list[pb.Envelope]:
        envelopes, errors = self.decode_report(data)
        if errors and not envelopes:
            raise errors[0]
        return envelopes


class Codec(Protocol):
    """Sans-IO: bytes in, envelopes out (and back). Raises only AdapterError."""

    def decode(self, data: bytes) -> list[pb.Envelope]: ...

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes: ...


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What a codec may consult besides its input: the region table and places, and the clock."""

    regions: RegionTable = field(default_factory=default_table)
    places: Places = field(default_factory=default_places)
    now: Callable[[], float] | None = None  # POSIX seconds; None: time.time

    def time(self) -> float:
        """Now, in POSIX seconds, by the context's clock."""
        return self.now() if self.now is not None else time.time()


@dataclass(frozen=True)
class Manifest:
    name: str  # the adapter's name, lower-case, e.g. "cap"
    title: str  # one line for `yiwang adapt --list`
    inbound: tuple[str, ...]  # formats it decodes, e.g. ("cap",)
    outbound: tuple[str, ...]  # formats it encodes
    agency: str  # the agency it usually speaks for, overridable in its config
    config: type[AdapterConfig]

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.inbound + self.outbound))

    @property
    def directions(self) -> frozenset[Direction]:
        return frozenset(d for d, formats in ((Direction.IN, self.inbound), (Direction.OUT, self.outbound)) if formats)

    def schema(self) -> dict[str, Any]:
        """The config schema: each key with its type, default and meaning (from the field's metadata)."""
        hints = typing.get_type_hints(self.config)
        keys = {}
        for f in dataclasses.fields(self.config):
            default: Any = None
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            keys[f.name] = {
                "type": _type_name(hints[f.name]),
                "required": required,
                "default": None if required else _plain(default),
                "doc": f.metadata.get("doc", ""),
            }
        return {"adapter": self.name, "keys": keys}

    def problems(self) -> list[str]:
        """What is wrong with this manifest (empty when it is sound)."""
        found = []
        if not self.name or any(c not in _NAME for c in self.name):
            found.append(f"name {self.name!r}: lower-case letters, digits and '-' only")
        if not self.title:
            found.append("title: required")
        if not self.formats:
            found.append("formats: an adapter handles at least one format")
        found += [
            f"format {fmt!r}: lower-case letters, digits and '-' only"
            for fmt in self.formats
            if not fmt or any(c not in _NAME for c in fmt)
        ]
        if self.agency not in AGENCIES and not AGENCY_CODE.fullmatch(self.agency):
            found.append(f"agency {self.agency!r}: not an agency code")
        config: Any = self.config  # checked here, whatever a third-party manifest declares
        if not (dataclasses.is_dataclass(config) and isinstance(config, type) and issubclass(config, AdapterConfig)):
            found.append("config: must be a dataclass extending AdapterConfig")
        elif not self.config.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            found.append("config: must be frozen")
        else:
            try:
                self.schema()
            except (TypeError, NameError) as exc:
                found.append(f"config: its schema cannot be read: {exc}")
        return found


@dataclass(frozen=True)
class Adapter:
    manifest: Manifest
    # (format, config, context) -> codec; the format is one of the manifest's
    codec: Callable[[str, Any, AdapterContext], Codec]

    def load_config(self, table: dict[str, Any] | None = None, source: str = "", prefix: str = "") -> AdapterConfig:
        """The adapter's typed config from a TOML table; unknown keys name the key and the file.

        ``prefix`` is where the table sits in a bigger file (``adapters[2].config``), for the errors.
        """
        config: AdapterConfig = fill_dataclass(self.manifest.config, table or {}, prefix, source)
        at = f"{prefix}." if prefix else ""
        if not config.agency:
            config = dataclasses.replace(config, agency=self.manifest.agency)
        if config.agency not in AGENCIES and not AGENCY_CODE.fullmatch(config.agency):
            raise ConfigError(f"{config.agency!r} is not an agency code", key=f"{at}agency", source=source)
        if config.region and config.region not in default_table():
            raise ConfigError(
                f"{config.region!r} is not a known GB/T 2260 region code", key=f"{at}region", source=source
            )
        return config

    def open(self, fmt: str, config: AdapterConfig | None = None, context: AdapterContext | None = None) -> Codec:
        if fmt not in self.manifest.formats:
            known = ", ".join(self.manifest.formats)
            raise ConfigError(f"adapter {self.manifest.name} has no format {fmt!r} ({known})")
        return self.codec(fmt, config or self.load_config(), context or AdapterContext())


def discover() -> dict[str, Adapter]:
    """Every installed adapter by name, from the ``yiwang.adapters`` entry points."""
    found: dict[str, Adapter] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        adapter = point.load()
        if not isinstance(adapter, Adapter):
            raise ConfigError(f"entry point {point.name} ({point.value}) is not an adapters.plugin.Adapter")
        found[adapter.manifest.name] = adapter
    return found


def by_format(adapters: dict[str, Adapter] | None = None) -> dict[str, Adapter]:
    """Every format by name, with the adapter that handles it."""
    table: dict[str, Adapter] = {}
    for adapter in (adapters or discover()).values():
        for fmt in adapter.manifest.formats:
            table[fmt] = adapter
    return table


def stable_id(namespace: str, *parts: str) -> str:
    """An envelope id derived from the source's own identifiers, the same every time the same
    message is decoded (so a message fetched twice is stored once)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]
    return f"{namespace}-{digest}"


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(hint, "__name__", str(hint))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
