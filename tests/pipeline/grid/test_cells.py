"""A run across two UTM zones and two 100 km EEA cells: EPSG:3035, per-cell COGs and STAC items,
a VRT per layer that opens as one raster, chunk-aligned Zarr, cells skipped on rerun, and the
region post-processed (``--majority 1 --mmu 9``) across the cell edge, as the whole map would be.

The catalog is drawn by the demo generator, one scene set per UTM zone (32 and 33 at 12 E),
served by the real local STAC API; the run uses a LocalCluster of two worker processes. One run
(with the post-processing and the class-mean calibration) serves every test of the file: the
cells, the VRTs and the rerun do not depend on the post-processing options. The map is made in
the test process (:func:`tests.demo_map.run_here`), the reruns by `python -m pipeline run`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.demo_map import model_args, run_here
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
# 600 x 600 m in EPSG:3035 around (4,469,450, 2,800,000): the 12 E meridian (UTM 32 | 33) runs
# through it north-south and the 2,800 km northing line (cells ...N27 | ...N28) west-east.
REGION_3035 = (4_469_150.0, 2_799_700.0, 4_469_750.0, 2_800_300.0)
DATES = [dt.datetime(2023, m, 10, 10, 30, tzinfo=dt.UTC) for m in range(1, 13)]
CELLS = {"100kmE44N27", "100kmE44N28"}


@pytest.fixture(scope="module")
def gridded_run(tmp_path_factory):
    """The run, ``--majority 1 --mmu 9`` and the class-mean calibration on the region's reference
    sample (the random-init map then uses several classes), and how to run it again."""
    from aoi import load_region
    from pipeline.testing.demo.multizone import generate_multizone_catalog
    from pipeline.testing.stac_server import serve

    tmp = tmp_path_factory.mktemp("gridded")
    region_file = tmp / "straddle.yaml"
    region_file.write_text(
        "name: straddle\ncrs: auto\nresolution: 10\nstac: earth-search\n"
        f"bounds: {list(REGION_3035)}\nbounds_crs: EPSG:3035\n"
        "period: {start: 2023-01-01, end: 2023-12-31}\n"
    )
    region = load_region(region_file)
    w, _, e, _ = region.bbox
    assert w < 12.0 < e and region.crs == "EPSG:3035"
    catalog = generate_multizone_catalog(tmp / "catalog", region.geometry, dates=DATES, seed=3)
    out = tmp / "out"
    with serve(catalog) as url:
        args = [
            sys.executable, "-m", "pipeline", "run", "--region", str(region_file), "--year",
            "2023", *model_args(), "--stac-url", url, "--tile-size", "50", "--workers", "2",
            "--no-progress", "--out", str(out), "--calibration", "reference", "--majority", "1",
            "--mmu", "9",
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}

        def run():
            return subprocess.run(
                args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
            )

        first = run_here(args[4:], check=False)  # the map, made in the test process
        # the first run's report (the rerun test rewrites run.json)
        report = json.loads((out / "run.json").read_text()) if first.returncode == 0 else None
        yield {
            "out": out, "first": first, "report": report, "run": run, "catalog": catalog,
            "region": region_file,
        }  # fmt: skip


def test_catalog_spans_two_zones(gridded_run):
    items = json.loads((gridded_run["catalog"] / "items.json").read_text())["features"]
    assert {it["properties"]["proj:epsg"] for it in items} == {32632, 32633}
    assert len({it["id"] for it in items}) == len(items) == 24


def test_gridded_outputs_open_as_one_layer(gridded_run):
    import rasterio
    import xarray as xr

    first, out = gridded_run["first"], gridded_run["out"]
    assert first.returncode == 0, first.stderr[-3000:]
    report = gridded_run["report"]
    assert report["status"] == "complete" and report["region"]["crs"] == "EPSG:3035"
    assert set(report["cells"]["published"]) == CELLS
    # one COG set and STAC item per cell, named by the EEA grid code
    for code in CELLS:
        cell = out / "cells" / code
        for f in ("classes.tif", "confidence.tif", "valid_obs.tif", "item.json", "cell.json"):
            assert (cell / f).is_file(), f"{code}/{f}"
        item = json.loads((cell / "item.json").read_text())
        assert item["properties"]["grid:code"] == f"EEA-{code}"
        assert item["properties"]["proj:code"] == "EPSG:3035"
        with rasterio.open(cell / "classes.tif") as src:
            assert src.crs.to_epsg() == 3035
            # inside its 100 km cell
            e, n = int(code[6:8]), int(code[9:11])
            assert src.bounds.left >= e * 1e5 and src.bounds.right <= (e + 1) * 1e5
            assert src.bounds.bottom >= n * 1e5 and src.bounds.top <= (n + 1) * 1e5
    col = json.loads((out / "collection.json").read_text())
    assert col["type"] == "Collection"
    assert sorted(lk["href"] for lk in col["links"] if lk["rel"] == "item") == [
        f"./cells/{c}/item.json" for c in sorted(CELLS)
    ]
    # the VRT is one raster over both cells; its pixels are the cells' pixels
    with rasterio.open(out / "classes.vrt") as vrt:
        assert vrt.crs.to_epsg() == 3035 and vrt.count == 1
        data = vrt.read(1)
        assert vrt.colormap(1)[0][:3] != (0, 0, 0)
        for code in CELLS:
            with rasterio.open(out / "cells" / code / "classes.tif") as src:
                win = vrt.window(*src.bounds)
                part = vrt.read(1, window=win)
                assert np.array_equal(part, src.read(1))
    # the region (600 m square = 60 x 60 px) is mapped on both sides of the cell edge
    assert (data != 255).sum() == 60 * 60
    with rasterio.open(out / "valid_obs.vrt") as vo:
        assert vo.count == 13 and vo.descriptions[0] == "total"
        assert vo.read(1)[data != 255].min() > 0
    # one Zarr store, chunks aligned with the cells (a tile never crosses a cell edge)
    ds = xr.open_zarr(out / "map.zarr")
    chunk_y = ds["classes"].encoding["chunks"][-2]
    assert chunk_y == 50 and (10_000 % chunk_y) == 0
    y_top = float(ds["y"][0]) + 5.0  # pixel-centre coordinates
    assert y_top % 100_000 == 0


def test_postprocessing_across_the_cell_edge_is_the_whole_maps(gridded_run):
    """Each cell is post-processed on its own with its neighbour's edge and the regions joined
    across it: the published cells are the whole map's post-processing, not each cell's."""
    import rasterio
    import xarray as xr

    from pipeline.writers.postprocess import postprocess

    first, out = gridded_run["first"], gridded_run["out"]
    assert first.returncode == 0, first.stderr[-3000:]
    report = gridded_run["report"]
    assert set(report["cells"]["published"]) == CELLS
    assert report["postprocess"]["cells"] == 2 and report["postprocess"]["sieve_passes"] >= 1
    # the store over the region with a margin (all nodata outside the region)
    x0, y0, x1, y1 = REGION_3035
    ds = xr.open_zarr(out / "map.zarr")
    box = {"x": slice(x0 - 200, x1 + 200), "y": slice(y1 + 200, y0 - 200)}
    raw = ds["classes_raw"].sel(**box).values
    classes = ds["classes"].sel(**box).values
    flag = ds["postprocessed"].sel(**box).values
    edge = int(np.flatnonzero(ds["y"].sel(y=box["y"]).values < 2_800_000)[0])  # first row of N27
    assert 0 < edge < raw.shape[0] and (raw[:edge] != 255).any() and (raw[edge:] != 255).any()
    assert len(np.unique(raw[raw != 255])) >= 3
    want, want_flag = postprocess(raw, majority=1, mmu=9)
    np.testing.assert_array_equal(classes, want)
    np.testing.assert_array_equal(flag, want_flag)
    assert ((classes == 255) == (raw == 255)).all()  # nodata never filled
    assert report["postprocess"]["changed_pixels"] == int((flag == 1).sum()) > 0
    # the test can tell: each cell post-processed on its own gives another map
    alone = np.concatenate(
        [postprocess(raw[:edge], 1, 9)[0], postprocess(raw[edge:], 1, 9)[0]], axis=0
    )
    assert (alone != want).any()
    # the published cells hold the post-processed classes, the raw ones and the flag
    for code in CELLS:
        cell = out / "cells" / code
        item = json.loads((cell / "item.json").read_text())
        assert item["properties"]["s2lc:postprocess"] == {"majority": 1, "mmu": 9}
        with rasterio.open(cell / "classes.tif") as src:
            part = src.read(1)
            b = src.bounds
        sub = ds["classes"].sel(x=slice(b.left, b.right), y=slice(b.top, b.bottom)).values
        np.testing.assert_array_equal(part, sub)
        for name in ("classes_raw", "postprocessed"):
            with rasterio.open(cell / f"{name}.tif") as src:
                got = src.read(1)
            sub = ds[name].sel(x=slice(b.left, b.right), y=slice(b.top, b.bottom)).values
            np.testing.assert_array_equal(got, sub, err_msg=f"{code}/{name}")


def test_rerun_skips_finished_cells(gridded_run):
    import xarray as xr

    out = gridded_run["out"]
    assert gridded_run["first"].returncode == 0

    def mapped():  # the store's pixels over the region (not the two cells' 2 x 10^8 pixels)
        x0, y0, x1, y1 = REGION_3035
        da = xr.open_zarr(out / "map.zarr")["classes"]
        return da.sel(x=slice(x0 - 500, x1 + 500), y=slice(y1 + 500, y0 - 500)).values

    classes = mapped()
    assert (classes == 255).sum() + np.isnan(classes).sum() < classes.size  # mapped pixels
    mtimes = {c: (out / "cells" / c / "classes.tif").stat().st_mtime_ns for c in CELLS}
    # The completion record is lost: the rerun resumes, finds every tile and cell done, and
    # republishes the mosaics without rebuilding a cell or losing the store's pixels.
    (out / "run.json").unlink()
    again = gridded_run["run"]()
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((out / "run.json").read_text())
    assert report["cells"]["published"] == [] and set(report["cells"]["skipped"]) == CELLS
    assert {c: (out / "cells" / c / "classes.tif").stat().st_mtime_ns for c in CELLS} == mtimes
    assert np.array_equal(mapped(), classes, equal_nan=True)
    # and with the record in place, a rerun does nothing
    assert gridded_run["run"]().returncode == 0
    assert json.loads((out / "run.json").read_text())["seconds"] == report["seconds"]
