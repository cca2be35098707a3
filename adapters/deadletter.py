"""The dead-letter store: every input an adapter could not deliver, kept with the reason.

Nothing a department sends is dropped silently. An input that does not decode, or whose envelopes
the gateway refuses, is stored here whole (the bytes as received) with where it came from and
why; an operator lists them (`yiwang dead-letters list`) and, after fixing the cause (a mapping, a
certificate, the sender's system), asks for a replay (`yiwang dead-letters replay ID`): the runner
of that adapter takes it up again, even if the node was down when the replay was asked for.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.stores import open_store, write_transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS letters (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,          -- when it was stored (POSIX seconds)
    adapter TEXT NOT NULL,     -- the runner's name
    format TEXT NOT NULL,
    source TEXT NOT NULL,      -- file name, URL or peer identity it came from
    kind TEXT NOT NULL,        -- reason group: xml, hostile, value, rejected, ...
    reason TEXT NOT NULL,
    data BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'stored',  -- stored, replay (asked for), replayed
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS letters_adapter_state ON letters (adapter, state);
"""

STORED = "stored"
REPLAY = "replay"
REPLAYED = "replayed"


@dataclass(frozen=True, slots=True)
class Letter:
    id: int
    at: float
    adapter: str
    format: str
    source: str
    kind: str
    reason: str
    data: bytes
    state: str
    attempts: int

    def summary(self) -> dict[str, object]:
        """What `yiwang dead-letters list` prints: everything but the bytes."""
        return {
            "id": self.id,
            "at": self.at,
            "adapter": self.adapter,
            "format": self.format,
            "source": self.source,
            "kind": self.kind,
            "reason": self.reason,
            "bytes": len(self.data),
            "state": self.state,
            "attempts": self.attempts,
        }


class DeadLetters:
    """A small SQLite file (WAL, synchronous=FULL): letters are rare and each must survive a crash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._con = open_store(path, _SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, write_transaction(self._con) as con:
            yield con

    def add(self, adapter: str, fmt: str, *, source: str, kind: str, reason: str, data: bytes) -> int:
        """Stores an input; durable when this returns. Returns its id."""
        now = time.time()
        with self._transaction() as con:
            cursor = con.execute(
                "INSERT INTO letters (at, adapter, format, source, kind, reason, data, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (now, adapter, fmt, source, kind, reason, data, now),
            )
            return int(cursor.lastrowid or 0)

    def list(self, adapter: str = "", state: str = "") -> list[Letter]:
        query = "SELECT * FROM letters"
        conditions, args = [], []
        if adapter:
            conditions.append("adapter = ?")
            args.append(adapter)
        if state:
            conditions.append("state = ?")
            args.append(state)
        if conditions:
            query += " WHERE " + " AND ".join(conditions)
        with self._lock:
            rows = self._con.execute(query + " ORDER BY id", args).fetchall()
        return [Letter(*row[:10]) for row in rows]

    def get(self, letter_id: int) -> Letter | None:
        with self._lock:
            row = self._con.execute("SELECT * FROM letters WHERE id = ?", (letter_id,)).fetchone()
        return Letter(*row[:10]) if row else None

    def ask_replay(self, letter_id: int) -> bool:
        """Marks a letter for replay by its runner; False if there is no such letter."""
        with self._transaction() as con:
            cursor = con.execute(
                "UPDATE letters SET state = ?, updated = ? WHERE id = ?", (REPLAY, time.time(), letter_id)
            )
            return cursor.rowcount > 0

    def settle(self, letter_id: int, *, delivered: bool, reason: str = "", kind: str = "") -> None:
        """Records a replay's outcome: delivered, or stored again with the new reason."""
        with self._transaction() as con:
            if delivered:
                con.execute(
                    "UPDATE letters SET state = ?, attempts = attempts + 1, updated = ? WHERE id = ?",
                    (REPLAYED, time.time(), letter_id),
                )
            else:
                con.execute(
                    "UPDATE letters SET state = ?, attempts = attempts + 1, reason = ?, kind = ?, updated = ?"
                    " WHERE id = ?",
                    (STORED, reason, kind, time.time(), letter_id),
                )

    def count(self, adapter: str = "") -> int:
        with self._lock:
            if adapter:
                row = self._con.execute("SELECT count(*) FROM letters WHERE adapter = ?", (adapter,)).fetchone()
            else:
                row = self._con.execute("SELECT count(*) FROM letters").fetchone()
        return int(row[0])
