"""``run --bbox W S E N`` uses the box as given (issue 25, point 4).

The box became the region through ``%g`` (6 significant digits): a north edge at 50.81874 became
50.8187, and the map's top pixel row, whose centre lies at 50.818739, came out as nodata.
"""

from __future__ import annotations

import argparse

import numpy as np
from pyproj import Transformer

BOX = ["4.4", "50.8", "4.41", "50.81874"]


def _region(bbox: list[str]):
    from pipeline.commands.run import add_arguments, resolve
    from pipeline.grid.tiling import aoi_mask, make_grid
    from pipeline.run.checks import resolve_region

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = resolve(p.parse_args(["--bbox", *bbox, "--year", "2023", "--untrained"]))
    region, geom = resolve_region(cfg.region, cfg.bbox)
    grid = make_grid(geom, region.crs, region.resolution, 256)
    return cfg, region, geom, grid, aoi_mask(grid.geobox, geom)


def _row_centre_lat(region, grid, mask, row: int) -> float:
    a = grid.geobox.affine
    col = int(np.flatnonzero(mask[row])[0])
    x, y = a.c + (col + 0.5) * a.a, a.f + (row + 0.5) * a.e
    return Transformer.from_crs(region.crs, "EPSG:4326", always_xy=True).transform(x, y)[1]


def test_bbox_alone_keeps_full_precision_and_its_edge_row():
    cfg, region, geom, grid, mask = _region(BOX)
    assert cfg.region == "bbox:4.4,50.8,4.41,50.81874"
    assert cfg.bbox == (4.4, 50.8, 4.41, 50.81874)
    assert geom.bounds[3] == 50.81874 and region.geometry.bounds[3] == 50.81874
    top = int(np.flatnonzero(mask.any(axis=1))[0])
    lat = _row_centre_lat(region, grid, mask, top)
    assert 50.8187 < lat < 50.81874  # the row the rounded box cut off is mapped
    # The same box rounded as before holds one row fewer: that row is the one kept above.
    *_, rounded_mask = _region([*BOX[:3], "50.8187"])
    assert mask.sum(axis=1).astype(bool).sum() == rounded_mask.sum(axis=1).astype(bool).sum() + 1


def test_bbox_region_names_read_back_exactly():
    from aoi import BBOX_PREFIX, bbox_number, load_region

    assert [bbox_number(v) for v in (11, 48.3, 50.81874, -123.456789012)] == [
        "11", "48.3", "50.81874", "-123.456789012"
    ]  # fmt: skip
    r = load_region(BBOX_PREFIX + "100.1234567,10,100.2234567,10.1")
    assert r.geometry.bounds[0] == 100.1234567 and r.name == "bbox_100.1234567_10_100.2234567_10.1"


def test_a_box_with_lat_and_lon_swapped_is_named_as_such():
    """The README's Freising box given as S W N E misses the region: the error says why."""
    import pytest

    from pipeline.base.errors import UserError
    from pipeline.run.checks import resolve_region

    with pytest.raises(UserError, match="longitude first") as err:
        resolve_region("freising", (48.38, 11.70, 48.44, 11.80))
    assert "does not overlap region freising" in str(err.value)
    with pytest.raises(UserError) as err:  # simply elsewhere: no hint
        resolve_region("freising", (2.0, 40.0, 2.1, 40.1))
    assert "swapped" not in str(err.value)
