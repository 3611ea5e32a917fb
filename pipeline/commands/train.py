"""``train``: cross-view contrastive training of TimeSenCLIP (pixel series) or SenCLIP (RGB chips).

Both align a satellite encoder with frozen CLIP ViT-B/32 embeddings of LUCAS ground photos in the
published format (``{"<NUTS0>_<pointid><N|E|S|W>": tensor(512)}``), pooled over directions.
See :mod:`model.train.loop` for the loss, schedule, checkpoints and resuming.
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "train TimeSenCLIP (points -> ground embeddings) or fine-tune SenCLIP (chips)"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ground-embeddings",
        required=True,
        help="published LUCAS photo embeddings: a torch dict <NUTS0>_<pointid><N|E|S|W> -> vector",
    )
    p.add_argument("--out", help="output folder (default outputs/train/<model>)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="passes over the data")
    g.add_argument("--batch-size", type=int, help="pairs per step (in-batch negatives + 1)")
    g.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    g.add_argument("--warmup-epochs", type=float, help="linear warm-up, then cosine decay")
    g.add_argument("--queue-size", type=int, help="MoCo queue of past ground embeddings")
    g.add_argument("--pooling", choices=("avg", "attention"), help="pool the 4 photo directions")
    g.add_argument(
        "--fixed-temperature", action="store_true", help="do not learn the 0.07 temperature"
    )
    g.add_argument(
        "--one-way", action="store_true", help="satellite-anchored InfoNCE only (as the reference)"
    )
    g.add_argument("--val-fraction", type=float, help="pairs held out for validation (0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of split, init, shuffling (0)")
    g.add_argument("--device", help="cuda or cpu (default: CUDA when available)")
    g.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="auto: bf16 on GPU")
    g.add_argument("--keep-every", type=int, help="also keep every k-th epoch's checkpoint")
    g.add_argument("--no-resume", action="store_true", help="start over even if --out has a run")
    g = p.add_argument_group("zero-shot validation (where the points have labels)")
    g.add_argument("--legend", help="legend name or file (an .npz of class vectors needs no text)")
    g.add_argument("--style", default="aerial", help="prompt style of a text legend (aerial)")
    g.add_argument("--label-column", help="points/chips column with the class of each point")
    g.add_argument(
        "--clip",
        help="the CLIP ViT-B/32 the ground embeddings come from (weights name, checkpoint, or "
        "untrained-seed<k>): recorded in the checkpoint and used for text prompts",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", metavar="MODEL", parser_class=type(p))
    t = sub.add_parser("timesenclip", help="train the pixel time-series encoder")
    t.add_argument(
        "--points", required=True, help="a table from 'extract-points' (monthly, 1 year)"
    )
    t.add_argument("--init", help="start from this TimeSenCLIP checkpoint (fine-tuning)")
    t.add_argument(
        "--augment",
        choices=("tsmix", "median", "quarter", "none"),
        default="tsmix",
        help="temporal augmentation (tsmix: median or quarter drop, the reference's TSMixAug)",
    )
    t.add_argument("--augment-p", type=float, default=0.5, help="share of augmented batches (0.5)")
    t.add_argument(
        "--position-mode",
        choices=("kept", "reference"),
        default="kept",
        help="positions after a quarter drop: the kept months' own (kept) or the first n, "
        "as the reference code does (reference)",
    )
    t.add_argument(
        "--min-valid-periods", type=int, default=6, help="drop points with fewer observed months"
    )
    g = t.add_argument_group("architecture (default: the paper's 6 x 512; smaller for experiments)")
    for name in ("depth", "dim", "heads", "mlp-dim"):
        g.add_argument(f"--{name}", type=int)
    g.add_argument("--dropout", type=float)
    _common(t)
    s = sub.add_parser("senclip", help="fine-tune CLIP's image tower on RGB chips")
    s.add_argument(
        "--chips", required=True, help="a folder of <pointid>.tif chips or an .npz (ids, chips)"
    )
    s.add_argument("--init", help="CLIP/SenCLIP weights to start from (a file or weights name)")
    s.add_argument(
        "--arch",
        default="ViT-B-32",
        choices=("ViT-B-32", "RN50", "tiny"),
        help="backbone for a random start (tiny: a toy CLIP for tests)",
    )
    s.add_argument(
        "--trainable",
        choices=("visual", "last"),
        default="visual",
        help="train the whole image tower, or only its last block + projection",
    )
    s.add_argument("--crop", type=int, help="centre crop in pixels before resizing (default: all)")
    s.add_argument("--rgb-bands", help="1-based R,G,B band numbers in the chip GeoTIFFs")
    s.add_argument("--chip-size", type=int, default=100, help="chips are padded/cropped to this")
    _common(s)


_DEFAULTS = {
    # TimeSenCLIP paper: 200 epochs, batch 1024, lr 1e-4, wd 1e-6, 10 warm-up epochs, queue 2048
    "timesenclip": {},
    # SenCLIP paper: batch 32, lr 1e-4 (ViT-B/32), 20 epochs, queue 512
    "senclip": {"epochs": 20, "batch_size": 32, "lr": 1e-4, "weight_decay": 1e-2,
                "warmup_epochs": 1.0, "queue_size": 512},
}  # fmt: skip


def _config(args: argparse.Namespace):
    from model.train.loop import TrainConfig
    from pipeline.base.config import from_mapping

    values = dict(_DEFAULTS[args.target])
    values.update(
        {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "warmup_epochs": args.warmup_epochs,
            "queue_size": args.queue_size,
            "pooling": args.pooling,
            "learn_temperature": False if args.fixed_temperature else None,
            "symmetric": False if args.one_way else None,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            "device": args.device,
            "precision": args.precision,
            "keep_every": args.keep_every,
        }
    )
    return from_mapping(TrainConfig, values, where="train")


def _zeroshot(args: argparse.Namespace, dim: int):
    """(ZeroShotEval, class names) for validation, or (None, None)."""
    if not args.legend:
        return None, None
    from model.legends import load_legend
    from model.train.loop import ZeroShotEval
    from pipeline.base.errors import UserError

    legend = load_legend(args.legend, style=args.style)
    if legend.embeddings is not None:
        w = legend.embeddings
    else:
        if not args.clip:
            raise UserError(
                "a text legend needs the CLIP text tower the ground embeddings live in: pass "
                "--clip (a weights name or checkpoint), or a legend .npz of class vectors"
            )
        import model
        from model.zeroshot import build_classifier

        m = model.load("timesenclip", untrained=True, clip_checkpoint=args.clip, device="cpu")
        w = build_classifier(m, legend).numpy()
    if w.shape[1] != dim:
        raise UserError(f"the legend's class vectors are {w.shape[1]}-d, the encoder's {dim}-d")
    return ZeroShotEval(classifier=w, class_names=legend.names), legend.names


def _out(args: argparse.Namespace):
    from pathlib import Path

    return Path(args.out) if args.out else Path("outputs") / "train" / args.target


def _report(result, out, extra: dict) -> None:
    import json

    summary = {
        "out": str(out),
        "last": str(result.last),
        "best": str(result.best),
        "epochs": len(result.history),
        "final": result.history[-1] if result.history else None,
        **extra,
    }
    (out / "train.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps(summary, indent=1, default=str))


def _run_timesenclip(args: argparse.Namespace) -> int:
    from model.train.ground import load_ground_embeddings
    from model.train.loop import fit
    from model.train.temporal import TemporalAugment
    from model.train.timesenclip import (
        TimeSenCLIPTask,
        build_encoder,
        label_indices,
        paired_points,
    )
    from pipeline.base.errors import UserError
    from pipeline.points import PointTable

    cfg = _config(args)
    arch = {
        k: v
        for k, v in {
            "depth": args.depth,
            "dim": args.dim,
            "heads": args.heads,
            "mlp_dim": args.mlp_dim,
            "dropout": args.dropout,
        }.items()
        if v is not None
    }
    encoder = build_encoder(init=args.init, seed=cfg.seed, **arch)
    table = PointTable.load(args.points)
    ground = load_ground_embeddings(args.ground_embeddings)
    if ground.dim != encoder.dim:
        raise UserError(
            f"the ground embeddings are {ground.dim}-d but the encoder outputs {encoder.dim}-d "
            "(use --dim to match)"
        )
    zs, names = _zeroshot(args, encoder.dim)
    labels = None
    if zs is not None:
        if not args.label_column:
            raise UserError("--legend for validation needs --label-column")
        labels = label_indices(table.column(args.label_column), names)
        if not (labels >= 0).any():
            raise UserError(
                f"no value of column {args.label_column!r} matches a legend class "
                f"({', '.join(names[:5])}...)"
            )
    data = paired_points(table, ground, min_valid_periods=args.min_valid_periods, labels=labels)
    try:
        aug = TemporalAugment(args.augment, p=args.augment_p, position_mode=args.position_mode)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    task = TimeSenCLIPTask(encoder, aug)
    out = _out(args)
    meta = task.export_meta(args.clip)
    meta.update(
        points=str(args.points),
        ground_embeddings=str(args.ground_embeddings),
        augment=args.augment,
        position_mode=args.position_mode,
    )
    result = fit(task, data, cfg, out, zeroshot=zs, resume=not args.no_resume, extra_meta=meta)
    _report(result, out, {"pairs": len(data), "model": "timesenclip", "clip": args.clip})
    return 0


def _run_senclip(args: argparse.Namespace) -> int:
    import numpy as np

    from model.train.ground import load_ground_embeddings
    from model.train.loop import PairedData, fit
    from model.train.senclip import SenCLIPTask, open_chips, tiny_clip
    from pipeline.base.errors import UserError

    cfg = _config(args)
    if args.init:
        import model

        net = model.load("senclip", checkpoint=args.init, arch=args.arch, device="cpu").net
    elif args.arch == "tiny":
        net = tiny_clip(seed=cfg.seed, embed_dim=32)
    else:
        from model.clip import build_clip

        net = build_clip(args.arch, cfg.seed)
    rgb = None
    if args.rgb_bands:
        try:
            rgb = [int(b) for b in args.rgb_bands.split(",")]
        except ValueError:
            raise UserError("--rgb-bands must be three integers, e.g. 3,2,1") from None
        if len(rgb) != 3:
            raise UserError("--rgb-bands must be three integers, e.g. 3,2,1")
    chips = open_chips(args.chips, rgb_bands=rgb, size=args.chip_size)
    ground = load_ground_embeddings(args.ground_embeddings)
    task = SenCLIPTask(net, trainable=args.trainable, crop=args.crop)
    if ground.dim != task.dim:
        raise UserError(f"ground embeddings are {ground.dim}-d, the CLIP gives {task.dim}-d")
    rows = ground.match(chips.ids)
    sel = np.flatnonzero(rows >= 0)
    if not len(sel):
        raise UserError("no chip id matches a ground-embedding point (chips are named <id>.tif)")
    import torch

    if args.legend or args.label_column:
        raise UserError("zero-shot validation is available for 'train timesenclip' only")
    data = PairedData(
        inputs=chips.take_rows(sel),
        ground=torch.from_numpy(ground.vectors[rows[sel]]),
        ground_mask=torch.from_numpy(ground.mask[rows[sel]]),
        ids=[chips.ids[i] for i in sel],
    )
    out = _out(args)
    meta = task.export_meta(None if args.arch == "tiny" else args.arch)
    meta.update(chips=str(args.chips), ground_embeddings=str(args.ground_embeddings))
    result = fit(task, data, cfg, out, zeroshot=None, resume=not args.no_resume, extra_meta=meta)
    _report(result, out, {"pairs": len(data), "model": "senclip", "arch": args.arch})
    return 0


def run(args: argparse.Namespace) -> int:
    from pipeline.base.errors import UserError

    if args.target == "timesenclip":
        return _run_timesenclip(args)
    if args.target == "senclip":
        return _run_senclip(args)
    raise UserError("choose what to train: 'train timesenclip ...' or 'train senclip ...'")
