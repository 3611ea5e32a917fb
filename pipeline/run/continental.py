"""Publishing a gridded run (EPSG:3035, 100 km EEA cells): cells as they complete, then the mosaics.

:func:`publish_cells` publishes every cell whose tiles are all done and that is not published
yet (a rerun skips finished cells; a cell with a failed tile waits for the rerun). With
``--majority``/``--mmu`` no cell is published until every tile is done and the whole map is
post-processed (:func:`pipeline.run.postprocess.postprocess_cells`): a region may span any number
of cells, so a cell's result is final only then. Then
:func:`publish_gridded` writes what covers the whole run once every cell is published: a VRT per
layer, the STAC collection, the Zarr store, legend, quicklook and STAC item.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from shapely.geometry import box

from aoi import to_crs
from pipeline.grid.cells import Cell, cells_of
from pipeline.run.publishing import write_legend_and_quicklook
from pipeline.run.workspace import Workspace
from pipeline.writers.gridded import (
    cell_is_published,
    publish_cell,
    write_collection,
    write_layer_vrts,
)

_log = logging.getLogger(__name__)

__all__ = ["publish_cells", "publish_gridded"]


def _item_kwargs(cfg, prep, cell: Cell, report: dict, labels: list[str]) -> dict[str, Any]:

    x0, y0, x1, y1 = cell.grid.geobox.boundingbox
    footprint = to_crs(box(x0, y0, x1, y1).segmentize(10_000), "EPSG:4326", prep.crs)
    return {
        "geometry_4326": footprint.intersection(prep.geometry),
        "start": cfg.composite.start,
        "end": cfg.composite.end,
        "class_names": list(prep.class_names),
        "colors": list(prep.colors),
        "properties": {
            "s2lc:model": prep.model_info["identity"],
            "s2lc:untrained": cfg.model.untrained,
            "s2lc:period": cfg.composite.period,
            "s2lc:periods": labels,
            "s2lc:output_hash": report["output_hash"],
            "grid:code": f"EEA-{cell.code}",
            **(
                {"s2lc:postprocess": {"majority": cfg.output.majority, "mmu": cfg.output.mmu}}
                if cfg.output.postprocess
                else {}
            ),
        },
        "item_id": f"s2lc-{prep.region_name}-{cfg.composite.start}-{cfg.composite.end}-{cfg.composite.period}-{cfg.model.name}",
    }


def publish_cells(
    cfg,
    prep,
    ws: Workspace,
    report: dict,
    labels: list[str],
    done: Iterable[str],
    hold: bool = False,
) -> dict[str, list[str]]:
    """Publish the complete cells not yet published; returns codes by state.

    States: ``published`` (now), ``skipped`` (published earlier), ``waiting`` (a tile not done,
    or ``hold``: post-processing, which needs every cell's tiles, has not run yet).
    """

    done = set(done)
    state: dict[str, list[str]] = {"published": [], "skipped": [], "waiting": []}
    for code, cell in cells_of(prep.grid).items():
        if cell_is_published(ws.cells, code, report["output_hash"]):
            state["skipped"].append(code)
        elif not hold and all(t in done for t in cell.tile_ids):
            publish_cell(
                ws.tiles,
                ws.cells,
                cell,
                class_names=list(prep.class_names),
                colors=list(prep.colors),
                period_labels=labels,
                output_hash=report["output_hash"],
                item=_item_kwargs(cfg, prep, cell, report, labels),
            )
            state["published"].append(code)
        else:
            state["waiting"].append(code)
    _log.info(
        "cells: %d published, %d done earlier, %d waiting for %s",
        *(len(state[k]) for k in ("published", "skipped", "waiting")),
        "post-processing (once every tile is done)" if hold else "tiles",
    )
    return state


def publish_gridded(cfg, prep, ws: Workspace, report: dict, labels: list[str]) -> None:
    """VRT per layer, STAC collection, Zarr store, legend, quicklook and item over all cells."""

    cells = cells_of(prep.grid)
    vrts = write_layer_vrts(
        ws.out, prep.grid, cells, ws.cells, list(prep.class_names), list(prep.colors)
    )
    write_collection(
        ws.out / "collection.json",
        ws.cells,
        list(cells),
        collection_id=f"s2lc-{prep.region_name}-{cfg.composite.start}-{cfg.composite.end}-{cfg.composite.period}-{cfg.model.name}",
        description=(
            f"s2lc land-cover map of {prep.region_name}, {cfg.composite.start}..{cfg.composite.end}, {cfg.model.name}: "
            f"one item per 100 km EEA grid cell (EPSG:3035)"
            + (" (UNTRAINED WEIGHTS: not a land-cover map)" if cfg.model.untrained else "")
        ),
    )
    ws.publish_store()
    ws.drop_tile_rasters()
    # the VRT spans whole 100 km cells; the quicklook shows the region
    region = to_crs(prep.geometry, prep.crs).bounds
    write_legend_and_quicklook(cfg, prep, ws, report, vrts["classes"], bounds=region)
