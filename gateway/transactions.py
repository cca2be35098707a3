"""Write transactions on the node's and the agent's own SQLite stores (outbox, reports, dead letters).

The connections are opened with ``isolation_level=None`` (no implicit transactions), so each store
says where its transactions begin and end: ``BEGIN IMMEDIATE`` takes the write lock at once, so a
transaction never fails half-way for want of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


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
