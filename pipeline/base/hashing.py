"""Content hashes: SHA-256 of files (checkpoints, heads) and short digests of JSON-able settings."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

__all__ = ["json_digest", "sha256_file"]

_BLOCK = 1 << 22
_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, memoised per (path, size, mtime) within the process.

    The memo makes repeated identity checks of a multi-GB checkpoint free; a file rewritten in
    place gets a new mtime and is hashed again. Raises :class:`OSError` if it cannot be read.
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    digest = h.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = digest
    return digest


def json_digest(obj: Any, length: int = 16, *, default: Any = None) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``obj`` as key-sorted JSON.

    ``default`` is passed to :func:`json.dumps` for values JSON has no type for (e.g. ``str``).
    """
    blob = json.dumps(obj, sort_keys=True, default=default).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
