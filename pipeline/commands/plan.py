"""``plan``: what a ``run`` with the same arguments will read, compute and cost, without pixels."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

NAME = "plan"
HELP = (
    "estimate a run before starting it (same options as 'run'): tiles, scenes, input bytes, "
    "core-/GPU-hours, wall time, cost -> plan.json"
)
DEFAULT_RATES = Path(__file__).resolve().parents[2] / "bench" / "results.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.commands.run import add_arguments as run_arguments

    run_arguments(p)
    g = p.add_argument_group("plan")
    g.add_argument(
        "--offline",
        action="store_true",
        help="no STAC search: estimate scenes from the Sentinel-2 revisit over the MGRS tiles",
    )
    g.add_argument(
        "--clear-fraction",
        type=float,
        default=0.5,
        help="with --offline: share of acquisitions passing --max-cloud (assumption, default 0.5)",
    )
    g.add_argument(
        "--worker-kind", choices=("gpu", "cpu"), default="gpu", help="kind of worker (node)"
    )
    g.add_argument("--worker-cores", type=int, default=16, help="CPU cores per worker")
    g.add_argument("--worker-gpus", type=int, default=1, help="GPUs per gpu worker")
    g.add_argument("--price-core-hour", type=float, default=0.0, help="price of a core-hour")
    g.add_argument("--price-gpu-hour", type=float, default=0.0, help="price of a GPU-hour")
    g.add_argument("--rates", type=Path, default=DEFAULT_RATES, help="bench results JSON")
    g.add_argument(
        "--stage-rates",
        default="plan_stage_rates",
        metavar="ENTRY",
        help="the --rates entry with this machine's stage rates (default plan_stage_rates, the "
        "model's; plan_stage_rates_standin: the stand-in encoder of the rehearsal)",
    )
    g.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="object store time to first byte per request (ms; ~30 in the same cloud region)",
    )
    g.add_argument(
        "--bandwidth-mbps", type=float, help="object store bandwidth per worker (megabits/s)"
    )
    g.add_argument("--plan-out", type=Path, help="where to write plan.json (default OUT/plan.json)")


def _scenes_offline(geometry, cfg, clear_fraction: float) -> dict:
    from pipeline.grid.mgrs import acquisitions_per_year, observations_per_year, s2_tiles

    days = (cfg.composite.end - cfg.composite.start).days + 1
    tiles = s2_tiles(geometry)
    if not tiles:
        return {"mgrs_tiles": 0, "items": 0, "scenes_per_pixel": 0.0}
    acq = sum(acquisitions_per_year(t.lat, days) for t in tiles)
    obs = sum(observations_per_year(t.lat, days) for t in tiles) / len(tiles)
    return {
        "source": "offline: Sentinel-2 revisit over the region's MGRS tiles (pipeline.grid.mgrs)",
        "mgrs_tiles": len(tiles),
        "acquisitions": acq,
        "clear_fraction": clear_fraction,
        "items": acq * clear_fraction,
        "scenes_per_pixel": obs * clear_fraction,
    }


def _scenes_searched(geometry, cfg, crs: str, area_km2: float) -> dict:
    """What the run's own search finds (:func:`pipeline.stac.found.search_run`, streamed into a
    spool file and read back one item at a time, in a process of its own above the driver's
    :data:`~pipeline.run.start.ISOLATED_SEARCH_KM2`), so that planning a continent holds no
    more items in memory than the run does: the kept items, their MGRS tiles and the mean number
    of scenes over a pixel of the region (the footprints' areas inside it, summed, over its area).
    """
    import itertools

    import shapely
    from shapely.geometry import shape

    from aoi import to_crs
    from pipeline.run.start import ISOLATED_SEARCH_KM2
    from pipeline.stac.found import search_run

    t = time.perf_counter()
    c = cfg.composite
    found = search_run(
        geometry, c.start, c.end, cfg.search, isolated=area_km2 > ISOLATED_SEARCH_KM2
    )
    seconds = time.perf_counter() - t
    region = to_crs(geometry, crs)
    covered, tiles = 0.0, set()
    try:
        for batch in itertools.batched(found.items(), 1000):
            feet = to_crs(shapely.GeometryCollection([shape(d["geometry"]) for d in batch]), crs)
            covered += float(sum(shapely.area(shapely.intersection(list(feet.geoms), region))))
            tiles |= {(d.get("properties") or {}).get("s2:mgrs_tile") for d in batch} - {None}
        items = len(found)
    finally:
        found.close()
    return {
        "source": f"STAC search ({cfg.search.profile}), {seconds:.1f} s",
        "mgrs_tiles": len(tiles),
        "items": items,
        "scenes_per_pixel": covered / region.area if region.area else 0.0,
    }


def run(args: argparse.Namespace) -> int:
    from pipeline.base.errors import UserError
    from pipeline.base.jsonio import write_json
    from pipeline.commands.run import resolve
    from pipeline.grid.cells import cells_of, is_gridded, output_grid
    from pipeline.run.checks import resolve_region
    from pipeline.run.config import default_output_dir
    from pipeline.run.plan import Network, Workers, estimate, load_rates, load_stage_rates

    t0 = time.perf_counter()
    if not 0 < args.clear_fraction <= 1:
        raise UserError(f"--clear-fraction must be in (0, 1], got {args.clear_fraction}")
    if not (args.checkpoint or args.untrained or args.head):
        args.untrained = True  # the plan reads no weights
    cfg = resolve(args)
    workers = Workers(
        count=cfg.execution.workers or 1,
        kind=args.worker_kind,
        cores=args.worker_cores,
        gpus=args.worker_gpus,
        price_core_hour=args.price_core_hour,
        price_gpu_hour=args.price_gpu_hour,
    )
    network = Network(args.latency_ms, args.bandwidth_mbps)
    rates = load_rates(args.rates, cfg.model.name)
    region, geometry = resolve_region(cfg.region, cfg.bbox)
    grid = output_grid(geometry, region.crs, region.resolution, cfg.chips.tile_size)
    cells = len(cells_of(grid)) if is_gridded(region.crs) else 0
    tile_pixels = float(sum(t.shape[0] * t.shape[1] for t in grid.tiles))
    from aoi import location_text, to_crs

    area_km2 = float(to_crs(geometry, region.crs).area) / 1e6
    scenes = (
        _scenes_offline(geometry, cfg, args.clear_fraction)
        if args.offline
        else _scenes_searched(geometry, cfg, region.crs, area_km2)
    )
    plan = estimate(
        tiles=len(grid.tiles),
        tile_pixels=tile_pixels,
        area_km2=area_km2,
        scenes_per_pixel=scenes["scenes_per_pixel"],
        items=round(scenes["items"]),
        cells=cells,
        model=cfg.model.name,
        stride=cfg.chips.stride,
        rates=rates,
        workers=workers,
        network=network,
    )
    stage_rates = load_stage_rates(args.rates, cfg.model.name, args.stage_rates)
    stages = (
        _stages(stage_rates, cfg, grid, geometry, region, area_km2, scenes, rates, network)
        if stage_rates is not None
        else None
    )
    plan = {
        "region": region.name,
        "period": [str(cfg.composite.start), str(cfg.composite.end)],
        "model": cfg.model.name,
        "crs": region.crs,
        "location": location_text(geometry, region.crs, region.description),
        "resolution": region.resolution,
        "tile_size": cfg.chips.tile_size,
        "layout": "100 km EEA grid cells" if cells else "single files",
        "scenes": scenes,
        **plan,
        "plan_seconds": time.perf_counter() - t0,
    }
    if stages is not None:
        plan["stages"] = stages
    out = args.plan_out or (
        (Path(cfg.execution.out) if cfg.execution.out else default_output_dir(cfg, region.name))
        / "plan.json"
    )
    write_json(out, plan)
    print(_summary(plan, out))
    return 0


def _stages(
    rates, cfg, grid, geometry, region, area_km2: float, scenes: dict, read_rates, network
) -> dict:
    """Seconds per stage of the run on this machine's cluster (:func:`predict_stages`), with the
    rates' backend, batch and tile size and what differs from the run's settings; ``network``'s
    latency adds the waits of ``read_rates``' requests (as :func:`estimate` counts them)."""
    from pipeline.grid.tiling import make_grid
    from pipeline.run.calibration import (
        CALIBRATION_SAMPLES_PER_TILE,
        CALIBRATION_TILE_SIZE,
        CALIBRATION_TILES,
        _calibration_tiles,
    )
    from pipeline.run.cluster import ClusterConfig
    from pipeline.run.stages import predict_stages

    slots = (
        ClusterConfig(kind="local", workers=cfg.execution.workers).planned_workers()
        if cfg.execution.cluster == "local"
        else len(grid.tiles)
    )
    calibrates = cfg.model.calibration == "reference" and not cfg.model.head
    cal_tiles = []
    if calibrates:
        ref = make_grid(geometry, region.crs, region.resolution, CALIBRATION_TILE_SIZE)
        cal_tiles = [t.shape for t in _calibration_tiles(ref.tiles, CALIBRATION_TILES)]
    out = predict_stages(
        rates,
        tile_shapes=[tuple(t.shape) for t in grid.tiles],
        valid_mpx=area_km2 * 1e6 / region.resolution**2 / 1e6,
        scenes_per_pixel=scenes["scenes_per_pixel"],
        slots=slots or 1,
        measures_backend=cfg.model.precision == "auto",
        calibration_tiles=cal_tiles,
        calibration_samples=CALIBRATION_SAMPLES_PER_TILE if calibrates else 0,
        read_wait_s_per_mpx_scene=(
            read_rates.requests_per_mpx_scene
            * network.latency_ms
            / 1000
            / read_rates.read_in_flight
            if network.latency_ms
            and read_rates.requests_per_mpx_scene
            and read_rates.read_in_flight
            else 0.0
        ),
    )
    differs = []
    if cfg.model.precision not in ("auto", rates.backend):
        differs.append(f"the run forces backend {cfg.model.precision}, rates are {rates.backend}")
    if rates.tile_size and cfg.chips.tile_size != rates.tile_size:
        differs.append(f"the run's tiles are {cfg.chips.tile_size} px, rates' {rates.tile_size} px")
    return {
        **out,
        "calibration": calibrates,
        "backend": rates.backend if cfg.model.precision == "auto" else cfg.model.precision,
        "batch": rates.batch,
        "rates_source": rates.sources.get("stages"),
        "rates_differ": differs,
    }


def _gb(b: float) -> str:
    return f"{b / 1e12:,.1f} TB" if b >= 1e12 else f"{b / 1e9:,.1f} GB"


def _summary(p: dict, out: Path) -> str:
    w = p["workers"]
    kind = f"{w['cores']} cores" + (f" + {w['gpus']} GPU" if w["kind"] == "gpu" else "")
    lines = [
        f"plan for {p['region']} {p['period'][0]}..{p['period'][1]} ({p['model']}, {p['crs']}, "
        f"{p['layout']})",
        f"  where           {p['location']}",
        f"  area            {p['area_km2']:,.0f} km2",
        f"  output          {p['output']['tiles']:,} tiles of {p['tile_size']} px, "
        f"{p['output']['pixels'] / 1e9:,.2f} Gpx"
        + (f", {p['output']['cells']} cells" if p["output"]["cells"] else ""),
        f"  scenes          {p['input']['scenes']:,} over {p['scenes']['mgrs_tiles']} MGRS tiles, "
        f"{p['input']['scenes_per_pixel']:.1f} per pixel ({p['scenes']['source']})",
        f"  input           {_gb(p['input']['compressed_bytes'])} compressed, "
        f"{_gb(p['input']['decoded_bytes'])} decoded",
        "  core-hours      " + ", ".join(f"{k} {v:,.0f}" for k, v in p["core_hours"].items()),
        f"  GPU-hours       {p['gpu_hours']:,.0f}",
        *_network_line(p["network"]),
        f"  wall time       {p['wall_hours']:,.1f} h on {w['count']} worker(s) of {kind}",
        f"  cost            {p['cost']['total']:,.2f} ({p['cost']['per_km2'] * 100:.4f} cents/km2) "
        f"at {w['price_core_hour']:g}/core-h, {w['price_gpu_hour']:g}/GPU-h",
        "  rates           " + "; ".join(f"{k}: {v}" for k, v in p["rates"]["sources"].items()),
        *_stages_line(p.get("stages")),
        f"  written to      {out} ({p['plan_seconds']:.1f} s)",
    ]
    return "\n".join(lines)


def _stages_line(st: dict | None) -> list[str]:
    """The summary's lines on the run's stages on this machine (none without stage rates)."""
    if st is None:
        return ["  stages          no stage rates: run 'make bench ARGS=\"--only plan\"'"]
    big = sorted(st["wall_s"].items(), key=lambda kv: -kv[1])[:4]
    lines = [
        f"  this machine    {st['total_wall_s']:,.0f} s wall, {st['total_core_s']:,.0f} core-s on "
        f"{st['slots']} worker(s) with a core each, backend {st['backend']}"
        + (", with calibration" if st["calibration"] else "")
        + " ("
        + ", ".join(f"{k} {v:,.0f} s" for k, v in big)
        + ")"
    ]
    lines += [f"  warning         {d}" for d in st["rates_differ"]]
    return lines


def _network_line(n: dict) -> list[str]:
    """The summary's line on object-store waits (none when neither option is given)."""
    if not n["latency_ms"] and not n["bandwidth_mbps"]:
        return []
    parts = []
    if n["latency_ms"]:
        parts.append(
            f"{n['requests']:,.0f} requests at {n['latency_ms']:g} ms, "
            f"{n['in_flight_per_worker']:.1f} in flight per worker: "
            f"{n['read_wait_hours']:,.2f} h waiting"
        )
    if n["bandwidth_mbps"]:
        parts.append(f"{n['transfer_hours']:,.2f} h of transfer at {n['bandwidth_mbps']:g} Mbit/s")
    return ["  object store    " + "; ".join(parts) + " (overlapping the CPU stages)"]
