"""The map viewer: how long a free-text query takes to show its heat map on the demo.

``view_query_s``: from sending a query to the viewer (``POST /api/query``, a text not asked
before, so the text tower runs) until every heat-map tile of the page's first view has been
served, over HTTP on loopback, like the page does it. The median of :data:`QUERIES`, after one
untimed query that waits for the model (loaded in the background at start-up); notes give each
query, the field's share, and the start-up and first-query times.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.bench.results import Entry

_log = logging.getLogger(__name__)

QUERIES = ("a lake", "a village", "a forest", "a wheat field", "a motorway")
VIEW_PX = (880, 760)  # the page's map area at 1200 x 760


def _tiles_for(bounds: list[float], view_px: tuple[int, int]) -> tuple[int, list[tuple[int, int]]]:
    """Zoom and Web Mercator tiles of a fitBounds view of ``bounds`` (lon/lat) in ``view_px``."""
    w, s, e, n = bounds

    def merc(lon: float, lat: float) -> tuple[float, float]:
        x = (lon + 180) / 360
        y = (1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2
        return x, y

    x0, y0 = merc(w, n)
    x1, y1 = merc(e, s)
    z = max(0, min(22, int(math.floor(math.log2(min(view_px[0] / ((x1 - x0) * 256),
                                                      view_px[1] / ((y1 - y0) * 256)))))))  # fmt: skip
    n_ = 2**z
    tiles = [
        (tx, ty)
        for tx in range(int(x0 * n_), int(x1 * n_) + 1)
        for ty in range(int(y0 * n_), int(y1 * n_) + 1)
    ]
    return z, tiles


def view_entries(map_dir: str | Path | None = None) -> list[Entry]:
    import requests

    from pipeline.bench.field import _make_demo_field

    tmp = tempfile.TemporaryDirectory(prefix="s2lc-bench-view-")
    proc = None
    try:
        if map_dir is None:
            map_dir = Path(tmp.name) / "demo"
            _log.info("demo map with --save-embeddings")
            _make_demo_field(map_dir)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "view", str(map_dir), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        url = proc.stdout.readline().strip()
        started = time.perf_counter() - t0
        meta = requests.get(url + "api/meta", timeout=60).json()
        if not meta["query"]["available"]:
            raise RuntimeError(f"the map has no usable field: {meta['query']['reason']}")
        z, tiles = _tiles_for(meta["bounds"], VIEW_PX)
        t = time.perf_counter()  # the first query waits for the model, loaded in the background
        requests.post(url + "api/query", json={"text": "a map"}, timeout=600).raise_for_status()
        first = time.perf_counter() - t
        each, field_s = {}, {}
        for text in QUERIES:
            t = time.perf_counter()
            res = requests.post(url + "api/query", json={"text": text}, timeout=120)
            res.raise_for_status()
            qid = res.json()["id"]
            for tx, ty in tiles:
                r = requests.get(f"{url}tiles/query/{qid}/{z}/{tx}/{ty}.png", timeout=60)
                r.raise_for_status()
            each[text] = round(time.perf_counter() - t, 3)
            field_s[text] = res.json()["seconds"]
        value = float(np.median(list(each.values())))
        return [
            Entry(
                name="view_query_s",
                value=round(value, 3),
                unit="s",
                notes={
                    "what": "viewer: free-text query to its heat-map tiles of the first view "
                    "(demo map, untrained TimeSenCLIP, loopback HTTP)",
                    "per_query_s": each,
                    "field_query_s": field_s,
                    "tiles": len(tiles),
                    "zoom": z,
                    "server_start_s": round(started, 2),
                    "first_query_s": round(first, 2),
                    "map_px": meta.get("shape"),
                    "goal_s": 2.0,
                    "load_average_1min": round(os.getloadavg()[0], 1),
                },
            )
        ]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        tmp.cleanup()
