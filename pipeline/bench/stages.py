"""Per-pixel CPU cost of the data path, measured alone on one core (for the projection).

The demo run's worker-seconds include waiting for cores that inference holds, so the projection
takes its CPU rates from here instead: load + composite of the demo window with one reader
thread, per-tile raster writes, and the COG mosaic of a synthetic map.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.bench.results import Entry


def data_path_entry() -> Entry:
    from aoi import load_region
    from pipeline.composite.median import composite
    from pipeline.grid.tiling import make_grid
    from pipeline.reading.cube import load_cube
    from pipeline.stac.search import SearchConfig, search_items
    from pipeline.testing.demo import DEMO_AOI, ensure_demo_catalog

    region = load_region("demo")
    catalog = ensure_demo_catalog()
    items = search_items(region.geometry, region.start, region.end, SearchConfig(profile="demo"))
    grid = make_grid(region.geometry, region.crs, region.resolution, 256)
    geobox = grid.geobox
    t = time.perf_counter()
    cube = load_cube(items, geobox, pool=1)
    values = np.asarray(cube.values, np.float32)
    t_load = time.perf_counter() - t
    composite(values[:, :, :4, :4], cube["time"].values, region.start, region.end, "monthly")
    t = time.perf_counter()  # compiled above: the kernel's first call compiles it
    composite(values, cube["time"].values, region.start, region.end, "monthly")
    t_comp = time.perf_counter() - t
    px = geobox.shape[0] * geobox.shape[1]
    t_mosaic, mosaic_px = _mosaic_seconds()
    return Entry(
        "data_path_cpu_s_per_mpx",
        (t_load + t_comp) / px * 1e6,
        "core-seconds per Mpx",
        threads=1,
        notes={
            "load_s_per_mpx": t_load / px * 1e6,
            "composite_s_per_mpx": t_comp / px * 1e6,
            "mosaic_s_per_mpx": t_mosaic / mosaic_px * 1e6,
            "scenes": len(items),
            "window_px": list(geobox.shape),
            "aoi": list(DEMO_AOI),
            "catalog": str(catalog),
        },
    )


def _mosaic_seconds(
    size: int = 2048,
    tile: int = 512,
    clock=time.perf_counter,
    threads: int | None = None,
    layers: dict[str, float] | None = None,
) -> tuple[float, int]:
    """Seconds (of ``clock``) to mosaic a synthetic size x size map of per-tile GeoTIFFs into the
    three COGs, and its pixel count; ``threads`` and ``layers`` (each layer's CPU seconds) as
    :func:`pipeline.writers.build_cogs` takes them."""
    from shapely.geometry import box

    from aoi import to_crs
    from pipeline.grid.tiling import make_grid
    from pipeline.writers import TileResult, build_cogs, write_tile_rasters

    x0, y0 = 600000.0, 5340000.0
    geom = to_crs(box(x0, y0, x0 + size * 10, y0 + size * 10), "EPSG:4326", src="EPSG:32632")
    grid = make_grid(geom, "EPSG:32632", 10.0, tile)
    rng = np.random.default_rng(0)
    names, colors = [f"c{i}" for i in range(8)], ["#336699"] * 8
    with tempfile.TemporaryDirectory(prefix="s2lc-mosaic-") as tmp:
        tiles = Path(tmp) / "tiles"
        for tl in grid.tiles:
            h, w = tl.geobox.shape
            # Smooth, map-like classes (parcels), not noise: compression sees real structure.
            cls = (np.add.outer(np.arange(h) // 37, np.arange(w) // 53) % 8).astype(np.uint8)
            write_tile_rasters(
                tiles / tl.id,
                tl,
                TileResult(
                    classes=cls,
                    confidence=rng.uniform(0.3, 1, (h, w)).astype(np.float32),
                    topk_classes=cls[None],
                    topk_probs=np.ones((1, h, w), np.float32),
                    valid_obs=_valid_obs(rng, h, w),
                ),
            )
        t = clock()
        build_cogs(
            tiles, Path(tmp) / "out", grid, names, colors, threads=threads, cpu_seconds=layers
        )
        return clock() - t, grid.geobox.shape[0] * grid.geobox.shape[1]


def _valid_obs(rng: np.random.Generator, h: int, w: int, periods: int = 12) -> np.ndarray:
    """(period, y, x) uint16 counts 0-6 shaped like cloud cover: 64 px blobs, not a constant
    (a constant compresses to nothing and made the valid_obs COG look free)."""
    blobs = rng.integers(0, 7, (periods, h // 64 + 2, w // 64 + 2)).astype(np.uint16)
    return np.kron(blobs, np.ones((1, 64, 64), np.uint16))[:, :h, :w]
