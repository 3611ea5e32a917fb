"""Per-pixel uncertainty: margin and entropy of the class probabilities, and an
out-of-distribution (OOD) score of the embeddings. Pure numpy.

- **margin** = p(1) - p(2), the top-1 minus the top-2 class probability (0: two classes tie, 1:
  certain); the "confusion index" of Burnicki et al. 2004 is ``1 - margin``. With one class it is 1.
- **entropy** = -sum_c p_c ln p_c / ln C, Shannon entropy normalised by its maximum (0: one class
  has all the probability, 1: uniform over the C classes). With one class it is 0.
- **ood**: how unlike the *reference sample* a pixel's embedding is. The reference is a fixed
  random sample of the region's own embeddings (:func:`fit_ood`; the run uses the same sample
  as the calibration, :mod:`pipeline.run.calibration`). A pixel's distance is the cosine
  distance ``1 - cos`` to its ``k``-th nearest reference embedding (k-NN distance, Sun et al.
  2022, "Out-of-distribution detection with deep nearest neighbors", ICML). The threshold is
  the ``quantile`` (default 0.99) of the reference embeddings' own leave-one-out k-NN distances,
  so that share of the reference sample falls under it. The ``ood`` layer is the distance over
  the threshold: ``> 1`` is flagged. Because the reference is drawn from the mapped region
  itself, a material is out of distribution when it is absent from the sample or covers less
  than about ``k / n`` of it (k = 20 of n = 2048: ~1 % of the region); a
  material most of a region is made of is, by this definition, in distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OOD_K", "OOD_QUANTILE", "OOD_REFERENCE_SIZE", "OodReference", "fit_ood",
           "margin_entropy"]  # fmt: skip

#: Reference embeddings kept (a fixed random subsample of the reference sample).
OOD_REFERENCE_SIZE = 2048
#: The neighbour whose distance is the score.
OOD_K = 20
#: Share of the reference sample under the threshold.
OOD_QUANTILE = 0.99
_CHUNK = 4096


def margin_entropy(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) class probabilities (rows summing to 1) -> (N,) margin and (N,) normalised entropy,
    both float32 in 0-1 (see the module docstring)."""
    p = np.asarray(probs, np.float32)
    n, c = p.shape
    if c < 2:
        return np.ones(n, np.float32), np.zeros(n, np.float32)
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    margin = np.clip(top2[:, 0] - top2[:, 1], 0.0, 1.0)
    q = np.clip(p.astype(np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(q > 0, q * np.log(q), 0.0).sum(axis=1)
    entropy = np.clip(h / np.log(c), 0.0, 1.0)
    return margin.astype(np.float32), entropy.astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _kth_distance(x: np.ndarray, ref: np.ndarray, k: int, skip_self: bool = False) -> np.ndarray:
    """(N,) cosine distance of each row of ``x`` to its k-th nearest row of ``ref`` (both
    L2-normalised); ``skip_self``: x is ref, and each row's own distance 0 is left out."""
    out = np.empty(len(x), np.float32)
    kk = k + 1 if skip_self else k
    for i in range(0, len(x), _CHUNK):
        d = 1.0 - x[i : i + _CHUNK] @ ref.T  # (n, R) cosine distances
        if skip_self:
            rows = np.arange(d.shape[0])
            d[rows, i + rows] = -np.inf  # the row itself comes first, then its k neighbours
        out[i : i + _CHUNK] = np.partition(d, kk - 1, axis=1)[:, kk - 1]
    return np.maximum(out, 0.0)


@dataclass(frozen=True)
class OodReference:
    """The fitted OOD reference: what a tile task needs to score its pixels (picklable).

    Attributes:
        embeddings: (R, D) float16 L2-normalised reference embeddings.
        k: the neighbour whose cosine distance is the score.
        threshold: the ``quantile`` of the reference's leave-one-out k-NN distances.
        quantile: share of the reference sample under ``threshold``.
    """

    embeddings: np.ndarray
    k: int
    threshold: float
    quantile: float

    def score(self, emb: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N,) float32 k-NN cosine distance over the threshold (> 1:
        out of distribution)."""
        if len(emb) == 0:
            return np.zeros(0, np.float32)
        ref = self.embeddings.astype(np.float32)
        d = _kth_distance(_normalise(emb), ref, self.k)
        return (d / np.float32(self.threshold)).astype(np.float32)

    def describe(self) -> dict[str, object]:
        """The definition and its numbers, for run.json, the store and the STAC item."""
        return {
            "score": "cosine distance to the k-th nearest reference embedding / threshold",
            "flag": "ood > 1",
            "k": self.k,
            "reference_size": int(len(self.embeddings)),
            "quantile": self.quantile,
            "threshold": self.threshold,
            "reference": "fixed random sample of the region's own embeddings (the calibration "
            "sample, pipeline.run.calibration)",
        }


def fit_ood(
    sample: np.ndarray,
    *,
    size: int = OOD_REFERENCE_SIZE,
    k: int = OOD_K,
    quantile: float = OOD_QUANTILE,
    seed: int = 0,
) -> OodReference:
    """Fit the OOD reference on (N, D) embeddings of the reference sample.

    Keeps a seeded random subsample of ``size`` rows (all when fewer), and sets the threshold
    to the ``quantile`` of their leave-one-out k-NN cosine distances.

    Raises:
        ValueError: fewer than ``k + 1`` sample rows, or ``quantile`` outside (0, 1).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    x = _normalise(sample)
    if len(x) < k + 1:
        raise ValueError(f"the OOD reference needs more than k={k} embeddings, got {len(x)}")
    if len(x) > size:
        idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:size])
        x = x[idx]
    x16 = x.astype(np.float16)
    d = _kth_distance(x16.astype(np.float32), x16.astype(np.float32), k, skip_self=True)
    threshold = float(max(np.quantile(d, quantile), 1e-6))
    return OodReference(embeddings=x16, k=k, threshold=threshold, quantile=quantile)
