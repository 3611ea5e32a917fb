"""Free-text queries for the viewer, on top of the field API (:mod:`pipeline.field`).

A query's heat map covers the whole map grid: ``(h, w)`` float32 (cosine similarity of every
pixel's embedding with the text's, or its probability against the map's legend), NaN where the
field has no value. The field's model is loaded once, in the background, when the viewer starts,
so the first query does not pay for it.
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
from pipeline.field import KINDS, load_model, query_window
from pipeline.field import open_field as _open

__all__ = ["FieldQuery", "HeatMap", "open_field"]

log = logging.getLogger(__name__)

# Largest heat map computed per query; larger maps are queried on every n-th pixel (n x n fewer),
# which keeps a query interactive on a continental map.
MAX_QUERY_PX = 16_000_000


@dataclass(frozen=True)
class HeatMap:
    """A query's scores on the map grid: ``values`` ``(h, w)`` float32, placed by crs/transform."""

    values: np.ndarray
    crs: Any
    transform: Any
    kind: str
    step: int = 1
    """Pixels of the map per heat-map pixel along each axis (1: full resolution)."""


class FieldQuery:
    """Answers free-text queries from a map's embedding field (see :func:`open_field`)."""

    def __init__(self, field: Any, max_px: int = MAX_QUERY_PX) -> None:
        self._field = field
        self.max_px = max_px
        self._ready = threading.Event()
        self._error: str | None = None
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

    def heat(self, text: str, kind: str = "similarity") -> HeatMap:
        """The heat map of ``text`` over the whole map (every ``step``-th pixel on large maps).

        :raises ValueError: empty text, an unknown ``kind``, or the model cannot encode text.
        """

        self._ready.wait()
        if self._error:
            raise ValueError(self._error)
        f = self._field
        h, w = f.shape
        step = max(1, math.ceil(math.sqrt(h * w / self.max_px)))
        values = np.full((-(-h // step), -(-w // step)), np.nan, np.float32)
        try:
            for ys, xs in f.windows():  # tile by tile: memory bounded by the store's tile size
                r0 = ys.start + (-ys.start) % step
                c0 = xs.start + (-xs.start) % step
                if r0 >= ys.stop or c0 >= xs.stop:
                    continue
                win = (slice(r0, ys.stop, step), slice(c0, xs.stop, step))
                q = query_window(f, [text], win, kind=kind)[0]
                values[
                    r0 // step : r0 // step + q.shape[0], c0 // step : c0 // step + q.shape[1]
                ] = q
        except UserError as exc:
            raise ValueError(str(exc)) from None
        gb = f.geobox
        return HeatMap(values, str(gb.crs), gb.affine * Affine.scale(step), kind, step)


def open_field(map_dir: Path) -> tuple[FieldQuery | None, str]:
    """The query engine for the field in ``map_dir``, or ``(None, why not)``."""

    try:
        return FieldQuery(_open(map_dir)), ""
    except UserError as exc:
        return None, str(exc)
