"""Atomic file writes and integrity helpers: a reader sees either the old file or the new one,
never a half-written file, whatever moment the writer is killed at. A write that fails on a full
disk says so, naming the file; JSON is written strictly (no NaN or Infinity, which are not JSON)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`.
    On any exception the temporary file is removed and `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as e:
        if _disk_full(e, path.parent):
            raise DiskFullError(path, e) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


TEMP_SUFFIX = ".tmp"
# What SQLite keeps beside a database it is writing (a temporary store's journal).
_SQLITE_COMPANIONS = ("-journal", "-wal", "-shm")
# Below this many free bytes a failed write is taken for a full disk: the writers' own errors do not
# always say so (torch.save's "file write failed", SQLite's "database or disk is full").
FULL_DISK_BYTES = 1 << 20


class DiskFullError(OSError):
    """A write that failed because the disk (or the user's quota) is full."""

    def __init__(self, path: Path, cause: BaseException):
        try:
            free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on its filesystem"
        except OSError:
            free = "free space unknown"
        super().__init__(errno.ENOSPC, f"the disk is full: writing {path} failed ({free}); free some space "
                                       f"and re-run ({type(cause).__name__}: {cause})")


def _disk_full(e: BaseException, directory: Path) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    with contextlib.suppress(OSError):
        return shutil.disk_usage(directory).free < FULL_DISK_BYTES
    return False


def remove_stale_temps(directory: str | os.PathLike, name: str = "*") -> list[Path]:
    """Remove the temporary files `atomic_path` left in `directory` for files called `name` (a
    glob; default all) when its writer was killed, with SQLite's companions of them. Only for a
    folder no other process is writing into now (a run's own folder, a stage's own output)."""
    removed = []
    for suffix in ("", *_SQLITE_COMPANIONS):
        for tmp in Path(directory).glob(f".{name}.*{TEMP_SUFFIX}{suffix}"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Strict JSON: a NaN or infinite number is refused (ValueError naming the file and the key),
    never written as the NaN / Infinity that strict readers reject."""
    bad = _non_finite_key(obj)
    if bad is not None:
        raise ValueError(f"{path}: {bad[0]} is {bad[1]}, which is not JSON; nothing written")
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _non_finite_key(obj, where: str = "") -> tuple[str, float] | None:
    """(the key path, the value) of the first NaN or infinite float in `obj`, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "the value", obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite_key(v, f"{where}.{k}" if where else str(k))
        if found is not None:
            return found
    return None


def read_json(path: str | os.PathLike, what: str = "file"):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); delete it and re-run its stage") from e


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_free_space(directory: str | os.PathLike, needed_bytes: int, what: str) -> None:
    """Refuse up front, rather than fail mid-write, when `directory` lacks room for `what`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    margin = needed_bytes + (64 << 20)
    if free < margin:
        raise OSError(f"not enough disk space for {what} in {directory}: need ~{margin / 2**20:.0f} MiB "
                      f"(estimate + 64 MiB margin), {free / 2**20:.0f} MiB free")
