"""Evaluation figures: confusion matrices and area estimates with confidence intervals (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np


def _pyplot():

    matplotlib.use("Agg", force=False)

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    plt = _pyplot()
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def confusion_png(
    cm: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    normalize: str | None = "reference",
) -> Path:
    """Write a confusion-matrix heat map (rows = predicted/map, columns = reference).

    ``normalize="reference"`` colours each column by its share of the reference class (the
    producer's view), ``"predicted"`` each row; the cells always show the counts.
    """
    plt = _pyplot()
    cm = np.asarray(cm)
    c = cm.shape[0]
    if normalize == "reference":
        shade = cm / np.maximum(cm.sum(axis=0, keepdims=True), 1)
    elif normalize == "predicted":
        shade = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    else:
        shade = cm / max(cm.max(), 1)
    size = max(4.0, 0.45 * c + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    names = [_short(n) for n in class_names]
    ax.set_xticks(range(c), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(c), names, fontsize=8)
    ax.set_xlabel("reference")
    ax.set_ylabel("predicted (map)")
    if c <= 25:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(cm[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if shade[i, j] > 0.5 else "black",
                    )
    fig.colorbar(
        im,
        ax=ax,
        fraction=0.046,
        pad=0.04,
        label=f"share of {normalize} class" if normalize else "share of max",
    )
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def area_png(report: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Mapped vs estimated area per class, with the estimate's confidence interval."""
    plt = _pyplot()
    names = report["class_names"]
    cls = report["classes"]
    mapped = np.array([cls[n]["mapped_area"] or 0.0 for n in names])
    est = np.array([cls[n]["estimated_area"] or 0.0 for n in names])
    lo = np.array([(cls[n]["estimated_area_ci"][0] or 0.0) for n in names])
    hi = np.array([(cls[n]["estimated_area_ci"][1] or 0.0) for n in names])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 4))
    ax.bar(x - 0.2, mapped, 0.4, label="mapped", color="#bbbbbb")
    ax.bar(
        x + 0.2,
        est,
        0.4,
        label="estimated",
        color="#3b75af",
        yerr=np.vstack([est - lo, hi - est]),
        capsize=3,
    )
    ax.set_xticks(x, [_short(n, 20) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"area ({report.get('area_unit', '')})")
    ax.legend()
    ax.set_title(
        title
        or f"area estimates, {int(round(100 * (report.get('confidence_level') or 0.95)))} % CI",
        fontsize=10,
    )
    return _save(fig, path)


def ap_png(report: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Per-class average precision (multi-label evaluations)."""
    plt = _pyplot()
    names = report["class_names"]
    ap = np.array(
        [
            report["per_class"][n]["ap"] if report["per_class"][n]["ap"] is not None else np.nan
            for n in names
        ]
    )
    fig, ax = plt.subplots(figsize=(6, max(3.0, 0.3 * len(names) + 1)))
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(ap), color="#3b75af")
    ax.set_yticks(y, [_short(n, 40) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    ax.set_title(title or f"mAP {report['macro_map'] or float('nan'):.3f}", fontsize=10)
    return _save(fig, path)
