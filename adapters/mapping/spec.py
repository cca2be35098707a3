"""The mapping file: how a department's JSON or CSV records become canonical envelopes.

A mapping is TOML filled strictly into the frozen dataclasses below and then checked as a whole
(``load_spec``); every mistake is a ``ConfigError`` naming the key and the file. It declares only
data: where the records are, which source field goes to which canonical field with which type, code
table and unit conversion. There are no expressions, so nothing in a mapping file is ever run.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor
from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.mapping.targets import Target, TargetError, gaps, resolve
from adapters.mapping.values import CONVERSIONS, EPOCH_FORMATS, ISO_FORMAT, TYPES, ValueRule, parse_timezone
from gateway.config import fill_dataclass, read_toml
from gateway.errors import ConfigError
from gateway.regions import default_table
from gateway.validation import AGENCIES, AGENCY_CODE

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_SOURCE_PATH = re.compile(r"[^.\[\]]+(?:\[[0-9]{1,4}\])*(?:\.[^.\[\]]+(?:\[[0-9]{1,4}\])*)*")

#: Kinds a department export may be mapped to. Commands and their acknowledgements travel only
#: between systems that are meant to steer each other, never out of a spreadsheet.
MAPPABLE_KINDS = ("ALERT", "INCIDENT", "OBSERVATION", "POSITION", "RESOURCE")

#: Canonical fields every envelope of a kind needs, so a mapping that could never produce a valid
#: envelope fails when it is loaded rather than on every record.
REQUIRED_TARGETS: dict[str, tuple[str, ...]] = {
    "ALERT": ("status", "alert.infos[0].event"),
    "INCIDENT": ("status", "incident.incident_id", "incident.event_type", "incident.stage"),
    "OBSERVATION": (
        "status",
        "observation.station_id",
        "observation.measurements[0].metric",
        "observation.measurements[0].value",
    ),
    "POSITION": ("status", "position.unit_id", "geometry.point.lat", "geometry.point.lon"),
    "RESOURCE": ("status", "resource.resource_id"),
}

#: The encodings a mapping may declare. GBK and GB2312 files are read as GB18030, their superset,
#: because exports labelled GBK often hold a few characters (rare given names) only GB18030 has.
ENCODINGS = {"utf-8": "utf-8", "gb18030": "gb18030", "gbk": "gb18030", "gb2312": "gb18030", "utf-16": "utf-16"}

_Fail = Callable[[str, str], ConfigError]  # (key, message) -> the error naming them and the file


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """Where the records are in the document."""

    format: str  # json or csv
    records: str = ""  # json: dotted path to the list of records ("" when the document is the list)
    encoding: str = "utf-8"  # utf-8, gb18030, gbk, gb2312, utf-16; a leading BOM is dropped
    delimiter: str = ","  # csv
    header_row: int = 1  # csv: the line holding the column names (1 when there is no title above)


@dataclass(frozen=True, kw_only=True)
class IdSpec:
    """The envelope id: ``stable_id(name, template filled from the record)``."""

    template: str  # e.g. "{单位代码}/{警情编号}"


@dataclass(frozen=True, kw_only=True)
class RegionSpec:
    """Where the envelope's GB/T 2260 region comes from, tried in this order."""

    path: str = ""  # a field holding a region code (by = "code") or a region name (by = "name")
    by: str = "code"
    from_point: bool = False  # else the division nearest to geometry.point
    max_distance_km: float = 50.0  # a point farther than this from every division is an error
    default: str = ""  # else this code; else the adapter config's region
    province: str = "410000"  # names and nearest points are looked up within this province


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    """One rule: a source value (or a constant) to one canonical field."""

    target: str  # path into the Envelope, e.g. incident.casualties.dead
    path: str = ""  # where the value is in the record: json a dotted path with [index], csv a column name
    value: str | int | float | bool | None = None  # a constant instead of a source
    type: str = ""  # string, integer, float, boolean, timestamp, enum; "": the target field's own type
    format: str = ""  # timestamp: strptime pattern, iso8601, epoch-s or epoch-ms
    timezone: str = ""  # timestamp: the UTC offset of times written without one, e.g. +08:00
    convert: str = ""  # integer/float: a named unit conversion, e.g. km->m
    factor: float | None = None  # integer/float: value * factor + offset
    offset: float | None = None
    codes: dict[str, str] = field(default_factory=dict)  # source text -> canonical value
    default: str | int | float | bool | None = None  # canonical value when the source is absent
    required: bool = False  # an absent value makes the record an error
    # in a repeated element (measurements[1]): the element exists only when this value does, so a
    # shared column such as a quality flag does not make up a reading the record lacks
    anchor: bool = False


@dataclass(frozen=True, kw_only=True)
class MappingSpec:
    """A whole mapping file."""

    name: str  # lower-case id, the namespace of envelope ids
    title: str
    agency: str = ""  # origin.agency; empty: the adapter config's
    kind: str
    crs: str = "WGS84"
    input: InputSpec
    id: IdSpec
    region: RegionSpec = field(default_factory=RegionSpec)
    fields: list[FieldSpec] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)  # attribute key -> source path


@dataclass(frozen=True, slots=True)
class Rule:
    """A checked field rule, ready for the codec."""

    key: str  # where it is in the mapping file, e.g. fields[3]
    spec: FieldSpec
    target: Target
    value: ValueRule
    constant: object  # the canonical constant or default (None when there is none)


@dataclass(frozen=True, slots=True)
class Mapping:
    """A mapping file, checked: its spec, its rules, and the file it came from."""

    spec: MappingSpec
    rules: tuple[Rule, ...]
    id_fields: tuple[str, ...]
    source: str

    @property
    def anchored(self) -> frozenset[tuple[str, int]]:
        """The repeated elements that have anchor rules."""
        return frozenset(
            element for rule in self.rules if rule.spec.anchor and (element := rule.target.element()) is not None
        )

    @property
    def kind(self) -> pb.Kind:
        return typing.cast(pb.Kind, pb.Kind.Value(self.spec.kind))


def load_spec(table: dict[str, object], source: str) -> Mapping:
    """A mapping from its TOML table; raises ConfigError naming the key and ``source``."""
    spec: MappingSpec = fill_dataclass(MappingSpec, table, "", source)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, key=key, source=source)

    if not _NAME.fullmatch(spec.name):
        raise fail("name", "lower-case letters, digits and '-' (up to 63)")
    if spec.agency and spec.agency not in AGENCIES and not AGENCY_CODE.fullmatch(spec.agency):
        raise fail("agency", f"{spec.agency!r} is not an agency code")
    if spec.kind not in MAPPABLE_KINDS:
        raise fail("kind", f"{spec.kind!r} is not one of {', '.join(MAPPABLE_KINDS)}")
    if spec.crs != "WGS84":
        raise fail(
            "crs",
            f"{spec.crs!r} is not supported: coordinates must be WGS84 (GCJ-02 and BD-09 are deliberately "
            "distorted and are not converted here; have the department export WGS84)",
        )
    _check_input(spec.input, fail)
    id_fields = tuple(_PLACEHOLDER.findall(spec.id.template))
    if not id_fields:
        raise fail("id.template", "names no source field: write it like '{警情编号}'")
    for name in id_fields:
        _check_source_path(name, spec.input.format, "id.template", fail)
    _check_region(spec.region, spec.input.format, fail)
    for key, path in spec.attributes.items():
        if not key or len(key) > 128:
            raise fail(f"attributes.{key}", "an attribute key has 1 to 128 characters")
        _check_source_path(path, spec.input.format, f"attributes.{key}", fail)
    if len(spec.attributes) > 64:
        raise fail("attributes", "more than 64 attributes")
    rules = tuple(_rule(f"fields[{n}]", f, spec, fail) for n, f in enumerate(spec.fields))
    _check_rules(spec, rules, fail)
    return Mapping(spec, rules, id_fields, source)


def read_mapping(name_or_path: str) -> Mapping:
    """A shipped mapping by name (``public-security-incidents``) or a mapping file by path."""
    if "/" not in name_or_path and "\\" not in name_or_path and not name_or_path.endswith(".toml"):
        shipped = resources.files("adapters.mapping") / "mappings" / f"{name_or_path}.toml"
        if not shipped.is_file():
            known = ", ".join(shipped_mappings())
            raise ConfigError(f"no shipped mapping {name_or_path!r} (shipped: {known})", key="mapping")
        source = f"adapters/mapping/mappings/{name_or_path}.toml"
        return load_spec(read_toml(shipped.read_text(encoding="utf-8"), source), source)
    path = Path(name_or_path)
    return load_spec(read_toml(None, str(path), path), str(path))


def shipped_mappings() -> list[str]:
    """The names of the mappings shipped in ``adapters/mapping/mappings``."""
    folder = resources.files("adapters.mapping") / "mappings"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def _check_input(given: InputSpec, fail: _Fail) -> None:
    if given.format not in ("json", "csv"):
        raise fail("input.format", f"{given.format!r} is not json or csv")
    if given.encoding.lower() not in ENCODINGS:
        raise fail("input.encoding", f"{given.encoding!r} is not one of {', '.join(ENCODINGS)}")
    codecs.lookup(ENCODINGS[given.encoding.lower()])  # every value of ENCODINGS is a codec Python has
    if given.format == "json":
        if given.records:
            _check_source_path(given.records, "json", "input.records", fail)
        if given.delimiter != "," or given.header_row != 1:
            raise fail("input.delimiter" if given.delimiter != "," else "input.header_row", "is for csv only")
    else:
        if given.records:
            raise fail("input.records", "is for json only: a csv document is its list of records")
        if len(given.delimiter) != 1 or given.delimiter in '\r\n"':
            raise fail("input.delimiter", f"{given.delimiter!r} is not one character (other than a quote)")
        if not 1 <= given.header_row <= 100:
            raise fail("input.header_row", "must be a line number from 1 to 100")


def _check_source_path(path: str, fmt: str, key: str, fail: _Fail) -> None:
    if not path.strip():
        raise fail(key, "an empty source field name")
    if fmt == "json" and not _SOURCE_PATH.fullmatch(path):
        raise fail(key, f"{path!r} is not a path like 'a.b[0].c'")


def _check_region(region: RegionSpec, fmt: str, fail: _Fail) -> None:
    if region.by not in ("code", "name"):
        raise fail("region.by", f"{region.by!r} is not code or name")
    if region.path:
        _check_source_path(region.path, fmt, "region.path", fail)
    table = default_table()
    if region.default and region.default not in table:
        raise fail("region.default", f"{region.default!r} is not a known GB/T 2260 region code")
    if region.province not in table or not region.province.endswith("0000"):
        raise fail("region.province", f"{region.province!r} is not a known province code")
    if not 0 < region.max_distance_km <= 1000:
        raise fail("region.max_distance_km", "must be more than 0 and at most 1000")


def _rule(key: str, rule: FieldSpec, spec: MappingSpec, fail: _Fail) -> Rule:
    try:
        target = resolve(rule.target)
    except TargetError as exc:
        raise fail(f"{key}.target", str(exc)) from None
    payload = _payload_of(spec.kind)
    if target.payload and target.payload != payload:
        raise fail(f"{key}.target", f"{rule.target!r} is not in the {payload} payload of kind {spec.kind}")
    if not rule.type:
        rule = dataclasses.replace(rule, type=target.natural_type())
    if rule.type not in TYPES:
        raise fail(f"{key}.type", f"{rule.type!r} is not one of {', '.join(TYPES)}")
    if not target.accepts(rule.type):
        leaf = target.leaf
        held = "a Timestamp" if target.is_timestamp else _PROTO_TYPE_NAMES.get(leaf.type, "a message")
        raise fail(f"{key}.type", f"{rule.target} holds {held}, which a {rule.type} cannot fill")
    if bool(rule.path) == (rule.value is not None):
        raise fail(key, "give exactly one of path (a field of the record) and value (a constant)")
    if rule.path:
        _check_source_path(rule.path, spec.input.format, f"{key}.path", fail)
    if rule.value is not None:
        for extra in ("codes", "default", "required", "convert", "factor", "offset", "anchor"):
            if getattr(rule, extra) not in (None, False, "", {}):
                raise fail(f"{key}.{extra}", "does not apply to a constant value")
    if rule.anchor and target.element() is None:
        raise fail(f"{key}.anchor", "is for rules with a path into a repeated element, like measurements[1].value")
    if rule.required and rule.default is not None:
        raise fail(f"{key}.required", "a rule with a default is never missing: drop required or default")
    time_format, zone = _time_of(key, rule, fail)
    factor, offset = _conversion_of(key, rule, fail)
    value = ValueRule(
        type=rule.type,
        codes=dict(rule.codes),
        time_format=time_format,
        zone=zone,
        factor=factor,
        offset=offset,
        enum_names=frozenset(target.enum.values_by_name) if target.enum else frozenset(),
    )
    for code, mapped in rule.codes.items():
        try:
            checked = value.canonical(mapped)
        except AdapterError as exc:
            raise fail(f"{key}.codes.{code}", exc.reason) from None
        if message := target.check_range(checked):
            raise fail(f"{key}.codes.{code}", message)
    written = rule.value if rule.value is not None else rule.default
    constant: object = None
    if written is not None:
        which = "value" if rule.value is not None else "default"
        try:
            constant = value.canonical(written)
        except AdapterError as exc:
            raise fail(f"{key}.{which}", exc.reason) from None
        if message := target.check_range(constant):
            raise fail(f"{key}.{which}", message)
    return Rule(key, rule, target, value, constant)


def _time_of(key: str, rule: FieldSpec, fail: _Fail) -> tuple[str, dt.timezone | None]:
    if rule.type != "timestamp":
        for name in ("format", "timezone"):
            if getattr(rule, name):
                raise fail(f"{key}.{name}", "is for timestamps only")
        return "", None
    if not rule.format:
        raise fail(f"{key}.format", f"required for a timestamp: a strptime pattern, {ISO_FORMAT} or epoch-s/epoch-ms")
    if rule.format not in EPOCH_FORMATS and rule.format != ISO_FORMAT and "%" not in rule.format:
        raise fail(f"{key}.format", f"{rule.format!r} is no strptime pattern (like %Y-%m-%d %H:%M:%S)")
    zone = None
    if rule.timezone:
        try:
            zone = parse_timezone(rule.timezone)
        except ValueError as exc:
            raise fail(f"{key}.timezone", str(exc)) from None
    elif rule.format not in EPOCH_FORMATS and "%z" not in rule.format:
        raise fail(f"{key}.timezone", "required: the UTC offset of the source's times, e.g. +08:00")
    return rule.format, zone


def _conversion_of(key: str, rule: FieldSpec, fail: _Fail) -> tuple[float, float]:
    numeric = rule.type in ("integer", "float")
    if rule.convert:
        if not numeric:
            raise fail(f"{key}.convert", "is for integer and float values only")
        if rule.factor is not None or rule.offset is not None:
            raise fail(f"{key}.convert", "give either convert or factor/offset, not both")
        if rule.convert not in CONVERSIONS:
            raise fail(f"{key}.convert", f"{rule.convert!r} is not one of {', '.join(CONVERSIONS)}")
        return CONVERSIONS[rule.convert]
    if rule.factor is None and rule.offset is None:
        return 1.0, 0.0
    if not numeric:
        raise fail(f"{key}.factor" if rule.factor is not None else f"{key}.offset", "is for integer and float only")
    return (1.0 if rule.factor is None else rule.factor), (rule.offset or 0.0)


def _check_rules(spec: MappingSpec, rules: tuple[Rule, ...], fail: _Fail) -> None:
    by_target: dict[str, Rule] = {}
    for rule in rules:
        if rule.target.path in by_target:
            raise fail(
                f"{rule.key}.target", f"{rule.target.path} is already the target of {by_target[rule.target.path].key}"
            )
        by_target[rule.target.path] = rule
    for message in gaps([rule.target for rule in rules]):
        raise fail("fields", message)
    missing = [path for path in REQUIRED_TARGETS[spec.kind] if path not in by_target]
    if missing:
        raise fail("fields", f"kind {spec.kind} needs a rule for {', '.join(missing)} (a constant value will do)")
    has_lat, has_lon = "geometry.point.lat" in by_target, "geometry.point.lon" in by_target
    if has_lat != has_lon:
        raise fail("fields", "geometry.point.lat and geometry.point.lon go together")
    if spec.region.from_point and not has_lat:
        raise fail("region.from_point", "needs rules for geometry.point.lat and geometry.point.lon")


def _payload_of(kind: str) -> str:
    return kind.lower()


_PROTO_TYPE_NAMES = {
    FieldDescriptor.TYPE_DOUBLE: "a double",
    FieldDescriptor.TYPE_FLOAT: "a float",
    FieldDescriptor.TYPE_INT64: "an int64",
    FieldDescriptor.TYPE_UINT64: "a uint64",
    FieldDescriptor.TYPE_INT32: "an int32",
    FieldDescriptor.TYPE_BOOL: "a bool",
    FieldDescriptor.TYPE_STRING: "a string",
    FieldDescriptor.TYPE_UINT32: "a uint32",
    FieldDescriptor.TYPE_ENUM: "an enum",
    FieldDescriptor.TYPE_SINT32: "a sint32",
    FieldDescriptor.TYPE_SINT64: "a sint64",
}
