"""The generated code of the canonical model is what the .proto files produce: regenerating changes nothing."""

from __future__ import annotations

import filecmp
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_regenerating_the_proto_code_produces_no_diff(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "protoc generated nothing"
    committed = ROOT / "proto"
    for rel in fresh:
        assert (committed / rel).exists(), f"{rel} is generated but not committed (run `make proto`)"
        assert filecmp.cmp(tmp_path / rel, committed / rel, shallow=False), f"{rel} differs: run `make proto`"
    generated = {p.relative_to(committed) for p in (committed / "yiwang").rglob("*") if "_pb2" in p.name}
    assert generated == set(fresh), "stale generated files under proto/yiwang"
