"""``classify --field``: a new class map from stored embedding fields (no imagery read)."""

from __future__ import annotations

import argparse

from pipeline.commands._ask import add_field_options, where

NAME = "classify"
HELP = "re-classify maps from their embedding fields (run --save-embeddings) with another legend"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_field_options(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--legend", help="legend name (see 'legends') or a YAML/JSON/NPZ file")
    g.add_argument("--head", help="a few-shot head from 'probe' (fitted on the field's model)")
    p.add_argument("--style", choices=("aerial", "ground", "generic"), help="prompt style")
    p.add_argument(
        "--calibration",
        choices=("reference", "none"),
        help="class-mean calibration (default: the run's; fitted on the fields for a new legend "
        "or when the runs' calibrations differ)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="the run's whole product set (confidence, top-k, margin, entropy, map.zarr) for one "
        "field, in one process; default: classes.tif, streamed tile by tile",
    )
    p.add_argument("--top-k", type=int, help="with --full: probabilities kept per pixel")
    p.add_argument("--checkpoint", help="the field's model weights, if they moved since the run")
    p.add_argument("--clip-checkpoint", help="CLIP text tower for TimeSenCLIP prompts")
    p.add_argument("--out", help="output folder (default MAP_DIR/maps/<legend or head name>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pipeline.base.errors import UserError
    from pipeline.field.fieldset import open_fields

    w = where(args)
    fs = open_fields(args.field)
    if args.head or args.full:
        if len(fs.fields) > 1:
            raise UserError("--head and --full take one --field; give one map folder")
        from pipeline.field.classify import ClassifyConfig, classify_field

        out = classify_field(
            fs.first,
            ClassifyConfig(
                legend=args.legend,
                style=args.style,
                head=args.head,
                calibration=args.calibration,
                top_k=args.top_k,
                checkpoint=args.checkpoint,
                clip_checkpoint=args.clip_checkpoint,
                out=args.out,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            ),
        )
    else:
        from pipeline.field.classify_map import MapConfig, classify_fields

        out = classify_fields(
            fs,
            MapConfig(
                legend=args.legend,
                style=args.style,
                calibration=args.calibration,
                checkpoint=args.checkpoint,
                clip_checkpoint=args.clip_checkpoint,
                out=args.out,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            ),
            w,
        )
    print(out)
    return 0
