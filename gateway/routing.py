"""Routing by rule: which envelopes a node sends up to its parent and down to each child.

A routing policy is TOML with ``[[up]]`` and ``[[down]]`` rules, each with a name and the reason it
exists. ``gateway/data/default-routing.toml`` ships the baseline; a node's own file (``[routing]
file``) replaces a rule of the same name, switches one off with ``enabled = false``, or adds rules.
Every decision names the rule that made it, so ``yiwang route explain ID`` can say why an envelope
went where it went.

Up rules say how far an envelope climbs (``reach``: city, province, or national, which also flags it
at the province for the national level); each node re-applies them to what it received, so an
incident reported at a county climbs one hop at a time as far as its grade takes it. Down rules
match a child by region (the envelope's region is the child's, lies below it, or covers it) or by
area (the envelope's geometry touches one of the child's counties; a warning for a polygon reaches
the counties it touches and only those).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

from yiwang.v1 import envelope_pb2 as pb

from gateway.config import fill_dataclass, read_toml
from gateway.errors import ConfigError, InvalidEnvelopeError
from gateway.regions import Level, RegionTable, default_table

ALARM_ATTRIBUTE: Final = "edge.alarm"  # set on readings that crossed a threshold (gateway.edge_ingest)
SUMMARY_ATTRIBUTE: Final = "yiwang.summary"  # set on a node's periodic station summaries (gateway.summaries)
OVERDUE_ATTRIBUTE: Final = "yiwang.overdue"  # set on the alerts gateway.reports raises for the levels above


class Reach(enum.IntEnum):
    """How far up an envelope climbs."""

    CITY = 1
    PROVINCE = 2
    NATIONAL = 3  # to the province, and flagged there for the national level


_LEVEL_RANK: Final = {Level.COUNTY: 0, Level.CITY: 1, Level.PROVINCE: 2}
_MATCHES: Final = ("region", "area")


@dataclass(frozen=True)
class _UpRow:
    name: str
    kinds: list[str]
    reason: str
    reach: str = "province"
    min_grade: str = ""
    min_severity: str = ""
    alarms_only: bool = False
    summaries_only: bool = False
    enabled: bool = True


@dataclass(frozen=True)
class _DownRow:
    name: str
    kinds: list[str]
    reason: str
    match: str = "region"
    enabled: bool = True


@dataclass(frozen=True)
class _File:
    up: list[_UpRow] = field(default_factory=list)
    down: list[_DownRow] = field(default_factory=list)


@dataclass(frozen=True)
class UpRule:
    name: str
    kinds: frozenset[int]
    reason: str
    reach: Reach
    min_grade: int = 0
    min_severity: int = 0
    alarms_only: bool = False
    summaries_only: bool = False
    source: str = ""

    def takes(self, env: pb.Envelope) -> bool:
        """Whether the rule takes ``env`` (``miss`` says why not; this is the hot path's question)."""
        return (
            env.kind in self.kinds
            and (not self.min_grade or env.incident.grade >= self.min_grade)
            and (not self.min_severity or env.severity >= self.min_severity)
            and (not self.alarms_only or ALARM_ATTRIBUTE in env.attributes)
            and (not self.summaries_only or SUMMARY_ATTRIBUTE in env.attributes)
        )

    def miss(self, env: pb.Envelope) -> str:
        """Why the rule does not take ``env`` ("" when it does)."""
        if env.kind not in self.kinds:
            return f"not for {pb.Kind.Name(env.kind)}"
        if self.min_grade and env.incident.grade < self.min_grade:
            return f"grade {pb.IncidentGrade.Name(env.incident.grade)} is below {pb.IncidentGrade.Name(self.min_grade)}"
        if self.min_severity and env.severity < self.min_severity:
            return f"severity {pb.Severity.Name(env.severity)} is below {pb.Severity.Name(self.min_severity)}"
        if self.alarms_only and ALARM_ATTRIBUTE not in env.attributes:
            return "not a threshold crossing"
        if self.summaries_only and SUMMARY_ATTRIBUTE not in env.attributes:
            return "not a station summary"
        return ""


@dataclass(frozen=True)
class DownRule:
    name: str
    kinds: frozenset[int]
    reason: str
    match: str
    source: str = ""


@dataclass(frozen=True)
class Decision:
    """Where one rule sends an envelope over one link, or why nothing does."""

    send: bool
    rule: str
    why: str


def concerns(regions: RegionTable, region: str, node_region: str) -> bool:
    """Whether content for ``region`` concerns a node of ``node_region``: it is the node's region, lies
    below it, or lies above it (a province-wide warning concerns every county)."""
    return regions.is_within(region, node_region) or regions.is_within(node_region, region)


@dataclass
class Routing:
    up: list[UpRule]
    down: list[DownRule]
    regions: RegionTable = field(default_factory=default_table)
    # The county codes an envelope's geometry touches (gateway.boundaries); None: area rules match by region.
    touching: Callable[[pb.Geometry], set[str]] | None = None

    @property
    def up_kinds(self) -> frozenset[int]:
        return frozenset().union(*(r.kinds for r in self.up))

    @property
    def down_kinds(self) -> frozenset[int]:
        return frozenset().union(*(r.kinds for r in self.down))

    @classmethod
    def load(cls, path: Path | None = None) -> Routing:
        """The shipped rules, with a node's own file (if any) applied over them."""
        shipped = (resources.files("gateway") / "data" / "default-routing.toml").read_text(encoding="utf-8")
        tables = [("default-routing.toml", read_toml(shipped, "default-routing.toml"))]
        if path is not None:
            tables.append((str(path), read_toml(None, str(path), path)))
        up: dict[str, UpRule | None] = {}
        down: dict[str, DownRule | None] = {}
        for source, table in tables:
            rows: _File = fill_dataclass(_File, table, "", source)
            for index, row in enumerate(rows.up):
                up[row.name] = _up_rule(row, f"up[{index}]", source) if row.enabled else None
            for index, down_row in enumerate(rows.down):
                down[down_row.name] = _down_rule(down_row, f"down[{index}]", source) if down_row.enabled else None
        return cls([r for r in up.values() if r], [r for r in down.values() if r])

    # -- decisions ------------------------------------------------------------------------------

    def sends_up(self, env: pb.Envelope, parent_level: Level) -> bool:
        """Whether ``env`` goes up to a parent of ``parent_level`` (``to_parent`` says why)."""
        rank = _LEVEL_RANK[parent_level]
        return any(rule.reach >= rank and rule.takes(env) for rule in self.up)

    def up_by_record(self, parent_level: Level) -> Callable[[int, int], bool | None]:
        """``sends_up`` decided from an envelope's kind and severity alone (both in its selection
        record): True or False where those settle it, None where a rule looks further (grade,
        threshold crossing, summary) and the envelope must be read."""
        rank = _LEVEL_RANK[parent_level]
        rules = [rule for rule in self.up if rule.reach >= rank]

        def decide(kind: int, severity: int) -> bool | None:
            undecided = False
            for rule in rules:
                if kind not in rule.kinds or severity < rule.min_severity:
                    continue
                if rule.min_grade or rule.alarms_only or rule.summaries_only:
                    undecided = True
                else:
                    return True
            return None if undecided else False

        return decide

    def to_parent(self, env: pb.Envelope, parent_level: Level) -> Decision:
        """Whether ``env`` goes up to a parent of ``parent_level``."""
        rank = _LEVEL_RANK[parent_level]
        misses = []
        for rule in self.up:
            miss = rule.miss(env)
            if not miss and rule.reach < rank:
                miss = f"reaches only the {rule.reach.name.lower()}"
            if not miss:
                return Decision(send=True, rule=rule.name, why=rule.reason)
            if env.kind in rule.kinds:
                misses.append(f"rule {rule.name}: {miss}")
        return Decision(send=False, rule="", why="; ".join(misses) or f"no up rule for {pb.Kind.Name(env.kind)}")

    def national(self, env: pb.Envelope) -> Decision:
        """Whether ``env`` is flagged for the national level (at the province)."""
        for rule in self.up:
            if rule.reach is Reach.NATIONAL and not rule.miss(env):
                return Decision(send=True, rule=rule.name, why=rule.reason)
        return Decision(send=False, rule="", why="no national rule matches")

    def national_kinds(self) -> list[str]:
        """The kinds a national rule may flag (what the national export subscribes to)."""
        kinds = {kind for rule in self.up if rule.reach is Reach.NATIONAL for kind in rule.kinds}
        return sorted(pb.Kind.Name(kind) for kind in kinds)

    def to_child(self, env: pb.Envelope, child_region: str) -> Decision:
        """Whether ``env`` goes down to a child node of ``child_region``."""
        if OVERDUE_ATTRIBUTE in env.attributes:
            return Decision(send=False, rule="", why="an overdue-report alert is for the levels above")
        misses = []
        for rule in self.down:
            if env.kind not in rule.kinds:
                continue
            why = self._match(rule, env, child_region)
            if why.startswith("+"):
                return Decision(send=True, rule=rule.name, why=f"{rule.reason} ({why[1:]})")
            misses.append(f"rule {rule.name}: {why}")
        return Decision(send=False, rule="", why="; ".join(misses) or f"no down rule for {pb.Kind.Name(env.kind)}")

    def _match(self, rule: DownRule, env: pb.Envelope, child: str) -> str:
        """ "+how" when ``rule`` sends ``env`` to ``child``, else why not."""
        regions = self.regions
        if rule.match == "area" and self.touching is not None and _has_area(env.geometry):
            try:
                touched = sorted(c for c in self.touching(env.geometry) if regions.is_within(c, child))
            except InvalidEnvelopeError as exc:  # stored before the boundaries came: route it by region
                touched = []
                if concerns(regions, env.region, child):
                    return f"+region {env.region} concerns {child} (its area cannot be read: {exc})"
            if touched:
                return f"+its area touches {', '.join(touched[:5])}{' ...' if len(touched) > 5 else ''}"
            return f"its area touches nothing in {child}"
        if concerns(regions, env.region, child):
            how = "is" if env.region == child else ("covers" if regions.is_within(child, env.region) else "is within")
            return f"+region {env.region} {how} {child}"
        return f"region {env.region} does not concern {child}"

    def explain(
        self, env: pb.Envelope, *, node: str, level: Level, region: str, parent: bool, came_from: Sequence[str] = ()
    ) -> list[str]:
        """Lines saying where a node sends ``env`` and by which rule (its children are its subregions)."""
        what = f"{pb.Kind.Name(env.kind)} for {env.region} ({self.regions.name(env.region)})"
        lines = [f"{env.id}: {what} at {node}, {level.value} {region}"]
        if came_from:
            lines.append(f"came through {', '.join(came_from)}: never sent back to those")
        if parent:
            up = self.to_parent(env, _parent_level(level))
            lines.append(f"up: {'sent' if up.send else 'not sent'}{f' by rule {up.rule}' if up.rule else ''}: {up.why}")
        elif level is Level.PROVINCE:
            flag = self.national(env)
            if flag.send:
                lines.append(f"national: flagged by rule {flag.rule}: {flag.why}")
        for child in self.regions.children(region):
            down = self.to_child(env, child)
            verdict = f"sent by rule {down.rule}" if down.send else "not sent"
            lines.append(f"down to {child} ({self.regions.name(child)}): {verdict}: {down.why}")
        return lines


def _parent_level(level: Level) -> Level:
    return Level.PROVINCE if level is Level.CITY else Level.CITY


def _has_area(geometry: pb.Geometry) -> bool:
    return bool(geometry.polygons or geometry.circles or geometry.HasField("point"))


def _kinds(names: list[str], key: str, source: str) -> frozenset[int]:
    known = {name: value for name, value in pb.Kind.items() if value}
    if not names:
        raise ConfigError("must name at least one kind", key=key, source=source)
    for name in names:
        if name not in known:
            raise ConfigError(f"unknown kind {name!r} (known: {', '.join(known)})", key=key, source=source)
    return frozenset(known[n] for n in names)


def _enum(value: str, enum_type: type[pb.IncidentGrade] | type[pb.Severity], key: str, source: str) -> int:
    if not value:
        return 0
    names = [n for n, v in enum_type.items() if v]
    if value not in names:
        raise ConfigError(f"unknown value {value!r} (known: {', '.join(names)})", key=key, source=source)
    return int(enum_type.Value(value))


def _up_rule(row: _UpRow, key: str, source: str) -> UpRule:
    reaches = {r.name.lower(): r for r in Reach}
    if row.reach not in reaches:
        raise ConfigError(f"must be one of {', '.join(reaches)}", key=f"{key}.reach", source=source)
    if not row.reason:
        raise ConfigError("a rule says why it exists", key=f"{key}.reason", source=source)
    return UpRule(
        name=row.name,
        kinds=_kinds(row.kinds, f"{key}.kinds", source),
        reason=row.reason,
        reach=reaches[row.reach],
        min_grade=_enum(row.min_grade, pb.IncidentGrade, f"{key}.min_grade", source),
        min_severity=_enum(row.min_severity, pb.Severity, f"{key}.min_severity", source),
        alarms_only=row.alarms_only,
        summaries_only=row.summaries_only,
        source=source,
    )


def _down_rule(row: _DownRow, key: str, source: str) -> DownRule:
    if row.match not in _MATCHES:
        raise ConfigError(f"must be one of {', '.join(_MATCHES)}", key=f"{key}.match", source=source)
    if not row.reason:
        raise ConfigError("a rule says why it exists", key=f"{key}.reason", source=source)
    return DownRule(row.name, _kinds(row.kinds, f"{key}.kinds", source), row.reason, row.match, source)
