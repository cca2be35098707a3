"""Reporting that cannot go missing: incident report chains, their deadlines, and what is overdue.

Each node follows the incident reports in its own log (首报 initial, 续报 follow-up, 终报 final) from a
durable cursor and keeps, in ``DATA_DIR/reports.sqlite``, each incident's chain and the obligations
it creates:

- onward: a report that routing sends up must be with the parent (its link acknowledged it) within
  the deadline of its grade;
- follow-up: an open incident received from below must have its next report within the interval of
  its grade, until the final report;
- link: a child node whose link is down longer than the tolerance (watched by the parent).

An obligation past its deadline is overdue: it is counted in ``yiwang_reports_overdue``, listed by
``yiwang reports overdue``, and raises one ALERT envelope in the node's own log for the duty
officers (attribute ``yiwang.overdue``), which routing carries up, never down. The deadlines are
configurable (``[reports]`` of the node's configuration); the defaults follow the national rules:
each level passes a report on within two hours, within half an hour for grades II and I.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from yiwang.v1 import envelope_pb2 as pb
from yiwang.v1 import gateway_pb2 as gw

from gateway.config import ReportsSection
from gateway.federation import UP_CURSOR
from gateway.regions import Level
from gateway.routing import OVERDUE_ATTRIBUTE, Routing
from gateway.service import GatewayService, Peer
from gateway.stores import open_store, write_transaction

log = structlog.get_logger("yiwang.reports")

_T = TypeVar("_T")
CURSOR: Final = "reports"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    incident_id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    grade INTEGER NOT NULL,
    stage INTEGER NOT NULL,
    reports INTEGER NOT NULL,
    title TEXT NOT NULL,
    first_ns INTEGER NOT NULL,
    last_ns INTEGER NOT NULL,
    closed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS obligations (
    kind TEXT NOT NULL,          -- onward, follow_up, link
    subject TEXT NOT NULL,       -- the incident id, or the child node's link
    offset INTEGER NOT NULL,     -- the report's offset in the log; for a link, the second its outage began
    due_ns INTEGER NOT NULL,
    met_ns INTEGER,
    raised_ns INTEGER,
    detail TEXT NOT NULL,
    PRIMARY KEY (kind, subject, offset)
);
CREATE TABLE IF NOT EXISTS chain (
    incident_id TEXT NOT NULL,
    offset INTEGER NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (incident_id, offset)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class ReportRules:
    """Deadlines, in seconds, by incident grade (IncidentGrade values)."""

    onward_s: dict[int, float]
    follow_up_s: dict[int, float]
    link_tolerance_s: float
    check_interval_s: float = 5.0

    def onward(self, grade: int) -> float:
        return self.onward_s.get(grade, self.onward_s[pb.GRADE_GENERAL])

    def follow_up(self, grade: int) -> float:
        return self.follow_up_s.get(grade, self.follow_up_s[pb.GRADE_GENERAL])


_GRADES: Final = (pb.GRADE_GENERAL, pb.GRADE_LARGER, pb.GRADE_MAJOR, pb.GRADE_EXTRAORDINARY)


def rules_of(section: ReportsSection) -> ReportRules:
    """The deadlines of a node's ``[reports]`` section."""
    return ReportRules(
        onward_s={g: m * 60.0 for g, m in zip(_GRADES, section.onward_minutes, strict=True)},
        follow_up_s={g: m * 60.0 for g, m in zip(_GRADES, section.follow_up_minutes, strict=True)},
        link_tolerance_s=section.link_tolerance_minutes * 60.0,
        check_interval_s=section.check_interval_s,
    )


@dataclass(frozen=True)
class Overdue:
    kind: str
    subject: str
    offset: int
    due_ns: int
    detail: str
    raised: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "offset": self.offset,
            "due": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.due_ns / 1e9)),
            "detail": self.detail,
            "alert_raised": self.raised,
        }


class ReportMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.overdue = Gauge(
            "yiwang_reports_overdue", "Obligations past their deadline, by kind", ["kind"], registry=registry
        )
        self.raised = Counter("yiwang_reports_alerts", "Overdue alerts raised, by kind", ["kind"], registry=registry)


def open_db(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    else:
        db = open_store(path, _SCHEMA)
    return db


def overdue(db: sqlite3.Connection, now_ns: int) -> list[Overdue]:
    """Obligations not met by their deadline."""
    rows = db.execute(
        "SELECT kind, subject, offset, due_ns, detail, raised_ns FROM obligations "
        "WHERE met_ns IS NULL AND due_ns <= ? ORDER BY due_ns",
        (now_ns,),
    ).fetchall()
    return [Overdue(k, s, o, d, t, r is not None) for k, s, o, d, t, r in rows]


MAX_REFERENCED = 64  # reports an overdue alert references (the validator's limit of references)


class ReportTracker:
    """Follows the node's log for incident reports, checks the deadlines, and raises what is overdue."""

    def __init__(
        self,
        service: GatewayService,
        peer: Peer,
        *,
        routing: Routing,
        rules: ReportRules,
        path: Path,
        metrics: ReportMetrics,
        parent_level: Level | None,
        children_down: Callable[[], dict[str, float]] = dict,
    ) -> None:
        self.service = service
        self.peer = peer
        self.routing = routing
        self.rules = rules
        self.path = path
        self.metrics = metrics
        self.parent_level = parent_level
        self.children_down = children_down  # a child link's label -> since when it is down (monotonic)
        # One thread owns the database: a cancelled caller never leaves it mid-statement for close().
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="yiwang-reports")
        self.db = self._thread.submit(open_db, path).result()
        self._position: int | None = None  # the cursor, once loaded (this tracker is its only writer)

    def close(self) -> None:
        """Closes the database once the operations already started are done (blocking)."""
        self._thread.submit(self.db.close).result()
        self._thread.shutdown()

    async def _in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def run(self) -> None:
        """Follows the log and checks the deadlines until cancelled: the log's new reports as they
        are appended, the deadlines every ``check_interval_s`` (not at every append)."""
        log_ = self.service.log
        loop = asyncio.get_running_loop()
        checked = -math.inf
        while True:
            await self.follow()
            if loop.time() - checked >= self.rules.check_interval_s:
                await self.check()
                checked = loop.time()
            wait = max(0.0, checked + self.rules.check_interval_s - loop.time())
            with contextlib.suppress(TimeoutError):
                await log_.wait_beyond(log_.next_offset, timeout=wait)
            if log_.closed:
                return

    async def follow(self) -> None:
        """Takes in the incident reports appended since the cursor."""
        log_ = self.service.log
        if self._position is None:
            self._position = await log_.load_position(CURSOR) or log_.oldest_offset
        position = self._position
        start_position = position
        while position < log_.next_offset:
            for stored in await log_.read(position, 1000):
                chosen = stored.of_kind(pb.INCIDENT, stored.index_at(position))
                if chosen:
                    reports = [(d.offset, d.envelope) for d in stored.deliveries(chosen)]
                    await self._in_thread(self._take, reports, stored.appended_ns)
                position = stored.next_offset
        if position != start_position:
            await log_.save_position(CURSOR, position)
            self._position = position

    def _take(self, reports: list[tuple[int, pb.Envelope]], appended_ns: int) -> None:
        with write_transaction(self.db):
            for offset, env in reports:
                self._take_one(offset, env, appended_ns)

    def _take_one(self, offset: int, env: pb.Envelope, appended_ns: int) -> None:
        db, incident = self.db, env.incident
        key = incident.incident_id or env.id
        closed = incident.stage == pb.STAGE_FINAL
        title = incident.title or incident.event_name or key
        db.execute(
            "INSERT INTO incidents VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT (incident_id) DO UPDATE SET "
            "grade = max(grade, excluded.grade), stage = excluded.stage, reports = reports + 1, "
            "title = excluded.title, last_ns = excluded.last_ns, closed = max(closed, excluded.closed)",
            (key, env.region, incident.grade, incident.stage, title, appended_ns, appended_ns, int(closed)),
        )
        db.execute("INSERT OR IGNORE INTO chain VALUES (?, ?, ?)", (key, offset, env.id))
        grade = db.execute("SELECT grade FROM incidents WHERE incident_id = ?", (key,)).fetchone()[0]
        grade_name = pb.IncidentGrade.Name(grade)
        if self.parent_level is not None and self.routing.to_parent(env, self.parent_level).send:
            due = appended_ns + int(self.rules.onward(grade) * 1e9)
            detail = f"{title} ({grade_name}, report {incident.report_number or '?'}) not yet with the parent node"
            db.execute(
                "INSERT OR IGNORE INTO obligations VALUES ('onward', ?, ?, ?, NULL, NULL, ?)",
                (key, offset, due, detail),
            )
        came_from_below = any(hop.node != self.service.node_id for hop in env.provenance.hops)
        # A new report meets the follow-up it was due as (and, unless final, is followed by the next).
        db.execute(
            "UPDATE obligations SET met_ns = ? WHERE kind = 'follow_up' AND subject = ? AND met_ns IS NULL",
            (appended_ns, key),
        )
        if came_from_below and not closed:
            due = appended_ns + int(self.rules.follow_up(grade) * 1e9)
            detail = f"{title} ({grade_name}) is open: its next report (续报 or 终报) is due"
            db.execute(
                "INSERT OR IGNORE INTO obligations VALUES ('follow_up', ?, ?, ?, NULL, NULL, ?)",
                (key, offset, due, detail),
            )

    async def earlier(self, incident_id: str, offset: int) -> list[str]:
        """The ids of the reports of an incident stored before ``offset``, oldest first."""
        return await self._in_thread(self._earlier, incident_id, offset)

    def _earlier(self, incident_id: str, offset: int) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM chain WHERE incident_id = ? AND offset < ? ORDER BY offset", (incident_id, offset)
        )
        return [row[0] for row in rows]

    async def check(self) -> list[Overdue]:
        """Marks what was met, raises an alert for each newly overdue obligation; returns the overdue."""
        now_ns = time.time_ns()
        up_position = await self.service.log.load_position(UP_CURSOR) if self.parent_level is not None else None
        late = await self._in_thread(self._check, now_ns, up_position)
        fresh = [o for o in late if not o.raised]
        if fresh:
            await self._raise(fresh, now_ns)
        for kind in ("onward", "follow_up", "link"):
            self.metrics.overdue.labels(kind=kind).set(sum(1 for o in late if o.kind == kind))
        return late

    def _check(self, now_ns: int, up_position: int | None) -> list[Overdue]:
        db = self.db
        with write_transaction(db):
            if up_position is not None:
                db.execute(
                    "UPDATE obligations SET met_ns = ? WHERE kind = 'onward' AND met_ns IS NULL AND offset < ?",
                    (now_ns, up_position),
                )
            down = self.children_down()
            monotonic = time.monotonic()
            open_links = db.execute("SELECT subject FROM obligations WHERE kind = 'link' AND met_ns IS NULL").fetchall()
            db.executemany(
                "UPDATE obligations SET met_ns = ? WHERE kind = 'link' AND subject = ? AND met_ns IS NULL",
                [(now_ns, subject) for (subject,) in open_links if subject not in down],  # linked again
            )
            for child, since in down.items():
                down_ns = now_ns - int((monotonic - since) * 1e9)
                due = down_ns + int(self.rules.link_tolerance_s * 1e9)
                detail = f"the link of {child} is down since {time.strftime('%H:%M:%S', time.gmtime(down_ns / 1e9))}Z"
                db.execute(
                    "INSERT OR IGNORE INTO obligations VALUES ('link', ?, ?, ?, NULL, NULL, ?)",
                    (child, down_ns // 1_000_000_000, due, detail),
                )
            return overdue(db, now_ns)

    async def _raise(self, late: list[Overdue], now_ns: int) -> None:
        request = gw.PublishRequest()
        for item in late:
            reports = await self._in_thread(self._chain, item.subject) if item.kind != "link" else []
            request.envelopes.append(self._alert(item, now_ns, reports))
        reply = await self.service.publish_batch(request.SerializeToString(), self.peer)
        raised = [
            item
            for item, result in zip(late, reply.results, strict=True)
            if result.outcome != gw.PublishResult.REJECTED
        ]
        for item, result in zip(late, reply.results, strict=True):
            if result.outcome == gw.PublishResult.REJECTED:
                log.error("overdue_alert_refused", subject=item.subject, field=result.field, reason=result.reason)
        await self._in_thread(self._mark_raised, raised, now_ns)
        for item in raised:
            self.metrics.raised.labels(kind=item.kind).inc()
            log.warning("report_overdue", kind=item.kind, subject=item.subject, detail=item.detail)

    def _mark_raised(self, raised: list[Overdue], now_ns: int) -> None:
        with write_transaction(self.db):
            self.db.executemany(
                "UPDATE obligations SET raised_ns = ? WHERE kind = ? AND subject = ? AND offset = ?",
                [(now_ns, o.kind, o.subject, o.offset) for o in raised],
            )

    def _chain(self, incident_id: str) -> list[str]:
        rows = self.db.execute("SELECT id FROM chain WHERE incident_id = ? ORDER BY offset", (incident_id,))
        return [row[0] for row in rows]

    def _alert(self, item: Overdue, now_ns: int, reports: list[str]) -> pb.Envelope:
        """The alert for an overdue item; ``reports`` are the ids of the incident's reports so far."""
        service = self.service
        env = pb.Envelope(
            id=f"overdue-{service.node_id}-{item.kind}-{item.subject}-{item.offset}"[:200],
            kind=pb.ALERT,
            region=service.region,
            status=pb.ACTUAL,
            severity=pb.ORANGE,
            priority=0,
        )
        env.origin.agency = "emergency"
        env.origin.region = service.region
        env.origin.node = service.node_id
        env.origin.system = "yiwang-reports"
        env.sent_at.FromNanoseconds(now_ns)
        env.attributes[OVERDUE_ATTRIBUTE] = item.kind
        env.attributes["yiwang.overdue.subject"] = item.subject[:200]
        what = {"onward": "上报超时", "follow_up": "续报超时", "link": "链路中断超时"}[item.kind]
        env.alert.msg_type = "Alert"
        env.alert.scope = "Restricted"
        info = env.alert.infos.add(language="zh-CN", event=what, headline=f"{what}: {item.subject}"[:200])
        info.description = item.detail
        if reports:
            shown = reports[-MAX_REFERENCED:]  # the latest, when a long chain has more than an alert may name
            env.references.extend(shown)
            info.description += f"; reports so far: {', '.join(reports)}"[:4000]
        info.urgency, info.severity, info.certainty = "Immediate", "Severe", "Observed"
        return env
