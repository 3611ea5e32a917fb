"""Small and thin regions (issue 25, point 3): every region that touches a pixel is mapped.

1 x 1, 1 x N and N x 1 px maps, and a strip narrower than a pixel, go through the real chain:
:func:`pixel_footprint` -> :func:`make_grid` -> :func:`aoi_mask` -> Zarr store and tile GeoTIFFs
-> COGs, read back with GDAL and xarray. A region that touches no pixel is refused up front.
Cases ``one-pixel-region-cog-crash`` (a 1 x 1 map crashed in the COG writer) and
``thin-region-empty-map`` (an 8 m x 400 m strip ended "complete" with no mapped pixel: now its
80 touched pixels, 2 x 40, are mapped).
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from aoi import to_crs
from pipeline.base.errors import UserError
from pipeline.grid.tiling import aoi_mask, make_grid, pixel_footprint
from pipeline.writers import (
    TileResult,
    build_cogs,
    create_map_store,
    open_map,
    write_tile,
    write_tile_rasters,
)

UTM = "EPSG:32632"
NAMES = ["water", "tree cover", "crop land"]
COLORS = ["#1f78b4", "#33a02c", (255, 200, 0)]
PERIODS = ["2023"]
BANDS = ["B2"]

# (UTM box, expected map shape (rows, cols)).
REGIONS = {
    "1x1": ((600_100, 5_340_100, 600_110, 5_340_110), (1, 1)),
    "1x5": ((600_100, 5_340_100, 600_150, 5_340_110), (1, 5)),
    "5x1": ((600_100, 5_340_100, 600_110, 5_340_150), (5, 1)),
    # The case's strip: between the pixel-centre columns x = 600105 and 600115, no centre inside.
    "strip-8m": ((600_106, 5_340_100, 600_114, 5_340_500), (40, 2)),
}


def _region(bounds):
    return to_crs(box(*bounds), "EPSG:4326", src=UTM)


def _result(tile, mask):
    h, w = tile.shape
    m = mask[tile.window]
    cls = np.where(m, 1, 255).astype(np.uint8)
    conf = np.where(m, 0.75, np.nan).astype(np.float32)
    return TileResult(
        classes=cls,
        confidence=conf,
        topk_classes=cls[None],
        topk_probs=conf[None],
        valid_obs=np.where(m, 3, 0)[None].astype(np.uint16),
        composite=np.full((1, 1, h, w), 0.1, np.float32),
        embeddings=None,
        rgb=np.where(m, 100, 0)[None].repeat(3, 0).astype(np.uint8),
    )


@pytest.mark.parametrize("name", sorted(REGIONS))
def test_small_and_thin_regions_are_mapped_as_cog_and_zarr(name, tmp_path, caplog):
    bounds, shape = REGIONS[name]
    geom = pixel_footprint(_region(bounds), UTM, 10)
    grid = make_grid(geom, UTM, 10, 32)
    assert grid.shape == shape
    mask = aoi_mask(grid.geobox, geom)
    assert mask.all(), "every pixel the region touches is inside it"

    store, tiles = tmp_path / "map.zarr", tmp_path / "tiles"
    create_map_store(store, grid, class_names=NAMES, k=1, period_labels=PERIODS, band_names=BANDS)
    for tile in grid.tiles:
        r = _result(tile, mask)
        write_tile(store, tile, r)
        write_tile_rasters(tiles / tile.id, tile, r, period_labels=PERIODS)
    with caplog.at_level("WARNING"):
        cogs = build_cogs(tiles, tmp_path / "out", grid, NAMES, COLORS, period_labels=PERIODS)
    assert "PHOTOMETRIC" not in caplog.text  # a healthy run's log stays quiet

    with rasterio.open(cogs["classes"]) as src:
        assert src.shape == shape and src.crs == grid.geobox.crs
        assert src.transform.almost_equals(grid.geobox.affine)
        np.testing.assert_array_equal(src.read(1), np.ones(shape, np.uint8))
    with rasterio.open(cogs["valid_obs"]) as src:
        assert (src.read(1) == 3).all()
    with rasterio.open(cogs["composite_rgb"]) as src:  # RGB without GDAL's PHOTOMETRIC warning
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue"]
    ds = open_map(store)
    np.testing.assert_array_equal(ds.classes.values, np.ones(shape, np.uint8))
    assert ds.odc.geobox == grid.geobox


def test_a_region_with_a_pixel_centre_keeps_the_centre_rule():
    """The footprint rule applies only to regions holding no pixel centre (the demo maps keep
    their pixels): a 24 m square keeps its own geometry and the 2 x 2 centres inside it."""
    geom = _region((600_100, 5_340_100, 600_124, 5_340_124))
    assert pixel_footprint(geom, UTM, 10) is geom
    grid = make_grid(geom, UTM, 10, 32)
    assert int(aoi_mask(grid.geobox, geom).sum()) == 4


def test_a_region_that_touches_no_pixel_is_refused():
    flat = _region((600_100, 5_340_100, 600_100, 5_340_200))  # zero width
    with pytest.raises(UserError, match="touches no 10 m pixel"):
        pixel_footprint(flat, UTM, 10)


def test_the_few_shot_demo_legend_does_not_call_its_classes_not_land_cover(tmp_path):
    """The few-shot demo (untrained encoder + a head fitted on labelled points) reports its
    accuracy; its legend and viewer banner say what it is instead of "not land cover"."""
    import json

    from pipeline.writers import write_legend_json

    kw = dict(
        class_names=NAMES, colors=COLORS, legend_name="demo", prompt_hash=None, untrained=True
    )
    head = json.loads(
        write_legend_json(tmp_path / "h.json", style="few-shot head", **kw).read_text()
    )
    zero = json.loads(write_legend_json(tmp_path / "z.json", style="prompts", **kw).read_text())
    assert "few-shot head" in head["warning"] and "not land cover" not in head["warning"]
    assert "not land cover" in zero["warning"]
