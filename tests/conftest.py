from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Triton kernels run on the CPU in the interpreter (set before triton is imported).
os.environ.setdefault("TRITON_INTERPRET", "1")
# generated kernels go to a throwaway cache, not the user's ~/.cache
os.environ.setdefault("NAS_KERNEL_CACHE", tempfile.mkdtemp(prefix="nas-kernels-"))

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "searchspaces"
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def spaces_dir() -> Path:
    return SPACES


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    p = Path(os.environ.get("NAS_TEST_SHAKESPEARE", SHARED_DATA / "tinyshakespeare" / "input.txt"))
    if not p.exists():
        pytest.skip(f"Tiny Shakespeare not found at {p}")
    return p
