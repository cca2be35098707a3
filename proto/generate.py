"""Regenerates the Python code of the canonical model from proto/yiwang/v1/*.proto.

Run from anywhere: ``python proto/generate.py [OUT_DIR]``. OUT_DIR defaults to proto/ itself;
a test generates into a temporary folder and compares, so the committed code never drifts.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def generate(out_dir: Path) -> None:
    """Writes *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto file under yiwang/."""
    include = str(resources.files("grpc_tools") / "_proto")
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "yiwang").rglob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
