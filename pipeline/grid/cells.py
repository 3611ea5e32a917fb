"""The continental output grid: 100 km cells of the EEA reference grid in EPSG:3035. Pure, no I/O.

A region spanning several UTM zones is mapped in EPSG:3035 (LAEA Europe) on the EEA reference
grid (EEA, "EEA reference grid", 2013: cells anchored at the CRS origin, named by the size and the
easting/northing of their lower-left corner in units of the cell size, e.g. ``100kmE43N32`` is
4,300-4,400 km east, 3,200-3,300 km north). Its outputs are published per 100 km cell; the tile
grid is snapped to the cells (:func:`pipeline.grid.tiling.make_grid` with ``snap=CELL_M``) so every
tile lies in exactly one cell, and a cell's tiles are re-windowed into a :class:`TileGrid` of
their own for the COG writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.grid.tiling import Tile, TileGrid, make_grid

__all__ = [
    "CELL_M",
    "GRIDDED_CRS",
    "GRIDDED_TILE_SIZE",
    "Cell",
    "cell_code",
    "cells_of",
    "is_gridded",
    "output_grid",
]

#: The CRS of the EEA reference grid.
GRIDDED_CRS = "EPSG:3035"
#: Cell edge of the published grid (metres).
CELL_M = 100_000


def is_gridded(crs: str) -> bool:
    """True when outputs in ``crs`` are published per EEA grid cell."""
    return str(crs).upper() == GRIDDED_CRS


def cell_code(x: float, y: float, size_m: int = CELL_M) -> str:
    """The EEA grid code of the cell containing the point (x, y) in EPSG:3035 metres."""
    e, n = int(x // size_m), int(y // size_m)
    return f"{size_m // 1000}kmE{e}N{n}"


@dataclass(frozen=True)
class Cell:
    """One published grid cell.

    Attributes:
        code: EEA grid code, e.g. ``100kmE43N32``.
        grid: the cell's published pixels (the bounding box of its tiles, inside the 100 km
            cell) and the run's tiles inside it, their windows relative to that box.
        window: the cell's (rows, cols) in the run's output grid.
    """

    code: str
    grid: TileGrid
    window: tuple[slice, slice]

    def __hash__(self) -> int:
        return hash(self.code)

    @property
    def tile_ids(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.grid.tiles)


def cells_of(grid: TileGrid, size_m: int = CELL_M) -> dict[str, Cell]:
    """The cells holding at least one of ``grid``'s tiles, keyed by code, in row-major order.

    Raises ValueError if the grid is not snapped to the cells (see ``make_grid(snap=...)``).
    """
    res = grid.resolution
    c = round(size_m / res)
    gx0, gy1 = grid.geobox.affine.c, grid.geobox.affine.f
    h, w = grid.shape
    if gx0 % size_m or gy1 % size_m or h % c or w % c:
        raise ValueError(f"the output grid is not aligned with the {size_m} m cells")
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in grid.tiles:
        groups.setdefault((t.window[0].start // c, t.window[1].start // c), []).append(t)
    out: dict[str, Cell] = {}
    for (cr, cc), tiles in sorted(groups.items()):
        # The cell's published extent: its tiles' bounding box (a whole cell inland, less on a
        # coast or a border), always inside the cell and on the tile lattice.
        ys = slice(min(t.window[0].start for t in tiles), max(t.window[0].stop for t in tiles))
        xs = slice(min(t.window[1].start for t in tiles), max(t.window[1].stop for t in tiles))
        gbox = grid.geobox[ys, xs]
        local = tuple(
            Tile(
                row=t.row,
                col=t.col,
                geobox=t.geobox,
                window=(
                    slice(t.window[0].start - ys.start, t.window[0].stop - ys.start),
                    slice(t.window[1].start - xs.start, t.window[1].stop - xs.start),
                ),
            )
            for t in tiles
        )
        x0 = gx0 + cc * size_m
        y0 = gy1 - (cr + 1) * size_m
        code = cell_code(x0 + res / 2, y0 + res / 2, size_m)
        out[code] = Cell(code, TileGrid(gbox, grid.tile_size, local), (ys, xs))
    return out


#: Default tile edge (px) for gridded runs: divides the 10,000 px cell at 10 m.
GRIDDED_TILE_SIZE = 500


def output_grid(geometry: Any, crs: str, resolution: float, tile_size: int) -> TileGrid:
    """The run's tile grid: snapped to the 100 km cells in EPSG:3035, as before elsewhere."""
    return make_grid(geometry, crs, resolution, tile_size, snap=CELL_M if is_gridded(crs) else None)


#: Smallest tile edge (px) a small run is split down to: below it, per-task overhead dominates.
MIN_SPLIT_TILE = 64


def fit_tiles_to_workers(
    geometry: Any, crs: str, resolution: float, tile_size: int, workers: int | None, floor: int
) -> TileGrid:
    """The output grid, tiled so that every worker of a small run gets a tile.

    A region smaller than ``workers`` tiles is split finer: the tile edge is halved while the grid
    has fewer tiles than ``workers`` and the half is at least ``floor`` (and at least
    :data:`MIN_SPLIT_TILE`), stays an integer, and (gridded runs) still divides the 100 km cell.
    Larger regions keep ``tile_size`` (their grid is built once). The grid's extent never
    changes, only its tiling.

    :param workers: worker processes the tiles are spread over (>= 1; None: ``tile_size`` is
        kept, as for a resumed run).
    :param floor: smallest acceptable edge, e.g. a patch model's chip window.
    :returns: the :func:`output_grid` at the chosen tile edge (``grid.tile_size``).
    """
    floor = max(MIN_SPLIT_TILE, floor)
    cell_px = CELL_M / resolution if is_gridded(crs) else None
    grid = output_grid(geometry, crs, resolution, tile_size)
    while workers and len(grid.tiles) < workers:
        size = grid.tile_size
        half = size // 2
        if size % 2 or half < floor or (cell_px is not None and cell_px % half):
            break
        grid = output_grid(geometry, crs, resolution, half)
    return grid
