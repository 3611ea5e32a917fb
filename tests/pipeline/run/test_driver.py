"""End to end: `python -m pipeline run` on the demo catalog, through the real local STAC API and a
LocalCluster of 2 worker processes: outputs, nodata, reruns, kill and resume. The maps that the
tests read are made in the test process (:func:`tests.demo_map.run_here`); the reruns, the
refusals and the killed run are `python -m pipeline run` processes. The patch model's
seams are tests/pipeline/run/test_seamless.py (a file of its own, so the two run side by side on
the suite's two workers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.demo_map import base_args as _base_args
from tests.demo_map import model_args as _model_args
from tests.demo_map import run as _run
from tests.demo_map import run_here
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def env(demo_catalog):
    e = dict(os.environ)
    e["HF_HUB_OFFLINE"] = "1"
    return e


@pytest.fixture(scope="module")
def timesenclip_map(env, tmp_path_factory):
    # Not the suite's shared demo map (tests/demo_map.py): that one stores the embedding field,
    # and a killed and resumed --save-embeddings run does not reproduce its probabilities.
    out = tmp_path_factory.mktemp("tsc") / "map"
    proc = run_here([*_base_args(), "--out", str(out), "--save-composite"])
    return out, proc


def test_timesenclip_products(timesenclip_map):
    import rasterio
    import rioxarray  # noqa: F401 (registers the .rio accessor)
    import xarray as xr
    from rio_cogeo.cogeo import cog_validate

    out, proc = timesenclip_map
    # the suite's one-layer checkpoint, not the untrained demo model (tests/demo_map.py)
    assert "UNTRAINED" not in proc.stderr
    for name in (
        "map.zarr",
        "classes.tif",
        "confidence.tif",
        "valid_obs.tif",
        "legend.json",
        "quicklook.png",
        "item.json",
        "run.json",
    ):
        assert (out / name).exists(), name
    assert not list(out.glob("*.tmp*"))
    for tif in ("classes.tif", "confidence.tif", "valid_obs.tif"):
        valid, errors, _ = cog_validate(str(out / tif))
        assert valid, (tif, errors)

    legend = json.loads((out / "legend.json").read_text())
    run = json.loads((out / "run.json").read_text())
    names = run["legend"]["classes"]
    assert (
        legend["untrained"] is False and run["untrained"] is False and run["status"] == "complete"
    )
    assert run["tiles"]["done"] == run["tiles"]["total"] >= 4 and not run["tiles"]["failed"]
    assert run["model"]["identity"].startswith("timesenclip")
    assert run["legend"]["prompt_hash"] and run["calibration"] is None  # none for timesenclip
    # The SCL mask applied is recorded, class numbers and names (issue 25, point 5).
    assert run["config"]["scl_mask"] == "0,1,2,3,8,9,10,11" and run["config"]["mask_snow"]
    assert run["scl_mask"]["masked_classes"] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert "dark_features" in run["scl_mask"]["masked_names"]
    # seconds per stage under the names plan.json uses (issue 26, point 5), adding up to the total
    from pipeline.run.stages import STAGES

    assert tuple(run["stages"]["wall_s"]) == STAGES and run["stages"]["slots"] >= 1
    assert run["stages"]["total_wall_s"] == pytest.approx(run["seconds"]["total"])
    assert run["stages"]["core_s"]["infer"] > 0

    with rasterio.open(out / "classes.tif") as src:
        classes = src.read(1)
        assert src.crs.to_epsg() == 32632 and src.res == (10.0, 10.0)
        assert src.nodata == 255 and src.overviews(1) is not None
        cmap = src.colormap(1)
        assert len({cmap[i] for i in range(len(names))}) == len(names)
        tags = json.dumps(src.tags()) + json.dumps(src.tags(1)) + str(src.descriptions)
        assert all(n in tags for n in names)
    # The lon/lat box is a slightly rotated quadrilateral in UTM: its bounding grid is ~60 px.
    assert 58 <= classes.shape[0] <= 64 and 58 <= classes.shape[1] <= 64
    with rasterio.open(out / "valid_obs.tif") as src:
        observed = src.read(1) > 0
    assert set(np.unique(classes[observed])) <= set(range(len(names)))
    assert observed.mean() > 0.9 and (classes[~observed] == 255).all()

    ds = xr.open_zarr(out / "map.zarr", decode_coords="all")
    assert ds.rio.crs.to_epsg() == 32632
    # classes stay uint8 in xarray, nodata 255
    assert ds["classes"].dtype == np.uint8
    np.testing.assert_array_equal(ds["classes"].values, classes)
    assert ds["valid_obs"].sizes[next(d for d in ds["valid_obs"].dims if d not in ("y", "x"))] == 12
    assert "composite" in ds
    with rasterio.open(f'ZARR:"{out / "map.zarr"}":/classes') as src:
        assert src.crs.to_epsg() == 32632
        np.testing.assert_array_equal(src.read(1), classes)
    item = json.loads((out / "item.json").read_text())
    assert item["assets"]["classes"]["classification:classes"]


def test_rerun_is_a_noop_and_other_settings_refused(timesenclip_map, env):
    out, _ = timesenclip_map
    before = (out / "classes.tif").stat().st_mtime_ns
    proc = _run([*_base_args(), "--out", str(out), "--save-composite"], env)
    assert proc.returncode == 0
    assert (out / "classes.tif").stat().st_mtime_ns == before
    proc = _run([*_base_args(), "--out", str(out), "--period", "quarterly"], env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "--overwrite" in errors[0]
    assert "period: monthly -> quarterly" in errors[0]  # says what changed, not only two hashes
    assert "scene(s)" not in proc.stderr  # refused before searching or loading anything
    # Another SCL mask is another map: refused the same way, naming the mask.
    proc = _run([*_base_args(), "--out", str(out), "--save-composite", "--scl-mask", "clouds"],
                env, check=False)  # fmt: skip
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1
    assert "scl_mask: 0,1,2,3,8,9,10,11 -> 0,1,3,8,9,10,11" in errors[0]


def test_kill_and_resume_matches_uninterrupted(timesenclip_map, env, tmp_path):
    import rasterio
    import xarray as xr

    ref, _ = timesenclip_map
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--no-progress",
        "--workers",
        "2",
        *_base_args(),
        "--out",
        str(out),
        "--save-composite",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    markers = out / ".s2lc" / "tiles"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(markers.glob("*.json"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(markers.glob("*.json")))
    assert done_before >= 1
    assert not (out / "classes.tif").exists() and not (out / "map.zarr").exists()

    run_here([*_base_args(), "--out", str(out), "--save-composite"])
    run = json.loads((out / "run.json").read_text())
    assert run["tiles"]["resumed"] >= 1
    with rasterio.open(out / "classes.tif") as a, rasterio.open(ref / "classes.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    za, zb = xr.open_zarr(out / "map.zarr"), xr.open_zarr(ref / "map.zarr")
    for var in ("classes", "confidence", "topk_probs", "valid_obs", "composite"):
        np.testing.assert_array_equal(za[var].values, zb[var].values, err_msg=var)


def test_pixels_without_observations_are_nodata(env, tmp_path):
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    # Half of this region lies east of the demo scenes' footprint (which ends at x = 602640).
    # Four summer months as one period and one worker process: the footprint is the subject.
    region = tmp_path / "edge.geojson"
    gpd.GeoDataFrame(geometry=[box(602400, 5341000, 602880, 5341320)], crs="EPSG:32632").to_file(
        region
    )
    out = tmp_path / "edge"
    run_here(
        [
            "--region",
            str(region),
            "--profile",
            "demo",
            "--start",
            "2023-05-01",
            "--end",
            "2023-08-31",
            "--period",
            "annual",
            *_model_args(),
            "--legend",
            "demo",
            "--tile-size",
            "32",
            "--workers",
            "1",
            "--out",
            str(out),
        ]
    )
    with rasterio.open(out / "classes.tif") as c, rasterio.open(out / "valid_obs.tif") as v:
        classes, valid = c.read(1), v.read().sum(axis=0)
        xs = c.xy(0, np.arange(c.width))[0]
    outside = np.asarray(xs) > 602640
    assert outside.any() and (~outside).any()
    assert (classes[:, outside] == 255).all() and (valid[:, outside] == 0).all()
    # Inside the footprint every pixel is a class; the border pixels are left out because the
    # region went through lon/lat and its edges may cut pixel centres.
    covered = classes[1:-1, 1:-1][:, ~outside[1:-1]]
    assert (covered != 255).all()
