"""s2lc: Sentinel-2 land-cover maps from STAC scenes with SenCLIP and TimeSenCLIP.

The command line is ``python -m pipeline <command>`` (:mod:`pipeline.cli`). The packages follow
the data's way through a run, each importing only the ones before it (``make lint`` checks it):

===================  ==========================================================================
``base``             errors, typed configs, paths, atomic writes, JSON, hashing, colours, dates
``stac``             finding scenes: search, provider profiles, band layouts and harmonisation,
                     the scene ledger
``grid``             the output grid: tiles, chips, EEA cells, MGRS
``reading``          scene pixels of one window: native block reads, odc-stac cubes, read
                     failures
``composite``        cloud-free period medians, and one window's read-then-composite
``adapters``         the model paths (TimeSenCLIP pixels, SenCLIP chips) behind one interface
``writers``          COGs, the Zarr map store, the embedding field
``run``              a mapping run: preparation, scheduling, the tile task, workspace,
                     publishing, clusters, the cost plan
``field``            "ask the map": classify and query a stored embedding field
``points``           point extraction through the map's own read path
``evaluate``         accuracy against labelled data and map-accuracy estimates
``view``             the map viewer
``testing``          the demo catalog generator, a local STAC API, a stand-in encoder
``bench``            ``make bench``
``commands``         one module per command of the command line
===================  ==========================================================================

The public Python API, importable as ``from pipeline import NAME``; each name is loaded when
first used (PEP 562), so ``import pipeline`` stays as light as :mod:`pipeline.base`:

- :func:`search_items` ``(geometry, start, end, SearchConfig) -> list[pystac.Item]``: the usable
  scenes of a STAC search; :func:`search_scenes` gives them with the scene ledger;
  :class:`SearchConfig` sets the API, profile, cloud limit and paging.
- :func:`load_cube` ``(items, geobox, ...) -> xarray.Dataset``: masked surface reflectance of
  :data:`BANDS` on a GeoBox (odc-stac), harmonised across processing baselines.
- :func:`make_grid` and :func:`aoi_mask`: the output grid of a region and its pixel mask.
- :class:`UserError`: every error meant for the user (one line, exit 2 from the command line).

Regions come from :mod:`aoi` (``load_region``, ``to_crs``); the demo generator and the local
STAC server from :mod:`pipeline.testing.demo` and :mod:`pipeline.testing.stac_server`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_API = {
    "BANDS": "pipeline.stac.bands",
    "SearchConfig": "pipeline.stac.search",
    "search_items": "pipeline.stac.search",
    "search_scenes": "pipeline.stac.search",
    "load_cube": "pipeline.reading.cube",
    "make_grid": "pipeline.grid.tiling",
    "aoi_mask": "pipeline.grid.tiling",
    "UserError": "pipeline.base.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
