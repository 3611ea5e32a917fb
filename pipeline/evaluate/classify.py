"""Classification evaluations: benchmark datasets and labelled points, zero-shot or few-shot.

Embeddings come from the project's models (:func:`model.load`), scores from the legend's text
classifier (:func:`model.zeroshot.build_classifier`) or a few-shot head (:mod:`model.train.probe`).

How each input reaches a model:

- **EuroSAT RGB** JPEGs and SenCLIP: the reference evaluation transform (``ToTensor`` ->
  bicubic resize to 224 -> Bing ``Normalize``), no min-max stretch (the JPEGs are already 8-bit
  renderings).
- **EuroSAT MS / BigEarthNet** and SenCLIP: bands B4, B3, B2 (red, green, blue: *not* the
  reference's B2, B3, B4 on BigEarthNet) through the model's own preprocessing.
- **EuroSAT MS / BigEarthNet** and TimeSenCLIP: a single-date image, so T = 1: the patch's
  per-band median spectrum is one annual-composite-like step (TimeSenCLIP's T = 1 path).
- **Points** (``extract-points`` tables) and TimeSenCLIP: the point's series (T = its periods).

Calibration (``none`` by default): ``ratio`` divides every class score by its mean over the
evaluated set, the SenCLIP EuroSAT script's transductive normalisation; ``shifted`` is the
TimeSenCLIP variant on (cos / 2 + 1) scores (see :mod:`model.zeroshot`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import adapters
from pipeline.adapters.senclip import RGB
from pipeline.base.errors import UserError
from pipeline.evaluate.labels import match_labels, unmatched_summary
from pipeline.evaluate.metrics import classification_report, multilabel_report

_log = logging.getLogger(__name__)

CALIBRATIONS = ("none", "shifted", "ratio")


@dataclass
class Scorer:
    """Turns embeddings into (N, C) class scores for one legend or head."""

    class_names: tuple[str, ...]
    classifier: np.ndarray | None = None
    head: Any = None
    calibration: str = "none"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise UserError(f"calibration must be one of {', '.join(CALIBRATIONS)}")
        if (self.classifier is None) == (self.head is None):
            raise ValueError("give a classifier or a head")
        if self.head is not None and self.calibration != "none":
            raise UserError("calibration applies to zero-shot scores, not to a few-shot head")

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, C) probabilities (head or zero-shot softmax; calibrated over the whole set)."""
        if self.head is not None:
            return np.asarray(self.head.predict(np.asarray(embeddings, np.float32)), np.float32)
        from model.zeroshot import fit_calibration, probabilities

        cal = None
        if self.calibration != "none" and len(embeddings):
            cal = fit_calibration(embeddings, self.classifier)
        mode = "shifted" if self.calibration == "none" else self.calibration
        return probabilities(embeddings, self.classifier, cal, mode=mode)

    def cosines(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, C) raw cosines (zero-shot only; used as multi-label scores as in the reference)."""
        if self.head is not None:
            return self.scores(embeddings)
        from model.zeroshot import cosine

        return cosine(embeddings, self.classifier).cpu().numpy()


def make_scorer(
    m: Any,
    *,
    legend: str | None = None,
    style: str = "aerial",
    head: str | None = None,
    calibration: str = "none",
) -> Scorer:
    """The scorer of a legend (zero-shot) or a head file (few-shot) for model ``m``."""
    if head:
        from model.train.probe import check_head_matches, load_head

        h = load_head(head)
        check_head_matches(
            h,
            {"name": m.name, "dim": m.embed_dim, "checkpoint_sha256": m.checkpoint_sha256},
            where=str(head),
        )
        return Scorer(
            h.class_names,
            head=h,
            calibration=calibration,
            info={"head": str(head), "head_classes": len(h.class_names)},
        )
    if not legend:
        raise UserError("give --legend (zero-shot) or --head (few-shot)")
    from model.legends import load_legend
    from model.zeroshot import build_classifier

    leg = load_legend(legend, style=style)
    w = build_classifier(m, leg).numpy()
    return Scorer(
        leg.names,
        classifier=w,
        calibration=calibration,
        info={"legend": leg.name, "style": leg.style, "prompt_hash": leg.prompt_hash},
    )


def model_info(m: Any) -> dict[str, Any]:
    return {
        "name": m.name,
        "identity": m.identity,
        "checkpoint_sha256": m.checkpoint_sha256,
        "untrained": bool(m.untrained),
        "embed_dim": int(m.embed_dim),
    }


# --- embedding the datasets ----------------------------------------------------------------


def jpeg_input(rgb01: np.ndarray, size: int = 224) -> torch.Tensor:
    """The SenCLIP EuroSAT transform of 0-1 RGB images: bicubic resize + Bing normalisation."""
    from model.senclip import BING_MEAN, BING_STD

    x = torch.from_numpy(np.ascontiguousarray(rgb01, dtype=np.float32))
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        x = torch.round(x.clamp(0, 1) * 255) / 255  # PIL keeps 8 bits
    mean = torch.tensor(BING_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(BING_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def median_spectrum(images: np.ndarray, band_idx: Sequence[int]) -> np.ndarray:
    """(B, bands, h, w) reflectance -> (B, 1, len(band_idx)) per-band medians x 1e4 (T = 1)."""
    x = images[:, list(band_idx)]
    med = np.nanmedian(x.reshape(x.shape[0], x.shape[1], -1), axis=2)
    return (med * 1e4).astype(np.float32)[:, None, :]


def embedder(m: Any, kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """Batch of images of ``kind`` (``rgb`` JPEG 0-1, ``eurosat-ms``, ``bigearthnet``) -> (B, D)."""
    from pipeline.evaluate.datasets import ben_bands, eurosat_ms_bands

    adapter = adapters.get(m.name)
    if kind == "rgb":
        if adapter.input != "patch" or adapter.bands != RGB:
            rgb_models = [a.name for a in adapters.all_adapters() if a.bands == RGB]
            raise UserError(
                f"RGB JPEGs can only be evaluated with {' or '.join(rgb_models)} ({m.name} needs "
                f"{len(adapter.bands)} bands)"
            )
        size = int(getattr(m, "image_size", 224))
        return lambda imgs: m.image_embed(jpeg_input(imgs, size)).cpu().numpy()
    idx = (eurosat_ms_bands if kind == "eurosat-ms" else ben_bands)(adapter.bands)
    if adapter.input == "patch":
        return lambda imgs: adapter.embed(m, imgs[:, idx])
    return lambda imgs: adapter.embed(m, median_spectrum(imgs, idx))


def _embed_batches(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], fn: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    embs, targets = [], []
    for imgs, y in batches:
        embs.append(np.asarray(fn(imgs), np.float32))
        targets.append(y)
    if not embs:
        raise UserError("the dataset is empty")
    return np.concatenate(embs), np.concatenate(targets)


def _dataset_classes(
    dataset_names: Sequence[str], alt: Sequence[str], scorer: Scorer
) -> np.ndarray:
    """Scorer class index of each dataset class (by folder or display name)."""
    idx = match_labels(list(dataset_names), scorer.class_names)
    idx2 = match_labels(list(alt), scorer.class_names)
    idx = np.where(idx >= 0, idx, idx2)
    if (idx < 0).any():
        missing = [dataset_names[i] for i in np.flatnonzero(idx < 0)]
        raise UserError(
            f"the legend has no class for {', '.join(missing[:5])}; use a legend with the "
            f"dataset's classes (e.g. eurosat10, bigearthnet19)"
        )
    return idx


def evaluate_single_label(
    dataset: Any, m: Any, scorer: Scorer, *, batch_size: int = 64, limit: int | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """EuroSAT-style evaluation: OA, macro F1, per-class scores. Returns (report, confusion)."""
    kind = "rgb" if dataset.kind == "rgb" else "eurosat-ms"
    emb, y = _embed_batches(dataset.batches(batch_size, limit), embedder(m, kind))
    to_scorer = _dataset_classes(dataset.class_names, dataset.display_names, scorer)
    truth = to_scorer[y]
    pred = scorer.scores(emb).argmax(axis=1)
    rep = classification_report(pred, truth, scorer.class_names)
    rep["dataset_classes"] = {
        n: scorer.class_names[i] for n, i in zip(dataset.class_names, to_scorer, strict=True)
    }
    return rep, np.asarray(rep["confusion_matrix"])


def evaluate_multilabel(
    dataset: Any, m: Any, scorer: Scorer, *, batch_size: int = 32, limit: int | None = None
) -> dict[str, Any]:
    """BigEarthNet-19: mAP over classes and the reference's recall@|y| (raw cosine scores)."""
    emb, y = _embed_batches(dataset.batches(batch_size, limit), embedder(m, "bigearthnet"))
    to_scorer = _dataset_classes(dataset.class_names, dataset.class_names, scorer)
    scores = scorer.cosines(emb)[:, to_scorer]  # dataset class order
    rep = multilabel_report(scores, y, dataset.class_names)
    rep["samples_without_labels"] = int((y.sum(axis=1) == 0).sum())
    return rep


def evaluate_points(
    table: Any,
    m: Any,
    scorer: Scorer,
    *,
    label_column: str,
    label_map: Any = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Labelled points (``extract-points`` table) with TimeSenCLIP: OA, macro F1, per class."""
    adapter = adapters.get(m.name)
    if not adapter.point_series:
        usable = [a.name for a in adapters.all_adapters() if a.point_series]
        raise UserError(f"point series are evaluated with {' or '.join(usable)}")
    labels = table.column(label_column)
    truth = match_labels(labels, scorer.class_names, label_map)
    observed = (np.asarray(table.counts) > 0).any(axis=1)
    use = (truth >= 0) & observed
    if not use.any():
        raise UserError(
            f"no point has both observations and a label of column {label_column!r} matching the "
            f"classes ({', '.join(scorer.class_names[:6])}...); pass --label-map"
        )
    series = table.series_x1e4()[use]
    emb = adapter.embed(m, series)
    pred = scorer.scores(emb).argmax(axis=1)
    rep = classification_report(pred, truth[use], scorer.class_names)
    rep["points"] = {
        "total": len(table),
        "evaluated": int(use.sum()),
        "without_observations": int((~observed).sum()),
        "unmatched_labels": int(((truth < 0) & observed).sum()),
        "unmatched_examples": unmatched_summary(labels, truth),
        "periods": int(table.n_periods),
    }
    return rep, np.asarray(rep["confusion_matrix"])


def write_outputs(
    out: str | Path, report: dict[str, Any], cm: np.ndarray | None, title: str
) -> Path:
    """``metrics.json`` (+ ``confusion_matrix.png``) under ``out``."""
    import json

    from pipeline.evaluate.plots import confusion_png

    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    if cm is not None:
        confusion_png(cm, report["class_names"], o / "confusion_matrix.png", title=title)
        report.setdefault("plots", []).append("confusion_matrix.png")
    p = o / "metrics.json"
    p.write_text(json.dumps(report, indent=1, allow_nan=False))
    return p
