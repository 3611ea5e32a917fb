"""A run across two UTM zones and two 100 km EEA cells: EPSG:3035, per-cell COGs and STAC items,
a VRT per layer that opens as one raster, chunk-aligned Zarr, cells skipped on rerun.

The catalog is drawn by the demo generator, one scene set per UTM zone (32 and 33 at 12 E),
served by the real local STAC API; the run uses a LocalCluster of two worker processes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.demo_map import model_args
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
# 600 x 600 m in EPSG:3035 around (4,469,450, 2,800,000): the 12 E meridian (UTM 32 | 33) runs
# through it north-south and the 2,800 km northing line (cells ...N27 | ...N28) west-east.
REGION_3035 = (4_469_150.0, 2_799_700.0, 4_469_750.0, 2_800_300.0)
DATES = [dt.datetime(2023, m, 10, 10, 30, tzinfo=dt.UTC) for m in range(1, 13)]
CELLS = {"100kmE44N27", "100kmE44N28"}


@pytest.fixture(scope="module")
def gridded_run(tmp_path_factory):
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
            "--no-progress", "--out", str(out),
        ]  # fmt: skip
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}

        def run():
            return subprocess.run(
                args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
            )

        first = run()
        yield {"out": out, "first": first, "run": run, "catalog": catalog}


def test_catalog_spans_two_zones(gridded_run):
    items = json.loads((gridded_run["catalog"] / "items.json").read_text())["features"]
    assert {it["properties"]["proj:epsg"] for it in items} == {32632, 32633}
    assert len({it["id"] for it in items}) == len(items) == 24


def test_gridded_outputs_open_as_one_layer(gridded_run):
    import rasterio
    import xarray as xr

    first, out = gridded_run["first"], gridded_run["out"]
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((out / "run.json").read_text())
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
