"""The post-processing stage of a run (``--majority``, ``--mmu``): once every tile is done, the
raw classes are filtered as one map, so a region that spans tiles or cells is one region and the
result does not depend on ``--tile-size`` or on the cell grid.

The tiles wrote their classes twice, as ``classes`` and ``classes_raw``; this stage reads
``classes_raw`` from the store, and writes the filtered ``classes`` and the ``postprocessed``
flag into the store and into each tile's GeoTIFFs, which :func:`pipeline.writers.build_cogs`
then mosaics. It always starts from the raw classes, so a rerun (after a crash while publishing)
gives the same map.

- :func:`postprocess_map` (regional runs) holds the whole map in memory (about 10 bytes per
  pixel) and filters it at once (:func:`pipeline.writers.postprocess.postprocess`).
- :func:`postprocess_cells` (gridded runs, 100 km EEA cells) holds one cell at a time (about 20
  bytes per pixel of a cell plus the majority filter's halo) and a table of the regions that
  reach a cell's border (:func:`pipeline.writers.postprocess_blocks.postprocess_blocks`); its
  result is the whole-map one. No cell is published before it has run.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from pipeline.run.config import RunConfig
from pipeline.run.prepare import Prepared
from pipeline.run.workspace import Workspace
from pipeline.writers.cog import rewrite_tile_layers
from pipeline.writers.postprocess import postprocess
from pipeline.writers.postprocess_blocks import BlockIO, postprocess_blocks
from pipeline.writers.tile_result import CLASS_NODATA
from pipeline.writers.zarr_map import read_layer, write_layer

_log = logging.getLogger(__name__)

__all__ = ["postprocess_cells", "postprocess_map"]


def postprocess_map(cfg: RunConfig, prep: Prepared, ws: Workspace) -> dict[str, float | int]:
    """Filter the whole map's raw classes into ``classes`` and ``postprocessed`` (store and tile
    GeoTIFFs); returns what run.json records (options, changed pixels, seconds)."""
    t0 = time.perf_counter()
    raw = read_layer(ws.store, "classes_raw")
    out, flag = postprocess(raw, cfg.output.majority, cfg.output.mmu)
    write_layer(ws.store, "classes", out)
    write_layer(ws.store, "postprocessed", flag)
    for tile in prep.grid.tiles:
        d = ws.tile_dir(tile.id)
        if d.is_dir():
            ys, xs = tile.window
            rewrite_tile_layers(d, tile, {"classes": out[ys, xs], "postprocessed": flag[ys, xs]})
    changed = int((flag == 1).sum())
    valid = int((raw != 255).sum())
    _log.info(
        "post-processing (majority radius %d, mmu %d px): %d of %d pixels changed",
        cfg.output.majority,
        cfg.output.mmu,
        changed,
        valid,
    )
    return {
        "majority": cfg.output.majority,
        "mmu": cfg.output.mmu,
        "changed_pixels": changed,
        "changed_share": float(changed / valid) if valid else float(np.nan),
        "seconds": time.perf_counter() - t0,
    }


def postprocess_cells(cfg: RunConfig, prep: Prepared, ws: Workspace) -> dict[str, float | int]:
    """A gridded run's post-processing, one 100 km cell at a time, exactly the whole map's.

    Every tile must be done (the sieve's regions may span any number of cells). Writes
    ``classes`` and ``postprocessed`` into the store and the cells' tile GeoTIFFs; returns what
    run.json records (options, sieve passes, changed pixels, seconds).
    """
    from pipeline.grid.cells import cells_of

    t0 = time.perf_counter()
    store = ws.store
    cells = list(cells_of(prep.grid).values())
    io = BlockIO(
        read_raw=lambda ys, xs: read_layer(store, "classes_raw", (ys, xs)),
        read=lambda ys, xs: read_layer(store, "classes", (ys, xs)),
        write=lambda ys, xs, data: write_layer(store, "classes", data, (ys, xs)),
    )
    passes = postprocess_blocks(
        prep.grid.shape,
        [c.window for c in cells],
        io,
        majority=cfg.output.majority,
        mmu=cfg.output.mmu,
    )
    changed = valid = 0
    for cell in cells:
        raw, out = (
            read_layer(store, "classes_raw", cell.window),
            read_layer(store, "classes", cell.window),
        )
        flag = np.where(raw == CLASS_NODATA, CLASS_NODATA, (out != raw).astype(np.uint8))
        flag = flag.astype(np.uint8)
        write_layer(store, "postprocessed", flag, cell.window)
        changed += int((flag == 1).sum())
        valid += int((raw != CLASS_NODATA).sum())
        for tile in cell.grid.tiles:  # windows relative to the cell
            d = ws.tile_dir(tile.id)
            if d.is_dir():
                ty, tx = tile.window
                rewrite_tile_layers(
                    d, tile, {"classes": out[ty, tx], "postprocessed": flag[ty, tx]}
                )
    _log.info(
        "post-processing (majority radius %d, mmu %d px) over %d cells, %d sieve passes: "
        "%d of %d pixels changed",
        cfg.output.majority,
        cfg.output.mmu,
        len(cells),
        passes,
        changed,
        valid,
    )
    return {
        "majority": cfg.output.majority,
        "mmu": cfg.output.mmu,
        "cells": len(cells),
        "sieve_passes": passes,
        "changed_pixels": changed,
        "changed_share": float(changed / valid) if valid else float(np.nan),
        "seconds": time.perf_counter() - t0,
    }
