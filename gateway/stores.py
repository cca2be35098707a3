"""The node's and the agent's own small SQLite stores (outbox, edge ledger, reports, dead letters):
how they are opened, and their write transactions.

Connections are opened with ``isolation_level=None`` (no implicit transactions), so each store says
where its transactions begin and end: ``BEGIN IMMEDIATE`` takes the write lock at once, so a
transaction never fails half-way for want of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_store(path: Path, schema: str) -> sqlite3.Connection:
    """Opens (creating it and its folder if need be) a store whose every commit survives a crash:
    WAL, synchronous=FULL; usable from any one thread at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(schema)
    return db


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: committed (on disk, as the store's synchronous setting says) when the
    block ends, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
