"""The hardware a figure was measured on: CPU model, the instruction sets that decide inference
speed, cores, and the GPU with its torch and CUDA versions.

Every benchmark entry and every cached per-machine decision names its hardware with
:func:`describe`, so a figure can be matched to the machine kind it holds for. Machines differ
from session to session (one had AVX-512 bf16, where bf16 inference ran 2x fp32; another had
none, where it ran 6-14x slower), so the flags are part of the description.
"""

from __future__ import annotations

import os
import platform
import sys
from functools import cache
from typing import Any

#: The CPU flags (as /proc/cpuinfo names them) that decide the speed of the inference kernels:
#: AVX2 and AVX-512 (fp32 GEMMs), AVX-512 BF16 and VNNI (bf16 and int8 dot products), and AMX
#: (Intel's bf16/int8 tile units).
CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo() -> tuple[str, set[str]]:
    """The first processor's model name (with its family and model numbers, which tell CPU
    generations apart where a virtual machine reports only "AMD EPYC") and its flags."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the end of the first processor's block
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        model += f" (family {fields['cpu family']}, model {fields['model']})"
    return model, set((fields.get("flags") or fields.get("Features") or "").split())


def cores() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@cache
def cpu() -> dict[str, Any]:
    """``{"cpu": model name, "cpu_flags": [the CPU_FLAGS present], "cores": int}``."""
    model, flags = _cpuinfo()
    return {"cpu": model, "cpu_flags": [f for f in CPU_FLAGS if f in flags], "cores": cores()}


def gpu(device: Any = "cuda") -> dict[str, Any]:
    """``{"gpu": name, "torch": version, "cuda": version}`` of ``device``; empty without a GPU.

    Looks at torch only when it is already imported (a GPU figure comes from a torch process).
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {}
    return {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def describe(device: str = "cpu") -> dict[str, Any]:
    """The hardware of a figure measured on ``device`` ("cpu", "cuda", ...): :func:`cpu`, plus
    :func:`gpu` for a CUDA device."""
    out = dict(cpu())
    if str(device).startswith("cuda"):
        out.update(gpu(device))
    return out


def label(hw: dict[str, Any]) -> str:
    """One line for tables and logs, e.g. ``AMD EPYC (family 25, model 17), 2 cores; avx2,
    avx512f, avx512_bf16`` or ``NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130, CUDA 13.0), 16 cores``."""
    if not hw:
        return "hardware not recorded"
    if hw.get("note") and not hw.get("cpu"):
        return str(hw["note"])
    if hw.get("gpu"):
        versions = ", ".join(
            f"{k} {hw[k]}" if k == "torch" else f"CUDA {hw[k]}"
            for k in ("torch", "cuda")
            if hw.get(k)
        )
        return f"{hw['gpu']} ({versions}), {hw.get('cores', '?')} cores"
    flags = ", ".join(hw.get("cpu_flags") or []) or "no AVX2 or AVX-512"
    return f"{hw.get('cpu', 'CPU model not recorded')}, {hw.get('cores', '?')} cores; {flags}"
