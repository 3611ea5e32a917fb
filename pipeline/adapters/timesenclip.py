"""TimeSenCLIP: a pixel's (T, 10) composite series -> one embedding (T in 1, 4, 12)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.adapters.base import ModelAdapter, class_probabilities
from pipeline.base.errors import UserError
from pipeline.grid.tiling import ChipLayout, aoi_mask
from pipeline.stac.bands import BANDS


class TimeSenCLIPAdapter(ModelAdapter):
    """Per-pixel time series of all ten bands, reflectance x 1e4, BOA offset removed."""

    name = "timesenclip"
    title = "TimeSenCLIP"
    bands = BANDS
    scale = 1e4
    input = "pixel"
    default_period = "monthly"
    period_counts = (1, 4, 12)
    throughput_key = "timesenclip_pixels_per_s"
    point_series = True

    def check_periods(self, n_periods: int, start: Any, end: Any, period: str) -> None:
        if n_periods not in self.period_counts:
            raise UserError(
                f"TimeSenCLIP takes 12 monthly, 4 quarterly or 1 annual composite(s); {start} to "
                f"{end} gives {n_periods} {period} periods: map one year at a time"
            )

    def embed(self, m: Any, x: np.ndarray) -> np.ndarray:
        from model.engine import embed_pixels

        return embed_pixels(m, x)

    def _series(self, values: np.ndarray) -> np.ndarray:
        """(P, B, N) composite reflectance -> (N, P, B) model input."""
        return np.ascontiguousarray(np.transpose(values, (2, 0, 1))) * np.float32(self.scale)

    def infer(self, job: Any, m: Any, comp: Any, plan: ChipLayout | None, valid: np.ndarray):
        """Every valid pixel's series -> probabilities (on the device unless embeddings are kept)."""
        from model.engine import embed_pixels, pixel_probabilities

        series = self._series(comp.values[:, :, valid])
        if not job.model.head and not job.output.save_embeddings and job.ood is None:
            # Classify on the device: only (N, C) probabilities come back, not 512-wide embeddings.
            return pixel_probabilities(m, series, job.classifier, job.calibration), None, valid
        emb = embed_pixels(m, series) if series.shape[0] else np.zeros((0, m.embed_dim), np.float32)
        return class_probabilities(job, emb), emb, valid

    def sample(
        self, job: Any, m: Any, comp: Any, plan: ChipLayout | None, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Up to ``n`` random valid pixels inside the region."""
        geom = job.inputs.region()
        valid = (comp.counts.sum(axis=0) > 0) & aoi_mask(job.tile.geobox, geom)
        idx = np.flatnonzero(valid.ravel())
        if idx.size == 0:
            return np.zeros((0, m.embed_dim), np.float32)
        idx = np.sort(rng.permutation(idx)[:n])
        p, b = comp.values.shape[:2]
        series = comp.values.reshape(p, b, -1)[:, :, idx].transpose(2, 0, 1) * np.float32(
            self.scale
        )
        return self.embed(m, np.ascontiguousarray(series))


ADAPTER = TimeSenCLIPAdapter()
