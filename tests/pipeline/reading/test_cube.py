"""The reflectance cube: lazy odc-stac load, harmonisation across layouts, masks, any GeoBox."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from odc.geo.geobox import GeoBox

from pipeline.reading.cube import MaskConfig, load_cube
from pipeline.stac.bands import BANDS
from pipeline.testing.demo import DEMO_AOI, generate_catalog, landscape_of


def _items(catalog: Path) -> list[pystac.Item]:
    feats = json.loads((catalog / "items.json").read_text())["features"]
    return [pystac.Item.from_dict(f) for f in feats]


def _scl10(item: pystac.Item, key: str) -> np.ndarray:
    with rasterio.open(item.assets[key].href) as src:
        scl = src.read(1)
    return np.repeat(np.repeat(scl, 2, 0), 2, 1)


@pytest.fixture(scope="module")
def small_geobox(small_params) -> GeoBox:
    return GeoBox.from_bbox(small_params["bounds"], crs="EPSG:32632", resolution=10)


def test_lazy_cube_shape_and_coords(small_catalog, small_geobox):
    cube = load_cube(_items(small_catalog), small_geobox, chunks={"x": 32, "y": 32})
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.dtype == np.float32 and list(cube.band.values) == list(BANDS)
    assert cube.shape == (12, 10, 64, 64)
    assert hasattr(cube.data, "dask") and cube.data.chunksize[-2:] == (32, 32)
    assert cube.odc.geobox == small_geobox and cube.odc.crs.epsg == 32632
    times = cube.time.values.astype("datetime64[D]").astype(object)
    assert times[0] == dt.date(2023, 5, 1) and times[-1] == dt.date(2023, 6, 26)


def test_clear_pixels_equal_the_truth_spectra(small_catalog, small_geobox):
    """Loaded reflectance = the generator's ground spectra where SCL is clear; NaN where masked."""
    items = _items(small_catalog)
    cube = load_cube(items, small_geobox).values
    land = landscape_of(small_catalog)
    checked = 0
    for t, item in enumerate(items):
        scl = _scl10(item, "scl")
        masked = np.isin(scl, (0, 1, 3, 8, 9, 10, 11))
        assert np.isnan(cube[t]).all(axis=0)[masked].all()
        assert not np.isnan(cube[t]).any(axis=0)[~masked].any()
        clear = np.isin(scl, (4, 5, 6))
        if clear.sum() < 200:
            continue
        truth = land.reflectance(item.datetime.timetuple().tm_yday)
        for b, band in enumerate(BANDS):
            rel = np.abs(cube[t, b][clear] - truth[b][clear]) / truth[b][clear]
            # 10 m bands: 1 % noise + 1.5 % scene factor; 20 m bands also mix 2x2 texture
            limit = 0.05 if band in ("B2", "B3", "B4", "B8") else 0.08
            assert np.median(rel) < limit, (item.id, band, np.median(rel))
        checked += 1
    assert checked >= 3


def test_boa_offset_layouts_give_equal_reflectance(small_catalog, small_pc_catalog, small_geobox):
    es = load_cube(_items(small_catalog), small_geobox).values
    pc = load_cube(_items(small_pc_catalog), small_geobox).values
    assert _items(small_pc_catalog)[0].properties["s2:processing_baseline"] == "05.09"
    np.testing.assert_array_equal(np.isnan(es), np.isnan(pc))
    np.testing.assert_allclose(es, pc, atol=1e-6, equal_nan=True)
    assert np.nanmin(es) >= 0 and 0.01 < np.nanmedian(es) < 0.5


def test_pre_0400_items_are_unchanged(tmp_path, small_params, small_catalog, small_geobox):
    params = {**small_params, "dates": small_params["dates"][:3]}
    old = generate_catalog(
        tmp_path / "old", layout="planetary-computer", baseline="03.01", **params
    )
    items = _items(old)
    with rasterio.open(items[0].assets["B04"].href) as src:
        dn = src.read(1)
    cube = load_cube(items, small_geobox).values
    ref = load_cube(_items(small_catalog)[:3], small_geobox).values
    np.testing.assert_allclose(cube, ref, atol=1e-6, equal_nan=True)
    scl = _scl10(items[0], "SCL")
    ok = (dn > 0) & ~np.isin(scl, (0, 1, 3, 8, 9, 10, 11))
    np.testing.assert_allclose(cube[0, 2][ok], dn[ok] / 1e4, atol=1e-6)  # plain DN / 10000


def test_mixed_layouts_load_together(small_catalog, small_pc_catalog, small_geobox):
    """Each layout gets its own offset, and one solar day stays one time step (one observation)."""
    es, pc = _items(small_catalog)[:2], _items(small_pc_catalog)[:2]
    cube = load_cube([*es, *pc], small_geobox).values
    assert cube.shape[0] == 2  # two days, not four: same-day groups are fused after scaling
    np.testing.assert_allclose(cube, load_cube(es, small_geobox).values, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(cube, load_cube(pc, small_geobox).values, atol=1e-6, equal_nan=True)


def test_snow_mask_is_configurable_and_nodata_is_always_nan(demo_catalog):
    items = _items(demo_catalog)
    snowy = next(it for it in items if it.properties["s2:snow_ice_percentage"] > 5)
    swath = next(it for it in items if it.properties["s2:nodata_pixel_percentage"] > 5)
    gb = GeoBox.from_bbox(DEMO_AOI, crs="EPSG:32632", resolution=10)
    masked = load_cube([snowy], gb).values[0]
    kept = load_cube([snowy], gb, mask=MaskConfig(mask_snow=False)).values[0]
    snow = _scl10(snowy, "scl")[64:264, 64:264] == 11
    assert snow.sum() > 100
    assert np.isnan(masked[:, snow]).all()
    assert (kept[1][snow] > 0.5).all()  # bright snow in green
    raw = load_cube([swath], gb, mask=MaskConfig(use_scl=False)).values[0]
    outside = _scl10(swath, "scl")[64:264, 64:264] == 0
    assert outside.sum() > 100 and np.isnan(raw[:, outside]).all()
    assert not np.isnan(raw[:, ~outside]).any()


def test_any_geobox_tile_window_and_other_crs(demo_catalog):
    items = _items(demo_catalog)[20:26]
    full = load_cube(items, GeoBox.from_bbox(DEMO_AOI, crs="EPSG:32632", resolution=10)).values
    tile = GeoBox.from_bbox((600500, 5340500, 601000, 5341000), crs="EPSG:32632", resolution=10)
    window = load_cube(items, tile, chunks={}).values
    np.testing.assert_array_equal(window, full[:, :, 100:150, 50:100])
    laea = GeoBox.from_bbox((4347200, 2788500, 4348200, 2789500), crs="EPSG:3035", resolution=20)
    other = load_cube(items, laea)
    assert other.shape == (6, 10, 50, 50) and other.odc.crs.epsg == 3035
    vals = other.values
    assert np.isfinite(vals).any() and np.nanmax(vals) < 2


def test_masked_scl_is_nan_for_all_bands(small_catalog, small_geobox):
    items = _items(small_catalog)
    cube = load_cube(items, small_geobox, mask=MaskConfig(mask_snow=True)).values
    nan = np.isnan(cube)
    assert (nan.all(axis=1) | ~nan.any(axis=1)).all()  # a pixel is valid in all bands or none
