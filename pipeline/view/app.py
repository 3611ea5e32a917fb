"""The viewer's web application (Starlette): the page, its static files, tiles and a small JSON API.

Routes::

    GET  /                                   the map page (static/index.html)
    GET  /static/...                         JavaScript, CSS, the vendored Leaflet
    GET  /api/meta                           title, bounds, zooms, legend with class shares, layers
    GET  /tiles/{layer}/{z}/{x}/{y}.png      classes | confidence | valid_obs | rgb
         classes takes ?alpha=a0,a1,...      per-class opacity in [0, 1] (0 hides the class)
    GET  /api/pixel?lon=..&lat=..            top-k classes and probabilities, confidence, counts
    POST /api/query {"text": "..."}          prepare a free-text query on the embedding field
    GET  /api/query/{qid}                    its statistics (tiles computed, cached)
    GET  /tiles/query/{qid}/{z}/{x}/{y}.png  its heat map's tiles, each computed from the field
                                             when first asked for, then cached

Nothing is fetched from outside the process: the page's scripts and styles come from
``pipeline/view/static`` and every tile from the map's rasters.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path
from threading import Event, Lock
from typing import Any

import numpy as np
import rasterio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.view import reading, render
from pipeline.view.field import FieldQuery, open_field
from pipeline.view.sources import RAMP_LAYERS, MapSources

__all__ = ["ViewerState", "create_app"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_QUERY_CACHE = 8  # queries kept (most recent first), each with its computed tiles
_TILE_CACHE = 512  # PNG tiles kept per query (least recently used dropped)
_EMPTY_PNG = render.encode_png(np.zeros((reading.TILE_SIZE, reading.TILE_SIZE, 4), np.uint8))


class ViewerState:
    """What the app serves: the map's sources, derived layers and recent query heat maps."""

    def __init__(self, sources: MapSources, *, load_field: bool = True) -> None:
        self.sources = sources
        self.info = reading.layer_info(sources.classes)
        n = len(sources.classes_legend)
        self.n_values = max(c.value for c in sources.classes_legend) + 1 if n else 0
        shares, self.shares_exact = reading.class_shares(sources.classes, self.n_values)
        self.shares = shares
        self.lut_colors = ["#808080"] * self.n_values
        for c in sources.classes_legend:
            self.lut_colors[c.value] = c.color
        self._luts = {name: render.ramp_lut(name) for name in render.RAMPS}
        self.valid_obs_max = self._valid_obs_max()
        self._rgb_mem: reading.MemRaster | None = None
        h, w = self.info["shape"]
        self.has_rgb = sources.rgb is not None or (
            sources.store_has_composite and h * w <= reading.RGB_FROM_STORE_MAX_PX
        )
        self._rgb_lock = Lock()
        self.queries: OrderedDict[str, _QueryEntry] = OrderedDict()
        self._q_lock = Lock()
        self._q_serial = 0
        self.field: FieldQuery | None = None
        self.field_reason = "this run saved no embedding field (run --save-embeddings)"
        if load_field and sources.field is not None:
            self.field, self.field_reason = open_field(sources.field)

    def _valid_obs_max(self) -> float:
        p = self.sources.valid_obs
        if p is None:
            return 1.0

        with rasterio.open(p) as src:
            scale = max(1.0, (src.height * src.width / 1_000_000) ** 0.5)
            shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
            data = src.read(1, out_shape=shape)
        return float(max(1, np.max(data)))

    def rgb_path(self) -> str | None:
        """The RGB layer's raster: the run's composite COG, or one built from the saved composite."""
        s = self.sources
        if s.rgb is not None:
            return str(s.rgb)
        if not self.has_rgb or s.store is None:
            return None
        with self._rgb_lock:
            if self._rgb_mem is None:
                self._rgb_mem = reading.composite_rgb_from_store(s.store)
        return None if self._rgb_mem is None else self._rgb_mem.path

    def meta(self) -> dict[str, Any]:
        s = self.sources
        layers = {
            "classes": True,
            "confidence": s.confidence is not None,
            "valid_obs": s.valid_obs is not None,
            "rgb": self.has_rgb,
            **{name: True for name, _ in s.ramps},
        }
        return {
            "title": s.title,
            "warning": s.warning,
            "untrained": s.untrained,
            "bounds": self.info["bounds"],
            "shape": list(self.info["shape"]),
            "minzoom": self.info["minzoom"],
            "maxzoom": self.info["maxzoom"],
            "classes": [
                {
                    "value": c.value,
                    "name": c.name,
                    "color": c.color,
                    "share": float(self.shares[c.value]) if c.value < len(self.shares) else 0.0,
                }
                for c in s.classes_legend
            ],
            "shares_exact": self.shares_exact,
            "layers": layers,
            "rgb_source": s.rgb_source if self.has_rgb else None,
            "valid_obs_max": self.valid_obs_max,
            "ramps": [
                {"name": n, "label": RAMP_LAYERS[n][0], "ramp": RAMP_LAYERS[n][3]}
                for n, _ in s.ramps
            ],
            "topk": s.store is not None,
            "query": {
                "available": self.field is not None,
                "reason": None if self.field else self.field_reason,
                "kinds": list(self.field.kinds) if self.field else [],
            },
        }

    # --- tiles -------------------------------------------------------------------------------

    def tile(self, layer: str, z: int, x: int, y: int, alpha: str | None) -> bytes | None:
        """PNG bytes of one tile; None for an unknown layer (404)."""
        s = self.sources
        if layer == "classes":
            lut = render.class_lut(self.lut_colors, _parse_alpha(alpha, self.n_values))
            t = reading.read_tile(s.classes, z, x, y, resampling="nearest")
            return (
                _EMPTY_PNG
                if t is None
                else render.encode_png(render.colorize_classes(t.data[0], t.valid, lut))
            )
        if layer == "confidence" and s.confidence is not None:
            t = reading.read_tile(s.confidence, z, x, y, resampling="average")
            return (
                _EMPTY_PNG
                if t is None
                else render.encode_png(
                    render.colorize_ramp(t.data[0], t.valid, 0.0, 1.0, self._luts["viridis"])
                )
            )
        if layer == "valid_obs" and s.valid_obs is not None:
            t = reading.read_tile(s.valid_obs, z, x, y, indexes=[1], resampling="average")
            return (
                _EMPTY_PNG
                if t is None
                else render.encode_png(
                    render.colorize_ramp(
                        t.data[0], t.valid, 0.0, self.valid_obs_max, self._luts["cividis"]
                    )
                )
            )
        ramp = dict(s.ramps).get(layer)
        if ramp is not None:
            _, vmin, vmax, lut = RAMP_LAYERS[layer]
            t = reading.read_tile(ramp, z, x, y, resampling="average")
            return (
                _EMPTY_PNG
                if t is None
                else render.encode_png(
                    render.colorize_ramp(t.data[0], t.valid, vmin, vmax, self._luts[lut])
                )
            )
        if layer == "rgb":
            path = self.rgb_path()
            if path is None:
                return None
            t = reading.read_tile(path, z, x, y, indexes=[1, 2, 3], resampling="average")
            if t is None:
                return _EMPTY_PNG
            valid = t.valid & (t.data != 0).any(axis=0)
            return render.encode_png(render.stretch_rgb(t.data, valid, 0.0, 255.0))
        return None

    def query_tile(self, qid: str, z: int, x: int, y: int) -> bytes | None:
        """PNG of tile ``z/x/y`` of query ``qid``: from the query's cache, or computed from the
        field now (once, even when several requests ask at the same time); None for an
        unknown query (404)."""
        with self._q_lock:
            entry = self.queries.get(qid)
        if entry is None or self.field is None:
            return None
        return entry.tile((z, x, y), lambda: self._render_query_tile(entry, z, x, y))

    def _render_query_tile(self, entry: _QueryEntry, z: int, x: int, y: int) -> bytes:
        t = self.field.tile(entry.query, z, x, y)
        if t is None:
            return _EMPTY_PNG
        values, valid = t
        st = entry.stats
        return render.encode_png(
            render.colorize_ramp(values, valid, st["vmin"], st["vmax"], self._luts["magma"])
        )

    def query_stats(self, qid: str) -> dict[str, Any] | None:
        """A query's statistics with its tile counts (``tiles_computed``, ``tiles_cached``)."""
        with self._q_lock:
            entry = self.queries.get(qid)
        return None if entry is None else entry.snapshot()

    # --- pixel and query ---------------------------------------------------------------------

    def pixel(self, lon: float, lat: float, qid: str | None = None) -> dict[str, Any]:
        s = self.sources
        names = {c.value: c for c in s.classes_legend}
        out: dict[str, Any] = {"lon": lon, "lat": lat, "topk": []}
        pairs: list[tuple[int, float]] | None = None
        if s.store is not None:
            pairs = reading.topk_at(s.store, lon, lat)
        if pairs is None:
            v = reading.point_values(s.classes, lon, lat)
            conf = reading.point_values(s.confidence, lon, lat) if s.confidence else None
            if v is not None:
                pairs = [(int(v[0]), conf[0] if conf else float("nan"))]
        for value, prob in pairs or []:
            c = names.get(value)
            out["topk"].append(
                {
                    "value": value,
                    "name": c.name if c else str(value),
                    "color": c.color if c else "#808080",
                    "prob": None if not np.isfinite(prob) else round(prob, 4),
                }
            )
        if s.confidence is not None:
            conf = reading.point_values(s.confidence, lon, lat)
            out["confidence"] = (
                None if conf is None or not np.isfinite(conf[0]) else round(conf[0], 4)
            )
        if s.valid_obs is not None:
            obs = reading.point_values(s.valid_obs, lon, lat)
            out["valid_obs"] = None if obs is None else int(obs[0])
        for name, path in s.ramps:
            v = reading.point_values(path, lon, lat)
            out[name] = None if v is None or not np.isfinite(v[0]) else round(float(v[0]), 4)
        if qid is not None and self.field is not None:
            with self._q_lock:
                entry = self.queries.get(qid)
            if entry is not None:
                rc = self.field.pixel_of(lon, lat)
                score = None if rc is None else self.field.point(entry.query, *rc)
                out["query"] = {
                    "text": entry.stats["text"],
                    "score": None if score is None else round(score, 4),
                }
        return out

    def query(self, text: str, kind: str = "similarity") -> dict[str, Any]:
        """Prepare a free-text query on the field (its vector, its colour range from a sample
        of the field); its tiles are computed when asked for, and kept per text and kind (the
        same text again returns the same query). Returns its id, colour range and timing.

        :raises LookupError: the map has no usable field.
        :raises ValueError: the field API refused the query (empty text, unknown kind, ...).
        """
        if self.field is None:
            raise LookupError(self.field_reason)
        with self._q_lock:  # the same text again: the same query, its tiles already computed
            for qid, entry in self.queries.items():
                if (entry.stats["text"], entry.stats["kind"]) == (text, kind):
                    self.queries.move_to_end(qid)
                    return dict(entry.stats)
        t0 = time.perf_counter()
        q = self.field.prepare(text, kind)
        vmin, vmax = self.field.colour_range(q)
        with self._q_lock:
            self._q_serial += 1
            qid = f"q{self._q_serial}"
        stats = {
            "id": qid,
            "text": text,
            "kind": kind,
            "vmin": vmin,
            "vmax": vmax,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        with self._q_lock:
            self.queries[qid] = _QueryEntry(q, stats)
            while len(self.queries) > _QUERY_CACHE:
                self.queries.popitem(last=False)
        return stats


class _QueryEntry:
    """One query: its prepared vectors, statistics and computed PNG tiles (a bounded LRU)."""

    def __init__(self, query: Any, stats: dict[str, Any]) -> None:
        self.query = query
        self.stats = stats
        self.computed = 0
        self._tiles: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._pending: dict[tuple[int, int, int], Event] = {}
        self._lock = Lock()

    def tile(self, key: tuple[int, int, int], compute: Any) -> bytes:
        """The cached PNG of ``key``, else ``compute()``'s (one computation per key at a time;
        concurrent requests for it wait for that one)."""
        while True:
            with self._lock:
                png = self._tiles.get(key)
                if png is not None:
                    self._tiles.move_to_end(key)
                    return png
                wait = self._pending.get(key)
                if wait is None:
                    done = self._pending[key] = Event()
                    break
            wait.wait()
        try:
            png = compute()
            with self._lock:
                self.computed += 1
                self._tiles[key] = png
                while len(self._tiles) > _TILE_CACHE:
                    self._tiles.popitem(last=False)
            return png
        finally:
            with self._lock:
                del self._pending[key]
            done.set()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self.stats, "tiles_computed": self.computed, "tiles_cached": len(self._tiles)}


def _parse_alpha(alpha: str | None, n: int) -> dict[int, float] | None:
    if not alpha:
        return None
    out: dict[int, float] = {}
    for i, a in enumerate(alpha.split(",")[:n]):
        try:
            out[i] = float(a)
        except ValueError:
            continue
    return out


def create_app(state: ViewerState) -> Any:
    """The Starlette application serving ``state``."""

    png_headers = {"Cache-Control": "no-cache"}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def meta(request: Request) -> Response:
        return JSONResponse(state.meta())

    async def tile(request: Request) -> Response:
        p = request.path_params
        png = await run_in_threadpool(
            state.tile, p["layer"], p["z"], p["x"], p["y"], request.query_params.get("alpha")
        )
        if png is None:
            return Response(status_code=404)
        return Response(png, media_type="image/png", headers=png_headers)

    async def query_tile(request: Request) -> Response:
        p = request.path_params
        png = await run_in_threadpool(state.query_tile, p["qid"], p["z"], p["x"], p["y"])
        if png is None:
            return Response(status_code=404)
        return Response(png, media_type="image/png", headers=png_headers)

    async def query_stats(request: Request) -> Response:
        stats = state.query_stats(request.path_params["qid"])
        if stats is None:
            return JSONResponse({"error": "unknown query"}, status_code=404)
        return JSONResponse(stats)

    async def pixel(request: Request) -> Response:
        try:
            lon = float(request.query_params["lon"])
            lat = float(request.query_params["lat"])
        except (KeyError, ValueError):
            return JSONResponse({"error": "lon and lat (degrees) are required"}, status_code=400)
        qid = request.query_params.get("query")
        return JSONResponse(await run_in_threadpool(state.pixel, lon, lat, qid))

    async def query(request: Request) -> Response:
        try:
            body = await request.json()
            text = str(body["text"]).strip()
            kind = str(body.get("kind") or "similarity")
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'send JSON {"text": "..."}'}, status_code=400)
        if not text:
            return JSONResponse({"error": "the query text is empty"}, status_code=400)
        try:
            stats = await run_in_threadpool(state.query, text, kind)
        except LookupError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        log.info("query %r: %.2f s", text, stats["seconds"])
        return JSONResponse(stats)

    routes = [
        Route("/", index),
        Route("/favicon.ico", favicon),
        Route("/api/meta", meta),
        Route("/api/pixel", pixel),
        Route("/api/query", query, methods=["POST"]),
        Route("/api/query/{qid:str}", query_stats),
        Route("/tiles/query/{qid:str}/{z:int}/{x:int}/{y:int}.png", query_tile),
        Route("/tiles/{layer:str}/{z:int}/{x:int}/{y:int}.png", tile),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)
