"""``weights``: list the released model checkpoints and download them into the cache."""

from __future__ import annotations

import argparse

NAME = "weights"
HELP = "list released checkpoints ('weights list') or download one ('weights fetch NAME')"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="named checkpoints, their source and whether they are cached")
    fetch = sub.add_parser(
        "fetch", help="download a named checkpoint from Hugging Face into the cache"
    )
    fetch.add_argument("name", help="checkpoint name (see 'weights list')")
    fetch.add_argument("--force", action="store_true", help="download again even if cached")


def run(args: argparse.Namespace) -> int:
    from model.weights import REGISTRY, fetch

    if args.action == "fetch":
        path = fetch(args.name, force=args.force)
        print(path)
        return 0
    rows = [
        (
            s.name,
            s.arch,
            "yes" if s.cached else "no",
            f"{s.repo_id}/{s.filename}",
            s.licence,
            s.description,
        )
        for s in REGISTRY.values()
    ]
    head = ("name", "arch", "cached", "source (huggingface.co)", "licence", "description")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    for r in [head, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r[:5], widths)) + "  " + r[5])
    print(f"\ncache: {next(iter(REGISTRY.values())).path.parent}")
    print("use: model.load('senclip', checkpoint=NAME) or --checkpoint NAME")
    print(
        "TimeSenCLIP: --checkpoint timesenclip-1x1; its prompts use openai-clip-vitb32 "
        "(fetch it too, or pass --clip-checkpoint)"
    )
    return 0
