"""Per-process COG access: datasets kept open, each source block decoded once (bounded cache).

A tile reads a window of every asset of every scene that touches it. Opened per tile, each asset
costs an open/close (3.3 core-s per Mpx at 256 px tiles) and each 1024 px COG block is decoded
once per tile that overlaps it (16 times at 256 px tiles). :class:`BlockReader` keeps the datasets
open (LRU, bounded count) and caches decoded blocks of the full-resolution level (LRU, bounded
bytes), so neighbouring tiles on the same worker reuse them; windows are assembled from whole
blocks, so over HTTP every request is one block's byte range (GDAL merges consecutive ranges).

A file that cannot be opened or decoded (HTTP 4xx/5xx after GDAL's retries, a corrupt or
truncated file) raises :class:`pipeline.reading.cube.ReadFailure` (classified by
:func:`pipeline.reading.cube.classify_read_error`): lost input, never silently nodata.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Environment variable: the decoded-block cache of one worker process, in MiB.
CACHE_ENV = "S2LC_BLOCK_CACHE_MB"
#: Default block cache per worker process (MiB): one 1024 px read unit of 12-16 acquisitions
#: x 11 assets, including the 20 m blocks shared with the neighbouring unit.
DEFAULT_CACHE_MB = 768
#: At most this many datasets stay open per worker process.
DEFAULT_MAX_OPEN = 512
#: Attempts of one request (a dataset's open, a block's read) before its failure counts: a
#: transient failure (HTTP 429 or 5xx, a connection reset, a truncated body, a timeout) closes
#: the dataset, drops GDAL's cached bytes of the file and tries again after an exponential
#: backoff with jitter (:func:`backoff_s`; about 16 s in all). HTTP 403 (re-signed by the
#: caller), 404 and 410 are final at once. A local file that decodes as corrupt is final at once;
#: over HTTP a truncated body decodes as corrupt too, so it is retried like the others. The warp
#: path retries each of odc-stac's source reads (one band of one scene into the window) the same
#: way and as often (:class:`pipeline.reading.warp_driver.RetryingRioDriver`).
READ_ATTEMPTS = 8
#: Files a reader opens and fetches at once (:meth:`BlockReader.fetch_many`): requests in flight
#: per worker, which hide the store's time to first byte (30 ms in the same cloud region). Through
#: GDAL a file costs three requests one after the other (a HEAD, the header, its blocks: 90 ms at
#: 30 ms each), so a window of 132 files (12 acquisitions x 11 assets) takes ceil(132 / threads)
#: such rounds: 9 at 16 threads, 3 at 64. The threads wait on sockets (GDAL releases the GIL),
#: the blocks they fetch are bounded by half the block cache, and GDAL's range cache is sized to
#: hold what they have in flight (:data:`CURL_CACHE_BYTES`).
READ_THREADS = 64
#: GDAL's cache of downloaded byte ranges (``CPL_VSIL_CURL_CACHE_SIZE``, bytes, one per process,
#: fixed when the process first reads over HTTP), set by the first :class:`BlockReader` unless the
#: user set it. GDAL's default (16 MB) is less than 64 files' blocks in flight: a file's header
#: range was evicted before its block read, which starts in the same 16 KiB chunk, and was fetched
#: again (measured: up to 467 requests instead of 384 for the bench's read unit at 64 threads).
CURL_CACHE_BYTES = 128 * 2**20
#: Environment variable: :data:`READ_THREADS` of the process's reader (1: one request at a time).
THREADS_ENV = "S2LC_READ_THREADS"
#: Environment variable: :data:`READ_ATTEMPTS` of the process's reader (an integer >= 1).
ATTEMPTS_ENV = "S2LC_READ_ATTEMPTS"
#: First backoff (seconds); each further retry doubles it, up to :data:`BACKOFF_MAX_S`.
BACKOFF_S = 0.2
BACKOFF_MAX_S = 5.0
#: HTTP statuses that are never retried here (see :data:`READ_ATTEMPTS`).
FINAL_STATUS = frozenset({403, 404, 410})


@dataclass(frozen=True)
class RasterInfo:
    """What the read path needs to know about one asset file."""

    crs: Any
    transform: Any
    shape: tuple[int, int]
    block: tuple[int, int]
    dtype: str


def worker_cores() -> int:
    """Cores this process may use: the torch/OpenMP thread count the worker was given, else all."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def backoff_s(attempt: int, rng: Any = random) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): ``BACKOFF_S * 2**(attempt - 1)``,
    capped at :data:`BACKOFF_MAX_S`, times a uniform jitter in [0.5, 1.5) so that workers hit by
    one burst do not retry in step."""
    return min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)) * (0.5 + rng.random())


def gdal_options(threads: int | None = None) -> dict[str, Any]:
    """GDAL settings of the read path (documented in the README's "Reading" section).

    * ``GDAL_NUM_THREADS``: the worker's cores (multi-block reads decode in parallel).
    * ``GDAL_CACHEMAX`` 64 MB: decoded blocks are cached by :class:`BlockCache`, not twice.
    * ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: no directory listing or side-car probing over
      HTTP. ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` is deliberately not set: it makes GDAL treat
      every remote file whose name lacks a listed extension as missing, which refused the
      JPEG2000 assets (``.jp2``) the Copernicus Data Space and the SAFE buckets serve, and every
      extension-less download URL (OData ``.../$value``).
    * ``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES``, ``GDAL_HTTP_MULTIPLEX``: fewer range requests;
      ``GDAL_HTTP_MULTIRANGE=SERIAL``: one plain range per request (what every object store serves).
    * ``GDAL_HTTP_MAX_RETRY=3``, ``GDAL_HTTP_RETRY_DELAY=0.2``: GDAL retries each HTTP request
      answered 429/5xx itself (doubling the delay); :class:`BlockReader` then retries what still
      fails, and what GDAL does not retry (resets, truncated bodies), per open or block read
      (:data:`READ_ATTEMPTS`, jittered backoff). The warp path (odc-stac) uses these two as
      well, instead of odc-stac's 10 retries from 0.5 s, and retries per source read
      (:class:`pipeline.reading.warp_driver.RetryingRioDriver`); its other settings are odc-stac's.
    """
    return {
        "GDAL_NUM_THREADS": str(threads or worker_cores()),
        "GDAL_CACHEMAX": 64,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "GDAL_HTTP_MULTIRANGE": "SERIAL",
        "GDAL_HTTP_MULTIPLEX": "YES",
        "GDAL_HTTP_MAX_RETRY": "3",
        "GDAL_HTTP_RETRY_DELAY": "0.2",
    }


class BlockReader:
    """Windows of single-band rasters read through open datasets and a decoded-block LRU cache.

    Thread-safe (one lock: a worker reads one tile at a time). Counters (``opens``, ``decoded``,
    ``hits``) let benchmarks and tests check that each block is decoded once.
    """

    def __init__(
        self,
        cache_mb: float = DEFAULT_CACHE_MB,
        max_open: int = DEFAULT_MAX_OPEN,
        attempts: int = READ_ATTEMPTS,
        threads: int = READ_THREADS,
    ):
        self.attempts = max(1, int(attempts))
        """Tries of one request before its failure counts (:data:`READ_ATTEMPTS`)."""
        self.threads = max(1, int(threads))
        """Files read at once by :meth:`fetch_many` (1: one at a time)."""
        self.cache_bytes = int(cache_mb * 2**20)
        self.max_open = max(1, int(max_open))
        self._datasets: OrderedDict[str, Any] = OrderedDict()
        self._info: dict[str, RasterInfo] = {}
        self._blocks: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.RLock()
        self._env = gdal_options()
        self._env_key = tuple(sorted(self._env.items()))
        _size_curl_cache()
        self.opens = self.decoded = self.hits = self.retries = 0
        self._urls: dict[str, str | None] = {}
        """href -> the URL it was opened from (a signed URL), to reopen it after a failure."""
        self.offset_checks: dict = {}
        self.items: OrderedDict[tuple, tuple[list, list]] = OrderedDict()
        """Converted STAC items per item set (pipeline.reading.load_reflectance), LRU."""
        self.groups: OrderedDict[tuple, list] = OrderedDict()
        """Solar-day groups per converted item set (pipeline.reading.native), LRU."""
        self.same_crs: dict[tuple[str, str], bool] = {}
        """(target CRS string, href) -> whether the asset is in that CRS (pipeline.reading.native):
        comparing two CRS objects costs more than decoding a 256 px window of a block."""
        self.gone: dict[str, dict] = {}
        """Scene id -> failure record of scenes this process found permanently unreadable
        (pipeline.run.tile_task.load_composite): later tiles drop them without asking again."""
        self._scratch = threading.local()
        """Per (scene ids, group key), the offset-plausibility verdict (pipeline.reading.native)."""

    def is_open(self, href: str) -> bool:
        """Whether ``href`` is among the open datasets."""
        return href in self._datasets

    # -- datasets -------------------------------------------------------------------------
    def _dataset(self, href: str, url: str | None = None) -> Any:
        """The open dataset of ``href`` (opened from ``url`` if given), retried
        (:meth:`_retrying`); raises :class:`pipeline.reading.cube.ReadFailure`."""
        with self._lock:
            ds = self._datasets.get(href)
            if ds is not None:
                self._datasets.move_to_end(href)
                return ds
        return self._retrying(href, lambda: self._open(href, url))

    def _open(self, href: str, url: str | None = None) -> Any:
        """Open ``href`` once (no retry; GDAL's and rasterio's errors raised as they are).

        Thread-safe: the open itself runs outside the lock, so :meth:`fetch_many` opens many files
        at once."""
        import rasterio

        with self._lock:
            ds = self._datasets.get(href)
            if ds is not None:
                self._datasets.move_to_end(href)
                return ds
            url = url or self._urls.get(href)
        with self._env_ctx():
            ds = rasterio.open(url or href)
        if ds.count < 1:
            ds.close()
            from pipeline.reading.cube import ReadFailure

            raise ReadFailure(
                f"unreadable file: {href} has no raster band", "corrupt", asset=href.split("?")[0]
            )
        with self._lock:
            raced = self._datasets.get(href)
            if raced is not None:  # another thread opened it meanwhile
                ds.close()
                return raced
            self.opens += 1
            self._datasets[href] = ds
            self._urls[href] = url
            while len(self._datasets) > self.max_open:
                old_href, old = self._datasets.popitem(last=False)
                self._info.pop(old_href, None)
                self._urls.pop(old_href, None)
                old.close()
        return ds

    def _retrying(self, href: str, request: Any) -> Any:
        """``request()``, tried up to ``attempts`` times while it fails transiently.

        Between tries the dataset is closed and GDAL's cached bytes of the file dropped (a
        truncated body leaves a dataset that fails every later read), then it waits
        :func:`backoff_s`. Raises the classified :class:`pipeline.reading.cube.ReadFailure` of
        the last try; errors that are not about reading propagate as they are.
        """
        from pipeline.reading.cube import ReadFailure, classify_read_error

        for attempt in range(1, self.attempts + 1):
            try:
                return request()
            except Exception as exc:  # noqa: BLE001 - classified, others re-raised
                failure = classify_read_error(exc)
                if failure is None:
                    raise
                url = self._urls.get(href) or href
                remote = url.startswith(("http://", "https://"))
                if failure.kind == "corrupt" and remote:
                    # GDAL says "not recognized as a supported file format" when the request
                    # for the header failed (429, 503, a reset): ask the store what it says.
                    status = probe_status(url)
                    if status is None or status >= 400:
                        failure = ReadFailure(
                            f"HTTP {status}: {failure.message}" if status else failure.message,
                            "http" if status else "io",
                            status,
                        )
                final = (
                    attempt == self.attempts
                    or failure.status in FINAL_STATUS
                    or (failure.kind == "corrupt" and not remote)
                )
                if final:
                    if isinstance(exc, ReadFailure) and failure.kind == exc.kind:
                        raise
                    _raise_read_failure(failure, href)
            self.retries += 1
            self._reopen_later(href)
            time.sleep(backoff_s(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _reopen_later(self, href: str) -> None:
        """Close ``href``'s dataset and drop GDAL's cached bytes of it (kept: the URL)."""
        import rasterio.cache

        with self._lock:
            ds = self._datasets.pop(href, None)
            if ds is not None:
                ds.close()
            self._info.pop(href, None)
            url = self._urls.get(href) or href
        if "://" in url:
            rasterio.cache.invalidate(url.split("?")[0])

    def info(self, href: str, url: str | None = None) -> RasterInfo:
        """CRS, transform, shape, block shape and dtype of ``href`` (opened once, from ``url``
        if given: e.g. a signed URL, while the cache key stays the unsigned ``href``)."""
        with self._lock:
            ds = self._dataset(href, url)
            info = self._info.get(href)
            if info is None:  # rasterio builds a new CRS and transform on every attribute access
                info = RasterInfo(ds.crs, ds.transform, ds.shape, ds.block_shapes[0], ds.dtypes[0])
                self._info[href] = info
            return info

    def scratch(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A work array of this thread, reused from call to call (uninitialised contents).

        A 1024 px window of 12 acquisitions is 250 MB of DN: allocated afresh per window, the
        kernel's page faults on first touch cost more CPU than decoding it. Only one array per
        ``name`` and thread is kept (the last shape asked for).
        """
        arr = getattr(self._scratch, name, None)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            setattr(self._scratch, name, None)  # free the old one before allocating
            arr = np.empty(shape, dtype)
            setattr(self._scratch, name, arr)
        return arr

    # -- blocks ---------------------------------------------------------------------------
    def _block(self, href: str, ds: Any, br: int, bc: int, bh: int, bw: int) -> np.ndarray:
        from rasterio.windows import Window

        key = (href, br, bc)
        blk = self._blocks.get(key)
        if blk is not None:
            self._blocks.move_to_end(key)
            self.hits += 1
            return blk
        h, w = ds.shape
        r0, c0 = br * bh, bc * bw
        win = Window(c0, r0, min(bw, w - c0), min(bh, h - r0))

        def request() -> np.ndarray:
            with self._env_ctx():
                return self._open(href).read(1, window=win)

        blk = self._retrying(href, request)
        self.decoded += 1
        self._blocks[key] = blk
        self._nbytes += blk.nbytes
        while self._nbytes > self.cache_bytes and len(self._blocks) > 1:
            _, old = self._blocks.popitem(last=False)
            self._nbytes -= old.nbytes
        return blk

    def _env_ctx(self):
        """GDAL's settings of the read path for one request (a no-op in the read threads, which
        hold them for their lifetime)."""
        import contextlib

        import rasterio

        if getattr(_READ_THREAD, "env_key", None) == self._env_key:
            return contextlib.nullcontext()
        return rasterio.Env(**self._env)

    def read(
        self,
        href: str,
        row0: int,
        col0: int,
        height: int,
        width: int,
        url: str | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Full-resolution pixels [row0, row0 + height) x [col0, col0 + width) of band 1.

        Pixels outside the raster are 0 (nodata). ``out`` ((height, width), any contents): write
        there instead of a new array (every pixel is written). Raises
        :class:`pipeline.reading.cube.ReadFailure`.
        """
        with self._lock:
            ds = self._dataset(href, url)
            h, w = ds.shape
            r_lo, r_hi = max(row0, 0), min(row0 + height, h)
            c_lo, c_hi = max(col0, 0), min(col0 + width, w)
            inside = (
                r_lo == row0 and c_lo == col0 and r_hi - r_lo == height and c_hi - c_lo == width
            )
            if out is None:
                out = (np.empty if inside else np.zeros)((height, width), dtype=ds.dtypes[0])
            elif not inside:
                out[...] = 0
            if r_lo >= r_hi or c_lo >= c_hi:
                return out
            bh, bw = ds.block_shapes[0]
            if bh < 16:  # striped (not tiled): a block cache does not pay off
                from rasterio.windows import Window

                win = Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo)

                def request() -> np.ndarray:
                    with self._env_ctx():
                        return self._open(href).read(1, window=win)

                out[r_lo - row0 : r_hi - row0, c_lo - col0 : c_hi - col0] = self._retrying(
                    href, request
                )
                self.decoded += 1
                return out
            for br in range(r_lo // bh, (r_hi - 1) // bh + 1):
                for bc in range(c_lo // bw, (c_hi - 1) // bw + 1):
                    blk = self._block(href, ds, br, bc, bh, bw)
                    y0, x0 = br * bh, bc * bw
                    ya, yb = max(r_lo, y0), min(r_hi, y0 + blk.shape[0])
                    xa, xb = max(c_lo, x0), min(c_hi, x0 + blk.shape[1])
                    out[ya - row0 : yb - row0, xa - col0 : xb - col0] = blk[
                        ya - y0 : yb - y0, xa - x0 : xb - x0
                    ]
            return out

    # -- many requests in flight ---------------------------------------------------------
    def fetch_many(self, jobs: list[tuple[str, str | None, Callable[[RasterInfo], Any]]]) -> None:
        """Open files and fetch the blocks of their windows, :attr:`threads` files at a time.

        ``jobs``: (href, url or None, ``window_of``) per file, where ``window_of(info)`` gives the
        (row0, col0, height, width) of full-resolution pixels wanted from the file's
        :class:`RasterInfo`, or None for nothing; a file listed twice is fetched for its first
        job only.

        Latency hiding: one task per file opens it (its header requests) and at once reads its
        missing blocks, in one read when they form a rectangle (GDAL merges the byte ranges of
        consecutive blocks into one request), while the other tasks wait on other files. Opening
        every file first and fetching after (two phases) left the requests of the slowest open
        as a gap in each thread and made GDAL fetch the header of most files a second time
        (measured over the loopback store at 30 ms: 3.6 requests per file against 2.9).

        Memory stays bounded: at most half the block cache is fetched per call (the blocks over
        it are left to :meth:`read`), and no more than half of ``max_open`` files are opened per
        round, so no dataset being read is closed by the open-file LRU. Errors are left to
        :meth:`read`, which retries and classifies them.
        """
        if self.threads <= 1:
            return
        todo = list({href: (href, url, fn) for href, url, fn in reversed(jobs)}.values())[::-1]
        budget = [max(1, self.cache_bytes // 2)]
        for batch in _batches(todo, max(1, self.max_open // 2)):
            list(self._pool().map(lambda j: _quietly(self._fetch_file, *j, budget), batch))

    def _fetch_file(
        self, href: str, url: str | None, window_of: Callable[[RasterInfo], Any], budget: list
    ) -> None:
        """Open ``href`` (retried) and fetch the blocks of ``window_of(info)`` that are not
        cached, if ``budget`` (bytes left to this call, shared by its tasks) allows."""
        ds = self._dataset(href, url)
        win = window_of(self.info(href))
        if win is None:
            return
        row0, col0, height, width = win
        with self._lock:
            h, w = ds.shape
            bh, bw = ds.block_shapes[0]
            r_lo, r_hi = max(row0, 0), min(row0 + height, h)
            c_lo, c_hi = max(col0, 0), min(col0 + width, w)
            if bh < 16 or r_lo >= r_hi or c_lo >= c_hi:
                return
            missing = [
                (br, bc)
                for br in range(r_lo // bh, (r_hi - 1) // bh + 1)
                for bc in range(c_lo // bw, (c_hi - 1) // bw + 1)
                if (href, br, bc) not in self._blocks
            ]
            cost = len(missing) * bh * bw * np.dtype(ds.dtypes[0]).itemsize
            if not missing or cost > budget[0]:
                return
            budget[0] -= cost
        self._fetch(href, missing, bh, bw, (h, w), ds)

    def _fetch(self, href, blocks, bh, bw, shape, ds=None) -> None:
        """Decode ``blocks`` ((row, col) block indices) of ``href`` into the cache (one read of
        their bounding rectangle when they fill it, else one read per block). ``ds``: the open
        dataset to read first (a retry reopens it)."""
        from rasterio.windows import Window

        h, w = shape
        rows = sorted({b[0] for b in blocks})
        cols = sorted({b[1] for b in blocks})
        rect = (
            len(blocks) == len(rows) * len(cols)
            and rows == list(range(rows[0], rows[-1] + 1))
            and cols == list(range(cols[0], cols[-1] + 1))
        )
        parts = [blocks] if rect else [[b] for b in blocks]
        for part in parts:
            r0, c0 = part[0][0] * bh, part[0][1] * bw
            r1 = min(h, (part[-1][0] + 1) * bh)
            c1 = min(w, (part[-1][1] + 1) * bw)
            win = Window(c0, r0, c1 - c0, r1 - r0)

            opened = [ds] if ds is not None else []

            def request(win=win, opened=opened) -> np.ndarray:
                src = opened.pop() if opened else self._open(href)  # a retry reopens the file
                with self._env_ctx():
                    return src.read(1, window=win)

            arr = self._retrying(href, request)
            blks = {
                (href, br, bc): np.ascontiguousarray(
                    arr[br * bh - r0 : br * bh - r0 + bh, bc * bw - c0 : bc * bw - c0 + bw]
                )
                for br, bc in part
            }  # copied before taking the lock, which the other read threads wait on
            with self._lock:
                for key, blk in blks.items():
                    if key in self._blocks:
                        continue
                    self.decoded += 1
                    self._blocks[key] = blk
                    self._nbytes += blk.nbytes
                while self._nbytes > self.cache_bytes and len(self._blocks) > 1:
                    _, old = self._blocks.popitem(last=False)
                    self._nbytes -= old.nbytes

    def _pool(self) -> Any:
        """The process's read threads of this size and GDAL settings (:func:`_read_pool`)."""
        return _read_pool(self.threads, self._env_key)

    def lend_pool(self) -> _Lent:
        """This reader's threads for odc-stac's warp (``odc.stac.load(pool=...)``), which runs
        one (band, acquisition) read per thread and closes the pool it is given when done:
        lent, the threads outlive that load, as they outlive the native path's reads."""
        return _Lent(self._pool())

    def forget(self, href: str) -> None:
        """Close ``href``'s dataset and drop its cached blocks (it is read afresh next time)."""
        with self._lock:
            self._reopen_later(href)
            self._urls.pop(href, None)
            for key in [k for k in self._blocks if k[0] == href]:
                self._nbytes -= self._blocks.pop(key).nbytes

    def clear(self) -> None:
        """Close every dataset and drop every cached block."""
        with self._lock:
            for ds in self._datasets.values():
                ds.close()
            self._datasets.clear()
            self._urls.clear()
            self._info.clear()
            self._blocks.clear()
            self._nbytes = 0

    @property
    def cached_mb(self) -> float:
        return self._nbytes / 2**20


_CURL_CACHE_SET = False
_READ_THREAD = threading.local()
"""Per read thread: the GDAL settings (``env_key``) it holds for its lifetime."""
_POOLS: dict[tuple, Any] = {}
_POOLS_LOCK = threading.Lock()
# A forked child has none of its parent's threads: it starts pools of its own.
os.register_at_fork(after_in_child=_POOLS.clear)


def _read_pool(threads: int, env_key: tuple) -> Any:
    """Read threads shared by every :class:`BlockReader` of the process with these settings.

    Each thread enters GDAL's settings once, for its lifetime. Its first requests cost CPU that
    later ones do not (GDAL's and PROJ's per-thread state, a connection to the store): measured
    over the loopback store at 0 ms, a 1024 px read unit of 12 acquisitions took 1.75-2.18
    core-s with 64 fresh threads and 1.18-1.39 with the same threads again (1.15-1.36 with one
    thread), so the threads outlive a reader, as a worker's reader outlives its tiles.
    """
    from concurrent.futures import ThreadPoolExecutor

    key = (threads, env_key)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:

            def enter() -> None:
                import rasterio

                rasterio.Env(**dict(env_key)).__enter__()  # left entered: the thread's settings
                _READ_THREAD.env_key = env_key

            pool = ThreadPoolExecutor(threads, thread_name_prefix="s2lc-read", initializer=enter)
            _POOLS[key] = pool
        return pool


class _Lent:
    """A thread pool lent to a caller that uses it as ``with pool as runner: runner.map(...)``
    (odc-stac's ``pmap``): entering gives the pool, leaving leaves its threads running."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __enter__(self) -> Any:
        return self._pool

    def __exit__(self, *exc: object) -> bool:
        return False


def _size_curl_cache() -> None:
    """Set GDAL's range cache to :data:`CURL_CACHE_BYTES` for the process, once, unless the
    user set ``CPL_VSIL_CURL_CACHE_SIZE`` (GDAL reads it when it first reads over HTTP)."""
    global _CURL_CACHE_SET
    if _CURL_CACHE_SET:
        return
    _CURL_CACHE_SET = True
    from rasterio.env import get_gdal_config, set_gdal_config

    if get_gdal_config("CPL_VSIL_CURL_CACHE_SIZE") is None:
        set_gdal_config("CPL_VSIL_CURL_CACHE_SIZE", str(CURL_CACHE_BYTES))


def is_remote(href: str) -> bool:
    """Whether ``href`` is read over a network (a URL other than ``file://``, or a GDAL
    ``/vsicurl/``, ``/vsis3/``, ... path), where each request waits on the store."""
    if href.startswith("/vsi"):
        return not href.startswith(("/vsimem/", "/vsizip//", "/vsigzip//", "/vsitar//"))
    return "://" in href and not href.startswith("file://")


def _batches(seq: list, n: int) -> list[list]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


def _quietly(fn: Any, *args: Any) -> None:
    """``fn(*args)``, read failures ignored: the serial path meets them again and raises them."""
    from pipeline.reading.failure import ReadFailure

    try:
        fn(*args)
    except ReadFailure:
        pass


def probe_status(url: str, timeout_s: float = 10.0) -> int | None:
    """The HTTP status of a one-byte range request for ``url``, or None when none came back
    (a reset, a timeout): tells a lost object (404), a refusal (403) or an overloaded store (429,
    5xx) from a file that arrived and is corrupt (206/200)."""
    import http.client
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - http(s) only
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, http.client.HTTPException):
        return None


def _raise_read_failure(exc: Exception, href: str) -> None:
    """Raise ``exc`` as a classified :class:`pipeline.reading.cube.ReadFailure` (others as they are)."""
    from pipeline.reading.cube import classify_read_error

    failure = classify_read_error(exc)
    if failure is None:
        raise exc
    asset = href.split("?")[0]
    if asset not in failure.message:
        failure.message = f"{failure.message} ({asset})"
    failure.asset = asset
    raise failure from None


_READER: BlockReader | None = None
_READER_LOCK = threading.Lock()


def block_reader() -> BlockReader:
    """This process's :class:`BlockReader` (cache size from ``S2LC_BLOCK_CACHE_MB``, attempts per
    request from ``S2LC_READ_ATTEMPTS``)."""
    global _READER
    with _READER_LOCK:
        if _READER is None:
            env = os.environ.get(CACHE_ENV, "").strip()
            try:
                mb = float(env) if env else DEFAULT_CACHE_MB
            except ValueError:
                mb = -1.0
            if not mb >= 0:
                from pipeline.base.errors import UserError

                raise UserError(f"{CACHE_ENV}={env!r}: give the block cache size in MiB (>= 0)")
            tries = os.environ.get(ATTEMPTS_ENV, "").strip() or str(READ_ATTEMPTS)
            if not tries.isdigit() or int(tries) < 1:
                from pipeline.base.errors import UserError

                raise UserError(f"{ATTEMPTS_ENV}={tries!r}: give the attempts per request (>= 1)")
            threads = os.environ.get(THREADS_ENV, "").strip() or str(READ_THREADS)
            if not threads.isdigit() or int(threads) < 1:
                from pipeline.base.errors import UserError

                raise UserError(f"{THREADS_ENV}={threads!r}: give the files read at once (>= 1)")
            _READER = BlockReader(mb, attempts=int(tries), threads=int(threads))
        return _READER
