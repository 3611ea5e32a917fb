"""``demo``: the offline demo. ``demo map`` runs a mapping team's whole few-shot workflow on the
bundled synthetic region (what ``make map`` does); ``demo truth`` writes the demo's land-cover
truth as a COG.

``demo map`` runs, in order, the same commands a user runs on real data (each is logged as the
command line that reproduces it):

1. ``demo truth``: the reference map (here the synthetic scene's own truth);
2. ``sample-points``: training points, a stratified random sample of the reference map;
3. ``extract-points``: their monthly composites from the (local) STAC API;
4. ``probe``: a linear head on the encoder's embeddings of those points;
5. ``run --head``: the map;
6. ``sample-points``: validation points, stratified by the *map's* classes (Olofsson et al. 2014),
   labelled from the reference map, away from the training pixels;
7. ``evaluate map``: accuracies and area-adjusted estimates on the validation points.

The encoder is untrained (random weights: the demo runs offline, without the released
TimeSenCLIP_1x1.ckpt) and the scenes are
synthetic; the summary says so. A linear head on random-projection embeddings still separates
the demo's spectrally distinct classes, which is what the accuracy measures.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "demo"
HELP = "the offline demo: 'demo map' (the few-shot workflow of 'make map'), 'demo truth'"

#: The demo's year (the generated catalog covers 2023).
YEAR = 2023
_log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="demo_target", metavar="WHAT", parser_class=type(p))
    m = sub.add_parser("map", help="the whole few-shot workflow on the demo region (make map)")
    m.add_argument("--out", default="outputs/demo", help="output folder (outputs/demo)")
    m.add_argument("--train-per-class", type=int, default=40, help="training points per class (40)")
    m.add_argument(
        "--validation-per-class", type=int, default=50, help="validation points per class (50)"
    )
    m.add_argument("--seed", type=int, default=0, help="seed of the weights and the samples (0)")
    m.add_argument("--workers", type=int, help="local worker processes of the map run")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument("--overwrite", action="store_true", help="replace an earlier demo map")
    c = sub.add_parser(
        "change", help="yearly maps and change on a two-year demo with planted change"
    )
    c.add_argument("--out", default="outputs/demo-change", help="output folder")
    c.add_argument("--seed", type=int, default=0, help="seed of the scene and the weights (0)")
    t = sub.add_parser("truth", help="write the demo's land-cover truth as a COG")
    t.add_argument("--out", required=True, help="the GeoTIFF to write")


INTERRUPTED = 130
"""The exit code :func:`pipeline.cli.main` returns on Ctrl-C (128 + SIGINT)."""


def _step(i: int, n: int, argv: list[str], what: str) -> None:
    """Run one CLI command in this process; its command line is logged so it can be rerun."""
    import shlex

    from pipeline.base.errors import UserError
    from pipeline.cli import main

    _log.info("step %d/%d, %s:\n    python -m pipeline %s", i, n, what, shlex.join(argv))
    rc = main(argv)
    if rc == INTERRUPTED:  # the step said "interrupted: ... resume" already: nothing to add
        raise SystemExit(rc)
    if rc != 0:
        raise UserError(f"step {i}/{n} ({argv[0]}) failed with exit code {rc}; see above")


def run_map(args: argparse.Namespace) -> int:
    import json

    out = Path(args.out)
    ref = out / "reference"
    truth = ref / "truth.tif"
    train = ref / "training_points.gpkg"
    table = ref / "training_points.npz"
    head = ref / "head.npz"
    map_dir = out / "monthly" / "timesenclip"
    val = ref / "validation_points.gpkg"
    evaluation = out / "evaluation"
    seed = str(args.seed)
    n = 7
    _log.info(
        "the s2lc demo: a few-shot map of a synthetic 2 x 2 km Sentinel-2 year (%d), offline. "
        "The encoder is UNTRAINED (random weights) and the head is fitted on points of the "
        "synthetic scene: this shows the workflow, not a real map.",
        YEAR,
    )
    _step(1, n, ["demo", "truth", "--out", str(truth)], "the reference map (the demo's truth)")
    _step(
        2,
        n,
        ["sample-points", "--strata", str(truth), "--labels", str(truth),
         "--per-class", str(args.train_per_class), "--seed", seed, "--id-prefix", "t",
         "--out", str(train)],
        "training points: a stratified random sample of the reference map",
    )  # fmt: skip
    _step(
        3,
        n,
        ["extract-points", "--points", str(train), "--year", str(YEAR), "--profile", "demo",
         "--tile-size", "256", "--cluster-px", "256", "--out", str(table)],
        "their monthly composites from the local STAC API",
    )  # fmt: skip
    _step(
        4,
        n,
        ["probe", "--points", str(table), "--label-column", "label", "--legend", "demo",
         "--untrained", "--seed", seed, "--test-fraction", "0", "--out", str(head)],
        "a linear head on the embeddings of the training points",
    )  # fmt: skip
    run_argv = ["run", "--region", "demo", "--untrained", "--seed", seed, "--head", str(head),
                "--tile-size", "100", "--out", str(map_dir)]  # fmt: skip
    if args.workers:
        run_argv += ["--workers", str(args.workers)]
    if args.no_progress:
        run_argv.append("--no-progress")
    if args.overwrite:
        run_argv.append("--overwrite")
    _step(5, n, run_argv, "the map, classified by the head")
    _step(
        6,
        n,
        ["sample-points", "--strata", str(map_dir / "classes.tif"), "--labels", str(truth),
         "--exclude", str(train), "--per-class", str(args.validation_per_class),
         "--seed", str(args.seed + 1), "--id-prefix", "v", "--out", str(val)],
        "validation points: stratified by the map's classes, labelled from the reference map",
    )  # fmt: skip
    _step(
        7,
        n,
        ["evaluate", "map", "--map", str(map_dir), "--reference", str(val),
         "--label-column", "label", "--out", str(evaluation)],
        "accuracy and area estimates on the validation points",
    )  # fmt: skip
    metrics = json.loads((evaluation / "metrics.json").read_text())
    oa, (lo, hi) = metrics["overall_accuracy"], metrics["overall_accuracy_ci"]
    lines = [
        "",
        f"Demo finished. Overall accuracy on {metrics['n_samples']} held-out validation points: "
        f"{oa:.3f} (95 % CI {lo:.3f}-{hi:.3f}).",
        "What it is: synthetic Sentinel-2 scenes, an UNTRAINED (random) TimeSenCLIP encoder, and a",
        "linear head fitted on synthetic reference points. It shows the workflow, not a real map.",
        "",
        f"  map (COGs, Zarr, quicklook, STAC item)  {map_dir}/",
        f"  quicklook                               {map_dir / 'quicklook.png'}",
        f"  true-colour composite (COG, quicklook)  {map_dir / 'composite_rgb.tif'}, "
        f"{map_dir / 'composite_rgb.png'}",
        f"  reference map (demo truth)              {truth}",
        f"  training points / their composites      {train}, {table}",
        f"  few-shot head                           {head}",
        f"  validation points                       {val}",
        f"  accuracy + area estimates, plots        {evaluation}/",
    ]
    print("\n".join(lines))
    return 0


def run_change(args: argparse.Namespace) -> int:
    """The yearly-maps-and-change workflow on a generated two-year demo with planted change
    (:mod:`pipeline.bench.change`): a head fitted on 2022 only, ``run --years 2022,2023``,
    ``change`` with and without ``--consistency``, then area estimates from a reference sample
    stratified by the transitions; prints how well the planted change was found."""
    import json

    from pipeline.bench.change import (
        change_truth_on,
        change_workflow,
        write_truth_transitions,
    )
    from pipeline.evaluate.change import score_change

    out = Path(args.out)
    _log.info(
        "the s2lc change demo: two synthetic years (2022, 2023) of a 1 x 1 km box with planted "
        "change, an UNTRAINED encoder and a head fitted on 2022 points: this shows the workflow"
    )
    run = change_workflow(out, seed=args.seed)
    scores = {}
    for i, (name, extra) in enumerate((("change", []), ("change-consistency", ["--consistency"]))):
        argv = ["change", "--map", str(run.map), "--from", "2022", "--to", "2023",
                "--out", str(out / name), *extra]  # fmt: skip
        _step(i + 1, 4, argv, "change between the two years" + (" (consistency)" if i else ""))
        import rasterio

        with rasterio.open(out / name / "changed.tif") as src:
            changed = src.read(1)
        scores[name] = score_change(
            changed, *change_truth_on(run.catalog, out / name / "changed.tif")
        )
    ref = out / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    truth = write_truth_transitions(
        run.catalog, out / "change-consistency" / "transition.tif", ref / "transitions.tif", 6
    )
    points = ref / "change_points.gpkg"
    _step(3, 4, ["sample-points", "--strata", str(out / "change-consistency" / "transition.tif"),
                 "--labels", str(truth), "--per-class", "25", "--seed", str(args.seed + 1),
                 "--out", str(points)], "reference points stratified by the mapped transitions")  # fmt: skip
    _step(4, 4, ["change", "--map", str(run.map), "--from", "2022", "--to", "2023",
                 "--consistency", "--reference", str(points), "--out",
                 str(out / "change-consistency")], "area estimates with confidence intervals")  # fmt: skip
    print(json.dumps(scores, indent=1))
    return 0


def run(args: argparse.Namespace) -> int:
    from pipeline.base.errors import UserError

    target = getattr(args, "demo_target", None)
    if target == "map":
        return run_map(args)
    if target == "change":
        return run_change(args)
    if target == "truth":
        from pipeline.testing.demo.truth import export_truth

        path = export_truth(args.out)
        print(path)
        return 0
    raise UserError("choose 'demo map' (the whole demo workflow), 'demo change' or 'demo truth'")
