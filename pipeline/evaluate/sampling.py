"""Stratified random samples of reference points drawn from a class raster.

Good practice for accuracy and area assessment (Olofsson et al. 2014, *Remote Sens. Environ.*
148, 42-57, section 4) samples the map with its classes as strata: a fixed number of pixels per
class, drawn at random without replacement, labelled afterwards by an interpreter. The same
draw, with a reference raster as strata, gives class-balanced training points for a few-shot head.

:func:`stratified_sample` is the pure draw (pixel rows/columns); :func:`sample_raster` reads the
strata raster, optionally labels every point from a second raster (any grid and CRS: the pixel
that contains the point), keeps away from pixels that hold earlier points (``exclude``: an
independent validation sample) and writes a GeoPackage of pixel-centre points.

The strata raster is read whole (one uint8 band: 1 byte per pixel), which bounds it to maps of a
few hundred million pixels on a workstation.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from pyproj import Transformer

from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError
from pipeline.points import read_points

__all__ = ["SampleResult", "class_names_of", "sample_raster", "stratified_sample"]


def stratified_sample(
    strata: np.ndarray,
    per_class: int,
    *,
    nodata: int | None = 255,
    exclude: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_class`` pixels at random (without replacement) from every stratum.

    Args:
        strata: (H, W) integer class raster.
        per_class: pixels per stratum; a smaller stratum gives all of its pixels.
        nodata: value that is no stratum (never sampled); None when every value is one.
        exclude: (H, W) bool, True where a pixel must not be drawn.
        seed: numpy ``default_rng`` seed (the draw is deterministic for a seed).

    Returns:
        (rows, cols) int64 arrays, grouped by stratum in increasing value, random order within.

    Raises:
        UserError: ``per_class`` < 1, or no pixel can be drawn.
    """
    if per_class < 1:
        raise UserError(f"points per class must be at least 1, got {per_class}")
    strata = np.asarray(strata)
    if strata.ndim != 2:
        raise ValueError(f"strata must be (H, W), got {strata.shape}")
    valid = np.ones(strata.shape, bool) if nodata is None else strata != nodata
    if exclude is not None:
        valid &= ~np.asarray(exclude, bool)
    flat = strata.ravel()
    candidates = np.flatnonzero(valid.ravel())
    if candidates.size == 0:
        raise UserError("the strata raster has no pixel to sample (all nodata or excluded)")
    rng = np.random.default_rng(seed)
    picked = []
    for value in np.unique(flat[candidates]):
        idx = candidates[flat[candidates] == value]
        picked.append(rng.choice(idx, size=min(per_class, idx.size), replace=False))
    chosen = np.concatenate(picked).astype(np.int64)
    return chosen // strata.shape[1], chosen % strata.shape[1]


def class_names_of(path: Path, values: Sequence[int]) -> list[str]:
    """Names of ``values`` in a class GeoTIFF: its ``class_names`` tag (a run's ``classes.tif``,
    the demo truth), else the ``legend.json`` next to it, else the values as text."""

    with rasterio.open(path) as src:
        tag = src.tags().get("class_names")
    names: list[str] | None = None
    if tag:
        try:
            names = [str(n) for n in json.loads(tag)]
        except ValueError:
            names = None
    legend = path.parent / "legend.json"
    if names is None and legend.is_file():
        doc = json.loads(legend.read_text())
        names = [str(c["name"]) for c in doc.get("classes", [])]
    return [names[v] if names is not None and v < len(names) else str(v) for v in values]


@dataclass(frozen=True)
class SampleResult:
    """What :func:`sample_raster` wrote."""

    path: Path
    n_points: int
    per_stratum: dict[str, int]
    labelled: bool


def _pixel_of(src, xs: np.ndarray, ys: np.ndarray, crs) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of points (``xs``, ``ys`` in ``crs``) on ``src``'s grid (may be outside)."""

    if str(crs) != str(src.crs):
        xs, ys = Transformer.from_crs(crs, src.crs, always_xy=True).transform(xs, ys)
    inv = ~src.transform
    cols, rows = inv * (np.asarray(xs, float), np.asarray(ys, float))
    return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)


def sample_raster(
    strata_path: str | Path,
    out: str | Path,
    per_class: int,
    *,
    labels_path: str | Path | None = None,
    exclude_path: str | Path | None = None,
    seed: int = 0,
    id_prefix: str = "p",
) -> SampleResult:
    """Draw a stratified random sample from a class GeoTIFF and write it as a GeoPackage.

    The GeoPackage (layer ``points``, the raster's CRS, pixel-centre points) has the columns
    ``id``, ``stratum`` (class name of the strata raster) and, with ``labels_path``, ``label``
    (class name of the labels raster at the point; points where it is nodata are dropped).

    Raises:
        UserError: a missing/unreadable raster, no pixel to sample, labels raster not covering
        the sample.
    """

    strata_path, out = Path(strata_path).expanduser(), Path(out).expanduser()
    if not strata_path.is_file():
        raise UserError(f"strata raster not found: {strata_path}")
    if out.suffix.lower() != ".gpkg":
        raise UserError(f"--out must be a GeoPackage (.gpkg), got {out}")
    with rasterio.open(strata_path) as src:
        strata = src.read(1)
        nodata = None if src.nodata is None else int(src.nodata)
        exclude = None
        if exclude_path is not None:
            pts = read_points(exclude_path)
            r, c = _pixel_of(src, pts.lon, pts.lat, "EPSG:4326")
            inside = (r >= 0) & (r < src.height) & (c >= 0) & (c < src.width)
            exclude = np.zeros(strata.shape, bool)
            exclude[r[inside], c[inside]] = True
        rows, cols = stratified_sample(strata, per_class, nodata=nodata, exclude=exclude, seed=seed)
        xs, ys = rasterio.transform.xy(src.transform, rows, cols, offset="center")
        crs = src.crs
    values = strata[rows, cols]
    uniq = sorted(int(v) for v in np.unique(values))
    names = dict(zip(uniq, class_names_of(strata_path, uniq)))
    data = {"id": [f"{id_prefix}{i:05d}" for i in range(len(rows))]}
    data["stratum"] = [names[int(v)] for v in values]
    keep = np.ones(len(rows), bool)
    if labels_path is not None:
        labels_path = Path(labels_path).expanduser()
        if not labels_path.is_file():
            raise UserError(f"labels raster not found: {labels_path}")
        with rasterio.open(labels_path) as lab:
            lr, lc = _pixel_of(lab, np.asarray(xs), np.asarray(ys), crs)
            inside = (lr >= 0) & (lr < lab.height) & (lc >= 0) & (lc < lab.width)
            if not inside.all():
                raise UserError(
                    f"{labels_path} does not cover {int((~inside).sum())} of the sampled points"
                )
            band = lab.read(1)
            lv = band[lr, lc]
            lnodata = lab.nodata
        keep = lv != lnodata if lnodata is not None else keep
        luniq = sorted(int(v) for v in np.unique(lv[keep]))
        lnames = dict(zip(luniq, class_names_of(labels_path, luniq)))
        data["label"] = [lnames.get(int(v), "") for v in lv]
    gdf = gpd.GeoDataFrame(
        {k: np.asarray(v)[keep] for k, v in data.items()},
        geometry=gpd.points_from_xy(np.asarray(xs)[keep], np.asarray(ys)[keep]),
        crs=crs,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        # the temporary name lacks the .gpkg extension GDAL recommends; the final name has it
        warnings.filterwarnings("ignore", "The filename extension should be", RuntimeWarning)
        gdf.to_file(tmp, layer="points", driver="GPKG")
    per = {str(k): int(v) for k, v in gdf["stratum"].value_counts().sort_index().items()}
    return SampleResult(out, len(gdf), per, labels_path is not None)
