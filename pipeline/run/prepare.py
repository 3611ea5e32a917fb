"""Run preparation: what a run resolves on the driver before any tile runs, in one step.

:func:`prepare_map` takes the region that the cheap checks resolved
(:class:`pipeline.run.checks.CheckedInputs`), fits the tile size so that every worker gets a tile,
builds the output grid once, loads the model and its classifier (legend or few-shot head), and
returns them as one frozen :class:`Prepared`. The cheap checks themselves are
:mod:`pipeline.run.checks`, the backend :mod:`pipeline.run.precision`, the scenes
:func:`pipeline.stac.search.search_run_scenes` and the tiles to run :mod:`pipeline.run.scheduling`.

Everything here runs on the driver and fails before anything is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.colours import palette
from pipeline.base.errors import UserError
from pipeline.base.hashing import sha256_file
from pipeline.grid.tiling import TileGrid
from pipeline.run.checks import CheckedInputs, resolve_region
from pipeline.run.config import ModelConfig, RunConfig

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


def prepare_map(
    cfg: RunConfig, checked: CheckedInputs, cluster: Any, previous: dict[str, Any] | None
) -> tuple[RunConfig, Prepared]:
    """The run's settings with the tile size fitted to the workers (:func:`fit_tile_size`), and
    its :class:`Prepared` (grid, legend, classifier, model identity) on that grid.

    :param checked: the region and geometry that :func:`pipeline.run.checks.check_inputs`
        resolved (not resolved again here).
    :param cluster: the run's :class:`~pipeline.run.cluster.ClusterConfig`.
    :param previous: the manifest of the run being resumed, or None.
    :raises UserError: a legend of more than 254 classes, or a head fitted on another model.
    """
    cfg, grid = fit_tile_size(cfg, checked.region, checked.geometry, cluster, previous)
    return cfg, _on_grid(cfg.model, checked.region, checked.geometry, grid)


def prepare_run(cfg: RunConfig, grid: TileGrid | None = None) -> Prepared:
    """:class:`Prepared` for commands that classify outside a map run (``classify``, benches):
    the region resolved here, on ``grid`` or on the grid of ``cfg.chips.tile_size``.

    :raises UserError: as :func:`pipeline.run.checks.resolve_region` and :func:`prepare_map`.
    """
    from pipeline.grid.cells import output_grid

    region, geometry = resolve_region(cfg.region, cfg.bbox)
    if grid is None:
        grid = output_grid(geometry, region.crs, region.resolution, cfg.chips.tile_size)
    return _on_grid(cfg.model, region, geometry, grid)


def _on_grid(model: ModelConfig, region: Any, geometry: Any, grid: TileGrid) -> Prepared:
    """The model, its classifier and its identity (on the driver; fails before writing)."""
    m = model.load()
    names, colors, legend_info, w = legend_and_classifier(model, m)
    if len(names) > 254:
        raise UserError(f"the legend has {len(names)} classes; at most 254 fit a uint8 map")
    model_info = {
        "name": m.name,
        "identity": m.identity,
        "checkpoint": model.checkpoint,
        "checkpoint_sha256": m.checkpoint_sha256,
        "untrained": m.untrained,
        "embed_dim": m.embed_dim,
        "arch": getattr(m, "arch", model.arch),
        "embedding_identity": getattr(m, "embedding_identity", m.identity),
    }
    return Prepared(
        region.name,
        geometry,
        region.crs,
        region.resolution,
        grid,
        names,
        colors,
        legend_info,
        w,
        model_info,
    )


def legend_and_classifier(model: ModelConfig, m: Any):
    """Class names, colours, legend facts for legend.json, and the (C, D) text classifier of the
    loaded model ``m``: the few-shot head's classes (``--head``, a zero classifier: the head
    classifies) or the legend's prompts (``--legend``, default lucas-lc8)."""
    if model.head:
        from model.train.probe import check_head_matches, head_legend, load_head

        head = load_head(model.head)
        check_head_matches(
            head,
            {
                "name": m.name,
                "identity": m.identity,
                "dim": int(m.embed_dim),
                "checkpoint_sha256": m.checkpoint_sha256,
            },
            where=model.head,
        )
        names = tuple(head.class_names)
        legend = head_legend(head, model.legend, model.style)
        if legend is not None and tuple(legend.names) == names:
            colors = tuple(legend.colors)
        else:
            colors = tuple(palette(len(names)))
        info = {
            "name": legend.name if legend is not None else Path(model.head).name,
            "style": "few-shot head",
            "prompt_hash": None,
            "head": Path(model.head).name,
            "head_sha256": sha256_file(Path(model.head)),
        }
        return names, colors, info, np.zeros((len(names), m.embed_dim), np.float32)
    from model.legends import load_legend
    from model.zeroshot import build_classifier

    legend = load_legend(model.legend or "lucas-lc8", style=model.style)
    w = build_classifier(m, legend)
    w = w.detach().cpu().float().numpy() if hasattr(w, "detach") else np.asarray(w, np.float32)
    names = tuple(c.name for c in legend.classes)
    colors = tuple(c.color for c in legend.classes)
    info = {"name": legend.name, "style": legend.style, "prompt_hash": legend.prompt_hash}
    return names, colors, info, w


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
    from pipeline.grid.cells import fit_tiles_to_workers, output_grid

    asked = cfg.chips.tile_size
    workers = None if previous is not None else cluster.planned_workers()
    if previous is not None:
        size = int((previous.get("config") or {}).get("tile_size", asked))
        grid = output_grid(geometry, region.crs, region.resolution, size)
    elif workers and workers >= 2:
        grid = fit_tiles_to_workers(
            geometry, region.crs, region.resolution, asked, workers, cfg.halo
        )
    else:
        grid = output_grid(geometry, region.crs, region.resolution, asked)
    size = grid.tile_size
    if size != asked and previous is None:
        _log.info(
            "small region: tiles of %d px instead of %d, so that all %d workers get one",
            size,
            asked,
            workers,
        )
    return (cfg if size == asked else cfg.with_(tile_size=size)), grid
