"""The log's id index: chunks handed to the indexer process reach its on-disk table."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from gateway import id_index
from gateway.id_index import IdIndex, id_hash, id_hashes


def test_id_hashes_are_those_the_index_on_disk_holds() -> None:
    """The keys of indexes written by earlier versions: 64-bit BLAKE2b of the id, little-endian, signed."""
    known = {"a": 3405396810240292928, "obs-1": 3791839896407700096}
    known["01890a5d-ac96-774b-bcce-b302099a8057"] = -7603083089789275771
    assert id_hashes(list(known)) == list(known.values())
    assert [id_hash(envelope_id) for envelope_id in known] == list(known.values())


def test_chunks_reach_the_table_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "log-ids.sqlite"
    index = IdIndex(path, chunk_entries=1_000)
    assert index.open() == 1
    first = [(id_hash(f"a-{n}"), n + 1) for n in range(1_500)]
    index.add(first)
    index.maybe_flush(1_501)  # over chunk_entries: sent
    second = [(id_hash(f"b-{n}"), 1_501 + n) for n in range(10)]
    index.add(second)
    index.maybe_flush(1_511)  # too few: kept in memory
    assert index.hot == dict(second)
    index.maybe_flush(1_511, force=True)
    index.close()  # waits for the sender, then for the indexer to commit what it was sent
    assert index.failure is None

    again = IdIndex(path)
    assert again.open() == 1_511
    try:
        hashes = [h for h, _ in first[::100] + second]
        found = again.candidates(hashes)
        assert found == {h: [off] for h, off in first[::100] + second}
    finally:
        again.close()


def test_a_chunk_of_the_default_size_is_sent_whole(tmp_path: Path) -> None:
    """Megabytes of ids cross the pipe in many pieces; the writer does not wait for them."""
    path = tmp_path / "log-ids.sqlite"
    index = IdIndex(path)
    index.open()
    pairs = [(id_hash(f"c-{n}"), n + 1) for n in range(index.chunk_entries)]
    index.add(pairs)
    index.maybe_flush(len(pairs) + 1)
    assert not index.hot
    index.close()
    assert index.failure is None
    again = IdIndex(path)
    assert again.open() == len(pairs) + 1
    try:
        last = pairs[-1]
        assert again.candidates([last[0]]) == {last[0]: [last[1]]}
    finally:
        again.close()


def test_an_indexer_started_ahead_takes_the_chunks_and_is_the_only_one(tmp_path: Path) -> None:
    """A node starts the indexer before it takes traffic; the first chunk then goes to that one."""
    path = tmp_path / "log-ids.sqlite"
    index = IdIndex(path, chunk_entries=100)
    index.open()
    index.start()
    started = index._indexer
    assert started is not None
    assert started.is_alive()
    index.start()  # a second call starts nothing more
    pairs = [(id_hash(f"c-{n}"), n + 1) for n in range(150)]
    index.add(pairs)
    index.maybe_flush(151)
    assert index._indexer is started
    index.close()
    assert index.failure is None

    again = IdIndex(path)
    assert again.open() == 151
    try:
        hashes = [h for h, _ in pairs]
        assert again.candidates(hashes) == {h: [off] for h, off in pairs}
    finally:
        again.close()


def _loaded(index: IdIndex) -> None:
    """Waits for the filter's loader (it reads the table in the background at open)."""
    assert index._loader is not None
    index._loader.join()


def _filter_of(index: IdIndex) -> id_index._Filter | None:
    return index._filter


def _table_queries(con: sqlite3.Connection) -> list[str]:
    statements: list[str] = []
    con.set_trace_callback(statements.append)
    return statements


def test_the_filter_spares_the_table_new_ids_and_keeps_those_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "log-ids.sqlite"
    index = IdIndex(path, chunk_entries=100)
    index.open()
    stored = [(id_hash(f"d-{n}"), n + 1) for n in range(150)]
    index.add(stored)
    index.maybe_flush(151)  # to the table: the next open reads it into the filter
    index.close()

    again = IdIndex(path)
    again.open()
    try:
        _loaded(again)
        probe = again.connect_probe()
        asked = _table_queries(probe)
        fresh = id_hashes([f"e-{n}" for n in range(1_000)])
        assert again.candidates(fresh, probe) == {}
        assert not [q for q in asked if "FROM ids" in q], "new ids were looked up in the table"
        hashes = [h for h, _ in stored]
        assert again.candidates(hashes, probe) == {h: [off] for h, off in stored}
        later = [(id_hash(f"f-{n}"), 151 + n) for n in range(10)]
        again.add(later)
        again.maybe_flush(161, force=True)  # on its way to the table: in the filter already
        assert again.candidates([h for h, _ in later], probe) == {h: [off] for h, off in later}
        probe.close()
    finally:
        again.close()


def test_a_full_filter_leaves_every_hash_to_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(id_index, "FILTER_MIN_BITS", 64)  # room for 8 hashes
    path = tmp_path / "log-ids.sqlite"
    index = IdIndex(path, chunk_entries=10)
    index.open()
    _loaded(index)
    pairs = [(id_hash(f"g-{n}"), n + 1) for n in range(20)]
    index.add(pairs)
    with capture_logs() as logs:
        index.maybe_flush(21)
        fresh = id_hashes(["h-1", "h-2"])
        assert index.candidates(fresh) == {}
    assert [entry["event"] for entry in logs] == ["id_filter_full"]
    index.close()
    again = IdIndex(path)
    again.open()
    try:
        _loaded(again)
        assert again._filter is not None
        assert len(again._filter.words) * 64 == id_index.filter_bits(20) == 1024
        assert again.candidates([h for h, _ in pairs]) == {h: [off] for h, off in pairs}
    finally:
        again.close()


def test_filter_sizes() -> None:
    assert id_index.filter_bits(0) == id_index.FILTER_MIN_BITS
    assert id_index.filter_bits(10_000_000) == 1 << 29  # 320 million bits, to the next power of two
    assert id_index.filter_bits(10**12) == id_index.FILTER_MAX_BITS


def test_chunks_sent_while_the_filter_loads_are_added_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go = threading.Event()
    load = IdIndex._load_filter

    def held_back(self: IdIndex) -> None:
        go.wait(30)
        load(self)

    monkeypatch.setattr(IdIndex, "_load_filter", held_back)
    index = IdIndex(tmp_path / "log-ids.sqlite", chunk_entries=10)
    index.open()
    try:
        pairs = [(id_hash(f"k-{n}"), n + 1) for n in range(10)]
        index.add(pairs)
        index.maybe_flush(11)
        assert index._filter is None  # not loaded yet: the chunk waits for the loader
        go.set()
        _loaded(index)
        loaded = _filter_of(index)
        assert loaded is not None
        assert loaded.may_hold(np.array([h for h, _ in pairs], dtype=np.int64)).all()
    finally:
        go.set()
        index.close()


def _table_offsets(path: Path) -> list[int]:
    con = sqlite3.connect(path)
    try:
        return sorted(off for (off,) in con.execute("SELECT off FROM ids"))
    finally:
        con.close()


@pytest.mark.parametrize(("interval", "left"), [(0.0, list(range(9, 21))), (3600.0, list(range(5, 21)))])
def test_forgets_are_spaced_out_and_what_waits_is_passed_over(tmp_path: Path, interval: float, left: list[int]) -> None:
    """A forget reads the whole table: the second of two in a row waits for the interval (the
    entries it would drop are below the log's oldest offset, which lookups pass over)."""
    path = tmp_path / "log-ids.sqlite"
    index = IdIndex(path, chunk_entries=10, forget_interval_s=interval)
    index.open()
    index.start()
    index.add([(id_hash(f"m-{n}"), n) for n in range(1, 21)])
    index.maybe_flush(21)
    index.forget_before(5)
    index.forget_before(9)
    index.close()  # the indexer has done all it was sent
    assert _table_offsets(path) == left
