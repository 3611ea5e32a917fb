"""Pixel reads for the viewer: Web Mercator tiles (rio-tiler), one pixel's values, class shares.

Rasters are COGs or VRTs on disk, or in-memory GeoTIFFs (``/vsimem/``) that the viewer builds
for layers that exist only as arrays (a query's heat map, a true-colour image from the store's
saved composite). Every read opens its own dataset handle: rasterio handles are not thread-safe
and the server answers requests on a thread pool.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import xarray as xr
import zarr
from affine import Affine
from rasterio.enums import Resampling
from rasterio.shutil import delete
from rasterio.warp import transform
from rio_tiler.errors import PointOutsideBounds, TileOutsideBounds
from rio_tiler.io import Reader

from pipeline.writers.tile_result import CLASS_NODATA

__all__ = [
    "MemRaster",
    "TileRead",
    "class_shares",
    "composite_rgb_from_store",
    "layer_info",
    "point_values",
    "read_tile",
    "topk_at",
]

TILE_SIZE = 256
# Class shares are counted on at most this many pixels (read from the overviews, nearest).
SHARE_SAMPLE_PX = 4_000_000
# Largest map whose true-colour layer is built in memory from the store's saved composite.
RGB_FROM_STORE_MAX_PX = 16_000_000


@dataclass(frozen=True)
class TileRead:
    """One tile: ``data`` ``(bands, 256, 256)`` and ``valid`` ``(256, 256)`` bool."""

    data: np.ndarray
    valid: np.ndarray


def read_tile(
    path: str | Path,
    z: int,
    x: int,
    y: int,
    *,
    indexes: Sequence[int] | None = None,
    resampling: str = "nearest",
) -> TileRead | None:
    """The Web Mercator tile ``z/x/y`` of a raster, or None where the tile misses the raster.

    :param resampling: ``"nearest"`` for categorical layers, ``"average"`` (or ``"bilinear"``)
        for continuous ones; used both for the overview read and for the warp.
    """

    with Reader(str(path)) as src:
        try:
            img = src.tile(
                x,
                y,
                z,
                tilesize=TILE_SIZE,
                indexes=tuple(indexes) if indexes else None,
                resampling_method=resampling,
                reproject_method="nearest" if resampling == "nearest" else "bilinear",
            )
        except TileOutsideBounds:
            return None
    data = np.ma.getdata(img.array)
    valid = ~np.ma.getmaskarray(img.array).any(axis=0)
    return TileRead(np.asarray(data), valid)


def layer_info(path: str | Path) -> dict[str, Any]:
    """Bounds (lon/lat), zoom range, band count, shape (rows, cols), dtype and nodata of a raster."""

    with Reader(str(path)) as src:
        w, s, e, n = src.get_geographic_bounds(src.tms.rasterio_geographic_crs)
        return {
            "bounds": [float(w), float(s), float(e), float(n)],
            "minzoom": int(src.minzoom),
            "maxzoom": int(src.maxzoom),
            "count": int(src.dataset.count),
            "shape": (int(src.dataset.height), int(src.dataset.width)),
            "dtype": str(src.dataset.dtypes[0]),
            "nodata": src.dataset.nodata,
            "descriptions": [d or "" for d in src.dataset.descriptions],
        }


def point_values(path: str | Path, lon: float, lat: float) -> list[float] | None:
    """The raster's band values at a lon/lat, or None outside the raster or at its nodata."""

    with Reader(str(path)) as src:
        try:
            pt = src.point(lon, lat)
        except PointOutsideBounds:
            return None
    if np.ma.getmaskarray(pt.array).all():
        return None
    return [float(v) for v in np.ma.getdata(pt.array)]


def _pixel_index(store: Path, lon: float, lat: float) -> tuple[int, int] | None:
    """Row and column of the store's pixel at lon/lat, or None outside its grid."""

    with rasterio.open(f'ZARR:"{store}":/classes') as src:
        xs, ys = transform("EPSG:4326", src.crs, [lon], [lat])
        row, col = src.index(xs[0], ys[0])
        if not (0 <= row < src.height and 0 <= col < src.width):
            return None
    return int(row), int(col)


def topk_at(store: Path, lon: float, lat: float) -> list[tuple[int, float]] | None:
    """The k most likely classes at a lon/lat from the map store: ``[(class, probability), ...]``.

    Most likely first. None outside the map or where the pixel is nodata.
    """

    rc = _pixel_index(store, lon, lat)
    if rc is None:
        return None
    g = zarr.open_group(str(store), mode="r")
    cls = np.asarray(g["topk_classes"][:, rc[0], rc[1]])
    prob = np.asarray(g["topk_probs"][:, rc[0], rc[1]])
    out = [
        (int(c), float(p))
        for c, p in zip(cls, prob, strict=True)
        if c != CLASS_NODATA and np.isfinite(p)
    ]
    return out or None


def class_shares(path: str | Path, n_classes: int) -> tuple[np.ndarray, bool]:
    """Share of the mapped (non-nodata) area per class value ``0..n_classes-1``.

    Maps up to :data:`SHARE_SAMPLE_PX` pixels are counted in full; larger ones on a nearest
    sample read from their overviews. Every class pixel is one grid cell, so on a projected
    equal-area grid pixel shares are area shares.

    :returns: ``(shares, exact)``: ``(n_classes,)`` float64 summing to 1 (zeros when nothing is
        mapped), and whether every pixel was counted.
    """

    with rasterio.open(path) as src:
        scale = max(1.0, (src.height * src.width / SHARE_SAMPLE_PX) ** 0.5)
        shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        data = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    counts = np.bincount(data.ravel(), minlength=256)[:n_classes].astype(np.float64)
    total = counts.sum()
    return (counts / total if total else counts), scale == 1.0


class MemRaster:
    """An in-memory GeoTIFF (``/vsimem/``) built from an array on a grid, for layers without a file.

    ``data`` is ``(bands, h, w)``; ``crs`` and ``transform`` place it; ``nodata`` marks gaps.
    :meth:`close` frees it (also on garbage collection).
    """

    def __init__(self, data: np.ndarray, crs: Any, transform: Any, nodata: float | None) -> None:

        if data.ndim == 2:
            data = data[None]
        self.path = f"/vsimem/s2lc-view-{uuid.uuid4().hex}.tif"
        self._lock = threading.Lock()
        h, w = data.shape[1:]
        profile = {
            "driver": "GTiff",
            "width": w,
            "height": h,
            "count": data.shape[0],
            "dtype": str(data.dtype),
            "crs": crs,
            "transform": transform,
            "nodata": nodata,
            "tiled": h >= 256 and w >= 256,
        }
        if profile["tiled"]:
            profile.update(blockxsize=256, blockysize=256)
        with rasterio.open(self.path, "w", **profile) as dst:
            dst.write(data)
            factors = [f for f in (2, 4, 8, 16, 32, 64) if min(h, w) // f >= 128]
            if factors:
                rs = Resampling.nearest if data.dtype.kind in "ui" else Resampling.average
                dst.build_overviews(factors, rs)
        self._closed = False

    def close(self) -> None:

        with self._lock:
            if not self._closed:
                try:
                    delete(self.path)
                except Exception:  # already gone
                    pass
                self._closed = True

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def composite_rgb_from_store(
    store: Path, max_px: int = RGB_FROM_STORE_MAX_PX, max_reflectance: float = 0.2
) -> MemRaster | None:
    """A uint8 true-colour image from the store's saved composite (``run --save-composite``).

    Red, green, blue are B4, B3, B2, each the median over the composite periods, scaled
    TCI-style: reflectance 0..``max_reflectance`` -> 1..255 (ESA Sentinel-2 Products
    Specification Document, TCI), 0 = no data. None when the map exceeds ``max_px`` pixels
    (the image is built in memory; runs write ``composite_rgb.tif`` for large maps).
    """

    ds = xr.open_zarr(store, decode_coords="all")
    comp = ds["composite"]
    h, w = comp.sizes["y"], comp.sizes["x"]
    if h * w > max_px:
        return None
    rgb = comp.sel(band=["B4", "B3", "B2"]).median("period", skipna=True).values.astype("float32")
    ok = np.isfinite(rgb).all(axis=0)
    scaled = np.clip(np.nan_to_num(rgb) / max_reflectance, 0.0, 1.0) * 254.0 + 1.0
    out = np.where(ok, np.rint(scaled), 0).astype(np.uint8)
    layout = ds.attrs["s2lc:layout"]
    return MemRaster(out, layout["crs"], Affine(*layout["transform"]), nodata=0)
