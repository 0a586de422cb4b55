"""Putting a finished bundle in place: staged beside its path, exchanged with the old one in one
step where the system allows it, and the debris of killed writers cleared."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from clipsearch.util.files import fsync_directory


def new_staging(out: Path) -> Path:
    """An empty directory beside `out` to write a new bundle in, after clearing dead ones' debris."""
    recover_interrupted_swaps(out)
    staging = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def link_tree(source: Path, target: Path, only: set[str] | None = None) -> None:
    """Link the files of `source` (those named in `only`, if given) into `target`."""
    if source.is_dir():
        target.mkdir(exist_ok=True)
        for child in source.iterdir():
            # A .tmp file is an upload still being written (clipsearch.util.files.atomic_path).
            if child.is_file() and child.suffix != ".tmp" and (only is None or child.name in only):
                link_or_copy(child, target / child.name)


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the bundle's files are never written in place, so sharing them is safe
    except OSError:
        shutil.copy2(source, target)


def recover_interrupted_swaps(out: Path) -> None:
    """Delete staging and retired folders (and compactions' new logs) left beside `out` by builds,
    compactions and relabellings that were killed (their process is gone).

    A retired bundle with none at `out` was killed between the two renames of a swap without
    exchange: it is put back, not deleted.
    """
    for debris in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, pid = debris.name.rpartition("-")
        if not kind.endswith((".staging", ".retired", ".newlog")) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if kind.endswith(".retired") and not out.exists():
                os.replace(debris, out)
            elif debris.is_dir():
                shutil.rmtree(debris, ignore_errors=True)
            else:
                debris.unlink(missing_ok=True)  # a compaction's new log
        except PermissionError:
            pass  # a live process of another user


def swap_into_place(staging: Path, out: Path) -> Path | None:
    """Put the finished staging directory at `out`. An old bundle there is exchanged with it in one
    step where the system can (so `out` is never missing), else renamed aside first. Returns where
    the old bundle now is, for the caller to remove once it holds no lock (deleting gigabytes takes
    seconds)."""
    old = None
    if not out.exists():
        os.replace(staging, out)
    elif _exchange(staging, out):
        old = staging
    else:
        old = out.with_name(f".{out.name}.retired-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
    fsync_directory(out.parent)
    return old


def remove_retired(old: Path | None) -> None:
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories atomically (Linux's renameat2 with RENAME_EXCHANGE); False where the
    C library, kernel or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(second))
