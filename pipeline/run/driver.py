"""The driver of a mapping run: find scenes, prepare, calibrate once, fan tiles out to Dask, publish.

Stages (each timed into ``run.json``): ``search`` (STAC, once, on the driver), ``prepare`` (tile
grid, text classifier), ``calibrate`` (class-mean calibration on a fixed reference sample of
pixels, stored in the manifest so resumed and repeated runs use the same vector), ``tiles`` (one
task per tile, bounded in flight, retried by Dask), ``publish`` (COG mosaics, Zarr moved into
place, legend, quicklook, STAC item, provenance).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.run.calibration import fit_references
from pipeline.run.checks import CheckedInputs, check_inputs
from pipeline.run.config import (
    RunConfig,
    default_output_dir,
    too_many_unreadable,
)
from pipeline.run.inputs import RunInputs, Scenes
from pipeline.run.precision import resolve_precision
from pipeline.run.prepare import Prepared, prepare_map
from pipeline.run.publishing import field_attrs, publish
from pipeline.run.reporting import run_report, up_to_date
from pipeline.run.scheduling import (
    TilesFailed,
    TooManyUnreadable,
    failure_summary,
    run_todo,
    select_tiles,
)
from pipeline.run.workspace import TileFailure, Workspace
from pipeline.stac.found import search_run
from pipeline.stac.scenes import SceneLedger

_log = logging.getLogger(__name__)

#: Regions larger than this search in a process of their own (:func:`pipeline.stac.found.search_run`),
#: so the memory of the search's pages never stays in the driver (about 1.4 GB for EU-27).
ISOLATED_SEARCH_KM2 = 100_000.0


@dataclass(frozen=True)
class RunState:
    """What :func:`start` resolved for the stages of one run: its settings (precision resolved),
    the checked region, the workspace, the output hash, the cluster and the manifest of the run
    being resumed (None when it starts afresh)."""

    cfg: RunConfig
    checked: CheckedInputs
    """The region, geometry, area and period labels that the cheap checks resolved."""
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


@dataclass(frozen=True)
class OpenStore:
    """What :func:`open_store` wrote and chose: the manifest, the inputs file that the tiles' work
    orders reference, the tiles done earlier, the tiles to run, those left dead-lettered and the
    failure records of earlier runs."""

    manifest: dict[str, Any]
    inputs: RunInputs
    done_before: dict[str, dict]
    todo: list
    dead_before: dict[str, TileFailure]
    failed_before: dict[str, TileFailure]


def execute(
    cfg: RunConfig,
    tile_task: Callable | None = None,
    publish: bool = True,
    timings: dict[str, Any] | None = None,
) -> int:
    """Run (or resume) a map; returns the exit code (0 complete, 1 some tiles failed).

    ``tile_task`` replaces :func:`pipeline.run.tile_task.process_tile` and ``publish=False``
    stops once every tile has run (nothing published, no ``run.json``): the driver's scale
    benchmark (:func:`pipeline.bench.scale.run_standin`) runs this path with a task that reads
    nothing. ``timings`` (when given) receives the seconds per stage, ``scenes``, ``tiles``
    (the grid's), ``tiles_done`` and ``tiles_failed`` (this run's) and ``search_counts``
    (:attr:`pipeline.stac.found.FoundScenes.counts`).
    """
    from pipeline.run.cluster import open_client_on_demand

    run = start(cfg)
    if run is None:
        return 0
    seconds: dict[str, Any] = timings if timings is not None else {}
    seconds["backend"] = run.backend_s
    scenes, seconds["search"] = run.scenes, run.search_s
    try:
        with _timed(seconds, "prepare"):
            cfg, prep = prepare_map(
                run.cfg, run.checked, run.cluster, run.previous if run.resumable else None
            )
        store = open_store(run, cfg, prep, scenes)
    finally:
        scenes.close()  # the items are in the run's inputs file now
    n, ledger = scenes.count, scenes.ledger
    with open_client_on_demand(run.cluster) as client:  # none started if nothing runs
        with _timed(seconds, "calibrate"):
            refs = fit_references(client, cfg, prep, run.ws, store.inputs, store.manifest)
        with _timed(seconds, "tiles_wall"):
            stats, failures = run_todo(
                client, cfg, prep, run.ws, store.inputs, refs, store.todo, tile_task,
                store.failed_before,
            )  # fmt: skip
    if timings is not None:
        timings.update(
            scenes=n,
            tiles=len(prep.grid.tiles),
            tiles_done=len(stats),
            tiles_failed=len(failures),
            search_counts=scenes.counts,
        )
    if not publish:
        return 0
    seconds = {k: v for k, v in seconds.items() if isinstance(v, float)}
    report = run_report(
        cfg,
        prep,
        output_hash=run.output_hash,
        precision=run.precision_info,
        area_km2=run.checked.area_km2,
        labels=run.checked.labels,
        n_scenes=n,
        ledger=ledger,
        done_before=store.done_before,
        dead_before=store.dead_before,
        refs=refs,
        seconds=seconds,
        stats=stats,
        failures=failures,
    )
    publish_run(run, cfg, prep, n, ledger, store, stats, failures, report)
    return 0


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Time the ``with`` block into ``seconds[stage]`` (``run.json``'s ``seconds``)."""
    t = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - t


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
    t = time.perf_counter()
    cfg, precision_info = resolve_precision(cfg, threads=worker_threads(cluster_cfg))
    backend_s = time.perf_counter() - t
    output_hash, settings = cfg.identity()
    if not cfg.execution.overwrite and up_to_date(ws, output_hash):
        _log.info("%s is complete and up to date (hash %s); nothing to do", out, output_hash)
        return None
    ws.check_conflict(output_hash, cfg.execution.overwrite, settings)
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


def open_store(run: RunState, cfg: RunConfig, prep: Prepared, scenes: Scenes) -> OpenStore:
    """Write the manifest, create (or reclaim) the Zarr store, and choose the tiles to run.

    :param cfg: the run's settings with the tile size fitted (:func:`pipeline.run.prepare.prepare_map`).
    """
    from pipeline.base.config import to_plain
    from pipeline.writers import create_map_store

    ws = run.ws
    ws.prepare(run.output_hash, cfg.execution.overwrite, run.settings)
    # the scenes streamed into the inputs file first: the manifest names it
    inputs = RunInputs.write(ws.work, prep.geometry, scenes.items())
    if run.resumable:
        manifest = dict(run.previous)
        if "items" in manifest:  # an older s2lc's manifest: its scenes move to the inputs file
            del manifest["items"]
            manifest["scenes"] = len(inputs)
    else:
        manifest = {
            "output_hash": run.output_hash,
            "config": to_plain(cfg.flat()),
            "scenes": len(inputs),
            "ledger": scenes.ledger.to_dict(),
            "calibration": None,
        }
    manifest["inputs"] = inputs.path.name
    ws.save_manifest(manifest)
    if run.resumable:
        ws.reclaim_store()
    create_map_store(
        ws.store,
        prep.grid,
        class_names=list(prep.class_names),
        k=min(cfg.output.top_k, len(prep.class_names)),
        period_labels=list(run.checked.labels),
        band_names=_bands() if cfg.output.save_composite else None,
        embed_dim=prep.model_info["embed_dim"] if cfg.output.save_embeddings else None,
        field_dims=prep.field_dims,
        ood=cfg.output.ood,
        postprocess=cfg.output.postprocess,
        attrs={
            "config_hash": run.output_hash,
            "region": prep.region_name,
            "model": cfg.model.name,
            "untrained": cfg.model.untrained,
            **field_attrs(cfg, prep),
        },
    )
    done_before, failed_before = ws.done_tiles(), ws.failed_tiles()
    todo, dead_before = select_tiles(prep.grid.tiles, done_before, failed_before, cfg)
    _log.info(
        "%d tiles: %d done earlier, %d to run, %d left in the dead-letter list%s",
        len(prep.grid.tiles),
        len(done_before),
        len(todo),
        len(dead_before),
        " (--retry-failed redoes them)" if dead_before else "",
    )
    return OpenStore(manifest, inputs, done_before, todo, dead_before, failed_before)


def _bands() -> list[str]:
    from pipeline.stac.bands import BANDS

    return list(BANDS)


def publish_run(
    run: RunState,
    cfg: RunConfig,
    prep: Prepared,
    n_scenes: int,
    ledger: SceneLedger,
    store: OpenStore,
    stats: dict[str, dict],
    failures: dict[str, TileFailure],
    report: dict[str, Any],
) -> None:
    """Publish the map and write ``run.json``; raise TilesFailed (``run.json`` written, nothing
    published over the failed tiles) when tiles failed or are dead-lettered."""
    from pipeline.base.jsonio import write_json
    from pipeline.grid.cells import is_gridded

    ws = run.ws
    labels = list(run.checked.labels)
    all_stats = {**store.done_before, **stats}
    gridded = is_gridded(prep.crs)
    if gridded:  # cells whose tiles are all done are published now, failed tiles or not
        from pipeline.run.continental import publish_cells

        t = time.perf_counter()
        # post-processing needs every cell: then no cell is published before it has run
        report["cells"] = publish_cells(
            cfg, prep, ws, report, labels, all_stats, hold=cfg.output.postprocess
        )
        report["seconds"]["publish_cells"] = time.perf_counter() - t
    dead = {
        **store.dead_before,
        **{t: f for t, f in failures.items() if f.attempts >= cfg.execution.max_attempts},
    }
    report["dead_letter"] = [dead[t].to_dict() for t in sorted(dead)]
    unreadable = ledger.unreadable()
    too_many = too_many_unreadable(cfg.execution.max_unreadable, len(unreadable), n_scenes)
    if failures or dead or too_many:
        report["status"] = "incomplete"
        report["seconds"]["total"] = time.perf_counter() - run.t0
        report["stages"] = _stages(run, report, stats)
        write_json(ws.out / "run.json", report)
    if too_many and not (failures or dead):
        raise TooManyUnreadable(
            f"{len(unreadable)} of {n_scenes} scenes cannot be read (HTTP 404/410 or "
            f"corrupt: {', '.join(unreadable[:3])}{' ...' if len(unreadable) > 3 else ''}), more "
            f"than --max-unreadable {cfg.execution.max_unreadable}; the map is not published, "
            f"finished tiles are kept; see {ws.out / 'run.json'} (scene_ledger)"
        )
    if failures or dead:
        every = {**dead, **failures}
        msg = failure_summary(every, len(prep.grid.tiles), ws.out / "run.json")
        if dead:
            msg += (
                f"; {len(dead)} tile(s) failed {cfg.execution.max_attempts} times or more and are in the "
                "dead-letter list (run.json): plain reruns leave them, --retry-failed redoes them"
            )
        raise TilesFailed(msg)
    if cfg.output.postprocess:  # over the whole map, once every tile is done
        from pipeline.run.postprocess import postprocess_cells, postprocess_map

        if gridded:  # cell by cell, then the cells are published
            from pipeline.run.continental import publish_cells

            report["postprocess"] = postprocess_cells(cfg, prep, ws)
            t = time.perf_counter()
            report["cells"] = publish_cells(cfg, prep, ws, report, labels, all_stats)
            report["seconds"]["publish_cells"] = time.perf_counter() - t
        else:
            report["postprocess"] = postprocess_map(cfg, prep, ws)
    t = time.perf_counter()
    if gridded:
        from pipeline.run.continental import publish_gridded

        publish_gridded(cfg, prep, ws, report, labels)
    else:
        publish(cfg, prep, ws, report, labels)
    report["seconds"]["publish"] = time.perf_counter() - t
    report["seconds"]["total"] = time.perf_counter() - run.t0
    report["stages"] = _stages(run, report, stats)
    write_json(ws.out / "run.json", report)
    _log.info("map written to %s (%.1f s)", ws.out, report["seconds"]["total"])


def _stages(run: RunState, report: dict[str, Any], stats: dict[str, dict]) -> dict[str, Any]:
    """``run.json``'s ``stages``: seconds per stage under :mod:`pipeline.run.stages`' names."""
    from pipeline.run.stages import run_stages

    # the worker processes the tiles were spread over (an existing scheduler: not known)
    slots = run.cluster.planned_workers() or max(1, len(stats))
    return run_stages(report["seconds"], [stats[t] for t in sorted(stats)], slots)
