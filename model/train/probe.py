"""Few-shot linear heads: multinomial logistic regression on frozen embeddings.

A head maps embeddings (N, D) to class probabilities (N, C). It is fitted with full-batch L-BFGS
on the L2-regularised cross-entropy (optionally class-balanced: every class weighs the same in the
loss, whatever its number of examples) and saved as a small ``.npz`` file holding the weights,
the bias, the class names and the identity of the model whose embeddings it was fitted on, so a
head is never silently applied to another model's embedding space.

The runner's contract: ``head = load_head(path)``; ``head.predict(embeddings) -> (N, C)``
probabilities (rows sum to 1); ``head.class_names``; ``head.model_identity``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.legends import load_legend
from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

FORMAT = "s2lc-linear-head"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LinearHead:
    """A fitted linear classifier over (optionally L2-normalised) embeddings."""

    weight: np.ndarray
    """(C, D) float32."""
    bias: np.ndarray
    """(C,) float32."""
    class_names: tuple[str, ...]
    model_identity: dict[str, Any] = field(default_factory=dict)
    """What produced the embeddings: at least ``name``; ``checkpoint_sha256`` when known."""
    normalize: bool = True
    """L2-normalise embeddings before the linear layer (as zero-shot scoring does)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Fit settings and training scores (JSON-safe)."""

    def __post_init__(self) -> None:
        w = np.asarray(self.weight, dtype=np.float32)
        b = np.asarray(self.bias, dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"weight {w.shape} and bias {b.shape} do not form a (C, D) head")
        if len(self.class_names) != w.shape[0]:
            raise ValueError(f"{len(self.class_names)} class names for {w.shape[0]} outputs")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def logits(self, embeddings: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, C) float32 logits (a torch tensor on the embeddings' device)."""
        import torch  # noqa: PLC0415 (lazy: reading a head must not import torch)
        import torch.nn.functional as F  # noqa: PLC0415, N812

        x = torch.as_tensor(embeddings)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected embeddings (N, {self.dim}), got {tuple(x.shape)}")
        x = x.float()
        if self.normalize:
            x = F.normalize(x, dim=-1)
        w = torch.from_numpy(self.weight).to(x.device)
        b = torch.from_numpy(self.bias).to(x.device)
        return x @ w.T + b

    def predict(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Class probabilities (N, C); numpy in -> numpy out, torch in -> torch out."""
        import torch  # noqa: PLC0415 (lazy)

        probs = torch.softmax(self.logits(embeddings), dim=-1)
        return probs if isinstance(embeddings, torch.Tensor) else probs.cpu().numpy()

    def save(self, path: str | Path) -> Path:
        """Write the head as ``.npz`` (weights, bias, class names, identity + meta as JSON)."""
        p = Path(path)
        if p.suffix != ".npz":
            p = p.with_suffix(p.suffix + ".npz") if p.suffix else p.with_suffix(".npz")
        p.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class_names": list(self.class_names),
            "model": self.model_identity,
            "normalize": self.normalize,
            "meta": self.meta,
        }
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:  # a file object: no ".npz" appended
            np.savez(fh, weight=self.weight, bias=self.bias, header=np.array(json.dumps(header)))
        return p


def load_head(path: str | Path) -> LinearHead:
    """Read a head written by :meth:`LinearHead.save`; a wrong file is a one-line UserError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"head file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            weight, bias = z["weight"], z["bias"]
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{p}: not a linear-head file ({str(exc).splitlines()[0]})") from None
    if header.get("format") != FORMAT:
        raise UserError(f"{p}: not a linear-head file (format {header.get('format')!r})")
    if int(header.get("version", 0)) > FORMAT_VERSION:
        raise UserError(f"{p}: head format version {header['version']} is newer than this code")
    return LinearHead(
        weight=weight,
        bias=bias,
        class_names=tuple(header["class_names"]),
        model_identity=dict(header.get("model") or {}),
        normalize=bool(header.get("normalize", True)),
        meta=dict(header.get("meta") or {}),
    )


def check_head_matches(head: LinearHead, identity: dict[str, Any], *, where: str = "head") -> None:
    """Raise UserError if ``head`` was fitted on another model than ``identity`` describes.

    Compares the model name, the embedding size (if given as ``dim``) and, when both sides know
    them, the checkpoint hash, the full model identity (untrained weights: their seed; the CLIP
    text side), the composite period kind (``period``: monthly/quarterly/annual) and the number of
    composites ``periods`` (T). A head whose identity lacks a key (older heads) is not checked on it.
    """
    mine = head.model_identity
    if mine.get("name") and identity.get("name") and mine["name"] != identity["name"]:
        raise UserError(
            f"{where}: fitted on {mine['name']!r} embeddings, but the model is {identity['name']!r}"
        )
    if identity.get("dim") and int(identity["dim"]) != head.dim:
        raise UserError(
            f"{where}: expects {head.dim}-d embeddings, the model gives {identity['dim']}"
        )
    a, b = mine.get("checkpoint_sha256"), identity.get("checkpoint_sha256")
    if a and b and a != b:
        raise UserError(
            f"{where}: fitted on checkpoint {a[:12]}, but the model's checkpoint is {b[:12]}"
        )
    a, b = mine.get("identity"), identity.get("identity")
    if a and b and a != b:
        raise UserError(
            f"{where}: fitted on model {a}, but this run's model is {b}; refit it with 'probe' "
            "on the same weights (and --seed for --untrained)"
        )
    a, b = mine.get("period"), identity.get("period")
    if a and b and a != b:
        raise UserError(
            f"{where}: fitted on {a} composites, but this run makes {b} composites; use "
            f"--period {a} or refit the head on points extracted with --period {b}"
        )
    a, b = mine.get("periods"), identity.get("periods")
    if a and b and int(a) != int(b):
        raise UserError(
            f"{where}: fitted on series of T = {a} composites, but this run gives T = {b}"
        )


def head_legend(head: LinearHead, legend: str | None = None, style: str = "aerial"):
    """The legend whose colours a head's map takes (:func:`model.legends.load_legend`):
    ``legend`` when given (``--legend``), else the one the head was fitted with (``probe
    --legend``, kept in its ``meta``), else None (a generic palette).

    Raises:
        UserError: ``legend`` is given and unknown. A head's own legend that no longer loads
            (its file moved) gives None instead.
    """
    name = legend if legend is not None else head.meta.get("legend")
    if not name:
        return None
    try:
        return load_legend(name, style=style)
    except UserError:
        if legend is not None:
            raise
        return None  # the head's legend file moved: fall back to a palette


def fit_linear_head(
    embeddings: np.ndarray | torch.Tensor,
    labels: np.ndarray | Sequence[int],
    class_names: Sequence[str],
    *,
    l2: float = 1e-3,
    class_balanced: bool = False,
    normalize: bool = True,
    max_iter: int = 200,
    model_identity: dict[str, Any] | None = None,
    seed: int = 0,
) -> LinearHead:
    """Fit a multinomial logistic regression with L-BFGS (deterministic, full batch).

    Args:
        embeddings: (N, D) features.
        labels: (N,) integer classes in ``[0, len(class_names))``.
        class_names: the head's output classes (a class without examples gets a large negative
            bias, so it is never predicted).
        l2: weight decay on the weights (not the bias): the loss is mean CE + l2 * ||W||^2 / 2.
        class_balanced: weight every example by N / (C_present * n_class), so each present class
            contributes equally.
        normalize: L2-normalise the embeddings first (stored in the head).
        max_iter: L-BFGS iterations.
        model_identity: stored in the head (``name``, ``checkpoint_sha256``, ``dim``...).
    """
    import torch  # noqa: PLC0415 (lazy: reading a head must not import torch)
    import torch.nn.functional as F  # noqa: PLC0415, N812

    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    c = len(class_names)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise UserError(f"embeddings {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
    if x.shape[0] == 0:
        raise UserError("no labelled examples to fit a head on")
    if y.min() < 0 or y.max() >= c:
        raise UserError(f"labels must lie in 0..{c - 1}")
    if l2 < 0:
        raise UserError(f"l2 must be >= 0, got {l2}")
    if normalize:
        x = F.normalize(x, dim=-1)
    counts = torch.bincount(y, minlength=c).double()
    present = counts > 0
    if class_balanced:
        sample_w = (y.shape[0] / (present.sum() * counts.clamp(min=1)))[y]
    else:
        sample_w = torch.ones(y.shape[0], dtype=torch.float64)
    sample_w = sample_w / sample_w.sum()

    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(c, x.shape[1], generator=g, dtype=torch.float64)).requires_grad_()
    b = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    absent = ~present
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = x @ w.T + b
        logits = logits.masked_fill(absent, -1e4) if absent.any() else logits
        loss = (F.cross_entropy(logits, y, reduction="none") * sample_w).sum()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    final = float(opt.step(closure).detach())
    with torch.no_grad():
        bias = b.detach().clone()
        bias[absent] = -1e4
        weight = w.detach().clone()
        weight[absent] = 0.0
        pred = (x @ weight.T + bias).argmax(dim=1)
        train_acc = float((pred == y).double().mean())
    meta = {
        "l2": l2,
        "class_balanced": class_balanced,
        "max_iter": max_iter,
        "n_examples": int(y.shape[0]),
        "examples_per_class": {class_names[i]: int(counts[i]) for i in range(c)},
        "final_loss": final,
        "train_accuracy": train_acc,
    }
    _log.info("linear head: %d examples, %d classes, train accuracy %.3f", y.shape[0], c, train_acc)
    identity = dict(model_identity or {})
    identity.setdefault("dim", int(x.shape[1]))
    return LinearHead(
        weight=weight.float().numpy(),
        bias=bias.float().numpy(),
        class_names=tuple(class_names),
        model_identity=identity,
        normalize=normalize,
        meta=meta,
    )
