"""The outline a STAC search sends: few vertices, containing the region. Pure, no I/O.

A STAC API tests every candidate item's footprint against the ``intersects`` geometry. pgstac
(PostGIS ``st_intersects``) does so for each page it serves, so a detailed outline costs on
every page: EU-27's 17,886 vertices made each page of 100 items take about 3 s. The search sends
:func:`search_outline` instead, a polygon with at most a few hundred vertices that *contains* the
region, and the client keeps exactly the footprints that intersect the region itself
(:func:`exact_filter`). Because the outline contains the region, every item the exact search
returns is among those the outline's search returns, so the result is the same item set.

Containment (planar, in EPSG:4326 degrees, as PostGIS tests a ``geometry``): simplifying with
tolerance ``t`` (Douglas-Peucker, whose result lies within Hausdorff distance ``t`` of its
input), buffering that by ``3t`` and simplifying again by ``t`` leaves every point of the region
at least ``t`` inside; the result is still checked with ``covers``, and the convex hull of the
region is used where that fails.
"""

from __future__ import annotations

from typing import Any

import shapely
from shapely.geometry import shape

__all__ = ["exact_filter", "search_outline"]

#: Outlines with at most this many vertices are sent as they are.
MAX_VERTICES = 400


def search_outline(geometry: Any, max_vertices: int = MAX_VERTICES) -> Any:
    """A polygon (or multipolygon) of at most about ``max_vertices`` vertices covering ``geometry``.

    :param geometry: the region, shapely, EPSG:4326 (lon/lat degrees).
    :returns: ``geometry`` itself when it has few vertices already; else the region simplified
        with tolerance ``t``, buffered by ``3t`` and simplified again, with ``t`` doubled from 0.01 degrees (about
        1 km) until the vertex count fits; the convex hull if that does not cover the region.
    """
    if shapely.get_num_coordinates(geometry) <= max_vertices:
        return geometry
    hull = geometry.convex_hull
    t = 0.01
    while t < 1.0:
        # simplified first (cheap), so the buffer is of few vertices: the region lies within
        # t of ``coarse``, hence 2t inside its 3t buffer, hence inside that simplified by t
        coarse = shapely.simplify(geometry, t)
        out = shapely.simplify(shapely.buffer(coarse, 3 * t, quad_segs=2), t)
        out = shapely.make_valid(out) if not out.is_valid else out
        if shapely.get_num_coordinates(out) <= max_vertices and out.covers(geometry):
            return out
        t *= 2
    return hull


def exact_filter(region: Any) -> Any:
    """A predicate ``f(item_dict) -> bool``: the item's footprint intersects ``region`` (EPSG:4326).

    Items without a geometry are kept (the server matched them; the reader decides).
    """
    shapely.prepare(region)

    def keep(item: dict) -> bool:
        geom = item.get("geometry")
        return True if not geom else bool(region.intersects(shape(geom)))

    return keep
