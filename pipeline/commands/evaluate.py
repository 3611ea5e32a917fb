"""``evaluate``: zero-/few-shot scores on benchmark datasets and labelled points, and map accuracy
with area estimates (Olofsson et al. 2014). Each writes ``metrics.json`` plus plots to ``--out``."""

from __future__ import annotations

import argparse

from pipeline import adapters

NAME = "evaluate"
HELP = "score a model on EuroSAT/BigEarthNet/labelled points, or a map against reference points"


def _model_args(p: argparse.ArgumentParser, default_model: str) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=adapters.names(), default=default_model)
    g.add_argument("--checkpoint", help="weights: a file or a fetched name ('weights list')")
    g.add_argument("--untrained", action="store_true", help="random weights (mechanics only)")
    g.add_argument("--arch", choices=("ViT-B-32", "RN50"), help="SenCLIP backbone")
    g.add_argument("--clip-checkpoint", help="TimeSenCLIP's CLIP text encoder")
    g.add_argument("--device", help="cpu or cuda (default: CUDA when available)")
    g.add_argument("--seed", type=int, default=0, help="seed of --untrained weights")
    g = p.add_argument_group("classes")
    g.add_argument("--legend", help="legend name or file (zero-shot)")
    g.add_argument("--style", default="aerial", help="prompt style (aerial, ground, generic...)")
    g.add_argument("--head", help="few-shot head from 'probe' instead of zero-shot prompts")
    g.add_argument(
        "--calibration",
        choices=("none", "ratio", "shifted"),
        default="none",
        help="transductive class-mean normalisation over the evaluated set (SenCLIP: ratio)",
    )
    p.add_argument("--out", required=True, help="output folder (metrics.json + plots)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (64)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="WHAT", parser_class=type(p))
    e = sub.add_parser("eurosat", help="EuroSAT RGB JPEGs (2750/<Class>/<Class>_<n>.jpg)")
    e.add_argument("--root", required=True, help="folder containing 2750/ (or the class folders)")
    e.add_argument("--limit-per-class", type=int, help="at most this many images per class")
    _model_args(e, "senclip")
    e.set_defaults(legend_default="eurosat10")
    m = sub.add_parser("eurosat-ms", help="EuroSAT 13-band GeoTIFFs (EuroSATallBands)")
    m.add_argument("--root", required=True, help="folder containing ds/.../tif/ or EuroSAT_MS/")
    m.add_argument("--limit-per-class", type=int, help="at most this many images per class")
    _model_args(m, "timesenclip")
    m.set_defaults(legend_default="eurosat10")
    b = sub.add_parser(
        "bigearthnet", help="BigEarthNet-19 in torchgeo's folder layout (multi-label)"
    )
    b.add_argument("--root", required=True, help="folder with BigEarthNet-v1.0/ and the split CSVs")
    b.add_argument("--split", default="test", help="train, val, test or all (test)")
    b.add_argument("--limit", type=int, help="at most this many patches")
    _model_args(b, "senclip")
    b.set_defaults(legend_default="bigearthnet19")
    pt = sub.add_parser("points", help="labelled points from 'extract-points' (e.g. LUCAS)")
    pt.add_argument("--points", required=True, help="a table from 'extract-points'")
    pt.add_argument("--label-column", required=True, help="column with each point's class")
    pt.add_argument("--label-map", help="YAML/JSON {label: class} or a built-in (lucas-lc1)")
    _model_args(pt, "timesenclip")
    pt.set_defaults(legend_default=None)
    mp = sub.add_parser("map", help="a map against reference points: accuracies + area estimates")
    mp.add_argument("--map", required=True, help="a run's output folder or its classes.tif")
    mp.add_argument("--reference", required=True, help="reference points (CSV or vector file)")
    mp.add_argument("--label-column", required=True, help="column with each point's class")
    mp.add_argument("--label-map", help="YAML/JSON {label: class} or a built-in (lucas-lc1)")
    mp.add_argument("--legend", help="the map's legend.json (default: next to the map)")
    mp.add_argument("--area-unit", choices=("ha", "km2", "m2", "pixels"), default="ha")
    mp.add_argument("--id-column", help="id column of a CSV")
    mp.add_argument("--lon-column", help="longitude column of a CSV")
    mp.add_argument("--lat-column", help="latitude column of a CSV")
    mp.add_argument("--out", required=True, help="output folder (metrics.json + plots)")


def _load_model(args: argparse.Namespace):
    import model

    return model.load(
        args.model,
        args.checkpoint,
        arch=args.arch,
        clip_checkpoint=args.clip_checkpoint,
        untrained=args.untrained,
        device=args.device,
        seed=args.seed,
    )


def _scorer(args: argparse.Namespace, m):
    from pipeline.evaluate.classify import make_scorer

    legend = args.legend or (None if args.head else args.legend_default)
    return make_scorer(
        m, legend=legend, style=args.style, head=args.head, calibration=args.calibration
    )


def _finish(args, report: dict, cm, title: str) -> int:
    import json

    from pipeline.evaluate.classify import write_outputs

    path = write_outputs(args.out, report, cm, title)
    keys = ("overall_accuracy", "macro_f1", "macro_map", "recall_at_label_count", "n")
    print(
        json.dumps({"metrics": str(path), **{k: report[k] for k in keys if k in report}}, indent=1)
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from pipeline.base.errors import UserError

    target = getattr(args, "target", None)
    if target is None:
        raise UserError("choose what to evaluate: eurosat, eurosat-ms, bigearthnet, points, map")
    if target == "map":
        return _run_map(args)
    # The data first: a wrong folder or file fails in a second, before any model is built.
    if target in ("eurosat", "eurosat-ms"):
        from pipeline.evaluate.datasets import eurosat_ms, eurosat_rgb

        reader = eurosat_rgb if target == "eurosat" else eurosat_ms
        ds = reader(args.root, limit_per_class=args.limit_per_class)
    elif target == "bigearthnet":
        from pipeline.evaluate.datasets import bigearthnet

        ds = bigearthnet(args.root, split=args.split)
    elif target == "points":
        from pipeline.evaluate.labels import load_label_map
        from pipeline.points import PointTable

        table = PointTable.load(args.points)
        label_map = load_label_map(args.label_map)
    else:
        raise UserError(f"unknown evaluation {target!r}")
    from pipeline.evaluate.classify import (
        evaluate_multilabel,
        evaluate_points,
        evaluate_single_label,
        model_info,
    )

    m = _load_model(args)
    scorer = _scorer(args, m)
    header = {
        "task": target,
        "model": model_info(m),
        "scorer": scorer.info,
        "calibration": args.calibration,
    }
    if m.untrained:
        header["warning"] = "UNTRAINED WEIGHTS: these numbers measure nothing but the mechanics"
    if target in ("eurosat", "eurosat-ms"):
        rep, cm = evaluate_single_label(ds, m, scorer, batch_size=args.batch_size)
        rep.update(header, dataset={"root": str(args.root), "images": len(ds)})
        return _finish(args, rep, cm, f"{target}: OA {rep['overall_accuracy']:.3f}")
    if target == "bigearthnet":
        from pipeline.evaluate.plots import ap_png

        rep = evaluate_multilabel(ds, m, scorer, batch_size=args.batch_size, limit=args.limit)
        rep.update(
            header,
            dataset={
                "root": str(args.root),
                "split": args.split,
                "patches": min(len(ds), args.limit or len(ds)),
            },
        )
        rep["plots"] = ["average_precision.png"]
        from pathlib import Path

        ap_png(rep, Path(args.out) / "average_precision.png")
        return _finish(args, rep, None, "")
    rep, cm = evaluate_points(table, m, scorer, label_column=args.label_column, label_map=label_map)
    rep.update(header, dataset={"points": str(args.points)})
    return _finish(args, rep, cm, f"points: OA {rep['overall_accuracy']:.3f}")


def _write_points(out, cols: dict) -> None:
    """The per-point results as ``points.csv`` and GeoParquet ``points.parquet`` (EPSG:4326)."""
    import csv

    from pipeline.base.atomic import atomic_path
    from pipeline.points.table import write_points_geoparquet

    names = list(cols)
    with atomic_path(out / "points.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*(cols[n].tolist() for n in names), strict=True))
    rest = {k: v for k, v in cols.items() if k not in ("lon", "lat")}
    write_points_geoparquet(out / "points.parquet", cols["lon"], cols["lat"], rest)


def _run_map(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from pipeline.evaluate.labels import load_label_map
    from pipeline.evaluate.mapacc import evaluate_map
    from pipeline.evaluate.plots import area_png, confusion_png
    from pipeline.points import read_points

    pts = read_points(
        args.reference,
        id_column=args.id_column,
        lon_column=args.lon_column,
        lat_column=args.lat_column,
    )
    rep, cm, per_point = evaluate_map(
        args.map,
        pts,
        label_column=args.label_column,
        label_map=load_label_map(args.label_map),
        legend=args.legend,
        area_unit=args.area_unit,
        with_points=True,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_points(out, per_point)
    rep["points_files"] = ["points.csv", "points.parquet"]
    confusion_png(
        cm,
        rep["class_names"],
        out / "confusion_matrix.png",
        title=f"map vs reference (n = {int(cm.sum())})",
    )
    area_png(rep, out / "area_estimates.png")
    rep["plots"] = ["confusion_matrix.png", "area_estimates.png"]
    (out / "metrics.json").write_text(json.dumps(rep, indent=1, allow_nan=False))
    ref = rep["reference"]
    summary = {
        "metrics": str(out / "metrics.json"),
        "points": str(out / "points.parquet"),
        "overall_accuracy": rep["overall_accuracy"],
        "overall_accuracy_ci": rep["overall_accuracy_ci"],
        "n": rep["n_samples"],
        "reference_points": {
            "total": ref["total"],
            "used": ref["used"],
            "dropped": {
                "outside the map": ref["outside_map"],
                "on nodata pixels": ref["on_nodata"],
                "label matching no map class": ref["unmatched_labels"],
            },
        },
        "warnings": rep["warnings"],
    }
    print(json.dumps(summary, indent=1))
    return 0
