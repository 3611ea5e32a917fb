"""Generated Sentinel-2 L2A scenes laid out like Earth Search's COGs, for the read benchmarks.

uint16 DEFLATE with predictor 2 (SCL uint8), ``block`` px internal tiles, overviews, 10 m bands
``size`` px and 20 m bands / SCL ``size / 2`` px, one STAC item per acquisition (Earth Search v1
layout, via :func:`pipeline.testing.demo.catalog._item`). Pixel values are parcels plus noise (so DEFLATE
sees real structure) with cloud patches in SCL and DN 0 outside a diagonal swath edge in the
first scene. Deterministic for a given (size, n, block, seed); kept under ``S2LC_CACHE_DIR``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from pipeline.base.jsonio import write_json
from pipeline.stac.bands import BANDS, EARTH_SEARCH_V1_KEYS, NATIVE_RESOLUTION, SCL
from pipeline.testing.demo.catalog import write_provider_cog

EPSG = 32632
ORIGIN = (600000.0, 5400000.0)
"""Upper-left corner (UTM 32N) of every generated scene (a 10 m and 20 m lattice point)."""


def _scene(rng: np.random.Generator, size: int, k: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(band -> DN at its native resolution, SCL at 20 m) of acquisition ``k``."""
    half = size // 2
    yy, xx = np.ogrid[:half, :half]
    parcels = (np.add.outer(np.arange(half) // 23, np.arange(half) // 31) * 7919 % 13).astype(
        np.float32
    )
    coarse = rng.random((half // 64 + 2, half // 64 + 2)).astype(np.float32)
    clouds = np.kron(coarse, np.ones((64, 64), np.float32))[:half, :half] > 0.8
    scl = np.where(clouds, 9, 4).astype(np.uint8)
    swath = (yy + xx) < half // 3 if k == 0 else np.zeros((half, half), bool)
    scl[swath] = 0
    out: dict[str, np.ndarray] = {}
    for b, band in enumerate(BANDS):
        f = NATIVE_RESOLUTION[band] // 10
        n = size // f
        base = np.kron(parcels, np.ones((2, 2), np.float32)) if f == 1 else parcels
        noise = rng.integers(0, 48, (n, n), dtype=np.uint16)
        dn = (base * (90 + 17 * b) + 300 + 40 * k).astype(np.uint16) + noise
        if f == 1:
            dn[np.kron(clouds, np.ones((2, 2), bool))] = 6000 + b
            dn[np.kron(swath, np.ones((2, 2), bool))] = 0
        else:
            dn[clouds] = 6000 + b
            dn[swath] = 0
        out[band] = dn
    return out, scl


def provider_scenes(
    root: Path, size: int = 4096, n: int = 12, block: int = 1024, seed: int = 0
) -> list[dict]:
    """Write (or reuse) ``n`` generated acquisitions under ``root``; returns their item dicts."""
    from pipeline.testing.demo.catalog import _item

    folder = Path(root).resolve() / f"es-like-{size}-{n}-{block}-{seed}"
    index = folder / "items.json"
    if index.exists():
        return json.loads(index.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, n_ = ORIGIN
    bounds = (w, n_ - size * 10.0, w + size * 10.0, n_)
    items = []
    for k in range(n):
        when = dt.datetime(2023, 1, 5, 10, 30, tzinfo=dt.UTC) + dt.timedelta(days=30 * k)
        bands, scl = _scene(rng, size, k)
        item_id = f"S2B_32TNT_{when:%Y%m%d}_0_L2A"
        hrefs: dict[str, tuple[str, tuple[int, int], float]] = {}
        for band in (*BANDS, SCL):
            data = scl if band == SCL else bands[band]
            res = 20.0 if band == SCL else float(NATIVE_RESOLUTION[band])
            path = folder / f"{item_id}_{EARTH_SEARCH_V1_KEYS[band]}.tif"
            write_provider_cog(path, data, ORIGIN, res, EPSG, blocksize=block)
            hrefs[band] = (path.as_uri(), data.shape, res)
        platform = "sentinel-2b"
        items.append(
            _item(
                "earth-search-v1",
                item_id,
                platform,
                when,
                scl,
                hrefs,
                EARTH_SEARCH_V1_KEYS,
                bounds,
                EPSG,
                "05.09",
            )  # fmt: skip
        )
    write_json(index, items)
    return items
