"""``classify --field``: a new class map from a map's stored embedding field (no imagery read)."""

from __future__ import annotations

import argparse

NAME = "classify"
HELP = "re-classify a map from its embedding field (run --save-embeddings) with another legend"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--field", required=True, metavar="MAP_DIR", help="a map made with --save-embeddings"
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--legend", help="legend name (see 'legends') or a YAML/JSON/NPZ file")
    g.add_argument("--head", help="a few-shot head from 'probe' (fitted on the field's model)")
    p.add_argument("--style", choices=("aerial", "ground", "generic"), help="prompt style")
    p.add_argument(
        "--calibration",
        choices=("reference", "none"),
        help="class-mean calibration (default: the run's; fitted on the field for a new legend)",
    )
    p.add_argument("--top-k", type=int, help="probabilities kept per pixel (default: the run's)")
    p.add_argument("--checkpoint", help="the field's model weights, if they moved since the run")
    p.add_argument("--clip-checkpoint", help="CLIP text tower for TimeSenCLIP prompts")
    p.add_argument("--out", help="output folder (default MAP_DIR/maps/<legend or head name>)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pipeline.field import open_field
    from pipeline.field.classify import ClassifyConfig, classify_field

    f = open_field(args.field)
    out = classify_field(
        f,
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
    print(out)
    return 0
