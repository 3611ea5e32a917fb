"""A run's classes and text classifier: what the loaded model maps pixels to.

:func:`model_classes` loads the model and resolves its classes in one step: from a few-shot head
(``--head``: the head classifies, the text classifier is zeros) or from a legend's prompts
(``--legend``, default lucas-lc8, embedded by the model's text tower). A map run resolves them
once, from the legend and head its cheap checks loaded (:func:`pipeline.run.checks.preflight`),
and both the backend's measurement (:mod:`pipeline.run.precision`) and the run's preparation
(:mod:`pipeline.run.prepare`) take them from there; :func:`class_sources` loads the legend and
head for commands that classify outside a map run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.colours import palette
from pipeline.base.errors import UserError
from pipeline.base.hashing import sha256_file
from pipeline.run.config import ModelConfig


@dataclass(frozen=True)
class ModelClasses:
    """The loaded model's identity and the classes it maps to."""

    class_names: tuple[str, ...]
    colors: tuple[str, ...]
    """One ``#rrggbb`` colour per class."""
    legend_info: dict[str, Any]
    """The legend's facts for ``legend.json`` (name, style, prompt hash, head)."""
    classifier: np.ndarray
    """(C, D) float32 text classifier (zeros with a few-shot head)."""
    model_info: dict[str, Any]
    """The model's identity (name, checkpoint and its SHA-256, embedding size, ...)."""


def class_sources(model: ModelConfig) -> tuple[Any, Any]:
    """The (legend, few-shot head) that ``model``'s classes come from: ``--legend`` (default
    lucas-lc8) and no head, or with ``--head`` the head and its legend (``--legend``, else the
    one it was fitted with; None: a generic palette).

    :raises UserError: an unknown legend, or an unreadable head.
    """
    if not model.head:
        from model.legends import load_legend

        return load_legend(model.legend or "lucas-lc8", style=model.style), None
    from model.train.probe import head_legend, load_head

    head = load_head(model.head)
    return head_legend(head, model.legend, model.style), head


def model_classes(model: ModelConfig, legend: Any, head: Any) -> ModelClasses:
    """Load ``model`` (on its resolved backend) and resolve its classes and classifier: the
    few-shot head's classes (``head``, a zero classifier: the head classifies) or the
    ``legend``'s prompts embedded by the model's text tower.

    :param legend: the legend the classes (or, with a head, their colours) come from, and
        ``head`` the few-shot head or None: as :func:`pipeline.run.checks.preflight` loaded them
        (or :func:`class_sources`).
    :raises UserError: a legend of more than 254 classes (a uint8 map), or a head fitted on
        another model.
    """
    m = model.load()
    if head is not None:
        from model.train.probe import check_head_matches

        check_head_matches(
            head,
            {
                "name": m.name,
                "identity": m.identity,
                "dim": int(m.embed_dim),
                "checkpoint_sha256": m.checkpoint_sha256,
            },
            where=model.head,
        )
        names = tuple(head.class_names)
        if legend is not None and tuple(legend.names) == names:
            colors = tuple(legend.colors)
        else:
            colors = tuple(palette(len(names)))
        info = {
            "name": legend.name if legend is not None else Path(model.head).name,
            "style": "few-shot head",
            "prompt_hash": None,
            "head": Path(model.head).name,
            "head_sha256": sha256_file(Path(model.head)),
        }
        w = np.zeros((len(names), m.embed_dim), np.float32)
    else:
        from model.zeroshot import build_classifier

        w = build_classifier(m, legend)
        w = w.detach().cpu().float().numpy() if hasattr(w, "detach") else np.asarray(w, np.float32)
        names = tuple(c.name for c in legend.classes)
        colors = tuple(c.color for c in legend.classes)
        info = {"name": legend.name, "style": legend.style, "prompt_hash": legend.prompt_hash}
    if len(names) > 254:
        raise UserError(f"the legend has {len(names)} classes; at most 254 fit a uint8 map")
    model_info = {
        "name": m.name,
        "identity": m.identity,
        "checkpoint": model.checkpoint,
        "checkpoint_sha256": m.checkpoint_sha256,
        "untrained": m.untrained,
        "embed_dim": m.embed_dim,
        "arch": getattr(m, "arch", model.arch),
        "embedding_identity": getattr(m, "embedding_identity", m.identity),
    }
    return ModelClasses(names, colors, info, w, model_info)
