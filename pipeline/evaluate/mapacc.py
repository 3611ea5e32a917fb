"""Accuracy and area of a finished map against reference points (Olofsson et al. 2014).

The map is a class GeoTIFF (a run's ``classes.tif``; its ``legend.json`` next to it names the
classes, or pass one). Reference points carry a label column matched to the map's classes
(:mod:`pipeline.evaluate.labels`). The map is sampled at every point's pixel; the mapped area of
every class is counted over the whole map, block by block (memory bounded by one block), and
the sample confusion matrix becomes stratified estimates of overall, user's and producer's
accuracy and of each class's area with confidence intervals (:mod:`pipeline.evaluate.area`).

The estimators assume the reference sample is a stratified random sample with the map classes
as strata (or a simple random sample); points from another design (e.g. the LUCAS grid over a
larger area) still give unbiased estimates only where they are a random sample of the map.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer

from pipeline.base.errors import UserError
from pipeline.evaluate.area import accuracy_assessment
from pipeline.evaluate.labels import match_labels, unmatched_summary
from pipeline.evaluate.metrics import classification_report, confusion_matrix

_log = logging.getLogger(__name__)


def map_paths(path: str | Path, legend: str | Path | None = None) -> tuple[Path, Path | None]:
    """(classes GeoTIFF, legend JSON or None) from a run folder or a GeoTIFF path."""
    p = Path(path).expanduser()
    tif = p / "classes.tif" if p.is_dir() else p
    if not tif.is_file():
        raise UserError(f"map not found: {tif} (a run folder with classes.tif, or a GeoTIFF)")
    leg = Path(legend).expanduser() if legend else tif.parent / "legend.json"
    return tif, (leg if leg.is_file() else None)


def read_map_legend(
    path: Path | None, values: np.ndarray
) -> tuple[list[str], list[int], int | None]:
    """(class names, their raster values, nodata) from a run's legend.json (or generic names)."""
    if path is None:
        vals = [int(v) for v in values]
        return [str(v) for v in vals], vals, None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a legend JSON ({exc})") from None
    classes = doc.get("classes") if isinstance(doc, dict) else None
    if not isinstance(classes, list) or not classes:
        raise UserError(f"{path}: expected {{'classes': [{{'value': 0, 'name': ...}}, ...]}}")
    try:
        names = [str(c["name"]) for c in classes]
        vals = [int(c.get("value", i)) for i, c in enumerate(classes)]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: every class needs a 'name' (and an integer 'value')") from None
    nodata = doc.get("nodata")
    return names, vals, None if nodata is None else int(nodata)


def class_areas(tif: Path, values: list[int], nodata: int | None) -> tuple[np.ndarray, float, int]:
    """(pixel count per class value, pixel area in the CRS unit squared, pixels of no class)."""

    lut_size = 65536
    counts = np.zeros(lut_size, dtype=np.int64)
    with rasterio.open(tif) as src:
        if src.crs is None or not src.crs.is_projected:
            raise UserError(f"{tif}: the map needs a projected CRS to measure areas")
        a = src.transform
        pixel_area = abs(a.a * a.e - a.b * a.d)
        nd = nodata if nodata is not None else src.nodata
        for _, window in src.block_windows(1):
            block = src.read(1, window=window)
            if block.dtype.kind not in "iu":
                block = block.astype(np.int64)
            counts += np.bincount(block.ravel().astype(np.int64) % lut_size, minlength=lut_size)
    per_class = np.array([counts[v] for v in values], dtype=np.int64)
    other = int(counts.sum() - per_class.sum() - (counts[int(nd)] if nd is not None else 0))
    return per_class, float(pixel_area), other


def sample_map(tif: Path, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map values at WGS84 points and a mask of points inside the map."""

    with rasterio.open(tif) as src:
        tr = Transformer.from_crs("EPSG:4326", src.crs, always_xy=True)
        x, y = tr.transform(lon, lat)
        inv = ~src.transform
        col, row = inv * (np.asarray(x), np.asarray(y))
        col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
        inside = (row >= 0) & (row < src.height) & (col >= 0) & (col < src.width)
        out = np.full(len(lon), -1, dtype=np.int64)
        if inside.any():
            r, c = row[inside], col[inside]
            r0, r1, c0, c1 = r.min(), r.max() + 1, c.min(), c.max() + 1
            if (r1 - r0) * (c1 - c0) <= 64_000_000:
                win = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
                data = src.read(1, window=win)
                out[inside] = data[r - r0, c - c0]
            else:  # points spread over a huge map: one read per point
                vals = [
                    v[0]
                    for v in src.sample(
                        list(zip(np.asarray(x)[inside], np.asarray(y)[inside], strict=True))
                    )
                ]
                out[inside] = np.asarray(vals, dtype=np.int64)
    return out, inside


def _design_warnings(leg, points, use, mapped, names, areas, truth) -> list[str]:
    """Warnings about what the numbers mean: untrained weights, the sampling design, dropped
    labels."""
    out = []
    if leg is not None:
        try:
            doc = json.loads(Path(leg).read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("untrained"):
            out.append(
                "the map was made with UNTRAINED (random) weights: the accuracy measures a demo"
                + (" head on random features" if doc.get("style") == "few-shot head" else "")
            )
    n_unmatched = int((truth < 0).sum())
    if n_unmatched:
        out.append(
            f"{n_unmatched} reference label(s) match no map class and were dropped; map them with "
            "--label-map FILE ({label: class})"
        )
    m = mapped[use]
    strata = points.attrs.get("stratum")
    if strata is not None and all(
        str(s) == names[int(c)] for s, c in zip(np.asarray(strata)[use], m, strict=True)
    ):
        return out  # stratified by the map's classes (e.g. 'sample-points --strata classes.tif')
    n = len(m)
    w = np.asarray(areas, np.float64) / max(float(np.sum(areas)), 1e-300)
    p = np.bincount(m, minlength=len(names)) / max(n, 1)
    tol = 3 * np.sqrt(w * (1 - w) / max(n, 1)) + 1.0 / max(n, 1)
    if np.any(np.abs(p - w) > tol):
        out.append(
            "the sample is neither stratified by the map's classes (no 'stratum' column naming "
            "them) nor distributed like a simple random sample of the map: the area-adjusted "
            "estimates assume one of these designs (draw one with 'sample-points --strata')"
        )
    return out


def evaluate_map(
    map_path: str | Path,
    points: Any,
    *,
    label_column: str,
    label_map: Any = None,
    legend: str | Path | None = None,
    area_unit: str = "ha",
    with_points: bool = False,
) -> tuple[dict[str, Any], np.ndarray] | tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Olofsson report (+ the plain sample metrics) and the sample confusion matrix; with
    ``with_points``, also the per-point results (:func:`per_point_columns`)."""
    tif, leg = map_paths(map_path, legend)

    with rasterio.open(tif) as src:
        nodata_raster = src.nodata
    values_at, inside = sample_map(tif, points.lon, points.lat)
    if leg is None:
        present = np.unique(values_at[inside & (values_at >= 0)])
        names, vals, nodata = read_map_legend(None, present)
    else:
        names, vals, nodata = read_map_legend(leg, np.array([]))
    nodata = (
        nodata if nodata is not None else (None if nodata_raster is None else int(nodata_raster))
    )
    value_to_class = {v: i for i, v in enumerate(vals)}
    mapped = np.array([value_to_class.get(int(v), -1) for v in values_at], dtype=np.int64)
    if label_column not in points.attrs:
        raise UserError(
            f"the reference points have no column {label_column!r} "
            f"(columns: {', '.join(points.attrs) or 'none'})"
        )
    labels = points.attrs[label_column]
    truth = match_labels(labels, names, label_map)
    use = inside & (mapped >= 0) & (truth >= 0)
    if not use.any():
        hint = ""
        if (truth < 0).all():
            seen = sorted({str(v) for v in labels.tolist()})[:5]
            hint = (
                f": no label matches a map class (labels {', '.join(seen)}; classes "
                f"{', '.join(names[:5])}); translate them with --label-map FILE ({{label: class}})"
            )
        raise UserError(
            "no reference point lies on a mapped pixel with a label matching the map's classes"
            + hint
        )

    cm = confusion_matrix(mapped[use], truth[use], len(names))
    pix, pixel_area, other = class_areas(tif, vals, nodata)
    unit_factor = {"ha": 1e-4, "km2": 1e-6, "m2": 1.0, "pixels": None}
    if area_unit not in unit_factor:
        raise UserError(f"area unit must be one of {', '.join(unit_factor)}")
    f = unit_factor[area_unit]
    areas = pix.astype(np.float64) if f is None else pix * pixel_area * f
    if not areas.sum() > 0:
        raise UserError(f"{tif}: no mapped pixel of any legend class")
    # a class whose every pixel was sampled has no sampling variance (e.g. a few-pixel class)
    census = (pix > 0) & (cm.sum(axis=1) >= pix)
    rep = accuracy_assessment(cm, areas, names, area_unit=area_unit, census=census)
    rep["warnings"] = list(rep["warnings"]) + _design_warnings(
        leg, points, use, mapped, names, areas, truth
    )
    rep["map"] = str(tif)
    rep["legend"] = str(leg) if leg else None
    rep["pixel_area_m2"] = pixel_area
    rep["pixels_of_other_values"] = other
    rep["reference"] = {
        "total": len(points),
        "used": int(use.sum()),
        "outside_map": int((~inside).sum()),
        "on_nodata": int((inside & (mapped < 0)).sum()),
        "unmatched_labels": int((inside & (mapped >= 0) & (truth < 0)).sum()),
        "unmatched_examples": unmatched_summary(labels, truth),
        "label_column": label_column,
    }
    sample = classification_report(mapped[use], truth[use], names)
    rep["sample_metrics"] = {
        k: sample[k] for k in ("overall_accuracy", "macro_f1", "kappa", "per_class")
    }
    rep["sample_metrics"]["note"] = "unweighted sample statistics (not area-adjusted)"
    if with_points:
        return rep, cm, per_point_columns(points, labels, values_at, mapped, truth, use, names)
    return rep, cm


def per_point_columns(points, labels, values_at, mapped, truth, use, names) -> dict[str, Any]:
    """One row per reference point: ``point_id``, ``lon``, ``lat`` (degrees), ``label`` (as
    given), ``reference_class`` / ``map_class`` (legend names, empty when none), ``map_value``
    (the raster value, -1 outside the map), ``used`` (counted in the accuracy) and ``correct``."""
    names_arr = np.asarray(list(names) + [""], dtype=object)
    return {
        "point_id": np.asarray(points.ids).astype(str),
        "lon": np.asarray(points.lon, float),
        "lat": np.asarray(points.lat, float),
        "label": np.asarray(labels).astype(str),
        "reference_class": names_arr[np.where(truth >= 0, truth, -1)].astype(str),
        "map_class": names_arr[np.where(mapped >= 0, mapped, -1)].astype(str),
        "map_value": np.asarray(values_at, np.int64),
        "used": np.asarray(use, bool),
        "correct": np.asarray(use & (mapped == truth), bool),
    }
