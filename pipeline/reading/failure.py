"""Read failure versus no clear observation: one exception type and one classifier.

Lost input must never look like a pixel without a clear observation. Any reader (the odc-stac path
in :mod:`pipeline.reading.cube`, a faster block reader) turns an exception raised while reading scene pixels
into a :class:`ReadFailure` with :func:`classify_read_error`. A failure is *permanent* when
retrying cannot help (HTTP 404/410: the object is gone; a corrupt file, :data:`PERMANENT_STATUS`):
the tile drops that scene, says so and maps the others (:func:`pipeline.run.tile_task.load_composite`),
and the run's scene ledger keeps it as ``read_failure``. Any other read failure is *transient*
and fails its unit of work (a tile): the run records it (:class:`pipeline.run.workspace.TileFailure`),
exits non-zero, and a rerun redoes that tile. Exceptions that are not about reading (bugs) are
left alone.

GDAL retries HTTP 429/502/503/504 itself (:data:`GDAL_HTTP_RETRY`, set unless the environment
sets its own; both read paths set their own, :func:`pipeline.reading.blocks.gdal_options`); a
read that still fails after them, or fails otherwise (a reset, a truncated body), is retried per
request by the read path (:data:`pipeline.reading.blocks.READ_ATTEMPTS`) and is a read failure
when it outlasts those retries.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import rasterio.errors

#: GDAL retries of HTTP 429/502/503/504 (and the seconds between them) unless the environment
#: sets its own; a read that still fails after them is a :class:`ReadFailure`.
GDAL_HTTP_RETRY = {"GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1"}
for _k, _v in GDAL_HTTP_RETRY.items():
    os.environ.setdefault(_k, _v)

#: HTTP statuses that say the object is gone for good (no retry brings it back).
PERMANENT_STATUS = frozenset({404, 410})


class ReadFailure(Exception):
    """Reading scene pixels failed: the input is lost, which is not "no clear observation".

    Raised for an HTTP error that persists after retries (4xx, 5xx), a corrupt or truncated file,
    or another I/O error. Picklable (it crosses Dask process boundaries).

    Attributes:
        message: one line, what failed and GDAL's reason.
        kind: ``http`` (status known), ``corrupt`` (not a readable raster) or ``io``.
        status: the HTTP status where there was one (403, 404, 503, ...), else None.
        scenes: ids of the scenes whose read failed (or that were being read).
        asset: the href (unsigned) whose read failed, where known, else None.
        per_scene: scene id -> the JSON record (:meth:`to_dict`) of that scene's own failure,
            when one read named several scenes (:func:`pipeline.reading.native.load_native`).
    """

    def __init__(
        self,
        message: str,
        kind: str = "io",
        status: int | None = None,
        scenes: Iterable[str] = (),
        asset: str | None = None,
        per_scene: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = " ".join(str(message).split())
        self.kind = kind
        self.status = status
        self.scenes = tuple(scenes)
        self.asset = asset
        self.per_scene = dict(per_scene or {})

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.message, self.kind, self.status, self.scenes, self.asset, self.per_scene)
        return (type(self), args)

    def __str__(self) -> str:
        return self.message

    @property
    def permanent(self) -> bool:
        """Whether no retry can help: HTTP 404/410 (:data:`PERMANENT_STATUS`) or a corrupt file."""
        return self.kind == "corrupt" or self.status in PERMANENT_STATUS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (run.json, the scene ledger)."""
        return {
            "kind": self.kind,
            "status": self.status,
            "permanent": self.permanent,
            "asset": self.asset,
            "message": self.message,
            "scenes": list(self.scenes),
        }

    def permanent_scenes(self) -> dict[str, dict[str, Any]]:
        """Scene id -> failure record (:meth:`to_dict`) of each scene that failed permanently.

        Empty when the failure is transient, or when it cannot be pinned on particular scenes
        (a read of several scenes that named none of them): then the unit of work fails.
        """
        if self.per_scene:
            return {s: r for s, r in self.per_scene.items() if r.get("permanent")}
        if self.permanent and len(self.scenes) == 1:
            return {self.scenes[0]: self.to_dict()}
        return {}


_HTTP_STATUS = re.compile(r"HTTP (?:response|error) code\s*:?\s*(\d{3})", re.IGNORECASE)
_CORRUPT = re.compile(
    r"not recognized as (?:a supported file format|being in a supported file format)|"
    r"TIFFReadDirectory|TIFFFillStrip|TIFFFillTile|IReadBlock failed|not a TIFF|"
    r"read error|truncated|cannot decode|Failed to read|corrupt",
    re.IGNORECASE,
)


def classify_read_error(exc: BaseException, scenes: Iterable[str] = ()) -> ReadFailure | None:
    """A :class:`ReadFailure` for an exception raised while reading raster data, else None.

    HTTP errors (GDAL reports ``HTTP response code: 403``) become ``kind="http"`` with the status;
    rasterio/GDAL errors about the file's content become ``corrupt``; other rasterio, GDAL and OS
    errors ``io``. Exceptions that are not about reading (programming errors) give None: they must
    propagate as they are. ``scenes`` names the scenes being read, for the record.
    """
    if isinstance(exc, ReadFailure):
        return exc

    if not isinstance(exc, (rasterio.errors.RasterioError, OSError)):
        return None
    # rasterio raises "Read failed. See previous exception for details." with GDAL's error
    # (the HTTP status, the curl error) chained: read the chain too.
    parts, seen, e = [], set(), exc
    while e is not None and id(e) not in seen and len(parts) < 4:
        seen.add(id(e))
        parts.append(" ".join(str(e).split()))
        e = e.__cause__ or e.__context__
    text = "; ".join(p for p in parts if p) or type(exc).__name__
    scenes = tuple(scenes)
    m = _HTTP_STATUS.search(text)
    if m:
        status = int(m.group(1))
        return ReadFailure(f"HTTP {status}: {text[:300]}", "http", status, scenes)
    if _CORRUPT.search(text):
        return ReadFailure(f"unreadable file: {text[:300]}", "corrupt", None, scenes)
    return ReadFailure(f"read error: {text[:300]}", "io", None, scenes)


def detached_read_failures[T](task: Callable[..., T]) -> Callable[..., T]:
    """Wrap a Dask task so a :class:`ReadFailure` leaves it without its chained exceptions.

    A ReadFailure raised while GDAL's error is being handled carries that error as
    ``__context__``; Dask pickles the chain (tblib), rasterio's ``CPLE_*`` errors do not unpickle,
    and Dask then sends a plain ``Exception(repr(...))`` instead: the driver could no longer tell
    a read failure from a bug. The message, kind, status and scenes are what the driver needs.
    """

    @functools.wraps(task)
    def run(*args: Any, **kwargs: Any) -> T:
        try:
            return task(*args, **kwargs)
        except ReadFailure as exc:
            failure = exc
        failure.__context__ = failure.__cause__ = None
        raise failure  # outside the except block: nothing is chained again

    return run
