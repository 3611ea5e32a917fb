"""The driver of a mapping run: plan tiles, calibrate once, fan tiles out to Dask, publish.

Stages (each timed into ``run.json``): ``search`` (STAC, once, on the driver), ``plan`` (tile
grid, text classifier), ``calibrate`` (class-mean calibration on a fixed reference sample of
pixels, stored in the manifest so resumed and repeated runs use the same vector), ``tiles`` (one
task per tile, bounded in flight, retried by Dask), ``publish`` (COG mosaics, Zarr moved into
place, legend, quicklook, STAC item, provenance).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.run.calibration import _SAMPLES, calibrate, fit_field
from pipeline.run.plan import (
    check_size,
    make_plan,
    preflight,
    resolve_precision,
    resolve_region,
    search_run_scenes,
    select_tiles,
)
from pipeline.run.publishing import _bands, field_attrs, field_dims, publish
from pipeline.run.reporting import coverage_report, ledger_from_tiles, run_report, up_to_date
from pipeline.run.scheduling import TilesFailed, failure_summary, run_tiles
from pipeline.run_config import RunConfig, default_output_dir
from pipeline.scenes import SceneLedger
from pipeline.workspace import TileFailure, Workspace

_log = logging.getLogger(__name__)


def execute(cfg: RunConfig) -> int:
    """Run (or resume) a map; returns the exit code (0 complete, 1 some tiles failed)."""
    from pipeline.cluster import ClusterConfig, load_slurm_profile, open_client
    from pipeline.composite import period_labels
    from pipeline.writers import create_map_store

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    region, geometry = resolve_region(cfg)
    out = Path(cfg.out) if cfg.out else default_output_dir(cfg, region.name)
    ws = Workspace(out)
    ws.check_writable()
    cfg, precision_info = resolve_precision(cfg)
    output_hash = cfg.output_hash()
    if not cfg.overwrite and up_to_date(ws, output_hash):
        _log.info("%s is complete and up to date (hash %s); nothing to do", out, output_hash)
        return 0
    ws.check_conflict(output_hash, cfg.overwrite)
    from aoi import to_crs

    area_km2 = float(to_crs(geometry, region.crs).area) / 1e6
    check_size(cfg, area_km2)
    labels = list(period_labels(cfg.start, cfg.end, cfg.period))
    if cfg.model == "timesenclip" and len(labels) not in (1, 4, 12):
        raise UserError(
            f"TimeSenCLIP takes 12 monthly, 4 quarterly or 1 annual composite(s); {cfg.start} to "
            f"{cfg.end} gives {len(labels)} {cfg.period} periods: map one year at a time"
        )
    cluster_cfg = ClusterConfig(
        kind=cfg.cluster,
        workers=cfg.workers,
        slurm=load_slurm_profile(cfg.cluster_config)
        if cfg.cluster == "slurm"
        else ClusterConfig().slurm,
    )
    if cfg.untrained:
        _log.warning(
            "UNTRAINED WEIGHTS: %s runs with random weights (demo only); the map shows "
            "the pipeline working, not land cover%s",
            cfg.model,
            " until a few-shot head classifies it" if cfg.head else "",
        )
    # Cheap checks first (legend, head, then the STAC search): bad input fails in seconds,
    # before any model is built or any tile runs.
    preflight(cfg, len(labels))
    previous = ws.manifest()
    resumable = (
        previous is not None and previous.get("output_hash") == output_hash and not cfg.overwrite
    )
    t = time.perf_counter()
    if resumable:
        items = previous["items"]
        ledger = SceneLedger.from_dict(previous.get("ledger"))
        _log.info("resuming %s: %d scenes from the manifest", out, len(items))
    else:
        items, ledger = search_run_scenes(cfg, geometry, cfg.profile)
        _log.info("%d scenes found", len(items))
    seconds["search"] = time.perf_counter() - t

    t = time.perf_counter()
    plan = make_plan(cfg)
    seconds["plan"] = time.perf_counter() - t

    ws.prepare(output_hash, cfg.overwrite)
    from pipeline.config import to_plain

    manifest = (
        previous
        if resumable
        else {
            "output_hash": output_hash,
            "config": to_plain(cfg),
            "items": items,
            "ledger": ledger.to_dict(),
            "calibration": None,
        }
    )
    ws.save_manifest(manifest)
    if resumable:
        ws.reclaim_store()
    create_map_store(
        ws.store,
        plan.grid,
        class_names=list(plan.class_names),
        k=min(cfg.top_k, len(plan.class_names)),
        period_labels=labels,
        band_names=_bands() if cfg.save_composite else None,
        embed_dim=plan.model_info["embed_dim"] if cfg.save_embeddings else None,
        field_dims=field_dims(cfg, plan),
        attrs={
            "config_hash": output_hash,
            "region": plan.region_name,
            "model": cfg.model,
            "untrained": cfg.untrained,
            **field_attrs(cfg, plan),
        },
    )
    done_before = ws.done_tiles()
    todo, dead_before = select_tiles(plan.grid.tiles, done_before, ws.failed_tiles(), cfg)
    _log.info(
        "%d tiles: %d done earlier, %d to run, %d left in the dead-letter list%s",
        len(plan.grid.tiles),
        len(done_before),
        len(todo),
        len(dead_before),
        " (--retry-failed redoes them)" if dead_before else "",
    )

    failures: dict[str, TileFailure] = {}
    stats: dict[str, dict] = {}
    with open_client(cluster_cfg) as client:
        calibration = manifest.get("calibration")
        t = time.perf_counter()
        if cfg.calibration == "reference" and calibration is None and not cfg.head:
            calibration = calibrate(client, cfg, plan, ws, items).tolist()
            manifest["calibration"] = calibration
            ws.save_manifest(manifest)
        field = fit_field(client, cfg, plan, ws, items) if cfg.save_embeddings else None
        _SAMPLES.clear()
        seconds["calibrate"] = time.perf_counter() - t
        calib = None if calibration is None else np.asarray(calibration, np.float32)
        t = time.perf_counter()
        if todo:
            from tqdm import tqdm

            # Pixels, not tiles: a few large tiles still move the bar and give an ETA.
            with tqdm(
                total=sum(tl.shape[0] * tl.shape[1] for tl in todo),
                unit="px",
                unit_scale=True,
                desc=f"{len(todo)} tiles",
                disable=not cfg.progress,
                mininterval=1.0,
                dynamic_ncols=True,
            ) as bar:
                stats, failures = run_tiles(
                    client, cfg, plan, ws, items, calib, todo, bar, field=field
                )
        seconds["tiles_wall"] = time.perf_counter() - t

    all_stats = {**done_before, **stats}
    ledger_from_tiles(ledger, stats, failures)
    for line in ledger.summary_lines():
        _log.info("%s", line)
    for stage in ("load", "composite", "infer", "write"):
        seconds[f"{stage}_worker_sum"] = float(
            sum(s["seconds"].get(stage, 0.0) for s in stats.values())
        )
    report = run_report(
        cfg,
        plan,
        ws,
        output_hash,
        items,
        calibration,
        seconds,
        all_stats,
        done_before,
        failures,
        area_km2,
    )
    report["precision"] = precision_info
    if field is not None:
        report["field"] = {
            **field_attrs(cfg, plan)["s2lc:field"],
            "explained_variance": field.explained_variance,
        }
    report["scene_ledger"] = ledger.to_dict()
    report["coverage"] = coverage_report(all_stats, labels)
    for line in report["coverage"]["warnings"]:
        _log.warning("%s", line)
    from pipeline.cells import is_gridded

    gridded = is_gridded(plan.crs)
    if gridded:  # cells whose tiles are all done are published now, failed tiles or not
        from pipeline.continental import publish_cells

        t = time.perf_counter()
        report["cells"] = publish_cells(cfg, plan, ws, report, labels, all_stats)
        report["seconds"]["publish_cells"] = time.perf_counter() - t
    dead = {**dead_before, **{t: f for t, f in failures.items() if f.attempts >= cfg.max_attempts}}
    report["dead_letter"] = [dead[t].to_dict() for t in sorted(dead)]
    if failures or dead:
        from pipeline.writers import write_json

        report["status"] = "incomplete"
        report["seconds"]["total"] = time.perf_counter() - t0
        write_json(ws.out / "run.json", report)
        every = {**dead, **failures}
        msg = failure_summary(every, len(plan.grid.tiles), ws.out / "run.json")
        if dead:
            msg += (
                f"; {len(dead)} tile(s) failed {cfg.max_attempts} times or more and are in the "
                "dead-letter list (run.json): plain reruns leave them, --retry-failed redoes them"
            )
        raise TilesFailed(msg)
    t = time.perf_counter()
    if gridded:
        from pipeline.continental import publish_gridded

        publish_gridded(cfg, plan, ws, report, labels)
    else:
        publish(cfg, plan, ws, report, labels)
    report["seconds"]["publish"] = time.perf_counter() - t
    report["seconds"]["total"] = time.perf_counter() - t0
    from pipeline.writers import write_json

    write_json(ws.out / "run.json", report)
    _log.info("map written to %s (%.1f s)", ws.out, report["seconds"]["total"])
    return 0
