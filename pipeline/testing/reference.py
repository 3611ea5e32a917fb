"""The field's reference sample: model inputs drawn from the demo landscape, the same everywhere.

A model's field basis (:mod:`pipeline.run.basis`) is fitted once per checkpoint on the
embeddings of this sample, so it must be something every installation regenerates bit for bit
without data or network: the demo landscape (:func:`pipeline.testing.demo.catalog.build_landscape`
with the demo's seed and grid, the whole 3.28 km x 3.28 km scene including its halo), seen
cloud-free on mid-month days of :data:`YEAR`.

* **Pixels** (a pixel model such as TimeSenCLIP): :attr:`ReferenceSample.pixels` pixels,
  stratified by truth class (the same count from each of the six classes, drawn with
  ``default_rng(seed)``; a class with fewer pixels gives all it has), each as a series of every
  composite count the model takes (``period_counts``: TimeSenCLIP 12 monthly, 4 quarterly and
  1 annual composite(s)), the pixels split evenly among the counts. A quarterly or annual
  composite is the mean of its months' reflectance.
* **Chips** (a patch model such as SenCLIP): :attr:`ReferenceSample.chips` chips of
  :attr:`ReferenceSample.window` pixels at seeded positions, each from one of the 12 monthly
  composites or the annual one.

Why this sample: it covers every land-cover class of the demo legend and every season and
composite length a run can ask the model for, so the leading principal axes are those along
which land covers differ (the directions zero-shot and few-shot maps use), not those of one
region's mix; it is regenerated from code, so the basis, and the hash that names it, depend only
on the checkpoint, this definition and the codec. The embeddings come out of the model through its
adapter's :meth:`~pipeline.adapters.base.ModelAdapter.embed`, as a run's do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.adapters.base import band_index
from pipeline.testing.demo.catalog import DEMO_AOI, DEMO_BOUNDS, build_landscape

#: Bump when what :func:`reference_inputs` draws changes (it is part of every basis hash).
SAMPLE_VERSION = 1
#: The year the mid-month days are taken from (the demo catalog's year).
YEAR = 2023
_MID_MONTH = (15, 46, 74, 105, 135, 166, 196, 227, 258, 288, 319, 349)


@dataclass(frozen=True)
class ReferenceSample:
    """What the reference sample is (every field enters the basis hash)."""

    seed: int = 0
    """Seed of the demo landscape (the demo's own) and of the pixel/chip draw."""
    pixels: int = 8192
    """Pixels for a pixel model (the calibration sample of a run had 4 x 2048)."""
    chips: int = 768
    """Chips for a patch model."""
    window: int = 64
    """Chip edge in pixels for a patch model (``run --window``'s default)."""
    version: int = SAMPLE_VERSION

    def definition(self) -> dict[str, Any]:
        """The sample as plain JSON (it goes into the basis hash and the model card)."""
        return {
            "kind": "s2lc demo landscape, cloud-free mid-month reflectance, stratified by class",
            "year": YEAR,
            **asdict(self),
        }


#: The sample every field basis is fitted on.
DEFAULT_SAMPLE = ReferenceSample()


def _landscape(seed: int):
    return build_landscape(seed, DEMO_BOUNDS, 10.0, DEMO_AOI)


def monthly_reflectance(land: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 12, 10) float32 clean reflectance (0-1) of pixels ``rows``/``cols`` on mid-month days."""
    return np.stack([land.reflectance(float(d))[:, rows, cols].T for d in _MID_MONTH], axis=1)


def _composites(monthly: np.ndarray, count: int) -> np.ndarray:
    """(N, 12, B) monthly -> (N, count, B) composites (means of 12 / count consecutive months)."""
    if 12 % count:
        raise ValueError(f"the reference sample has no {count}-composite year (12 months)")
    n, _, b = monthly.shape
    return monthly.reshape(n, count, 12 // count, b).mean(axis=2)


def _stratified_pixels(classes: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of ``n`` pixels, the same count from each class (255 = none is left out)."""
    flat = classes.ravel()
    labels = [c for c in np.unique(flat) if c != 255]
    per = -(-n // len(labels))
    picks = [rng.permutation(np.flatnonzero(flat == c))[:per] for c in labels]
    idx = np.concatenate(picks)
    return np.sort(rng.permutation(idx)[:n])


def reference_inputs(adapter: Any, sample: ReferenceSample = DEFAULT_SAMPLE) -> list[np.ndarray]:
    """The model inputs of the reference sample for a model kind, in :meth:`adapter.embed`'s units.

    Args:
        adapter: a :class:`~pipeline.adapters.base.ModelAdapter` (its ``input``, ``bands``,
            ``scale``, ``period_counts``).
        sample: what to draw.

    Returns:
        Batches to embed: a pixel model gets one (N_P, P, B) array per composite count P; a patch
        model one (N, B, window, window) array.

    Raises:
        ValueError: a window larger than the demo scene.
    """
    land = _landscape(sample.seed)
    rng = np.random.default_rng([sample.seed, 28])
    bands = band_index(adapter.bands)
    scale = np.float32(adapter.scale)
    if adapter.input == "pixel":
        idx = _stratified_pixels(land.classes, sample.pixels, rng)
        rows, cols = np.unravel_index(idx, land.classes.shape)
        monthly = monthly_reflectance(land, rows, cols)[:, :, bands]
        counts = tuple(adapter.period_counts or (12,))
        order = rng.permutation(len(idx))
        out = []
        for i, count in enumerate(counts):
            part = np.sort(order[i :: len(counts)])
            out.append(np.ascontiguousarray(_composites(monthly[part], count) * scale))
        return out
    h, w = land.classes.shape
    win = int(sample.window)
    if win > min(h, w):
        raise ValueError(f"chips of {win} px do not fit the {h} x {w} px demo scene")
    monthly = np.stack([land.reflectance(float(d))[bands] for d in _MID_MONTH])  # (12, B, H, W)
    periods = np.concatenate([monthly, monthly.mean(axis=0, keepdims=True)])  # + the annual one
    r0 = rng.integers(0, h - win + 1, sample.chips)
    c0 = rng.integers(0, w - win + 1, sample.chips)
    p = rng.integers(0, len(periods), sample.chips)
    chips = np.stack(
        [periods[k, :, r : r + win, c : c + win] for k, r, c in zip(p, r0, c0, strict=True)]
    )
    return [np.ascontiguousarray(chips * scale, dtype=np.float32)]
