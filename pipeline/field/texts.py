"""Text and legend vectors for a field, from a torch-free cache: what ``classify``/``query --field``
pay per call is a file read, not a PyTorch import.

The vectors are the model's own (:func:`model.zeroshot.build_classifier`, which also keeps its
torch cache); this module keeps a float32 ``.npy`` copy of each, in ``cache_dir("field-texts")``,
keyed by the SHA-256 of (the model's identity, the prompt set's hash, the classifier recipe
version). Only a miss loads the model (and torch) once in the process.

A miss with ``checkpoint`` given, or any call with a checkpoint other than the field's, always
loads the model: its identity is checked against the field's (one-line UserError) before any
vector is used.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError
from pipeline.base.paths import cache_dir

_log = logging.getLogger(__name__)

#: Bump when what a cached vector means changes (it then is rebuilt once).
VERSION = "1"


def _path(identity: str, prompt_hash: str) -> Path:
    key = hashlib.sha256(f"{VERSION}\0{identity}\0{prompt_hash}".encode()).hexdigest()[:32]
    return cache_dir("field-texts") / f"{key}.npy"


def _read(path: Path, rows: int) -> np.ndarray | None:
    try:
        w = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        _log.warning("ignoring unreadable text cache %s (%s)", path, exc)
        return None
    if w.ndim != 2 or w.shape[0] != rows or not np.isfinite(w).all():
        return None
    return np.asarray(w, np.float32)


def _write(path: Path, w: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(w, np.float32), allow_pickle=False)


def legend_vectors(
    f: Any,
    legend: Any,
    *,
    checkpoint: str | None = None,
    clip_checkpoint: str | None = None,
) -> np.ndarray:
    """(C, D) float32 L2-normalised text classifier of ``legend`` (a :class:`model.legends.Legend`)
    for the field's model: the cached copy, or the model's (then cached).

    Raises:
        UserError: the model is not the field's, or its text tower is unavailable.
    """
    rows = len(legend)
    path = _path(f.model_identity, legend.prompt_hash)
    if checkpoint is None and clip_checkpoint is None and path.is_file():
        w = _read(path, rows)
        if w is not None and w.shape[1] == int(f.meta.get("embed_dim") or w.shape[1]):
            return w
    from model.zeroshot import build_classifier  # noqa: PLC0415 (lazy: loads torch)
    from pipeline.field.api import load_model  # noqa: PLC0415

    m = load_model(f, checkpoint, clip_checkpoint)
    w = np.asarray(build_classifier(m, legend).numpy(), np.float32)
    if m.identity == f.model_identity:
        _write(path, w)
    return w


def text_vectors(
    f: Any, texts: list[str] | tuple[str, ...], *, checkpoint: str | None = None
) -> np.ndarray:
    """(Q, D) float32 L2-normalised embeddings of free-text queries (each text one cache entry,
    made as :func:`pipeline.field.api.encode_text` makes it).

    Raises:
        UserError: no or an empty text, the model is not the field's, no text tower.
    """
    from model.legends import Legend, LegendClass  # noqa: PLC0415 (torch-free)

    texts = [str(t).strip() for t in texts]
    if not texts or any(not t for t in texts):
        raise UserError("give at least one non-empty text query")
    out = []
    for t in texts:
        lg = Legend(name="query", style="query", classes=(LegendClass(t, (t,), "#000000"),))
        out.append(legend_vectors(f, lg, checkpoint=checkpoint)[0])
    return np.stack(out)
