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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.run_config import RunConfig, default_output_dir
from pipeline.workspace import Workspace

_log = logging.getLogger(__name__)

#: Local runs larger than this (km²) need --allow-large: hours of CPU inference.
LOCAL_CPU_LIMIT_KM2 = 100.0
LOCAL_GPU_LIMIT_KM2 = 20_000.0
#: Reference sample for calibration: tiles spread over the region, pixels (or chips) per tile.
CALIBRATION_TILES = 4
CALIBRATION_TILE_SIZE = 128
CALIBRATION_SAMPLES_PER_TILE = 2048


@dataclass(frozen=True)
class Plan:
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


def resolve_region(cfg: RunConfig):
    """The region, its geometry clipped to ``--bbox`` when given."""
    from shapely.geometry import box

    from aoi import load_region

    region = load_region(cfg.region)
    geometry = region.geometry
    if cfg.bbox is not None:
        geometry = geometry.intersection(box(*cfg.bbox))
        if geometry.is_empty or geometry.area == 0:
            raise UserError(f"--bbox {list(cfg.bbox)} does not overlap region {region.name}")
    return region, geometry


def check_size(cfg: RunConfig, area_km2: float) -> None:
    """Refuse a local run far beyond what a laptop does in reasonable time, unless confirmed."""
    if cfg.cluster != "local" or cfg.allow_large:
        return
    from pipeline.cluster import _cuda_devices

    limit = LOCAL_GPU_LIMIT_KM2 if _cuda_devices() else LOCAL_CPU_LIMIT_KM2
    if area_km2 > limit:
        raise UserError(
            f"the region covers {area_km2:,.0f} km2, more than a local cluster maps in reasonable "
            f"time ({limit:,.0f} km2 here); use --cluster slurm|tcp://..., a smaller --bbox, "
            "or pass --allow-large to run it anyway"
        )


def _legend_and_classifier(cfg: RunConfig, m: Any):
    """Class names, colours, legend facts for legend.json, and the (C, D) text classifier."""
    if cfg.head:
        from model.train.probe import load_head

        head = load_head(cfg.head)
        names = tuple(head.class_names)
        colors = tuple(_palette(len(names)))
        info = {
            "name": Path(cfg.head).name,
            "style": "few-shot head",
            "prompt_hash": None,
            "head_sha256": _sha256(Path(cfg.head)),
        }
        return names, colors, info, np.zeros((len(names), m.embed_dim), np.float32)
    from model.legends import load_legend
    from model.zeroshot import build_classifier

    legend = load_legend(cfg.legend, style=cfg.style)
    w = build_classifier(m, legend)
    w = w.detach().cpu().float().numpy() if hasattr(w, "detach") else np.asarray(w, np.float32)
    names = tuple(c.name for c in legend.classes)
    colors = tuple(c.color for c in legend.classes)
    info = {"name": legend.name, "style": legend.style, "prompt_hash": legend.prompt_hash}
    return names, colors, info, w


def _palette(n: int) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [matplotlib.colors.to_hex(cmap(i % 20)) for i in range(n)]


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_plan(cfg: RunConfig) -> Plan:
    """Resolve region, grid, model identity and classifier on the driver (fails before writing)."""
    from pipeline.cells import output_grid
    from pipeline.tile_task import ModelSpec

    region, geometry = resolve_region(cfg)
    grid = output_grid(geometry, region.crs, region.resolution, cfg.tile_size)
    m = ModelSpec.of(cfg).load()
    names, colors, legend_info, w = _legend_and_classifier(cfg, m)
    if len(names) > 254:
        raise UserError(f"the legend has {len(names)} classes; at most 254 fit a uint8 map")
    model_info = {
        "name": m.name,
        "identity": m.identity,
        "checkpoint": cfg.checkpoint,
        "checkpoint_sha256": m.checkpoint_sha256,
        "untrained": m.untrained,
        "embed_dim": m.embed_dim,
        "arch": getattr(m, "arch", cfg.arch),
    }
    return Plan(
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


class ItemIndex:
    """The run's STAC items with an R-tree over their footprints, built once per run.

    ``for_window`` is what each tile's work order gets: only the items touching its window,
    found in O(log n) instead of testing every item of a continent for every tile.
    """

    def __init__(self, items: list[dict]) -> None:
        import shapely
        from shapely.geometry import shape

        self.items = items
        self._tree = shapely.STRtree([shape(d["geometry"]) for d in items])

    def for_window(self, geobox) -> tuple[dict, ...]:
        footprint = geobox.extent.to_crs("EPSG:4326").geom
        hits = sorted(int(i) for i in self._tree.query(footprint, predicate="intersects"))
        return tuple(self.items[i] for i in hits)


def _items_for(items: list[dict] | ItemIndex, geobox) -> tuple[dict, ...]:
    """The STAC items whose footprint touches a window (so each task gets only its own)."""
    index = items if isinstance(items, ItemIndex) else ItemIndex(items)
    return index.for_window(geobox)


def _job(cfg: RunConfig, plan: Plan, ws: Workspace, items: list[dict], tile, calibration):
    from pipeline.tile_task import ModelSpec, TileJob
    from pipeline.tiling import chip_plan

    window_box = (
        chip_plan(tile.geobox, cfg.window, cfg.stride).geobox
        if cfg.model == "senclip"
        else tile.geobox
    )
    return TileJob(
        tile=tile,
        items=_items_for(items, window_box),
        geometry_wkb=plan.geometry.wkb,
        model=ModelSpec.of(cfg),
        classifier=plan.classifier,
        calibration=calibration,
        head=cfg.head,
        start=cfg.start,
        end=cfg.end,
        period=cfg.period,
        mask_snow=cfg.mask_snow,
        window=cfg.window,
        stride=cfg.stride,
        top_k=cfg.top_k,
        save_composite=cfg.save_composite,
        save_embeddings=cfg.save_embeddings,
        store=str(ws.store),
        tile_dir=str(ws.tile_dir(tile.id)),
    )


def _calibration_tiles(tiles: tuple, n: int) -> list:
    """``n`` tiles spread evenly through the grid's order (deterministic)."""
    if len(tiles) <= n:
        return list(tiles)
    idx = np.linspace(0, len(tiles) - 1, n).round().astype(int)
    return [tiles[i] for i in sorted(set(idx))]


def calibrate(client, cfg: RunConfig, plan: Plan, ws: Workspace, items: list[dict]) -> np.ndarray:
    """Fit the class-mean calibration once on a fixed reference sample of the region.

    The sample comes from a reference grid of its own (``CALIBRATION_TILE_SIZE``), not the run's
    tiles, so the calibration, and therefore the map, does not depend on ``--tile-size``.
    """
    from model.zeroshot import fit_calibration
    from pipeline.tile_task import sample_embeddings
    from pipeline.tiling import make_grid

    ref_grid = make_grid(plan.geometry, plan.crs, plan.resolution, CALIBRATION_TILE_SIZE)
    tiles = _calibration_tiles(ref_grid.tiles, CALIBRATION_TILES)
    futures = [
        client.submit(
            sample_embeddings,
            _job(cfg, plan, ws, items, t, None),
            CALIBRATION_SAMPLES_PER_TILE,
            zlib.crc32(t.id.encode()) + cfg.seed,
            pure=False,
            retries=cfg.retries,
            resources=_resources(client),
        )
        for t in tiles
    ]
    samples = [f.result() for f in futures]
    emb = (
        np.concatenate([s for s in samples if len(s)], axis=0)
        if any(len(s) for s in samples)
        else None
    )
    if emb is None:
        raise UserError(
            "no valid observation in the calibration sample: the region has no usable "
            "scenes (check --start/--end and --max-cloud)"
        )
    vec = np.asarray(fit_calibration(emb, plan.classifier), dtype=np.float64)
    _log.info("calibration fitted on %d samples from %d tiles", len(emb), len(tiles))
    return vec


def _resources(client) -> dict[str, int] | None:
    """Request a GPU per task where the workers advertise GPUs."""
    workers = client.scheduler_info().get("workers", {})
    if any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return {"GPU": 1}
    return None


def run_tiles(
    client, cfg, plan, ws, items, calibration, todo, progress=None, task=None
) -> tuple[dict, dict]:
    """Run ``todo`` tiles, a bounded number in flight; returns (stats by tile, errors by tile).

    ``task`` replaces :func:`pipeline.tile_task.process_tile` (the scale benchmark's stand-in).
    """
    from distributed import as_completed

    from pipeline.tile_task import process_tile

    task = task or process_tile
    items = items if isinstance(items, ItemIndex) else ItemIndex(items)

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    max_in_flight = max(4, 3 * n_workers)
    resources = _resources(client)
    pending = list(todo)
    stats: dict[str, dict] = {}
    errors: dict[str, str] = {}

    tile_of: dict[str, str] = {}

    def submit(tile):
        fut = client.submit(
            task,
            _job(cfg, plan, ws, items, tile, calibration),
            key=f"tile-{tile.id}-{cfg.output_hash()}",
            retries=cfg.retries,
            resources=resources,
            pure=False,
        )
        tile_of[fut.key] = tile.id
        return fut

    ac = as_completed([submit(pending.pop(0)) for _ in range(min(max_in_flight, len(pending)))])
    for fut in ac:
        tid = tile_of.pop(fut.key)
        if fut.status == "finished":
            s = fut.result()
            ws.mark_done(tid, s)
            stats[tid] = s
        else:
            exc = fut.exception()
            errors[tid] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            _log.error("tile %s failed after %d retries: %s", tid, cfg.retries, errors[tid])
        fut.release()
        if progress is not None:
            progress.update(1)
        if pending:
            ac.add(submit(pending.pop(0)))
    return stats, errors


def _search(cfg: RunConfig, geometry, profile: str) -> list[dict]:
    from pipeline.search import SearchConfig, search_items

    scfg = SearchConfig(
        profile=profile, stac_url=cfg.stac_url, collection=cfg.collection, max_cloud=cfg.max_cloud
    )
    return [it.to_dict() for it in search_items(geometry, cfg.start, cfg.end, scfg)]


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
    output_hash = cfg.output_hash()
    if not cfg.overwrite and _up_to_date(ws, output_hash):
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
            "the pipeline working, not land cover",
            cfg.model,
        )
    plan = make_plan(cfg)
    seconds["plan"] = time.perf_counter() - t0

    previous = ws.manifest()
    resumable = (
        previous is not None and previous.get("output_hash") == output_hash and not cfg.overwrite
    )
    t = time.perf_counter()
    if resumable:
        items = previous["items"]
        _log.info("resuming %s: %d scenes from the manifest", out, len(items))
    else:
        items = _search(cfg, geometry, cfg.profile)
        _log.info("%d scenes found", len(items))
    seconds["search"] = time.perf_counter() - t

    ws.prepare(output_hash, cfg.overwrite)
    from pipeline.config import to_plain

    manifest = (
        previous
        if resumable
        else {
            "output_hash": output_hash,
            "config": to_plain(cfg),
            "items": items,
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
        attrs={
            "config_hash": output_hash,
            "region": plan.region_name,
            "model": cfg.model,
            "untrained": cfg.untrained,
        },
    )
    done_before = ws.done_tiles()
    todo = [tl for tl in plan.grid.tiles if tl.id not in done_before]
    _log.info(
        "%d tiles: %d done earlier, %d to run", len(plan.grid.tiles), len(done_before), len(todo)
    )

    errors: dict[str, str] = {}
    stats: dict[str, dict] = {}
    with open_client(cluster_cfg) as client:
        calibration = manifest.get("calibration")
        t = time.perf_counter()
        if cfg.calibration == "reference" and calibration is None and not cfg.head:
            calibration = calibrate(client, cfg, plan, ws, items).tolist()
            manifest["calibration"] = calibration
            ws.save_manifest(manifest)
        seconds["calibrate"] = time.perf_counter() - t
        calib = None if calibration is None else np.asarray(calibration, np.float32)
        t = time.perf_counter()
        if todo:
            from tqdm import tqdm

            with tqdm(
                total=len(todo),
                unit="tile",
                desc="tiles",
                disable=not cfg.progress,
                mininterval=1.0,
                dynamic_ncols=True,
            ) as bar:
                stats, errors = run_tiles(client, cfg, plan, ws, items, calib, todo, bar)
        seconds["tiles_wall"] = time.perf_counter() - t

    all_stats = {**done_before, **stats}
    for stage in ("load", "composite", "infer", "write"):
        seconds[f"{stage}_worker_sum"] = float(
            sum(s["seconds"].get(stage, 0.0) for s in stats.values())
        )
    report = _report(
        cfg,
        plan,
        ws,
        output_hash,
        items,
        calibration,
        seconds,
        all_stats,
        done_before,
        errors,
        area_km2,
    )
    from pipeline.cells import is_gridded

    gridded = is_gridded(plan.crs)
    if gridded:  # cells whose tiles are all done are published now, failed tiles or not
        from pipeline.continental import publish_cells

        t = time.perf_counter()
        report["cells"] = publish_cells(cfg, plan, ws, report, labels, all_stats)
        report["seconds"]["publish_cells"] = time.perf_counter() - t
    if errors:
        from pipeline.writers import write_json

        report["status"] = "incomplete"
        report["seconds"]["total"] = time.perf_counter() - t0
        write_json(ws.out / "run.json", report)
        raise UserError(
            f"{len(errors)} of {len(plan.grid.tiles)} tiles failed (listed in "
            f"{ws.out / 'run.json'}); finished tiles are kept: rerun to retry them"
        )
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


def _up_to_date(ws: Workspace, output_hash: str) -> bool:
    """True when ``ws`` holds a complete, published map made with the same settings."""
    import json

    run_json = ws.out / "run.json"
    if not run_json.is_file():
        return False
    try:
        report = json.loads(run_json.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    from pipeline.workspace import GRIDDED_PRODUCTS, PRODUCTS

    products = GRIDDED_PRODUCTS if "cells" in report else PRODUCTS
    return (
        report.get("status") == "complete"
        and report.get("output_hash") == output_hash
        and all((ws.out / p).exists() for p in products)
    )


def _bands() -> list[str]:
    from pipeline.bands import BANDS

    return list(BANDS)


def _report(
    cfg,
    plan,
    ws,
    output_hash,
    items,
    calibration,
    seconds,
    all_stats,
    done_before,
    errors,
    area_km2,
) -> dict[str, Any]:
    from pipeline.config import to_plain
    from pipeline.provenance import host_info, package_versions

    return {
        "status": "complete",
        "untrained": cfg.untrained,
        "output_hash": output_hash,
        "config": to_plain(cfg),
        "region": {
            "name": plan.region_name,
            "crs": plan.crs,
            "resolution": plan.resolution,
            "area_km2": area_km2,
            "bbox_4326": list(plan.geometry.bounds),
        },
        "model": plan.model_info,
        "legend": {**plan.legend_info, "classes": list(plan.class_names)},
        "calibration": calibration,
        "scenes": len(items),
        "tiles": {
            "total": len(plan.grid.tiles),
            "done": len(all_stats),
            "resumed": len(done_before),
            "failed": sorted(errors),
            "errors": errors,
            "tile_size": cfg.tile_size,
        },
        "seconds": dict(seconds),
        "tile_stats": [all_stats[k] for k in sorted(all_stats)],
        "versions": package_versions(),
        "host": host_info(),
    }


def publish(cfg: RunConfig, plan: Plan, ws: Workspace, report: dict, labels: list[str]) -> None:
    """Mosaic COGs, move the Zarr into place, write legend, quicklook and STAC item."""
    from pipeline.writers import build_cogs, write_legend_json, write_quicklook, write_stac_item

    cogs = build_cogs(
        ws.tiles, ws.out, plan.grid, list(plan.class_names), list(plan.colors), period_labels=labels
    )
    zarr_path = ws.publish_store()
    ws.drop_tile_rasters()  # mosaicked into the COGs; the markers stay for the record
    write_legend_json(
        ws.out / "legend.json",
        class_names=list(plan.class_names),
        colors=list(plan.colors),
        legend_name=plan.legend_info["name"],
        style=plan.legend_info["style"],
        prompt_hash=plan.legend_info["prompt_hash"],
        untrained=cfg.untrained,
        extra={
            "model": plan.model_info["identity"],
            "nodata": 255,
            "calibration": report["calibration"],
        },
    )
    title = f"{plan.region_name} {cfg.start}..{cfg.end} | {cfg.model} | {plan.legend_info['name']}"
    if cfg.untrained:
        title += "\nUNTRAINED WEIGHTS (demo): not a land-cover map"
    write_quicklook(
        ws.out / "quicklook.png", cogs["classes"], list(plan.class_names), list(plan.colors), title
    )
    assets = {
        **cogs,
        "zarr": zarr_path,
        "legend": ws.out / "legend.json",
        "quicklook": ws.out / "quicklook.png",
        "run": ws.out / "run.json",
    }
    write_stac_item(
        ws.out / "item.json",
        grid=plan.grid,
        geometry_4326=plan.geometry,
        start=cfg.start,
        end=cfg.end,
        assets=assets,
        class_names=list(plan.class_names),
        colors=list(plan.colors),
        properties={
            "s2lc:model": plan.model_info["identity"],
            "s2lc:untrained": cfg.untrained,
            "s2lc:period": cfg.period,
            "s2lc:periods": labels,
            "s2lc:output_hash": report["output_hash"],
        },
        item_id=f"s2lc-{plan.region_name}-{cfg.start}-{cfg.end}-{cfg.period}-{cfg.model}",
    )
