"""``--backend auto``: the fastest inference backend that agrees with fp32 on this machine.

Which backend (:mod:`model.backends`: torch fp32, torch bf16 weights, int8 dynamic quantisation,
OpenVINO fp32 / bf16) is fastest depends on the CPU: with AVX512-BF16 or AMX the bf16 ones run
2-3x fp32, without them bf16 is emulated and 2-14x *slower* (:data:`model.engine.CPU_DTYPE_NOTE`).
So ``auto`` measures, once per machine and model:

1. **A sample that covers the legend.** A seeded pool of :data:`POOL_PIXELS` plausible series
   (:func:`fixed_sample`) is embedded in fp32 and classified with the run's classifier; the sample
   is :data:`SAMPLE_PIXELS` of them taken class by class in turn (every class the pool's fp32
   argmax reaches, so agreement cannot come from a map of one class). ``classes_covered`` records
   how many of the classifier's classes it holds.
2. **Timing, interleaved.** Every candidate embeds the sample in turn (A/B/C/A/B/C, the order
   rotated each round), timed in process CPU time at the run's batch and threads; the best of
   :data:`ROUNDS` rounds counts. A candidate under half fp32's rate in the first round (bf16
   emulated) is not timed again.
3. **The bar.** A candidate qualifies when, against fp32 on the sample, the argmax of the
   classifier agrees on at least :data:`MIN_AGREEMENT` and the mean embedding cosine is at least
   :data:`MIN_COSINE` (the minimum is recorded too). ``auto`` takes the fastest that qualifies
   and is at least :data:`MIN_SPEEDUP` times fp32, else fp32.
4. **Batch.** The chosen backend is then timed at each of :data:`CPU_BATCHES` (interleaved) and
   the fastest batch is kept.

On CUDA, ``auto`` is bf16 (the engine's measured GPU default). The decision is cached under
``S2LC_CACHE_DIR`` per CPU model and flags, model, classifier, torch and OpenVINO version and
threads, so reruns and workers on the same machine kind resolve the same way (same output hash).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pipeline.base.errors import UserError
from pipeline.base.hashing import json_digest

_log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.995
"""Smallest argmax agreement with fp32 on the fixed sample for ``auto`` to take a backend."""
MIN_COSINE = 0.999
"""Smallest mean embedding cosine to fp32 on the fixed sample for ``auto`` to take a backend."""
MIN_SPEEDUP = 1.05
"""A backend must be at least this much faster than fp32 (CPU time) for ``auto`` to take it."""
SAMPLE_PIXELS = 1024
POOL_PIXELS = 2048
SAMPLE_CHIPS = 8
ROUNDS = 2
#: CPU batches ``auto`` times for the chosen backend (pixels; chips use the engine's default).
CPU_BATCHES = (256, 1024, 2048)

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


SIMD_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4", "vnni")


def cpu_info() -> dict[str, Any]:
    """This machine's CPU: ``model`` (``/proc/cpuinfo`` model name), ``flags`` (its SIMD flags:
    AVX*, AMX*, FMA, F16C, SSE4*), ``flags_digest`` (digest of all its flags) and ``cores``."""
    import os

    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    return {
        "model": cpu,
        "flags": sorted(f for f in flags if f.startswith(SIMD_FLAG_PREFIXES)),
        "flags_digest": json_digest(sorted(flags)),
        "cores": os.cpu_count() or 1,
    }


def _machine_key(m: Any, classifier: np.ndarray, batch: int | None) -> str:
    from model.backends import openvino_version

    cpu = cpu_info()
    w = np.round(np.asarray(classifier, np.float32), 4).tobytes().hex()
    return json_digest(
        [
            getattr(m, "identity", m.name),
            cpu["model"],
            cpu["flags_digest"],
            torch.__version__,
            openvino_version(),
            torch.get_num_threads(),
            batch,
            json_digest(w),
        ]
    )


def _embed(m: Any):
    from model import engine

    return {"pixels": engine.embed_pixels, "chips": engine.embed_chips}[m.inputs]


def covering_sample(
    m: Any, classifier: np.ndarray, n: int | None = None, pool: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """A fixed sample whose fp32 classes cover every class the pool reaches.

    Args:
        m: a loaded model (its current backend is left as it was; fp32 is used here).
        classifier: (C, D) class embeddings.
        n: sample size (:data:`SAMPLE_PIXELS` pixels / :data:`SAMPLE_CHIPS` chips).
        pool: seeded candidates to draw from (:data:`POOL_PIXELS` / 4 x ``n`` chips).

    Returns:
        (x, fp32 embeddings (n, D), classes covered): x is (n, 12, 10) series or (n, 3, 64, 64)
        chips, taken from the pool class by class in turn, in pool order.
    """
    from model import engine

    pixels = m.inputs == "pixels"
    n = n or (SAMPLE_PIXELS if pixels else SAMPLE_CHIPS)
    pool = pool or (max(POOL_PIXELS, n) if pixels else 4 * n)
    xs = fixed_sample(pool) if pixels else _chips(pool)
    previous = m.__dict__.get("precision")
    try:
        engine.set_precision(m, "fp32")
        emb = _embed(m)(m, xs)
    finally:
        _restore(m, previous)
    cls = (emb @ np.asarray(classifier, np.float32).T).argmax(1)
    per_class = [list(np.flatnonzero(cls == c)) for c in np.unique(cls)]
    take: list[int] = []
    while len(take) < min(n, pool):
        for idx in per_class:
            if idx and len(take) < n:
                take.append(idx.pop(0))
    take.sort()
    return xs[take], emb[take], len(per_class)


def _restore(m: Any, previous: str | None) -> None:
    if previous is None:
        m.__dict__.pop("precision", None)
    else:
        m.precision = previous


def _agreement(ref: np.ndarray, emb: np.ndarray, w: np.ndarray) -> dict[str, float]:
    ref, emb = ref[: len(emb)], emb[: len(ref)]
    cos = (ref * emb).sum(1)
    return {
        "agreement": float(((ref @ w.T).argmax(1) == (emb @ w.T).argmax(1)).mean()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
    }


def measure(
    m: Any,
    classifier: np.ndarray,
    *,
    candidates: tuple[str, ...] | None = None,
    batch: int | None = None,
    rounds: int = ROUNDS,
    sample: int | None = None,
    timings: Mapping[str, float] | None = None,
    prepared: tuple[np.ndarray, np.ndarray, int] | None = None,
) -> dict[str, Any]:
    """Every candidate backend against fp32 on :func:`covering_sample`: rates and agreement.

    Args:
        m: a loaded model on the CPU (left on the backend it had).
        classifier: (C, D) class embeddings whose argmax is compared.
        candidates: backends to try (default :func:`model.backends.available`); fp32 always.
        batch: items per batch (default the engine's).
        rounds: interleaved timing rounds (the best counts).
        sample: sample size (default :data:`SAMPLE_PIXELS` / :data:`SAMPLE_CHIPS`).
        timings: items per CPU-second that replace the measured rate of the backends named
            (forces the measurement's outcome, e.g. a CPU without bf16); agreement is still
            measured.
        prepared: :func:`covering_sample`'s result, when the caller has it already.

    Returns:
        ``{"backends": {name: {items_per_cpu_s, speedup, agreement, cosine_mean, cosine_min,
        sample, qualifies[, error | dropped]}}, "sample", "classes", "classes_covered",
        "batch", "cpu", "timed"}``. A backend that fails to build has ``error`` and no rate.
    """
    from model import backends, engine

    w = np.asarray(classifier, np.float32)
    names = ["fp32"] + [c for c in (candidates or backends.available(m)) if c != "fp32"]
    x, ref, covered = prepared or covering_sample(m, w, sample)
    embed = _embed(m)
    previous = m.__dict__.get("precision")
    previous_batch = m.__dict__.get("cpu_batch")
    results: dict[str, dict[str, Any]] = {n: {} for n in names}
    embs: dict[str, np.ndarray] = {}
    best: dict[str, float] = {}
    try:
        for n in list(names):  # build + warm up (OpenVINO converts and compiles here)
            try:
                engine.set_precision(m, n, batch=batch)
                embed(m, x[:16])
            except Exception as exc:  # noqa: BLE001 (a backend that cannot run is not a candidate)
                results[n]["error"] = f"{type(exc).__name__}: {exc}"[:300]
                names.remove(n)
        live = list(names)
        for r in range(rounds):
            order = live[r % len(live) :] + live[: r % len(live)]
            for n in order:
                engine.set_precision(m, n, batch=batch)
                t = time.process_time()
                embs[n] = embed(m, x)
                rate = len(x) / max(time.process_time() - t, 1e-9)
                best[n] = max(best.get(n, 0.0), rate)
            if r == 0:  # emulated bf16 and the like: not worth a second look
                slow = [n for n in live if n != "fp32" and best[n] < 0.5 * best["fp32"]]
                for n in slow:
                    results[n]["dropped"] = "under half fp32's rate in round 1"
                live = [n for n in live if n not in slow]
    finally:
        _restore(m, previous)
        if previous_batch is None:
            m.__dict__.pop("cpu_batch", None)
        else:
            m.cpu_batch = previous_batch
    rates = {**best, **{k: float(v) for k, v in (timings or {}).items() if k in best}}
    for n in best:
        agree = _agreement(ref, embs[n], w)
        results[n].update(
            items_per_cpu_s=rates[n],
            speedup=rates[n] / rates["fp32"],
            sample=len(embs[n]),
            **agree,
        )
        results[n]["qualifies"] = bool(
            agree["agreement"] >= MIN_AGREEMENT and agree["cosine_mean"] >= MIN_COSINE
        )
    return {
        "backends": results,
        "sample": len(x),
        "classes": int(w.shape[0]),
        "classes_covered": covered,
        "batch": batch
        or (engine.CPU_PIXEL_BATCH if m.inputs == "pixels" else engine.CPU_CHIP_BATCH),
        "threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "timed": f"process CPU time, best of {rounds} interleaved rounds",
        "injected_timings": dict(timings) if timings else None,
    }


def choose(meas: Mapping[str, Any]) -> tuple[str, str]:
    """(backend, reason): the fastest qualifying backend of :func:`measure`'s result, else fp32."""
    res = meas["backends"]
    ok = [
        n
        for n, r in res.items()
        if "items_per_cpu_s" in r
        and (n == "fp32" or (r["qualifies"] and r["speedup"] >= MIN_SPEEDUP))
    ]
    pick = max(ok, key=lambda n: res[n]["items_per_cpu_s"])
    r = res[pick]
    parts = [
        f"{n} {res[n]['speedup']:.2f}x ({100 * res[n]['agreement']:.2f} %)"
        for n in res
        if "items_per_cpu_s" in res[n]
    ]
    reason = (
        f"{pick}: {r['speedup']:.2f}x fp32 per CPU-second, argmax agreement "
        f"{100 * r['agreement']:.2f} % (bar: >= {100 * MIN_AGREEMENT:.1f} % and mean cosine >= "
        f"{MIN_COSINE}, >= {MIN_SPEEDUP}x); measured: " + ", ".join(parts)
    )
    return pick, reason


def measure_batch(
    m: Any, backend: str, x: np.ndarray, batches: tuple[int, ...] = CPU_BATCHES, rounds: int = 2
) -> dict[int, float]:
    """Items per CPU-second of ``backend`` at each batch on ``x`` (interleaved, best of rounds)."""
    from model import engine

    embed, rates = _embed(m), {}
    previous = m.__dict__.get("precision")
    try:
        engine.set_precision(m, backend)
        for _ in range(rounds):
            for b in batches:
                t = time.process_time()
                embed(m, x, batch_size=b)
                rate = len(x) / max(time.process_time() - t, 1e-9)
                rates[b] = max(rates.get(b, 0.0), rate)
    finally:
        _restore(m, previous)
    return rates


def resolve(
    m: Any,
    requested: str,
    classifier: np.ndarray,
    *,
    use_cache: bool = True,
    batch: int | None = None,
    timings: Mapping[str, float] | None = None,
    sample: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """The backend a run uses and why (``--backend``, alias ``--precision``).

    Args:
        m: the loaded model (its device decides whether this is a CPU question).
        requested: ``"auto"`` or a backend (:data:`model.backends.BACKENDS`).
        classifier: (C, D) class embeddings whose argmax is compared.
        use_cache: reuse this machine's earlier ``auto`` decision for the same model.
        batch: a fixed CPU batch (None: ``auto`` measures :data:`CPU_BATCHES` for pixels).
        timings: forced rates per backend (see :func:`measure`); never cached.
        sample: sample size (default :data:`SAMPLE_PIXELS`; its pool is 4x as large).

    Returns:
        (backend, details for run.json: ``requested``, ``resolved``, ``batch``, ``reason`` and
        the measurement).

    Raises:
        UserError: for an unknown ``requested``.
    """
    from model.engine import PRECISIONS

    if requested not in PRECISIONS:
        raise UserError(f"--backend {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, {"requested": requested, "resolved": requested, "batch": batch}
    if m.device.type == "cuda":
        return "bf16", {"requested": "auto", "resolved": "bf16", "reason": "CUDA", "batch": None}
    from pipeline.base.paths import cache_dir

    path = cache_dir("precision") / f"{_machine_key(m, classifier, batch)}-{sample or ''}.json"
    if use_cache and timings is None and path.exists():
        info = json.loads(path.read_text())
        info["cached"] = str(path)
        return info["resolved"], info
    prepared = covering_sample(m, classifier, sample, 4 * sample if sample else None)
    meas = measure(m, classifier, batch=batch, timings=timings, prepared=prepared)
    pick, reason = choose(meas)
    info = {"requested": "auto", "resolved": pick, "reason": reason, **meas}
    if batch is None and m.inputs == "pixels" and timings is None:
        x = prepared[0][:512]
        rates = measure_batch(m, pick, x)
        info["batch_rates"] = {str(b): r for b, r in rates.items()}
        info["batch"] = max(rates, key=rates.get)
    _log.info("--backend auto -> %s (batch %s): %s", pick, info["batch"], reason)
    if timings is None:
        from pipeline.base.jsonio import write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, info)
    return pick, info
