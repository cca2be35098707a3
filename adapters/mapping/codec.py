"""The mapping codec: a department's JSON or CSV document in, canonical envelopes out (sans-IO).

The mapping file is read when the codec is built; ``decode`` only reads the bytes it is given.
A record that cannot be mapped does not stop the others: ``decode_report`` returns the envelopes of
the good records with one ``AdapterError`` per problem, each naming the record and the field.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from yiwang.v1 import envelope_pb2 as pb

from adapters.errors import AdapterError
from adapters.mapping.spec import ENCODINGS, Mapping, Rule, read_mapping
from adapters.mapping.values import Scalar, as_text, quote
from adapters.plugin import AdapterConfig, AdapterContext, stable_id
from gateway.errors import ConfigError, InvalidEnvelopeError
from gateway.regions import is_well_formed
from gateway.validation import AGENCIES, Validator

_PATH_STEP = re.compile(r"([^.\[\]]+)|\[([0-9]+)\]")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True, kw_only=True)
class MappingConfig(AdapterConfig):
    """The mapping adapter's config: which mapping file turns the department's records into envelopes."""

    mapping: str = field(
        metadata={"doc": "a shipped mapping's name (e.g. public-security-incidents) or the path of a mapping TOML"}
    )


@dataclass(frozen=True, slots=True)
class _Record:
    """One source record and how errors name it."""

    label: str  # data.records[3] or line 5
    values: dict[str, object]
    is_csv: bool

    def where(self, source: str) -> str:
        return f"{self.label}, column {source}" if self.is_csv else f"{self.label}.{source}"


class MappingCodec:
    """Decodes documents of one mapping file; encoding back is not supported."""

    def __init__(self, config: MappingConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context
        self.mapping: Mapping = read_mapping(config.mapping)
        spec = self.mapping.spec
        self.format = spec.input.format
        self.agency = spec.agency or config.agency
        if not self.agency:
            raise ConfigError("no agency: set it in the mapping file or the adapter config", key="agency")
        self._validator = Validator(context.regions, agencies=AGENCIES | {self.agency})
        self._paths: dict[str, JsonPath] = {}
        self._anchored = self.mapping.anchored
        self._region_names: dict[str, list[str]] = {}
        for code in context.regions.subtree(spec.region.province):
            self._region_names.setdefault(context.regions.name(code), []).append(code)

    # -- the codec protocol -------------------------------------------------------------------

    def decode(self, data: bytes) -> list[pb.Envelope]:
        """The envelopes of the good records; raises only when the document cannot be read or no
        record could be mapped (``decode_report`` says what went wrong with each record)."""
        envelopes, errors = self.decode_report(data)
        if errors and not envelopes:
            first = errors[0]
            more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
            raise AdapterError(f"no record could be mapped: {first.reason}{more}", field=first.field, kind=first.kind)
        return envelopes

    def encode(self, envelopes: Sequence[pb.Envelope]) -> bytes:  # noqa: ARG002 (the Codec protocol)
        raise AdapterError("the mapping adapter only reads department exports", kind="unsupported")

    def decode_report(self, data: bytes) -> tuple[list[pb.Envelope], list[AdapterError]]:
        """The envelopes of the good records, and each problem of the others."""
        text = self._text(data)
        records = self._json_records(text) if self.format == "json" else self._csv_records(text)
        now = self.context.time()
        envelopes: list[pb.Envelope] = []
        errors: list[AdapterError] = []
        for record in records:
            if isinstance(record, AdapterError):
                errors.append(record)
                continue
            found: list[AdapterError] = []
            envelope = self._envelope(record, now, found)
            errors += found
            if envelope is not None and not found:
                envelopes.append(envelope)
        return envelopes, errors

    # -- reading the document -------------------------------------------------------------------

    def _text(self, data: bytes) -> str:
        encoding = ENCODINGS[self.mapping.spec.input.encoding.lower()]
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise AdapterError(
                f"not {self.mapping.spec.input.encoding} text", offset=exc.start, kind="encoding"
            ) from None
        return text.removeprefix("\ufeff")  # a byte order mark, as Excel writes before UTF-8 and GB18030 alike

    def _json_records(self, text: str) -> list[_Record | AdapterError]:
        try:
            document = json.loads(text)
        except RecursionError:
            raise AdapterError("JSON nested too deeply", kind="hostile") from None
        except json.JSONDecodeError as exc:
            raise AdapterError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", kind="value") from None
        except ValueError as exc:  # e.g. an integer longer than Python converts
            raise AdapterError(f"not JSON: {exc}", kind="value") from None
        path = self.mapping.spec.input.records
        found = document
        if path:
            found = _walk(document, self._path(path))
            if found is None:
                raise AdapterError("the document has no list of records here", field=path, kind="missing")
        if not isinstance(found, list):
            raise AdapterError(f"is a {_json_type(found)}, not a list of records", field=path or "document")
        records: list[_Record | AdapterError] = []
        for n, item in enumerate(found):
            label = f"{path}[{n}]"
            if isinstance(item, dict):
                records.append(_Record(label, item, is_csv=False))
            else:
                records.append(AdapterError(f"is a {_json_type(item)}, not an object", field=label))
        return records

    def _csv_records(self, text: str) -> list[_Record | AdapterError]:
        source = self.mapping.spec.input
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=source.delimiter)
        records: list[_Record | AdapterError] = []
        try:
            header: list[str] | None = None
            for row in reader:
                if header is None:
                    if reader.line_num >= source.header_row:
                        header = [cell.strip() for cell in row]
                        self._check_header(header, reader.line_num)
                    continue
                if not any(cell.strip() for cell in row):
                    continue
                label = f"line {reader.line_num}"
                if len(row) != len(header):
                    records.append(AdapterError(f"has {len(row)} cells, the header {len(header)}", field=label))
                    continue
                records.append(_Record(label, dict(zip(header, row, strict=True)), is_csv=True))
        except csv.Error as exc:
            raise AdapterError(f"not CSV: {exc}", field=f"line {reader.line_num}", kind="value") from None
        if header is None:
            raise AdapterError(f"no header row (expected on line {source.header_row})", kind="missing")
        return records

    def _check_header(self, header: list[str], line: int) -> None:
        """Raises when a column the mapping cannot do without is missing or named twice."""
        needed = {rule.spec.path for rule in self.mapping.rules if rule.spec.required}
        needed |= set(self.mapping.id_fields)
        missing = sorted(name for name in needed if name not in header)
        if missing:
            raise AdapterError(f"the header has no column {', '.join(missing)}", field=f"line {line}", kind="missing")
        named = {rule.spec.path for rule in self.mapping.rules if rule.spec.path}
        named |= needed | set(self.mapping.spec.attributes.values()) | {self.mapping.spec.region.path}
        twice = sorted({name for name in header if name in named and header.count(name) > 1})
        if twice:
            raise AdapterError(f"the header names column {', '.join(twice)} more than once", field=f"line {line}")

    def _path(self, path: str) -> JsonPath:
        steps = self._paths.get(path)
        if steps is None:
            steps = tuple(int(index) if index else key for key, index in _PATH_STEP.findall(path))
            self._paths[path] = steps
        return steps

    def _value(self, record: _Record, source: str) -> Scalar | None:
        """The record's value at ``source``; None when it is absent, null or blank."""
        raw = record.values.get(source) if record.is_csv else _walk(record.values, self._path(source))
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        if isinstance(raw, str | int | float):
            return raw
        raise AdapterError(f"is a {_json_type(raw)}, not a single value", field=record.where(source))

    # -- one record -----------------------------------------------------------------------------

    def _envelope(self, record: _Record, now: float, errors: list[AdapterError]) -> pb.Envelope | None:
        spec = self.mapping.spec
        original_id = self._original_id(record, errors)
        values: list[tuple[Rule, object, bool]] = []  # rule, canonical value, whether from the record
        for rule in self.mapping.rules:
            try:
                values += self._rule_value(record, rule)
            except AdapterError as exc:
                errors.append(exc)
        lat, lon = _point(values)
        if (lat is None) != (lon is None):
            errors.append(AdapterError("a point needs both latitude and longitude", field=record.label, kind="missing"))
        region = self._region(record, values, errors)
        attributes: dict[str, str] = {}
        for key, source in spec.attributes.items():
            try:
                raw = self._value(record, source)
                if raw is not None:
                    attributes[key] = as_text(raw)
            except AdapterError as exc:
                errors.append(AdapterError(exc.reason, field=exc.field or record.where(source), kind=exc.kind))
        if errors or original_id is None or region is None:
            return None
        envelope = pb.Envelope(id=stable_id(spec.name, original_id), kind=self.mapping.kind, region=region)
        envelope.origin.agency = self.agency
        envelope.origin.region = self.config.region
        envelope.origin.system = self.config.system or spec.name
        envelope.sent_at.FromNanoseconds(int(now * 1e9))
        envelope.provenance.original_format = f"mapping-{self.format}:{spec.name}"
        envelope.provenance.original_id = original_id
        envelope.attributes.update(attributes)
        getattr(envelope, self.mapping.spec.kind.lower()).SetInParent()  # the payload, even if only defaults
        for rule, value, index in _place_elements(values, self._anchored):
            rule.target.set(envelope, value, index)
        try:
            self._validator.check(envelope, envelope.ByteSize(), now)
        except InvalidEnvelopeError as exc:
            errors.append(
                AdapterError(f"the envelope's {exc.field} {exc.reason}", field=record.label, kind="canonical")
            )
            return None
        return envelope

    def _original_id(self, record: _Record, errors: list[AdapterError]) -> str | None:
        parts: dict[str, str] = {}
        for name in self.mapping.id_fields:
            try:
                raw = self._value(record, name)
            except AdapterError as exc:
                errors.append(exc)
                return None
            if raw is None:
                errors.append(
                    AdapterError(
                        "is empty, and the envelope id is made from it", field=record.where(name), kind="missing"
                    )
                )
                return None
            parts[name] = as_text(raw)
        return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], self.mapping.spec.id.template)

    def _rule_value(self, record: _Record, rule: Rule) -> list[tuple[Rule, object, bool]]:
        if rule.spec.value is not None:
            return [(rule, rule.constant, False)]
        source = rule.spec.path
        raw = self._value(record, source)
        if raw is None:
            if rule.constant is not None:
                return [(rule, rule.constant, False)]
            if rule.spec.required:
                raise AdapterError(f"is required (for {rule.target.path})", field=record.where(source), kind="missing")
            return []
        try:
            value = rule.value.from_source(raw)
        except AdapterError as exc:
            raise AdapterError(exc.reason, field=record.where(source), kind=exc.kind) from None
        if reason := rule.target.check_range(value):
            raise AdapterError(reason, field=record.where(source))
        return [(rule, value, True)]

    def _region(
        self, record: _Record, values: list[tuple[Rule, object, bool]], errors: list[AdapterError]
    ) -> str | None:
        """The envelope's region: from its field, else the nearest division, else the defaults."""
        spec = self.mapping.spec.region
        if spec.path:
            try:
                raw = self._value(record, spec.path)
            except AdapterError as exc:
                errors.append(exc)
                return None
            if raw is not None:
                code = self._region_of(as_text(raw), spec.by)
                if code.startswith("!"):
                    errors.append(AdapterError(code[1:], field=record.where(spec.path)))
                    return None
                return code
        lat, lon = _point(values)
        if spec.from_point and isinstance(lat, float | int) and isinstance(lon, float | int):
            try:
                nearest = self.context.places.nearest(float(lat), float(lon), within=spec.province[:2])
            except ValueError as exc:
                errors.append(AdapterError(str(exc), field=record.label))
                return None
            if nearest.distance_km <= spec.max_distance_km:
                return nearest.code
            errors.append(
                AdapterError(
                    f"the point {lat}, {lon} is {nearest.distance_km:.0f} km from the nearest division of "
                    f"{spec.province}, more than {spec.max_distance_km:g} km",
                    field=record.label,
                )
            )
            return None
        if spec.default or self.config.region:
            return spec.default or self.config.region
        errors.append(
            AdapterError(
                "no region: the record names none and the mapping gives no default", field=record.label, kind="missing"
            )
        )
        return None

    def _region_of(self, text: str, by: str) -> str:
        """The region code a field names, or "!" and why not."""
        regions = self.context.regions
        if by == "code":
            # statistical exports write 12-digit 统计用区划代码; their first six digits are GB/T 2260
            code = (
                text[:6] if len(text) == 12 and text.isascii() and text.isdigit() and text.endswith("000000") else text
            )
            if not is_well_formed(code):
                return f"!{quote(text)} is not a six-digit GB/T 2260 code"
            if code not in regions:
                return f"!{code} is not a known GB/T 2260 region code"
            return code
        codes = self._region_names.get(text, [])
        if len(codes) == 1:
            return codes[0]
        if codes:
            return f"!{quote(text)} names several regions ({', '.join(codes)})"
        return f"!{quote(text)} is not the exact name of a region in {regions.name(self.mapping.spec.region.province)}"


def _place_elements(
    values: list[tuple[Rule, object, bool]], anchored: frozenset[tuple[str, int]]
) -> list[tuple[Rule, object, int | None]]:
    """Drops repeated elements (a measurement, say) the record has no value for, so a reading the
    record lacks leaves no half-filled element, and closes the gaps that leaves.

    An element is there when one of its anchor rules found a value in the record; an element
    without anchor rules (``anchored`` lists those with) is there when any of its rules did.
    """
    present: dict[str, set[int]] = {}
    for rule, _value, from_record in values:
        element = rule.target.element()
        if element is not None and from_record and (rule.spec.anchor or element not in anchored):
            present.setdefault(element[0], set()).add(element[1])
    renumber = {path: {old: new for new, old in enumerate(sorted(found))} for path, found in present.items()}
    placed: list[tuple[Rule, object, int | None]] = []
    for rule, value, _from_record in values:
        element = rule.target.element()
        if element is None:
            placed.append((rule, value, None))
        elif element[1] in renumber.get(element[0], {}):
            placed.append((rule, value, renumber[element[0]][element[1]]))
    return placed


def _point(values: list[tuple[Rule, object, bool]]) -> tuple[object, object]:
    """The latitude and longitude among a record's values (None where absent)."""
    found = {rule.target.path: value for rule, value, _ in values}
    return found.get("geometry.point.lat"), found.get("geometry.point.lon")


def _walk(document: object, steps: JsonPath) -> object:
    """The value at ``steps`` in a parsed JSON document, or None where the path leads nowhere."""
    found = document
    for step in steps:
        if isinstance(step, int):
            if not isinstance(found, list) or step >= len(found):
                return None
            found = found[step]
        elif isinstance(found, dict):
            found = found.get(step)
        else:
            return None
    return found


def _json_type(value: object) -> str:
    names: dict[type, str] = {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }
    return names.get(type(value), "null")


def open_codec(fmt: str, config: MappingConfig, context: AdapterContext) -> MappingCodec:
    """The codec factory of the manifest: checks that the mapping reads the format asked for."""
    codec = MappingCodec(config, context)
    if fmt != f"mapping-{codec.format}":
        raise ConfigError(
            f"mapping {codec.mapping.spec.name} reads {codec.format}, not format {fmt!r}",
            key="mapping",
            source=codec.mapping.source,
        )
    return codec
