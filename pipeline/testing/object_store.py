"""A loopback object store: real HTTP/1.1 byte-range reads on 127.0.0.1 with latency and faults.

Serves the files under a folder as S3, Azure Blob or GCS serve objects: ``GET`` with
``Range: bytes=a-b`` (one range, ``206 Partial Content``), ``HEAD``, keep-alive connections.
Unlike a mock, every byte goes through sockets, so GDAL/curl (or any other reader) behaves as it
does against a real store. What a remote store adds is configurable (:class:`StoreConfig`), live
(change ``store.config`` while it serves):

* ``ttfb_s``: time to first byte of *every request* (not per connection): 0.03 is object storage
  in the same cloud region;
* ``bandwidth_mbps``: body bytes per second of each response (megabits, as providers quote it);
* transient faults, drawn per request from a seeded generator: ``429`` and ``503`` answers,
  connection ``reset`` (TCP RST, no answer), ``truncate`` (headers promise the whole range, half
  the body comes, then the connection closes); a fault repeats on the next ``burst - 1`` requests
  (rate limiters and overloaded partitions fail in bursts);
* ``missing``: objects (paths relative to the folder) answering ``404`` forever, as an object that
  is gone does; ``fail_paths``: objects whose every request fails transiently (``503``).

:class:`StoreCounter` counts requests, range requests, body bytes, faults by kind and the most
requests in flight at once, so a benchmark can compare what a reader fetched with what it needed
and how many requests it kept in flight.

:func:`serve_store` runs the store in this process (tests change its config live);
:func:`serve_store_process` in a process of its own (``python -m pipeline.testing.object_store``),
which timings need: a reader that holds the GIL while GDAL waits on a socket would otherwise
stall the server answering it (measured: 132 open datasets read from one in-process server hang
until curl times out).

Answers go out without Nagle's delay (``TCP_NODELAY``): a body written after its headers
otherwise waits for the client's delayed ACK, 40-45 ms per small answer on Linux loopback
(measured on GDAL's 16 KiB header reads), a delay no object store adds.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter as _Tally
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = [
    "FAULT_KINDS",
    "ObjectStore",
    "StoreConfig",
    "StoreCounter",
    "in_flight_profile",
    "serve_store",
    "serve_store_process",
]

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")
#: Transient faults the store can inject (:attr:`StoreConfig.fault_kinds`).
FAULT_KINDS = ("429", "503", "reset", "truncate")
_CHUNK = 64 * 1024
#: ``GET /<COUNTER_PATH>``: the store's counts as JSON (not counted themselves).
COUNTER_PATH = "_store/counter"
#: ``GET /<LOG_PATH>``: the store's request log (:attr:`StoreCounter.log`) as JSON.
LOG_PATH = "_store/log"
#: ``GET /<RESET_PATH>``: zero the store's counts and log (:meth:`StoreCounter.reset`).
RESET_PATH = "_store/reset"


@dataclass
class StoreConfig:
    """What the store adds to a plain file server (all off by default)."""

    ttfb_s: float = 0.0
    """Seconds before the first byte of every response (headers included), per request."""
    bandwidth_mbps: float | None = None
    """Body bandwidth of each response in megabits per second (None: as fast as loopback)."""
    fault_rate: float = 0.0
    """Share (0-1) of requests that start a transient fault (seeded, see ``seed``)."""
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    """Which faults are drawn (uniformly), among :data:`FAULT_KINDS`."""
    burst: int = 1
    """A fault also hits the next ``burst - 1`` requests (any object)."""
    seed: int = 0
    """Seed of the fault draws: the same requests in the same order fail the same way."""
    missing: set[str] = field(default_factory=set)
    """Object paths (relative to the folder, ``/`` separated) that answer 404 forever."""
    fail_paths: set[str] = field(default_factory=set)
    """Object paths whose every request answers 503 (a transient failure that lasts)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within 0-1, got {self.fault_rate}")
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if self.ttfb_s < 0 or (self.bandwidth_mbps is not None and self.bandwidth_mbps <= 0):
            raise ValueError("ttfb_s must be >= 0 and bandwidth_mbps > 0")


@dataclass
class StoreCounter:
    """What the store served (thread-safe updates under the store's lock)."""

    requests: int = 0
    """Every request answered, faults and 404s included."""
    range_requests: int = 0
    """GET requests with a Range header that were served (206)."""
    bytes: int = 0
    """Body bytes sent (a truncated body counts what was sent)."""
    faults: _Tally = field(default_factory=_Tally)
    """Transient faults injected, by kind (``429``, ``503``, ``reset``, ``truncate``)."""
    not_found: int = 0
    """404 answers."""
    in_flight: int = 0
    max_in_flight: int = 0
    """Most requests being answered at the same time."""
    paths: _Tally = field(default_factory=_Tally)
    """Requests per object path."""
    log: list = field(default_factory=list)
    """One record per request answered: (start_s, end_s, method, path, first byte, bytes asked;
    -1 without a Range header), start and end in seconds since the store began serving: requests
    in flight over time (:func:`in_flight_profile`)."""

    def reset(self) -> None:
        """Zero every count."""
        self.requests = self.range_requests = self.bytes = self.not_found = 0
        self.in_flight = self.max_in_flight = 0
        self.faults = _Tally()
        self.paths = _Tally()
        self.log = []


def in_flight_profile(log: list[tuple], step_s: float = 0.1) -> dict:
    """Requests in flight over time, from a store's request log (:attr:`StoreCounter.log`).

    Returns ``{"span_s": first start to last end, "mean": time-averaged requests in flight over
    the span, "busy_s": seconds with at least one request in flight, "per_step": the mean in
    flight per ``step_s`` slice}``; zeros for an empty log. The time-average is the total of the
    requests' durations divided by the span (Little's law).
    """
    if not log:
        return {"span_s": 0.0, "mean": 0.0, "busy_s": 0.0, "per_step": []}
    t0 = min(r[0] for r in log)
    span = max(r[1] for r in log) - t0
    steps = [0.0] * (int(span / step_s) + 1)
    busy = 0.0
    edge = t0
    for start, end, *_ in sorted(log):
        for i in range(int((start - t0) / step_s), int((end - t0) / step_s) + 1):
            lo, hi = max(start, t0 + i * step_s), min(end, t0 + (i + 1) * step_s)
            if hi > lo and i < len(steps):
                steps[i] += (hi - lo) / step_s
        busy += max(0.0, end - max(start, edge))
        edge = max(edge, end)
    total = sum(r[1] - r[0] for r in log)
    return {
        "span_s": span,
        "mean": total / span if span > 0 else 0.0,
        "busy_s": busy,
        "per_step": [round(v, 2) for v in steps],
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as object stores and curl use them
    disable_nagle_algorithm = True  # TCP_NODELAY (module docstring)
    store: ObjectStore

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        store = self.store
        rel = unquote(urlparse(self.path).path).lstrip("/")
        if rel == COUNTER_PATH:  # the counts, for a store in another process
            return self._counts()
        if rel == LOG_PATH:
            return self._log()
        if rel == RESET_PATH:
            with store.lock:
                store.counter.reset()
            return self._empty(204)
        t0 = time.perf_counter() - store.t0
        with store.lock:
            c = store.counter
            c.requests += 1
            c.paths[rel] += 1
            c.in_flight += 1
            c.max_in_flight = max(c.max_in_flight, c.in_flight)
        try:
            self._serve(store, rel, body)
        finally:
            m = _RANGE.match(self.headers.get("Range", "").strip())
            first, asked = -1, -1
            if m:
                first = int(m.group(1))
                asked = int(m.group(2)) - first + 1 if m.group(2) else -1
            t1 = time.perf_counter() - store.t0
            with store.lock:
                store.counter.in_flight -= 1
                store.counter.log.append((t0, t1, self.command, rel, first, asked))

    def _serve(self, store: ObjectStore, rel: str, body: bool) -> None:
        cfg = store.config
        if cfg.ttfb_s:
            time.sleep(cfg.ttfb_s)
        if rel in cfg.missing:
            with store.lock:
                store.counter.not_found += 1
            return self._empty(404)
        fault = "503" if rel in cfg.fail_paths else store.draw_fault()
        if fault in ("429", "503"):
            with store.lock:
                store.counter.faults[fault] += 1
            return self._empty(int(fault), retry_after=True)
        if fault == "reset":
            with store.lock:
                store.counter.faults[fault] += 1
            return self._reset()
        path = (store.root / rel).resolve()
        if store.root not in path.parents or not path.is_file():
            with store.lock:
                store.counter.not_found += 1
            return self._empty(404)
        size = path.stat().st_size
        m = _RANGE.match(self.headers.get("Range", "").strip())
        start, end = 0, size - 1
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size:
                return self._empty(416)
        n = end - start + 1
        self.send_response(206 if m else 200)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(n))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if not body:
            return None
        if m:
            with store.lock:
                store.counter.range_requests += 1
        send = n // 2 if fault == "truncate" else n
        with open(path, "rb") as fh:
            fh.seek(start)
            left = send
            while left > 0:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    break
                if cfg.bandwidth_mbps:  # paced before it is sent: the last byte arrives late too
                    time.sleep(len(chunk) * 8 / (cfg.bandwidth_mbps * 1e6))
                self.wfile.write(chunk)
                left -= len(chunk)
                with store.lock:
                    store.counter.bytes += len(chunk)
        if fault == "truncate":
            with store.lock:
                store.counter.faults[fault] += 1
            self.wfile.flush()
            self._reset()
        return None

    def _counts(self) -> None:
        with self.store.lock:
            c = self.store.counter
            doc = {k: getattr(c, k) for k in ("requests", "range_requests", "bytes", "not_found",
                                                "max_in_flight")}  # fmt: skip
            doc["faults"] = dict(c.faults)
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _log(self) -> None:
        with self.store.lock:
            body = json.dumps(self.store.counter.log).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _empty(self, status: int, retry_after: bool = False) -> None:
        self.send_response(status)
        if retry_after:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _reset(self) -> None:
        """Close the connection with a TCP RST (SO_LINGER 0), answering nothing more."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many requests in flight from one reader


class ObjectStore:
    """A running loopback store (from :func:`serve_store`): ``url``, ``config``, ``counter``."""

    def __init__(self, root: Path, config: StoreConfig) -> None:
        self.root = Path(root).resolve()
        self.config = config
        self.counter = StoreCounter()
        self.lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._burst_left = 0
        self._burst_kind = ""
        self.t0 = time.perf_counter()
        """When the store began (the origin of :attr:`StoreCounter.log`'s times)."""
        self.url = ""
        """``http://127.0.0.1:PORT`` (set once serving)."""

    def href(self, path: Path | str) -> str:
        """The URL of a file under the store's folder (absolute or relative path)."""
        p = Path(path)
        rel = p.resolve().relative_to(self.root) if p.is_absolute() else p
        return f"{self.url}/{rel.as_posix()}"

    def draw_fault(self) -> str | None:
        """The transient fault of the next request, or None (seeded; bursts repeat a fault)."""
        cfg = self.config
        with self.lock:
            if self._burst_left > 0:
                self._burst_left -= 1
                return self._burst_kind
            if cfg.fault_rate and self._rng.random() < cfg.fault_rate:
                self._burst_kind = self._rng.choice(list(cfg.fault_kinds))
                self._burst_left = max(0, cfg.burst - 1)
                return self._burst_kind
        return None


@contextmanager
def serve_store(root: Path, config: StoreConfig | None = None) -> Iterator[ObjectStore]:
    """Serve the files under ``root`` on 127.0.0.1 (a free port) while the block runs.

    Args:
        root: folder whose files are the objects (``GET /<path relative to root>``).
        config: latency, bandwidth and faults (:class:`StoreConfig`; default: none).

    Yields:
        The :class:`ObjectStore` (its ``url``, live ``config`` and ``counter``).
    """
    store = ObjectStore(root, config or StoreConfig())
    handler = type("StoreHandler", (_Handler,), {"store": store})
    server = _Server(("127.0.0.1", 0), handler)
    store.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class StoreProcess:
    """A store serving from another process (:func:`serve_store_process`)."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = Path(root).resolve()

    def href(self, path: Path | str) -> str:
        """The URL of a file under the store's folder (absolute or relative path)."""
        p = Path(path)
        rel = p.resolve().relative_to(self.root) if p.is_absolute() else p
        return f"{self.url}/{rel.as_posix()}"

    def counter(self) -> dict:
        """The store's counts now (requests, range_requests, bytes, not_found, max_in_flight,
        faults)."""
        with urllib.request.urlopen(f"{self.url}/{COUNTER_PATH}", timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read())

    def reset(self) -> None:
        """Zero the store's counts and log (between two measured loads)."""
        with urllib.request.urlopen(f"{self.url}/{RESET_PATH}", timeout=30) as resp:  # noqa: S310
            resp.read()

    def log(self) -> list[tuple]:
        """The store's request log (:attr:`StoreCounter.log`)."""
        with urllib.request.urlopen(f"{self.url}/{LOG_PATH}", timeout=30) as resp:  # noqa: S310
            return [tuple(r) for r in json.loads(resp.read())]


@contextmanager
def serve_store_process(root: Path, config: StoreConfig | None = None) -> Iterator[StoreProcess]:
    """Like :func:`serve_store`, in a process of its own (config fixed at start: latency,
    bandwidth, fault rate, kinds, burst, seed; not ``missing`` nor ``fail_paths``)."""
    cfg = config or StoreConfig()
    cmd = [sys.executable, "-m", "pipeline.testing.object_store", str(root),
           "--ttfb-s", str(cfg.ttfb_s), "--fault-rate", str(cfg.fault_rate),
           "--fault-kinds", ",".join(cfg.fault_kinds), "--burst", str(cfg.burst),
           "--seed", str(cfg.seed)]  # fmt: skip
    if cfg.bandwidth_mbps:
        cmd += ["--bandwidth-mbps", str(cfg.bandwidth_mbps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        url = (proc.stdout.readline() if proc.stdout else "").strip()
        if not url.startswith("http://"):
            raise RuntimeError(f"the object store did not start ({url!r})")
        yield StoreProcess(url, Path(root))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.testing.object_store ROOT [--ttfb-s S] ...``: print the URL, serve."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--ttfb-s", type=float, default=0.0)
    p.add_argument("--bandwidth-mbps", type=float)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    p.add_argument("--burst", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    cfg = StoreConfig(a.ttfb_s, a.bandwidth_mbps, a.fault_rate,
                      tuple(k for k in a.fault_kinds.split(",") if k), a.burst, a.seed)  # fmt: skip
    with serve_store(a.root, cfg) as store:
        print(store.url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
