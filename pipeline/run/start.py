"""A run's first stage, on the driver: the cheap checks, the workspace, the cluster's layout, the
scene search (a fresh run), the model's classes, the backend and the output hash, in that order
(:func:`start`); bad input fails here, before anything is written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.run.checks import CheckedInputs, check_inputs
from pipeline.run.classifier import ModelClasses, model_classes
from pipeline.run.config import RunConfig, default_output_dir
from pipeline.run.inputs import Scenes
from pipeline.run.precision import resolve_precision
from pipeline.run.reporting import up_to_date
from pipeline.run.workspace import Workspace
from pipeline.stac.found import search_run

_log = logging.getLogger(__name__)

#: Regions larger than this search in a process of their own (:func:`pipeline.stac.found.search_run`),
#: so the memory of the search's pages never stays in the driver (about 1.4 GB for EU-27).
ISOLATED_SEARCH_KM2 = 100_000.0


@dataclass(frozen=True)
class RunState:
    """What :func:`start` resolved for the stages of one run: its settings (precision resolved),
    the checked region, the model's classes, the workspace, the output hash, the cluster and the
    manifest of the run being resumed (None when it starts afresh)."""

    cfg: RunConfig
    checked: CheckedInputs
    """The region, geometry, area and period labels that the cheap checks resolved."""
    classes: ModelClasses
    """The model's classes and classifier, resolved once: the backend is measured with them and
    the tiles classify with them (:func:`pipeline.run.classifier.model_classes`)."""
    ws: Workspace
    output_hash: str
    settings: dict[str, Any]
    """The flat settings that enter the output hash (:meth:`pipeline.run.config.RunConfig.identity`):
    a refused rerun names those that differ."""
    precision_info: dict[str, Any]
    cluster: Any
    previous: dict[str, Any] | None
    resumable: bool
    t0: float
    scenes: Scenes | None = None
    """The run's scenes: the search's (spooled on disk) for a fresh run, the inputs file's when
    it resumes (:meth:`pipeline.run.workspace.Workspace.resumed_scenes`)."""
    search_s: float = 0.0
    backend_s: float = 0.0
    """Seconds spent choosing the inference backend (``--backend auto`` measures them)."""


def start(cfg: RunConfig) -> RunState | None:
    """Resolve the run and make the cheap checks (None: the map is complete and up to date).

    Bad input fails here in seconds (region, size, periods, legend, head), before the STAC search,
    before any model is built and before anything is written.
    """
    from pipeline.run.cluster import ClusterConfig, load_slurm_profile

    t0 = time.perf_counter()
    # Cheap checks first (region, size, periods, legend, head): bad input fails in seconds,
    # before any model is built, before the STAC search and before anything is written.
    checked = check_inputs(cfg)
    out = Path(cfg.execution.out) if cfg.execution.out else default_output_dir(cfg, checked.name)
    ws = Workspace(out)
    ws.check_writable()
    cluster_cfg = ClusterConfig(
        kind=cfg.execution.cluster,
        workers=cfg.execution.workers,
        slurm=load_slurm_profile(cfg.execution.cluster_config)
        if cfg.execution.cluster == "slurm"
        else ClusterConfig().slurm,
    )
    from pipeline.run.cluster import worker_threads

    previous = ws.manifest()
    scenes, search_s = None, 0.0
    if cfg.execution.overwrite or previous is None:
        # A fresh run searches before the backend is measured and any model is built, so a
        # period or an area without scenes fails in seconds. A folder with a manifest resumes
        # from the scenes it lists (below), or is refused for other settings.
        t = time.perf_counter()
        c = cfg.composite
        found = search_run(
            checked.geometry,
            c.start,
            c.end,
            cfg.search,
            isolated=checked.area_km2 > ISOLATED_SEARCH_KM2,
        )
        _log.info("%d scenes found", len(found))
        scenes = Scenes(found.items, len(found), found.ledger, found.close, found.counts)
        search_s = time.perf_counter() - t
    # The model and its classes, once, from the legend or few-shot head the checks loaded: the
    # tiles classify with their classifier, and `--backend auto` is measured with it, so only
    # then are they built before the output hash (a rerun of a map that is up to date, or one
    # refused for other settings, builds no model).
    classes = None
    if cfg.model.precision == "auto":
        classes = model_classes(cfg.model, checked.legend, checked.head)
    t = time.perf_counter()
    cfg, precision_info = resolve_precision(
        cfg, None if classes is None else classes.classifier, threads=worker_threads(cluster_cfg)
    )
    backend_s = time.perf_counter() - t
    output_hash, settings = cfg.identity()
    if not cfg.execution.overwrite and up_to_date(ws, output_hash):
        _log.info("%s is complete and up to date (hash %s); nothing to do", out, output_hash)
        return None
    ws.check_conflict(output_hash, cfg.execution.overwrite, settings)
    if classes is None:
        classes = model_classes(cfg.model, checked.legend, checked.head)
    if cfg.model.untrained:
        _log.warning(
            "UNTRAINED WEIGHTS: %s runs with random weights (demo only); the map shows "
            "the pipeline working, not land cover%s",
            cfg.model.name,
            " until a few-shot head classifies it" if cfg.model.head else "",
        )
    resumable = (
        previous is not None
        and previous.get("output_hash") == output_hash
        and not cfg.execution.overwrite
    )
    if scenes is None:  # not fresh, not refused: this run's folder, resumed from its scenes
        t = time.perf_counter()
        scenes = ws.resumed_scenes(previous)
        search_s = time.perf_counter() - t
    return RunState(
        cfg=cfg,
        checked=checked,
        classes=classes,
        ws=ws,
        output_hash=output_hash,
        settings=settings,
        precision_info=precision_info,
        cluster=cluster_cfg,
        previous=previous,
        resumable=resumable,
        t0=t0,
        scenes=scenes,
        search_s=search_s,
        backend_s=backend_s,
    )
