"""``legends``: list the built-in legends, or show one legend's classes, colours and prompts."""

from __future__ import annotations

import argparse

NAME = "legends"
HELP = "list built-in legends, or show one (a name or a YAML/JSON/NPZ file) with its prompts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a legend name or file to show in detail")
    parser.add_argument(
        "--style",
        default="aerial",
        help="prompt style: generic, aerial, ground, mixed or name (default aerial)",
    )


def run(args: argparse.Namespace) -> int:
    from model.legends import list_legends, load_legend

    if args.name:
        lg = load_legend(args.name, style=args.style)
        print(
            f"{lg.name}  ({len(lg)} classes, style {lg.style}, prompt hash {lg.prompt_hash[:12]})"
        )
        for i, c in enumerate(lg.classes):
            print(f"{i:3d}  {c.color}  {c.name}")
            for p in c.prompts:
                print(f"           - {p}")
        return 0
    for name in list_legends():
        lg = load_legend(name, style=args.style)
        print(
            f"{name:16s} {len(lg):3d} classes  {', '.join(lg.names[:4])}{', ...' if len(lg) > 4 else ''}"
        )
    return 0
