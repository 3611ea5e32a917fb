"""Tiling math: the output grid, its tiles, AOI masks and seamless sliding windows. Pure, no I/O.

odc-geo owns the geometry: the grid is ``GeoBox.from_geopolygon``, the tile lattice
``GeoboxTiles``, grid cells ``GeoBox.from_bbox`` and the AOI mask ``odc.geo.xr.rasterize``. What is
ours is which tiles touch the AOI (:func:`_intersecting`) and the chips (:class:`ChipLayout`,
:func:`blend`).

Three lattices, all in pixel units of the output resolution:

* **Pixels** are anchored at the CRS origin: every output pixel edge lies on a multiple of the
  resolution. The output grid is the AOI's bounds snapped *outward* to that lattice
  (``odc.geo.geobox.GeoBox.from_geopolygon``, which forgives float noise: a 2 km square is
  200 px at 10 m, the MGRS tile 32UPU 10980 px), so it does not depend on the tile size, and two
  runs of overlapping regions share pixels exactly.
* **Tiles** (units of Dask work and of Zarr chunks) are ``tile_size`` squares anchored at the
  output grid's top-left pixel. They are *not* anchored at the CRS origin: Zarr chunks start at
  array index 0, and only a tile lattice anchored there makes every chunk belong to exactly one
  tile, so concurrent tile writes never read-modify-write the same chunk. Nothing else depends on
  where tiles fall: maps are identical for any tile size (see below).
* **Chips** (the patch model's sliding windows) are ``window`` squares whose top-left corners lie on
  a *global* lattice of ``stride`` pixels anchored at the CRS origin. A tile loads every chip that
  touches it (:func:`chip_layout`), and :func:`blend` averages the chips' class probabilities with a
  smooth, strictly positive window (:func:`blend_weights`). Because the chips covering a pixel and
  the order they are summed in depend only on the global lattice, a pixel gets bit-identical values
  whatever tiling computed it: no seams, by construction.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.geo.geom import Geometry

from pipeline.base.errors import UserError

__all__ = [
    "ChipLayout",
    "Tile",
    "TileGrid",
    "aoi_mask",
    "pixel_footprint",
    "blend",
    "blend_weights",
    "chip_layout",
    "grid_offset",
    "halo_geobox",
    "make_grid",
]

MIN_TILE_SIZE = 16
MAX_TILE_SIZE = 16384
MAX_TILES = 5_000_000
# Pixel edges within this fraction of a pixel of the lattice count as on it (float noise).
_SNAP_TOL = 1e-6


@dataclass(frozen=True)
class Tile:
    """One output tile: a unit of work and of storage.

    Attributes:
        row, col: position in the tile lattice (0-based from the grid's top-left tile).
        geobox: the tile's output pixels.
        window: the tile's (rows, cols) in the full output grid.
    """

    row: int
    col: int
    geobox: GeoBox
    window: tuple[slice, slice]

    def __hash__(self) -> int:  # slices are unhashable before Python 3.12
        return hash((self.row, self.col, self.geobox))

    @property
    def id(self) -> str:
        """Stable name, e.g. ``r0003_c0012``; used for task keys, manifests and tile folders."""
        return f"r{self.row:04d}_c{self.col:04d}"

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return (
            self.window[0].stop - self.window[0].start,
            self.window[1].stop - self.window[1].start,
        )


@dataclass(frozen=True)
class TileGrid:
    """The output grid and the tiles of it that touch the AOI.

    Attributes:
        geobox: the full output grid.
        tile_size: tile edge in pixels (edge tiles may be smaller).
        tiles: the tiles that intersect the AOI, in row-major order.
    """

    geobox: GeoBox
    tile_size: int
    tiles: tuple[Tile, ...]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the output grid in pixels."""
        return tuple(self.geobox.shape)  # type: ignore[return-value]

    @cached_property
    def lattice(self) -> GeoboxTiles:
        """odc-geo's tile lattice of the grid: ``tile_size`` squares from the top-left pixel."""
        return GeoboxTiles(self.geobox, (self.tile_size, self.tile_size))

    @property
    def lattice_shape(self) -> tuple[int, int]:
        """(rows, cols) of the full tile lattice, including tiles outside the AOI."""
        return tuple(self.lattice.shape)  # type: ignore[return-value]

    @property
    def resolution(self) -> float:
        return float(self.geobox.affine.a)

    @property
    def crs(self) -> str:
        return str(self.geobox.crs)

    def tile(self, row: int, col: int) -> Tile:
        """Any tile of the lattice (also one outside the AOI)."""
        nr, nc = self.lattice_shape
        if not (0 <= row < nr and 0 <= col < nc):
            raise IndexError(f"tile ({row}, {col}) is outside the {nr} x {nc} tile lattice")
        ys, xs = self.lattice.roi[row, col]
        return Tile(row=row, col=col, geobox=self.geobox[ys, xs], window=(ys, xs))

    @cached_property
    def _by_id(self) -> dict[str, Tile]:
        return {t.id: t for t in self.tiles}

    def __getitem__(self, tile_id: str) -> Tile:
        """The tile with this id (KeyError if it is not one of the AOI's tiles)."""
        return self._by_id[tile_id]


def _check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise UserError(f"{name} must be {rng}, got {value}")
    return int(value)


def make_grid(
    geometry: Any, crs: str, resolution: float, tile_size: int, snap: float | None = None
) -> TileGrid:
    """The output grid of an AOI and the tiles of it that intersect the AOI.

    The grid is odc-geo's ``GeoBox.from_geopolygon`` of the AOI (bounds snapped outward to the
    pixel lattice anchored at the CRS origin) and the tile lattice is odc-geo's ``GeoboxTiles``;
    only the rule for which tiles touch the AOI is ours (see :func:`_intersecting`).

    :param geometry: shapely (Multi)Polygon in EPSG:4326 (lon, lat).
    :param crs: output CRS, e.g. ``"EPSG:32632"``.
    :param resolution: pixel size in CRS units.
    :param tile_size: tile edge in pixels (>= 16).
    :param snap: when given (CRS units, e.g. 100 km grid cells), the grid's bounds are snapped
        outward to multiples of it and ``tile_size`` must divide ``snap / resolution``, so every
        tile lies inside one cell. Raises UserError otherwise.
    """
    tile_size = _check_int(tile_size, "tile_size", MIN_TILE_SIZE, MAX_TILE_SIZE)
    try:
        res = float(resolution)
    except (TypeError, ValueError):
        raise UserError(f"resolution must be a number, got {resolution!r}") from None
    if not (math.isfinite(res) and res > 0):
        raise UserError(f"resolution must be a positive number, got {resolution!r}")
    if geometry is None or getattr(geometry, "is_empty", True):
        raise UserError("the area of interest is empty")
    if geometry.geom_type not in ("Polygon", "MultiPolygon"):
        raise UserError(f"the area of interest must be a polygon, got a {geometry.geom_type}")
    try:
        geom = Geometry(geometry, "EPSG:4326").to_crs(crs, resolution="auto")
    except Exception as exc:  # pyproj/odc raise several types for a bad CRS
        raise UserError(f"cannot project the area of interest to {crs!r}: {exc}") from None
    if not all(math.isfinite(v) for v in geom.boundingbox):
        raise UserError(f"the area of interest is outside the valid area of {crs}")

    # odc-geo snaps the bounds outward to the pixel lattice anchored at the CRS origin, forgiving
    # sub-pixel float noise of the reprojection (a 2 km square is 200 px, not 201).
    gbox = GeoBox.from_geopolygon(geom, resolution=res, crs=crs)
    if snap is not None:
        gbox = _snap_to_cells(gbox, snap, tile_size)
    gbox = _on_lattice(gbox)
    lattice = GeoboxTiles(gbox, (tile_size, tile_size))
    n_tiles = lattice.shape[0] * lattice.shape[1]
    if n_tiles > MAX_TILES:
        raise UserError(
            f"the area of interest needs {n_tiles:,} tiles of {tile_size} px at {res:g} "
            f"(more than {MAX_TILES:,}); use a larger tile size or a coarser resolution"
        )

    import shapely

    _, row0, col0 = grid_offset(gbox)
    # Pixel edges of the lattice's tile rows and columns (edge tiles may be smaller).
    y_edges, x_edges = (np.cumsum((0, *sizes)) for sizes in lattice.chunks)
    nr, nc = lattice.shape
    rows, cols = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    left = (col0 + x_edges[cols]) * res
    right = (col0 + x_edges[cols + 1]) * res
    top = -(row0 + y_edges[rows]) * res
    bottom = -(row0 + y_edges[rows + 1]) * res
    # A tile is kept when the box through its outermost pixel centres meets the AOI: that keeps
    # every tile with a pixel centre inside (see aoi_mask) and drops sub-pixel slivers.
    half = res / 2
    boxes = shapely.box(left + half, bottom + half, right - half, top - half)
    keep = _intersecting(boxes, rows, cols, geom.geom)
    ye, xe = y_edges.tolist(), x_edges.tolist()
    tiles = tuple(
        _tile(gbox, r, c, slice(ye[r], ye[r + 1]), slice(xe[c], xe[c + 1]))
        for r, c in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True)
    )
    return TileGrid(geobox=gbox, tile_size=tile_size, tiles=tiles)


def _on_lattice(gbox: GeoBox) -> GeoBox:
    """The same grid with its origin written as whole pixels times the resolution.

    odc-geo's snapped origin can carry float noise at resolutions that are not exact in binary;
    written this way, grids of overlapping runs have bit-identical transforms.
    """
    res, row0, col0 = grid_offset(gbox)
    affine = Affine(res, 0.0, col0 * res, 0.0, -res, -row0 * res)
    return gbox if affine == gbox.affine else GeoBox(gbox.shape, affine, gbox.crs)


def _snap_to_cells(gbox: GeoBox, snap: float, tile_size: int) -> GeoBox:
    """``gbox`` enlarged outward to whole ``snap`` cells (odc-geo ``GeoBox.from_bbox``)."""
    res = float(gbox.resolution.x)
    cell_px = snap / res
    if abs(cell_px - round(cell_px)) > _SNAP_TOL or round(cell_px) % tile_size:
        raise UserError(
            f"tile_size {tile_size} must divide the {snap:g} grid cell ({cell_px:g} px at "
            f"{res:g}), e.g. 500 or 1000 at 10 m"
        )
    # tol=0: a grid reaching any distance into a cell takes the whole cell.
    cells = GeoBox.from_bbox(gbox.boundingbox, gbox.crs, resolution=snap, tol=0)
    return GeoBox.from_bbox(cells.boundingbox, gbox.crs, resolution=res, tol=0)


#: Tiles per block edge in the two-level AOI test of :func:`_intersecting`.
_BLOCK_TILES = 16


def _intersecting(boxes: np.ndarray, rows: np.ndarray, cols: np.ndarray, aoi: Any) -> np.ndarray:
    """``shapely.intersects(boxes, aoi)``, fast for large detailed AOIs (a continent's coast).

    Blocks of tiles are tested first: a block outside the AOI drops its tiles, one inside keeps
    them, and only tiles of blocks on the boundary are tested, against the AOI clipped to their
    block. The result is the same as testing every box against the whole AOI.
    """
    import shapely

    if len(boxes) <= 4 * _BLOCK_TILES**2:
        shapely.prepare(aoi)
        return shapely.intersects(boxes, aoi)
    keep = np.zeros(len(boxes), dtype=bool)
    block = (rows // _BLOCK_TILES) * (int(cols.max()) + 1) + cols // _BLOCK_TILES
    order = np.argsort(block, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(block[order]) != 0])
    groups = np.split(order, starts[1:])
    shapely.prepare(aoi)
    for idx in groups:
        env = shapely.box(*shapely.total_bounds(boxes[idx]))
        if not shapely.intersects(aoi, env):
            continue
        if shapely.contains(aoi, env):
            keep[idx] = True
            continue
        part = shapely.intersection(aoi, env)
        shapely.prepare(part)
        keep[idx] = shapely.intersects(boxes[idx], part)
    return keep


def _tile(gbox: GeoBox, row: int, col: int, ys: slice, xs: slice) -> Tile:
    """``TileGrid.tile`` without slicing the GeoBox (a continent has ~10^5 tiles)."""
    a = gbox.affine
    sub = GeoBox(
        (ys.stop - ys.start, xs.stop - xs.start),
        Affine(a.a, 0.0, a.c + xs.start * a.a, 0.0, a.e, a.f + ys.start * a.e),
        gbox.crs,
    )
    return Tile(row=row, col=col, geobox=sub, window=(ys, xs))


def halo_geobox(geobox: GeoBox, halo_px: int) -> GeoBox:
    """The same pixel grid enlarged by ``halo_px`` pixels on every side."""
    halo_px = _check_int(halo_px, "halo_px", 0)
    return geobox.pad(halo_px) if halo_px else geobox


def aoi_mask(geobox: GeoBox, geometry_4326: Any) -> np.ndarray:
    """Boolean (h, w) mask, True where a pixel's centre lies inside the AOI.

    odc-geo's ``rasterize`` of the AOI, clipped first to the tile (plus two pixels) so that a
    large, detailed AOI rasterises per tile in constant time.
    """
    from odc.geo.geom import box
    from odc.geo.xr import rasterize

    geom = Geometry(geometry_4326, "EPSG:4326").to_crs(geobox.crs, resolution="auto")
    x0, y0, x1, y1 = geobox.boundingbox
    pad = 2 * abs(geobox.affine.a)
    geom = geom & box(x0 - pad, y0 - pad, x1 + pad, y1 + pad, geobox.crs)
    if geom.is_empty:
        return np.zeros(geobox.shape, dtype=bool)
    return rasterize(geom, geobox).values


#: Regions whose grid has at most this many pixels are checked for a pixel centre inside
#: (:func:`pixel_footprint`). A larger region with none would be a line thousands of km long.
FOOTPRINT_CHECK_PX = 1 << 24


def pixel_footprint(geometry_4326: Any, crs: str, resolution: float) -> Any:
    """The region to map at this grid: ``geometry_4326`` itself, or, when it holds no pixel
    centre, the pixels it touches.

    The small-region rule (README, "Small and thin regions"): a pixel belongs to the region when
    its centre lies inside (:func:`aoi_mask`). A region that holds no pixel centre at all (a
    hedge, a stream or a plot narrower than a pixel, a box smaller than one) is mapped at every
    pixel it touches instead (GDAL's ``ALL_TOUCHED``), so it is never an empty map. Only a region
    that touches no pixel (zero area) is refused.

    :param geometry_4326: shapely (Multi)Polygon in EPSG:4326 (lon, lat).
    :param crs: the output CRS.
    :param resolution: pixel size in CRS units.
    :returns: shapely geometry in EPSG:4326: the input, or the union of the touched pixels'
        squares (each pixel's centre then lies inside it).
    :raises UserError: the region touches no pixel, or cannot be projected to ``crs``.
    """
    import shapely
    from odc.geo.xr import rasterize

    if geometry_4326 is None or geometry_4326.is_empty or not geometry_4326.area > 0:
        # (also: odc-geo's densifying reprojection does not end on a zero-area polygon)
        raise UserError(
            f"the region has no area: it touches no {float(resolution):g} m pixel of the output "
            f"grid ({crs}); give it an area"
        )
    try:
        geom = Geometry(geometry_4326, "EPSG:4326").to_crs(crs, resolution="auto")
        gbox = _on_lattice(GeoBox.from_geopolygon(geom, resolution=float(resolution), crs=crs))
    except Exception as exc:  # pyproj/odc raise several types for a bad CRS
        raise UserError(f"cannot project the area of interest to {crs!r}: {exc}") from None
    ny, nx = gbox.shape
    if ny * nx > FOOTPRINT_CHECK_PX or rasterize(geom, gbox).values.any():
        return geometry_4326
    touched = rasterize(geom, gbox, all_touched=True).values
    if not touched.any():
        raise UserError(
            f"the region touches no {float(resolution):g} m pixel of the output grid ({crs}): "
            "give it an area"
        )
    res, row0, col0 = grid_offset(gbox)
    rows, cols = np.nonzero(touched)
    left, top = (col0 + cols) * res, -(row0 + rows) * res
    squares = shapely.union_all(shapely.box(left, top - res, left + res, top))
    return Geometry(squares, crs).to_crs("EPSG:4326", resolution="auto").geom


def grid_offset(geobox: GeoBox) -> tuple[float, int, int]:
    """(resolution, global row, global col) of the geobox's top-left pixel.

    Global indices count pixels from the CRS origin (rows downwards: row = -y / resolution).
    Raises ValueError for grids that are rotated, not square, not north-up or not on the lattice.
    """
    a = geobox.affine
    res = a.a
    if a.b != 0 or a.d != 0 or res <= 0 or not math.isclose(a.e, -res, rel_tol=1e-9):
        raise ValueError(f"expected a north-up grid with square pixels, got {tuple(a)[:6]}")
    gx, gy = a.c / res, -a.f / res
    rx, ry = round(gx), round(gy)
    if abs(gx - rx) > _SNAP_TOL or abs(gy - ry) > _SNAP_TOL:
        raise ValueError(f"grid origin ({a.c}, {a.f}) is not on the {res:g} pixel lattice")
    return float(res), int(ry), int(rx)


@dataclass(frozen=True)
class ChipLayout:
    """The sliding-window chips a tile needs, on the global chip lattice.

    Attributes:
        geobox: the region to load: the union of all chips touching the tile.
        tile_geobox: the tile's own pixels.
        tile_window: the tile's (rows, cols) inside ``geobox``.
        window: chip edge in pixels.
        stride: chip step in pixels.
        first_chip: global lattice index (row, col) of the top-left chip.
        chips_shape: (rows, cols) of chips; ``n_chips`` is their product.
    """

    geobox: GeoBox
    tile_geobox: GeoBox
    tile_window: tuple[slice, slice]
    window: int
    stride: int
    first_chip: tuple[int, int]
    chips_shape: tuple[int, int]

    def __hash__(self) -> int:  # slices are unhashable before Python 3.12
        return hash((self.geobox, self.tile_geobox, self.window, self.stride))

    @property
    def n_chips(self) -> int:
        return self.chips_shape[0] * self.chips_shape[1]

    @property
    def offsets(self) -> np.ndarray:
        """(n_chips, 2) int64 top-left (row, col) of each chip inside ``geobox``, row-major."""
        nr, nc = self.chips_shape
        r, c = np.meshgrid(np.arange(nr), np.arange(nc), indexing="ij")
        return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64) * self.stride

    @property
    def chip_ids(self) -> np.ndarray:
        """(n_chips, 2) global lattice indices of the chips (identical across tilings)."""
        return self.offsets // self.stride + np.asarray(self.first_chip, dtype=np.int64)

    def chip_geobox(self, i: int) -> GeoBox:
        r, c = (int(v) for v in self.offsets[i])
        return self.geobox[r : r + self.window, c : c + self.window]

    def extract(self, array: np.ndarray) -> np.ndarray:
        """The chips of a loaded ``(..., H, W)`` array on ``geobox``: ``(n_chips, ..., win, win)``.

        A strided view (no copy); slice it into batches before converting.
        """
        if tuple(array.shape[-2:]) != tuple(self.geobox.shape):
            raise ValueError(
                f"array shape {array.shape[-2:]} does not match the plan's {self.geobox.shape}"
            )
        win, s = self.window, self.stride
        view = np.lib.stride_tricks.sliding_window_view(array, (win, win), axis=(-2, -1))
        view = view[..., ::s, ::s, :, :]  # (..., nr, nc, win, win)
        lead = array.ndim - 2
        view = np.moveaxis(view, (lead, lead + 1), (0, 1))
        return view.reshape((self.n_chips,) + view.shape[2:])


def chip_layout(geobox: GeoBox, window: int, stride: int) -> ChipLayout:
    """The chips (global lattice, anchored at the CRS origin) that touch ``geobox``'s pixels."""
    window = _check_int(window, "window", 1)
    stride = _check_int(stride, "stride", 1)
    if stride > window:
        raise UserError(
            f"stride ({stride}) must not exceed the window ({window}): pixels would be missed"
        )
    res, gy, gx = grid_offset(geobox)
    h, w = geobox.shape
    # Chip j covers global rows [j*stride, j*stride + window); keep those overlapping [gy, gy + h).
    j0, j1 = (gy - window) // stride + 1, (gy + h - 1) // stride
    i0, i1 = (gx - window) // stride + 1, (gx + w - 1) // stride
    top, left = j0 * stride, i0 * stride
    shape = ((j1 - j0) * stride + window, (i1 - i0) * stride + window)
    a = geobox.affine
    load = GeoBox(
        shape,
        Affine(res, 0.0, a.c + (left - gx) * res, 0.0, -res, a.f - (top - gy) * res),
        geobox.crs,
    )
    tile_window = (slice(gy - top, gy - top + h), slice(gx - left, gx - left + w))
    return ChipLayout(
        geobox=load,
        tile_geobox=geobox,
        tile_window=tile_window,
        window=window,
        stride=stride,
        first_chip=(j0, i0),
        chips_shape=(j1 - j0 + 1, i1 - i0 + 1),
    )


def blend_weights(window: int, floor: float = 1e-2) -> np.ndarray:
    """Smooth, strictly positive (window, window) float32 weights peaking at the chip centre.

    The outer product of a Hann window (without its zero end points) lifted by ``floor``, so that
    edge pixels of a chip still count where no other chip covers them (the map's border).
    """
    window = _check_int(window, "window", 1)
    if not 0 < floor <= 1:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    hann = np.hanning(window + 2)[1:-1]
    w1 = floor + (1.0 - floor) * hann
    return np.outer(w1, w1).astype(np.float32)


def blend(
    chip_probs: np.ndarray, plan: ChipLayout, weights: np.ndarray | None = None
) -> np.ndarray:
    """Weighted average of the chips' class probabilities over each tile pixel.

    :param chip_probs: (n_chips, C) probabilities, in the plan's chip order. Chips with any
        non-finite value (no data) are left out; a pixel no finite chip covers is NaN.
    :param plan: the tile's :func:`chip_layout`.
    :param weights: (window, window) chip weights; :func:`blend_weights` by default.
    :returns: (C, h, w) float32 over the tile's pixels.
    """
    probs = np.asarray(chip_probs)
    if probs.ndim != 2 or probs.shape[0] != plan.n_chips:
        raise ValueError(f"expected ({plan.n_chips}, C) chip probabilities, got {probs.shape}")
    win = plan.window
    wts = blend_weights(win) if weights is None else np.asarray(weights, dtype=np.float32)
    if wts.shape != (win, win):
        raise ValueError(f"weights must be ({win}, {win}), got {wts.shape}")
    ys, xs = plan.tile_window
    h, w = ys.stop - ys.start, xs.stop - xs.start
    # Accumulate in place in the float32 output: memory is the output plus one (h, w) plane,
    # also for wide inputs such as embeddings. Every pixel sums its chips in the same (global)
    # order in any tiling, so results are bit-identical across tilings.
    out = np.zeros((probs.shape[1], h, w), dtype=np.float32)
    wsum = np.zeros((h, w), dtype=np.float32)
    finite = np.isfinite(probs).all(axis=1)
    for k, (r, c) in enumerate(plan.offsets):
        if not finite[k]:
            continue
        # Intersect the chip [r, r+win) x [c, c+win) with the tile, in load-grid coordinates.
        r0, r1 = max(r, ys.start), min(r + win, ys.stop)
        c0, c1 = max(c, xs.start), min(c + win, xs.stop)
        if r0 >= r1 or c0 >= c1:
            continue
        ww = wts[r0 - r : r1 - r, c0 - c : c1 - c]
        dst = (slice(r0 - ys.start, r1 - ys.start), slice(c0 - xs.start, c1 - xs.start))
        out[(slice(None), *dst)] += probs[k].astype(np.float32)[:, None, None] * ww
        wsum[dst] += ww
    covered = wsum > 0
    np.divide(out, wsum, out=out, where=covered)
    out[:, ~covered] = np.nan
    return out
