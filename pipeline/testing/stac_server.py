"""A real STAC API on loopback over a local catalog folder (collection.json + items.json).

The server is ``rustac serve`` (the ``rustac`` wheel ships the binary) in its in-memory backend,
loading the two JSON files; it never touches the network (its DuckDB backend, which downloads an
extension at run time, is only used for geoparquet and is disabled explicitly). It listens on
127.0.0.1 on a free port and is stopped when the context exits.
rustac implements core, item-search (POST and GET, ``intersects``, ``bbox``, ``datetime``,
paging) but not the filter/query extensions, so cloud cover is filtered client-side
(:mod:`pipeline.stac.search` checks the conformance classes).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)
START_TIMEOUT_S = 20.0


def rustac_binary() -> str:
    """Path of the ``rustac`` executable (next to the interpreter, else on PATH)."""
    here = Path(sys.executable).parent / "rustac"
    if here.is_file():
        return str(here)
    found = shutil.which("rustac")
    if not found:
        raise UserError(
            "the local STAC server needs 'rustac' (pip install rustac, pinned in requirements.txt)"
        )
    return found


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:

    try:
        return requests.get(f"{url}/", timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def serve(catalog_dir: Path, *, port: int | None = None) -> Iterator[str]:
    """Serve ``catalog_dir`` (collection.json + items.json) as a STAC API; yield its base URL.

    Raises:
        UserError: the folder lacks the files, or the server does not come up.
    """
    catalog_dir = Path(catalog_dir)
    files = [catalog_dir / "collection.json", catalog_dir / "items.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UserError(f"cannot serve {catalog_dir}: missing {', '.join(missing)}")
    exe = rustac_binary()
    last_log = ""
    for _attempt in range(3):
        p = port or free_port()
        url = f"http://127.0.0.1:{p}"
        log = tempfile.TemporaryFile(mode="w+")
        cmd = [exe, "serve", *map(str, files), "--addr", f"127.0.0.1:{p}", "--use-duckdb", "false"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None and not _ready(url):
                time.sleep(0.05)
            if proc.poll() is None and _ready(url):
                _log.info("STAC API over %s at %s (pid %d)", catalog_dir, url, proc.pid)
                yield url
                return
            log.seek(0)
            last_log = " ".join(log.read().split())[-400:]
        finally:
            _stop(proc)
            log.close()
        if port:
            break
    raise UserError(f"the local STAC server (rustac) did not start for {catalog_dir}: {last_log}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
