"""Output writers: the Zarr map store, GeoTIFF/COG layers, legend, quicklook and STAC item.

Everything is written through :func:`pipeline.base.atomic.atomic_path`: a product appears under its final name
complete, or not at all. Tile tasks call :func:`write_tile` (their window of the Zarr store) and
:func:`write_tile_rasters` (their GeoTIFFs); the driver calls :func:`create_map_store` before the
tiles and :func:`build_cogs`, :func:`write_legend_json`, :func:`write_quicklook` and
:func:`write_stac_item` after them.
"""

from pipeline.writers.cog import LAYERS, build_cogs, write_tile_rasters
from pipeline.writers.products import (
    write_legend_json,
    write_quicklook,
    write_rgb_quicklook,
    write_stac_item,
)
from pipeline.writers.tile_result import CLASS_NODATA, TileResult
from pipeline.writers.zarr_map import create_map_store, open_map, write_tile

__all__ = [
    "CLASS_NODATA",
    "LAYERS",
    "TileResult",
    "build_cogs",
    "create_map_store",
    "open_map",
    "write_legend_json",
    "write_quicklook",
    "write_rgb_quicklook",
    "write_stac_item",
    "write_tile",
    "write_tile_rasters",
]
