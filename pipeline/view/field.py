"""Free-text queries for the viewer, on top of the field API (:mod:`pipeline.field`).

A query is computed only where it is looked at. :meth:`FieldQuery.prepare` encodes the text
once and projects it (and, for a probability, the map's legend classes) into the field's
components; :meth:`FieldQuery.tile` then computes one Web Mercator tile (256 x 256 px) from the
int8 codes of the field pixels under it, in the code space (:func:`pipeline.field.code_cosines`),
reading every ``step``-th pixel where a tile pixel covers several field pixels, and warps it onto
the tile. The colour range comes from a sample of the field's chunks
(:meth:`FieldQuery.colour_range`), so a query over a continental map costs a few chunks plus the
tiles on screen, not the whole map. The field's model is loaded once, in the background, when
the viewer starts, so the first query does not pay for it.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from pipeline.base.errors import UserError
from pipeline.field import (
    KINDS,
    code_cosines,
    encode_text,
    legend_classifier,
    load_model,
    project,
    query_probability,
)
from pipeline.field import open_field as _open

__all__ = ["FieldQuery", "Query", "open_field"]

log = logging.getLogger(__name__)

#: Edge of a viewer tile (px), as :data:`pipeline.view.reading.TILE_SIZE`.
TILE_SIZE = 256
#: The colour range is the 2-98 % range of at most this many pixels, read from at most
#: :data:`SAMPLE_CHUNKS` of the field's chunks spread over the map.
SAMPLE_PX = 65_536
SAMPLE_CHUNKS = 4


@dataclass(frozen=True)
class Query:
    """A prepared query: the text's vector (and the legend's classes, for a probability)
    projected into the field's components (:class:`pipeline.writers.codec.ProjectedVectors`)."""

    text: str
    kind: str
    vectors: Any
    with_classes: bool


class FieldQuery:
    """Answers free-text queries from a map's embedding field (see :func:`open_field`)."""

    def __init__(self, field: Any) -> None:
        self._field = field
        self._ready = threading.Event()
        self._error: str | None = None
        gb = field.geobox
        self.crs = gb.crs.to_wkt()
        self.transform = gb.affine
        threading.Thread(target=self._warm, name="s2lc-view-model", daemon=True).start()

    def _warm(self) -> None:
        import torch  # noqa: PLC0415 (lazy: torch only for text queries)

        # A query encodes one short text: a single thread is fastest, and it never waits on a
        # descheduled sibling on a busy machine (measured on 2 shared cores under load: 0.5 s
        # per text with 1 thread, 6 s with 2).
        torch.set_num_threads(1)
        try:
            # The text tower loads on first use: one prompt now, so the first query is fast.
            load_model(self._field).text_embed(["warm-up"])
        except UserError as exc:
            self._error = str(exc)
        except Exception as exc:  # reported on the first query
            log.exception("loading the field's model failed")
            self._error = f"the field's model could not be loaded ({exc})"
        finally:
            self._ready.set()

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(KINDS)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the field's grid."""
        return tuple(self._field.shape)  # type: ignore[return-value]

    def prepare(self, text: str, kind: str = "similarity") -> Query:
        """Encode and project one query (no pixel is read).

        :raises ValueError: empty text, an unknown ``kind``, a probability on a map without a
            text legend, or the model cannot encode text.
        """
        self._ready.wait()
        if self._error:
            raise ValueError(self._error)
        if kind not in KINDS:
            raise ValueError(f"unknown query kind {kind!r}; choose one of {', '.join(KINDS)}")
        f = self._field
        try:
            q = encode_text(f, [text])
            classes = legend_classifier(f, load_model(f)) if kind == "probability" else None
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if kind == "probability" and classes is None:
            raise ValueError("a probability needs the map's text legend; this map has none")
        vecs = q if classes is None else np.concatenate([q, classes])
        return Query(text, kind, project(f, vecs), classes is not None)

    def scores(self, query: Query, window: tuple[slice, slice]) -> np.ndarray:
        """(h, w) float32 scores of a window (slices may have a step), NaN where nodata:
        the cosine (-1..1) or the probability against the legend (0..1)."""
        valid, cos = code_cosines(self._field, window, query.vectors)
        out = np.full(valid.shape, np.nan, np.float32)
        if cos.shape[0]:
            score = cos[:, :1]
            if query.with_classes:
                score = query_probability(score, cos[:, 1:])
            out[valid] = score[:, 0]
        return out

    def colour_range(self, query: Query) -> tuple[float, float]:
        """The 2-98 % range of the query's scores on a sample: at most :data:`SAMPLE_CHUNKS`
        of the field's chunks, evenly spread in row-major order, every n-th pixel of each so
        that at most :data:`SAMPLE_PX` pixels are scored."""
        wins = self._field.windows()
        pick = np.unique(np.linspace(0, len(wins) - 1, min(SAMPLE_CHUNKS, len(wins))).astype(int))
        per = SAMPLE_PX / len(pick)
        values = []
        for i in pick:
            ys, xs = wins[i]
            n = (ys.stop - ys.start) * (xs.stop - xs.start)
            step = max(1, math.ceil(math.sqrt(n / per)))
            v = self.scores(query, (slice(ys.start, ys.stop, step), slice(xs.start, xs.stop, step)))
            values.append(v[np.isfinite(v)])
        finite = np.concatenate(values) if values else np.zeros(0, np.float32)
        if not finite.size:
            return (0.0, 1.0)
        vmin, vmax = (float(v) for v in np.percentile(finite, [2, 98]))
        if vmax <= vmin:
            vmin, vmax = float(finite.min()), float(finite.max()) + 1e-6
        return vmin, vmax

    def tile_window(self, z: int, x: int, y: int) -> tuple[tuple[slice, slice], Any] | None:
        """The field window under Web Mercator tile ``z/x/y`` (a step where one tile pixel
        covers several field pixels) and its Web Mercator bounds; None where the tile misses
        the field."""
        import morecantile  # noqa: PLC0415 (rio-tiler's tile matrix sets)
        from rasterio.warp import transform_bounds  # noqa: PLC0415

        b = morecantile.tms.get("WebMercatorQuad").xy_bounds(x, y, z)
        left, bottom, right, top = transform_bounds(
            "EPSG:3857", self.crs, b.left, b.bottom, b.right, b.top, densify_pts=21
        )
        inv = ~self.transform
        cols, rows = zip(
            *(
                inv * (px, py)
                for px, py in ((left, top), (right, top), (left, bottom), (right, bottom))
            ),
            strict=True,
        )
        h, w = self.shape
        c0, c1 = max(0, math.floor(min(cols)) - 1), min(w, math.ceil(max(cols)) + 1)
        r0, r1 = max(0, math.floor(min(rows)) - 1), min(h, math.ceil(max(rows)) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        span = max(max(cols) - min(cols), max(rows) - min(rows))
        step = max(1, math.floor(span / TILE_SIZE))
        r0, c0 = r0 - r0 % step, c0 - c0 % step  # the same pixels at every tile of a zoom
        return (slice(r0, r1, step), slice(c0, c1, step)), b

    def tile(self, query: Query, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Tile ``z/x/y`` of a query: ``(scores (256, 256) float32, valid (256, 256) bool)``,
        or None where the tile misses the field. Warped from the field's grid with nearest
        neighbours (each tile pixel shows one field pixel's score)."""
        from rasterio.transform import from_bounds  # noqa: PLC0415
        from rasterio.warp import Resampling, reproject  # noqa: PLC0415

        found = self.tile_window(z, x, y)
        if found is None:
            return None
        (ys, xs), b = found
        values = self.scores(query, (ys, xs))
        step = ys.step
        src_t = self.transform * Affine.translation(xs.start, ys.start) * Affine.scale(step)
        out = np.full((TILE_SIZE, TILE_SIZE), np.nan, np.float32)
        reproject(
            values, out, src_transform=src_t, src_crs=self.crs, src_nodata=np.nan,
            dst_transform=from_bounds(b.left, b.bottom, b.right, b.top, TILE_SIZE, TILE_SIZE),
            dst_crs="EPSG:3857", dst_nodata=np.nan, resampling=Resampling.nearest,
        )  # fmt: skip
        return out, np.isfinite(out)

    def point(self, query: Query, row: int, col: int) -> float | None:
        """The query's score at one field pixel, or None at nodata."""
        v = float(self.scores(query, (slice(row, row + 1), slice(col, col + 1)))[0, 0])
        return v if math.isfinite(v) else None

    def pixel_of(self, lon: float, lat: float) -> tuple[int, int] | None:
        """(row, col) of the field pixel at lon/lat, or None outside the field."""
        from rasterio.warp import transform  # noqa: PLC0415

        xs, ys = transform("EPSG:4326", self.crs, [lon], [lat])
        col, row = ~self.transform * (xs[0], ys[0])
        r, c = math.floor(row), math.floor(col)
        h, w = self.shape
        return (r, c) if 0 <= r < h and 0 <= c < w else None


def open_field(map_dir: Path) -> tuple[FieldQuery | None, str]:
    """The query engine for the field in ``map_dir``, or ``(None, why not)``."""

    try:
        return FieldQuery(_open(map_dir)), ""
    except UserError as exc:
        return None, str(exc)
