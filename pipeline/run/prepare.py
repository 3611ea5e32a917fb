"""Run preparation: what a run resolves on the driver before any tile runs.

The region (clipped to ``--bbox``), the size check, the cheap preflight of legend and head, the
precision, the tile size that gives every worker a tile, and :class:`Prepared` (grid, legend,
classifier, model identity). The scenes come from :func:`pipeline.stac.search.search_run_scenes`; the
tiles to run and their work orders from :mod:`pipeline.run.scheduling`.

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
from pipeline.run.config import RunConfig

_log = logging.getLogger(__name__)

#: Local runs larger than this (km²) need --allow-large: hours of CPU inference.
LOCAL_CPU_LIMIT_KM2 = 100.0
LOCAL_GPU_LIMIT_KM2 = 20_000.0


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


@dataclass(frozen=True)
class CheckedInputs:
    """What :func:`check_inputs` resolved: the region's name, its geometry (EPSG:4326, clipped to
    ``--bbox``), its area in km² and the composite's period labels."""

    name: str
    geometry: Any
    area_km2: float
    labels: tuple[str, ...]
    location: str = ""
    """Where the region is (:func:`aoi.location_text`): centre, description, CRS."""


def check_inputs(cfg: RunConfig) -> CheckedInputs:
    """The cheap checks of a run, in seconds and before any model is built or anything written.

    Raises:
        UserError: an unknown region or a ``--bbox`` outside it, a local run too large without
            ``--allow-large``, periods the model cannot take, an unknown legend, an unreadable
            head or one fitted for another model, period or number of periods.
    """
    from aoi import location_text, to_crs
    from pipeline.composite.median import period_labels

    region, geometry = resolve_region(cfg)
    area_km2 = float(to_crs(geometry, region.crs).area) / 1e6
    # First: where the region is (a --bbox with its axes swapped maps another continent).
    where = location_text(geometry, region.crs, region.description)
    _log.info("region %s: %s, %.2f km2", region.name, where, area_km2)
    c = cfg.composite
    labels = tuple(period_labels(c.start, c.end, c.period))
    cfg.model.adapter.check_periods(len(labels), c.start, c.end, c.period)
    preflight(cfg, len(labels))
    if cfg.execution.cluster == "slurm":
        from pipeline.run.cluster import check_sbatch

        check_sbatch()
    check_size(cfg, area_km2)  # last: above the CPU limit it counts GPUs (imports torch)
    return CheckedInputs(region.name, geometry, area_km2, labels, where)


def resolve_region(cfg: RunConfig):
    """The region and the geometry to map: clipped to ``--bbox`` when given, and the pixels it
    touches when it holds no pixel centre (:func:`pipeline.grid.tiling.pixel_footprint`)."""
    from shapely.geometry import box

    from aoi import load_region
    from pipeline.grid.tiling import pixel_footprint

    region = load_region(cfg.region)
    geometry = region.geometry
    if cfg.bbox is not None:
        geometry = geometry.intersection(box(*cfg.bbox))
        if geometry.is_empty or geometry.area == 0:
            raise UserError(f"--bbox {list(cfg.bbox)} does not overlap region {region.name}")
    return region, pixel_footprint(geometry, region.crs, region.resolution)


def check_size(cfg: RunConfig, area_km2: float) -> None:
    """Refuse a local run far beyond what a laptop does in reasonable time, unless confirmed."""
    if cfg.execution.cluster != "local" or cfg.execution.allow_large:
        return
    if area_km2 <= min(LOCAL_CPU_LIMIT_KM2, LOCAL_GPU_LIMIT_KM2):
        return  # small enough either way: no GPU count, so torch is not imported for it
    from pipeline.run.cluster import _cuda_devices

    limit = LOCAL_GPU_LIMIT_KM2 if _cuda_devices() else LOCAL_CPU_LIMIT_KM2
    if area_km2 > limit:
        raise UserError(
            f"the region covers {area_km2:,.0f} km2, more than a local cluster maps in reasonable "
            f"time ({limit:,.0f} km2 here); use --cluster slurm|tcp://..., a smaller --bbox, "
            "or pass --allow-large to run it anyway"
        )


def preflight(cfg: RunConfig, n_periods: int) -> None:
    """Cheap checks of the checkpoints, the legend and the few-shot head, before any model is
    built and before torch is imported.

    Raises UserError for a checkpoint that is neither a file nor a weights name, an unknown legend, an unreadable head, or a head fitted on another model
    kind, composite period or number of periods T than this run makes.
    """
    from model import weights
    from model.legends import load_legend

    for checkpoint in (cfg.model.checkpoint, getattr(cfg.model, "clip_checkpoint", None)):
        if checkpoint:
            weights.check(checkpoint)
    if not cfg.model.head:
        load_legend(cfg.model.legend or "lucas-lc8", style=cfg.model.style)
        return
    from model.train.probe import check_head_matches, load_head

    head = load_head(cfg.model.head)
    check_head_matches(
        head,
        {"name": cfg.model.name, "period": cfg.composite.period, "periods": n_periods},
        where=cfg.model.head,
    )
    fitted = head.model_identity
    if fitted.get("start") and str(fitted["start"]) != str(cfg.composite.start):
        _log.warning(
            "the head was fitted on composites of %s..%s and maps %s..%s: a head transfers "
            "between years only as far as the land cover's seasonal signal does",
            fitted["start"],
            fitted.get("end"),
            cfg.composite.start,
            cfg.composite.end,
        )
    legend = _head_legend(cfg, head)
    if legend is not None and tuple(legend.names) != tuple(head.class_names):
        raise UserError(
            f"--legend {cfg.model.legend} has classes {', '.join(legend.names)}; the head "
            f"{cfg.model.head} predicts {', '.join(head.class_names)}"
        )


def _head_legend(cfg: RunConfig, head: Any):
    """The legend whose colours a head's map takes: --legend, else the one the head was fitted
    with (``probe --legend``), else None (a generic palette)."""
    from model.legends import load_legend

    name = cfg.model.legend if cfg.model.legend is not None else head.meta.get("legend")
    if not name:
        return None
    try:
        return load_legend(name, style=cfg.model.style)
    except UserError:
        if cfg.model.legend is not None:
            raise
        return None  # the head's legend file moved: fall back to a palette


def _legend_and_classifier(cfg: RunConfig, m: Any):
    """Class names, colours, legend facts for legend.json, and the (C, D) text classifier."""
    if cfg.model.head:
        from model.train.probe import check_head_matches, load_head

        head = load_head(cfg.model.head)
        check_head_matches(
            head,
            {
                "name": m.name,
                "identity": m.identity,
                "dim": int(m.embed_dim),
                "checkpoint_sha256": m.checkpoint_sha256,
            },
            where=cfg.model.head,
        )
        names = tuple(head.class_names)
        legend = _head_legend(cfg, head)
        if legend is not None and tuple(legend.names) == names:
            colors = tuple(legend.colors)
        else:
            colors = tuple(palette(len(names)))
        info = {
            "name": legend.name if legend is not None else Path(cfg.model.head).name,
            "style": "few-shot head",
            "prompt_hash": None,
            "head": Path(cfg.model.head).name,
            "head_sha256": sha256_file(Path(cfg.model.head)),
        }
        return names, colors, info, np.zeros((len(names), m.embed_dim), np.float32)
    from model.legends import load_legend
    from model.zeroshot import build_classifier

    legend = load_legend(cfg.model.legend or "lucas-lc8", style=cfg.model.style)
    w = build_classifier(m, legend)
    w = w.detach().cpu().float().numpy() if hasattr(w, "detach") else np.asarray(w, np.float32)
    names = tuple(c.name for c in legend.classes)
    colors = tuple(c.color for c in legend.classes)
    info = {"name": legend.name, "style": legend.style, "prompt_hash": legend.prompt_hash}
    return names, colors, info, w


def resolve_precision(
    cfg: RunConfig, threads: int | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """``cfg`` with ``--backend auto`` resolved for this machine (:mod:`model.precision`).

    The driver runs this once, before the output hash, so the hash covers the backend and CPU
    batch the pixels are computed with, and every worker gets them in its config (mixed nodes or
    a resume elsewhere keep one hash). The measurement is timed with the driver's torch threads,
    which :mod:`pipeline.run.cluster` also gives each worker (cores // workers).

    Args:
        cfg: the run's settings.
        threads: torch threads per worker (:func:`pipeline.run.cluster.worker_threads`); the
            measurement runs with that many (None: this process's).
    """
    if cfg.model.precision != "auto":
        return cfg, {
            "requested": cfg.model.precision,
            "resolved": cfg.model.precision,
            "batch": cfg.model.cpu_batch,
        }
    import torch

    from model.precision import resolve

    m = cfg.model.load()
    w = _legend_and_classifier(cfg, m)[3]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        resolved, info = resolve(m, "auto", np.asarray(w, np.float32), batch=cfg.model.cpu_batch)
    finally:
        torch.set_num_threads(before)
    batch = info.get("batch") if m.device.type == "cpu" else None
    return cfg.with_(precision=resolved, cpu_batch=batch), info


def use_backend(m: Any, requested: str = "auto", legend: str | None = None) -> dict[str, Any]:
    """Put model ``m`` on the backend ``requested`` (``auto``: as a map run decides it).

    For commands that embed pixels outside a map run (``probe``): ``auto`` is resolved with the
    classifier of ``legend`` (default lucas-lc8, a map's default), the same cached per-machine
    decision a map run with that legend gets.

    Returns:
        the decision (``requested``, ``resolved``, ``batch``, ...), to record with the outputs.
    """
    from model.engine import set_precision
    from model.legends import load_legend
    from model.precision import resolve
    from model.zeroshot import build_classifier

    def exact(reason: str) -> dict[str, Any]:
        set_precision(m, "fp32")
        return {"requested": "auto", "resolved": "fp32", "reason": reason}

    if requested == "auto" and m.device.type == "cpu" and not getattr(m, "has_text", True):
        return exact("no text tower: no classifier")
    w = np.zeros((1, m.embed_dim), np.float32)
    if requested == "auto" and m.device.type == "cpu":
        w = build_classifier(m, load_legend(legend or "lucas-lc8", style="aerial"))
        w = w.detach().cpu().float().numpy() if hasattr(w, "detach") else np.asarray(w)
        if w.shape[-1] != m.embed_dim:  # a checkpoint trained for another embedding space
            return exact(f"the text tower's {w.shape[-1]}-d classes cannot rank its embeddings")
    backend, info = resolve(m, requested, np.asarray(w, np.float32))
    set_precision(m, backend, batch=info.get("batch"))
    return info


def fit_tile_size(
    cfg: RunConfig, cluster: Any, previous: dict[str, Any] | None
) -> tuple[RunConfig, TileGrid]:
    """The run's settings with tiles small enough that every worker gets one, and their grid.

    A region smaller than workers x tile is split finer (:func:`pipeline.grid.cells.fit_tiles_to_workers`;
    never below a patch model's chip window). A resumed run keeps the tile edge recorded in its
    manifest, whatever the workers now, so its finished tiles still fit. The output hash is taken
    before this, from the tile size asked for. The grid goes to :func:`prepare_run`, so it is built
    once.

    :param cluster: the run's :class:`~pipeline.run.cluster.ClusterConfig`.
    :param previous: the manifest of the run being resumed, or None.
    """
    from pipeline.grid.cells import fit_tiles_to_workers, output_grid

    asked = cfg.chips.tile_size
    region, geometry = resolve_region(cfg)
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


def prepare_tiles(
    cfg: RunConfig, cluster: Any, previous: dict[str, Any] | None
) -> tuple[RunConfig, Prepared]:
    """The run's settings with the tile size fitted to the workers (:func:`fit_tile_size`), and
    its :class:`Prepared` (grid, legend, classifier, model identity) on that grid."""
    cfg, grid = fit_tile_size(cfg, cluster, previous)
    return cfg, prepare_run(cfg, grid)


def prepare_run(cfg: RunConfig, grid: TileGrid | None = None) -> Prepared:
    """Resolve region, grid, model identity and classifier on the driver (fails before writing).

    :param grid: the run's output grid when already built (:func:`fit_tile_size`); else built
        here at ``cfg.chips.tile_size``.
    """
    from pipeline.grid.cells import output_grid

    region, geometry = resolve_region(cfg)
    if grid is None:
        grid = output_grid(geometry, region.crs, region.resolution, cfg.chips.tile_size)
    m = cfg.model.load()
    names, colors, legend_info, w = _legend_and_classifier(cfg, m)
    if len(names) > 254:
        raise UserError(f"the legend has {len(names)} classes; at most 254 fit a uint8 map")
    model_info = {
        "name": m.name,
        "identity": m.identity,
        "checkpoint": cfg.model.checkpoint,
        "checkpoint_sha256": m.checkpoint_sha256,
        "untrained": m.untrained,
        "embed_dim": m.embed_dim,
        "arch": getattr(m, "arch", cfg.model.arch),
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
