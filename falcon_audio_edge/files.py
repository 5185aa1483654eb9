"""Files the toolkit writes and reads: files and folders staged then moved into place, JSON read with clear
errors."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from falcon_audio_edge.errors import ExportError, FaEdgeError

# staging folders and temporary files this process is writing: a SIGTERM handler removes them
# (``remove_in_progress``) instead of unwinding through whatever C++ code the main thread is in
_IN_PROGRESS: set[Path] = set()
_SWAPPING: dict[Path, Path] = {}  # an old folder moved aside -> the place it is being replaced in
_CHILDREN: set[subprocess.Popen] = set()  # child processes to stop with us (the assistant's voice)


def track_child(proc: subprocess.Popen) -> subprocess.Popen:
    """A child process the SIGTERM handler stops before exiting (``remove_in_progress``)."""
    _CHILDREN.add(proc)
    return proc


def stop_children() -> None:
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            proc.terminate()
        _CHILDREN.discard(proc)


def remove_in_progress() -> None:
    """Remove every staging folder and temporary file still being written (for a handler that then exits); an
    old folder moved aside for its replacement goes back if the replacement is not in place yet; tracked child
    processes are stopped."""
    stop_children()
    for old, out in list(_SWAPPING.items()):
        if old.exists() and not out.exists():
            old.rename(out)
        elif old.exists():
            shutil.rmtree(old, ignore_errors=True)
        _SWAPPING.pop(old, None)
    for path in list(_IN_PROGRESS):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        _IN_PROGRESS.discard(path)


class temp_dir(tempfile.TemporaryDirectory):
    """``tempfile.TemporaryDirectory`` that a SIGTERM handler also removes (``remove_in_progress``)."""

    def __enter__(self) -> str:
        _IN_PROGRESS.add(Path(self.name))
        return self.name

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        _IN_PROGRESS.discard(Path(self.name))


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
        # the name is known before the folder exists: an interrupt (Ctrl-C) at any point after its creation
        # can remove it (__exit__ only runs once __enter__ has returned)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{secrets.token_hex(4)}"
        _IN_PROGRESS.add(self.tmp)
        try:
            self.tmp.mkdir(mode=0o700)
        except FileExistsError:  # another writer's (a 1 in 4 billion draw): not ours to remove
            _IN_PROGRESS.discard(self.tmp)
            raise ExportError(f"staging folder {self.tmp} exists already; run again") from None
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            _IN_PROGRESS.discard(self.tmp)
            raise
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            _IN_PROGRESS.discard(self.tmp)
            return
        self.tmp.chmod(0o777 & ~_umask())  # made private; the finished folder is an ordinary one
        old = None
        try:  # the swap is not left cut in half: the old folder is replaced or put back
            if self.out.exists():
                old = self.out.with_name(f".{self.out.name}.old-{self.tmp.name.rsplit('-', 1)[-1]}")
                _SWAPPING[old] = self.out
                self.out.rename(old)
            self.tmp.rename(self.out)
        except BaseException:
            if old is not None and not self.out.exists():
                old.rename(self.out)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            _IN_PROGRESS.discard(self.tmp)
            if old is not None:
                _SWAPPING.pop(old, None)
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
    _IN_PROGRESS.add(tmp)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _IN_PROGRESS.discard(tmp)
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
