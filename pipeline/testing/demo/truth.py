"""The demo's land-cover truth as a user-facing output: a class COG on the demo map's grid.

The generator keeps its truth raster (with a halo around the region) in the cache;
:func:`export_truth` writes the part under the demo region, on the same grid as ``run --region
demo`` maps, as a COG with the demo legend's colour table and class names (dataset tag
``class_names`` as JSON, band tags ``CLASS_<value>``), so it opens styled in QGIS next to the map
and ``sample-points`` can draw reference points from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import from_bounds

from aoi import load_region
from pipeline.base.atomic import atomic_path
from pipeline.base.colours import parse_color
from pipeline.grid.tiling import make_grid
from pipeline.testing.demo import ensure_demo_catalog, load_truth
from pipeline.writers.tile_result import CLASS_NODATA

__all__ = ["export_truth"]


def export_truth(out: str | Path, tile_size: int = 256) -> Path:
    """Write the demo truth under the ``demo`` region to ``out`` (a COG); returns ``out``.

    The grid is :func:`pipeline.grid.tiling.make_grid` of the demo region (the grid ``run`` maps on),
    the values are the demo's class indices (uint8, 255 = nodata), in the order of the ``demo``
    legend. Generates the demo catalog first if the cache does not hold it.
    """

    from model.legends import load_legend  # noqa: PLC0415 (lazy: model loads torch)

    region = load_region("demo")
    grid = make_grid(region.geometry, region.crs, region.resolution, tile_size)
    root = ensure_demo_catalog()
    _, names, _ = load_truth(root)
    legend = load_legend("demo")
    if tuple(legend.names) != tuple(names):
        raise RuntimeError(f"demo legend {legend.names} and truth classes {names} differ")
    h, w = grid.shape
    bounds = grid.geobox.extent.boundingbox
    with rasterio.open(root / "truth.tif") as src:
        window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
        data = src.read(1, window=window, boundless=True, fill_value=CLASS_NODATA)
    if data.shape != (h, w):
        raise RuntimeError(f"truth window {data.shape} does not match the demo grid {(h, w)}")
    profile = {
        "driver": "COG",
        "height": h,
        "width": w,
        "count": 1,
        "dtype": "uint8",
        "crs": str(grid.geobox.crs),
        "transform": grid.geobox.affine,
        "nodata": CLASS_NODATA,
        "compress": "DEFLATE",
        "blocksize": 256,
        "overview_resampling": "nearest",
    }
    out = Path(out)
    with atomic_path(out) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(np.asarray(data, np.uint8), 1)
            dst.write_colormap(1, {i: (*parse_color(c), 255) for i, c in enumerate(legend.colors)})
            dst.set_band_description(1, "land-cover class (demo truth)")
            dst.update_tags(
                class_names=json.dumps(list(names)),
                nodata_class=str(CLASS_NODATA),
                # the module's old name stays: the tag is part of the truth COG's bytes
                source="synthetic demo scene (pipeline.demo): the class every pixel was drawn from",
            )
            dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
    return out
