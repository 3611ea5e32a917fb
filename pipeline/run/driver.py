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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.run.calibration import (
    calibrate,
    clear_reference_sample,
    fit_field,
    fit_ood_reference,
)
from pipeline.run.config import (
    RunConfig,
    default_output_dir,
    hashed_settings,
    too_many_unreadable,
)
from pipeline.run.inputs import RunInputs
from pipeline.run.prepare import Prepared, check_inputs, prepare_tiles, resolve_precision
from pipeline.run.publishing import field_attrs, field_dims, publish
from pipeline.run.reporting import (
    coverage_report,
    ledger_from_tiles,
    run_report,
    unreadable_warnings,
    up_to_date,
)
from pipeline.run.scheduling import (
    TilesFailed,
    TooManyUnreadable,
    failure_summary,
    run_tiles,
    select_tiles,
)
from pipeline.run.workspace import TileFailure, Workspace
from pipeline.stac.scenes import SceneLedger
from pipeline.stac.search import search_run_scenes

_log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the stages of one run share: its settings and workspace, then what each stage adds
    (scenes, preparation, manifest, tiles to run, calibration, tile results)."""

    cfg: RunConfig
    ws: Workspace
    output_hash: str
    precision_info: dict[str, Any]
    geometry: Any
    area_km2: float
    labels: list[str]
    cluster: Any
    previous: dict[str, Any] | None
    resumable: bool
    t0: float
    seconds: dict[str, float] = field(default_factory=dict)
    items: list[dict] = field(default_factory=list)
    inputs: RunInputs | None = None
    """The run's inputs file (region and items) that the tiles' work orders reference."""
    ledger: SceneLedger | None = None
    prep: Prepared | None = None
    manifest: dict[str, Any] = field(default_factory=dict)
    done_before: dict[str, dict] = field(default_factory=dict)
    todo: list = field(default_factory=list)
    dead_before: dict[str, TileFailure] = field(default_factory=dict)
    calibration: list[float] | None = None
    codec: Any = None
    ood: Any = None
    """The OOD reference (``--ood``), :class:`pipeline.adapters.uncertainty.OodReference`."""
    stats: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, TileFailure] = field(default_factory=dict)


def execute(cfg: RunConfig) -> int:
    """Run (or resume) a map; returns the exit code (0 complete, 1 some tiles failed)."""
    from pipeline.run.cluster import open_client

    run = prepare(cfg)
    if run is None:
        return 0
    with _timed(run, "search"):
        find_scenes(run)
    with _timed(run, "prepare"):
        run.cfg, run.prep = prepare_tiles(
            run.cfg, run.cluster, run.previous if run.resumable else None
        )
    open_store(run)
    with open_client(run.cluster) as client:
        with _timed(run, "calibrate"):
            calibrate_once(run, client)
        with _timed(run, "tiles_wall"):
            run_todo(run, client)
    report = report_run(run)
    publish_run(run, report)
    return 0


def _check_postprocess(cfg: RunConfig) -> None:
    """--majority / --mmu need the whole map at once: refused on gridded (per-cell) runs."""
    from aoi import load_region
    from pipeline.base.errors import UserError
    from pipeline.grid.cells import is_gridded

    if cfg.output.postprocess and is_gridded(load_region(cfg.region).crs):
        raise UserError(
            "--majority/--mmu work on regional runs only: a gridded (EPSG:3035) run publishes "
            "each 100 km cell as its tiles finish (see the README, 'Post-processing')"
        )


@contextmanager
def _timed(run: RunState, stage: str) -> Iterator[None]:
    """Time the ``with`` block into ``run.seconds[stage]`` (``run.json``'s ``seconds``)."""
    t = time.perf_counter()
    yield
    run.seconds[stage] = time.perf_counter() - t


def prepare(cfg: RunConfig) -> RunState | None:
    """Resolve the run and make the cheap checks (None: the map is complete and up to date).

    Bad input fails here in seconds (region, size, periods, legend, head), before the STAC search,
    before any model is built and before anything is written.
    """
    from pipeline.run.cluster import ClusterConfig, load_slurm_profile

    t0 = time.perf_counter()
    # Cheap checks first (region, size, periods, legend, head): bad input fails in seconds,
    # before any model is built, before the STAC search and before anything is written.
    checked = check_inputs(cfg)
    _check_postprocess(cfg)
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

    cfg, precision_info = resolve_precision(cfg, threads=worker_threads(cluster_cfg))
    output_hash = cfg.output_hash()
    if not cfg.execution.overwrite and up_to_date(ws, output_hash):
        _log.info("%s is complete and up to date (hash %s); nothing to do", out, output_hash)
        return None
    ws.check_conflict(output_hash, cfg.execution.overwrite, hashed_settings(cfg))
    if cfg.model.untrained:
        _log.warning(
            "UNTRAINED WEIGHTS: %s runs with random weights (demo only); the map shows "
            "the pipeline working, not land cover%s",
            cfg.model.name,
            " until a few-shot head classifies it" if cfg.model.head else "",
        )
    previous = ws.manifest()
    resumable = (
        previous is not None
        and previous.get("output_hash") == output_hash
        and not cfg.execution.overwrite
    )
    return RunState(
        cfg=cfg,
        ws=ws,
        output_hash=output_hash,
        precision_info=precision_info,
        geometry=checked.geometry,
        area_km2=checked.area_km2,
        labels=list(checked.labels),
        cluster=cluster_cfg,
        previous=previous,
        resumable=resumable,
        t0=t0,
    )


def find_scenes(run: RunState) -> None:
    """The run's scenes and their ledger: from the manifest when resuming, else the STAC search."""
    if run.resumable:
        run.items = run.previous["items"]
        run.ledger = SceneLedger.from_dict(run.previous.get("ledger"))
        _log.info("resuming %s: %d scenes from the manifest", run.ws.out, len(run.items))
    else:
        run.items, run.ledger = search_run_scenes(
            run.geometry, run.cfg.composite.start, run.cfg.composite.end, run.cfg.search
        )
        _log.info("%d scenes found", len(run.items))


def open_store(run: RunState) -> None:
    """Write the manifest, create (or reclaim) the Zarr store, and choose the tiles to run."""
    from pipeline.base.config import to_plain
    from pipeline.writers import create_map_store

    cfg, ws, prep = run.cfg, run.ws, run.prep
    ws.prepare(run.output_hash, cfg.execution.overwrite, hashed_settings(cfg))
    run.manifest = (
        run.previous
        if run.resumable
        else {
            "output_hash": run.output_hash,
            "config": to_plain(cfg.flat()),
            "items": run.items,
            "ledger": run.ledger.to_dict(),
            "calibration": None,
        }
    )
    ws.save_manifest(run.manifest)
    run.inputs = RunInputs.write(ws.work, prep.geometry, run.items)
    if run.resumable:
        ws.reclaim_store()
    create_map_store(
        ws.store,
        prep.grid,
        class_names=list(prep.class_names),
        k=min(cfg.output.top_k, len(prep.class_names)),
        period_labels=run.labels,
        band_names=_bands() if cfg.output.save_composite else None,
        embed_dim=prep.model_info["embed_dim"] if cfg.output.save_embeddings else None,
        field_dims=field_dims(cfg, prep),
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
    run.done_before = ws.done_tiles()
    run.todo, run.dead_before = select_tiles(
        prep.grid.tiles, run.done_before, ws.failed_tiles(), cfg
    )
    _log.info(
        "%d tiles: %d done earlier, %d to run, %d left in the dead-letter list%s",
        len(prep.grid.tiles),
        len(run.done_before),
        len(run.todo),
        len(run.dead_before),
        " (--retry-failed redoes them)" if run.dead_before else "",
    )


def _bands() -> list[str]:
    from pipeline.stac.bands import BANDS

    return list(BANDS)


def calibrate_once(run: RunState, client) -> None:
    """The calibration vector (from the manifest, or fitted and stored there) and the field codec."""
    cfg = run.cfg
    run.calibration = run.manifest.get("calibration")
    if cfg.model.calibration == "reference" and run.calibration is None and not cfg.model.head:
        run.calibration = calibrate(client, cfg, run.prep, run.ws, run.inputs).tolist()
        run.manifest["calibration"] = run.calibration
        run.ws.save_manifest(run.manifest)
    run.codec = (
        fit_field(client, cfg, run.prep, run.ws, run.inputs) if cfg.output.save_embeddings else None
    )
    if cfg.output.ood:
        run.ood = fit_ood_reference(client, cfg, run.prep, run.ws, run.inputs)
    clear_reference_sample()


def run_todo(run: RunState, client) -> None:
    """Run the tiles still to do, with a progress bar in pixels."""
    if not run.todo:
        return
    from tqdm import tqdm

    calib = None if run.calibration is None else np.asarray(run.calibration, np.float32)
    # Pixels, not tiles: a few large tiles still move the bar and give an ETA.
    with tqdm(
        total=sum(tl.shape[0] * tl.shape[1] for tl in run.todo),
        unit="px",
        unit_scale=True,
        desc=f"{len(run.todo)} tiles",
        disable=not run.cfg.execution.progress,
        mininterval=1.0,
        dynamic_ncols=True,
    ) as bar:
        run.stats, run.failures = run_tiles(
            client,
            run.cfg,
            run.prep,
            run.ws,
            run.inputs,
            calib,
            run.todo,
            bar,
            field=run.codec,
            ood=run.ood,
        )


def report_run(run: RunState) -> dict[str, Any]:
    """``run.json``'s content: the run's report plus precision, field, scene ledger, coverage."""
    cfg, prep, stats = run.cfg, run.prep, run.stats
    all_stats = {**run.done_before, **stats}
    # earlier runs' tiles too: a resumed run keeps their dropped scenes and failures
    ledger_from_tiles(run.ledger, all_stats, {**run.dead_before, **run.failures})
    for line in run.ledger.summary_lines():
        _log.info("%s", line)
    for line in unreadable_warnings(run.ledger):
        _log.warning("%s", line)
    for stage in ("load", "composite", "infer", "write"):
        run.seconds[f"{stage}_worker_sum"] = float(
            sum(s["seconds"].get(stage, 0.0) for s in stats.values())
        )
    report = run_report(
        cfg,
        prep,
        run.ws,
        run.output_hash,
        run.items,
        run.calibration,
        run.seconds,
        all_stats,
        run.done_before,
        run.failures,
        run.area_km2,
    )
    report["precision"] = run.precision_info
    if run.codec is not None:
        report["field"] = {
            **field_attrs(cfg, prep)["s2lc:field"],
            "explained_variance": run.codec.explained_variance,
            "basis_sha256": run.codec.sha256,
        }
    if run.ood is not None:
        report["ood"] = run.ood.describe()
    report["scene_ledger"] = run.ledger.to_dict()
    report["coverage"] = coverage_report(all_stats, run.labels)
    for line in report["coverage"]["warnings"]:
        _log.warning("%s", line)
    return report


def publish_run(run: RunState, report: dict[str, Any]) -> None:
    """Publish the map and write ``run.json``; raise TilesFailed (``run.json`` written, nothing
    published over the failed tiles) when tiles failed or are dead-lettered."""
    from pipeline.base.jsonio import write_json
    from pipeline.grid.cells import is_gridded

    cfg, prep, ws, failures = run.cfg, run.prep, run.ws, run.failures
    all_stats = {**run.done_before, **run.stats}
    gridded = is_gridded(prep.crs)
    if gridded:  # cells whose tiles are all done are published now, failed tiles or not
        from pipeline.run.continental import publish_cells

        t = time.perf_counter()
        report["cells"] = publish_cells(cfg, prep, ws, report, run.labels, all_stats)
        report["seconds"]["publish_cells"] = time.perf_counter() - t
    dead = {
        **run.dead_before,
        **{t: f for t, f in failures.items() if f.attempts >= cfg.execution.max_attempts},
    }
    report["dead_letter"] = [dead[t].to_dict() for t in sorted(dead)]
    unreadable = run.ledger.unreadable()
    too_many = too_many_unreadable(cfg.execution.max_unreadable, len(unreadable), len(run.items))
    if failures or dead or too_many:
        report["status"] = "incomplete"
        report["seconds"]["total"] = time.perf_counter() - run.t0
        write_json(ws.out / "run.json", report)
    if too_many and not (failures or dead):
        raise TooManyUnreadable(
            f"{len(unreadable)} of {len(run.items)} scenes cannot be read (HTTP 404/410 or "
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
        from pipeline.run.postprocess import postprocess_map

        report["postprocess"] = postprocess_map(cfg, prep, ws)
    t = time.perf_counter()
    if gridded:
        from pipeline.run.continental import publish_gridded

        publish_gridded(cfg, prep, ws, report, run.labels)
    else:
        publish(cfg, prep, ws, report, run.labels)
    report["seconds"]["publish"] = time.perf_counter() - t
    report["seconds"]["total"] = time.perf_counter() - run.t0
    write_json(ws.out / "run.json", report)
    _log.info("map written to %s (%.1f s)", ws.out, report["seconds"]["total"])
