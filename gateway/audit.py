"""The audit log: security events in an append-only file where each record seals the one before.

Each line is a JSON object with a sequence number, a time, the event and its fields, the hash of
the previous record (``prev``) and its own hash: SHA-256 over the previous hash and the record's
canonical JSON. Editing a record breaks its hash; removing or reordering records breaks the chain
or the sequence. Removing records from the end cannot be seen from the file alone, so the head
(sequence and hash of the last record) is also kept in ``<file>.head``; keeping a copy of the head
somewhere else (a parent node, a ticket) is what makes truncation evident.

Recording never blocks: events go to a queue that a thread of their own writes out; if that queue is
full (the disk stalls), events are counted as dropped and the drop itself is recorded when the
writer catches up, so delivery of messages never waits for the audit trail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("yiwang.audit")

GENESIS = "0" * 64
_RESERVED = frozenset({"seq", "time", "event", "prev", "hash"})


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def seal(record: dict[str, Any], prev: str) -> str:
    """The hash of a record (without its own ``hash`` field) chained to the previous hash."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(bytes.fromhex(prev) + _canonical(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    records: int
    head: str
    problem: str = ""  # names the record and what is wrong with it


def verify(path: Path, expected_head: str | None = None) -> Verdict:
    """Checks the whole chain of an audit file (and its head, from ``.head`` or as given)."""
    prev, seq, count = GENESIS, 0, 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return Verdict(ok=False, records=count, head=prev, problem=f"line {number}: not a JSON record")
            if not isinstance(record, dict):
                return Verdict(ok=False, records=count, head=prev, problem=f"line {number}: not a JSON object")
            if record.get("seq") != seq + 1:
                problem = f"line {number}: sequence {record.get('seq')} where {seq + 1} was due"
                return Verdict(ok=False, records=count, head=prev, problem=f"{problem} (a record was removed or moved)")
            if record.get("prev") != prev:
                return Verdict(
                    ok=False,
                    records=count,
                    head=prev,
                    problem=f"record {seq + 1}: does not follow record {seq} (chain broken)",
                )
            if record.get("hash") != seal(record, prev):
                return Verdict(
                    ok=False,
                    records=count,
                    head=prev,
                    problem=f"record {seq + 1}: its content was changed (hash mismatch)",
                )
            prev, seq, count = record["hash"], seq + 1, count + 1
    head_file = path.with_name(path.name + ".head")
    if expected_head is None and head_file.exists():
        expected_head = json.loads(head_file.read_text(encoding="utf-8")).get("hash")
    if expected_head is not None and expected_head != prev:
        problem = f"the file ends at record {seq}, but its head is {expected_head[:16]}…"
        return Verdict(ok=False, records=count, head=prev, problem=f"{problem}: records were removed from the end")
    return Verdict(ok=True, records=count, head=prev)


class AuditLog:
    """Appends sealed records to one file from a writer thread; ``record`` never blocks."""

    def __init__(self, path: Path, *, max_queued: int = 10_000) -> None:
        self.path = path
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(max_queued)
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._prev = GENESIS
        self._seq = 0

    def open(self) -> AuditLog:
        """Checks the existing chain (a broken one is moved aside, not extended) and starts the writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            verdict = verify(self.path)
            if not verdict.ok:
                aside = self.path.with_name(f"{self.path.name}.broken-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}")
                self.path.replace(aside)
                log.error("audit_chain_broken", path=str(self.path), problem=verdict.problem, moved_to=str(aside))
            else:
                self._prev, self._seq = verdict.head, verdict.records
        self._thread = threading.Thread(target=self._write_loop, name="yiwang-audit", daemon=True)
        self._thread.start()
        return self

    def record(self, event: str, **fields: Any) -> None:
        """Queues an event; counts it as dropped rather than wait if the writer is far behind."""
        clash = _RESERVED & fields.keys()
        if clash:
            raise ValueError(f"audit fields may not be named {sorted(clash)}")
        try:
            self._queue.put_nowait((event, fields))
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _write_loop(self) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            while (item := self._queue.get()) is not None:
                batch = [item]
                while True:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        self._queue.put(None)
                        break
                    batch.append(more)
                with self._lock:
                    dropped, self._dropped = self._dropped, 0
                if dropped:
                    batch.append(("audit_events_dropped", {"count": dropped}))
                for event, fields in batch:
                    self._seq += 1
                    record = {
                        "seq": self._seq,
                        "time": dt.datetime.now(dt.UTC).isoformat(),
                        "event": event,
                        **fields,
                        "prev": self._prev,
                    }
                    record["hash"] = self._prev = seal(record, self._prev)
                    out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
                out.flush()
                head = json.dumps({"seq": self._seq, "hash": self._prev})
                tmp = self.path.with_name(self.path.name + ".head.tmp")
                tmp.write_text(head, encoding="utf-8")
                tmp.replace(self.path.with_name(self.path.name + ".head"))
