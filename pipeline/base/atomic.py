"""Atomic publishing: a result appears under its final name complete, or not at all.

:func:`atomic_path` hands out a temporary path in the destination's folder (same filesystem, so
the final :func:`os.replace` is atomic); the caller writes a file or a whole directory there. On
success it is renamed into place; on any exception it is removed and the final name is untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "remove_path"]

TMP_MARK = ".tmp-"


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` when the block succeeds.

    The block creates a file or a directory at the yielded path (nothing is created for it). If
    ``final`` exists, it is replaced (``replace=True``) or :class:`FileExistsError` is raised and
    the new result discarded (``replace=False``: first writer wins). An existing directory is
    swapped out by two renames, so the final name never holds a partial result.

    Example::

        with atomic_path(out / "classes.tif") as tmp:
            write_geotiff(tmp, ...)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        if not tmp.exists() and not tmp.is_symlink():
            raise FileNotFoundError(f"nothing was written to the temporary path for {final}")
        if tmp.is_dir():
            _replace_dir(tmp, final, replace)
        else:
            if not replace and final.exists():
                raise FileExistsError(f"{final} exists")
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        if tmp.exists() or tmp.is_symlink():
            remove_path(tmp)


def _replace_dir(tmp: Path, final: Path, replace: bool) -> None:
    try:
        os.rename(tmp, final)  # fails if final is a non-empty directory (or a file)
        return
    except OSError:
        if not (final.exists() or final.is_symlink()):
            raise
        if not replace:
            raise FileExistsError(f"{final} exists") from None
    old = final.with_name(f".{final.name}{TMP_MARK}old-{uuid.uuid4().hex[:12]}")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    remove_path(old)
