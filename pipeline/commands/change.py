"""``change``: land-cover change between two years of a ``run --years`` map (or two runs on one grid).

Writes into ``--out``: ``transition.tif`` (uint16 ``from * K + to``, 65535 nodata) with its legend
``transition_legend.json``, ``changed.tif`` (uint8 1 changed, 0 stable, 255 nodata),
``change_confidence.tif`` (float32 0-1: a change's pairwise margin, a stable pixel's smaller
probability of its class),
``change_areas.csv`` (one row per from-to transition: mapped pixels and area; with
``--reference``, the stratified area estimate with its 95 % confidence interval, as ``evaluate
map`` makes it, strata = the transitions) and ``change.json`` (what was done, the counts, and the
area report). With ``--reference``, the per-point results go to ``points.csv`` and GeoParquet
``points.parquet`` as with ``evaluate map``. See :mod:`pipeline.evaluate.change` for the rule.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

NAME = "change"
HELP = "land-cover change between two years of a 'run --years' map: transitions, mask, areas"
_log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--map", help="a 'run --years' output folder (its YEAR/ subfolders)")
    p.add_argument("--from", dest="year_from", type=int, help="the first year (with --map)")
    p.add_argument("--to", dest="year_to", type=int, help="the second year (with --map)")
    p.add_argument(
        "--maps",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="instead of --map/--from/--to: two run folders on one grid and legend",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--consistency",
        action="store_true",
        help="accept a change only when confident in both years: each year prefers its own class "
        "over the other year's by >= --min-margin (else the pixel is stable): fewer spurious flips",
    )
    p.add_argument(
        "--min-margin",
        type=float,
        default=0.1,
        help="with --consistency: the probability margin both years need (0.1)",
    )
    p.add_argument(
        "--reference",
        help="reference points (GPKG/CSV) labelled with the true transition code (from*K+to) or "
        "name ('forest -> bare'), e.g. drawn by 'sample-points --strata OUT/transition.tif': "
        "stratified area estimates with confidence intervals",
    )
    p.add_argument("--label-column", default="label", help="the reference label column (label)")
    p.add_argument("--area-unit", default="ha", choices=("ha", "km2", "m2", "pixels"))


def _inputs(args: argparse.Namespace):
    """((folder, label, zarr store, year or None) of year a, the same of year b)."""
    from pipeline.base.errors import UserError

    if args.maps:
        if args.map or args.year_from or args.year_to:
            raise UserError("give either --map with --from/--to, or --maps RUN_A RUN_B")
        a, b = (Path(m) for m in args.maps)
        return (a, a.name, a / "map.zarr", None), (b, b.name, b / "map.zarr", None)
    if not (args.map and args.year_from and args.year_to):
        raise UserError("give --map RUN --from YEAR --to YEAR (a 'run --years' folder)")
    if args.year_from == args.year_to:
        raise UserError(f"--from and --to are the same year ({args.year_from})")
    root = Path(args.map)
    if not (root / "map.zarr").is_dir():
        raise UserError(f"{root}: not a 'run --years' folder (no map.zarr)")
    for y in (args.year_from, args.year_to):
        if not (root / str(y) / "classes.tif").is_file():
            raise UserError(f"{root}: no map of {y} ({root / str(y) / 'classes.tif'} is missing)")
    return tuple(
        (root / str(y), str(y), root / "map.zarr", y) for y in (args.year_from, args.year_to)
    )


def _read_year(folder: Path, store: Path, year: int | None):
    """((classes, topk_classes, topk_probs), rasterio profile, legend names, colours)."""
    import numpy as np
    import rasterio
    import xarray as xr

    from pipeline.base.errors import UserError

    for name in ("classes.tif", "legend.json"):
        if not (folder / name).is_file():
            raise UserError(f"{folder}: not a finished map ({name} is missing)")
    if not store.is_dir():
        raise UserError(f"{folder}: not a finished map ({store} is missing)")
    with rasterio.open(folder / "classes.tif") as src:
        profile = src.profile
    ds = xr.open_zarr(store, decode_coords="all", consolidated=False)
    if year is not None:
        if year not in ds["time"].values.tolist():
            raise UserError(f"{store} has no year {year} (years: {ds['time'].values.tolist()})")
        ds = ds.sel(time=year)
    layers = tuple(np.asarray(ds[v].values) for v in ("classes", "topk_classes", "topk_probs"))
    if layers[0].shape != (profile["height"], profile["width"]):
        raise UserError(f"{store} and {folder / 'classes.tif'} differ in size")
    legend = json.loads((folder / "legend.json").read_text())
    names = [c["name"] for c in legend["classes"]]
    colors = [c.get("color") for c in legend["classes"]]
    return layers, profile, names, colors


def field_basis(folder: Path) -> str | None:
    """The basis hash of the embedding field a map comes from: its own ``model_card.json`` (a run
    with ``--save-embeddings``) or its source field's (a ``classify --field`` map); None if none."""
    cards = [folder / "model_card.json"]
    source = _read_json(folder / "run.json").get("source_field")
    if source:
        cards.append(Path(str(source)) / "model_card.json")
    for card in cards:
        digest = _read_json(card).get("field", {}).get("basis_sha256")
        if digest:
            return str(digest)
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _same_grid(pa, pb) -> bool:
    return (
        pa["crs"] == pb["crs"]
        and pa["transform"] == pb["transform"]
        and (pa["height"], pa["width"]) == (pb["height"], pb["width"])
    )


def _write_cog(
    path: Path, data, profile: dict, nodata, description: str, tags: dict | None = None
) -> None:
    import rasterio

    from pipeline.base.atomic import atomic_path

    prof = {
        "driver": "COG", "height": data.shape[0], "width": data.shape[1], "count": 1,
        "dtype": data.dtype.name, "crs": profile["crs"], "transform": profile["transform"],
        "nodata": nodata, "compress": "DEFLATE", "blocksize": 256,
        "overview_resampling": "nearest",
    }  # fmt: skip
    with atomic_path(path) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(tmp, "w", **prof) as dst:
            dst.write(data, 1)
            dst.set_band_description(1, description)
            if tags:
                dst.update_tags(**tags)


def _area_rows(change, legend, pixel_area, unit, report) -> list[dict]:
    """One row per transition with mapped pixels, or with a reference estimate."""
    import numpy as np

    from pipeline.evaluate.change import TRANSITION_NODATA

    counts = np.bincount(change.transition.ravel(), minlength=TRANSITION_NODATA + 1)
    factor = {"ha": 1e-4, "km2": 1e-6, "m2": 1.0, "pixels": None}[unit]
    rows = []
    est = (report or {}).get("classes", {})
    for c in legend["classes"]:
        px = int(counts[c["value"]])
        e = est.get(c["name"], {})
        if px == 0 and not e.get("samples_reference"):
            continue
        ci = e.get("estimated_area_ci") or [None, None]
        rows.append(
            {
                "code": c["value"], "from": c["from"], "to": c["to"],
                "changed": c["from"] != c["to"], "mapped_px": px,
                f"mapped_area_{unit}": px if factor is None else px * pixel_area * factor,
                f"estimated_area_{unit}": e.get("estimated_area"),
                f"estimated_area_se_{unit}": e.get("estimated_area_se"),
                "ci95_low": ci[0], "ci95_high": ci[1],
                "users_accuracy": e.get("users_accuracy"),
                "producers_accuracy": e.get("producers_accuracy"),
            }
        )  # fmt: skip
    return rows


def run(args: argparse.Namespace) -> int:
    import csv

    from pipeline.base.errors import UserError
    from pipeline.evaluate.change import ChangeOptions, detect_change, transition_legend

    if not 0.0 <= args.min_margin <= 1.0:
        raise UserError(f"--min-margin must be between 0 and 1, got {args.min_margin}")
    (fa, la, sa, ya), (fb, lb, sb, yb) = _inputs(args)
    year_a, prof_a, names_a, colors = _read_year(fa, sa, ya)
    year_b, prof_b, names_b, _ = _read_year(fb, sb, yb)
    if names_a != names_b:
        raise UserError(f"{fa} and {fb} have other legends ({names_a} vs {names_b})")
    if not _same_grid(prof_a, prof_b):
        raise UserError(f"{fa} and {fb} are not on one grid (CRS, transform or size differ)")
    basis = field_basis(fa), field_basis(fb)
    if args.maps and (basis[0] or basis[1]) and basis[0] != basis[1]:
        raise UserError(
            f"{fa} and {fb} come from embedding fields in other bases ({str(basis[0])[:12]} vs "
            f"{str(basis[1])[:12]}): classify both from fields in one basis"
        )
    options = ChangeOptions(args.consistency, args.min_margin)
    change = detect_change(year_a, year_b, len(names_a), options)
    legend = transition_legend(names_a, colors if all(colors) else None)
    out = Path(args.out)
    stage = out / ".change.tmp"  # everything is written here, then moved into place
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    _write_cog(stage / "transition.tif", change.transition, prof_a, 65535,
               f"transition {la} -> {lb}: from_class * {len(names_a)} + to_class",
               {"class_names": json.dumps([c["name"] for c in legend["classes"]])})  # fmt: skip
    _write_cog(stage / "changed.tif", change.changed, prof_a, 255, "1 changed, 0 stable")
    _write_cog(stage / "change_confidence.tif", change.confidence, prof_a, float("nan"),
               "change: pairwise margin; stable: min probability of the class")  # fmt: skip
    (stage / "transition_legend.json").write_text(json.dumps(legend, indent=1))
    report = None
    try:
        if args.reference:
            report = _reference_areas(args, stage, out)
    except BaseException:
        shutil.rmtree(stage)
        raise
    t = prof_a["transform"]
    rows = _area_rows(change, legend, abs(t.a * t.e), args.area_unit, report)
    with open(stage / "change_areas.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["code"])
        w.writeheader()
        w.writerows(rows)
    valid = change.changed != 255
    summary = {
        "from": la, "to": lb, "maps": [str(fa), str(fb)],
        "consistency": options.consistency,
        "min_margin": options.min_margin if options.consistency else None,
        "pixels": int(valid.sum()), "changed_px": int((change.changed == 1).sum()),
        "rejected_by_consistency": change.rejected,
        "files": ["transition.tif", "transition_legend.json", "changed.tif",
                  "change_confidence.tif", "change_areas.csv"]
        + (["points.csv", "points.parquet"] if report else []),
        "areas": report,
    }  # fmt: skip
    (stage / "change.json").write_text(json.dumps(summary, indent=1, allow_nan=False))
    for f in sorted(stage.iterdir()):
        f.replace(out / f.name)
    stage.rmdir()
    print(json.dumps({k: v for k, v in summary.items() if k != "areas"}, indent=1))
    return 0


def _reference_areas(args: argparse.Namespace, stage: Path, out: Path) -> dict:
    """``evaluate map``'s stratified estimator on the transition layer (strata: transitions)."""
    from pipeline.commands.evaluate import _write_points
    from pipeline.evaluate.mapacc import evaluate_map
    from pipeline.points import read_points

    pts = read_points(args.reference)
    rep, _, per_point = evaluate_map(
        stage / "transition.tif",
        pts,
        label_column=args.label_column,
        legend=stage / "transition_legend.json",
        area_unit=args.area_unit,
        with_points=True,
    )
    _write_points(stage, per_point)
    rep.update(map=str(out / "transition.tif"), legend=str(out / "transition_legend.json"))
    return rep
