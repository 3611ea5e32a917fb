"""20 m bands on the 10 m grid: each value comes from the 20 m pixel whose SCL masks it.

Found on real Sentinel-2 series (tests/real): with bilinear resampling a clear 10 m pixel next to
a cloudy 20 m pixel took 25-75 % of the cloud's reflectance in B5-B7, B8A, B11, B12, although
the SCL mask (nearest) called it clear.
"""

from __future__ import annotations

import json

import numpy as np
import pystac
import rasterio
from odc.geo.geobox import GeoBox

from pipeline.reading.cube import MaskConfig, load_cube
from pipeline.stac.bands import BANDS, EARTH_SEARCH_V1_KEYS, NATIVE_RESOLUTION, SCL, SCL_INVALID


def _read(item: pystac.Item, band: str) -> np.ndarray:
    with rasterio.open(item.assets[EARTH_SEARCH_V1_KEYS[band]].href) as src:
        return src.read(1)


def _up(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, 0), 2, 1)


def test_20m_bands_take_their_own_pixel_next_to_clouds(small_catalog, small_params):
    feats = json.loads((small_catalog / "items.json").read_text())["features"]
    items = [pystac.Item.from_dict(f) for f in feats]
    geobox = GeoBox.from_bbox(small_params["bounds"], crs="EPSG:32632", resolution=10)
    cube = load_cube(items, geobox).values
    edge_pixels = 0
    for t, item in enumerate(items):
        scl = _read(item, SCL)
        bad20 = np.isin(scl, SCL_INVALID + (11,))
        # clear 20 m pixels with a masked 4-neighbour: where bilinear leaks the cloud in
        pad = np.pad(bad20, 1)
        near_bad = pad[:-2, 1:-1] | pad[2:, 1:-1] | pad[1:-1, :-2] | pad[1:-1, 2:]
        edge = _up(near_bad & ~bad20)
        clear = ~_up(bad20)
        edge_pixels += int(edge.sum())
        for b, band in enumerate(BANDS):
            if NATIVE_RESOLUTION[band] != 20:
                continue
            expected = _up(_read(item, band)).astype(np.float64) * 1e-4
            got = cube[t, b]
            assert np.isnan(got[~clear]).all()
            np.testing.assert_allclose(got[clear], expected[clear], atol=1e-6, err_msg=band)
    assert MaskConfig().resampling == "nearest"
    assert edge_pixels > 100  # the catalog has cloud edges, so the test can tell the difference
