"""Every figure names its hardware: CPU model, the flags that decide inference speed, cores, GPU."""

from __future__ import annotations

from pathlib import Path

from pipeline.base import hardware
from pipeline.bench.results import Entry


def test_the_cpu_description_matches_proc_cpuinfo():
    hw = hardware.describe("cpu")
    text = Path("/proc/cpuinfo").read_text()
    flags = set(
        next(ln for ln in text.splitlines() if ln.startswith("flags")).split(":")[1].split()
    )
    assert hw["cpu_flags"] == [f for f in hardware.CPU_FLAGS if f in flags]
    name = next(ln for ln in text.splitlines() if ln.startswith("model name")).split(":")[1].strip()
    assert hw["cpu"].startswith(name)
    assert hw["cores"] == hardware.cores() >= 1
    assert "gpu" not in hw
    line = hardware.label(hw)
    assert name in line and f"{hw['cores']} cores" in line
    for f in hw["cpu_flags"]:
        assert f in line


def test_a_gpu_label_names_the_gpu_torch_and_cuda_and_no_tool():
    hw = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "cuda": "13.0", "cores": 16}
    line = hardware.label(hw)
    assert line == "NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130, CUDA 13.0), 16 cores"
    assert hardware.label({}) == "hardware not recorded"


def test_a_bench_entry_records_the_hardware_it_ran_on():
    e = Entry("x_per_s", 1.0, "x/s")
    assert e.hardware == hardware.describe("cpu")
    given = {"gpu": "G", "cores": 1}
    assert Entry("y", 1.0, "y", device="cuda", hardware=given).hardware == given
