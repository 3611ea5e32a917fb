"""Gridded (continental) outputs: one COG set and STAC item per 100 km cell, a VRT per layer.

Layout of ``OUT/`` for a run in EPSG:3035 (see :mod:`pipeline.grid.cells`)::

    cells/<code>/{classes,confidence,valid_obs}.tif   the cell's COGs (full 100 km extent)
    cells/<code>/item.json                            its STAC item
    collection.json                                   STAC collection, one item per cell
    classes.vrt  confidence.vrt  valid_obs.vrt         each layer over all cells, one raster

A cell folder appears complete or not at all (:func:`publish_cell` builds it under a temporary
name and renames it), and records the output hash of the run that made it, so a rerun skips the
cells it finds (:func:`cell_is_published`). The VRTs point at the cells' COGs by relative path,
so the folder can be moved or served as it is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.base.atomic import atomic_path
from pipeline.base.jsonio import write_json
from pipeline.grid.cells import Cell
from pipeline.grid.tiling import Tile, TileGrid
from pipeline.writers.cog import _band_xml, _classes_band_extra, _vrt, build_cogs
from pipeline.writers.layers import cog_layers

__all__ = [
    "CELL_MARKER",
    "cell_is_published",
    "publish_cell",
    "write_collection",
    "write_layer_vrts",
]

CELL_MARKER = "cell.json"


def cell_is_published(cells_dir: Path, code: str, output_hash: str) -> bool:
    """True when ``cells_dir/code`` holds a complete cell made with ``output_hash``."""
    marker = Path(cells_dir) / code / CELL_MARKER
    try:
        return json.loads(marker.read_text()).get("output_hash") == output_hash
    except (OSError, json.JSONDecodeError):
        return False


def publish_cell(
    tiles_dir: Path,
    cells_dir: Path,
    cell: Cell,
    *,
    class_names: Sequence[str],
    colors: Sequence[Any],
    period_labels: Sequence[str],
    output_hash: str,
    item: Mapping[str, Any],
) -> Path:
    """Mosaic a cell's tiles into its COGs and STAC item, published atomically as one folder.

    :param tiles_dir: the folder of per-tile GeoTIFF folders (``<tile id>/``).
    :param item: keyword arguments of :func:`pipeline.writers.write_stac_item` (geometry, dates,
        class names, properties) less ``grid`` and ``assets``.
    :returns: ``cells_dir/<code>``.
    """
    from pipeline.writers.products import write_stac_item

    final = Path(cells_dir) / cell.code
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        cogs = build_cogs(
            tiles_dir, tmp, cell.grid, class_names, colors, period_labels=period_labels
        )
        write_stac_item(
            tmp / "item.json",
            grid=cell.grid,
            assets=cogs,
            item_id=f"{item.get('item_id', 's2lc')}-{cell.code}",
            **{k: v for k, v in item.items() if k != "item_id"},
        )
        write_json(
            tmp / CELL_MARKER,
            {"code": cell.code, "output_hash": output_hash, "tiles": list(cell.tile_ids)},
        )
    return final


def write_collection(
    path: Path, cells_dir: Path, codes: Sequence[str], collection_id: str, description: str
) -> Path:
    """A STAC collection over the published cells' items (relative links, extent from them)."""
    import pystac

    items = [pystac.Item.from_file(str(Path(cells_dir) / c / "item.json")) for c in codes]
    if not items:
        raise ValueError("no published cell to make a collection of")
    bboxes = [it.bbox for it in items]
    bbox = [
        min(b[0] for b in bboxes),
        min(b[1] for b in bboxes),
        max(b[2] for b in bboxes),
        max(b[3] for b in bboxes),
    ]
    starts = [it.common_metadata.start_datetime for it in items]
    ends = [it.common_metadata.end_datetime for it in items]
    col = pystac.Collection(
        id=collection_id,
        description=description,
        extent=pystac.Extent(
            pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[min(starts), max(ends)]])
        ),
        license="other",
    )
    doc = col.to_dict(include_self_link=False, transform_hrefs=False)
    rel = os.path.relpath(Path(cells_dir).resolve(), Path(path).parent.resolve())
    doc["links"] = [
        {"rel": "item", "href": f"./{rel}/{c}/item.json", "type": "application/geo+json"}
        for c in codes
    ]
    return write_json(path, doc)


def write_layer_vrts(
    out_dir: Path,
    grid: TileGrid,
    cells: Mapping[str, Cell],
    cells_dir: Path,
    class_names: Sequence[str],
    colors: Sequence[Any],
) -> dict[str, Path]:
    """``<layer>.vrt`` for each layer: one raster on ``grid`` over the cells' COGs."""
    import rasterio

    out: dict[str, Path] = {}
    published = [c for c in cells.values() if (Path(cells_dir) / c.code / "classes.tif").is_file()]
    for spec in cog_layers("map"):
        name = str(spec.cog)
        rel = [
            (
                os.path.relpath(Path(cells_dir) / c.code / f"{name}.tif", out_dir),
                Tile(0, 0, c.grid.geobox, c.window),
            )
            for c in published
        ]
        count, descriptions = 1, ["land-cover class"]
        if rel:
            with rasterio.open(Path(out_dir) / rel[0][0]) as src:
                count, descriptions = src.count, [d or "" for d in src.descriptions]
        sources = [(f, count, t) for f, t in rel]
        classes = spec.kind == "classes"
        extra = _classes_band_extra(class_names, colors) if classes else ""
        bands = [
            _band_xml(b + 1, spec.file_dtype, sources, b + 1, grid, spec.nodata, descriptions[b],
                      extra if b == 0 else "")
            for b in range(count)
        ]  # fmt: skip
        metadata = {"class_names": json.dumps(list(map(str, class_names)))} if classes else {}
        text = _vrt(grid, bands, metadata).replace('relativeToVRT="0"', 'relativeToVRT="1"')
        final = Path(out_dir) / f"{name}.vrt"
        with atomic_path(final) as tmp:
            tmp.write_text(text)
        out[name] = final
    return out
