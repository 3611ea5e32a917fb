"""Land-cover change between two classified years: transitions, a changed/stable mask, confidence.

Inputs are two maps on one grid: each year's classes (0..K-1, 255 nodata) and its top-k classes
with their probabilities (a run's ``topk_classes``/``topk_probs``). A pixel's transition is coded
``from * K + to`` (from: its class in the first year a, to: in the second b); a stable pixel has
``from == to``.

Confidence. For a changed pixel (a != b) it is the *pairwise margin*: the smaller of
``p_a(a) - p_a(b)`` (how much the first year prefers its class over the second year's) and
``p_b(b) - p_b(a)`` (the same for the second year), where a class outside a year's top-k counts
with that year's k-th probability (an upper bound: the margin is never overstated). For a stable
pixel it is the smaller of the two years' probability of its class.

Temporal consistency (``consistency=True``): a change is accepted only where it is confident in
both years, pairwise margin >= ``min_margin``; otherwise the pixel is reported stable (its
transition is ``from * K + from``), as a map made from the first year would. A pixel the
classifier hesitates on between two classes (say forest and grassland) in both years then stops
reading as change, while a real change (forest to bare soil: in the second year forest is
unlikely, in the first bare soil is) keeps a large margin. The measured effect on the planted-change
demo is in the README's "Yearly maps and change" and ``bench/results.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: nodata of the transition layer (uint16) and of the changed/stable mask (uint8).
TRANSITION_NODATA = 65535
MASK_NODATA = 255
CLASS_NODATA = 255


@dataclass(frozen=True)
class ChangeOptions:
    """How two years' classes become change."""

    consistency: bool = False
    """Accept a change only when its pairwise margin is >= ``min_margin`` in both years."""
    min_margin: float = 0.1
    """With ``consistency``: the pairwise margin a change needs (0-1)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_margin <= 1.0:
            raise ValueError(f"min_margin must be in [0, 1], got {self.min_margin}")


@dataclass(frozen=True)
class Change:
    """The change layers, all (H, W) on the input grid."""

    transition: np.ndarray
    """uint16 ``from * K + to``, :data:`TRANSITION_NODATA` where either year has no class."""
    changed: np.ndarray
    """uint8 1 changed, 0 stable, :data:`MASK_NODATA` nodata."""
    confidence: np.ndarray
    """float32 0-1: the pairwise margin of a change, the smaller probability of a stable class
    (NaN nodata); see the module docstring."""
    rejected: int
    """Changes the consistency rule turned to stable (0 without it)."""


def class_probability(
    topk_classes: np.ndarray, topk_probs: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """(H, W) probability of ``classes`` (H, W) from a year's top-k (k, H, W); a class outside
    the top-k gets the k-th (smallest kept) probability, an upper bound of its own."""
    hit = topk_classes == classes[None]
    p = np.where(hit, topk_probs, 0.0).sum(axis=0)
    return np.where(hit.any(axis=0), p, topk_probs[-1]).astype(np.float32)


def detect_change(
    year_a: tuple[np.ndarray, np.ndarray, np.ndarray],
    year_b: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_classes: int,
    options: ChangeOptions = ChangeOptions(),
) -> Change:
    """Transitions from year a to year b.

    Args:
        year_a, year_b: (classes (H, W) uint8 with :data:`CLASS_NODATA`, topk_classes (k, H, W),
            topk_probs (k, H, W) float 0-1) of each year, as a run writes them.
        n_classes: K, the number of classes of the legend (codes run to K*K - 1).
        options: the consistency rule.

    Raises:
        ValueError: the layers' shapes differ, or a class index is >= ``n_classes``.
    """
    (ca, ka, pa), (cb, kb, pb) = year_a, year_b
    if not (np.shape(ca) == np.shape(cb) == np.shape(ka)[1:] == np.shape(kb)[1:]) or (
        np.shape(ka) != np.shape(pa) or np.shape(kb) != np.shape(pb)
    ):
        raise ValueError("the two years' layers differ in shape")
    a = np.asarray(ca).astype(np.int64)
    b = np.asarray(cb).astype(np.int64)
    valid = (a != CLASS_NODATA) & (b != CLASS_NODATA)
    if (a[valid] >= n_classes).any() or (b[valid] >= n_classes).any():
        raise ValueError(f"class index >= {n_classes} classes in the input maps")
    pa, pb = np.nan_to_num(np.asarray(pa, np.float32)), np.nan_to_num(np.asarray(pb, np.float32))
    a_in_a, b_in_a = class_probability(ka, pa, a), class_probability(ka, pa, b)
    a_in_b, b_in_b = class_probability(kb, pb, a), class_probability(kb, pb, b)
    changed = valid & (a != b)
    margin = np.clip(np.minimum(a_in_a - b_in_a, b_in_b - a_in_b), 0.0, 1.0)
    conf = np.where(changed, margin, np.minimum(a_in_a, a_in_b))
    conf = np.where(valid, conf, np.nan).astype(np.float32)
    rejected = 0
    if options.consistency:
        sure = margin >= options.min_margin
        rejected = int((changed & ~sure).sum())
        changed &= sure
    to = np.where(changed, b, a)
    transition = np.where(valid, a * n_classes + to, TRANSITION_NODATA).astype(np.uint16)
    mask = np.where(valid, changed, MASK_NODATA).astype(np.uint8)
    return Change(transition, mask, conf, rejected)


def transition_legend(class_names: list[str], colors: list | None = None) -> dict:
    """The transition layer's legend (``evaluate map``'s legend.json format): every code
    ``from * K + to`` with ``name`` ``"from -> to"`` and ``from``/``to`` names, nodata 65535."""
    k = len(class_names)
    classes = []
    for i, src in enumerate(class_names):
        for j, dst in enumerate(class_names):
            entry = {"value": i * k + j, "name": f"{src} -> {dst}", "from": src, "to": dst}
            if colors is not None:
                entry["color"] = colors[j] if i != j else colors[i]
            classes.append(entry)
    return {
        "classes": classes,
        "nodata": TRANSITION_NODATA,
        "coding": f"from_class * {k} + to_class (class indices of the maps' legend)",
    }


def score_change(
    changed: np.ndarray, truth_from: np.ndarray, truth_to: np.ndarray, nodata: int = 255
) -> dict[str, float | int]:
    """Precision and recall of the changed pixels and the flip rate on stable pixels.

    ``changed``: (H, W) 0/1 (``MASK_NODATA`` nodata) from :func:`detect_change`; ``truth_from`` /
    ``truth_to`` (H, W) true classes (``nodata`` none). Only pixels valid in both count.
    precision = TP / (TP + FP), recall = TP / (TP + FN) over truly changed pixels, flip rate =
    FP / stable pixels.
    """
    ok = (changed != MASK_NODATA) & (truth_from != nodata) & (truth_to != nodata)
    pred = (changed == 1) & ok
    true = (truth_from != truth_to) & ok
    tp = int((pred & true).sum())
    fp = int((pred & ~true).sum())
    fn = int((~pred & true & ok).sum())
    stable = int((~true & ok).sum())
    return {
        "change_precision": tp / (tp + fp) if tp + fp else float("nan"),
        "change_recall": tp / (tp + fn) if tp + fn else float("nan"),
        "stable_flip_rate": fp / stable if stable else float("nan"),
        "true_changed_px": tp + fn,
        "detected_changed_px": tp + fp,
        "stable_px": stable,
    }
