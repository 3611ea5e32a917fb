"""Sentinel-2 land-cover mapping pipeline: STAC search, cubes, composites, tiled inference, outputs.

The command line is ``python -m pipeline <command>``; see :mod:`pipeline.cli`.
"""

from pipeline.base.errors import UserError

__all__ = ["UserError"]
