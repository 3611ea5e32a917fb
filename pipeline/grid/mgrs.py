"""Sentinel-2 MGRS tiles over a region, and their expected revisit. Pure, no I/O.

Sentinel-2 L1C/L2A products are cut into 109.8 x 109.8 km tiles on the MGRS 100 km grid of each
UTM zone: a tile's upper-left corner is the upper-left corner of its 100 km grid square, so
neighbouring tiles overlap by 9.8 km (ESA, Sentinel-2 Products Specification Document,
S2-PDGS-TAS-DI-PSD, section 2.3). Tile names follow MGRS (NGA, TM 8358.1): UTM zone, latitude
band letter (8 degree bands from 80 S, ``C``..``X``), then the 100 km square's column letter
(sets ``A-H``, ``J-R``, ``S-Z`` cycling every three zones) and row letter (``A-V`` without I and O,
offset by five in even zones).

The revisit model: two satellites in one orbit plane, 143 orbits per 10-day cycle each, so
ground tracks 40,075 / 143 = 280 km apart at the equator (closer by cos(latitude) towards the
poles) and a 5-day repeat together; a 290 km swath. A pixel is seen ``73 * 290 / (280 cos lat)``
times a year, and a tile has an acquisition (an item) whenever the swath touches any of its
109.8 km, ``73 * (290 + 109.8) / (280 cos lat)`` times a year. Both ignore the occasional missing
acquisition and the polar cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["S2Tile", "acquisitions_per_year", "observations_per_year", "s2_tiles"]

TILE_M = 109_800
SQUARE_M = 100_000
SWATH_KM = 290.0
TRACK_SPACING_KM = 40_075.0 / 143
REPEAT_DAYS = 5.0
_BANDS = "CDEFGHJKLMNPQRSTUVWX"
_COLS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROWS = "ABCDEFGHJKLMNPQRSTUV"


@dataclass(frozen=True)
class S2Tile:
    """One Sentinel-2 tile: ``code`` (e.g. ``32UPU``), its UTM ``epsg`` and ``bounds`` there,
    and the latitude of its centre (degrees)."""

    code: str
    epsg: int
    bounds: tuple[float, float, float, float]
    lat: float


def _band_letter(lat: float) -> str:
    return _BANDS[min(len(_BANDS) - 1, max(0, int((lat + 80) // 8)))]


def square_letters(zone: int, easting: float, northing: float) -> str:
    """The MGRS 100 km square letters of the square whose lower-left corner is given (metres)."""
    col = _COLS[(zone - 1) % 3][int(easting // SQUARE_M) - 1]
    row = _ROWS[(int(northing // SQUARE_M) + (5 if zone % 2 == 0 else 0)) % 20]
    return col + row


def s2_tiles(geometry_4326: Any) -> list[S2Tile]:
    """The Sentinel-2 tiles (northern hemisphere) whose 109.8 km extent meets a lon/lat polygon.

    Each UTM zone contributes the tiles meeting the part of the region inside that zone.
    """
    import shapely
    from odc.geo.crs import CRS
    from shapely.geometry import box

    from aoi import to_crs

    w, s, e, n = geometry_4326.bounds
    if s < 0:
        raise ValueError("s2_tiles covers the northern hemisphere only")
    out: list[S2Tile] = []
    for zone in range(int((w + 180) // 6) + 1, int((e + 180) // 6) + 2):
        lon0 = -180 + 6 * (zone - 1)
        strip = box(lon0, max(0.0, s - 1), lon0 + 6, min(84.0, n + 1))
        # A zone's tiles are the squares meeting its strip; each covers 9.8 km beyond its square,
        # so the region is taken a little into the neighbouring zones too.
        part = geometry_4326.intersection(box(lon0 - 2, max(0.0, s), lon0 + 8, min(84.0, n)))
        if part.is_empty or part.area == 0:
            continue
        epsg = 32600 + zone
        local = to_crs(part, f"EPSG:{epsg}")
        local_strip = to_crs(strip.segmentize(0.1), f"EPSG:{epsg}")
        x0, y0, x1, y1 = local.bounds
        es = np.arange(
            max(100_000, (x0 - TILE_M) // SQUARE_M * SQUARE_M), min(x1, 900_000), SQUARE_M
        )
        ns = np.arange((y0 // SQUARE_M) * SQUARE_M, y1 + TILE_M, SQUARE_M)  # upper edges
        ee, nn = np.meshgrid(es, ns)
        ee, nn = ee.ravel(), nn.ravel()
        shapely.prepare(local)
        shapely.prepare(local_strip)
        hit = shapely.intersects(shapely.box(ee, nn - TILE_M, ee + TILE_M, nn), local)
        hit &= shapely.intersects(shapely.box(ee, nn - SQUARE_M, ee + SQUARE_M, nn), local_strip)
        _, lats = CRS(epsg).transformer_to_crs("EPSG:4326")(
            ee[hit] + TILE_M / 2, nn[hit] - TILE_M / 2
        )
        for x, y, lat in zip(ee[hit], nn[hit], np.atleast_1d(lats).tolist(), strict=True):
            code = f"{zone:02d}{_band_letter(lat)}{square_letters(zone, x, y - SQUARE_M)}"
            bounds = (float(x), float(y - TILE_M), float(x + TILE_M), float(y))
            out.append(S2Tile(code, epsg, bounds, lat))
    return out


def _passes_per_year(width_km: float, lat: float, days: float) -> float:
    return days / REPEAT_DAYS * width_km / (TRACK_SPACING_KM * math.cos(math.radians(lat)))


def observations_per_year(lat: float, days: float = 365.0) -> float:
    """Expected acquisitions of one pixel at ``lat`` over ``days`` (both satellites)."""
    return _passes_per_year(SWATH_KM, min(abs(lat), 80.0), days)


def acquisitions_per_year(lat: float, days: float = 365.0) -> float:
    """Expected items (acquisitions touching it) of one tile centred at ``lat`` over ``days``."""
    return _passes_per_year(SWATH_KM + TILE_M / 1000, min(abs(lat), 80.0), days)
