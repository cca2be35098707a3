"""The sharing policy: who may publish which envelopes, and who may read which (default deny).

A policy is a TOML file of ``[[publish]]`` and ``[[read]]`` rules (``gateway/data/default-policy.toml``
is the baseline that ships). A rule applies to identities by role and (optionally) agency, to
envelopes by kind, by origin agency and by region scope, and carries the reason it exists, which
every decision reports. Reading is decided from the same selection record subscribers filter on,
so the node filters what it sends without parsing envelopes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from yiwang.v1 import envelope_pb2 as pb

from gateway.config import read_toml
from gateway.errors import ConfigError
from gateway.pki import Identity, Role
from gateway.regions import RegionTable, default_table
from gateway.selection import Record

SCOPES = ("subtree", "related", "all")
_KIND_NAMES = {name: value for name, value in pb.Kind.items() if value}
_ANY = "*"
_OWN = "$own"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # the rule's reason when allowed; what is missing when denied
    field: str = ""  # for a denied publish: the envelope field that decided it
    signature_required: bool = False  # for an allowed publish: the envelope must carry a signature


@dataclass(frozen=True)
class Rule:
    roles: frozenset[Role]
    agencies: frozenset[str] | None  # None: any agency of the identity
    kinds: frozenset[int]
    origins: frozenset[str]  # "*", "$own" or agency codes
    scope: str
    reason: str
    index: int
    signature_required: bool = False

    def applies_to(self, who: Identity) -> bool:
        return who.role in self.roles and (self.agencies is None or who.principal in self.agencies)

    def origin_ok(self, who: Identity, agency: str) -> bool:
        return _ANY in self.origins or agency in self.origins or (_OWN in self.origins and agency == who.principal)


@dataclass
class Policy:
    publish: list[Rule] = field(default_factory=list)
    read: list[Rule] = field(default_factory=list)
    source: str = ""
    regions: RegionTable = field(default_factory=default_table)

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        """Reads a policy file (the shipped default when ``path`` is None), checking every key."""
        if path is None:
            shipped = (resources.files("gateway") / "data" / "default-policy.toml").read_text(encoding="utf-8")
            source = "default-policy.toml"
            table = read_toml(shipped, source)
        else:
            source = str(path)
            table = read_toml(None, source, path)
        unknown = set(table) - {"publish", "read"}
        if unknown:
            raise ConfigError("unknown table (known: publish, read)", key=sorted(unknown)[0], source=source)
        policy = cls(source=source)
        for section, target in (("publish", policy.publish), ("read", policy.read)):
            for index, raw in enumerate(table.get(section, [])):
                target.append(_rule(raw, f"{section}[{index}]", source, section))
        return policy

    def _in_scope(self, scope: str, who: Identity, region: str) -> bool:
        if scope == "all":
            return True
        if self.regions.is_within(region, who.region):
            return True
        return scope == "related" and self.regions.is_within(who.region, region)

    def may_publish(self, who: Identity, env: pb.Envelope) -> Decision:
        """Whether ``who`` may publish ``env``; a denial names the field and what the identity lacks."""
        return self.may_publish_as(who, env.kind, env.region, env.origin.agency)

    def may_publish_as(self, who: Identity, kind: int, region: str, agency: str) -> Decision:
        """The same decision from the envelope's kind, region code and origin agency."""
        kind_name = pb.Kind.Name(kind) if kind in _KIND_NAMES.values() else str(kind)
        rules = [r for r in self.publish if r.applies_to(who) and kind in r.kinds]
        if not rules:
            return Decision(
                allowed=False,
                reason=f"{who.role.value} {who.principal} may not publish {kind_name} envelopes",
                field="kind",
            )
        for rule in rules:
            if rule.origin_ok(who, agency) and self._in_scope(rule.scope, who, region):
                return Decision(allowed=True, reason=rule.reason, signature_required=rule.signature_required)
        if not any(r.origin_ok(who, agency) for r in rules):
            return Decision(
                allowed=False,
                reason=f"{agency!r} is not yours ({who.principal}): you cannot speak for it",
                field="origin.agency",
            )
        return Decision(allowed=False, reason=f"{region} is outside your region {who.region}", field="region")

    def reader(self, who: Identity) -> Callable[[Record], bool] | None:
        """A predicate over selection records of what ``who`` may read (None: nothing at all)."""
        grants: dict[int, list[tuple[Rule, frozenset[bytes] | None]]] = {}
        for rule in self.read:
            if not rule.applies_to(who):
                continue
            origins: frozenset[bytes] | None
            if _ANY in rule.origins:
                origins = None
            else:
                names = {who.principal if o == _OWN else o for o in rule.origins}
                origins = frozenset(n.encode().ljust(24, b"\0")[:24] for n in names)
            for kind in rule.kinds:
                grants.setdefault(kind, []).append((rule, origins))
        if not grants:
            return None
        regions = self.regions
        home = who.region
        ancestors = frozenset(regions.ancestors(home)) | {home}
        below: dict[int, bool] = {}  # cache: region code -> lies in the identity's subtree

        def within(region: int) -> bool:
            hit = below.get(region)
            if hit is None:
                hit = below[region] = regions.is_within(f"{region:06d}", home)
            return hit

        def may_read(record: Record) -> bool:
            kind, _, _, region, agency = record[:5]
            for rule, origins in grants.get(kind, ()):
                if origins is not None and agency not in origins:
                    continue
                if rule.scope == "all" or within(region):
                    return True
                if rule.scope == "related" and f"{region:06d}" in ancestors:
                    return True
            return False

        return may_read


def _rule(raw: Any, key: str, source: str, section: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError("must be a table", key=key, source=source)
    origin_key = "origin" if section == "publish" else "from"
    known = {"roles", "agencies", "kinds", "scope", "reason", origin_key} | (
        {"signatures"} if section == "publish" else set()
    )
    for name in raw:
        if name not in known:
            raise ConfigError(f"unknown key (known: {', '.join(sorted(known))})", key=f"{key}.{name}", source=source)
    for name in ("roles", "kinds", "scope", "reason"):
        if name not in raw:
            raise ConfigError("required", key=f"{key}.{name}", source=source)
    try:
        roles = frozenset(Role(r) for r in raw["roles"])
    except ValueError as exc:
        raise ConfigError(str(exc), key=f"{key}.roles", source=source) from None
    kinds_raw = raw["kinds"]
    if kinds_raw == [_ANY]:
        kinds = frozenset(_KIND_NAMES.values())
    else:
        unknown = [k for k in kinds_raw if k not in _KIND_NAMES]
        if unknown:
            raise ConfigError(f"unknown kind {unknown[0]!r}", key=f"{key}.kinds", source=source)
        kinds = frozenset(_KIND_NAMES[k] for k in kinds_raw)
    if raw["scope"] not in SCOPES:
        raise ConfigError(f"must be one of {', '.join(SCOPES)}", key=f"{key}.scope", source=source)
    origins_raw = raw.get(origin_key, _ANY)
    origins = frozenset([origins_raw] if isinstance(origins_raw, str) else origins_raw)
    agencies = raw.get("agencies")
    signatures = raw.get("signatures", "optional")
    if signatures not in ("required", "optional"):
        raise ConfigError("must be required or optional", key=f"{key}.signatures", source=source)
    return Rule(
        roles=roles,
        agencies=frozenset(agencies) if agencies is not None else None,
        kinds=kinds,
        origins=origins,
        scope=raw["scope"],
        reason=str(raw["reason"]),
        index=int(key.rsplit("[", 1)[1].rstrip("]")),
        signature_required=signatures == "required",
    )
