"""Planning a point extraction: points grouped by UTM zone, by tile of the zone's output lattice
and by cluster of nearby points, each cluster a small :class:`Window` of the lattice; the tiles of
one *search block* share one STAC search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aoi import utm_epsg
from pipeline.base.errors import UserError
from pipeline.points.reading import Points


@dataclass(frozen=True)
class Window:
    """A small window of the output lattice around a cluster of points."""

    crs: str
    geobox: Any
    points: np.ndarray
    """Indices into the input points."""
    rows: np.ndarray
    cols: np.ndarray
    """Each point's pixel inside the window."""
    tile: str
    """``<crs>/<tile id>`` of the lattice tile the cluster belongs to."""
    block: str
    """The search block (STAC search unit) it belongs to."""


def group_windows(
    points: Points,
    *,
    crs: str | None = None,
    resolution: float = 10.0,
    tile_size: int = 1024,
    cluster_px: int = 64,
    margin: int = 0,
    block_tiles: int = 8,
) -> list[Window]:
    """Group points into small windows on the output lattice.

    Points are projected to ``crs`` (default: each point's UTM zone), assigned to the tiles of
    :func:`~pipeline.grid.tiling.make_grid` over their extent, and within a tile to clusters of
    ``cluster_px`` x ``cluster_px`` pixels; every cluster becomes a window spanning its points'
    pixels (plus ``margin``). ``block_tiles`` x ``block_tiles`` tiles share one STAC search.
    """
    from pyproj import Transformer
    from shapely.geometry import box

    from pipeline.grid.tiling import make_grid

    if cluster_px < 1 or cluster_px > tile_size:
        raise UserError(f"cluster_px must be between 1 and the tile size ({tile_size})")
    epsg = np.full(len(points), -1) if crs else utm_epsg(points.lon, points.lat)
    windows: list[Window] = []
    for code in np.unique(epsg):
        sel = np.flatnonzero(epsg == code)
        zone_crs = crs or f"EPSG:{int(code)}"
        tr = Transformer.from_crs("EPSG:4326", zone_crs, always_xy=True)
        x, y = tr.transform(points.lon[sel], points.lat[sel])
        x, y = np.asarray(x), np.asarray(y)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise UserError(f"some points cannot be projected to {zone_crs}")
        # The AOI for make_grid: the points' lon/lat box (a simple polygon keeps the tile
        # search cheap; tiles without points are simply never visited).
        d = 1e-5
        lon_s, lat_s = points.lon[sel], points.lat[sel]
        aoi = box(lon_s.min() - d, lat_s.min() - d, lon_s.max() + d, lat_s.max() + d)
        grid = make_grid(aoi, zone_crs, resolution, tile_size)
        a = grid.geobox.affine
        col = np.floor((x - a.c) / a.a).astype(np.int64)
        row = np.floor((y - a.f) / a.e).astype(np.int64)
        h, w = grid.shape
        # Points on the far edge of the extent can fall one pixel outside: clamp (sub-pixel).
        col = np.clip(col, 0, w - 1)
        row = np.clip(row, 0, h - 1)
        trow, tcol = row // tile_size, col // tile_size
        crow, ccol = row // cluster_px, col // cluster_px
        keys = np.stack([trow, tcol, crow, ccol], axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.searchsorted(inverse[order], np.arange(1, len(uniq))))
        for (tr_, tc_, _, _), members in zip(uniq, groups, strict=True):
            r0 = max(int(row[members].min()) - margin, 0)
            r1 = min(int(row[members].max()) + margin + 1, h)
            c0 = max(int(col[members].min()) - margin, 0)
            c1 = min(int(col[members].max()) + margin + 1, w)
            gbox = grid.geobox[r0:r1, c0:c1]
            tile_id = f"r{int(tr_):04d}_c{int(tc_):04d}"
            block = f"{zone_crs}/b{int(tr_) // block_tiles}_{int(tc_) // block_tiles}"
            windows.append(
                Window(
                    crs=zone_crs,
                    geobox=gbox,
                    points=sel[members],
                    rows=row[members] - r0,
                    cols=col[members] - c0,
                    tile=f"{zone_crs}/{tile_id}",
                    block=block,
                )
            )
    return windows
