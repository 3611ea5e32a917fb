"""Extracting points' composite series: one STAC search per block of windows, each window through
the map's window path (:func:`pipeline.composite.window.composite_window`), finished blocks kept in
``<out>.parts/`` so an interrupted extraction resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import UserError
from pipeline.points.reading import Points
from pipeline.points.table import PointTable, concat_tables
from pipeline.points.windows import Window, group_windows
from pipeline.reading.cube import MaskConfig
from pipeline.run.config import CompositeConfig
from pipeline.stac.search import SearchConfig

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    """How to search, load and composite: the map run's parts, plus how points are grouped."""

    composite: CompositeConfig
    search: SearchConfig = field(default_factory=SearchConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    resolution: float = 10.0
    """Pixel size in metres."""
    crs: str | None = None
    """One CRS for all points (None: each point's UTM zone)."""
    tile_size: int = 1024
    """Grouping tile in pixels."""
    cluster_px: int = 64
    """Points within this many pixels share one loading window."""
    block_tiles: int = 8
    """Tiles per side sharing one STAC search."""
    workers: int = 4
    """Windows loaded in parallel."""
    gap_fill: bool = True
    """Fill empty periods from the others (the map always does)."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError("--workers must be >= 1")

    def flat(self) -> dict[str, Any]:
        """The settings by their command-line names (the table's meta and the resume key)."""
        c, s = self.composite, self.search
        return {
            "start": c.start,
            "end": c.end,
            "period": c.period,
            "profile": s.profile,
            "stac_url": s.stac_url,
            "collection": s.collection,
            "max_cloud": s.max_cloud,
            "mask_snow": self.mask.mask_snow,
            "scl_mask": self.mask.scl_mask,
            "resolution": self.resolution,
            "crs": self.crs,
            "tile_size": self.tile_size,
            "cluster_px": self.cluster_px,
            "block_tiles": self.block_tiles,
            "workers": self.workers,
            "gap_fill": self.gap_fill,
        }


def _block_geometry(windows: Sequence[Window]):
    from shapely.geometry import box
    from shapely.ops import unary_union

    parts = [box(*w.geobox.extent.to_crs("EPSG:4326").boundingbox) for w in windows]
    return unary_union(parts).envelope if len(parts) > 1 else parts[0]


def _search_block(cfg: ExtractConfig, geometry) -> list[dict]:
    from pipeline.stac.search import NoScenesError, search_items

    c = cfg.composite
    try:
        return [it.to_dict() for it in search_items(geometry, c.start, c.end, cfg.search)]
    except NoScenesError as exc:  # e.g. points at sea: empty series
        _log.warning("%s", exc)
        return []


def _extract_block(
    cfg: ExtractConfig, points: Points, windows: Sequence[Window], pool: cf.Executor
) -> PointTable:
    from pipeline.composite.window import ItemIndex, composite_window
    from pipeline.stac.bands import BANDS

    items = _search_block(cfg, _block_geometry(windows))
    index = ItemIndex(items)

    def one(w: Window):
        # odc-stac's warp on every grid (native=False), as point extraction always read
        comp = composite_window(
            index.for_window(w.geobox), w.geobox, start=cfg.composite.start,
            end=cfg.composite.end, period=cfg.composite.period, mask_snow=cfg.mask.mask_snow,
            scl_mask=cfg.mask.scl_mask, gap_fill=cfg.gap_fill, native=False,
        ).composite  # fmt: skip
        vals = np.asarray(comp.values)[:, :, w.rows, w.cols]  # (P, B, n)
        cnts = np.asarray(comp.counts)[:, w.rows, w.cols]  # (P, n)
        return w, np.transpose(vals, (2, 0, 1)), cnts.T, np.asarray(comp.period_starts)

    results = list(pool.map(one, windows))
    idx = np.concatenate([w.points for w, *_ in results])
    xs, ys = [], []
    for w, *_ in results:
        a = w.geobox.affine
        xs.append(a.c + (w.cols + 0.5) * a.a)
        ys.append(a.f + (w.rows + 0.5) * a.e)
    period_starts = results[0][3].astype("datetime64[D]")
    return PointTable(
        ids=points.ids[idx],
        lon=points.lon[idx],
        lat=points.lat[idx],
        values=np.concatenate([r[1] for r in results]).astype(np.float32),
        counts=np.concatenate([r[2] for r in results]).astype(np.int16),
        period_starts=period_starts,
        bands=tuple(BANDS),
        attrs={k: v[idx] for k, v in points.attrs.items()},
        crs=np.concatenate([np.full(len(w.points), w.crs) for w, *_ in results]).astype(str),
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        meta={"n_items": len(items)},
    )


def _parts_key(cfg: ExtractConfig, points: Points) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {k: str(v) for k, v in cfg.flat().items() if k != "workers"}, sort_keys=True
        ).encode()
    )
    h.update(points.ids.astype(str).tobytes())
    h.update(np.round(points.lon, 7).tobytes())
    h.update(np.round(points.lat, 7).tobytes())
    return h.hexdigest()[:16]


def extract_points(
    points: Points,
    cfg: ExtractConfig,
    out: str | Path,
    *,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> PointTable:
    """Extract every point's composite series and save the table to ``out`` (``.npz``).

    Finished search blocks are kept in ``<out>.parts/`` until the table is written, so a rerun
    with the same points and settings skips them.
    """
    out = Path(out)
    if out.suffix != ".npz":
        out = out.with_name(out.name + ".npz")
    windows = group_windows(
        points,
        crs=cfg.crs,
        resolution=cfg.resolution,
        tile_size=cfg.tile_size,
        cluster_px=cfg.cluster_px,
        block_tiles=cfg.block_tiles,
    )
    blocks: dict[str, list[Window]] = {}
    for w in windows:
        blocks.setdefault(w.block, []).append(w)
    parts = out.with_name(out.name + ".parts")
    key = _parts_key(cfg, points)
    parts.mkdir(parents=True, exist_ok=True)
    marker = parts / "key.txt"
    if marker.exists() and (marker.read_text().strip() != key or not resume):
        for f in parts.glob("*.npz"):
            f.unlink()
    marker.write_text(key)
    _log.info(
        "%d points -> %d windows in %d tiles, %d search blocks",
        len(points),
        len(windows),
        len({w.tile for w in windows}),
        len(blocks),
    )
    tables: list[PointTable] = []
    done = 0
    with cf.ThreadPoolExecutor(max_workers=cfg.workers) as pool:
        for bi, (name, ws) in enumerate(sorted(blocks.items())):
            part = parts / f"block_{hashlib.sha1(name.encode()).hexdigest()[:12]}.npz"
            if part.exists():
                table = PointTable.load(part)
            else:
                table = _extract_block(cfg, points, ws, pool)
                table.save(part)
            tables.append(table)
            done += len(ws)
            if progress:
                progress(bi + 1, len(blocks))
    order_of = {pid: i for i, pid in enumerate(points.ids.tolist())}
    merged = concat_tables(tables)
    order = np.argsort([order_of[p] for p in merged.ids.tolist()], kind="stable")
    merged = merged.subset(order)
    merged.meta = {
        "start": cfg.composite.start.isoformat(),
        "end": cfg.composite.end.isoformat(),
        "period": cfg.composite.period,
        "profile": cfg.search.profile,
        "stac_url": cfg.search.stac_url,
        "collection": cfg.search.collection,
        "max_cloud": cfg.search.max_cloud,
        "mask_snow": cfg.mask.mask_snow,
        "scl_mask": cfg.mask.scl_mask,
        "resolution": cfg.resolution,
        "gap_fill": cfg.gap_fill,
        "n_items": int(sum(t.meta.get("n_items", 0) for t in tables)),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    merged.save(out)
    for f in parts.glob("*"):
        f.unlink()
    parts.rmdir()
    return merged
