"""A run's classes and text classifier: what the loaded model maps pixels to.

:func:`model_classes` loads the model and resolves its classes in one step: from a few-shot head
(``--head``: the head classifies, the text classifier is zeros) or from a legend's prompts
(``--legend``, default lucas-lc8, embedded by the model's text tower). The run's preparation
(:mod:`pipeline.run.prepare`) and the backend's measurement (:mod:`pipeline.run.precision`) both
take their classifier from here.
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


def model_classes(model: ModelConfig) -> ModelClasses:
    """Load ``model`` (on its resolved backend) and resolve its classes and classifier: the
    few-shot head's classes (``--head``, a zero classifier: the head classifies) or the legend's
    prompts (``--legend``, default lucas-lc8) embedded by the model's text tower.

    :raises UserError: a legend of more than 254 classes (a uint8 map), or a head fitted on
        another model.
    """
    m = model.load()
    if model.head:
        from model.train.probe import check_head_matches, head_legend, load_head

        head = load_head(model.head)
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
        legend = head_legend(head, model.legend, model.style)
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
        from model.legends import load_legend
        from model.zeroshot import build_classifier

        legend = load_legend(model.legend or "lucas-lc8", style=model.style)
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
