"""Which readings of which terminal the node has stored: (terminal, session, sequence) ranges.

The ingest asks the ledger which readings of a batch are new before it appends them, records them
once the log has them, and answers the terminal with what it stored and which ranges it misses.
Each envelope made from readings also names its ranges (attributes ``edge.*``), and the ledger
remembers the log offset up to which it is complete: after a crash between an append and the
ledger's own commit, the ingest replays that short tail of the log into the ledger, so a reading
sent again is never stored twice.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.stores import open_store

Range = tuple[int, int]  # inclusive

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stored (
    terminal TEXT NOT NULL,
    session INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (terminal, session, first)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint, with touching ranges joined."""
    out: list[Range] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def ranges_of(seqs: Iterable[int]) -> list[Range]:
    """Consecutive runs of sequence numbers."""
    out: list[Range] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def format_ranges(ranges: Sequence[Range]) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)


def parse_ranges(text: str) -> list[Range]:
    out = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.append((int(first), int(last or first)))
    return out


class RangeSet:
    """Disjoint inclusive ranges with membership in O(log n)."""

    def __init__(self, ranges: Iterable[Range] = ()) -> None:
        self.ranges = merge(ranges)
        self._firsts = [a for a, _ in self.ranges]

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_right(self._firsts, seq) - 1
        return i >= 0 and self.ranges[i][1] >= seq

    def add(self, ranges: Iterable[Range]) -> None:
        self.ranges = merge([*self.ranges, *ranges])
        self._firsts = [a for a, _ in self.ranges]

    def missing(self, first: int, last: int) -> list[Range]:
        """The parts of [first, last] not in the set, in order (a chunk's range: new, stored, or split)."""
        out: list[Range] = []
        position = first
        i = max(0, bisect.bisect_right(self._firsts, first) - 1)
        while i < len(self.ranges) and position <= last:
            low, high = self.ranges[i]
            if high >= position:
                if low > last:
                    break
                if low > position:
                    out.append((position, low - 1))
                position = high + 1
            i += 1
        if position <= last:
            out.append((position, last))
        return out

    def holes(self) -> list[Range]:
        """What is missing between 1 and the highest stored number."""
        out: list[Range] = []
        expected = 1
        for first, last in self.ranges:
            if first > expected:
                out.append((expected, first - 1))
            expected = last + 1
        return out


class EdgeLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._con = open_store(path, _SCHEMA)
        self._sets: dict[tuple[str, int], RangeSet] = {}
        rows = self._con.execute("SELECT terminal, session, first, last FROM stored").fetchall()
        grouped: dict[tuple[str, int], list[Range]] = {}
        for terminal, session, first, last in rows:
            grouped.setdefault((terminal, session), []).append((first, last))
        self._sets = {key: RangeSet(ranges) for key, ranges in grouped.items()}
        row = self._con.execute("SELECT value FROM meta WHERE key = 'complete_to'").fetchone()
        self.complete_to = int(row[0]) if row else 0  # every edge envelope below this log offset is recorded

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def stored(self, terminal: str, session: int) -> RangeSet:
        return self._sets.setdefault((terminal, session), RangeSet())

    def new(self, terminal: str, session: int, seqs: Iterable[int]) -> list[int]:
        """The sequence numbers not stored yet."""
        have = self.stored(terminal, session)
        return [s for s in seqs if s not in have]

    def record(self, entries: Sequence[tuple[str, int, Sequence[Range]]], complete_to: int) -> None:
        """Remembers stored ranges (durable on return) and how far the log is covered."""
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                for terminal, session, ranges in entries:
                    rangeset = self.stored(terminal, session)
                    rangeset.add(ranges)
                    self._con.execute("DELETE FROM stored WHERE terminal = ? AND session = ?", (terminal, session))
                    self._con.executemany(
                        "INSERT INTO stored VALUES (?, ?, ?, ?)",
                        [(terminal, session, a, b) for a, b in rangeset.ranges],
                    )
                if complete_to > self.complete_to:
                    self._con.execute("INSERT OR REPLACE INTO meta VALUES ('complete_to', ?)", (complete_to,))
                    self.complete_to = complete_to
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    def sessions(self, terminal: str) -> list[int]:
        return sorted(s for t, s in self._sets if t == terminal)
