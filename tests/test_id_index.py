"""The log's id index: chunks handed to the indexer process reach its on-disk table."""

from __future__ import annotations

import json
from pathlib import Path

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
        found = again.candidates(hashes, json.dumps(hashes))
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
        assert again.candidates([last[0]], json.dumps([last[0]])) == {last[0]: [last[1]]}
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
        assert again.candidates(hashes, json.dumps(hashes)) == {h: [off] for h, off in pairs}
    finally:
        again.close()
