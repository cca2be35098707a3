"""The log's id index: chunks handed to the indexer thread become sorted runs on disk, which are merged."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from gateway import id_index
from gateway.errors import LogInUseError
from gateway.id_index import IdIndex, id_hash, id_hashes


def test_id_hashes_are_those_the_index_on_disk_holds() -> None:
    """The keys of indexes written by earlier versions: 64-bit BLAKE2b of the id, little-endian, signed."""
    known = {"a": 3405396810240292928, "obs-1": 3791839896407700096}
    known["01890a5d-ac96-774b-bcce-b302099a8057"] = -7603083089789275771
    assert id_hashes(list(known)) == list(known.values())
    assert [id_hash(envelope_id) for envelope_id in known] == list(known.values())


def test_chunks_reach_the_table_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "log-ids"
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
    index.close()  # waits for the indexer to write what it was handed
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
    """Megabytes of ids, sorted and written by the indexer thread."""
    path = tmp_path / "log-ids"
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
    path = tmp_path / "log-ids"
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


def _searches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the number of hashes each search of a run is asked about."""
    asked: list[int] = []
    find = id_index._Run.find

    def counted(run: id_index._Run, hashes: np.ndarray) -> object:
        asked.append(len(hashes))
        return find(run, hashes)

    monkeypatch.setattr(id_index._Run, "find", counted)
    return asked


def test_the_filter_spares_the_runs_new_ids_and_keeps_those_they_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log-ids"
    index = IdIndex(path, chunk_entries=100)
    index.open()
    stored = [(id_hash(f"d-{n}"), n + 1) for n in range(150)]
    index.add(stored)
    index.maybe_flush(151)  # to disk: the next open reads it into the filter
    index.close()

    again = IdIndex(path)
    again.open()
    try:
        _loaded(again)
        searched = _searches(monkeypatch)
        fresh = id_hashes([f"e-{n}" for n in range(1_000)])
        assert again.candidates(fresh) == {}
        assert sum(searched) < 50, "new ids were searched for in the runs"
        hashes = [h for h, _ in stored]
        assert again.candidates(hashes) == {h: [off] for h, off in stored}
        later = [(id_hash(f"f-{n}"), 151 + n) for n in range(10)]
        again.add(later)
        again.maybe_flush(161, force=True)  # on its way to disk: in the filter already
        assert again.candidates([h for h, _ in later]) == {h: [off] for h, off in later}
    finally:
        again.close()


def test_a_full_filter_leaves_every_hash_to_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(id_index, "FILTER_MIN_BITS", 64)  # room for 8 hashes
    path = tmp_path / "log-ids"
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

    def held_back(self: IdIndex, runs: tuple[id_index._Run, ...]) -> None:
        go.wait(30)
        load(self, runs)

    monkeypatch.setattr(IdIndex, "_load_filter", held_back)
    index = IdIndex(tmp_path / "log-ids", chunk_entries=10)
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


def _runs_on_disk(path: Path) -> list[tuple[int, int, list[int]]]:
    """(first offset, offset after the last, the offsets held) of each run file, in offset order."""
    runs = sorted((id_index._Run.load(p) for p in path.glob("*.run")), key=lambda run: run.lo)
    return [(run.lo, run.upto, sorted(run.offsets.tolist())) for run in runs]


def _write(index: IdIndex, first: int, count: int, prefix: str = "m") -> list[tuple[int, int]]:
    """Hands ``count`` ids at offsets from ``first`` on to the indexer, as one chunk."""
    pairs = [(id_hash(f"{prefix}-{n}"), n) for n in range(first, first + count)]
    index.add(pairs)
    index.maybe_flush(first + count, force=True)
    assert index.settle()
    return pairs


def _indexed(path: Path, chunks: int, *, first: int = 1, size: int = 10) -> list[tuple[int, int]]:
    """Opens the index at ``path``, hands it ``chunks`` chunks of ``size`` ids from offset ``first``
    on, one after the other, and closes it."""
    index = IdIndex(path, chunk_entries=size)
    index.open()
    pairs: list[tuple[int, int]] = []
    for k in range(chunks):
        pairs += _write(index, first + size * k, size)
    index.close()
    return pairs


def test_runs_are_merged_by_size_and_lookups_find_every_id(tmp_path: Path) -> None:
    path = tmp_path / "log-ids"
    pairs = _indexed(path, 3)
    assert [(lo, upto) for lo, upto, _ in _runs_on_disk(path)] == [(1, 11), (11, 21), (21, 31)]

    again = IdIndex(path, chunk_entries=10)
    assert again.open() == 31
    pairs += _write(again, 31, 10)  # the fourth run of one size: the four become one
    again.close()
    assert _runs_on_disk(path) == [(1, 41, list(range(1, 41)))]

    third = IdIndex(path)
    assert third.open() == 41
    try:
        _loaded(third)
        assert third.candidates([h for h, _ in pairs]) == {h: [off] for h, off in pairs}
        assert third.candidates(id_hashes(["n-1", "n-2"])) == {}
    finally:
        third.close()


def test_a_small_run_before_larger_ones_is_merged_with_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk sent early, by time, is smaller than the full ones after it; it does not stay alone."""
    monkeypatch.setattr(id_index, "RUN_LEVEL_BASE", 4)  # level 0 below 16 ids, level 1 below 64
    path = tmp_path / "log-ids"
    index = IdIndex(path, chunk_entries=20)
    index.open()
    _write(index, 1, 3)
    for k in range(4):
        _write(index, 4 + 20 * k, 20)
    index.close()
    assert _runs_on_disk(path) == [(1, 84, list(range(1, 84)))]


def test_runs_of_the_final_level_are_not_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(id_index, "RUN_LEVEL_BASE", 1)
    monkeypatch.setattr(id_index, "FINAL_LEVEL", 1)  # runs of 4 ids and more are final
    path = tmp_path / "log-ids"
    _indexed(path, 5, size=4)
    assert len(_runs_on_disk(path)) == 5


def test_forgets_delete_the_runs_below_and_merges_leave_out_the_ids_below(tmp_path: Path) -> None:
    path = tmp_path / "log-ids"
    index = IdIndex(path, chunk_entries=10)
    index.open()
    for k in range(3):
        _write(index, 1 + 10 * k, 10)
    index.forget_before(15)  # the first run is wholly below; the second keeps what it holds for now
    index.close()
    assert _runs_on_disk(path) == [(11, 21, list(range(11, 21))), (21, 31, list(range(21, 31)))]

    again = IdIndex(path, chunk_entries=10)
    assert again.open() == 31
    again.forget_before(15)
    for k in range(2):
        _write(again, 31 + 10 * k, 10)  # four runs: merged, without offsets 11 to 14
    again.close()
    assert _runs_on_disk(path) == [(11, 51, list(range(15, 51)))]


def test_a_run_cut_short_has_the_whole_log_indexed_again(tmp_path: Path) -> None:
    path = tmp_path / "log-ids"
    _indexed(path, 2)
    second = path / id_index._Run.file_name(11, 21)
    second.write_bytes(second.read_bytes()[:-8])
    (path / (id_index._Run.file_name(21, 31) + ".tmp")).write_bytes(b"half a run")

    again = IdIndex(path)
    with capture_logs() as logs:
        assert again.open() == 1  # from the start: the index must not miss an id the log holds
    again.close()
    assert [(e["event"], e["reason"]) for e in logs if e["log_level"] == "error"] == [
        ("id_index_run_unusable", f"{32 + 16 * 10 - 8} bytes for 10 ids")
    ]
    assert not list(path.glob("*.run*"))


def test_a_gap_between_runs_has_the_whole_log_indexed_again(tmp_path: Path) -> None:
    path = tmp_path / "log-ids"
    _indexed(path, 3)
    (path / id_index._Run.file_name(11, 21)).unlink()
    again = IdIndex(path)
    with capture_logs() as logs:
        assert again.open() == 1
    again.close()
    assert [e["reason"] for e in logs if e["event"] == "id_index_run_unusable"] == ["offsets 11 to 21 are in no run"]
    assert not list(path.glob("*.run*"))


def test_runs_a_merge_left_behind_are_deleted_at_open(tmp_path: Path) -> None:
    """A merge writes the wider run before it deletes the ones it holds: a crash between leaves both."""
    path = tmp_path / "log-ids"
    _indexed(path, 2)
    kept = {p.name: p.read_bytes() for p in path.iterdir()}
    _indexed(path, 2, first=21)
    for name, data in kept.items():
        (path / name).write_bytes(data)
    third = IdIndex(path)
    assert third.open() == 41
    third.close()
    assert _runs_on_disk(path) == [(1, 41, list(range(1, 41)))]


def test_the_sqlite_index_of_earlier_versions_is_removed(tmp_path: Path) -> None:
    old = tmp_path / "log-ids.sqlite"
    old.write_bytes(b"SQLite format 3\x00")
    index = IdIndex(tmp_path / "log-ids")
    with capture_logs() as logs:
        assert index.open() == 1
    index.close()
    assert not old.exists()
    assert [e["event"] for e in logs if e["event"] != "id_filter_loaded"] == ["id_index_sqlite_removed"]


def test_a_run_that_cannot_be_written_leaves_its_ids_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "log-ids"
    index = IdIndex(path, chunk_entries=10)
    index.open()
    (path / (id_index._Run.file_name(1, 11) + ".tmp")).mkdir()  # where the run would be written
    pairs = [(id_hash(f"m-{n}"), n) for n in range(1, 11)]
    index.add(pairs)
    with capture_logs() as logs:
        index.maybe_flush(11, force=True)
        assert not index.settle()
        index.close()
    assert isinstance(index.failure, IsADirectoryError)
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["id_index_failed"]
    assert index.candidates([h for h, _ in pairs]) == {h: [off] for h, off in pairs}
    later = [(id_hash(f"m-{n}"), n) for n in range(11, 21)]
    index.add(later)
    index.maybe_flush(21, force=True)  # kept in memory too, not handed to the indexer
    assert index.candidates([h for h, _ in later]) == {h: [off] for h, off in later}


def test_an_index_in_use_by_another_process_is_not_opened(tmp_path: Path) -> None:
    """Its open would delete the other's partly written runs: a second node on one data directory."""
    path = tmp_path / "log-ids"
    first = IdIndex(path)
    first.open()
    try:
        with pytest.raises(LogInUseError, match=r"log-ids is in use by another process"):
            IdIndex(path).open()
    finally:
        first.close()
    again = IdIndex(path)
    again.open()
    again.close()
