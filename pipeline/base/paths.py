"""Where the project keeps caches: weights, text classifiers, the generated demo catalog.

One root, ``$S2LC_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/s2lc`` (``~/.cache/s2lc``), so HPC
users can point it at a shared filesystem and tests at a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache root (or a sub-folder of it), created on demand."""
    root = os.environ.get("S2LC_CACHE_DIR")
    if root:
        base = Path(root).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "s2lc"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
