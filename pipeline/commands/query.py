"""``query --field``: free-text heat maps from maps' embedding fields (no imagery read)."""

from __future__ import annotations

import argparse

from pipeline.commands._ask import add_field_options, where

NAME = "query"
HELP = "heat maps of free-text queries ('a lake') from maps' embedding fields"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_field_options(p)
    p.add_argument("texts", nargs="+", metavar="TEXT", help="one or more queries, e.g. 'a lake'")
    p.add_argument(
        "--probability",
        action="store_true",
        help="also write band 2: each query's probability against the map's legend classes "
        "(or, without a legend, against the other queries)",
    )
    p.add_argument("--checkpoint", help="the field's model weights, if they moved since the run")
    p.add_argument("--out", help="output folder (default MAP_DIR/queries, of the first map)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pipeline.field.fieldset import open_fields
    from pipeline.field.query import query_field

    w = where(args)
    fs = open_fields(args.field)
    files = query_field(
        fs, args.texts, args.out, checkpoint=args.checkpoint, progress=not args.no_progress,
        cluster=w, probability=args.probability,
    )  # fmt: skip
    for p in files.values():
        print(p)
    return 0
