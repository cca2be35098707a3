"""Canonical target paths (``incident.casualties.dead``, ``observation.measurements[0].value``)
resolved against the Envelope's protobuf descriptors, and values set through them.

A path is checked once, when the mapping is loaded: every step must be a field of the message it
names, repeated message fields need an index and singular ones must not have one, and the last step
must be a scalar or a Timestamp. Setting a value then only follows descriptors already checked, so
a mapping file can reach nothing but the fields its paths name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from yiwang.v1 import envelope_pb2 as pb

from adapters.mapping.values import Timestamp

_STEP = re.compile(r"([a-z_][a-z0-9_]*)(?:\[([0-9]{1,3})\])?")
#: No department record needs more repeated elements than this; a larger index is a typo.
MAX_INDEX = 63
_TIMESTAMP = "google.protobuf.Timestamp"

#: Envelope fields the adapter sets itself (id from the template, kind from the mapping, region
#: from the region rules, origin from the config, provenance from the decoder) or that a flat
#: department record cannot meaningfully fill.
RESERVED = frozenset({"id", "kind", "region", "origin", "provenance", "distribution", "references", "attributes"})

#: Which declared type may write to which protobuf field type.
_COMPATIBLE: dict[str, frozenset[int]] = {
    "string": frozenset({FieldDescriptor.TYPE_STRING}),
    "integer": frozenset(
        {
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64,
            FieldDescriptor.TYPE_SINT32,
            FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_DOUBLE,
            FieldDescriptor.TYPE_FLOAT,
        }
    ),
    "float": frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}),
    "boolean": frozenset({FieldDescriptor.TYPE_BOOL}),
    "enum": frozenset({FieldDescriptor.TYPE_ENUM}),
}

_INT_RANGE: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


class TargetError(ValueError):
    """A target path the canonical model does not have, or a type it cannot hold."""


@dataclass(frozen=True, slots=True)
class Step:
    field: FieldDescriptor
    index: int | None  # set exactly for repeated message fields


@dataclass(frozen=True, slots=True)
class Target:
    """A checked path from the Envelope to one scalar or Timestamp field."""

    path: str
    steps: tuple[Step, ...]

    @property
    def leaf(self) -> FieldDescriptor:
        return self.steps[-1].field

    @property
    def is_timestamp(self) -> bool:
        return _is_timestamp(self.leaf)

    @property
    def enum(self) -> EnumDescriptor | None:
        return self.leaf.enum_type if self.leaf.type == FieldDescriptor.TYPE_ENUM else None

    @property
    def payload(self) -> str:
        """The Envelope payload the path goes into ("" for envelope fields such as geometry)."""
        first = self.steps[0].field
        return first.name if first.containing_oneof is not None else ""

    def element(self) -> tuple[str, int] | None:
        """The outermost repeated element the path goes through (its path and index), if any."""
        for n, step in enumerate(self.steps):
            if step.index is not None:
                return ".".join(s.field.name for s in self.steps[: n + 1]), step.index
        return None

    def natural_type(self) -> str:
        """The mapping type that fits this field as it is (what a rule without ``type`` reads)."""
        if self.is_timestamp:
            return "timestamp"
        if self.leaf.type in _COMPATIBLE["float"]:
            return "float"  # before integer, which may also fill a double
        return next((name for name, types in _COMPATIBLE.items() if self.leaf.type in types), "string")

    def accepts(self, declared: str) -> bool:
        """Whether a value of the declared mapping type may be written here."""
        if declared == "timestamp":
            return self.is_timestamp
        return self.leaf.type in _COMPATIBLE.get(declared, frozenset())

    def check_range(self, value: object) -> str:
        """Why an integer does not fit the field ("" when it does)."""
        bounds = _INT_RANGE.get(self.leaf.type)
        if bounds and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
            return f"{value} is out of the range {bounds[0]}..{bounds[1]} of {self.path}"
        return ""

    def set(self, envelope: pb.Envelope, value: object, element_index: int | None = None) -> None:
        """Writes ``value`` (already of the right type) at this path; ``element_index`` replaces the
        index of the outermost repeated element (the caller closes gaps left by absent elements)."""
        message: Message = envelope
        replaced = False
        for step in self.steps[:-1]:
            child = getattr(message, step.field.name)
            if step.index is None:
                message = child
                continue
            index = step.index
            if element_index is not None and not replaced:
                index, replaced = element_index, True
            while len(child) <= index:
                child.add()
            message = child[index]
        leaf = self.leaf
        if isinstance(value, Timestamp):
            stamp = getattr(message, leaf.name)
            stamp.seconds, stamp.nanos = value.seconds, value.nanos
        elif (enum := self.enum) is not None:
            assert isinstance(value, str)
            setattr(message, leaf.name, enum.values_by_name[value].number)
        else:
            setattr(message, leaf.name, value)


def resolve(path: str) -> Target:
    """The checked target for ``path``; raises TargetError saying which step is wrong."""
    message = _message_of(pb.Envelope.DESCRIPTOR)
    steps: list[Step] = []
    parts = path.split(".")
    for n, part in enumerate(parts):
        match = _STEP.fullmatch(part)
        if not match:
            raise TargetError(f"{path!r}: {part!r} is not a field name with an optional [index]")
        name, index_text = match.group(1), match.group(2)
        if n == 0 and name in RESERVED:
            raise TargetError(f"{path!r}: {name} is set by the adapter, not by a mapping rule")
        field = message.fields_by_name.get(name)
        if field is None:
            known = ", ".join(sorted(message.fields_by_name))
            raise TargetError(f"{path!r}: {message.name} has no field {name!r} (it has {known})")
        last = n == len(parts) - 1
        child = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
        is_message = child is not None
        repeated = field.is_repeated
        if child is not None and child.GetOptions().map_entry:
            raise TargetError(f"{path!r}: {name} is a map; extra source fields go under [attributes]")
        if repeated and not is_message:
            raise TargetError(f"{path!r}: {name} is a repeated scalar, which a mapping rule cannot fill")
        if repeated and index_text is None:
            raise TargetError(f"{path!r}: {name} is repeated and needs an index, e.g. {name}[0]")
        if not repeated and index_text is not None:
            raise TargetError(f"{path!r}: {name} is not repeated and takes no index")
        index = int(index_text) if index_text is not None else None
        if index is not None and index > MAX_INDEX:
            raise TargetError(f"{path!r}: index {index} is more than {MAX_INDEX}")
        steps.append(Step(field, index))
        if last:
            if child is not None and not _is_timestamp(field):
                raise TargetError(f"{path!r}: {name} is a {child.name} message; name one of its fields")
        elif child is None or _is_timestamp(field):
            raise TargetError(f"{path!r}: {name} has no fields below it")
        else:
            message = _message_of(child)
    return Target(path, tuple(steps))


def _is_timestamp(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name == _TIMESTAMP


def _message_of(descriptor: object) -> Descriptor:
    """The descriptor as the pure-Python type (upb's runtime class has the same interface)."""
    return descriptor  # type: ignore[return-value]


def gaps(targets: Sequence[Target]) -> list[str]:
    """Repeated elements named with a gap (``measurements[1]`` without ``[0]``), as messages."""
    seen: dict[str, set[int]] = {}
    for target in targets:
        element = target.element()
        if element is not None:
            seen.setdefault(element[0], set()).add(element[1])
    return [
        f"{path}[{min(set(range(max(indexes) + 1)) - indexes)}] is missing: indexes of {path} start at 0 without gaps"
        for path, indexes in sorted(seen.items())
        if indexes != set(range(max(indexes) + 1))
    ]
