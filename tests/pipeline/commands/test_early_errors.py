"""Cheap checks come before any model and before torch is imported (issue 25, point 7).

A wrong legend, ``--workers 0``, a missing checkpoint or a bad ``--head`` each fail with one
line and exit 2 while ``torch`` is still absent from ``sys.modules`` (it cost 2.8-3.0 CPU-s and
up to a minute on a loaded machine to import torch and build the model first). Each case runs the
real command line in a fresh interpreter, so no earlier test has imported torch already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.paths import REPO_ROOT

PROBE = (
    "import json, sys\n"
    "from pipeline.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))\n"
)

BASE = ["run", "--region", "demo", "--year", "2023", "--model", "timesenclip"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--untrained", "--legend", "no-such-legend"], "unknown legend"),
        (["--untrained", "--workers", "0"], "--workers must be >= 1"),
        (["--checkpoint", "/no/such/weights.pt"], "checkpoint not found"),
        (["--untrained", "--head", "/no/such/head.npz"], "head file not found"),
        # PATH below holds no sbatch: a Slurm run fails in one line instead of hanging
        (["--untrained", "--cluster", "slurm"], "'sbatch' is not on PATH"),
    ],
    ids=["legend", "workers", "checkpoint", "head", "slurm-without-sbatch"],
)
def test_bad_input_fails_before_torch_is_imported(extra, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *BASE, *extra, "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "S2LC_CACHE_DIR": str(tmp_path / "cache"), "PATH": str(tmp_path)},
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert result["rc"] == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-500:]
    assert result["torch"] is False, f"torch was imported before: {errors[0]}"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_period_without_scenes_fails_before_torch_is_imported(demo_catalog, tmp_path):
    """A fresh run searches before ``--backend auto`` measures the backends and before any model
    is built: a year the catalog has no scene for fails in one line, with torch never imported
    (before, it failed only after the backends were timed, a minute on a loaded machine)."""
    env = {k: v for k, v in os.environ.items() if k != "S2LC_BACKEND"}  # the default: auto
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "run", "--region", "demo", "--year", "2019",
         "--model", "timesenclip", "--untrained", "--out", str(tmp_path / "out")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert result["rc"] == 2 and len(errors) == 1, proc.stderr[-800:]
    assert "no Sentinel-2 scenes" in errors[0] and "2019-01-01" in errors[0], errors[0]
    assert result["torch"] is False, "torch was imported before the search failed"
    assert "--backend auto" not in proc.stderr  # no backend was measured
    assert not (tmp_path / "out" / "run.json").exists()


def test_the_first_log_line_says_where_the_region_is(tmp_path):
    """The README's Freising box with its axes swapped (S W N E) is a valid lon/lat box in the
    Gulf of Aden: the first line says so (centre, CRS) before anything else happens."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "run", "--bbox", "48.3", "11.6", "48.45", "11.8",
         "--year", "2023", "--untrained", "--legend", "no-such-legend", "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "S2LC_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    first = proc.stderr.strip().splitlines()[0]
    assert "centre 48.38°E 11.70°N" in first and "CRS EPSG:32639" in first, proc.stderr[-500:]
    # A named region also says what it is (its description names the country or state).
    from aoi import load_region, location_text

    r = load_region("freising")
    text = location_text(r.geometry, r.crs, r.description)
    assert text.startswith("centre 11.75°E 48.45°N (") and "Bavaria" in text
    assert text.endswith("CRS EPSG:32632")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (["eurosat", "--root"], "not found"),
        (["bigearthnet", "--root"], "no BigEarthNet-v1.0 folder"),
    ],
    ids=["eurosat", "bigearthnet"],
)
def test_evaluate_checks_the_dataset_folder_before_any_model(target, message, tmp_path):
    """A missing dataset folder fails before any model or text classifier is built (open_clip,
    which builds both, is not imported yet)."""
    args = [
        "evaluate",
        *target,
        str(tmp_path / "missing"),
        "--untrained",
        "--out",
        str(tmp_path / "o"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.replace("'torch' in", "'open_clip' in"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "S2LC_CACHE_DIR": str(tmp_path / "cache")},
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert result["rc"] == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-500:]
    assert result["torch"] is False, f"a model was built before: {errors[0]}"
