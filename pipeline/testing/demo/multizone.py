"""A synthetic catalog across UTM zones: one demo scene set per zone, served as one collection.

Real Sentinel-2 tiles of neighbouring UTM zones overlap at the zone edge; each carries its own
zone's grid. :func:`generate_multizone_catalog` draws, for a lon/lat region, one demo catalog per
UTM zone the region touches (on that zone's grid, covering the region plus a margin, named after
the zone's MGRS tile there) and merges their items into one ``items.json`` / ``collection.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aoi import to_crs, utm_zone_of
from pipeline.grid.mgrs import s2_tiles
from pipeline.testing.demo.catalog import _collection, generate_catalog

__all__ = ["generate_multizone_catalog"]


def generate_multizone_catalog(
    root: Path,
    geometry_4326: Any,
    *,
    dates: Sequence[dt.datetime],
    seed: int = 0,
    margin_m: float = 200.0,
) -> Path:
    """Write the merged catalog into ``root`` (per-zone scenes under ``root/<tile>/``).

    :param geometry_4326: the region (shapely, lon/lat); each zone's scenes cover all of it.
    :param dates: acquisition times; zone k's are shifted by k days (another orbit).
    """

    root = Path(root)
    w, _, e, _ = geometry_4326.bounds
    features: list[dict] = []
    for k, zone in enumerate(range(utm_zone_of(w), utm_zone_of(e) + 1)):
        epsg = 32600 + zone
        x0, y0, x1, y1 = to_crs(geometry_4326, f"EPSG:{epsg}").bounds
        step = 20.0
        bounds = (
            math.floor((x0 - margin_m) / step) * step,
            math.floor((y0 - margin_m) / step) * step,
            math.ceil((x1 + margin_m) / step) * step,
            math.ceil((y1 + margin_m) / step) * step,
        )
        tile = next(t.code for t in s2_tiles(geometry_4326) if t.epsg == epsg)
        sub = generate_catalog(
            root / tile,
            seed=seed + k,
            bounds=bounds,
            aoi=bounds,
            epsg=epsg,
            dates=[d + dt.timedelta(days=k) for d in dates],
            partial_swath=None,
            mgrs_tile=tile,
        )
        features += json.loads((sub / "items.json").read_text())["features"]
    (root / "items.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    (root / "collection.json").write_text(json.dumps(_collection(features, "earth-search-v1")))
    return root
