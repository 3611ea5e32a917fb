"""The bundled offline sample: a seeded synthetic Sentinel-2 L2A catalog and its land-cover truth.

:func:`ensure_demo_catalog` generates the demo (2023, 73 dates, the ``demo`` region plus a 640 m
halo, Earth Search v1 layout) once into the cache and returns its folder; :func:`generate_catalog`
writes any variant (size, dates, layout, seed) for tests; :func:`load_truth` reads the truth raster.
The catalog is served by a real STAC API through :func:`pipeline.testing.stac_server.serve`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox

from pipeline.base.paths import cache_dir
from pipeline.stac.hrefs import local_path
from pipeline.testing.demo.catalog import (
    COLLECTION,
    DEMO_AOI,
    DEMO_BOUNDS,
    DEMO_EPSG,
    DEMO_MARGIN,
    LAYOUTS,
    default_dates,
    generate_catalog,
    landscape_of,
)
from pipeline.testing.demo.landscape import CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "COLLECTION",
    "DEMO_AOI",
    "DEMO_BOUNDS",
    "DEMO_EPSG",
    "DEMO_MARGIN",
    "GENERATOR_VERSION",
    "LAYOUTS",
    "default_dates",
    "ensure_demo_catalog",
    "generate_catalog",
    "landscape_of",
    "load_truth",
]

GENERATOR_VERSION = "1"
"""Bump when the generator's output changes; the cache folder is keyed by it."""

_DONE = ".complete"
_log = logging.getLogger(__name__)


def demo_catalog_dir() -> Path:
    """Where the demo catalog lives: ``cache_dir("demo", "v<GENERATOR_VERSION>")``."""

    return cache_dir("demo", f"v{GENERATOR_VERSION}")


def is_complete(catalog_dir: Path) -> bool:
    """True when a generation finished in ``catalog_dir`` and its first asset is still there."""
    catalog_dir = Path(catalog_dir)
    if not (catalog_dir / _DONE).is_file() or not (catalog_dir / "items.json").is_file():
        return False
    try:
        items = json.loads((catalog_dir / "items.json").read_text())["features"]
        href = next(iter(items[0]["assets"].values()))["href"]
    except (ValueError, KeyError, IndexError, StopIteration):
        return False
    path = local_path(href)  # a file:// URI: percent-decoded
    return path is not None and path.is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_demo_catalog(root: Path | None = None, **params: Any) -> Path:
    """The demo catalog folder (collection.json, items.json, COGs, truth), generated if missing.

    Safe to call from several processes at once (a file lock serialises generation). ``params``
    are passed to :func:`generate_catalog` (the defaults make the demo).
    """
    root = Path(root) if root is not None else demo_catalog_dir()
    root = root.resolve()
    if is_complete(root):
        return root
    with _locked(root.parent / f".{root.name}.lock"):
        if is_complete(root):
            return root
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        _log.info("generating the demo Sentinel-2 catalog in %s", root)
        generate_catalog(root, **params)
        (root / _DONE).write_text(GENERATOR_VERSION)
        _log.info("demo catalog ready (%.1f s)", time.perf_counter() - t0)
    return root


def load_truth(catalog_dir: Path) -> tuple[np.ndarray, list[str], Any]:
    """The land-cover truth of a generated catalog: (classes uint8 (H, W), class names, GeoBox)."""

    catalog_dir = Path(catalog_dir)
    with rasterio.open(catalog_dir / "truth.tif") as src:
        classes = src.read(1)
        epsg = src.crs.to_epsg()
        geobox = GeoBox(src.shape, src.transform, f"EPSG:{epsg}" if epsg else src.crs.to_wkt())
    meta = json.loads((catalog_dir / "truth.json").read_text())
    names = [meta["classes"][str(i)] for i in range(len(meta["classes"]))]
    return classes, names, geobox
