"""The repository itself: no tracked file passes 20 MB (shipped weights travel in fp16, only what training changed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 20 * 2**20


def tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no tracked files to measure")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_passes_20_mb():
    files = tracked_files()
    assert len(files) > 50  # the listing is the repository's, not an empty one
    big = {str(p.relative_to(ROOT)): p.stat().st_size for p in files if p.is_file() and p.stat().st_size > MAX_BYTES}
    assert not big, f"tracked files over {MAX_BYTES // 2**20} MB: {big}"
