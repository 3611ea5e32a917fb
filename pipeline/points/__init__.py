"""Per-point Sentinel-2 composites: read reference points, extract their time series, store them.

``python -m pipeline extract-points`` turns a points file (CSV with id/lon/lat columns, or any
vector file of points) into a :class:`PointTable`: for every point, period and band the composite
reflectance of the pixel that contains the point, plus the number of valid observations behind
each period. It uses the same search, cube and composite code as a map run, on the same pixel
lattice (pixel edges on multiples of the resolution from the CRS origin), so a point's series is
the series the map classifies at that pixel.

Scaling to 100k+ points (LUCAS): points are grouped by UTM zone, then by tile of the zone's
:func:`~pipeline.grid.tiling.make_grid` lattice; the tiles of one *search block* share one STAC search,
and every cluster of nearby points (``cluster_px``) loads only the small window around it, never
a whole tile. Blocks are written to ``<out>.parts/`` as they finish, so an interrupted extraction
resumes where it stopped.

A :class:`PointTable` is saved as one ``.npz`` (numpy arrays, no pickle): ``values`` (N, P, B)
float32 reflectance (NaN where no observation), ``counts`` (N, P) valid observations,
``period_start``, ``band``, ``point_id``, ``lon``, ``lat``, the pixel (``crs``, ``x``, ``y``) and
every other column of the input as a string attribute (labels, NUTS0, ...).

Modules: :mod:`~pipeline.points.reading` (the input points), :mod:`~pipeline.points.table` (the
extracted table and its file format), :mod:`~pipeline.points.windows` (windows and search
blocks) and :mod:`~pipeline.points.extraction` (search, composite, resume).
"""

from __future__ import annotations

from aoi import utm_epsg
from pipeline.points.extraction import ExtractConfig, extract_points
from pipeline.points.reading import Points, read_points
from pipeline.points.table import PointTable, concat_tables
from pipeline.points.windows import Window, group_windows

__all__ = [
    "ExtractConfig",
    "PointTable",
    "Points",
    "Window",
    "concat_tables",
    "extract_points",
    "group_windows",
    "read_points",
    "utm_epsg",
]
