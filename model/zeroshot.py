"""Zero-shot classification: text classifier, class-mean calibration, probabilities.

**Classifier** (:func:`build_classifier`): all prompts of a legend are tokenised and encoded in one
batch; each prompt embedding is L2-normalised, averaged per class, and the mean renormalised
(REFERENCE_MODELS.md 1.5). The (C, D) result is cached on disk under
``cache_dir("classifiers")``, keyed by the model's ``identity`` and the legend's ``prompt_hash``,
and in memory, so a run builds it once.

**Calibration** (:func:`fit_calibration`): the reference code divides each class's score by its
mean over the evaluated images (a transductive class-mean normalisation). Here the class means
are computed once, on a fixed reference sample, stored with the run and applied identically to
every tile. The stored vector is the per-class **mean cosine** m_c. Two ways to apply it:

- ``mode="shifted"`` (default; TimeSenCLIP's ``zeroshot.py``): score s = cos / 2 + 1 in
  [0.5, 1.5], calibrated s_c / mean(s_c) = (cos_c + 2) / (m_c + 2). Always defined.
- ``mode="ratio"`` (SenCLIP's EuroSAT script): cos_c / m_c. Undefined when a class mean is <= 0
  (e.g. untrained models), which is a UserError.

**Probabilities** (:func:`probabilities`): the calibrated score is mapped back to the cosine
scale, c'_c = z_c * (mean_k(m_k) + a) - a with a = 2 (shifted) or, for ratio, c'_c =
cos_c * mean_k(m_k) / m_c, so c' = cos when all class means are equal and the ranking is the
calibrated one. Then ``p = softmax(logit_scale * c')`` over classes with ``logit_scale = 100``
(trained CLIP's temperature) unless given. Without calibration ``p = softmax(logit_scale * cos)``.
``confidence`` is the top probability.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.legends import Legend
from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError
from pipeline.base.paths import cache_dir

_log = logging.getLogger(__name__)

#: Bump when the classifier recipe changes (invalidates the disk cache).
CLASSIFIER_VERSION = "1"
LOGIT_SCALE = 100.0
MODES = ("shifted", "ratio")

_MEMO: dict[str, torch.Tensor] = {}
_MEMO_LOCK = threading.Lock()


@dataclass(frozen=True)
class Prediction:
    """Per-sample results of :func:`classify` (numpy arrays)."""

    classes: np.ndarray
    """(N,) int64 class index (argmax)."""
    confidence: np.ndarray
    """(N,) float32 probability of that class."""
    topk_classes: np.ndarray
    """(N, k) int64, best first."""
    topk_probs: np.ndarray
    """(N, k) float32."""


def classifier_key(identity: str, prompt_hash: str) -> str:
    """Cache key of a classifier: model identity + prompt set + recipe version."""
    text = f"{identity}|{prompt_hash}|v{CLASSIFIER_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def class_embeddings(prompt_emb: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """(P, D) prompt embeddings grouped by ``counts`` -> (C, D): normalise, mean, renormalise."""
    e = F.normalize(prompt_emb.float(), dim=-1)
    parts = torch.split(e, list(counts))
    return F.normalize(torch.stack([p.mean(dim=0) for p in parts]), dim=-1)


def _compute(m, legend: Legend) -> torch.Tensor:
    if legend.embeddings is not None:
        w = torch.as_tensor(np.asarray(legend.embeddings, dtype=np.float32))
        if w.shape[1] != m.embed_dim:
            raise UserError(
                f"legend {legend.name!r} has {w.shape[1]}-d embeddings; "
                f"{m.name} gives {m.embed_dim}-d ones"
            )
        return F.normalize(w, dim=-1)
    prompts = [p for c in legend.classes for p in c.prompts]
    emb = m.text_embed(prompts).detach().float().cpu()
    return class_embeddings(emb, [len(c.prompts) for c in legend.classes])


def _read_cached(path: Path, legend: Legend, m=None) -> torch.Tensor | None:
    """The cached classifier, only if it was built by this model, prompt set and recipe (the
    entry's own record, not only its file name); otherwise None (it is rebuilt)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        w = obj["weights"]
        made_by = (obj.get("identity"), obj.get("prompt_hash"), obj.get("version"))
        wanted = (getattr(m, "identity", made_by[0]), legend.prompt_hash, CLASSIFIER_VERSION)
        if made_by != wanted:
            _log.warning(
                "classifier cache %s was built for %s, not %s; rebuilding it", path, made_by, wanted
            )
            return None
        if m is not None and w.shape[1] != m.embed_dim:
            return None
        if tuple(obj["names"]) == legend.names and w.shape[0] == len(legend):
            return w.float()
    except Exception as exc:  # noqa: BLE001 - a bad cache entry is rebuilt, never fatal
        _log.warning("ignoring unreadable classifier cache %s (%s)", path, exc)
    return None


def _write_cached(path: Path, w: torch.Tensor, m, legend: Legend) -> None:
    payload = {
        "weights": w.contiguous(),
        "names": list(legend.names),
        "identity": m.identity,
        "prompt_hash": legend.prompt_hash,
        "version": CLASSIFIER_VERSION,
    }
    with atomic_path(path) as tmp:  # concurrent workers never see a partial file
        torch.save(payload, tmp)


def build_classifier(m, legend: Legend, cache: bool = True) -> torch.Tensor:
    """The (C, D) L2-normalised text classifier of ``legend`` for model ``m`` (float32, CPU).

    With ``cache``, reuses the copy in memory or in ``cache_dir("classifiers")`` when the model
    identity and prompt set match; ``cache=False`` always recomputes (and stores nothing).
    """
    key = classifier_key(m.identity, legend.prompt_hash)
    if not cache:
        return _compute(m, legend)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key].clone()
    path = cache_dir("classifiers") / f"{key}.pt"
    w = _read_cached(path, legend, m) if path.is_file() else None
    if w is None:
        w = _compute(m, legend)
        _write_cached(path, w, m, legend)
        _log.info(
            "text classifier for %s (%d classes) cached at %s", legend.name, len(legend), path
        )
    with _MEMO_LOCK:
        _MEMO[key] = w
    return w.clone()


def clear_memory_cache() -> None:
    """Forget in-memory classifiers (the disk cache stays)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def cosine(embeddings, w) -> torch.Tensor:
    """(N, D) x (C, D) -> (N, C) cosine similarities (inputs are normalised here too)."""
    e = F.normalize(_as_tensor(embeddings), dim=-1)
    wt = F.normalize(_as_tensor(w).to(e.device), dim=-1)
    if e.shape[1] != wt.shape[1]:
        raise UserError(f"embeddings are {e.shape[1]}-d but the classifier is {wt.shape[1]}-d")
    return e @ wt.T


def fit_calibration(embeddings, w) -> np.ndarray:
    """(C,) per-class mean cosine over a reference sample of embeddings (N, D).

    Fit once per run on a fixed, representative sample; pass the result to :func:`classify`
    for every tile.
    """
    e = _as_tensor(embeddings)
    if e.ndim != 2 or e.shape[0] == 0:
        raise UserError("calibration needs a non-empty (N, D) sample of embeddings")
    cos = cosine(e, w)
    return cos.mean(dim=0).double().cpu().numpy()


def calibrated_cosine(cos: torch.Tensor, calibration, mode: str = "shifted") -> torch.Tensor:
    """Apply the class-mean calibration to (N, C) cosines, staying on the cosine scale."""
    if calibration is None:
        return cos
    if mode not in MODES:
        raise UserError(f"unknown calibration mode {mode!r}; choose one of {', '.join(MODES)}")
    m = torch.as_tensor(np.asarray(calibration, dtype=np.float64)).to(cos.device)
    if m.shape != (cos.shape[1],):
        raise UserError(f"calibration has {m.numel()} values for {cos.shape[1]} classes")
    if mode == "ratio":
        if (m <= 0).any():
            bad = int((m <= 0).sum())
            raise UserError(
                f"ratio calibration is undefined: {bad} class(es) have a mean cosine <= 0 on the "
                "reference sample; use mode='shifted'"
            )
        return (cos.double() * (m.mean() / m)).float()
    a = 2.0
    z = (cos.double() + a) / (m + a)
    return (z * (m.mean() + a) - a).float()


def probabilities(
    embeddings,
    w,
    calibration=None,
    *,
    logit_scale: float = LOGIT_SCALE,
    mode: str = "shifted",
) -> np.ndarray:
    """(N, C) float32 class probabilities: ``softmax(logit_scale * calibrated cosine)``."""
    c = calibrated_cosine(cosine(embeddings, w), calibration, mode)
    return torch.softmax(logit_scale * c, dim=-1).cpu().numpy().astype(np.float32)


def classify(
    embeddings,
    w,
    calibration=None,
    k: int = 3,
    *,
    logit_scale: float = LOGIT_SCALE,
    mode: str = "shifted",
) -> Prediction:
    """Class index, confidence and top-k of each embedding (see the module doc for the maths)."""
    c = calibrated_cosine(cosine(embeddings, w), calibration, mode)
    p = torch.softmax(logit_scale * c, dim=-1)
    k = max(1, min(int(k), p.shape[1]))
    top_p, top_i = torch.topk(p, k, dim=-1)
    return Prediction(
        classes=top_i[:, 0].cpu().numpy().astype(np.int64),
        confidence=top_p[:, 0].cpu().numpy().astype(np.float32),
        topk_classes=top_i.cpu().numpy().astype(np.int64),
        topk_probs=top_p.cpu().numpy().astype(np.float32),
    )


def prompt_scores(prompt_emb: torch.Tensor, counts: Sequence[int]) -> list[np.ndarray]:
    """The SenCLIP paper's prompt score w = alpha / beta for every prompt, per class.

    alpha: mean cosine of a prompt to the *other* prompts of its class; beta: mean cosine to all
    other prompts of the legend (Eqs. 6-7). A class with one prompt scores it 1.
    """
    e = F.normalize(prompt_emb.float(), dim=-1)
    sim = e @ e.T
    n = sim.shape[0]
    beta = (sim.sum(dim=1) - sim.diagonal()) / max(n - 1, 1)
    out, start = [], 0
    for cnt in counts:
        block = sim[start : start + cnt, start : start + cnt]
        if cnt == 1:
            out.append(np.ones(1))
        else:
            alpha = (block.sum(dim=1) - block.diagonal()) / (cnt - 1)
            out.append((alpha / beta[start : start + cnt]).double().cpu().numpy())
        start += cnt
    return out


def select_prompts(m, legend: Legend, k: int = 3) -> Legend:
    """Keep the top-``k`` prompts per class by :func:`prompt_scores` (text only, no images)."""
    if legend.embeddings is not None:
        return legend
    if k < 1:
        raise UserError("prompt selection needs k >= 1")
    prompts = [p for c in legend.classes for p in c.prompts]
    emb = m.text_embed(prompts).detach().float().cpu()
    scores = prompt_scores(emb, [len(c.prompts) for c in legend.classes])
    chosen = {}
    for c, s in zip(legend.classes, scores):
        order = np.argsort(-s, kind="stable")[:k]
        chosen[c.name] = tuple(c.prompts[i] for i in sorted(order))
    return legend.with_prompts(chosen, style=f"{legend.style}+top{k}")
