"""End to end: the patch model (SenCLIP, sliding windows) maps the demo window seamlessly, and
the same map whatever the tile size: `python -m pipeline run` at tiles of 32 and 48 px through the
real local STAC API with a LocalCluster of 2 worker processes."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.demo_map import base_args, inner_bbox, run


@pytest.fixture(scope="module")
def env(demo_catalog):
    return {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_senclip_seamless_across_tile_sizes(env, tmp_path):
    import xarray as xr

    outs = []
    for tile in (32, 48):
        out = tmp_path / f"senclip{tile}"
        run(
            [*base_args("senclip", tile), "--window", "32", "--stride", "16", "--out", str(out)],
            env,
        )
        outs.append(xr.open_zarr(out / "map.zarr"))
    a, b = outs
    np.testing.assert_allclose(a["topk_probs"].values, b["topk_probs"].values, atol=1e-5)
    np.testing.assert_array_equal(a["classes"].values, b["classes"].values)
    # Seamless: every pixel inside the region is classified. The lon/lat box is slightly rotated
    # on the UTM grid, so a few edge pixels of its envelope lie outside it and are nodata.
    import rasterio
    from pyproj import Transformer

    with rasterio.open(tmp_path / "senclip32" / "classes.tif") as src:
        rows, cols = np.nonzero(a["classes"].values == 255)
        xs, ys = rasterio.transform.xy(src.transform, rows, cols)
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    w, s, e, n = inner_bbox()
    inside = (
        (np.asarray(lon) > w)
        & (np.asarray(lon) < e)
        & (np.asarray(lat) > s)
        & (np.asarray(lat) < n)
    )
    assert not inside.any(), f"{int(inside.sum())} nodata pixels inside the region"
    assert len(rows) < 0.05 * a["classes"].size
