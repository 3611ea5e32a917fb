"""A metadata-only Sentinel-2 L2A catalog for a region and a year: items, no pixels.

For scale tests of search, planning and scheduling. Every MGRS tile touching the region
(:func:`pipeline.grid.mgrs.s2_tiles`) gets the acquisitions of the real revisit at its latitude
(:func:`pipeline.grid.mgrs.acquisitions_per_year`), evenly spread through the year with a seeded
jitter, each an item in the demo generator's Earth Search v1 layout (the same properties,
extensions and eleven assets, :func:`pipeline.testing.demo.catalog._item`) whose asset hrefs point to
where Earth Search keeps them but are never read. Scene cloud cover follows a seeded draw (a
third clear, a third broken, a third overcast).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.grid.mgrs import acquisitions_per_year, s2_tiles
from pipeline.stac.bands import BANDS, EARTH_SEARCH_V1_KEYS, NATIVE_RESOLUTION, SCL
from pipeline.testing.demo.catalog import _collection, _item

__all__ = ["metadata_collection", "metadata_items"]

_HREF = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs"
_SCL_SIDE = 20  # the small SCL drawn per item for its percentages
_CLOUD_CLASSES = (0.05, 0.4, 0.9)  # clear, broken, overcast


def _scl(rng: np.random.Generator, cloud: float) -> np.ndarray:
    scl = rng.choice(np.array([4, 5, 6], np.uint8), size=(_SCL_SIDE, _SCL_SIDE))
    scl[rng.random(scl.shape) < cloud] = 9
    return scl


#: The acquisition a tile's template item is drawn for; its stamps are replaced per acquisition.
_T0 = dt.datetime(2000, 1, 1, 0, 0, 0, tzinfo=dt.UTC)


def _template(t: Any, rng: np.random.Generator, cloud: float) -> str:
    """One item of tile ``t`` acquired at ``_T0`` by S2A, as JSON text."""
    folder = f"{_HREF}/{t.code[:2]}/{t.code[2]}/{t.code[3:]}/2000/1/S2A_{t.code}_20000101_0_L2A"
    hrefs = {}
    for band in (*BANDS, SCL):
        res = NATIVE_RESOLUTION.get(band, 20)
        side = round(109_800 / res)
        hrefs[band] = (f"{folder}/{EARTH_SEARCH_V1_KEYS[band]}.tif", (side, side), res)
    doc = _item(
        "earth-search-v1", f"S2A_{t.code}_20000101_0_L2A", "sentinel-2a", _T0, _scl(rng, cloud),
        hrefs, EARTH_SEARCH_V1_KEYS, t.bounds, t.epsg, "05.09", t.code,
    )  # fmt: skip
    return json.dumps(doc)


def metadata_items(geometry_4326: Any, year: int, seed: int = 0) -> Iterator[dict]:
    """Items (dicts) for every MGRS tile over the region and every acquisition of ``year``.

    Per tile, one item per cloud class is drawn by the demo generator and its time stamps,
    platform and ids are then set for each acquisition (drawing each item afresh costs 30 ms).
    """

    rng = np.random.default_rng(seed)
    start = dt.datetime(year, 1, 1, 10, 30, tzinfo=dt.UTC)
    days = (dt.date(year + 1, 1, 1) - dt.date(year, 1, 1)).days
    for t in s2_tiles(geometry_4326):
        templates = [_template(t, rng, c) for c in _CLOUD_CLASSES]
        n = max(1, round(acquisitions_per_year(t.lat, days)))
        for k in range(n):
            when = start + dt.timedelta(days=(k * days) // n, minutes=float(rng.uniform(-20, 20)))
            text = templates[int(rng.integers(len(templates)))]
            text = (
                text.replace("2000-01-01T00:00:00.000000Z", when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
                .replace("20000101T000000", f"{when:%Y%m%dT%H%M%S}")
                .replace("20000101", f"{when:%Y%m%d}")
                .replace("/2000/1/", f"/{when.year}/{when.month}/")
            )
            if k % 2:
                text = text.replace("S2A", "S2B").replace("sentinel-2a", "sentinel-2b")
            yield json.loads(text)


def metadata_collection(items: list[dict]) -> dict:
    """The collection document over ``items``."""
    return _collection(items, "earth-search-v1")
