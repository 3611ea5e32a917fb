"""``regions``: list the named regions in the catalogue."""

from __future__ import annotations

import argparse

NAME = "regions"
HELP = "list the named regions (aoi/regions/*.yaml) with their area, CRS and default period"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", nargs="?", help="show one region (a name or a vector file) in detail"
    )


def run(args: argparse.Namespace) -> int:
    from aoi import list_regions, load_region

    if args.name:
        r = load_region(args.name)
        print(f"name:        {r.name}")
        print(f"description: {r.description}")
        print(f"bbox (4326): {', '.join(f'{v:.5f}' for v in r.bbox)}")
        print(f"area:        {r.area_km2():,.1f} km2")
        print(f"crs:         {r.crs} @ {r.resolution:g} m")
        print(f"period:      {r.start} .. {r.end}")
        print(f"stac:        {r.stac}")
        return 0
    rows = [
        (r.name, f"{r.area_km2():,.0f}", r.crs, f"{r.start}..{r.end}", r.stac, r.description)
        for r in list_regions()
    ]
    head = ("name", "km2", "crs", "period", "stac", "description")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
    for row in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row[:5], widths)) + "  " + row[5])
    return 0
