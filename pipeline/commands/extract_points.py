"""``extract-points``: per-point composite time series for training, probing and evaluation."""

from __future__ import annotations

import argparse

from pipeline.commands._options import add_data, add_when

NAME = "extract-points"
HELP = "extract per-point Sentinel-2 composites (point x period x band) from a points file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--points",
        required=True,
        help="CSV with id, lon, lat columns (+ any label columns) or a vector file of points",
    )
    add_when(p, start_help="first date, YYYY-MM-DD (or --year)", period_default="monthly",
             period_help="composite period (default monthly: TimeSenCLIP's 12 steps)")  # fmt: skip
    p.add_argument(
        "--out",
        required=True,
        help="output table (.npz); a GeoParquet copy (one row per point) is written beside it "
        "with the suffix .parquet",
    )
    g = p.add_argument_group("columns")
    g.add_argument("--id-column", help="point id column (default: id/point_id/POINT_ID)")
    g.add_argument("--lon-column", help="longitude column (default: lon/longitude/TH_LONG)")
    g.add_argument("--lat-column", help="latitude column (default: lat/latitude/TH_LAT)")
    g.add_argument("--points-crs", help="CRS of the CSV coordinates (default EPSG:4326)")
    g = p.add_argument_group("data")
    add_data(g, max_cloud_default=60.0)
    g.add_argument("--no-gap-fill", action="store_true", help="leave empty periods NaN")
    g = p.add_argument_group("grid and execution")
    g.add_argument("--crs", help="one CRS for all points (default: each point's UTM zone)")
    g.add_argument("--resolution", type=float, default=10.0, help="pixel size in metres (10)")
    g.add_argument("--tile-size", type=int, default=1024, help="grouping tile in pixels (1024)")
    g.add_argument(
        "--cluster-px",
        type=int,
        default=64,
        help="points within this many pixels share one loading window (64)",
    )
    g.add_argument(
        "--block-tiles",
        type=int,
        default=8,
        help="tiles per side sharing one STAC search (8)",
    )
    g.add_argument("--workers", type=int, default=4, help="windows loaded in parallel (4)")
    g.add_argument("--no-resume", action="store_true", help="ignore finished blocks of a rerun")


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    from pathlib import Path

    import numpy as np

    from pipeline.base.config import period_dates
    from pipeline.points import ExtractConfig, extract_points, read_points
    from pipeline.reading.cube import MaskConfig
    from pipeline.run.config import CompositeConfig
    from pipeline.stac.profiles import stac_profile
    from pipeline.stac.search import SearchConfig

    log = logging.getLogger(__name__)
    start, end = period_dates(args.year, args.start, args.end)
    profile = stac_profile(args.profile, args.stac_url, "earth-search")
    cfg = ExtractConfig(
        composite=CompositeConfig(start, end, args.period),
        search=SearchConfig(
            profile=profile,
            stac_url=args.stac_url,
            collection=args.collection,
            max_cloud=args.max_cloud,
        ),
        mask=MaskConfig(mask_snow=not args.keep_snow, scl_mask=args.scl_mask or "default"),
        resolution=args.resolution,
        crs=args.crs,
        tile_size=args.tile_size,
        cluster_px=args.cluster_px,
        block_tiles=args.block_tiles,
        workers=args.workers,
        gap_fill=not args.no_gap_fill,
    )
    pts = read_points(
        args.points,
        id_column=args.id_column,
        lon_column=args.lon_column,
        lat_column=args.lat_column,
        crs=args.points_crs,
    )

    def progress(done: int, total: int) -> None:
        log.info("search block %d/%d done", done, total)

    table = extract_points(pts, cfg, args.out, resume=not args.no_resume, progress=progress)
    npz = Path(args.out) if str(args.out).endswith(".npz") else Path(f"{args.out}.npz")
    parquet = table.to_geoparquet(npz.with_suffix(".parquet"))
    valid = (table.counts > 0).sum(axis=1)
    summary = {
        "out": str(args.out),
        "geoparquet": str(parquet),
        "points": len(table),
        "periods": table.n_periods,
        "bands": list(table.bands),
        "points_without_observations": int((valid == 0).sum()),
        "median_valid_periods": float(np.median(valid)) if len(valid) else 0.0,
        "columns": sorted(table.attrs),
    }
    print(json.dumps(summary, indent=1))
    return 0
