"""``query --field``: free-text heat maps from a map's stored embedding field (no imagery read)."""

from __future__ import annotations

import argparse

NAME = "query"
HELP = "heat maps of free-text queries ('a lake') from a map's embedding field"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--field", required=True, metavar="MAP_DIR", help="a map made with --save-embeddings"
    )
    p.add_argument("texts", nargs="+", metavar="TEXT", help="one or more queries, e.g. 'a lake'")
    p.add_argument("--checkpoint", help="the field's model weights, if they moved since the run")
    p.add_argument("--out", help="output folder (default MAP_DIR/queries)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pipeline.field import open_field
    from pipeline.field.query import query_field

    f = open_field(args.field)
    files = query_field(
        f, args.texts, args.out, checkpoint=args.checkpoint, progress=not args.no_progress
    )
    for p in files.values():
        print(p)
    return 0
