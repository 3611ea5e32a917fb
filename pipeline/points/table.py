"""The extracted table of per-point composites (:class:`PointTable`) and its ``.npz`` format.

Saved as one ``.npz`` (numpy arrays, no pickle): ``values`` (N, P, B) float32 reflectance (NaN
where no observation), ``counts`` (N, P) valid observations, ``period_start``, ``band``,
``point_id``, ``lon``, ``lat``, the pixel (``crs``, ``x``, ``y``) and every other column of the
input as a string attribute (labels, NUTS0, ...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError

FORMAT = "s2lc-points-v1"


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

    def to_geoparquet(self, path: str | Path) -> Path:
        """The table as GeoParquet (GeoPandas ``to_parquet``): one row per point, its geometry a
        lon/lat point (EPSG:4326), columns ``point_id``, every input attribute, the pixel
        (``crs``, ``x``, ``y``) when known, ``<band>_<period start>`` reflectance (float32, NaN:
        no observation) and ``n_obs_<period start>`` (int16) valid observations per period.

        Written atomically next to the ``.npz`` by ``extract-points``; returns ``path``.
        """
        cols: dict[str, Any] = {"point_id": self.ids.astype(str)}
        for k, v in self.attrs.items():
            cols[k] = np.asarray(v).astype(str)
        if self.crs is not None:
            cols.update(crs=self.crs.astype(str), x=self.x, y=self.y)
        starts = [str(d) for d in self.period_starts.astype("datetime64[D]")]
        for pi, start in enumerate(starts):
            for bi, band in enumerate(self.bands):
                cols[f"{band}_{start}"] = self.values[:, pi, bi].astype(np.float32)
            cols[f"n_obs_{start}"] = self.counts[:, pi].astype(np.int16)
        return write_points_geoparquet(path, self.lon, self.lat, cols)

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


def write_points_geoparquet(
    path: str | Path, lon: np.ndarray, lat: np.ndarray, columns: dict[str, Any]
) -> Path:
    """Write points (lon/lat degrees, EPSG:4326) and their ``columns`` (name -> (N,) array) as
    GeoParquet with GeoPandas (geometry column ``geometry``, CRS in the file's ``geo``
    metadata), atomically; returns ``path``."""
    import geopandas as gpd

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    gdf = gpd.GeoDataFrame(
        dict(columns),
        geometry=gpd.points_from_xy(np.asarray(lon, float), np.asarray(lat, float)),
        crs="EPSG:4326",
    )
    with atomic_path(p) as tmp:
        gdf.to_parquet(tmp, index=False)
    return p
