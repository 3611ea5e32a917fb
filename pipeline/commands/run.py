"""``run``: map a region to a land-cover map (Zarr + COGs + legend, quicklook, STAC item)."""

from __future__ import annotations

import argparse
import datetime as dt

NAME = "run"
HELP = "map a region: STAC search -> composites -> SenCLIP/TimeSenCLIP per tile -> Zarr + COGs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what and when")
    g.add_argument(
        "--region", required=True, help="a named region (see 'regions') or a vector file"
    )
    g.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        metavar=("W", "S", "E", "N"),
        help="clip the region to this lon/lat box",
    )
    g.add_argument("--year", type=int, help="map this calendar year (sets --start/--end)")
    g.add_argument("--start", help="first date, YYYY-MM-DD (default: the region's period)")
    g.add_argument("--end", help="last date, YYYY-MM-DD (inclusive)")
    g.add_argument(
        "--period",
        choices=("monthly", "quarterly", "annual"),
        help="composite period (default: monthly for timesenclip, annual for senclip)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("timesenclip", "senclip"), default="timesenclip")
    g.add_argument("--checkpoint", help="weights: a file, or a cached name (see 'weights list')")
    g.add_argument(
        "--untrained",
        action="store_true",
        help="random weights (offline demo only; every output says so)",
    )
    g.add_argument("--clip-checkpoint", help="CLIP/SenCLIP weights for TimeSenCLIP's text encoder")
    g.add_argument("--arch", default=None, choices=("ViT-B-32", "RN50"), help="SenCLIP backbone")
    g.add_argument(
        "--legend",
        help="legend name (see 'legends') or a YAML/JSON/NPZ file "
        "(default: demo for the demo region, else lucas-lc8)",
    )
    g.add_argument("--style", choices=("aerial", "ground", "generic"), help="prompt style")
    g.add_argument("--head", help="a few-shot head from 'probe' instead of zero-shot prompts")
    g.add_argument(
        "--calibration",
        choices=("reference", "none"),
        help="class-mean calibration on a fixed reference sample (default for senclip zero-shot) "
        "or none (default otherwise)",
    )
    g.add_argument("--top-k", type=int, help="probabilities kept per pixel (default 3)")
    g.add_argument("--window", type=int, help="SenCLIP chip size in pixels (default 64)")
    g.add_argument("--stride", type=int, help="SenCLIP chip stride in pixels (default 32)")
    g.add_argument("--seed", type=int, help="seed for --untrained weights and sampling")
    g = p.add_argument_group("data")
    g.add_argument("--profile", help="STAC profile: earth-search, planetary-computer, demo, custom")
    g.add_argument("--stac-url", help="any STAC API (implies --profile custom unless given)")
    g.add_argument("--collection", help="STAC collection (default: the profile's)")
    g.add_argument("--max-cloud", type=float, help="maximum scene cloud cover in %% (default 60)")
    g.add_argument("--keep-snow", action="store_true", help="do not mask SCL snow/ice")
    g = p.add_argument_group("execution")
    g.add_argument("--tile-size", type=int, help="tile size in pixels (default 256)")
    g.add_argument(
        "--cluster", help="local (default), slurm, or a scheduler address tcp://HOST:PORT"
    )
    g.add_argument(
        "--cluster-config", help="Slurm profile YAML (default pipeline/profiles/slurm.yaml)"
    )
    g.add_argument("--workers", type=int, help="local worker processes, or Slurm jobs")
    g.add_argument(
        "--allow-large",
        action="store_true",
        help="allow a local run over a large region (hours of CPU)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", help="output folder (default outputs/<region>/<period>/<model>/)")
    g.add_argument("--save-composite", action="store_true", help="add the composites to map.zarr")
    g.add_argument("--save-embeddings", action="store_true", help="add embeddings to map.zarr")
    g.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--config", help="YAML with any of the options above (CLI options win)")


def resolve(args: argparse.Namespace):
    """Build the RunConfig from defaults, the optional YAML file and the CLI options."""
    from aoi import load_region
    from pipeline.config import from_mapping, load_yaml, merged, parse_date
    from pipeline.errors import UserError
    from pipeline.run_config import RunConfig

    base = load_yaml(args.config) if args.config else {}
    region_name = args.region or base.get("region")
    region = load_region(region_name)
    model = args.model or base.get("model", "timesenclip")
    if args.year is not None:
        if args.start or args.end:
            raise UserError("--year cannot be combined with --start/--end")
        if not 2015 <= args.year <= dt.date.today().year:
            raise UserError(f"--year {args.year} is outside the Sentinel-2 era (2015 onwards)")
        start, end = dt.date(args.year, 1, 1), dt.date(args.year, 12, 31)
    else:
        start = (
            parse_date(args.start, "--start")
            if args.start
            else parse_date(base.get("start", region.start), "start")
        )
        end = (
            parse_date(args.end, "--end")
            if args.end
            else parse_date(base.get("end", region.end), "end")
        )
    profile = (
        args.profile
        or base.get("profile")
        or ("custom" if (args.stac_url or base.get("stac_url")) else region.stac)
    )
    head = args.head or base.get("head")
    defaults = {
        "period": "monthly" if model == "timesenclip" else "annual",
        # The reference's class-mean calibration is SenCLIP's zero-shot practice; it hurts
        # trained pixel models and few-shot heads (measured on the planted-signal demo).
        "calibration": "reference" if model == "senclip" and not head else "none",
        "legend": "demo" if region.stac == "demo" else "lucas-lc8",
    }
    from pipeline.cells import GRIDDED_TILE_SIZE, is_gridded

    if is_gridded(region.crs):  # tiles must divide the 100 km output cells
        defaults["tile_size"] = GRIDDED_TILE_SIZE
    cli = {
        "region": region_name,
        "start": start,
        "end": end,
        "model": model,
        "bbox": args.bbox,
        "checkpoint": args.checkpoint,
        "clip_checkpoint": args.clip_checkpoint,
        "arch": args.arch,
        "untrained": args.untrained or None,
        "seed": args.seed,
        "legend": args.legend,
        "style": args.style,
        "head": args.head,
        "period": args.period,
        "calibration": args.calibration,
        "profile": profile,
        "stac_url": args.stac_url,
        "collection": args.collection,
        "max_cloud": args.max_cloud,
        "mask_snow": False if args.keep_snow else None,
        "tile_size": args.tile_size,
        "window": args.window,
        "stride": args.stride,
        "top_k": args.top_k,
        "save_composite": args.save_composite or None,
        "save_embeddings": args.save_embeddings or None,
        "out": args.out,
        "overwrite": args.overwrite or None,
        "cluster": args.cluster,
        "workers": args.workers,
        "cluster_config": args.cluster_config,
        "allow_large": args.allow_large or None,
        "progress": False if args.no_progress else None,
    }
    return from_mapping(RunConfig, merged(merged(defaults, base), cli), where="run")


#: Errors of the output filesystem, reported as one line (nothing is published on them).
_WRITE_ERRNOS = {"ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EIO", "EPERM"}


def run(args: argparse.Namespace) -> int:
    import errno

    from pipeline.errors import UserError
    from pipeline.runner import execute

    cfg = resolve(args)
    try:
        return execute(cfg)
    except OSError as exc:
        if errno.errorcode.get(exc.errno or 0) not in _WRITE_ERRNOS:
            raise
        where = exc.filename or cfg.out or "the output folder"
        raise UserError(
            f"writing {where} failed: {exc.strerror}; nothing was published, finished tiles are "
            "kept: free space (or fix the folder) and rerun"
        ) from None
