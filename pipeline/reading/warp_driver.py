"""odc-stac's reader driver with per-read retries: a transient fault costs one source read again.

odc-stac's warp (:func:`pipeline.reading.cube.load_cube`, every grid other than the scenes' own
lattice) reads each source band of each scene into the destination window with one call of its
reader (odc.loader's ``RioReader.read``: open the file, read or warp its window). With
``fail_on_error=True`` the first failing read stops the whole load, so under a faulty store
(HTTP 429/503 bursts, connection resets, truncated bodies) a load of hundreds of reads used to
fail somewhere on nearly every try and was redone from the start.

:class:`RetryingRioDriver` is odc.loader's ``RioDriver`` (the ReaderDriver protocol, passed as
``odc.stac.load(..., driver=...)``) whose reader retries that one read as
:class:`pipeline.reading.blocks.BlockReader` retries a request of the native path:

* a transient failure (HTTP 429 or 5xx after GDAL's own retries, a connection reset, a timeout,
  a truncated body, which decodes as a corrupt file over HTTP) drops GDAL's cached bytes of that
  one file (``rasterio.cache.invalidate``: a truncated body would otherwise be served again from
  GDAL's range cache) and reads again after :func:`pipeline.reading.blocks.backoff_s`, up to
  :data:`~pipeline.reading.blocks.READ_ATTEMPTS` tries (``S2LC_READ_ATTEMPTS``);
* HTTP 403 (re-signed by the caller), 404 and 410 are final at once, and so are a corrupt local
  file and a local file that is not there. GDAL often names no status (a missing object reads as "not recognized as a supported
  file format"), so a remote read that failed without one asks the store for the object's status
  (:func:`pipeline.reading.blocks.probe_status`, one request).

The final failure is a :class:`pipeline.reading.failure.ReadFailure` naming its scene and asset,
so a permanent one (404/410, corrupt) lets the tile drop exactly that scene
(:meth:`ReadFailure.permanent_scenes`). A retried read writes a fresh array, which odc-stac fuses
into the output only once it succeeded, so the result is bit-identical to a fault-free load.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from odc.loader._rio import RioDriver, RioReader, capture_rio_env, rio_read

from pipeline.reading.blocks import FINAL_STATUS, backoff_s, gdal_options, probe_status
from pipeline.reading.failure import ReadFailure, classify_read_error

__all__ = ["RetryingRioDriver", "RetryingRioReader"]

_log = logging.getLogger(__name__)
_tries = threading.local()


class _QuietRetries(logging.Filter):
    """Drops odc.loader's "Failed to load" error of a read that will be retried (this thread's
    read is not on its last try); the last try's failure is raised as a ReadFailure."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_tries, "quiet", False)


logging.getLogger("odc.loader._rio").addFilter(_QuietRetries())

#: GDAL's own retries of one HTTP request answered 429/5xx: the native path's
#: (:func:`pipeline.reading.blocks.gdal_options`), instead of odc-stac's cloud defaults (10 retries
#: from 0.5 s, doubling: minutes behind one burst).
_GDAL_RETRY_KEYS = ("GDAL_HTTP_MAX_RETRY", "GDAL_HTTP_RETRY_DELAY")


class RetryingRioReader(RioReader):
    """One source band of one scene, read into the destination window with per-read retries."""

    def __init__(self, src: Any, ctx: Any, driver: RetryingRioDriver) -> None:
        super().__init__(src, ctx)
        self._driver = driver

    def read(
        self,
        cfg: Any,
        dst_geobox: Any,
        *,
        dst: Any = None,
        selection: Any = None,
    ) -> tuple[tuple[slice, slice], Any]:
        """odc.loader's ``RioReader.read`` (the destination ROI and its pixels), tried up to
        ``driver.attempts`` times while it fails transiently.

        :raises ReadFailure: the read's last failure, naming its scene and asset (unsigned).
        """
        uri = str(self._src.uri)
        asset = uri.split("?")[0]
        remote = uri.startswith(("http://", "https://"))
        drv = self._driver
        scenes = (drv.href_scene[asset],) if asset in drv.href_scene else ()
        for attempt in range(1, drv.attempts + 1):
            _tries.quiet = attempt < drv.attempts
            try:
                return rio_read(self._src, cfg, dst_geobox, dst=dst, selection=selection)
            except AssertionError:
                # odc asserts the source has a CRS: a header cut short by a truncated body opens
                # as a dataset without georeferencing (GDAL warns only), which is a read failure
                if not _ungeoreferenced(uri):
                    raise
                failure = ReadFailure(f"unreadable file: {asset} opened without georeferencing "
                                      "(truncated header?)", "corrupt", None, scenes)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - classified, others re-raised
                failure = classify_read_error(exc, scenes)
                if failure is None:
                    raise
            finally:
                _tries.quiet = False
            if remote and failure.status is None:
                status = probe_status(uri)
                if status is not None and status >= 400:
                    failure = ReadFailure(f"HTTP {status}: {failure.message}", "http", status,
                                          scenes)  # fmt: skip
                elif failure.kind == "corrupt" and status is None:  # the probe got no answer
                    failure = ReadFailure(failure.message, "io", None, scenes)
            final = (
                attempt == drv.attempts
                or failure.status in FINAL_STATUS
                or (not remote and (failure.kind == "corrupt" or _missing_local(uri)))
            )
            if final:
                if asset not in failure.message:
                    failure.message = f"{failure.message} ({asset})"
                failure.asset = asset
                # raised outside the handler: no chained GDAL exception (not always picklable)
                raise failure
            drv.retries += 1
            _log.info("transient read failure of %s (%s), try %d: retrying",
                      asset, failure.message[:120], attempt)  # fmt: skip
            if remote:
                import rasterio.cache

                rasterio.cache.invalidate(asset)
            time.sleep(backoff_s(attempt))
        raise AssertionError("unreachable")  # pragma: no cover


def _missing_local(uri: str) -> bool:
    """Whether ``uri`` is a local path (or ``file://`` URI) with no file there: no retry helps."""
    import os

    path = uri.removeprefix("file://")
    return "://" not in path and not path.startswith("/vsi") and not os.path.exists(path)


def _ungeoreferenced(uri: str) -> bool:
    """Whether ``uri`` opens (now, through GDAL's cached bytes) without a CRS or geotransform."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(uri, sharing=False) as ds:
                return ds.crs is None or ds.transform.is_identity
    except (rasterio.errors.RasterioError, OSError):
        return True  # no longer opens at all: a read failure as well


class RetryingRioDriver(RioDriver):
    """odc.loader's ``RioDriver`` whose readers retry each source read (module docstring).

    Args:
        href_scene: unsigned href -> scene id, to name the scene of a failed read.
        attempts: tries of one read (:data:`pipeline.reading.blocks.READ_ATTEMPTS`), >= 1.
        md_parser, aux_reader: as ``RioDriver`` (odc-stac's STAC parser and aux reader).

    ``retries`` counts the reads tried again (in this process).
    """

    def __init__(
        self,
        href_scene: dict[str, str],
        attempts: int,
        md_parser: Any = None,
        aux_reader: Any = None,
    ) -> None:
        super().__init__(md_parser=md_parser, aux_reader=aux_reader)
        self.href_scene = {h.split("?")[0]: s for h, s in href_scene.items()}
        self.attempts = max(1, int(attempts))
        self.retries = 0

    def capture_env(self) -> dict[str, Any]:
        """odc-stac's GDAL settings with the native path's HTTP retries (:data:`_GDAL_RETRY_KEYS`)."""
        opts = gdal_options(threads=1)
        return {**capture_rio_env(), **{k: opts[k] for k in _GDAL_RETRY_KEYS}}

    def open(self, src: Any, ctx: Any) -> RetryingRioReader:
        """The reader of one source (scene asset, band)."""
        return RetryingRioReader(src, ctx, self)
