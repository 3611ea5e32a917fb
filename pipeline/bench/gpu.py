"""GPU inference variants measured side by side in one run (issue 18), on the device machine.

``python -m pipeline.bench.gpu --out DIR`` writes ``DIR/gpu_results.json``: the engine's own
TimeSenCLIP and SenCLIP rates (:mod:`pipeline.bench.models`, the figures ``make bench``
records on a GPU), and, on the same data in the same process, TimeSenCLIP through
:func:`model.fused.pixel_embedder` (bf16 weights; eager, ``torch.compile``, and
``torch.compile`` with CUDA graphs) and SenCLIP's image tower with bf16 weights, channels-last
and ``torch.compile``. Each variant reports pixels (chips) per second on device-resident batches
of a fixed size, the fraction of the bf16 peak, and its agreement with the fp32 reference on a
fixed sample: embedding cosine (min, mean) and argmax agreement of zero-shot classes
(the ``lucas-lc8`` legend, untrained text tower).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

import model
from model.fused import pixel_embedder
from model.zeroshot import build_classifier
from pipeline.base import hardware
from pipeline.bench.models import (
    BF16_PEAK,
    TIMESENCLIP_FLOP_PER_PX,
    _chips,
    _prompts,
    _series,
    senclip_entries,
    timesenclip_entries,
)
from pipeline.bench.results import Entry

#: ViT-B/32 image tower at 224 px: ~4.4 GFLOP per chip (2 x 2.2 GMAC).
SENCLIP_FLOP_PER_CHIP = 4.4e9


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rate(fn: Callable[[], object], items: int, repeats: int = 5) -> float:
    """Best items/s over ``repeats`` timed calls after two warm-ups (CUDA synchronised)."""
    for _ in range(2):
        fn()
    _sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t)
    return items / best


def _gpu_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor()


def _measure(
    kind: str,
    label: str,
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    ref: torch.Tensor,
    w: torch.Tensor,
    flop_per_item: float,
    device: str,
) -> Entry:
    """One variant: first-call (compile) seconds, items/s on ``x``, agreement on ``len(ref)``."""
    unit = "pixels/s" if kind == "timesenclip" else "chips/s"
    name = f"{kind}_gpu_variant:{label}"
    t = time.perf_counter()
    try:
        with torch.inference_mode():
            fn(x)
            _sync()
            first = time.perf_counter() - t
            got = fn(x)[: len(ref)].clone()
            rate = _rate(lambda: fn(x), len(x))
    except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
        return Entry(name, 0.0, unit, device=device, notes={"error": f"{exc!r}"[:500]})
    gpu = _gpu_name(device)
    notes = {"variant": label, "first_call_s": round(first, 2), **_agreement(ref, got, w)}
    peak = next((v for k, v in BF16_PEAK.items() if k in gpu), None)
    if peak:
        notes["fraction_of_bf16_peak"] = rate * flop_per_item / peak
    notes["gpu"] = gpu
    return Entry(name, rate, unit, device=device, dtype="bfloat16", batch=len(x), notes=notes)


def _agreement(ref: torch.Tensor, got: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    cos = (F.normalize(ref.float(), dim=-1) * F.normalize(got.float(), dim=-1)).sum(-1)
    same = (ref.float() @ w.T).argmax(-1) == (got.float() @ w.T).argmax(-1)
    return {
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "argmax_agreement": float(same.float().mean()),
    }


def _model_and_classifier(name: str, device: str) -> tuple[object, torch.Tensor]:
    """The untrained model ``name`` on ``device`` and its (C, D) lucas-lc8 text classifier."""
    m = model.load(name, untrained=True, device=device)
    _, legend = _prompts()
    return m, build_classifier(m, legend).to(device).float()


def timesenclip_variants(batch: int, sample: int, device: str = "cuda") -> Iterator[Entry]:
    """TimeSenCLIP px/s per variant on (batch, 12, 10) device batches, with agreement."""
    from model.engine import _pixel_fn  # noqa: PLC0415 (the engine's current path, measured)

    m, w = _model_and_classifier("timesenclip", device)
    x = torch.from_numpy(_series(batch, seed=1)).to(device)
    with torch.inference_mode():
        ref = pixel_embedder(m.encoder.float(), torch.float32)(x[:sample])
    enc16 = copy.deepcopy(m.encoder).to(dtype=torch.bfloat16).eval()
    variants = {
        "engine (nn.TransformerEncoder fast path, bf16 weights)": lambda: _pixel_fn(m),
        "explicit, eager, bf16": lambda: pixel_embedder(enc16, torch.bfloat16),
        "explicit, torch.compile default, bf16": lambda: pixel_embedder(
            enc16, torch.bfloat16, "default"
        ),
        "explicit, torch.compile reduce-overhead (CUDA graphs), bf16": lambda: pixel_embedder(
            enc16, torch.bfloat16, "reduce-overhead"
        ),
        "explicit, torch.compile max-autotune-no-cudagraphs, bf16": lambda: pixel_embedder(
            enc16, torch.bfloat16, "max-autotune-no-cudagraphs"
        ),
    }
    for label, make in variants.items():
        yield _measure("timesenclip", label, make(), x, ref, w, TIMESENCLIP_FLOP_PER_PX, device)


def senclip_variants(batch: int, sample: int, device: str = "cuda") -> Iterator[Entry]:
    """SenCLIP chips/s: the engine's path vs a bf16 (channels-last, compiled) image tower."""
    m, w = _model_and_classifier("senclip", device)
    chips = torch.from_numpy(_chips(batch, seed=2)).to(device)
    with torch.inference_mode():
        ref = m.image_embed(m.preprocess(chips[:sample])).float()
    visual = copy.deepcopy(m.net.visual).to(dtype=torch.bfloat16).eval()

    def bf16(v: torch.nn.Module, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        v = v.to(memory_format=fmt)

        def fn(c: torch.Tensor) -> torch.Tensor:
            x = m.preprocess(c).to(torch.bfloat16).contiguous(memory_format=fmt)
            return F.normalize(v(x).float(), dim=-1)

        return fn

    variants = {
        "engine (autocast)": lambda: lambda c: m.image_embed(m.preprocess(c)),
        "bf16 weights, eager": lambda: bf16(visual, False),
        "bf16 weights, channels-last, eager": lambda: bf16(copy.deepcopy(visual), True),
        "bf16 weights, torch.compile default": lambda: torch.compile(bf16(visual, False)),
        "bf16 weights, torch.compile reduce-overhead (CUDA graphs)": lambda: torch.compile(
            bf16(visual, False), mode="reduce-overhead"
        ),
    }
    for label, make in variants.items():
        yield _measure("senclip", label, make(), chips, ref, w, SENCLIP_FLOP_PER_CHIP, device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pixels", type=int, default=2_000_000)
    p.add_argument("--batch", type=int, default=131072)
    p.add_argument("--chip-batch", type=int, default=512)
    p.add_argument("--skip", nargs="*", default=[], choices=["engine", "tsc", "senclip"])
    p.add_argument("--device", default="cuda", help="cuda (cpu only to check the script)")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    machine = (
        f"{hardware.label(hardware.describe(a.device))}, {torch.get_num_threads()} threads "
        f"(Python {platform.python_version()})"
    )
    entries: list[Entry] = []
    path = a.out / "gpu_results.json"

    def save() -> None:
        rows = []
        for e in entries:
            d = dataclasses.asdict(e)
            d["notes"] = {**(d.get("notes") or {}), "machine": machine}
            rows.append(d)
        path.write_text(json.dumps(rows, indent=1, default=str))

    threads = torch.get_num_threads()
    steps = [
        ("engine", lambda: timesenclip_entries(a.device, a.pixels, threads)),
        ("tsc", lambda: timesenclip_variants(a.batch, min(65536, a.batch), a.device)),
        ("engine", lambda: senclip_entries(a.device, 4096, threads)),
        ("senclip", lambda: senclip_variants(a.chip_batch, min(256, a.chip_batch), a.device)),
    ]
    for key, step in steps:
        if key in a.skip:
            continue
        t = time.perf_counter()
        for e in step():
            entries.append(e)
            save()
            print(
                f"{e.name}: {e.value:,.0f} {e.unit} ({time.perf_counter() - t:.0f} s)",
                json.dumps(e.notes, default=str)[:400],
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
