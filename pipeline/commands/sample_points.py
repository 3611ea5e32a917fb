"""``sample-points``: a stratified random sample of reference points from a class raster."""

from __future__ import annotations

import argparse

NAME = "sample-points"
HELP = "draw a stratified random sample of points from a class raster (map or reference) as GPKG"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strata",
        required=True,
        help="class GeoTIFF whose classes are the strata (a map's classes.tif, a reference map)",
    )
    p.add_argument("--per-class", type=int, default=50, help="points per class (50)")
    p.add_argument(
        "--labels",
        help="class GeoTIFF that labels each point (column 'label'); without it, label the "
        "points yourself (photo-interpretation, field visits)",
    )
    p.add_argument(
        "--exclude", help="points file whose pixels are not drawn (e.g. the training points)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (0)")
    p.add_argument("--id-prefix", default="p", help="prefix of the point ids ('p')")
    p.add_argument("--out", required=True, help="the GeoPackage to write (.gpkg)")


def run(args: argparse.Namespace) -> int:
    import json

    from pipeline.evaluate.sampling import sample_raster

    res = sample_raster(
        args.strata,
        args.out,
        args.per_class,
        labels_path=args.labels,
        exclude_path=args.exclude,
        seed=args.seed,
        id_prefix=args.id_prefix,
    )
    summary = {
        "out": str(res.path),
        "points": res.n_points,
        "per_stratum": res.per_stratum,
        "labelled": res.labelled,
    }
    print(json.dumps(summary, indent=1))
    return 0
