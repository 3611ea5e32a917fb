"""Small runs use all workers: a region smaller than workers x tile is split into finer tiles
(issue 13), the grid's extent never changes, and a resumed run keeps its recorded tiling."""

from __future__ import annotations

import datetime as dt

import pytest
from shapely.geometry import box

from aoi import load_region
from pipeline.grid.cells import fit_tiles_to_workers, output_grid
from pipeline.run.checks import resolve_region
from pipeline.run.cluster import ClusterConfig
from pipeline.run.config import RunConfig
from pipeline.run.prepare import fit_tile_size as _fit_tile_size

YEAR = {"start": dt.date(2023, 1, 1), "end": dt.date(2023, 12, 31)}


def _demo(**kw) -> RunConfig:
    return RunConfig.from_flat({"region": "demo", **YEAR, "untrained": True, **kw})


def fit_tile_size(cfg: RunConfig, cluster: ClusterConfig, previous):
    """The driver's fit on the region that the cheap checks resolve."""
    return _fit_tile_size(cfg, *resolve_region(cfg.region, cfg.bbox), cluster, previous)


@pytest.mark.parametrize(
    ("workers", "expected_tile", "expected_tiles"),
    [(1, 256, 1), (2, 128, 4), (4, 128, 4), (8, 64, 16), (100, 64, 16)],
)
def test_demo_region_is_split_so_every_worker_gets_a_tile(workers, expected_tile, expected_tiles):
    cfg, grid = fit_tile_size(_demo(tile_size=256), ClusterConfig(workers=workers), None)
    assert cfg.chips.tile_size == expected_tile == grid.tile_size
    region = load_region("demo")
    assert grid == output_grid(region.geometry, region.crs, region.resolution, expected_tile)
    assert len(grid.tiles) == expected_tiles
    assert grid.geobox.shape == (200, 200)  # same extent, only a finer tiling


def test_regions_with_enough_tiles_keep_the_tile_size_asked_for():
    cfg, _ = fit_tile_size(_demo(tile_size=100), ClusterConfig(workers=2), None)
    assert cfg.chips.tile_size == 100  # 4 tiles already: the demo map is unchanged


def test_a_patch_model_is_never_split_below_its_chip_window():
    cfg = _demo(tile_size=256, model="senclip", window=100, stride=50)
    assert fit_tile_size(cfg, ClusterConfig(workers=8), None)[0].chips.tile_size == 128


def test_a_resumed_run_keeps_the_tiling_in_its_manifest_whatever_the_workers_now():
    previous = {"config": {"tile_size": 64}}
    cfg, grid = fit_tile_size(_demo(tile_size=256), ClusterConfig(workers=1), previous)
    assert cfg.chips.tile_size == 64 == grid.tile_size


def test_the_output_hash_is_that_of_the_tile_size_asked_for():
    asked = _demo(tile_size=256)
    fitted, _ = fit_tile_size(asked, ClusterConfig(workers=2), None)
    assert fitted.chips.tile_size == 128
    assert asked.output_hash() != fitted.output_hash()  # so the driver hashes before fitting


def test_gridded_tiles_still_divide_the_100_km_cell():
    # A ~1 km square in EPSG:3035 (the continental grid): 500 px tiles are halved while the
    # tiles are too few, but never below an integer edge that divides the 10,000 px cell.
    geom = box(10.0, 50.0, 10.014, 50.009)
    few = fit_tiles_to_workers(geom, "EPSG:3035", 10.0, 500, 2, 0).tile_size
    assert few < 500 and 10_000 % few == 0
    assert len(output_grid(geom, "EPSG:3035", 10.0, few).tiles) >= 2
    many = fit_tiles_to_workers(geom, "EPSG:3035", 10.0, 500, 64, 0).tile_size
    assert many == 125  # 62.5 is not a pixel count: the split stops there
