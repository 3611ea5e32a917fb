"""``probe``: fit a few-shot linear head on embeddings of labelled points, for ``run --head``."""

from __future__ import annotations

import argparse

from pipeline import adapters

NAME = "probe"
HELP = "fit a few-shot linear head (logistic regression) on embeddings of labelled points"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--points", required=True, help="a table from 'extract-points'")
    p.add_argument("--label-column", required=True, help="column with each point's class")
    p.add_argument("--label-map", help="YAML/JSON {label: class} or a built-in (lucas-lc1)")
    p.add_argument(
        "--legend",
        help="take the head's classes (names, order) from this legend; default: the labels seen",
    )
    p.add_argument("--out", required=True, help="the head file to write (.npz)")
    g = p.add_argument_group("model (the embeddings' model; 'run --head' must use the same)")
    g.add_argument("--model", choices=adapters.names(), default=adapters.DEFAULT)
    g.add_argument("--checkpoint", help="weights: a file or a fetched name")
    g.add_argument("--untrained", action="store_true", help="random weights (mechanics only)")
    g.add_argument("--clip-checkpoint", help="TimeSenCLIP's CLIP text encoder (not used here)")
    g.add_argument("--device", help="cpu or cuda")
    from model.backend_names import BACKENDS

    g.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *BACKENDS),
        help="CPU inference backend (default auto: as a map run on this machine decides it)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the split and --untrained weights")
    g = p.add_argument_group("fit")
    g.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on the weights (1e-3)")
    g.add_argument("--class-balanced", action="store_true", help="equal weight for every class")
    g.add_argument("--max-iter", type=int, default=200, help="L-BFGS iterations (200)")
    g.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="labelled points held out (stratified) to report the head's accuracy (0.2; 0: none)",
    )
    g.add_argument("--shots", type=int, help="use at most this many training points per class")


def _stratified_split(y, test_fraction: float, shots: int | None, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        tr = idx[n_test:]
        train.append(tr[:shots] if shots else tr)
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def run(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    import model
    from model.train.probe import fit_linear_head
    from pipeline.base.errors import UserError
    from pipeline.evaluate.labels import load_label_map, match_labels, unmatched_summary
    from pipeline.evaluate.metrics import classification_report
    from pipeline.points import PointTable

    adapter = adapters.get(args.model)
    if not adapter.point_series:
        usable = [a.name for a in adapters.all_adapters() if a.point_series]
        raise UserError(f"probe embeds point series: use --model {' or '.join(usable)}")
    if not 0 <= args.test_fraction < 1:
        raise UserError("--test-fraction must be in [0, 1)")
    table = PointTable.load(args.points)
    labels = table.column(args.label_column)
    label_map = load_label_map(args.label_map)
    if args.legend:
        from model.legends import load_legend

        names = load_legend(args.legend).names
    else:
        mapped = [label_map.get(s, s) if label_map is not None else s for s in labels.tolist()]
        names = tuple(sorted({str(s) for s in mapped if str(s).strip()}))
    y = match_labels(labels, names, label_map)
    observed = (np.asarray(table.counts) > 0).any(axis=1)
    use = np.flatnonzero((y >= 0) & observed)
    if len(use) < 2:
        raise UserError(f"fewer than 2 labelled points with observations in {args.points}")
    m = model.load(
        args.model,
        args.checkpoint,
        clip_checkpoint=args.clip_checkpoint,
        untrained=args.untrained,
        device=args.device,
        seed=args.seed,
    )
    from pipeline.run.precision import use_backend

    backend = use_backend(m, args.backend, args.legend)
    emb = adapter.embed(m, table.series_x1e4()[use])
    yy = y[use]
    tr, te = _stratified_split(yy, args.test_fraction, args.shots, args.seed)
    identity = {
        "name": m.name,
        "identity": m.identity,
        "checkpoint_sha256": m.checkpoint_sha256,
        "dim": int(m.embed_dim),
        "periods": int(table.n_periods),
        # the composites the head learnt from: run --head refuses another period kind or T
        "period": table.meta.get("period"),
        "start": table.meta.get("start"),
        "end": table.meta.get("end"),
    }
    head = fit_linear_head(
        emb[tr],
        yy[tr],
        names,
        l2=args.l2,
        class_balanced=args.class_balanced,
        max_iter=args.max_iter,
        model_identity=identity,
        seed=args.seed,
    )
    summary = {
        "head": None,
        "classes": list(names),
        "train_points": int(len(tr)),
        "train_accuracy": head.meta["train_accuracy"],
        "unmatched_labels": unmatched_summary(labels, y),
    }
    if len(te):
        pred = head.predict(emb[te]).argmax(axis=1)
        rep = classification_report(pred, yy[te], names)
        summary["test_points"] = int(len(te))
        summary["test_overall_accuracy"] = rep["overall_accuracy"]
        summary["test_macro_f1"] = rep["macro_f1"]
        head.meta["test"] = {k: rep[k] for k in ("n", "overall_accuracy", "macro_f1")}
    head.meta["backend"] = {k: backend.get(k) for k in ("requested", "resolved", "batch")}
    summary["backend"] = backend.get("resolved")
    if args.legend:  # maps made with this head take the legend's colours
        head.meta["legend"] = str(args.legend)
    path = head.save(args.out)
    summary["head"] = str(path)
    print(json.dumps(summary, indent=1))
    return 0
