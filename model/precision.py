"""``--precision auto``: bf16 where this CPU runs it faster and it agrees with fp32, else fp32.

Whether bf16 pays off on a CPU depends on the CPU (AVX512-BF16/AMX: 3.2-4.4x faster; without:
2-4x slower, see :data:`model.engine.CPU_DTYPE_NOTE`), so ``auto`` measures it: the model embeds
a fixed, seeded sample (:func:`fixed_sample`) in fp32 and in bf16, timed in process CPU time
(other processes on the machine do not skew it), and the argmax of the run's classifier over
the two embeddings is compared. bf16 is chosen when it is at least :data:`MIN_SPEEDUP` times as
fast and agrees on at least :data:`MIN_AGREEMENT` of the sample. On CUDA, ``auto`` is bf16 (the
engine's measured GPU default). The decision is cached per (model, CPU, torch, threads) under
``S2LC_CACHE_DIR`` so reruns on the same machine resolve the same way (same output hash).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from typing import Any

import numpy as np
import torch

from pipeline.base.errors import UserError
from pipeline.base.hashing import json_digest

_log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
"""Smallest argmax agreement of bf16 with fp32 on the fixed sample for ``auto`` to take bf16."""
MIN_SPEEDUP = 1.1
"""bf16 must be at least this much faster (CPU time) for ``auto`` to take it."""
SAMPLE_PIXELS = 512
SAMPLE_CHIPS = 8

# Endmember spectra (reflectance x 1e4, bands B2 B3 B4 B5 B6 B7 B8 B8A B11 B12), rounded from
# typical Sentinel-2 L2A values (pipeline.testing.demo.spectra's classes): vegetation, soil, water, urban.
_ENDMEMBERS = np.array(
    [
        [300, 600, 350, 1000, 2600, 3100, 3300, 3400, 2000, 1000],
        [1100, 1400, 1700, 1900, 2100, 2250, 2400, 2500, 3000, 2600],
        [500, 450, 300, 250, 180, 150, 130, 110, 60, 40],
        [900, 1000, 1100, 1200, 1300, 1350, 1400, 1450, 1700, 1500],
    ],
    np.float32,
)


def fixed_sample(n: int = SAMPLE_PIXELS, t: int = 12, seed: int = 0) -> np.ndarray:
    """(n, t, 10) plausible reflectance x 1e4 series: seeded endmember mixtures with seasons."""
    rng = np.random.default_rng(seed)
    frac = rng.dirichlet(np.full(len(_ENDMEMBERS), 0.5), n).astype(np.float32)  # (n, E)
    season = 0.5 + 0.5 * np.sin(np.linspace(0, 2 * np.pi, t, endpoint=False) - np.pi / 2)
    green = rng.uniform(0.3, 1.0, (n, 1)).astype(np.float32) * season[None].astype(np.float32)
    veg = frac[:, :1, None] * green[:, :, None] * _ENDMEMBERS[0]  # (n, t, 10)
    soil = (frac[:, :1, None] * (1 - green[:, :, None])) * _ENDMEMBERS[1]
    rest = (frac[:, 1:, None, None] * _ENDMEMBERS[1:, None, :][None]).sum(1)  # (n, 1, 10)
    x = veg + soil + rest + rng.normal(0, 60, (n, t, 10)).astype(np.float32)
    return np.clip(x, 1, 10000).astype(np.float32)


def _chips(n: int = SAMPLE_CHIPS, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    px = fixed_sample(n * 4, 1, seed)[:, 0, [2, 1, 0]] / 1e4  # B4 B3 B2
    blocks = px.reshape(n, 4, 3).transpose(0, 2, 1).reshape(n, 3, 2, 2)
    chips = np.kron(blocks, np.ones((1, 1, size // 2, size // 2), np.float32))
    return (chips + rng.normal(0, 0.01, chips.shape)).astype(np.float32)


def _machine_key(m: Any) -> str:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = " ".join(
                        f for f in line.split(":", 1)[1].split() if "bf16" in f or "amx" in f
                    )
                    break
    except OSError:
        pass
    return json_digest(
        [getattr(m, "identity", m.name), cpu, flags, torch.__version__, torch.get_num_threads()]
    )


def measure(m: Any, classifier: np.ndarray) -> dict[str, Any]:
    """fp32 vs bf16 on the fixed sample: CPU-time rates, argmax agreement, worst cosine.

    When bf16 is under half fp32's speed on the first quarter of the sample (CPUs without bf16
    instructions emulate it), the rest is not run: ``auto`` cannot pick it, and the agreement is
    over that quarter (``sample`` says how many items).
    """
    from model import engine

    previous = getattr(m, "precision", None)
    out: dict[str, Any] = {}
    emb = {}
    # the fixed sample and the engine call of the model's input kind (``m.inputs``)
    make_sample, embed = {
        "pixels": (fixed_sample, engine.embed_pixels),
        "chips": (_chips, engine.embed_chips),
    }[m.inputs]
    x = make_sample()

    def run(xs: np.ndarray) -> np.ndarray:
        return embed(m, xs)

    try:
        for p in ("fp32", "bf16"):
            engine.set_precision(m, p)
            run(x[:16])  # warm-up (the bf16 copy of the weights is made here)
            parts, n, cpu = [], 0, 0.0
            for chunk in np.array_split(x, 4):
                t = time.process_time()
                parts.append(run(chunk))
                cpu += time.process_time() - t
                n += len(chunk)
                rate = n / max(cpu, 1e-9)
                if p == "bf16" and rate < 0.5 * out["fp32_items_per_cpu_s"]:
                    break
            emb[p] = np.concatenate(parts)
            out[f"{p}_items_per_cpu_s"] = rate
    finally:
        if previous is None:
            m.__dict__.pop("precision", None)
        else:
            m.precision = previous
    w = np.asarray(classifier, np.float32)
    emb["fp32"] = emb["fp32"][: len(emb["bf16"])]
    a, b = emb["fp32"] @ w.T, emb["bf16"] @ w.T
    out["agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
    out["cosine_min"] = float((emb["fp32"] * emb["bf16"]).sum(1).min())
    out["speedup"] = out["bf16_items_per_cpu_s"] / out["fp32_items_per_cpu_s"]
    out["sample"] = len(emb["fp32"])
    return out


def resolve(
    m: Any, requested: str, classifier: np.ndarray, *, use_cache: bool = True
) -> tuple[str, dict[str, Any]]:
    """The precision a run uses (``"fp32"`` or ``"bf16"``) and why.

    Args:
        m: the loaded model (its device decides whether this is a CPU question).
        requested: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        classifier: (C, D) class embeddings whose argmax is compared.
        use_cache: reuse this machine's earlier ``auto`` decision for the same model.

    Returns:
        (precision, details for run.json).

    Raises:
        UserError: for an unknown ``requested``.
    """
    from model.engine import PRECISIONS

    if requested not in PRECISIONS:
        raise UserError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, {"requested": requested, "resolved": requested}
    if m.device.type == "cuda":
        return "bf16", {"requested": "auto", "resolved": "bf16", "reason": "CUDA"}
    from pipeline.base.paths import cache_dir

    path = cache_dir("precision") / f"{_machine_key(m)}.json"
    if use_cache and path.exists():
        info = json.loads(path.read_text())
        info["cached"] = str(path)
        return info["resolved"], info
    meas = measure(m, classifier)
    ok = meas["speedup"] >= MIN_SPEEDUP and meas["agreement"] >= MIN_AGREEMENT
    info = {
        "requested": "auto",
        "resolved": "bf16" if ok else "fp32",
        "reason": (
            f"bf16 runs {meas['speedup']:.2f}x as fast as fp32 per CPU-second, argmax "
            f"agreement {100 * meas['agreement']:.2f} % (needs >= {MIN_SPEEDUP}x as fast and "
            f">= {100 * MIN_AGREEMENT:.0f} %)"
        ),
        **meas,
    }
    _log.info("--precision auto -> %s: %s", info["resolved"], info["reason"])
    from pipeline.base.jsonio import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, info)
    return info["resolved"], info
