"""Training TimeSenCLIP: per-point monthly series against pooled ground-photo embeddings.

The pixel encoder (:class:`model.timesenclip.TimeSenCLIPEncoder`, random init or a checkpoint to
fine-tune) maps a point's 12 monthly composites to a 512-d vector; the loop of
:mod:`model.train.loop` pulls it towards the point's pooled LUCAS photo embedding. Inputs come
from ``extract-points`` tables (reflectance 0-1 -> x 1e4 -> the model's normalisation and clamp,
NaN -> 0, exactly as at inference).

The exported checkpoint is the encoder's plain state dict plus its constructor arguments and the
CLIP text tower the ground embeddings live in (``clip``), so ``model.load("timesenclip",
checkpoint=...)`` rebuilds the same architecture (also a smaller one: depth/width are read off the
tensors) and encodes prompts in the right space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from model.timesenclip import BANDS, load_encoder, normalise
from model.timesenclip import build_encoder as _build
from model.train.ground import GroundEmbeddings
from model.train.loop import PairedData, split_decay
from model.train.temporal import TemporalAugment, forward_with_positions
from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)


class TimeSenCLIPTask:
    """The :class:`~model.train.loop.ContrastiveTask` for the pixel encoder."""

    name = "timesenclip"

    def __init__(self, encoder: nn.Module, augment: TemporalAugment | None = None) -> None:
        self.encoder = encoder
        self.augment = augment or TemporalAugment()
        self.dim = int(encoder.dim)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def encode(
        self, inputs: torch.Tensor, *, train: bool, generator: torch.Generator
    ) -> torch.Tensor:
        if train:
            x, months, _ = self.augment.apply(inputs, generator)
        else:
            x, months = inputs, torch.arange(inputs.shape[1], device=inputs.device)
        return forward_with_positions(self.encoder, x, months)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self.encoder.state_dict()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return split_decay(list(self.encoder.named_parameters()), weight_decay)

    def export_meta(self, clip: str | None) -> dict[str, Any]:
        """Plain values stored next to the weights (what ``model.load`` reads)."""
        meta: dict[str, Any] = {"format": "s2lc-timesenclip-1", **self.encoder.config()}
        if clip:
            meta["clip"] = str(clip)
        return meta


def build_encoder(*, init: str | None = None, seed: int = 0, **arch: Any) -> nn.Module:
    """A fresh encoder (``arch`` overrides depth/dim/..., for small test models) or the one in
    the checkpoint ``init`` (fine-tuning)."""

    if init:
        if arch:
            raise UserError("--init takes the architecture from the checkpoint; drop the overrides")
        enc, _ = load_encoder(init)
        return enc
    return _build(seed=seed, **arch)


@dataclass(frozen=True)
class PointSeries:
    """Model-ready inputs of a points table."""

    inputs: torch.Tensor
    """(N, 12, 10) normalised series."""
    keep: np.ndarray
    """Rows of the table used (enough valid periods)."""


def prepare_series(table: Any, *, min_valid_periods: int = 6) -> PointSeries:
    """Normalised (N, 12, 10) inputs from a :class:`pipeline.points.PointTable`.

    Points with fewer than ``min_valid_periods`` periods backed by at least one observation are
    dropped (their series would be mostly gap-fill).
    """

    if tuple(table.bands) != tuple(BANDS):
        raise UserError(f"the points table has bands {table.bands}, TimeSenCLIP needs {BANDS}")
    if table.n_periods != 12:
        raise UserError(
            f"TimeSenCLIP trains on 12 monthly composites; the table has {table.n_periods} "
            "periods (extract with --period monthly over one year)"
        )
    valid = (np.asarray(table.counts) > 0).sum(axis=1)
    finite = np.isfinite(table.values).all(axis=2).sum(axis=1)
    keep = np.flatnonzero((valid >= min_valid_periods) & (finite >= 1))
    x = normalise(torch.from_numpy(table.series_x1e4()[keep]))
    return PointSeries(inputs=x.contiguous(), keep=keep)


def label_indices(labels: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
    """Map label strings to class indices (exact, then case-insensitive name match; -1 if none).

    Integer-like labels within range are taken as indices.
    """
    exact = {c: i for i, c in enumerate(class_names)}
    lower = {c.strip().lower(): i for i, c in enumerate(class_names)}
    out = np.full(len(labels), -1, dtype=np.int64)
    for k, lab in enumerate(labels):
        s = str(lab).strip()
        if s in exact:
            out[k] = exact[s]
        elif s.lower() in lower:
            out[k] = lower[s.lower()]
        elif s.lstrip("-").isdigit() and 0 <= int(s) < len(class_names):
            out[k] = int(s)
    return out


def paired_points(
    table: Any,
    ground: GroundEmbeddings,
    *,
    min_valid_periods: int = 6,
    labels: np.ndarray | None = None,
) -> PairedData:
    """Training pairs: the points that have a series *and* ground embeddings.

    ``labels``: optional (N_table,) class indices (-1 = none) for zero-shot validation.
    """
    series = prepare_series(table, min_valid_periods=min_valid_periods)
    ids = np.asarray(table.ids)[series.keep]
    rows = ground.match(ids.tolist())
    has = rows >= 0
    n_all = len(table)
    _log.info(
        "%d points: %d with enough valid periods, %d of those with ground embeddings",
        n_all,
        len(series.keep),
        int(has.sum()),
    )
    if not has.any():
        sample = ", ".join(ids[:3].tolist())
        raise UserError(
            f"no point of the table has ground embeddings (ids like {sample}; the embedding keys "
            f"look like {ground.keys[0]}<N|E|S|W>)"
        )
    sel = np.flatnonzero(has)
    r = rows[sel]
    return PairedData(
        inputs=series.inputs[torch.as_tensor(sel)],
        ground=torch.from_numpy(ground.vectors[r]),
        ground_mask=torch.from_numpy(ground.mask[r]),
        ids=ids[sel].tolist(),
        labels=None if labels is None else np.asarray(labels)[series.keep][sel],
    )
