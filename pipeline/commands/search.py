"""``search``: list the Sentinel-2 L2A scenes a STAC API has for a region and period."""

from __future__ import annotations

import argparse

from pipeline.commands._options import add_data, add_when

NAME = "search"
HELP = "search a STAC API for Sentinel-2 L2A scenes over a region and period (count, dates, cloud)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--region", help="named region or vector file (default: demo unless --bbox is given)"
    )
    where.add_argument(
        "--bbox",
        nargs=4,
        type=float,
        metavar=("W", "S", "E", "N"),
        help="lon/lat bounding box (EPSG:4326) instead of a region",
    )
    add_when(parser, period=False)
    add_data(parser, max_cloud_default=60.0, keep_snow=False)


def run(args: argparse.Namespace) -> int:
    import datetime as dt

    from aoi import load_region, validate_geometry
    from pipeline.base.config import period_dates
    from pipeline.stac.profiles import stac_profile
    from pipeline.stac.scenes import monthly_coverage
    from pipeline.stac.search import SearchConfig, search_scenes

    if args.bbox:
        from aoi import bbox_region

        geometry = bbox_region(*args.bbox).geometry
        validate_geometry(geometry, "bbox")
        last_year = dt.date.today().year - 1
        start, end = dt.date(last_year, 1, 1), dt.date(last_year, 12, 31)
        profile = "earth-search"
    else:
        region = load_region(args.region or "demo")
        geometry, start, end, profile = region.geometry, region.start, region.end, region.stac
    start, end = period_dates(args.year, args.start, args.end, (start, end))
    profile = stac_profile(args.profile, args.stac_url, profile)
    cfg = SearchConfig(
        profile=profile,
        stac_url=args.stac_url,
        collection=args.collection,
        max_cloud=args.max_cloud,
    )
    result = search_scenes(geometry, start, end, cfg)
    items = result.items
    print(f"{'date':<10}  {'time':<8}  {'cloud %':>7}  {'platform':<12}  id")
    for it in items:
        when = it.datetime
        cc = it.properties.get("eo:cloud_cover")
        cloud = f"{float(cc):7.1f}" if cc is not None else f"{'?':>7}"
        platform = str(it.properties.get("platform", "?"))
        print(f"{when:%Y-%m-%d}  {when:%H:%M:%S}  {cloud}  {platform:<12}  {it.id}")
    covers = sorted(
        float(c) for it in items if (c := it.properties.get("eo:cloud_cover")) is not None
    )
    summary = (
        f"{len(items)} scene(s) from {cfg.resolved_collection} ({profile}), "
        f"{items[0].datetime:%Y-%m-%d} .. {items[-1].datetime:%Y-%m-%d}"
    )
    if covers:
        mid = covers[len(covers) // 2]
        summary += f", cloud cover min {covers[0]:.1f} / median {mid:.1f} / max {covers[-1]:.1f} %"
    print(summary)
    print()
    print("clear scenes per month (clear-sky equivalent = sum of 1 - cloud cover):")
    months = monthly_coverage(it.to_dict() for it in items)
    cur = start.replace(day=1)
    while cur <= end:
        m = months.get(f"{cur:%Y-%m}", {"scenes": 0, "clear_equivalent": 0.0})
        flag = "  <- no scene" if not m["scenes"] else ""
        print(
            f"  {cur:%Y-%m}  {int(m['scenes']):4d} scene(s)  {m['clear_equivalent']:6.1f} clear{flag}"
        )
        cur = (cur + dt.timedelta(days=32)).replace(day=1)
    print()
    for line in result.ledger.summary_lines():
        print(line)
    return 0
