"""Options shared by ``classify --field`` and ``query --field``: the fields and where to work."""

from __future__ import annotations

import argparse
from typing import Any


def add_field_options(p: argparse.ArgumentParser) -> None:
    """``--field`` (one or several map folders, read as one) and ``run``'s cluster options."""
    p.add_argument(
        "--field",
        required=True,
        action="append",
        metavar="MAP_DIR",
        help="a map made with --save-embeddings (or a gridded run: its cells); repeat it for "
        "several maps, mosaicked into one output (they must share the model's basis, CRS and "
        "pixel grid; where they overlap the first given wins)",
    )
    p.add_argument(
        "--cluster", default="local", help="local (default), slurm, or a scheduler address"
    )
    p.add_argument(
        "--cluster-config", help="Slurm profile YAML (default pipeline/run/profiles/slurm.yaml)"
    )
    p.add_argument("--workers", type=int, help="local worker processes, or Slurm jobs")


def where(args: argparse.Namespace) -> Any:
    """The :class:`pipeline.field.stream.Where` of the options (checked)."""
    from pipeline.field.stream import Where

    return Where(kind=args.cluster, workers=args.workers, cluster_config=args.cluster_config)
