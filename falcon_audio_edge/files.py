"""Files the toolkit writes and reads: files and folders staged then moved into place, JSON read with clear
errors."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from falcon_audio_edge.errors import ExportError, FaEdgeError


class staged_dir:
    """Write a folder under a temporary sibling name, move it into place only on success.

    The destination must be absent or an empty folder, unless ``force``. On any
    error the temporary folder is removed and the destination is left as it was.
    """

    def __init__(self, out: Path, force: bool):
        self.out = Path(out)
        self.force = force
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.out.exists() and not self.out.is_dir():
            raise ExportError(f"output {self.out} exists and is not a folder")
        if self.out.is_dir() and any(self.out.iterdir()) and not self.force:
            raise ExportError(f"output folder {self.out} is not empty; pass --force to replace it")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        self.tmp.chmod(0o777 & ~_umask())  # mkdtemp made it private; the finished folder is an ordinary one
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{self.tmp.name.rsplit('-', 1)[-1]}")
            self.out.rename(old)
        self.tmp.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_file(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(tmp)`` on a temporary sibling, then rename it into place: readers never see
    a partial file, and a failed write leaves neither the file nor the temporary one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_text(path: Path, text: str) -> Path:
    return atomic_file(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path, error: type[FaEdgeError], what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a missing file or bad JSON raises ``error`` saying what was expected."""
    if not path.is_file():
        raise error(f"{path.parent} is not a {what}: {path.name} is missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object")
    return data
