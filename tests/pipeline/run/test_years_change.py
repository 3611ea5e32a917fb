"""End to end: ``run --years`` on the two-year demo with planted change, then ``change``.

The session fixture ``change_demo`` (tests/conftest.py) generates the catalog (a forest cleared, a
field built on, a lake shrunk; patches down to 1 px), fits a few-shot head on 2022 points only and
maps 2022 and 2023 of a 1 km box with ``python -m pipeline run --years 2022,2023`` against the real
local STAC API. The tests rerun it (skipped years), stack checks, and ``change`` with and without
``--consistency`` scored against the per-pixel truth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.paths import REPO_ROOT

# Two yearly maps, a few-shot head and a rerun: minutes on 2 cores, so this end-to-end module runs
# in `make test-integration`; the year parsing and the change kernel are tested in `make test`
# (tests/pipeline/run/test_years.py, tests/pipeline/evaluate/test_change.py).
pytestmark = pytest.mark.integration


def _cli(*argv, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, argv)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_years_are_stacked_on_time_with_one_cog_set_each(change_demo):
    import rasterio
    import xarray as xr

    out = change_demo.map
    ds = xr.open_zarr(out / "map.zarr", decode_coords="all", consolidated=False)
    assert ds["time"].values.tolist() == [2022, 2023]
    assert ds["classes"].dims == ("time", "y", "x")
    for i, year in enumerate((2022, 2023)):
        with rasterio.open(out / str(year) / "classes.tif") as src:
            np.testing.assert_array_equal(ds["classes"].isel(time=i).values, src.read(1))
        run = json.loads((out / str(year) / "run.json").read_text())
        assert run["config"]["start"] == f"{year}-01-01" and run["status"] == "complete"
    summary = json.loads((out / "run.json").read_text())
    assert list(summary["years"]) == ["2022", "2023"]
    assert summary["head"] == str(change_demo.head)
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["s2lc:years"] == [2022, 2023]
    assert [lk["href"] for lk in item["links"]] == ["./2022/item.json", "./2023/item.json"]


def test_change_finds_the_planted_change(change_demo, tmp_path):
    from pipeline.bench.change import score_run

    plain = score_run(change_demo, tmp_path / "plain", consistency=False)
    cons = score_run(change_demo, tmp_path / "cons", consistency=True)
    print("without consistency", plain, "\nwith consistency", cons)
    assert cons["change_precision"] >= 0.9 and cons["change_recall"] >= 0.9
    assert cons["stable_flip_rate"] <= 0.02
    assert cons["stable_flip_rate"] <= plain["stable_flip_rate"]
    legend = json.loads((tmp_path / "cons" / "transition_legend.json").read_text())
    assert legend["classes"][1 * 6 + 5]["name"] == "forest -> bare"
    summary = json.loads((tmp_path / "cons" / "change.json").read_text())
    assert summary["consistency"] and summary["rejected_by_consistency"] >= 0


def test_area_table_with_stratified_confidence_intervals(change_demo, tmp_path):
    import csv

    from pipeline.bench.change import write_truth_transitions

    out = tmp_path / "areas"
    _cli("change", "--map", change_demo.map, "--from", 2022, "--to", 2023, "--consistency",
         "--out", out)  # fmt: skip
    truth = write_truth_transitions(
        change_demo.catalog, out / "transition.tif", tmp_path / "truth.tif", 6
    )
    pts = tmp_path / "points.gpkg"
    _cli("sample-points", "--strata", out / "transition.tif", "--labels", truth,
         "--per-class", 20, "--seed", 3, "--out", pts)  # fmt: skip
    _cli("change", "--map", change_demo.map, "--from", 2022, "--to", 2023, "--consistency",
         "--reference", pts, "--area-unit", "pixels", "--out", out)  # fmt: skip
    with open(out / "change_areas.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(int(r["mapped_px"]) for r in rows) == sum(
        float(r["mapped_area_pixels"]) for r in rows
    )
    est = [r for r in rows if r["estimated_area_pixels"]]
    assert est and any(r["changed"] == "True" for r in est)
    total = sum(float(r["estimated_area_pixels"]) for r in est)
    assert total == pytest.approx(sum(int(r["mapped_px"]) for r in rows), rel=1e-6)
    for r in est:
        assert float(r["ci95_low"]) <= float(r["estimated_area_pixels"]) <= float(r["ci95_high"])
    assert (out / "points.parquet").is_file()


def test_rerun_skips_the_years_done(change_demo):
    """The workflow ran the same ``run --years`` twice: the second did no year and no stack."""
    log = change_demo.rerun_log
    assert log.count("is complete and up to date") == 2, log[-2000:]
    assert "nothing to stack" in log
    assert "scenes found" not in log and "tiles:" not in log  # no search, no tile was run


def test_change_refuses_other_grids_and_missing_years(change_demo, tmp_path):
    proc = _cli("change", "--map", change_demo.map, "--from", 2022, "--to", 2021,
                "--out", tmp_path / "x", check=False)  # fmt: skip
    assert proc.returncode != 0 and "no map of 2021" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_two_runs_compare_like_two_years_and_other_bases_are_refused(change_demo, tmp_path):
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(change_demo.map / "2022", a)
    shutil.copytree(change_demo.map / "2023", b)
    _cli("change", "--maps", a, b, "--consistency", "--out", tmp_path / "two")
    _cli("change", "--map", change_demo.map, "--from", 2022, "--to", 2023, "--consistency",
         "--out", tmp_path / "years")  # fmt: skip
    import rasterio

    for name in ("transition.tif", "changed.tif", "change_confidence.tif"):
        with (
            rasterio.open(tmp_path / "two" / name) as x,
            rasterio.open(tmp_path / "years" / name) as y,
        ):
            np.testing.assert_array_equal(x.read(), y.read())
    (a / "model_card.json").write_text(json.dumps({"field": {"basis_sha256": "0" * 64}}))
    (b / "model_card.json").write_text(json.dumps({"field": {"basis_sha256": "1" * 64}}))
    proc = _cli("change", "--maps", a, b, "--out", tmp_path / "refused", check=False)
    assert proc.returncode != 0 and "other bases" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()
