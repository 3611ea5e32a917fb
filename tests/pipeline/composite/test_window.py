"""The one window path of map tiles and point windows: items touching a window, load, composite."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from affine import Affine

START, END = dt.date(2023, 1, 1), dt.date(2023, 12, 31)


def _geobox(row: int, col: int, h: int, w: int, res: float = 10.0):
    from odc.geo.geobox import GeoBox

    from pipeline.bench.cogs import ORIGIN

    t = Affine(res, 0, ORIGIN[0] + col * 10, 0, -res, ORIGIN[1] - row * 10)
    return GeoBox((h, w), t, "EPSG:32632")


@pytest.fixture(scope="module")
def es_scenes(tmp_path_factory) -> list[dict]:
    """Three Earth-Search-like acquisitions, 256 px at 10 m (seed 3)."""
    from pipeline.bench.cogs import provider_scenes

    return provider_scenes(tmp_path_factory.mktemp("es-like"), size=256, n=3, block=128, seed=3)


def test_item_index_finds_the_items_touching_a_window_in_their_order():
    from shapely.geometry import box, mapping

    from pipeline.composite.window import ItemIndex, items_for

    gb = _geobox(0, 0, 64, 64)
    west, south, east, north = gb.extent.to_crs("EPSG:4326").boundingbox
    far = box(west + 1, south + 1, east + 1, north + 1)  # a degree away
    items = [
        {"id": "a", "geometry": mapping(box(west, south, east, north))},
        {"id": "far", "geometry": mapping(far)},
        {"id": "none", "geometry": None},  # no footprint: touches nothing
        {"id": "b", "geometry": mapping(box(east - 1e-4, south, east + 1, north))},
    ]
    assert [d["id"] for d in ItemIndex(items).for_window(gb)] == ["a", "b"]
    assert [d["id"] for d in items_for(items, gb)] == ["a", "b"]


def test_a_window_no_scene_touches_is_nodata():
    from pipeline.composite.window import composite_window
    from pipeline.stac.bands import BANDS

    w = composite_window((), _geobox(0, 0, 8, 6), start=START, end=END, period="quarterly")
    assert w.acquisitions == 0 and w.offset_warnings == {}
    assert w.composite.values.shape == (4, len(BANDS), 8, 6)
    assert np.isnan(w.composite.values).all() and (w.composite.counts == 0).all()


@pytest.mark.parametrize("native", [True, False])
def test_window_composite_is_the_composite_of_the_loaded_cube(es_scenes, native):
    """Both readers (the fast path of map tiles, odc-stac's warp of point windows) give the
    composite of odc-stac's cube, bit for bit."""
    from pipeline.composite.median import composite
    from pipeline.composite.window import composite_window
    from pipeline.reading.cube import MaskConfig, load_cube

    gb = _geobox(3, 5, 100, 77)
    w = composite_window(
        es_scenes, gb, start=START, end=END, period="monthly", mask_snow=True, native=native
    )
    cube = load_cube(es_scenes, gb, mask=MaskConfig(mask_snow=True))
    ref = composite(np.asarray(cube.values, np.float32), cube["time"].values, START, END, "monthly")
    assert w.acquisitions == cube.sizes["time"] == 3
    np.testing.assert_array_equal(w.composite.values, ref.values)
    np.testing.assert_array_equal(w.composite.counts, ref.counts)
    assert np.isfinite(w.composite.values).any()
