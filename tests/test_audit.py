"""The audit log: a hash chain in which any edited, removed or reordered record is found and named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.audit import AuditLog, verify


def write_trail(path: Path, events: int = 6) -> None:
    trail = AuditLog(path).open()
    for n in range(events):
        trail.record("authentication_failed", peer=f"127.0.0.1:{5000 + n}", reason="unknown CA")
    trail.close()


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_an_untouched_trail_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path)
    verdict = verify(path)
    assert verdict.ok, verdict.problem
    assert verdict.records == 6
    # reopening continues the same chain
    trail = AuditLog(path).open()
    trail.record("policy_reloaded", rules=12)
    trail.close()
    assert verify(path).records == 7
    assert verify(path).ok


def test_an_edited_record_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path)
    rows = lines(path)
    record = json.loads(rows[3])
    record["reason"] = "nothing happened"
    rows[3] = json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"
    path.write_text("".join(rows), encoding="utf-8")
    verdict = verify(path)
    assert not verdict.ok
    assert verdict.problem.startswith("record 4: its content was changed")


def test_a_removed_record_is_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path)
    rows = lines(path)
    del rows[2]
    path.write_text("".join(rows), encoding="utf-8")
    verdict = verify(path)
    assert not verdict.ok
    assert "sequence 4 where 3 was due" in verdict.problem


def test_reordered_records_are_found(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path)
    rows = lines(path)
    rows[1], rows[2] = rows[2], rows[1]
    path.write_text("".join(rows), encoding="utf-8")
    assert not verify(path).ok


def test_a_rewritten_chain_is_found_by_the_head(tmp_path: Path) -> None:
    """Renumbering and resealing the whole file still cannot match the head kept elsewhere."""
    path = tmp_path / "audit.log"
    write_trail(path)
    head = verify(path).head
    rows = lines(path)[:-2]
    path.write_text("".join(rows), encoding="utf-8")
    verdict = verify(path)  # the .head file beside it says where the chain ended
    assert not verdict.ok
    assert "records were removed from the end" in verdict.problem
    (tmp_path / "audit.log.head").unlink()
    assert verify(path).ok  # without any head, a shortened chain looks whole ...
    assert not verify(path, expected_head=head).ok  # ... which is why the head is kept elsewhere too


def test_a_broken_trail_is_moved_aside_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path)
    path.write_text(path.read_text(encoding="utf-8").replace("unknown CA", "expired"), encoding="utf-8")
    trail = AuditLog(path).open()
    trail.record("node_started")
    trail.close()
    assert verify(path).ok
    assert verify(path).records == 1
    assert len(list(tmp_path.glob("audit.log.broken-*"))) == 1


def test_recording_never_waits_and_drops_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    trail = AuditLog(path, max_queued=3)  # not opened yet: nothing drains the queue
    for n in range(8):
        trail.record("permission_denied", n=n)
    trail.open()
    trail.close()
    events = [json.loads(row) for row in lines(path)]
    assert [e["event"] for e in events[:3]] == ["permission_denied"] * 3
    assert events[3]["event"] == "audit_events_dropped"
    assert events[3]["count"] == 5
    assert verify(path).ok


def test_reserved_field_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="may not be named"):
        AuditLog(tmp_path / "a.log").record("x", hash="forged")


def test_cli_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_trail(path)
    run = [sys.executable, "-m", "gateway.cli", "audit", "verify", str(path)]
    good = subprocess.run(run, capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["records"] == 6
    path.write_text(path.read_text(encoding="utf-8").replace("5003", "6003"), encoding="utf-8")
    bad = subprocess.run(run, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"yiwang audit: {path}: record 4: its content was changed (hash mismatch)"
