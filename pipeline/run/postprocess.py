"""The post-processing stage of a run (``--majority``, ``--mmu``): once every tile is done, the
raw classes of the whole map are filtered at once (:func:`pipeline.writers.postprocess.postprocess`),
so a region that spans tiles is one region and the result does not depend on ``--tile-size``.

The tiles wrote their classes twice, as ``classes`` and ``classes_raw``; this stage reads
``classes_raw`` from the store, and writes the filtered ``classes`` and the ``postprocessed``
flag into the store and into each tile's GeoTIFFs, which :func:`pipeline.writers.build_cogs`
then mosaics. It always starts from the raw classes, so a rerun (after a crash while publishing)
gives the same map. It holds the whole map in memory (about 10 bytes per pixel): regional
runs only; gridded (continental) runs refuse the options (see the README).
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
from pipeline.writers.zarr_map import read_layer, write_layer

_log = logging.getLogger(__name__)

__all__ = ["postprocess_map"]


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
