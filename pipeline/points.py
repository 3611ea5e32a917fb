"""Per-point Sentinel-2 composites: read reference points, extract their time series, store them.

``python -m pipeline extract-points`` turns a points file (CSV with id/lon/lat columns, or any
vector file of points) into a :class:`PointTable`: for every point, period and band the composite
reflectance of the pixel that contains the point, plus the number of valid observations behind
each period. It uses the same search, cube and composite code as a map run, on the same pixel
lattice (pixel edges on multiples of the resolution from the CRS origin), so a point's series is
the series the map classifies at that pixel.

Scaling to 100k+ points (LUCAS): points are grouped by UTM zone, then by tile of the zone's
:func:`~pipeline.tiling.make_grid` lattice; the tiles of one *search block* share one STAC search,
and every cluster of nearby points (``cluster_px``) loads only the small window around it, never
a whole tile. Blocks are written to ``<out>.parts/`` as they finish, so an interrupted extraction
resumes where it stopped.

A :class:`PointTable` is saved as one ``.npz`` (numpy arrays, no pickle): ``values`` (N, P, B)
float32 reflectance (NaN where no observation), ``counts`` (N, P) valid observations,
``period_start``, ``band``, ``point_id``, ``lon``, ``lat``, the pixel (``crs``, ``x``, ``y``) and
every other column of the input as a string attribute (labels, NUTS0, ...).
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

FORMAT = "s2lc-points-v1"
ID_COLUMNS = ("id", "point_id", "POINT_ID", "pointid", "ID")
LON_COLUMNS = ("lon", "longitude", "lng", "x", "TH_LONG", "GPS_LONG", "X_LAEA")
LAT_COLUMNS = ("lat", "latitude", "y", "TH_LAT", "GPS_LAT", "Y_LAEA")


# --- input points -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Points:
    """Reference points: ids, WGS84 coordinates and their other columns (as strings)."""

    ids: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    attrs: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _pick(
    columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, path: Path
) -> str:
    if wanted:
        if wanted not in columns:
            raise UserError(f"{path}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    lower = {c.lower(): c for c in columns}
    for c in candidates:
        if c in columns:
            return c
        if c.lower() in lower:
            return lower[c.lower()]
    raise UserError(
        f"{path}: cannot find the {what} column (tried {', '.join(candidates)}); "
        f"name it with --{what}-column"
    )


def _strings(values: Any) -> np.ndarray:
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append("")
        elif isinstance(v, float) and v.is_integer():
            out.append(str(int(v)))
        else:
            out.append(str(v))
    return np.array(out, dtype=str)


def read_points(
    path: str | Path,
    *,
    id_column: str | None = None,
    lon_column: str | None = None,
    lat_column: str | None = None,
    crs: str | None = None,
) -> Points:
    """Read points from a CSV (id, lon, lat columns; ``crs`` when they are not WGS84) or any vector
    file geopandas opens (point geometries, reprojected to WGS84; polygons use their centroid).

    Column names are found case-insensitively among common spellings (``id``/``point_id``/
    ``POINT_ID``, ``lon``/``longitude``/``TH_LONG``, ``lat``/``latitude``/``TH_LAT``). All other
    columns are kept as string attributes (labels). Rows without coordinates are an error.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"points file not found: {p}")
    if p.suffix.lower() in (".csv", ".txt", ".tsv"):
        import pandas as pd

        try:
            df = pd.read_csv(
                p,
                sep=None if p.suffix.lower() != ".csv" else ",",
                engine="python",
                dtype=str,
                keep_default_na=False,
            )
        except Exception as exc:  # noqa: BLE001 - any parse failure is a user error
            raise UserError(f"{p}: cannot read as CSV ({str(exc).splitlines()[0]})") from None
        cols = list(df.columns)
        icol = _pick(cols, id_column, ID_COLUMNS, "id", p)
        xcol = _pick(cols, lon_column, LON_COLUMNS, "lon", p)
        ycol = _pick(cols, lat_column, LAT_COLUMNS, "lat", p)
        try:
            x = df[xcol].astype(float).to_numpy()
            y = df[ycol].astype(float).to_numpy()
        except ValueError:
            raise UserError(f"{p}: {xcol}/{ycol} must be numbers") from None
        if crs:
            from pyproj import Transformer

            x, y = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)
        attrs = {c: _strings(df[c].tolist()) for c in cols if c not in (icol, xcol, ycol)}
        ids = _strings(df[icol].tolist())
    else:
        import geopandas as gpd

        try:
            gdf = gpd.read_file(p)
        except Exception as exc:  # noqa: BLE001
            raise UserError(
                f"{p}: cannot read as a vector file ({str(exc).splitlines()[0]})"
            ) from None
        if gdf.crs is None:
            raise UserError(f"{p}: the file has no CRS")
        gdf = gdf.to_crs("EPSG:4326")
        geom = gdf.geometry
        if not (geom.geom_type == "Point").all():
            geom = geom.representative_point()
        x, y = geom.x.to_numpy(), geom.y.to_numpy()
        cols = [c for c in gdf.columns if c != gdf.geometry.name]
        if id_column or any(
            c in cols or c.lower() in [k.lower() for k in cols] for c in ID_COLUMNS
        ):
            icol = _pick(cols, id_column, ID_COLUMNS, "id", p)
            ids = _strings(gdf[icol].tolist())
        else:
            icol = None
            ids = np.array([str(i) for i in range(len(gdf))])
        attrs = {c: _strings(gdf[c].tolist()) for c in cols if c != icol}
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    bad = ~(np.isfinite(x) & np.isfinite(y) & (np.abs(x) <= 180) & (np.abs(y) <= 90))
    if bad.any():
        raise UserError(
            f"{p}: {int(bad.sum())} point(s) have no valid lon/lat (first: row {int(np.argmax(bad))})"
        )
    if len(ids) == 0:
        raise UserError(f"{p}: no points")
    if len(set(ids.tolist())) != len(ids):
        raise UserError(f"{p}: point ids are not unique")
    return Points(ids=ids, lon=x, lat=y, attrs=attrs)


# --- the extracted table -----------------------------------------------------------------------


@dataclass
class PointTable:
    """Per-point composites: ``values[point, period, band]`` and ``counts[point, period]``."""

    ids: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    period_starts: np.ndarray
    bands: tuple[str, ...]
    attrs: dict[str, np.ndarray] = field(default_factory=dict)
    crs: np.ndarray | None = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_periods(self) -> int:
        return int(self.values.shape[1])

    def series_x1e4(self) -> np.ndarray:
        """(N, P, B) reflectance x 1e4 (what the TimeSenCLIP preprocessing takes)."""
        return self.values * np.float32(1e4)

    def column(self, name: str) -> np.ndarray:
        if name not in self.attrs:
            raise UserError(
                f"the points table has no column {name!r} (columns: {', '.join(self.attrs) or 'none'})"
            )
        return self.attrs[name]

    def subset(self, idx: np.ndarray) -> PointTable:
        def take(a):
            return None if a is None else a[idx]

        return PointTable(
            ids=self.ids[idx],
            lon=self.lon[idx],
            lat=self.lat[idx],
            values=self.values[idx],
            counts=self.counts[idx],
            period_starts=self.period_starts,
            bands=self.bands,
            attrs={k: v[idx] for k, v in self.attrs.items()},
            crs=take(self.crs),
            x=take(self.x),
            y=take(self.y),
            meta=dict(self.meta),
        )

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        if p.suffix != ".npz":
            p = p.with_name(p.name + ".npz")
        p.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "point_id": self.ids.astype(str),
            "lon": self.lon,
            "lat": self.lat,
            "values": self.values.astype(np.float32),
            "counts": self.counts.astype(np.int16),
            "period_start": self.period_starts.astype("datetime64[D]").astype(str),
            "band": np.array(self.bands, dtype=str),
        }
        if self.crs is not None:
            arrays.update(crs=self.crs.astype(str), x=self.x, y=self.y)
        for k, v in self.attrs.items():
            arrays[f"attr:{k}"] = v.astype(str)
        meta = {"format": FORMAT, **self.meta}
        arrays["meta"] = np.array(json.dumps(meta, default=str))
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:  # a file object: no ".npz" appended
            np.savez_compressed(fh, **arrays)
        return p

    @classmethod
    def load(cls, path: str | Path) -> PointTable:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"points table not found: {p} (make one with 'extract-points')")
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise UserError(f"{p}: not a points table ({str(exc).splitlines()[0]})") from None
        try:
            meta = json.loads(str(data.pop("meta")))
            if meta.get("format") != FORMAT:
                raise KeyError("format")
            return cls(
                ids=data["point_id"],
                lon=data["lon"],
                lat=data["lat"],
                values=data["values"],
                counts=data["counts"],
                period_starts=data["period_start"].astype("datetime64[D]"),
                bands=tuple(str(b) for b in data["band"]),
                attrs={k[5:]: v for k, v in data.items() if k.startswith("attr:")},
                crs=data.get("crs"),
                x=data.get("x"),
                y=data.get("y"),
                meta=meta,
            )
        except KeyError as exc:
            raise UserError(
                f"{p}: not a points table written by extract-points (no {exc})"
            ) from None


def concat_tables(tables: Sequence[PointTable], order: np.ndarray | None = None) -> PointTable:
    """Stack tables with the same periods and bands (``order``: final row order by id)."""
    if not tables:
        raise ValueError("no tables")
    t0 = tables[0]
    keys = sorted({k for t in tables for k in t.attrs})

    def cat(get):
        return np.concatenate([get(t) for t in tables])

    out = PointTable(
        ids=cat(lambda t: t.ids),
        lon=cat(lambda t: t.lon),
        lat=cat(lambda t: t.lat),
        values=cat(lambda t: t.values),
        counts=cat(lambda t: t.counts),
        period_starts=t0.period_starts,
        bands=t0.bands,
        attrs={k: cat(lambda t, k=k: t.attrs.get(k, np.full(len(t), "", dtype=str))) for k in keys},
        crs=cat(lambda t: t.crs),
        x=cat(lambda t: t.x),
        y=cat(lambda t: t.y),
        meta=dict(t0.meta),
    )
    if order is not None:
        out = out.subset(order)
    return out


# --- planning: zones, tiles, clusters, windows ---------------------------------------------------


def utm_epsg(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """EPSG code of the UTM zone of each point (326xx north, 327xx south)."""
    zone = np.clip(np.floor((np.asarray(lon) + 180.0) / 6.0).astype(int) + 1, 1, 60)
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


@dataclass(frozen=True)
class Window:
    """A small window of the output lattice around a cluster of points."""

    crs: str
    geobox: Any
    points: np.ndarray
    """Indices into the input points."""
    rows: np.ndarray
    cols: np.ndarray
    """Each point's pixel inside the window."""
    tile: str
    """``<crs>/<tile id>`` of the lattice tile the cluster belongs to."""
    block: str
    """The search block (STAC search unit) it belongs to."""


def plan_windows(
    points: Points,
    *,
    crs: str | None = None,
    resolution: float = 10.0,
    tile_size: int = 1024,
    cluster_px: int = 64,
    margin: int = 0,
    block_tiles: int = 8,
) -> list[Window]:
    """Group points into small windows on the output lattice.

    Points are projected to ``crs`` (default: each point's UTM zone), assigned to the tiles of
    :func:`~pipeline.tiling.make_grid` over their extent, and within a tile to clusters of
    ``cluster_px`` x ``cluster_px`` pixels; every cluster becomes a window spanning its points'
    pixels (plus ``margin``). ``block_tiles`` x ``block_tiles`` tiles share one STAC search.
    """
    from pyproj import Transformer
    from shapely.geometry import box

    from pipeline.tiling import make_grid

    if cluster_px < 1 or cluster_px > tile_size:
        raise UserError(f"cluster_px must be between 1 and the tile size ({tile_size})")
    epsg = np.full(len(points), -1) if crs else utm_epsg(points.lon, points.lat)
    windows: list[Window] = []
    for code in np.unique(epsg):
        sel = np.flatnonzero(epsg == code)
        zone_crs = crs or f"EPSG:{int(code)}"
        tr = Transformer.from_crs("EPSG:4326", zone_crs, always_xy=True)
        x, y = tr.transform(points.lon[sel], points.lat[sel])
        x, y = np.asarray(x), np.asarray(y)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise UserError(f"some points cannot be projected to {zone_crs}")
        # The AOI for make_grid: the points' lon/lat box (a simple polygon keeps the tile
        # search cheap; tiles without points are simply never visited).
        d = 1e-5
        lon_s, lat_s = points.lon[sel], points.lat[sel]
        aoi = box(lon_s.min() - d, lat_s.min() - d, lon_s.max() + d, lat_s.max() + d)
        grid = make_grid(aoi, zone_crs, resolution, tile_size)
        a = grid.geobox.affine
        col = np.floor((x - a.c) / a.a).astype(np.int64)
        row = np.floor((y - a.f) / a.e).astype(np.int64)
        h, w = grid.shape
        # Points on the far edge of the extent can fall one pixel outside: clamp (sub-pixel).
        col = np.clip(col, 0, w - 1)
        row = np.clip(row, 0, h - 1)
        trow, tcol = row // tile_size, col // tile_size
        crow, ccol = row // cluster_px, col // cluster_px
        keys = np.stack([trow, tcol, crow, ccol], axis=1)
        uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.searchsorted(inverse[order], np.arange(1, len(uniq))))
        for (tr_, tc_, _, _), members in zip(uniq, groups, strict=True):
            r0 = max(int(row[members].min()) - margin, 0)
            r1 = min(int(row[members].max()) + margin + 1, h)
            c0 = max(int(col[members].min()) - margin, 0)
            c1 = min(int(col[members].max()) + margin + 1, w)
            gbox = grid.geobox[r0:r1, c0:c1]
            tile_id = f"r{int(tr_):04d}_c{int(tc_):04d}"
            block = f"{zone_crs}/b{int(tr_) // block_tiles}_{int(tc_) // block_tiles}"
            windows.append(
                Window(
                    crs=zone_crs,
                    geobox=gbox,
                    points=sel[members],
                    rows=row[members] - r0,
                    cols=col[members] - c0,
                    tile=f"{zone_crs}/{tile_id}",
                    block=block,
                )
            )
    return windows


# --- extraction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtractConfig:
    """How to search, load and composite (the map run's settings of the same names)."""

    start: dt.date
    end: dt.date
    period: str = "monthly"
    profile: str = "earth-search"
    stac_url: str | None = None
    collection: str | None = None
    max_cloud: float = 60.0
    mask_snow: bool = True
    resolution: float = 10.0
    crs: str | None = None
    tile_size: int = 1024
    cluster_px: int = 64
    block_tiles: int = 8
    workers: int = 4
    gap_fill: bool = True

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise UserError(f"--end {self.end} is before --start {self.start}")
        if self.workers < 1:
            raise UserError("--workers must be >= 1")
        if not 0 <= self.max_cloud <= 100:
            raise UserError("--max-cloud must be between 0 and 100")


def _block_geometry(windows: Sequence[Window]):
    from shapely.geometry import box
    from shapely.ops import unary_union

    parts = [box(*w.geobox.extent.to_crs("EPSG:4326").boundingbox) for w in windows]
    return unary_union(parts).envelope if len(parts) > 1 else parts[0]


def _items_for(items: Sequence[dict], geobox) -> list[dict]:
    from shapely.geometry import shape

    footprint = geobox.extent.to_crs("EPSG:4326").geom
    return [
        it for it in items if it.get("geometry") and shape(it["geometry"]).intersects(footprint)
    ]


def _search_block(cfg: ExtractConfig, geometry) -> list[dict]:
    from pipeline.search import SearchConfig, search_items

    scfg = SearchConfig(
        profile=cfg.profile,
        stac_url=cfg.stac_url,
        collection=cfg.collection,
        max_cloud=cfg.max_cloud,
    )
    try:
        return [it.to_dict() for it in search_items(geometry, cfg.start, cfg.end, scfg)]
    except UserError as exc:
        if str(exc).startswith("no Sentinel-2 scenes"):  # e.g. points at sea: empty series
            _log.warning("%s", exc)
            return []
        raise


def composite_window(cfg: ExtractConfig, items: Sequence[dict], geobox):
    """The window's composite with the map run's code: ``Composite(values, counts, ...)``."""
    import pystac

    from pipeline.bands import BANDS
    from pipeline.composite import composite
    from pipeline.cube import MaskConfig, load_cube

    ny, nx = geobox.shape
    if items:
        cube = load_cube(
            [pystac.Item.from_dict(d) for d in items],
            geobox,
            mask=MaskConfig(mask_snow=cfg.mask_snow),
        )
        values = np.asarray(cube.values, dtype=np.float32)
        times = cube["time"].values
    else:
        values = np.full((0, len(BANDS), ny, nx), np.nan, np.float32)
        times = np.array([], dtype="datetime64[ns]")
    return composite(values, times, cfg.start, cfg.end, cfg.period, gap_fill=cfg.gap_fill)


def _extract_block(
    cfg: ExtractConfig, points: Points, windows: Sequence[Window], pool: cf.Executor
) -> PointTable:
    from pipeline.bands import BANDS

    items = _search_block(cfg, _block_geometry(windows))

    def one(w: Window):
        comp = composite_window(cfg, _items_for(items, w.geobox), w.geobox)
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
            {k: str(v) for k, v in vars(cfg).items() if k != "workers"}, sort_keys=True
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
    windows = plan_windows(
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
        "start": cfg.start.isoformat(),
        "end": cfg.end.isoformat(),
        "period": cfg.period,
        "profile": cfg.profile,
        "stac_url": cfg.stac_url,
        "collection": cfg.collection,
        "max_cloud": cfg.max_cloud,
        "mask_snow": cfg.mask_snow,
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
