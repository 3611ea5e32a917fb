"""The cross-view contrastive training loop, shared by TimeSenCLIP and SenCLIP.

A *task* (:class:`ContrastiveTask`) turns a batch of satellite inputs into embeddings and says
which module's weights make the exported checkpoint; the loop owns everything else: the pooling of
the ground embeddings, the InfoNCE + queue loss with its learnable temperature, AdamW with linear
warm-up and cosine decay (per step), bf16 autocast on CUDA, gradient clipping, a checkpoint every
epoch, resuming, and per-epoch validation (held-out contrastive loss and retrieval, plus zero-shot
accuracy where labels and a classifier exist).

Checkpoint layout (``<out>/checkpoints/epoch_NNN.pt``, copied to ``last.pt``, and ``best.pt``)::

    {"state_dict": <task.export_state_dict()>,   # what model.load reads
     "model_name": "timesenclip", "epoch": 3, "train_format": "s2lc-train-v1",
     "config_json": "...", "metrics_json": "...",
     "train_state": {"modules": {...}, "optimizer": ..., "scheduler": ..., "rng": ...}}

``model.load(name, checkpoint=...)`` unwraps ``state_dict`` and ignores the rest, so every epoch
file is a usable model. Only tensors and plain containers are stored (``weights_only`` loading).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.train.ground import DirectionPool
from model.train.loss import ContrastiveLoss
from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError
from pipeline.base.jsonio import to_json_safe, write_json

_log = logging.getLogger(__name__)

FORMAT = "s2lc-train-v1"
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults: the TimeSenCLIP paper, §5.1, with a 2048 queue).

    Attributes:
        epochs: passes over the training pairs.
        batch_size: pairs per step (also the number of in-batch negatives + 1).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings, temperature).
        warmup_epochs: linear warm-up length (fractions allowed), then cosine decay to
            ``lr * min_lr_ratio`` at the last step.
        queue_size: MoCo-style queue of past pooled ground embeddings (0: in-batch only).
        learn_temperature: learn the logit scale (init ln(1/0.07), clamped to <= ln 100).
        symmetric: add the ground-anchored InfoNCE term (in-batch negatives).
        pooling: ``avg`` or ``attention`` over the N/E/S/W photo embeddings.
        grad_clip: max gradient norm (0: off).
        val_fraction: share of the pairs held out for validation (0: none).
        seed: seeds the split, the shuffling, the augmentation and the initialisation.
        device: ``cuda``, ``cpu`` or None (CUDA when available).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
        keep_every: also keep ``epoch_NNN.pt`` of every k-th epoch (0: only the latest and best).
        eval_batch_size: batch size for validation embeddings.
    """

    epochs: int = 200
    batch_size: int = 1024
    lr: float = 1e-4
    weight_decay: float = 1e-6
    warmup_epochs: float = 10.0
    min_lr_ratio: float = 0.0
    queue_size: int = 2048
    learn_temperature: bool = True
    symmetric: bool = True
    pooling: str = "avg"
    grad_clip: float = 1.0
    val_fraction: float = 0.1
    seed: int = 0
    device: str | None = None
    precision: str = "auto"
    keep_every: int = 0
    eval_batch_size: int = 4096

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (in-batch negatives)"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.queue_size >= 0, "queue_size must be >= 0"),
            (self.pooling in ("avg", "attention"), "pooling must be 'avg' or 'attention'"),
            (0 <= self.val_fraction < 1, "val_fraction must be in [0, 1)"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.keep_every >= 0, "keep_every must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(f"training config: {msg}")


class ContrastiveTask(Protocol):
    """What the loop needs from a model being trained."""

    name: str
    """Model name as ``model.load`` knows it (``timesenclip``, ``senclip``)."""
    dim: int

    def modules(self) -> dict[str, nn.Module]:
        """The trainable modules by name (saved in the training state)."""

    def encode(
        self, inputs: torch.Tensor, *, train: bool, generator: torch.Generator
    ) -> torch.Tensor:
        """(B, ...) inputs on the device -> (B, D) embeddings (augmented when ``train``)."""

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights ``model.load(name, checkpoint=...)`` reads."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups (decay / no decay) of the trainable parameters."""


def split_decay(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices; no decay for biases, norms, embeddings/tokens and scalars."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or any(k in name for k in ("pos", "token", "embedding", "ln_", "norm"))
        (no_decay if skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class Inputs(Protocol):
    """Indexable satellite inputs: ``inputs[idx]`` -> a (len(idx), ...) tensor; ``len(inputs)``."""

    def __len__(self) -> int: ...
    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor: ...


@dataclass
class PairedData:
    """Satellite inputs paired with their ground photo embeddings (one row per point)."""

    inputs: Any
    """A tensor (N, ...) or any :class:`Inputs`."""
    ground: torch.Tensor
    """(N, K, D) L2-normalised photo embeddings (zeros where missing)."""
    ground_mask: torch.Tensor
    """(N, K) bool."""
    ids: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    """(N,) class index into the validation classifier's classes, -1 = unlabelled."""

    def __post_init__(self) -> None:
        n = len(self.inputs)
        if self.ground.shape[0] != n or self.ground_mask.shape[0] != n:
            raise ValueError("inputs and ground embeddings differ in length")

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, idx: np.ndarray) -> PairedData:
        t = torch.as_tensor(idx, dtype=torch.long)
        take = getattr(self.inputs, "take_rows", None)  # lazy inputs (chip folders) stay lazy
        return PairedData(
            inputs=take(np.asarray(idx)) if take else self.inputs[t],
            ground=self.ground[t],
            ground_mask=self.ground_mask[t],
            ids=[self.ids[i] for i in idx] if self.ids else [],
            labels=None if self.labels is None else self.labels[idx],
        )


@dataclass(frozen=True)
class ZeroShotEval:
    """Zero-shot validation: classify embeddings against fixed class vectors."""

    classifier: np.ndarray
    """(C, D) class embeddings (normalised here)."""
    class_names: tuple[str, ...]


@dataclass
class TrainResult:
    out_dir: Path
    last: Path
    best: Path
    history: list[dict[str, Any]]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/val split of ``n`` rows."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n_val < 2 and n >= 4:
        n_val = 2
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def lr_lambda(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from ~0 to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("training: --device cuda asked for, but CUDA is not available")
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return torch.autocast(device_type=device.type, enabled=False)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_device(x: Any, device: torch.device) -> Any:
    return x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x


def _batch(inputs: Any, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor) and inputs.device == device:
        return inputs[idx.to(device)]
    return _to_device(inputs[idx.cpu()], device)


@torch.no_grad()
def embed_all(
    task: ContrastiveTask,
    inputs: Any,
    device: torch.device,
    batch_size: int,
    precision: str = "auto",
) -> torch.Tensor:
    """Eval-mode embeddings (N, D) float32 on the CPU, L2-normalised."""
    for m in task.modules().values():
        m.eval()
    out = []
    gen = torch.Generator().manual_seed(0)
    n = len(inputs)
    for s in range(0, n, batch_size):
        idx = torch.arange(s, min(n, s + batch_size))
        with _autocast(device, precision):
            e = task.encode(_batch(inputs, idx, device), train=False, generator=gen)
        out.append(F.normalize(e.float(), dim=-1).cpu())
    return torch.cat(out) if out else torch.zeros(0, task.dim)


@torch.no_grad()
def evaluate_pairs(
    task: ContrastiveTask,
    data: PairedData,
    pool: DirectionPool,
    loss_fn: ContrastiveLoss,
    device: torch.device,
    cfg: TrainConfig,
    zeroshot: ZeroShotEval | None,
) -> dict[str, float]:
    """Held-out metrics: InfoNCE (in-batch, no queue), retrieval recall@1 both ways (within
    batches of ``batch_size`` to match training difficulty) and zero-shot accuracy."""
    sat = embed_all(task, data.inputs, device, cfg.eval_batch_size, cfg.precision)
    pool.eval()
    g = pool(data.ground.to(device), data.ground_mask.to(device)).float().cpu()
    scale = float(loss_fn.logit_scale.exp())
    losses, s2g, g2s, counts = [], 0.0, 0.0, 0
    n = sat.shape[0]
    for s in range(0, n, cfg.batch_size):
        a, b = sat[s : s + cfg.batch_size], g[s : s + cfg.batch_size]
        if a.shape[0] < 2:
            continue
        sim = a @ b.T
        target = torch.arange(a.shape[0])
        losses.append(float(F.cross_entropy(scale * sim, target)) * a.shape[0])
        s2g += float((sim.argmax(1) == target).sum())
        g2s += float((sim.argmax(0) == target).sum())
        counts += a.shape[0]
    out: dict[str, float] = {}
    if counts:
        out.update(val_loss=sum(losses) / counts, val_s2g_r1=s2g / counts, val_g2s_r1=g2s / counts)
    if zeroshot is not None and data.labels is not None:
        lab = np.asarray(data.labels)
        ok = lab >= 0
        if ok.any():
            w = F.normalize(torch.as_tensor(zeroshot.classifier, dtype=torch.float32), dim=-1)
            pred = (sat[torch.as_tensor(ok)] @ w.T).argmax(1).numpy()
            out["val_zeroshot_acc"] = float((pred == lab[ok]).mean())
            out["val_zeroshot_n"] = int(ok.sum())
    return out


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state = {"generator": gen.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Everything the loop changes and a checkpoint's ``train_state`` restores.

    The task's modules, the ground pooling, the loss (its queue and temperature), the optimiser,
    the LR schedule and the batch RNG, plus the epochs done, their metrics and the best score.
    """

    modules: dict[str, nn.Module]
    pool: DirectionPool
    loss_fn: ContrastiveLoss
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_key: str | None = None
    best_val: float = -math.inf

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``train_state`` (tensors and plain containers only)."""
        return {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "pool": self.pool.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(self.gen),
            "best_key": self.best_key,
            "best_val": float(self.best_val),
        }

    def load_checkpoint(self, saved: dict[str, Any]) -> None:
        """Continue from a loaded ``last.pt``: its ``train_state``, epoch and history."""
        ts = saved["train_state"]
        for name, m in self.modules.items():
            m.load_state_dict(ts["modules"][name])
        self.pool.load_state_dict(ts["pool"])
        self.loss_fn.load_state_dict(ts["loss"])
        self.opt.load_state_dict(ts["optimizer"])
        self.sched.load_state_dict(ts["scheduler"])
        _set_rng_state(self.gen, ts["rng"])
        self.epoch = int(saved["epoch"])
        self.history = json.loads(saved.get("history_json", "[]"))
        self.best_key = ts.get("best_key")
        self.best_val = float(ts.get("best_val", -math.inf))


def fit(
    task: ContrastiveTask,
    data: PairedData,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    val: PairedData | None = None,
    zeroshot: ZeroShotEval | None = None,
    resume: bool = True,
    extra_meta: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``task`` on ``data`` and write checkpoints under ``out_dir``.

    ``val``: held-out pairs (None: split ``cfg.val_fraction`` off ``data``). ``resume``: continue
    from ``out_dir/checkpoints/last.pt`` when it exists (same config except ``epochs``).
    ``progress`` gets each epoch's metrics dict.
    """
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    # Dropout draws from torch's global RNG: seed it for reproducible runs (and restore it on
    # resume) without changing what the caller's random numbers would have been.
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(cfg.seed)
        return _fit(
            task,
            data,
            cfg,
            out_dir,
            val=val,
            zeroshot=zeroshot,
            resume=resume,
            extra_meta=extra_meta,
            progress=progress,
        )


def _fit(
    task: ContrastiveTask,
    data: PairedData,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    val: PairedData | None = None,
    zeroshot: ZeroShotEval | None = None,
    resume: bool = True,
    extra_meta: dict[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    out = Path(out_dir)
    ckdir = out / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg)
    if val is None and cfg.val_fraction > 0 and len(data) >= 4:
        tr, va = split_indices(len(data), cfg.val_fraction, cfg.seed)
        data, val = data.subset(tr), data.subset(va)
    if len(data) < 2:
        raise UserError(f"training needs at least 2 pairs, got {len(data)}")

    gen = torch.Generator().manual_seed(cfg.seed)
    pool = DirectionPool(data.ground.shape[-1], cfg.pooling).to(device)
    loss_fn = ContrastiveLoss(
        data.ground.shape[-1],
        cfg.queue_size,
        learn_temperature=cfg.learn_temperature,
        symmetric=cfg.symmetric,
    ).to(device)
    modules = task.modules()
    for m in modules.values():
        m.to(device)
    groups = task.param_groups(cfg.weight_decay)
    extra = [p for p in list(pool.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
    n = len(data)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs  # drop the ragged last batch: it would have fewer negatives
    total = steps_per_epoch * cfg.epochs
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, warm, total, cfg.min_lr_ratio)
    )
    state = TrainState(modules, pool, loss_fn, opt, sched, gen)

    config_json = json.dumps(to_json_safe(cfg), sort_keys=True)
    last_path = ckdir / "last.pt"
    if resume and last_path.is_file():
        saved = torch.load(last_path, map_location="cpu", weights_only=True)
        old = json.loads(saved.get("config_json", "{}"))
        new = json.loads(config_json)
        diff = sorted(
            k for k in new if k not in ("epochs", "device", "keep_every") and old.get(k) != new[k]
        )
        if saved.get("model_name") != task.name or diff:
            raise UserError(
                f"{last_path}: cannot resume: it was trained with a different "
                f"{'model' if saved.get('model_name') != task.name else 'config'} "
                f"({', '.join(diff[:5]) or saved.get('model_name')}); use a new --out or --no-resume"
            )
        state.load_checkpoint(saved)
        _log.info("resuming from %s at epoch %d", last_path, state.epoch)

    inputs = data.inputs
    if isinstance(inputs, torch.Tensor) and device.type == "cuda":
        inputs = inputs.to(device)  # small per-pixel inputs: keep the whole set on the GPU
    ground = data.ground.to(device)
    gmask = data.ground_mask.to(device)

    for epoch in range(state.epoch, cfg.epochs):
        t0 = time.perf_counter()
        for m in modules.values():
            m.train()
        pool.train()
        perm = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs]
            x = _batch(inputs, idx, device)
            with _autocast(device, cfg.precision):
                sat = task.encode(x, train=True, generator=gen)
                g = pool(ground[idx.to(device)], gmask[idx.to(device)])
            loss, info = loss_fn(sat.float(), g.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                params = [p for grp in opt.param_groups for p in grp["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            if cfg.learn_temperature:
                loss_fn.clamp_()
            loss_fn.enqueue(F.normalize(g.detach().float(), dim=-1))
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            for k in ("batch_top1", "positive_cosine"):
                sums[k] = sums.get(k, 0.0) + info[k]
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({f"train_{k}": v / max(steps_per_epoch, 1) for k, v in sums.items()})
        row["temperature"] = float(1.0 / loss_fn.logit_scale.detach().exp())
        row["lr"] = float(sched.get_last_lr()[0])
        if val is not None and len(val) >= 2:
            row.update(evaluate_pairs(task, val, pool, loss_fn, device, cfg, zeroshot))
        row["seconds"] = round(time.perf_counter() - t0, 3)
        state.history.append(row)
        key = (
            "val_zeroshot_acc"
            if "val_zeroshot_acc" in row
            else ("val_s2g_r1" if "val_s2g_r1" in row else None)
        )
        score = row[key] if key else -row["train_loss"]
        improved = score > state.best_val
        if improved:
            state.best_val, state.best_key = score, key or "-train_loss"
        state.epoch = epoch + 1
        _save_epoch(task, cfg, ckdir, state, row, config_json, improved, extra_meta)
        _log.info(
            "epoch %d/%d  loss %.4f  %s  %.1fs",
            epoch + 1,
            cfg.epochs,
            row["train_loss"],
            "  ".join(f"{k} {row[k]:.3f}" for k in ("val_s2g_r1", "val_zeroshot_acc") if k in row),
            row["seconds"],
        )
        if progress:
            progress(row)
    write_json(out / "history.json", state.history)
    return TrainResult(out_dir=out, last=last_path, best=ckdir / "best.pt", history=state.history)


def _save_epoch(
    task: ContrastiveTask,
    cfg: TrainConfig,
    ckdir: Path,
    state: TrainState,
    row: dict[str, Any],
    config_json: str,
    improved: bool,
    extra_meta: dict[str, Any] | None,
) -> None:
    """Write ``epoch_NNN.pt`` (weights, metadata, ``train_state``), point ``last.pt`` at it,
    update ``best.pt`` when ``improved``, and drop the previous epoch's file unless kept."""
    epoch = state.epoch
    weights = {k: v.detach().cpu().contiguous() for k, v in task.export_state_dict().items()}
    meta = {
        "train_format": FORMAT,
        "model_name": task.name,
        "epoch": epoch,
        "config_json": config_json,
        "metrics_json": json.dumps(to_json_safe(row)),
        "history_json": json.dumps(to_json_safe(state.history)),
    }
    for k, v in (extra_meta or {}).items():
        meta[k] = v if isinstance(v, (str, int, float, bool)) else json.dumps(to_json_safe(v))
    train_state = state.state_dict()
    path = ckdir / f"epoch_{epoch:03d}.pt"
    with atomic_path(path) as tmp:
        torch.save({"state_dict": weights, **meta, "train_state": train_state}, tmp)
    with atomic_path(ckdir / "last.pt") as tmp:
        try:
            os.link(path, tmp)  # same bytes, no copy
        except OSError:
            shutil.copyfile(path, tmp)
    if improved:
        # best.pt: weights and metadata only (no optimiser state): the file to ship.
        with atomic_path(ckdir / "best.pt") as tmp:
            torch.save({"state_dict": weights, **meta}, tmp)
    prev = ckdir / f"epoch_{epoch - 1:03d}.pt"
    if prev.exists() and not (cfg.keep_every and (epoch - 1) % cfg.keep_every == 0):
        prev.unlink()
