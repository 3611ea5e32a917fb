"""Batched inference: numpy in, numpy out; device, dtype and batch size chosen here.

- Everything runs under ``torch.inference_mode``, one model instance per process
  (:func:`model.get_model`).
- CUDA: bf16 (fp16 where bf16 is unsupported). SenCLIP runs under bf16 autocast. TimeSenCLIP runs
  a bf16-weight copy of its encoder, so PyTorch's fused transformer-encoder kernel applies
  (autocast disables it; see :func:`_fast_encoder` for the measurement). Batches of 131,072
  pixels or 512 chips, reduced on GPUs with less free memory (:func:`pixel_batch_size`).
  Host-to-device copies go through reusable pinned buffers (``non_blocking=True``), results come
  back through a pinned buffer, and preprocessing (normalisation, min-max stretch, resize) runs on
  the GPU. :func:`pixel_probabilities` / :func:`chip_probabilities` also apply the text classifier
  on the GPU, so only (N, C) probabilities cross the bus.
- CPU: the model's backend (:func:`set_precision`, from ``run --backend auto|fp32|bf16|int8|
  openvino-fp32|openvino-bf16``, alias ``--precision``; ``auto`` is decided per machine by
  :mod:`model.precision`, the backends are :mod:`model.backends`). Whether bf16 pays off depends
  on the CPU: on a 2-core Xeon without AVX512-BF16 it was 2-4x *slower* (:data:`CPU_DTYPE_NOTE`),
  on AVX-512 with bf16 (AMD EPYC, 2026-12-07) OpenVINO bf16 ran 3.5x and torch bf16 1.5x fp32
  per CPU-second. Without a backend set, ``S2LC_CPU_DTYPE=bfloat16`` still opts in to torch
  bf16. CPU batches are the model's measured ``cpu_batch`` (``set_precision(..., batch=)``),
  else :data:`CPU_PIXEL_BATCH` pixels (cache-sized; fp32 results are bit-identical across batch
  sizes).

Measured on one H100 (torch 2.11, untrained weights, 524,288 pixels / 4,096 64-px chips, numpy
in and out, 2026-11-22): ``embed_pixels`` 394k px/s (T = 12), 500k (T = 4), 620k (T = 1);
``pixel_probabilities`` 596k px/s; ``embed_chips`` 13-15k chips/s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from model.backends import BACKENDS
from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

#: Measured on the development machine (2 CPU cores, torch 2.13 CPU), see ``bench``.
CPU_DTYPE_NOTE = (
    "Measured 2026-11-22, 2-core Xeon VM (AVX-512F, no AVX512-BF16/AMX), torch 2.13 CPU, "
    "interleaved runs on a shared machine: TimeSenCLIP 4,096 px (batch 2,048) fp32 143-269 px/s "
    "vs bf16 autocast 55-136 px/s; SenCLIP ViT-B/32 16 chips fp32 2.8-5.0 chips/s vs bf16 "
    "0.7-1.3 chips/s. bf16 embeddings differed by <= 1.6e-3 (cosine >= 0.99996). So fp32."
)

GPU_PIXEL_BATCH = 131_072
#: Peak GPU memory per item of a batch, measured on an H100 (bf16, see _fast_encoder), rounded up.
GPU_BYTES_PER_PIXEL = 128 * 1024  # measured 116 KB (TimeSenCLIP, T = 12)
GPU_BYTES_PER_CHIP = 5 * 512 * 1024  # measured 1.9 MB (ViT-B/32, 224 px)
#: 256 x 13 tokens x 512 wide activations stay in L2; measured 2026-11-29 on the 2-core AVX-512
#: machine (fp32, 1 thread): 1.33x the px/s of 2,048 and bit-identical (tests/model/test_precision.py).
#: On a 2-core AMD EPYC without AVX-512 under heavy load the same day: 0.73x (bench entry
#: ``timesenclip_cpu_batch_px_per_core_s``, since replaced): ``--backend auto`` now measures the
#: batch per machine (2026-12-07, AVX-512 bf16 EPYC, OpenVINO bf16: 692 / 706 / 708 px per
#: CPU-second at 256 / 1,024 / 2,048, within noise). This is the default without a measurement.
CPU_PIXEL_BATCH = 256
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


PRECISIONS = ("auto", *BACKENDS)
"""Values of ``run --backend`` (alias ``--precision``; ``auto`` is resolved by
:func:`model.precision.resolve`). See :mod:`model.backends`."""


def inference_dtype(device: torch.device | str, precision: str | None = None) -> torch.dtype:
    """The autocast dtype used on ``device`` (float32 means no autocast).

    Args:
        device: the model's device.
        precision: a backend (:data:`model.backends.BACKENDS`): ``"bf16"`` is bf16 (fp16 on
            GPUs without bf16); the others compute in their own precision without autocast
            (float32 here). None: the default (bf16 on CUDA, ``S2LC_CPU_DTYPE`` or float32 on
            CPU).

    Raises:
        UserError: ``precision`` is not a backend (``auto`` must be resolved first).
    """
    dev = torch.device(device)
    if precision is not None and precision not in BACKENDS:
        raise UserError(
            f"backend {precision!r}: use one of {', '.join(BACKENDS)} (auto is resolved first)"
        )
    if precision is not None and precision != "bf16":
        return torch.float32
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return _dtype_from_env() or torch.float32


def set_precision(m, precision: str, batch: int | None = None) -> None:
    """Run ``m``'s inference on backend ``precision`` from now on (:mod:`model.backends`).

    Args:
        m: a loaded model.
        precision: a backend available for ``m`` (``fp32``, ``bf16``, ``int8``,
            ``openvino-fp32``, ``openvino-bf16``; chip models: ``fp32``, ``bf16``).
        batch: CPU items per batch (None: keep the model's, else :data:`CPU_PIXEL_BATCH` /
            :data:`CPU_CHIP_BATCH`).

    Raises:
        UserError: unknown backend, or one this model or device cannot run.
    """
    from model.backends import available

    inference_dtype(m.device, precision)  # validates the name
    if m.device.type == "cpu" and precision not in available(m):
        raise UserError(
            f"backend {precision!r} is not available for {m.name} on {m.device} "
            f"(available: {', '.join(available(m))})"
        )
    m.precision = precision
    if batch is not None:
        m.cpu_batch = int(batch)


set_backend = set_precision
"""Alias: the precision of a model is now its backend."""


def model_dtype(m) -> torch.dtype:
    """The autocast dtype of model ``m`` (its :func:`set_precision`, else the device default)."""
    return inference_dtype(m.device, getattr(m, "precision", None))


def _fit_to_memory(device: torch.device, target: int, bytes_per_item: int, floor: int) -> int:
    """``target``, reduced so one batch's peak stays under half the free GPU memory."""
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):  # pragma: no cover - no usable CUDA context
        return target
    fit = int(0.5 * free // bytes_per_item)
    return max(floor, min(target, fit // 1024 * 1024 if fit >= 1024 else fit))


def pixel_batch_size(device: torch.device | str) -> int:
    """Pixels per TimeSenCLIP batch: 131,072 on a GPU with room for it (fewer on small GPUs)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return CPU_PIXEL_BATCH
    return _fit_to_memory(dev, GPU_PIXEL_BATCH, GPU_BYTES_PER_PIXEL, 4096)


def chip_batch_size(device: torch.device | str) -> int:
    """Chips per SenCLIP batch: 512 on a GPU with room for it (fewer on small GPUs)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return CPU_CHIP_BATCH
    return _fit_to_memory(dev, GPU_CHIP_BATCH, GPU_BYTES_PER_CHIP, 16)


def _autocast(device: torch.device, dtype: torch.dtype):
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
            self.events: list[torch.cuda.Event | None] = [None, None]
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
    out_dim: int,
    fn: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """``fn`` over batches of ``x`` -> (N, out_dim) float32 numpy (pinned D2H on CUDA)."""
    n = x.shape[0]
    out = np.empty((n, out_dim), dtype=np.float32)
    if n == 0:
        return out
    b = min(batch, n)
    stage = _Stager(device, (b, *x.shape[1:]))
    pinned_out = (
        torch.empty((b, out_dim), dtype=torch.float32).pin_memory()
        if device.type == "cuda"
        else None
    )
    ctx = _autocast(device, dtype)
    with torch.inference_mode(), ctx:
        for i in range(0, n, b):
            xb = stage(x[i : i + b])
            y = fn(xb).float()
            k = y.shape[0]
            if pinned_out is None:
                out[i : i + k] = y.numpy()
            else:
                pinned_out[:k].copy_(y, non_blocking=True)
                torch.cuda.current_stream(device).synchronize()
                out[i : i + k] = pinned_out[:k].numpy()
    return out


def _fast_encoder(m) -> tuple[torch.nn.Module, torch.dtype]:
    """The TimeSenCLIP encoder as run on ``m.device`` (cached on the model object).

    On CUDA, a copy with bf16 *weights*: PyTorch's fused transformer-encoder kernel then applies
    (autocast turns it off). Measured on an H100 (untrained weights, 131,072-pixel batches,
    torch 2.11): 635k px/s vs 378k with bf16 autocast and 156k in fp32; embeddings within
    cosine 0.99996 of fp32 (autocast: 0.99998). The same bf16 copy on CPU when the model's
    precision is bf16 (3.2-4.4x fp32 on AVX-512 with bf16). Otherwise the fp32 encoder itself.
    """
    dtype = model_dtype(m)
    if dtype == torch.float32:
        return m.encoder, torch.float32
    cached = getattr(m, "_engine_encoder", None)
    if cached is None or cached[1] != dtype:
        import copy

        enc = copy.deepcopy(m.encoder).to(device=m.device, dtype=dtype).eval()
        cached = (enc, dtype)
        m._engine_encoder = cached
    return cached


def _pixel_fn(m) -> Callable[[torch.Tensor], torch.Tensor]:
    """batch -> L2-normalised embeddings (the model's backend on CPU; no autocast)."""
    backend = getattr(m, "precision", None)
    if m.device.type == "cpu" and backend not in (None, "fp32", "bf16"):
        from model.backends import encoder_fn

        def run(b: torch.Tensor) -> torch.Tensor:
            x = m.preprocess(b)
            return F.normalize(encoder_fn(m, backend, x.shape[1])(x).float(), dim=-1)

        return run
    enc, dtype = _fast_encoder(m)
    if dtype == torch.float32:
        return lambda b: m.pixel_embed(m.preprocess(b))

    def fn(b: torch.Tensor) -> torch.Tensor:
        x = m.preprocess(b).to(dtype)
        return F.normalize(enc.inference(x).float(), dim=-1)

    return fn


def _cpu_batch(m) -> int | None:
    """The model's measured CPU batch (``set_precision(..., batch=)``), on CPU only."""
    return getattr(m, "cpu_batch", None) if m.device.type == "cpu" else None


def _check_pixels(m, series_x1e4) -> np.ndarray:
    if getattr(m, "inputs", None) != "pixels":
        raise UserError("embed_pixels needs a timesenclip model")
    x = np.asarray(series_x1e4)
    if x.ndim != 3:
        raise UserError(f"embed_pixels expects (N, T, 10) series, got shape {x.shape}")
    return x


def _check_chips(m, rgb) -> np.ndarray:
    if getattr(m, "inputs", None) != "chips":
        raise UserError("embed_chips needs a senclip model")
    x = np.asarray(rgb)
    if x.ndim != 4 or x.shape[1] != 3:
        raise UserError(f"embed_chips expects (N, 3, h, w) chips, got shape {x.shape}")
    return x


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
    x = _check_pixels(m, series_x1e4)
    batch = int(batch_size or _cpu_batch(m) or pixel_batch_size(m.device))
    return _run_batches(x, batch, m.device, m.embed_dim, _pixel_fn(m))


def embed_chips(m, rgb: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """SenCLIP embeddings of RGB chips.

    Args:
        m: a loaded ``senclip`` model.
        rgb: (N, 3, h, w) reflectance (0-1 scale, any gain/offset) in band order B4, B3, B2.
        batch_size: chips per batch (default :func:`chip_batch_size`).

    Returns:
        (N, D) float32, L2-normalised (D = 512 for ViT-B/32, 1024 for RN50).
    """
    x = _check_chips(m, rgb)
    batch = int(batch_size or _cpu_batch(m) or chip_batch_size(m.device))
    fn = lambda b: m.image_embed(m.preprocess(b))  # noqa: E731
    return _run_batches(x, batch, m.device, m.embed_dim, fn, model_dtype(m))


def _probability_fn(embed, w, calibration, mode, logit_scale, device):
    from model.zeroshot import calibrated_cosine

    wt = F.normalize(torch.as_tensor(w).float().to(device), dim=-1).T

    def fn(b: torch.Tensor) -> torch.Tensor:
        cos = embed(b).float() @ wt
        return torch.softmax(logit_scale * calibrated_cosine(cos, calibration, mode), dim=-1)

    return fn


def pixel_probabilities(
    m,
    series_x1e4: np.ndarray,
    w,
    calibration=None,
    *,
    mode: str = "shifted",
    logit_scale: float = 100.0,
    batch_size: int | None = None,
) -> np.ndarray:
    """(N, C) zero-shot class probabilities of pixel series, computed on the device.

    Same numbers as ``zeroshot.probabilities(embed_pixels(m, x), w, calibration)`` but only the
    (N, C) probabilities leave the GPU, not (N, 512) embeddings.
    """
    x = _check_pixels(m, series_x1e4)
    batch = int(batch_size or _cpu_batch(m) or pixel_batch_size(m.device))
    fn = _probability_fn(_pixel_fn(m), w, calibration, mode, logit_scale, m.device)
    return _run_batches(x, batch, m.device, int(torch.as_tensor(w).shape[0]), fn)


def chip_probabilities(
    m,
    rgb: np.ndarray,
    w,
    calibration=None,
    *,
    mode: str = "shifted",
    logit_scale: float = 100.0,
    batch_size: int | None = None,
) -> np.ndarray:
    """(N, C) zero-shot class probabilities of RGB chips (see :func:`pixel_probabilities`)."""
    x = _check_chips(m, rgb)
    batch = int(batch_size or _cpu_batch(m) or chip_batch_size(m.device))
    embed = lambda b: m.image_embed(m.preprocess(b))  # noqa: E731
    fn = _probability_fn(embed, w, calibration, mode, logit_scale, m.device)
    n_classes = int(torch.as_tensor(w).shape[0])
    return _run_batches(x, batch, m.device, n_classes, fn, model_dtype(m))
