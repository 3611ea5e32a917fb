"""End to end: the patch model (SenCLIP, sliding windows) maps the demo seamlessly, and the same
map whatever the tile size: the `run` command (in the test process) over a 400 m x 400 m box (40 x 40 px) at
tiles of 32 px (seams at column and row 32, where chips of 32 px at a stride of 16 reach across)
and of 48 px (one tile: no seam), through the real local STAC API with a LocalCluster of one
worker process (a seam is where two tiles meet, whichever process made each; each worker builds
the model anew, the run's largest fixed cost on so small a box)."""

from __future__ import annotations

import numpy as np

from tests.demo_map import base_args, inner_bbox, run_here

#: 40 x 40 px of the demo (EPSG:32632); classes of the untrained model change across the seams.
BOX_UTM = (600500.0, 5340500.0, 600900.0, 5340900.0)
SEAM = 32


def test_senclip_seamless_across_tile_sizes(demo_catalog, tmp_path):
    import xarray as xr

    outs = []
    for tile in (SEAM, 48):
        out = tmp_path / f"senclip{tile}"
        args = [*base_args("senclip", tile, BOX_UTM), "--window", "32", "--stride", "16"]
        args += ["--workers", "1"]  # run_here() says --workers 2; the last one given counts
        run_here([*args, "--out", str(out)])
        outs.append(xr.open_zarr(out / "map.zarr"))
    a, b = outs
    classes = a["classes"].values
    assert classes.shape[0] == 40 and 40 <= classes.shape[1] <= 42  # the lon/lat box snapped
    # the seams have something to break: more than one class on the pixels along them
    for along in (classes[SEAM - 2 : SEAM + 2], classes[:, SEAM - 2 : SEAM + 2]):
        assert len(np.setdiff1d(along, [255])) > 1
    np.testing.assert_allclose(a["topk_probs"].values, b["topk_probs"].values, atol=1e-5)
    np.testing.assert_array_equal(a["classes"].values, b["classes"].values)
    # Seamless: every pixel inside the region is classified. The lon/lat box is slightly rotated
    # on the UTM grid, so a few edge pixels of its envelope lie outside it and are nodata.
    import rasterio
    from pyproj import Transformer

    with rasterio.open(tmp_path / f"senclip{SEAM}" / "classes.tif") as src:
        rows, cols = np.nonzero(a["classes"].values == 255)
        xs, ys = rasterio.transform.xy(src.transform, rows, cols)
        lon, lat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    w, s, e, n = inner_bbox(BOX_UTM)
    inside = (
        (np.asarray(lon) > w)
        & (np.asarray(lon) < e)
        & (np.asarray(lat) > s)
        & (np.asarray(lat) < n)
    )
    assert not inside.any(), f"{int(inside.sum())} nodata pixels inside the region"
    h, w = classes.shape  # and those only on the envelope's outermost rows and columns
    assert (np.minimum.reduce([rows, cols, h - 1 - rows, w - 1 - cols]) == 0).all()
