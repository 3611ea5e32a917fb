"""End to end: the uncertainty layers, the out-of-distribution flag and seam-safe post-processing.

One seeded demo catalog (12 dates) with a 6 x 6 px glacier planted in it (a material none of the
demo classes describes, ``generate_catalog(plant="glacier")``), served by the real local STAC
API; the ``run`` command (in the test process, :func:`tests.demo_map.run_here`) with ``--ood
--calibration reference --majority 1 --mmu 9`` maps a 1 km box around the glacier twice, tiled
at 64 and at 256 px, with a LocalCluster of one worker process (the tiles' order and placement
are what the tiling changes; how many processes run them is the cluster tests' subject).
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from tests.demo_map import model_args, run_here

# 1 km x 1 km inside the demo AOI (EPSG:32632) around the planted patch (AOI rows 57..63,
# columns 117..123: 30 % of its height, 60 % of its width).
BOX_UTM = (600700.0, 5340900.0, 601700.0, 5341900.0)
DATES = [dt.datetime(2023, m, 10, 10, 30, tzinfo=dt.UTC) for m in range(1, 13)]
# class-mean calibration on the reference sample: the untrained zero-shot map then uses all six
# classes (without, nearly every pixel is one class and post-processing has little to do)
OPTIONS = ["--ood", "--calibration", "reference", "--majority", "1", "--mmu", "9"]


def _bbox() -> list[str]:
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    (w, s), (e, n) = tr.transform(*BOX_UTM[:2]), tr.transform(*BOX_UTM[2:])
    d = 2e-5  # a few metres in, so the snapped grid is the 100 x 100 px box
    return [f"{v:.7f}" for v in (w + d, s + d, e - d, n - d)]


@pytest.fixture(scope="module")
def planted_runs(tmp_path_factory):
    from pipeline.testing.demo import generate_catalog
    from pipeline.testing.stac_server import serve

    tmp = tmp_path_factory.mktemp("planted")
    catalog = generate_catalog(
        tmp / "catalog", seed=0, dates=DATES, plant="glacier", plant_px=6, partial_swath=None
    )
    outs = {}
    with serve(catalog) as url:
        for tile in (64, 256):
            out = tmp / f"map{tile}"
            run_here([
                "--region", "demo", "--bbox", *_bbox(), "--year", "2023", *model_args(),
                "--stac-url", url, "--tile-size", str(tile), "--workers", "1", "--out", str(out),
                *OPTIONS,
            ])  # fmt: skip
            outs[tile] = out
    return catalog, outs


def _read(path, band=1):
    import rasterio

    with rasterio.open(path) as src:
        return src.read(band), src


def _planted_on_map(catalog, like):
    """The catalog's planted.tif on the map's grid (nearest; both are 10 m on EPSG:32632)."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    out = np.zeros(like.shape, np.uint8)
    with rasterio.open(catalog / "planted.tif") as p:
        reproject(
            p.read(1), out, src_transform=p.transform, src_crs=p.crs,
            dst_transform=like.transform, dst_crs=like.crs, resampling=Resampling.nearest,
        )  # fmt: skip
    return out == 1


def test_ood_flags_the_planted_glacier_and_few_others(planted_runs):
    catalog, outs = planted_runs
    out = outs[256]
    ood, src = _read(out / "ood.tif")
    planted = _planted_on_map(catalog, src)
    valid = np.isfinite(ood)
    assert (planted & valid).sum() == 36
    flagged = ood > 1
    planted_rate = flagged[planted & valid].mean()
    other_rate = flagged[~planted & valid].mean()
    print(f"ood: {planted_rate:.3f} of the planted pixels flagged, {other_rate:.4f} of the others")
    assert planted_rate >= 0.8 and other_rate <= 0.05
    report = json.loads((out / "run.json").read_text())
    assert report["ood"]["k"] == 20 and report["ood"]["quantile"] == 0.99
    assert report["ood"]["threshold"] > 0
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["s2lc:ood"]["threshold"] == report["ood"]["threshold"]
    assert item["properties"]["s2lc:postprocess"] == {"majority": 1, "mmu": 9}


def test_uncertainty_layers_in_the_cogs_the_store_and_the_item(planted_runs):
    import xarray as xr

    _, outs = planted_runs
    out = outs[256]
    classes, _ = _read(out / "classes.tif")
    mapped = classes != 255
    ds = xr.open_zarr(out / "map.zarr", decode_coords="all")
    probs = ds["topk_probs"].values  # k = 3 of the 6 demo classes: top-1 and top-2 are there
    for name in ("margin", "entropy", "ood"):
        values, src = _read(out / f"{name}.tif")
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        assert np.isfinite(values[mapped]).all() and np.isnan(values[~mapped]).all()
        np.testing.assert_array_equal(ds[name].values, values)
    margin, _ = _read(out / "margin.tif")
    np.testing.assert_allclose(margin[mapped], (probs[0] - probs[1])[mapped], atol=1e-6)
    entropy, _ = _read(out / "entropy.tif")
    assert (entropy[mapped] >= 0).all() and (entropy[mapped] <= 1).all()
    item = json.loads((out / "item.json").read_text())
    for name in ("margin", "entropy", "ood", "classes_raw", "postprocessed"):
        assert item["assets"][name]["href"] == f"./{name}.tif"
    assert "classification:classes" in item["assets"]["classes_raw"]


def test_postprocessing_is_the_same_whatever_the_tiling(planted_runs):
    from pipeline.writers.postprocess import postprocess

    _, outs = planted_runs
    for name in ("classes_raw", "classes", "postprocessed"):
        a, _ = _read(outs[64] / f"{name}.tif")
        b, _ = _read(outs[256] / f"{name}.tif")
        np.testing.assert_array_equal(a, b, err_msg=name)
    ood64, _ = _read(outs[64] / "ood.tif")
    ood256, _ = _read(outs[256] / "ood.tif")
    np.testing.assert_allclose(ood64, ood256, rtol=1e-5)
    raw, _ = _read(outs[64] / "classes_raw.tif")
    classes, _ = _read(outs[64] / "classes.tif")
    flag, _ = _read(outs[64] / "postprocessed.tif")
    # the published map is the whole map post-processed at once; nodata never filled
    expect, expect_flag = postprocess(raw, majority=1, mmu=9)
    np.testing.assert_array_equal(classes, expect)
    np.testing.assert_array_equal(flag, expect_flag)
    assert ((classes == 255) == (raw == 255)).all()
    assert (flag == 1).sum() == ((classes != raw) & (raw != 255)).sum() > 0
    # the test can tell: post-processing each 64 px tile on its own gives another map
    per_tile = raw.copy()
    for r in range(0, raw.shape[0], 64):
        for c in range(0, raw.shape[1], 64):
            per_tile[r : r + 64, c : c + 64] = postprocess(raw[r : r + 64, c : c + 64], 1, 9)[0]
    assert (per_tile != classes).any()
    # the store agrees with the COGs
    import xarray as xr

    ds = xr.open_zarr(outs[64] / "map.zarr", decode_coords="all")
    np.testing.assert_array_equal(ds["classes"].values, classes)
    np.testing.assert_array_equal(ds["classes_raw"].values, raw)
    report = json.loads((outs[64] / "run.json").read_text())
    assert report["postprocess"]["changed_pixels"] == int((flag == 1).sum())
