"""SenCLIP: sliding RGB chips of each period's composite -> chip probabilities -> pixels."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from pipeline.adapters.base import ModelAdapter, band_index, class_probabilities
from pipeline.grid.tiling import ChipLayout, blend

#: Bands the patch model sees, in its order (red, green, blue).
RGB = ("B4", "B3", "B2")


def usable_chips(chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chips the patch model sees, for the map and for its calibration sample alike.

    Args:
        chips: (n, 3, win, win) reflectance, NaN where unobserved.

    Returns:
        ok: (n,) bool, the chip has at least one observed pixel;
        filled: (ok.sum(), 3, win, win) float32, those chips with their gaps set to the chip's
        per-band mean.
    """
    ok = ~np.all(np.isnan(chips), axis=(1, 2, 3))
    sel = np.ascontiguousarray(chips[ok], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        fill = np.nanmean(sel, axis=(2, 3), keepdims=True)
    return ok, np.where(np.isnan(sel), fill, sel)


class SenCLIPAdapter(ModelAdapter):
    """RGB chips (reflectance 0-1, min-max stretched by the model) of ``--window`` pixels."""

    name = "senclip"
    title = "SenCLIP"
    bands = RGB
    scale = 1.0
    input = "patch"
    default_period = "annual"
    throughput_key = "senclip_chips_per_s"

    def default_calibration(self, head: str | None) -> Literal["reference", "none"]:
        # The reference's class-mean calibration is SenCLIP's zero-shot practice; it hurts
        # trained pixel models and few-shot heads (measured on the planted-signal demo).
        return "none" if head else "reference"

    def embed(self, m: Any, x: np.ndarray) -> np.ndarray:
        from model.engine import embed_chips

        return embed_chips(m, x)

    def infer(self, job: Any, m: Any, comp: Any, plan: ChipLayout | None, valid: np.ndarray):
        """Sliding RGB chips per period -> chip probabilities -> smooth blend per pixel.

        Each period's composite gives every chip a probability vector; a chip's probabilities
        are averaged over the periods where it has data (a temporal ensemble) and the chips are
        blended into pixels with :func:`pipeline.grid.tiling.blend`. Chips with no data at all stay
        NaN and do not count; gaps inside a chip take the chip's per-band mean before the
        min-max stretch. Pixels no chip with data covers leave ``valid``.
        """
        from model.engine import chip_probabilities, embed_chips

        rgb_idx = band_index(self.bands)
        n_chips = plan.n_chips
        probs_sum = emb_sum = None
        used = np.zeros(n_chips, np.float32)
        for p in range(comp.values.shape[0]):
            chips = plan.extract(comp.values[p, rgb_idx])  # (n, 3, win, win) view
            ok, sel = usable_chips(chips)
            if not ok.any():
                continue
            if job.model.head or job.output.save_embeddings or job.ood is not None:
                emb = embed_chips(m, sel)
                probs = class_probabilities(job, emb)
            else:  # classify on the device; embeddings are not needed
                emb = None
                probs = chip_probabilities(m, sel, job.classifier, job.calibration)
            if probs_sum is None:
                probs_sum = np.zeros((n_chips, probs.shape[1]), np.float64)
                emb_sum = np.zeros((n_chips, m.embed_dim), np.float64)
            probs_sum[ok] += probs
            if emb is not None:
                emb_sum[ok] += emb
            used[ok] += 1
        if probs_sum is None:
            return None, None, np.zeros_like(valid)
        has = used > 0
        chip_probs = np.where(has[:, None], probs_sum / np.maximum(used, 1)[:, None], np.nan)
        pix_probs = blend(chip_probs, plan)  # (C, ny, nx), NaN where no chip has data
        valid = valid & np.isfinite(pix_probs).all(axis=0)
        pix_emb = None
        if job.output.save_embeddings or job.ood is not None:
            chip_emb = np.where(has[:, None], emb_sum / np.maximum(used, 1)[:, None], np.nan)
            pix_emb = blend(chip_emb, plan)
            pix_emb /= np.maximum(np.linalg.norm(pix_emb, axis=0, keepdims=True), 1e-12)
        return pix_probs[:, valid].T, None if pix_emb is None else pix_emb[:, valid].T, valid

    def sample(
        self, job: Any, m: Any, comp: Any, plan: ChipLayout | None, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Up to ``n`` random chips of any period that the map would classify."""
        rgb_idx = band_index(self.bands)
        chips = np.concatenate(
            [plan.extract(comp.values[p, rgb_idx]) for p in range(comp.values.shape[0])]
        )
        # the chips the map classifies: any observed pixel, gaps filled (a sample of gap-free
        # chips only was empty wherever every chip reaches past the data, e.g. a small region)
        ok, filled = usable_chips(chips)
        if not ok.any():
            return np.zeros((0, m.embed_dim), np.float32)
        pick = np.sort(rng.permutation(int(ok.sum()))[:n])
        return self.embed(m, np.ascontiguousarray(filled[pick]))


ADAPTER = SenCLIPAdapter()
