"""Reference points from a CSV or any vector file: ids, WGS84 coordinates and other columns."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import UserError

ID_COLUMNS = ("id", "point_id", "POINT_ID", "pointid", "ID")
LON_COLUMNS = ("lon", "longitude", "lng", "x", "TH_LONG", "GPS_LONG", "X_LAEA")
LAT_COLUMNS = ("lat", "latitude", "y", "TH_LAT", "GPS_LAT", "Y_LAEA")


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
