"""Files the toolkit writes and reads: files and folders staged then moved into place, JSON read with clear
errors."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
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
_LOCKS: set[Path] = set()  # output lock files this process holds (``OutputLock``)


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
    for lock in list(_LOCKS):
        lock.unlink(missing_ok=True)
        _LOCKS.discard(lock)
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

    The destination must be absent or an empty folder; with ``force`` it may also be a folder that
    ``replaceable`` recognises as this toolkit's own (a bundle, a checkpoint), never one that holds any of
    ``inputs`` or anything else. The old folder is kept until the new one is complete. One writer at a time: a
    lock file beside the destination (``.NAME.lock``) makes a second writer refuse, naming the first. Staging
    folders left by a killed run into the same destination are removed first, with one line on stderr. On any
    error the temporary folder is removed and the destination is left as it was.
    """

    def __init__(self, out: Path, force: bool, inputs: tuple[Path, ...] = (),
                 replaceable: Callable[[Path], bool] | None = None, need_bytes: int = 0):  # fmt: skip
        self.out = Path(out)
        self.need_bytes = need_bytes  # about what the finished folder takes: checked against the disk's free space
        self.force = force
        self.inputs = tuple(Path(p) for p in inputs)
        self.replaceable = replaceable
        self.tmp: Path | None = None
        self._lock: OutputLock | None = None

    def check(self) -> None:
        """Refuse a destination this writer may not take (also called early, before costly work)."""
        if self.out.exists() and not self.out.is_dir():
            raise ExportError(f"output {self.out} exists and is not a folder")
        where = self.out.resolve()
        for inp in self.inputs:
            if where == inp.resolve() or where in inp.resolve().parents:
                raise ExportError(f"output folder {self.out} holds the input {inp}; choose another")
            if inp.resolve() in where.parents:
                raise ExportError(f"output folder {self.out} is inside the input {inp}; choose another")
        if self.out.is_dir() and any(self.out.iterdir()):
            if not self.force:
                raise ExportError(f"output folder {self.out} is not empty; pass --force to replace it")
            if self.replaceable is None or not self.replaceable(self.out):
                raise ExportError(f"output folder {self.out} is not empty and is not one this command made; "
                                  "--force replaces only those; choose another folder")  # fmt: skip

    def __enter__(self) -> Path:
        self.check()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._lock = OutputLock(self.out)
        try:
            remove_leftovers(self.out)
            self.check()  # again, under the lock: a writer that just finished may have changed it
            check_space(self.out.parent, self.need_bytes)
            self.tmp = self._make_tmp()
        except BaseException:
            self._lock.release()
            raise
        return self.tmp

    def _make_tmp(self) -> Path:
        # the name is known before the folder exists: an interrupt (Ctrl-C) at any point after its creation
        # can remove it (__exit__ only runs once __enter__ has returned)
        tmp = self.out.parent / f".{self.out.name}.tmp-{secrets.token_hex(4)}"
        _IN_PROGRESS.add(tmp)
        try:
            tmp.mkdir(mode=0o700)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            _IN_PROGRESS.discard(tmp)
            raise
        return tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        assert self.tmp is not None and self._lock is not None
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                _IN_PROGRESS.discard(self.tmp)
                full = disk_full(self.out.parent, exc, self.need_bytes)
                if full:
                    raise ExportError(f"could not write {self.out}: {full}; {str(exc).splitlines()[0][:200]}") from exc
                return
            self._swap_in()
        finally:
            self._lock.release()

    def _swap_in(self) -> None:
        assert self.tmp is not None
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


class OutputLock:
    """An exclusive lock on writing ``out``: ``.NAME.lock`` beside it, held with flock (released by the kernel if
    the process dies) and holding the writer's pid; a second writer gets an ExportError naming the first."""

    def __init__(self, out: Path):
        self.path = out.parent / f".{out.name}.lock"
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ExportError(f"another fa-edge process (pid {holder}) is writing {out}; "
                                  "wait for it to finish or choose another folder") from None  # fmt: skip
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:  # the last holder removed it as we opened it
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd: int | None = fd
        _LOCKS.add(self.path)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before the unlock: a waiting writer then finds a fresh file
            os.close(self.fd)
            self.fd = None
            _LOCKS.discard(self.path)


FULL_BELOW = 64 * 2**20  # a failed write with less free than this (or than what was needed) ran out of disk


def mount_point(path: Path) -> Path:
    path = Path(path).resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def check_space(folder: Path, need: int) -> None:
    """Refuse up front, naming the disk, when ``folder``'s filesystem has less than ``need`` bytes free."""
    free = shutil.disk_usage(folder).free
    if need and free < need:
        raise ExportError(f"not enough disk space on {mount_point(folder)} (holding {folder}): about {_mb(need)} "
                          f"needed, {_mb(free)} free")  # fmt: skip


def disk_full(folder: Path, exc: BaseException | None, need: int) -> str | None:
    """Why a failed write failed, where the disk is the reason (no space left, or as good as none), else None."""
    free = shutil.disk_usage(folder).free
    no_space = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    if not (no_space or (isinstance(exc, Exception) and free < max(FULL_BELOW, need))):
        return None
    needed = f"about {_mb(need)} needed, " if need else ""
    return f"the disk {mount_point(folder)} is full ({needed}{_mb(free)} free once the partial output was removed)"


def remove_leftovers(out: Path) -> None:
    """Under ``out``'s lock: staging folders of a killed run into ``out`` are removed; a folder it had moved aside
    to replace goes back where it was if nothing took its place. One line on stderr says what was done."""
    done = []
    for old in sorted(out.parent.glob(f".{glob.escape(out.name)}.old-*")):
        if not out.exists():
            old.rename(out)
            done.append(f"put back {old.name} as {out.name}")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}")
    for tmp in sorted(out.parent.glob(f".{glob.escape(out.name)}.tmp-*")):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            done.append(f"removed {tmp.name}")
    if done:
        print(f"note: left by an interrupted run into {out}: {'; '.join(done)}", file=sys.stderr)


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


MAX_JSON_BYTES = 16 * 2**20  # a manifest or a dims file is a few KB


def inside(folder: Path, name: str, error: type[FaEdgeError]) -> Path:
    """``folder / name`` for a plain file name that stays inside ``folder`` (no ``..``, no absolute path, no link
    leading out) and names a regular file, if it exists; otherwise ``error`` naming it."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise error(f"{folder}: {name!r} is not a plain file name inside the folder")
    path = folder / name
    if path.is_symlink() and path.resolve().parent != folder.resolve():
        raise error(f"{path} is a link leading out of {folder}; refused")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise error(f"{path} is not a regular file")
    return path


def read_json(path: Path, error: type[FaEdgeError], what: str) -> dict[str, Any]:
    """A JSON object from ``path`` (a regular file inside its folder, at most ``MAX_JSON_BYTES``); a missing,
    special or oversized file or bad JSON raises ``error`` saying what was expected."""
    path = inside(path.parent, path.name, error)
    if not path.is_file():
        raise error(f"{path.parent} is not a {what}: {path.name} is missing")
    with open(path, "rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise error(f"{path} is over {MAX_JSON_BYTES // 2**20} MB: not a {what} file")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, nesting too deep
        raise error(f"{path} is not valid JSON: {str(exc)[:200] or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a JSON object")
    return data
