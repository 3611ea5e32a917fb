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

from pipeline.base.colours import palette
from pipeline.base.errors import UserError
from pipeline.base.hashing import sha256_file
from pipeline.run_config import RunConfig, default_output_dir
from pipeline.scenes import SceneLedger
from pipeline.workspace import TileFailure, Workspace

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


def preflight(cfg: RunConfig, n_periods: int) -> None:
    """Cheap checks of the legend and the few-shot head, before any model is built.

    Raises UserError for an unknown legend, an unreadable head, or a head fitted on another model
    kind, composite period or number of periods T than this run makes.
    """
    from model.legends import load_legend

    if not cfg.head:
        load_legend(cfg.legend or "lucas-lc8", style=cfg.style)
        return
    from model.train.probe import check_head_matches, load_head

    head = load_head(cfg.head)
    check_head_matches(
        head, {"name": cfg.model, "period": cfg.period, "periods": n_periods}, where=cfg.head
    )
    fitted = head.model_identity
    if fitted.get("start") and str(fitted["start"]) != str(cfg.start):
        _log.warning(
            "the head was fitted on composites of %s..%s and maps %s..%s: a head transfers "
            "between years only as far as the land cover's seasonal signal does",
            fitted["start"],
            fitted.get("end"),
            cfg.start,
            cfg.end,
        )
    legend = _head_legend(cfg, head)
    if legend is not None and tuple(legend.names) != tuple(head.class_names):
        raise UserError(
            f"--legend {cfg.legend} has classes {', '.join(legend.names)}; the head "
            f"{cfg.head} predicts {', '.join(head.class_names)}"
        )


def _head_legend(cfg: RunConfig, head: Any):
    """The legend whose colours a head's map takes: --legend, else the one the head was fitted
    with (``probe --legend``), else None (a generic palette)."""
    from model.legends import load_legend

    name = cfg.legend if cfg.legend is not None else head.meta.get("legend")
    if not name:
        return None
    try:
        return load_legend(name, style=cfg.style)
    except UserError:
        if cfg.legend is not None:
            raise
        return None  # the head's legend file moved: fall back to a palette


def _legend_and_classifier(cfg: RunConfig, m: Any):
    """Class names, colours, legend facts for legend.json, and the (C, D) text classifier."""
    if cfg.head:
        from model.train.probe import check_head_matches, load_head

        head = load_head(cfg.head)
        check_head_matches(
            head,
            {
                "name": m.name,
                "identity": m.identity,
                "dim": int(m.embed_dim),
                "checkpoint_sha256": m.checkpoint_sha256,
            },
            where=cfg.head,
        )
        names = tuple(head.class_names)
        legend = _head_legend(cfg, head)
        if legend is not None and tuple(legend.names) == names:
            colors = tuple(legend.colors)
        else:
            colors = tuple(palette(len(names)))
        info = {
            "name": legend.name if legend is not None else Path(cfg.head).name,
            "style": "few-shot head",
            "prompt_hash": None,
            "head": Path(cfg.head).name,
            "head_sha256": sha256_file(Path(cfg.head)),
        }
        return names, colors, info, np.zeros((len(names), m.embed_dim), np.float32)
    from model.legends import load_legend
    from model.zeroshot import build_classifier

    legend = load_legend(cfg.legend or "lucas-lc8", style=cfg.style)
    w = build_classifier(m, legend)
    w = w.detach().cpu().float().numpy() if hasattr(w, "detach") else np.asarray(w, np.float32)
    names = tuple(c.name for c in legend.classes)
    colors = tuple(c.color for c in legend.classes)
    info = {"name": legend.name, "style": legend.style, "prompt_hash": legend.prompt_hash}
    return names, colors, info, w


def resolve_precision(cfg: RunConfig) -> tuple[RunConfig, dict[str, Any]]:
    """``cfg`` with ``--precision auto`` resolved for this machine (:mod:`model.precision`).

    Runs before the output hash, so the hash covers the precision the pixels are computed in.
    """
    if cfg.precision != "auto":
        return cfg, {"requested": cfg.precision, "resolved": cfg.precision}
    from model.precision import resolve
    from pipeline.tile_task import ModelSpec

    m = ModelSpec.of(cfg).load()
    w = _legend_and_classifier(cfg, m)[3]
    resolved, info = resolve(m, "auto", np.asarray(w, np.float32))
    return cfg.with_(precision=resolved), info


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
        "embedding_identity": getattr(m, "embedding_identity", m.identity),
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


def _job(
    cfg: RunConfig, plan: Plan, ws: Workspace, items: list[dict], tile, calibration, field=None
):
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
        field=field,
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

    emb = reference_sample(client, cfg, plan, ws, items)
    vec = np.asarray(fit_calibration(emb, plan.classifier), dtype=np.float64)
    _log.info("calibration fitted on %d samples", len(emb))
    return vec


def fit_field(client, cfg: RunConfig, plan: Plan, ws: Workspace, items: list[dict]):
    """The compact field's codec: read back from the store (resume) or fitted and written once.

    Fitted on the same fixed reference sample as the calibration, so it does not depend on
    ``--tile-size`` either.
    """
    from pipeline.field.codec import fit_codec
    from pipeline.writers.field import read_codec, write_codec

    codec = read_codec(ws.store)
    if codec is not None:
        return codec
    emb = reference_sample(client, cfg, plan, ws, items)
    codec = fit_codec(emb, cfg.field_dims)
    write_codec(ws.store, codec)
    _log.info(
        "embedding field: %d -> %d dims (%.2f%% of the sample's variance), %d bytes/pixel",
        codec.embed_dim,
        codec.dims,
        100 * codec.explained_variance,
        codec.bytes_per_pixel,
    )
    return codec


_SAMPLES: dict[str, np.ndarray] = {}


def reference_sample(client, cfg: RunConfig, plan: Plan, ws: Workspace, items: list[dict]):
    """Embeddings of a fixed reference sample of the region (computed once per run)."""
    key = str(ws.out.resolve()) + cfg.output_hash()
    if key in _SAMPLES:
        return _SAMPLES[key]
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
    from distributed import as_completed
    from tqdm import tqdm

    from pipeline.cube import ReadFailure

    with tqdm(
        total=len(futures),
        unit="tile",
        desc="calibration sample",
        disable=not cfg.progress,
        mininterval=1.0,
        dynamic_ncols=True,
    ) as bar:
        for _ in as_completed(futures):
            bar.update(1)
    try:
        samples = [f.result() for f in futures]
    except ReadFailure as exc:
        raise UserError(
            f"calibration sample: reading scenes {', '.join(exc.scenes[:3])} failed ({exc}); "
            "nothing was mapped: rerun when the data is readable"
        ) from None
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
    _log.info("reference sample: %d embeddings from %d tiles", len(emb), len(tiles))
    _SAMPLES.clear()
    _SAMPLES[key] = emb
    return emb


def _resources(client) -> dict[str, int] | None:
    """Request a GPU per task where the workers advertise GPUs."""
    workers = client.scheduler_info().get("workers", {})
    if any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return {"GPU": 1}
    return None


def tile_failure(tile_id: str, exc: BaseException, attempts: int) -> TileFailure:
    """The failure record of a tile whose last attempt raised ``exc``."""
    import datetime as dt

    from pipeline.cube import ReadFailure

    text = str(exc).splitlines()[0] if str(exc) else ""
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if isinstance(exc, ReadFailure):
        return TileFailure(
            tile_id, "read_failure", text, attempts, http_status=exc.status,
            scenes=exc.scenes, time=when,
        )  # fmt: skip
    return TileFailure(tile_id, "error", f"{type(exc).__name__}: {text}", attempts, time=when)


def run_tiles(
    client, cfg, plan, ws, items, calibration, todo, progress=None, task=None, field=None
) -> tuple[dict, dict[str, TileFailure]]:
    """Run ``todo`` tiles, a bounded number in flight; returns (stats, failures) by tile id.

    ``task`` replaces :func:`pipeline.tile_task.process_tile` (the scale benchmark's stand-in).

    A tile that raises is resubmitted up to ``cfg.retries`` times; one that still fails gets a
    :class:`~pipeline.workspace.TileFailure` (kept in the workspace, attempts counted over reruns)
    and no done marker, so the next run redoes it.
    """
    from distributed import as_completed

    from pipeline.reading import read_order
    from pipeline.tile_task import process_tile

    task = task or process_tile
    items = items if isinstance(items, ItemIndex) else ItemIndex(items)

    workers = sorted(client.scheduler_info().get("workers", {}))
    n_workers = max(1, len(workers))
    max_in_flight = max(4, 3 * n_workers)
    resources = _resources(client)
    # Tiles of one read group run on one worker (others may still steal them), so the worker's
    # block cache decodes each source block once (pipeline.reading.read_order).
    order = read_order(todo, n_workers)
    home = {t.id: w for t, w in order}
    pending = [t for t, _ in order]
    stats: dict[str, dict] = {}
    failures: dict[str, TileFailure] = {}
    earlier = ws.failed_tiles()
    tile_of: dict[str, tuple[Any, int]] = {}

    def submit(tile, attempt: int = 1):
        fut = client.submit(
            task,
            _job(cfg, plan, ws, items, tile, calibration, field),
            key=f"tile-{tile.id}-{cfg.output_hash()}-{attempt}",
            retries=0,  # retried here, so attempts are counted and recorded
            resources=resources,
            pure=False,
            **(
                {"workers": [workers[home[tile.id]]], "allow_other_workers": True}
                if len(workers) > 1
                else {}
            ),
        )
        tile_of[fut.key] = (tile, attempt)
        return fut

    ac = as_completed([submit(pending.pop(0)) for _ in range(min(max_in_flight, len(pending)))])
    for fut in ac:
        tile, attempt = tile_of.pop(fut.key)
        tid = tile.id
        if fut.status == "finished":
            s = fut.result()
            ws.mark_done(tid, s)
            stats[tid] = s
        else:
            exc = fut.exception()
            if attempt <= cfg.retries:
                _log.warning("tile %s attempt %d failed (%s); retrying", tid, attempt, exc)
                fut.release()
                ac.add(submit(tile, attempt + 1))
                continue
            before = earlier[tid].attempts if tid in earlier else 0
            failures[tid] = tile_failure(tid, exc, before + attempt)
            ws.record_failure(failures[tid])
            _log.error(
                "tile %s failed after %d attempt(s): %s: %s",
                tid,
                attempt,
                failures[tid].error_kind,
                failures[tid].message,
            )
        fut.release()
        if progress is not None:  # counts pixels (tiles done: in the postfix)
            progress.update(plan.grid[tid].shape[0] * plan.grid[tid].shape[1])
            progress.set_postfix_str(
                f"{len(stats) + len(failures)}/{len(todo)} tiles", refresh=False
            )
        if pending:
            ac.add(submit(pending.pop(0)))
    return stats, failures


def _search(cfg: RunConfig, geometry, profile: str) -> list[dict]:
    """The usable scenes (item dicts, unsigned hrefs) for the run's region and period."""
    return _search_scenes(cfg, geometry, profile)[0]


def _search_scenes(cfg: RunConfig, geometry, profile: str) -> tuple[list[dict], SceneLedger]:
    """The usable scenes (item dicts with unsigned hrefs) and the ledger of all returned."""
    from pipeline.search import SearchConfig, search_scenes
    from pipeline.stac_profiles import unsigned_href

    scfg = SearchConfig(
        profile=profile,
        stac_url=getattr(cfg, "stac_url", None),
        collection=getattr(cfg, "collection", None),
        max_cloud=getattr(cfg, "max_cloud", 60.0),
    )
    try:
        result = search_scenes(geometry, cfg.start, cfg.end, scfg)
    except UserError as exc:
        if profile != "demo" and _inside_demo(geometry):
            raise UserError(
                f"{exc}; this area lies inside the offline demo catalog: add --profile demo"
            ) from None
        raise
    items = []
    for it in result.items:
        d = it.to_dict()
        for asset in d.get("assets", {}).values():  # signatures expire: signed when read
            asset["href"] = unsigned_href(asset["href"])
        items.append(d)
    return items, result.ledger


def _inside_demo(geometry) -> bool:
    """True when ``geometry`` (EPSG:4326) lies inside the bundled demo catalog's footprint."""
    from shapely.geometry import box

    from aoi import to_crs
    from pipeline.demo import DEMO_BOUNDS, DEMO_EPSG

    return box(*DEMO_BOUNDS).contains(to_crs(geometry, f"EPSG:{DEMO_EPSG}"))


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
        items, ledger = _search_scenes(cfg, geometry, cfg.profile)
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
        field_dims=_field_dims(cfg, plan),
        attrs={
            "config_hash": output_hash,
            "region": plan.region_name,
            "model": cfg.model,
            "untrained": cfg.untrained,
            **_field_attrs(cfg, plan),
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
    _ledger_from_tiles(ledger, stats, failures)
    for line in ledger.summary_lines():
        _log.info("%s", line)
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
        failures,
        area_km2,
    )
    report["precision"] = precision_info
    if field is not None:
        report["field"] = {
            **_field_attrs(cfg, plan)["s2lc:field"],
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
        from pipeline.base.jsonio import write_json

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
    from pipeline.base.jsonio import write_json

    write_json(ws.out / "run.json", report)
    _log.info("map written to %s (%.1f s)", ws.out, report["seconds"]["total"])
    return 0


def _field_dims(cfg: RunConfig, plan: Plan) -> int | None:
    """Components of the compact field (None without ``--save-embeddings``)."""
    if not cfg.save_embeddings:
        return None
    return min(int(cfg.field_dims), int(plan.model_info["embed_dim"]))


def _field_attrs(cfg: RunConfig, plan: Plan) -> dict[str, Any]:
    """The field's metadata in the store (``s2lc:field``): model identity and decoding recipe."""
    if not cfg.save_embeddings:
        return {}
    from pipeline.field.api import FIELD_ATTR
    from pipeline.field.codec import ENCODING, ENCODING_VERSION

    dims = _field_dims(cfg, plan)
    return {
        FIELD_ATTR: {
            "encoding": ENCODING,
            "version": ENCODING_VERSION,
            "model": plan.model_info["identity"],
            "embedding_identity": plan.model_info.get("embedding_identity"),
            "model_name": plan.model_info["name"],
            "embed_dim": plan.model_info["embed_dim"],
            "dims": dims,
            "bytes_per_pixel": dims + 2,
            "decode": "e = normalise(field_mean + field_basis @ (field_codes * field_scale)); "
            "field_scale NaN = nodata (pipeline.field.codec)",
        }
    }


class TilesFailed(UserError):
    """Some tiles failed (or are dead-lettered): the rest of the run finished, nothing published
    over them. Exit code 3, so scripts tell it from bad input (2)."""

    exit_code = 3


def select_tiles(tiles, done: dict, failed: dict[str, TileFailure], cfg: RunConfig):
    """(tiles to run, dead-lettered failures left alone) for this run.

    A plain run (or rerun) runs every tile not done except those that failed ``max_attempts``
    times or more (the dead-letter list); ``--retry-failed`` runs only the tiles that failed.
    """
    dead = {t: f for t, f in failed.items() if f.attempts >= cfg.max_attempts}
    if cfg.retry_failed:
        return [tl for tl in tiles if tl.id in failed and tl.id not in done], {}
    todo = [tl for tl in tiles if tl.id not in done and tl.id not in dead]
    return todo, {t: f for t, f in dead.items() if t not in done}


def failure_summary(failures: dict[str, TileFailure], total: int, where: Path) -> str:
    """One line: how many tiles failed, the first few with their reason, where the list is."""
    shown = []
    for tid in sorted(failures)[:3]:
        f = failures[tid]
        scenes = f" (scenes {', '.join(f.scenes[:3])})" if f.scenes else ""
        shown.append(f"{tid}: {f.error_kind}, {f.message[:160]}{scenes}")
    more = f"; +{len(failures) - 3} more" if len(failures) > 3 else ""
    return (
        f"{len(failures)} of {total} tiles failed: {'; '.join(shown)}{more}. The map is not "
        f"published; all failures are listed in {where}; finished tiles are kept: rerun to redo "
        "only the failed ones"
    )


def _ledger_from_tiles(ledger: SceneLedger, stats: dict, failures: dict[str, TileFailure]) -> None:
    """Add the tiles' read failures and offset warnings to the scene ledger."""
    for tid, f in failures.items():
        if f.error_kind == "read_failure":
            for sid in f.scenes:
                ledger.read_failure(sid, f.message, tid)
    for s in stats.values():
        for sid, text in (s.get("offset_warnings") or {}).items():
            ledger.warn(sid, text)


#: A period gap-filled (no clear observation) over more than this share of the region warns.
GAP_FILLED_WARN_FRACTION = 0.10


def coverage_report(all_stats: dict[str, dict], labels: list[str]) -> dict[str, Any]:
    """Per period, the share of the region's pixels without a clear observation in it (gap-filled
    from other periods), the share with no observation in any period (nodata), and warnings.

    Tiles from before coverage was recorded are left out (``pixels_counted`` says how many count).
    """
    inside = 0
    no_data = 0
    gap = np.zeros(len(labels), np.int64)
    for s in all_stats.values():
        cov = s.get("coverage")
        if not cov or len(cov.get("gap_filled", [])) != len(labels):
            continue
        inside += int(cov["inside"])
        no_data += int(cov["no_data"])
        gap += np.asarray(cov["gap_filled"], np.int64)
    periods = {
        lab: {"gap_filled_fraction": float(g / inside) if inside else 0.0}
        for lab, g in zip(labels, gap, strict=True)
    }
    warnings = []
    frac_none = no_data / inside if inside else 0.0
    for lab, v in periods.items():
        f = v["gap_filled_fraction"]
        if f > GAP_FILLED_WARN_FRACTION:
            warnings.append(
                f"period {lab}: no clear observation over {f:.0%} of the region; those pixels "
                "were gap-filled from neighbouring periods"
            )
    if no_data:
        warnings.append(
            f"{frac_none:.1%} of the region ({no_data} px) has no clear observation in any "
            "period: nodata in the map"
        )
    return {
        "pixels_counted": inside,
        "no_data_fraction": frac_none,
        "gap_filled_warn_fraction": GAP_FILLED_WARN_FRACTION,
        "periods": periods,
        "warnings": warnings,
    }


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
    failures,
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
            "failed": sorted(failures),
            "errors": {k: f"{f.error_kind}: {f.message}" for k, f in failures.items()},
            "failures": {k: failures[k].to_dict() for k in sorted(failures)},
            "tile_size": cfg.tile_size,
        },
        "seconds": dict(seconds),
        "tile_stats": [all_stats[k] for k in sorted(all_stats)],
        "versions": package_versions(),
        "host": host_info(),
    }


def write_legend_and_quicklook(
    cfg: RunConfig, plan: Plan, ws: Workspace, report: dict, classes: Path
) -> None:
    """``legend.json`` and ``quicklook.png`` (of the ``classes`` raster: a COG or a VRT), with
    what the map is made from in both (model identity, untrained weights, a few-shot head)."""
    from pipeline.writers import write_legend_json, write_quicklook

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
    if cfg.untrained and cfg.head:
        title += "\nUNTRAINED encoder (demo), classes from a few-shot head"
    elif cfg.untrained:
        title += "\nUNTRAINED WEIGHTS (demo): not a land-cover map"
    write_quicklook(
        ws.out / "quicklook.png", classes, list(plan.class_names), list(plan.colors), title
    )


def publish(cfg: RunConfig, plan: Plan, ws: Workspace, report: dict, labels: list[str]) -> None:
    """Mosaic COGs, move the Zarr into place, write legend, quicklook and STAC item."""
    from pipeline.writers import build_cogs, write_stac_item

    cogs = build_cogs(
        ws.tiles, ws.out, plan.grid, list(plan.class_names), list(plan.colors), period_labels=labels
    )
    field_cogs = {}
    if cfg.save_embeddings:
        from pipeline.writers.field import build_field_cogs

        field_cogs = build_field_cogs(ws.store, ws.out, _field_attrs(cfg, plan)["s2lc:field"])
    zarr_path = ws.publish_store()
    ws.drop_tile_rasters()  # mosaicked into the COGs; the markers stay for the record
    write_legend_and_quicklook(cfg, plan, ws, report, cogs["classes"])
    if "composite_rgb" in cogs:  # the true-colour composite the map was made from
        from pipeline.writers import write_rgb_quicklook

        cogs["composite_quicklook"] = write_rgb_quicklook(
            ws.out / "composite_rgb.png", cogs["composite_rgb"]
        )
    assets = {
        **cogs,
        **field_cogs,
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
