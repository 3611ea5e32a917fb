"""Run preparation: what a run resolves on the driver before any tile runs, in one step.

:func:`prepare_map` takes the region that the cheap checks resolved
(:class:`pipeline.run.checks.CheckedInputs`) and the model's classes that the driver resolved once
(:class:`pipeline.run.classifier.ModelClasses`, also what the backend was measured with), fits the
tile size so that every worker gets a tile, builds the output grid once, and returns them with the
compact field's metadata as one frozen :class:`Prepared`. The cheap
checks themselves are :mod:`pipeline.run.checks`, the backend :mod:`pipeline.run.precision`, the
scenes :func:`pipeline.stac.found.search_run` and the tiles to run :mod:`pipeline.run.scheduling`.

Everything here runs on the driver and fails before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.grid.tiling import TileGrid
from pipeline.run.checks import CheckedInputs, resolve_region
from pipeline.run.classifier import ModelClasses, class_sources, model_classes
from pipeline.run.config import RunConfig

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What the driver resolved before any tile runs."""

    region_name: str
    geometry: Any
    crs: str
    resolution: float
    grid: Any
    class_names: tuple[str, ...]
    colors: tuple[str, ...]
    legend_info: dict[str, Any]
    classifier: np.ndarray
    model_info: dict[str, Any]
    field_dims: int | None = None
    """Components of the compact field: ``--field-dims``, at most the model's embedding size
    (None without ``--save-embeddings``)."""
    field_meta: dict[str, Any] | None = None
    """The compact field's metadata (the store's ``s2lc:field``: model identity, decoding recipe,
    basis hash; :func:`pipeline.run.basis.field_metadata`), None without ``--save-embeddings``."""


def _prepared(cfg: RunConfig, c: ModelClasses, region: Any, geometry: Any, grid: Any) -> Prepared:
    """:class:`Prepared` on ``grid``: the model's classes and classifier ``c`` and, with
    ``--save-embeddings``, the field's components (``--field-dims``, at most the model's
    embedding size) and metadata."""
    from pipeline.run.basis import field_metadata

    out = cfg.output
    dims = min(int(out.field_dims), int(c.model_info["embed_dim"])) if out.save_embeddings else None
    return Prepared(
        region.name,
        geometry,
        region.crs,
        region.resolution,
        grid,
        c.class_names,
        c.colors,
        c.legend_info,
        c.classifier,
        c.model_info,
        dims,
        field_metadata(c.model_info, dims) if dims is not None else None,
    )


def prepare_map(
    cfg: RunConfig,
    checked: CheckedInputs,
    classes: ModelClasses,
    cluster: Any,
    previous: dict[str, Any] | None,
) -> tuple[RunConfig, Prepared]:
    """The run's settings with the tile size fitted to the workers (:func:`fit_tile_size`), and
    its :class:`Prepared` (grid, legend, classifier, model identity) on that grid.

    :param checked: the region and geometry that :func:`pipeline.run.checks.check_inputs`
        resolved (not resolved again here).
    :param classes: the model's classes and classifier
        (:func:`pipeline.run.classifier.model_classes`, resolved once by the driver).
    :param cluster: the run's :class:`~pipeline.run.cluster.ClusterConfig`.
    :param previous: the manifest of the run being resumed, or None.
    """
    region, geometry = checked.region, checked.geometry
    cfg, grid = fit_tile_size(cfg, region, geometry, cluster, previous)
    return cfg, _prepared(cfg, classes, region, geometry, grid)


def prepare_run(cfg: RunConfig, grid: TileGrid | None = None) -> Prepared:
    """:class:`Prepared` for commands that classify outside a map run (``classify``, benches):
    the region resolved here, on ``grid`` or on the grid of ``cfg.chips.tile_size``.

    :raises UserError: as :func:`pipeline.run.checks.resolve_region`,
        :func:`pipeline.run.classifier.class_sources` and
        :func:`pipeline.run.classifier.model_classes`.
    """
    from pipeline.grid.cells import output_grid

    region, geometry = resolve_region(cfg.region, cfg.bbox)
    if grid is None:
        grid = output_grid(geometry, region.crs, region.resolution, cfg.chips.tile_size)
    classes = model_classes(cfg.model, *class_sources(cfg.model))
    return _prepared(cfg, classes, region, geometry, grid)


def fit_tile_size(
    cfg: RunConfig, region: Any, geometry: Any, cluster: Any, previous: dict[str, Any] | None
) -> tuple[RunConfig, TileGrid]:
    """The run's settings with tiles small enough that every worker gets one, and their grid.

    A region smaller than workers x tile is split finer (:func:`pipeline.grid.cells.fit_tiles_to_workers`;
    never below a patch model's chip window). A resumed run keeps the tile edge recorded in its
    manifest, whatever the workers now, so its finished tiles still fit. The output hash is taken
    before this, from the tile size asked for.

    :param region: the run's :class:`aoi.Region` (CRS, resolution); ``geometry`` the area to map
        (:func:`pipeline.run.checks.resolve_region`).
    :param cluster: the run's :class:`~pipeline.run.cluster.ClusterConfig`.
    :param previous: the manifest of the run being resumed, or None.
    """
    from pipeline.grid.cells import fit_tiles_to_workers

    asked = cfg.chips.tile_size
    if previous is not None:  # its finished tiles must still fit: no split for the workers now
        size, workers = int((previous.get("config") or {}).get("tile_size", asked)), None
    else:
        size, workers = asked, cluster.planned_workers()
    grid = fit_tiles_to_workers(geometry, region.crs, region.resolution, size, workers, cfg.halo)
    size = grid.tile_size
    if size != asked and previous is None:
        _log.info(
            "small region: tiles of %d px instead of %d, so that all %d workers get one",
            size,
            asked,
            workers,
        )
    return (cfg if size == asked else cfg.with_(tile_size=size)), grid
