"""One window's read path, shared by map tiles and point windows: the STAC items whose footprint
touches the window (:class:`ItemIndex`), their masked reflectance on the window's GeoBox
(:func:`pipeline.reading.load_reflectance`) and the period composite
(:func:`pipeline.composite.median.composite`).

A map tile task and a point window call the same :func:`composite_window`, so a point's series is
made by the same code as the map's pixel under it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.stac.bands import BANDS

__all__ = ["FootprintIndex", "ItemIndex", "WindowComposite", "composite_window", "items_for"]


class FootprintIndex:
    """An R-tree over STAC item footprints (GeoJSON dicts or shapely geometries, EPSG:4326).

    :meth:`hits` finds the items whose footprint touches a window in O(log n) instead of testing
    every item of a continent for every tile.
    """

    def __init__(self, footprints: Sequence[Any]) -> None:
        import shapely
        from shapely.geometry import shape

        # An item without a footprint touches no window (an empty geometry is never a hit).
        empty = shapely.Polygon()
        self._tree = shapely.STRtree(
            [
                empty if not g else g if isinstance(g, shapely.Geometry) else shape(g)
                for g in footprints
            ]
        )

    def hits(self, geobox) -> list[int]:
        """Indices (ascending) of the footprints touching ``geobox``'s extent."""
        footprint = geobox.extent.to_crs("EPSG:4326").geom
        return sorted(int(i) for i in self._tree.query(footprint, predicate="intersects"))


class ItemIndex(FootprintIndex):
    """The STAC items (dicts) of a window read with an R-tree over their footprints, built once.

    ``for_window`` gives only the items touching a window (point windows use it; a map tile's
    work order gets references instead: :class:`pipeline.run.inputs.RunInputs`).
    """

    def __init__(self, items: list[dict]) -> None:
        super().__init__([d.get("geometry") for d in items])
        self.items = items

    def for_window(self, geobox) -> tuple[dict, ...]:
        return tuple(self.items[i] for i in self.hits(geobox))


def items_for(items: Sequence[dict] | ItemIndex, geobox) -> tuple[dict, ...]:
    """The STAC items (dicts) whose footprint touches the window ``geobox``, in their order."""
    index = items if isinstance(items, ItemIndex) else ItemIndex(list(items))
    return index.for_window(geobox)


@dataclass(frozen=True)
class WindowComposite:
    """A window's composite and what it was made from."""

    composite: Any
    """:class:`pipeline.composite.median.Composite`: (P, B, y, x) values and (P, y, x) counts."""
    acquisitions: int
    """Acquisition days loaded (0: no scene touches the window, everything is nodata)."""
    load_seconds: float
    offset_warnings: dict[str, str]
    """Scenes whose DN contradict their BOA offset (scene id -> reason)."""


def composite_window(
    items: Sequence[Any],
    geobox: Any,
    *,
    start: Any,
    end: Any,
    period: str,
    mask_snow: bool = True,
    scl_mask: str = "default",
    gap_fill: bool = True,
    native: bool = True,
) -> WindowComposite:
    """Load ``items`` (the ones touching the window) on ``geobox``, mask them and composite.

    ``mask_snow`` and ``scl_mask``: the SCL mask (:class:`pipeline.reading.cube.MaskConfig`).
    ``native=False`` skips the native-grid fast path and reads through odc-stac's warp
    (:func:`pipeline.reading.cube.load_cube`) on every grid. Raises :class:`pipeline.reading.cube.ReadFailure`
    when a scene cannot be read: lost input is never composited as "no observation".
    """
    from pipeline.composite.median import composite
    from pipeline.reading import load_reflectance
    from pipeline.reading.cube import MaskConfig

    t0 = time.perf_counter()
    ny, nx = geobox.shape
    if items:
        # The values are composited at once and dropped: the reader's work array holds them.
        refl = load_reflectance(
            items,
            geobox,
            mask=MaskConfig(mask_snow=mask_snow, scl_mask=scl_mask),
            native=native,
            work_buffer=True,
        )
        values, times, warnings = refl.values, refl.times, dict(refl.offset_warnings)
    else:  # no scene touches this window: everything is nodata
        values = np.full((0, len(BANDS), ny, nx), np.nan, np.float32)
        times = np.array([], dtype="datetime64[ns]")
        warnings = {}
    t_load = time.perf_counter() - t0
    comp = composite(values, times, start, end, period, gap_fill=gap_fill)
    return WindowComposite(comp, values.shape[0], t_load, warnings)
