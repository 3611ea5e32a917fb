"""Batched inference: numpy in, numpy embeddings out, device, dtype and batch size chosen here.

- Everything runs under ``torch.inference_mode``.
- CUDA: bf16 autocast (fp16 where bf16 is unsupported); batches of 131,072 pixels (TimeSenCLIP)
  or 512 chips (SenCLIP); host-to-device copies go through a reusable pinned staging buffer with
  ``non_blocking=True``. Preprocessing (normalisation, min-max stretch, resize) runs on the GPU.
- CPU: float32. bf16 autocast was measured on the 2-core development machine and was 2-4x
  *slower* there (:data:`CPU_DTYPE_NOTE`); ``S2LC_CPU_DTYPE=bfloat16`` opts in anyway, e.g. on
  CPUs with AMX / AVX512-BF16, where it may pay off (measure with ``python -m pipeline bench``).

The model object comes from :func:`model.load` / :func:`model.get_model` (one per process).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import torch

from pipeline.errors import UserError

_log = logging.getLogger(__name__)

#: Measured on the development machine (2 CPU cores, torch 2.13 CPU), see ``bench``.
CPU_DTYPE_NOTE = (
    "Measured 2026-11-22, 2-core Xeon VM (AVX-512F, no AVX512-BF16/AMX), torch 2.13 CPU, "
    "interleaved runs on a shared machine: TimeSenCLIP 4,096 px (batch 2,048) fp32 143-269 px/s "
    "vs bf16 autocast 55-136 px/s; SenCLIP ViT-B/32 16 chips fp32 2.8-5.0 chips/s vs bf16 "
    "0.7-1.3 chips/s. bf16 embeddings differed by <= 1.6e-3 (cosine >= 0.99996). So fp32."
)

GPU_PIXEL_BATCH = 131_072
CPU_PIXEL_BATCH = 8_192
GPU_CHIP_BATCH = 512
CPU_CHIP_BATCH = 16


def _dtype_from_env() -> torch.dtype | None:
    name = os.environ.get("S2LC_CPU_DTYPE", "").strip().lower()
    if not name:
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in table:
        raise UserError(f"S2LC_CPU_DTYPE={name!r}: use float32 or bfloat16")
    return table[name]


def inference_dtype(device: torch.device | str) -> torch.dtype:
    """The compute dtype used on ``device`` (autocast dtype; float32 means no autocast)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _dtype_from_env() or torch.float32


def pixel_batch_size(device: torch.device | str) -> int:
    """Pixels per TimeSenCLIP batch on ``device``."""
    return GPU_PIXEL_BATCH if torch.device(device).type == "cuda" else CPU_PIXEL_BATCH


def chip_batch_size(device: torch.device | str) -> int:
    """Chips per SenCLIP batch on ``device``."""
    return GPU_CHIP_BATCH if torch.device(device).type == "cuda" else CPU_CHIP_BATCH


def _autocast(device: torch.device):
    dtype = inference_dtype(device)
    if dtype == torch.float32:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


class _Stager:
    """Moves numpy batches to the device; on CUDA through a pinned buffer, asynchronously."""

    def __init__(self, device: torch.device, shape: tuple[int, ...]) -> None:
        self.device = device
        self.pinned = None
        if device.type == "cuda":
            self.pinned = [torch.empty(shape, dtype=torch.float32).pin_memory() for _ in range(2)]
            self.events = [None, None]
            self.i = 0

    def __call__(self, chunk: np.ndarray) -> torch.Tensor:
        src = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
        if self.pinned is None:
            return src
        i = self.i = 1 - self.i
        if self.events[i] is not None:  # the copy that used this buffer last must be done
            self.events[i].synchronize()
        buf = self.pinned[i][: len(src)]
        buf.copy_(src)
        out = buf.to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self.events[i] = ev
        return out


def _run_batches(
    x: np.ndarray,
    batch: int,
    device: torch.device,
    dim: int,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> np.ndarray:
    n = x.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    if n == 0:
        return out
    stage = _Stager(device, (min(batch, n), *x.shape[1:]))
    with torch.inference_mode(), _autocast(device):
        for i in range(0, n, batch):
            xb = stage(x[i : i + batch])
            out[i : i + len(xb)] = fn(xb).float().cpu().numpy()
    return out


def embed_pixels(m, series_x1e4: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """TimeSenCLIP embeddings of pixel time series.

    Args:
        m: a loaded ``timesenclip`` model.
        series_x1e4: (N, T, 10) float32 L2A reflectance x 1e4, BOA offset removed, bands
            B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12; T in {1, 4, 12}.
        batch_size: pixels per batch (default :func:`pixel_batch_size`).

    Returns:
        (N, 512) float32, L2-normalised.
    """
    if getattr(m, "name", None) != "timesenclip":
        raise UserError("embed_pixels needs a timesenclip model")
    x = np.asarray(series_x1e4)
    if x.ndim != 3:
        raise UserError(f"embed_pixels expects (N, T, 10) series, got shape {x.shape}")
    batch = int(batch_size or pixel_batch_size(m.device))
    return _run_batches(x, batch, m.device, m.embed_dim, lambda b: m.pixel_embed(m.preprocess(b)))


def embed_chips(m, rgb: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """SenCLIP embeddings of RGB chips.

    Args:
        m: a loaded ``senclip`` model.
        rgb: (N, 3, h, w) reflectance (0-1 scale, any gain/offset) in band order B4, B3, B2.
        batch_size: chips per batch (default :func:`chip_batch_size`).

    Returns:
        (N, D) float32, L2-normalised (D = 512 for ViT-B/32, 1024 for RN50).
    """
    if getattr(m, "name", None) != "senclip":
        raise UserError("embed_chips needs a senclip model")
    x = np.asarray(rgb)
    if x.ndim != 4 or x.shape[1] != 3:
        raise UserError(f"embed_chips expects (N, 3, h, w) chips, got shape {x.shape}")
    batch = int(batch_size or chip_batch_size(m.device))
    return _run_batches(x, batch, m.device, m.embed_dim, lambda b: m.image_embed(m.preprocess(b)))
