"""The map path on real series: ``run`` with both models completes on each site, every tile
finishes, the map covers exactly the site, and nodata is exactly where no clear observation is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .flanders import YEARS

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def senclip_maps(map_args, cli, tmp_path_factory) -> dict:
    outs = {}
    for tile in YEARS:
        out = tmp_path_factory.mktemp(f"senclip-{tile}") / "map"
        cli(*map_args(tile, out), "--model", "senclip")
        outs[tile] = out
    return outs


def _check_map(out, tile: str, real_root, scenes_in_year: int) -> None:
    import rasterio

    from . import flanders

    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["untrained"] is True
    assert run["tiles"]["failed"] == [] and run["tiles"]["done"] == run["tiles"]["total"]
    assert run["scenes"] == scenes_in_year, (
        "every acquisition of the year is used (--max-cloud 100)"
    )
    w, s, e, n = flanders.Site.find(real_root, tile).bounds()
    with rasterio.open(out / "classes.tif") as src:
        classes = src.read(1)
        assert src.crs.to_epsg() == flanders.EPSG
        assert tuple(src.bounds) == pytest.approx((w, s, e, n))
        assert src.nodata == 255
    with rasterio.open(out / "valid_obs.tif") as src:
        total_obs = src.read(1)
    assert classes.shape == (64, 64)
    np.testing.assert_array_equal(classes == 255, total_obs == 0)


@pytest.mark.parametrize("tile", list(YEARS))
def test_timesenclip_map_completes(tile, tsc_maps, real_root):
    _check_map(tsc_maps[tile], tile, real_root, _scenes(real_root, tile))


@pytest.mark.parametrize("tile", list(YEARS))
def test_senclip_map_completes(tile, senclip_maps, real_root):
    import rasterio

    from .test_real_composite import independent_composite

    out = senclip_maps[tile]
    _check_map(out, tile, real_root, _scenes(real_root, tile))
    # the annual clear count of the patch model's map is the year's count of clear acquisitions
    _, counts = independent_composite(real_root, tile, YEARS[tile])
    with rasterio.open(out / "valid_obs.tif") as src:
        np.testing.assert_array_equal(src.read(1), counts.sum(axis=0))


def _scenes(real_root, tile: str) -> int:
    from . import flanders

    ds10, _, _ = flanders.Site.find(real_root, tile).open()
    years = ds10["timestamp"].values.astype("datetime64[Y]").astype(np.int64) + 1970
    return int((years == YEARS[tile]).sum())
