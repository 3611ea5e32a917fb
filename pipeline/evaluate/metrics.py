"""Classification metrics in plain numpy: confusion matrices, accuracies, F1, mAP, recall@|y|.

Conventions used everywhere in :mod:`pipeline.evaluate`:

- a confusion matrix ``cm[i, j]`` counts samples whose **prediction (map) is class i** and whose
  **reference (truth) is class j** -- rows are the map, columns the reference, as in Olofsson et
  al. (2014) and :mod:`pipeline.evaluate.area`;
- precision of class i is the user's accuracy (row), recall the producer's accuracy (column);
- a class with no predictions (or no references) has an undefined precision (recall); it is
  reported as NaN and counts as 0 in the macro F1 only when the class has references, so a macro
  F1 over the classes that exist in the reference is comparable across maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``cm[pred, truth]`` (int64, shape (C, C)); labels outside [0, C) are an error."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    truth = np.asarray(truth).astype(np.int64).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth differ in length: {pred.size} vs {truth.size}")
    for name, v in (("pred", pred), ("truth", truth)):
        if v.size and (v.min() < 0 or v.max() >= n_classes):
            raise ValueError(f"{name} has labels outside 0..{n_classes - 1}")
    return np.bincount(pred * n_classes + truth, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def overall_accuracy(cm: np.ndarray) -> float:
    """Fraction of samples on the diagonal (NaN for an empty matrix)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision (user's accuracy), recall (producer's), F1 and reference support."""
    tp = np.diag(cm).astype(np.float64)
    n_pred = cm.sum(axis=1)
    n_true = cm.sum(axis=0)
    precision = _div(tp, n_pred)
    recall = _div(tp, n_true)
    f1 = _div(2 * tp, n_pred + n_true)
    return {"precision": precision, "recall": recall, "f1": f1, "support": n_true}


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes present in the reference (an absent prediction scores 0)."""
    scores = per_class_scores(cm)
    present = scores["support"] > 0
    if not present.any():
        return float("nan")
    return float(np.nan_to_num(scores["f1"][present]).mean())


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa from a confusion matrix (reported for comparison with older studies)."""
    total = cm.sum()
    if not total:
        return float("nan")
    po = np.trace(cm) / total
    pe = float((cm.sum(axis=0) * cm.sum(axis=1)).sum()) / total**2
    return float((po - pe) / (1 - pe)) if pe != 1 else float("nan")


def classification_report(
    pred: np.ndarray, truth: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """OA, macro F1, kappa, per-class scores and the confusion matrix, JSON-ready."""
    names = list(class_names)
    cm = confusion_matrix(pred, truth, len(names))
    scores = per_class_scores(cm)
    per_class = {
        name: {
            "precision": _num(scores["precision"][i]),
            "recall": _num(scores["recall"][i]),
            "f1": _num(scores["f1"][i]),
            "support": int(scores["support"][i]),
            "predicted": int(cm[i].sum()),
        }
        for i, name in enumerate(names)
    }
    return {
        "n": int(cm.sum()),
        "overall_accuracy": _num(overall_accuracy(cm)),
        "macro_f1": _num(macro_f1(cm)),
        "kappa": _num(cohen_kappa(cm)),
        "per_class": per_class,
        "class_names": names,
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_layout": "rows = predicted (map), columns = reference",
    }


# --- multi-label -------------------------------------------------------------------------------


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Average precision of one class (area under the precision-recall step curve).

    The standard (non-interpolated) definition: the mean of the precision at the rank of every
    positive, ranking by descending score; tied scores are ranked together (the precision at a
    tie block counts all of it). NaN when the class has no positive.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    targets = np.asarray(targets).astype(bool).ravel()
    n_pos = int(targets.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    t = targets[order]
    tp_cum = np.cumsum(t)
    # The last index of every block of equal scores: ties share the block's precision.
    last = np.r_[s[1:] != s[:-1], True]
    block_end = np.minimum.accumulate(np.where(last, np.arange(s.size), s.size)[::-1])[::-1]
    precision_at = tp_cum[block_end] / (block_end + 1)
    return float(precision_at[t].sum() / n_pos)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Macro mAP over classes with at least one positive, and micro AP over all (sample, class).

    ``scores`` and ``targets`` are (N, C); targets are 0/1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    per_class = np.array(
        [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    )
    valid = ~np.isnan(per_class)
    return {
        "macro_map": float(per_class[valid].mean()) if valid.any() else float("nan"),
        "micro_ap": average_precision(scores.ravel(), targets.ravel()),
        "per_class_ap": per_class,
    }


def recall_at_label_count(scores: np.ndarray, targets: np.ndarray) -> float:
    """The SenCLIP reference's BigEarthNet score: micro recall@|y|.

    For each sample take the k highest-scoring classes, k = its number of true labels; the score
    is (hits summed over samples) / (true labels summed over samples). Samples without labels
    contribute nothing. (The paper calls its number "mAP"; the code computes this.)
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    k = targets.sum(axis=1)
    total = int(k.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(-scores, axis=1, kind="mergesort")
    ranks = np.empty_like(order)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(scores.shape[1])[None, :]
    hits = (targets & (ranks < k[:, None])).sum()
    return float(hits / total)


def multilabel_report(
    scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """mAP (macro and micro) and the reference's recall@|y|, JSON-ready."""
    m = mean_average_precision(scores, targets)
    targets = np.asarray(targets).astype(bool)
    return {
        "n": int(targets.shape[0]),
        "macro_map": _num(m["macro_map"]),
        "micro_ap": _num(m["micro_ap"]),
        "recall_at_label_count": _num(recall_at_label_count(scores, targets)),
        "per_class": {
            name: {"ap": _num(m["per_class_ap"][i]), "positives": int(targets[:, i].sum())}
            for i, name in enumerate(class_names)
        },
        "class_names": list(class_names),
    }


def _num(x: float) -> float | None:
    """JSON-safe float: NaN becomes None."""
    x = float(x)
    return None if np.isnan(x) else x
