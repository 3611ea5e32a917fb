"""``view MAP_DIR``: a local web viewer for a finished map (layers, legend, pixel values, queries)."""

from __future__ import annotations

import argparse

NAME = "view"
HELP = "open a finished map in the browser: layers, legend, top-k at a click, free-text queries"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("map_dir", metavar="MAP_DIR", help="the output folder of a run (or classify)")
    p.add_argument(
        "--port", type=int, default=8765, help="loopback port (default 8765; 0 picks a free one)"
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.base.errors import UserError
    from pipeline.view import serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {args.port}")
    serve(args.map_dir, args.port)
    return 0
