"""Inference backends of the TimeSenCLIP pixel encoder: the same function, computed differently.

A backend turns normalised series (N, T, bands) float32 (T in {1, 4, 12}) into unnormalised
(N, dim) float32 embeddings, exactly what ``TimeSenCLIPEncoder.inference`` returns in fp32:

- ``fp32``: the eager PyTorch module (the reference).
- ``bf16``: a copy of the module with bf16 *weights* (PyTorch's fused transformer-encoder
  kernel then applies; autocast would disable it).
- ``int8``: ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` (int8 weights,
  activations quantised per batch). The attention's packed input projection
  (``in_proj_weight``) and ``out_proj`` (a ``NonDynamicallyQuantizableLinear``) stay fp32,
  as PyTorch's dynamic quantisation leaves them.
- ``openvino-fp32`` / ``openvino-bf16``: the module converted with ``openvino.convert_model``
  (one model per T, dynamic batch) and compiled for the CPU with
  ``INFERENCE_PRECISION_HINT`` f32 or bf16 (OpenVINO 2026.4; OpenVINO uses bf16 only where the
  CPU has AVX512-BF16 or AMX, else it computes in f32).

Which one a run uses on a CPU is measured per machine (:mod:`model.precision`): the fastest that
agrees with ``fp32`` (embedding cosine and argmax). SenCLIP (chips) knows ``fp32`` and ``bf16``
(autocast) only. On CUDA the engine keeps its bf16 path (:mod:`model.engine`).

Each built backend is cached on the model object per (backend, T, threads); building the
OpenVINO one costs a few seconds (conversion + compilation) once per process.
"""

from __future__ import annotations

import copy
import logging
import sys
import warnings
from collections.abc import Callable

import torch
from torch import nn

from model.backend_names import BACKENDS
from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

#: Backends of a chip model (SenCLIP): fp32 and bf16 autocast.
CHIP_BACKENDS = ("fp32", "bf16")

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""(N, T, bands) normalised float32 -> (N, dim) float32 unnormalised embeddings."""


def openvino_version() -> str | None:
    """The installed OpenVINO's version, or None when it cannot be imported."""
    try:
        ov = _import_openvino()
    except Exception:  # noqa: BLE001 (missing or broken install: the backend is unavailable)
        return None
    return str(ov.__version__)


def available(m) -> tuple[str, ...]:
    """Backends model ``m`` can run on its device (OpenVINO: CPU only, when installed)."""
    if getattr(m, "inputs", None) == "chips" or m.device.type != "cpu":
        return CHIP_BACKENDS
    names = ["fp32", "bf16", "int8"]
    if openvino_version() is not None:
        names += ["openvino-fp32", "openvino-bf16"]
    return tuple(names)


def check(name: str) -> str:
    """``name`` if it is a backend, else UserError listing them."""
    if name not in BACKENDS:
        raise UserError(f"backend {name!r}: choose one of auto, {', '.join(BACKENDS)}")
    return name


class _Inference(nn.Module):
    """``encoder.inference`` for T = ``t`` as ``forward`` (what conversion sees).

    The position embeddings for ``t`` are computed once here (T = 4 takes a median, which
    OpenVINO's PyTorch frontend does not convert; they do not depend on the input).
    """

    def __init__(self, encoder: nn.Module, t: int) -> None:
        super().__init__()
        self.encoder = encoder
        with torch.no_grad():
            self.register_buffer("pos", encoder.positions(t).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(self.encoder.spectral_embedding(x), self.pos)


def _bf16(encoder: nn.Module) -> Encoder:
    enc = copy.deepcopy(encoder).to(dtype=torch.bfloat16).eval()
    return lambda x: enc.inference(x.to(torch.bfloat16)).float()


def _no_op(module: nn.Module, args: tuple) -> None:
    return None


def _int8(encoder: nn.Module) -> Encoder:
    from torch.ao.quantization import quantize_dynamic  # noqa: PLC0415

    with warnings.catch_warnings():
        # torch 2.13 deprecates the quantised tensor types that ``quantize_dynamic`` still builds
        # (pytorch#184982); the backend works as measured, and the notice repeats on every
        # measurement of ``--backend auto``.
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        enc = quantize_dynamic(copy.deepcopy(encoder).eval(), {nn.Linear}, dtype=torch.qint8)
    # PyTorch's fused encoder-layer kernel wants float weights (a quantised Linear's ``weight`` is
    # a method): a no-op hook makes the layers take their plain path.
    for layer in enc.transformer.layers:
        layer.register_forward_pre_hook(_no_op)
    return lambda x: enc.inference(x).float()


def _import_openvino():  # noqa: ANN202 (the optional openvino module)
    """``import openvino`` with OpenVINO's usage telemetry off: s2lc sends nothing.

    Importing ``openvino`` imports its model converter (``openvino.tools.ovc``), which posts an
    "import" event, and every ``convert_model`` posts more, to Google Analytics
    (``openvino_telemetry``, backend ``ga4``), creating a client id under ``$HOME/intel``. With no
    consent file in ``$HOME`` it treats consent as given (``enable_opt_in_dialog=False``). A
    mapping run is offline once the weights are cached, and measuring the CPU backends must not
    reach the internet. OpenVINO uses its own stub (``openvino.tools.ovc.telemetry_stub``) when
    ``openvino_telemetry`` cannot be imported; blocking that import in ``sys.modules`` (Python's
    documented way: a ``None`` entry) gives the stub for this process, without touching the
    user's consent file.
    """
    if "openvino.tools.ovc" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
        sys.modules.setdefault("openvino_telemetry.backend", None)  # type: ignore[arg-type]
    import openvino  # noqa: PLC0415 (optional runtime)

    return openvino


def _openvino(encoder: nn.Module, t: int, bands: int, precision: str, threads: int) -> Encoder:
    """``encoder`` for T = ``t`` compiled by OpenVINO for the CPU (dynamic batch)."""
    import numpy as np  # noqa: PLC0415

    ov = _import_openvino()

    example = torch.zeros(4, t, bands)
    with torch.no_grad():
        ov_model = ov.convert_model(_Inference(encoder, t).eval(), example_input=example)
    ov_model.reshape({ov_model.inputs[0]: ov.PartialShape([-1, t, bands])})
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": int(threads),
        "PERFORMANCE_HINT": "LATENCY",
        # OpenVINO pins its inference threads to cores, counted from the first in every process:
        # the workers of a node, each with its own OpenVINO, then all run on the same cores.
        # Measured (2-core AMD EPYC, 2026-12-08): two processes inferring at once with one thread
        # each got 0.50 of a core each pinned, 1.00 unpinned (2.0x the inferences per second).
        "ENABLE_CPU_PINNING": False,
    }
    compiled = ov.Core().compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        res = request.infer([np.ascontiguousarray(x.detach().numpy(), np.float32)])
        return torch.from_numpy(np.array(res[0], np.float32, copy=True))

    run.compiled = compiled  # type: ignore[attr-defined]  # its settings, for tests
    return run


def encoder_fn(m, name: str, t: int) -> Encoder:
    """Model ``m``'s pixel encoder for T = ``t`` on backend ``name`` (built once, cached on ``m``).

    Args:
        m: a loaded TimeSenCLIP (``m.encoder``, ``m.device``).
        name: one of :func:`available` (m).
        t: time steps of the batches it will get (the OpenVINO models are shape-specialised).

    Returns:
        normalised (N, t, bands) float32 -> (N, dim) float32, unnormalised.

    Raises:
        UserError: ``name`` is not a backend, or not available here (OpenVINO missing, GPU).
    """
    check(name)
    if name not in available(m):
        raise UserError(
            f"backend {name!r} is not available for {m.name} on {m.device} "
            f"(available: {', '.join(available(m))})"
        )
    enc = m.encoder
    if name == "fp32":
        return lambda x: enc.inference(x)
    threads = torch.get_num_threads()
    key = (name, t if name.startswith("openvino") else None, threads)
    cache = m.__dict__.setdefault("_backend_cache", {})
    fn = cache.get(key)
    if fn is None:
        if name == "bf16":
            fn = _bf16(enc)
        elif name == "int8":
            fn = _int8(enc)
        else:
            fn = _openvino(enc, t, enc.bands, name.split("-", 1)[1], threads)
        _log.debug("built backend %s (T=%s, %d threads) for %s", name, t, threads, m.name)
        cache[key] = fn
    return fn
