"""Faults during a real run (integration: several full runs on a LocalCluster of 2 processes).

After each fault the rerun completes and matches an uninterrupted run, byte for byte: a worker
killed mid-run, a disk that fills up (RLIMIT_FSIZE: writes fail with EFBIG, as on a full
disk), and determinism itself (the same run twice).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BBOX = ["10.3612", "48.2100", "10.3690", "48.2160"]  # ~60 x 60 px inside the demo AOI
ARGS = [
    "--region",
    "demo",
    "--bbox",
    *BBOX,
    "--untrained",
    "--tile-size",
    "32",
    "--workers",
    "2",
    "--no-progress",
]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", *ARGS, "--out", str(out)]


@pytest.fixture(scope="module")
def env(demo_catalog):
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "map"
    subprocess.run(_cmd(out), cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    return out


def _same_map(a: Path, b: Path) -> None:
    import rasterio
    import xarray as xr

    with rasterio.open(a / "classes.tif") as x, rasterio.open(b / "classes.tif") as y:
        np.testing.assert_array_equal(x.read(), y.read())
    za, zb = xr.open_zarr(a / "map.zarr"), xr.open_zarr(b / "map.zarr")
    for var in ("classes", "confidence", "topk_classes", "topk_probs", "valid_obs"):
        np.testing.assert_array_equal(za[var].values, zb[var].values, err_msg=var)


def test_same_run_twice_is_byte_identical(reference, env, tmp_path):
    out = tmp_path / "again"
    subprocess.run(_cmd(out), cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    _same_map(out, reference)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    kids = [int(p) for p in out.stdout.split()]
    return kids + [g for k in kids for g in _children(k)]


def test_worker_killed_mid_run(reference, env, tmp_path):
    out = tmp_path / "killed-worker"
    proc = subprocess.Popen(
        _cmd(out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    markers = out / ".s2lc" / "tiles"
    deadline = time.time() + 600
    while time.time() < deadline and not list(markers.glob("*.json")):
        time.sleep(0.2)
    workers = [
        p for p in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert workers, "no worker processes found"
    os.kill(workers[-1], signal.SIGKILL)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-2000:]
    _same_map(out, reference)


def test_disk_full_then_rerun(reference, env, tmp_path):
    out = tmp_path / "full-disk"

    def small_disk():  # every process of the run inherits it, workers included
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run(
        _cmd(out),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=small_disk,
    )
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "too large" in errors[0].lower(), proc.stderr[-2000:]
    for name in ("classes.tif", "confidence.tif", "valid_obs.tif", "map.zarr", "item.json"):
        assert not (out / name).exists(), name
    subprocess.run(_cmd(out), cwd=ROOT, env=env, check=True, capture_output=True, timeout=900)
    _same_map(out, reference)
