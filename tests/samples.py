"""Where the third-party sample messages are.

Samples whose licence allows it are copied into ``tests/data/`` (see the SOURCES.md there); the
others are read from the shared sample folder next to the repository (``../shared/samples``, or
``YIWANG_SHARED_SAMPLES``), and tests of them skip, saying so, where it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
SHARED = Path(os.environ.get("YIWANG_SHARED_SAMPLES") or Path(__file__).resolve().parents[2] / "shared" / "samples")


def data(relative: str) -> Path:
    """A sample shipped in tests/data."""
    path = DATA / relative
    assert path.exists(), f"{path} is missing"
    return path


def shared(relative: str) -> Path:
    """A sample of the shared folder; skips the test when that folder is not there."""
    path = SHARED / relative
    if not SHARED.is_dir():
        pytest.skip(f"shared samples not present at {SHARED} (set YIWANG_SHARED_SAMPLES); {relative} is not shipped")
    assert path.exists(), f"{path} is missing from the shared samples"
    return path
