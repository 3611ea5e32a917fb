"""A loopback HTTP server with byte-range reads that counts what it serves (object-store stand-in).

Serves files under ``root`` on 127.0.0.1 with ``Range: bytes=a-b`` (single ranges, 206 Partial
Content) as S3 and other object stores do, and counts requests and body bytes, so a benchmark can
compare what the read path fetched with the compressed size of the blocks it needed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Counter:
    requests: int = 0
    range_requests: int = 0
    bytes: int = 0
    paths: list[str] = field(default_factory=list)
    """The URL path of every GET served, in order (which objects a reader fetched)."""

    def reset(self) -> None:
        self.requests = self.range_requests = self.bytes = 0
        self.paths.clear()


class _Handler(SimpleHTTPRequestHandler):
    counter: Counter
    lock: threading.Lock

    def log_message(self, *args) -> None:  # quiet
        pass

    def _file(self) -> Path | None:
        path = Path(self.translate_path(self.path))
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        with self.lock:
            self.counter.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        m = _RANGE.match(self.headers.get("Range", "").strip())
        start, end = 0, size - 1
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size:
                self.send_error(416)
                return
        with open(path, "rb") as fh:
            fh.seek(start)
            body = fh.read(end - start + 1)
        with self.lock:
            self.counter.requests += 1
            self.counter.range_requests += bool(m)
            self.counter.bytes += len(body)
            self.counter.paths.append(self.path)
        self.send_response(206 if m else 200)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve_ranges(root: Path) -> Iterator[tuple[str, Counter]]:
    """(base URL, counter) of a range-serving HTTP server on 127.0.0.1 for the files in ``root``."""
    counter = Counter()
    handler = type("H", (_Handler,), {"counter": counter, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counter
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
