"""``make bench-scale``: search, plan and scheduling at EU-27 scale, without pixels.

1. A metadata-only Sentinel-2 L2A catalog of EU-27 for one year (every MGRS tile touching the
   region, the real revisit, the demo generator's item JSON: :mod:`pipeline.testing.demo.metadata`),
   generated once into the cache.
2. Loaded into the real pgstac of the integration tests (:class:`tests.integration.pgstac.LocalPgstac`).
3. Per region (one country, then ``eu27``): the whole year's search through ``pipeline.search``
   (time, pages, items; every generated item that should match is returned), ``plan`` (time,
   driver peak memory), and a ``run`` of the driver with a stand-in tile task that reads nothing
   (:mod:`pipeline.bench.scale`: tasks per second, driver peak memory, work-order size).

Results go to ``bench/results.json`` (``scale_*`` entries). Run as
``python -m tests.integration.bench_scale [--regions luxembourg eu27] [--tile-size 2000]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results.json"
YEAR = 2023
MAX_CLOUD = 60.0


def _catalog(root: Path) -> Path:
    from aoi import load_region
    from pipeline.testing.demo.metadata import metadata_collection, metadata_items

    if (root / "collection.json").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    items = list(metadata_items(load_region("eu27").geometry, YEAR))
    (root / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    (root / "collection.json").write_text(json.dumps(metadata_collection(items)))
    print(f"catalog: {len(items)} items in {time.perf_counter() - t:.0f} s", flush=True)
    return root


def _expected(items: list[dict], geometry) -> int:
    """Items a correct search returns: footprint meets the region, cloud cover <= the limit."""
    import shapely
    from shapely.geometry import shape

    feet = [shape(d["geometry"]) for d in items]
    shapely.prepare(geometry)
    hit = shapely.intersects(feet, geometry)
    clear = [d["properties"]["eo:cloud_cover"] <= MAX_CLOUD for d in items]
    return int(sum(h and c for h, c in zip(hit, clear, strict=True)))


def _child(cmd: list[str]) -> tuple[str, float, float]:
    """Run a command; (stdout, seconds, peak RSS MB of that process)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    out = p.stdout.read() if p.stdout else ""
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd[:5])}... failed ({p.returncode})")
    return out, time.perf_counter() - t, usage.ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    from aoi import load_region
    from pipeline.base.paths import cache_dir
    from pipeline.bench.results import Entry, table, write_results
    from pipeline.provenance import host_info
    from pipeline.search import SearchConfig, search_items
    from tests.integration.pgstac import LocalPgstac

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", nargs="+", default=["luxembourg", "eu27"])
    ap.add_argument("--tile-size", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    machine = f"{os.cpu_count()} CPU cores, {host_info()['platform']}"
    root = _catalog(cache_dir("scale", f"eu27-{YEAR}"))
    all_items = json.loads((root / "items.json").read_text())["features"]
    server = LocalPgstac()
    server.start()
    rows: dict[str, dict] = {}
    try:
        t = time.perf_counter()
        server.load_catalog(root)
        load_s = time.perf_counter() - t
        print(f"pgstac: {len(all_items)} items loaded in {load_s:.0f} s", flush=True)
        for name in a.regions:
            region = load_region(name)
            scfg = SearchConfig(profile="custom", stac_url=server.url, max_cloud=MAX_CLOUD)
            t = time.perf_counter()
            found = search_items(region.geometry, dt.date(YEAR, 1, 1), dt.date(YEAR, 12, 31), scfg)
            search_s = time.perf_counter() - t
            expect = _expected(all_items, region.geometry)
            items_file = root / f"search-{name}.json"
            items_file.write_text(json.dumps([it.to_dict() for it in found]))
            del found
            _, plan_s, plan_mb = _child(
                [sys.executable, "-m", "pipeline", "-q", "plan", "--region", name, "--year",
                 str(YEAR), "--stac-url", server.url, "--tile-size", str(a.tile_size),
                 "--plan-out", str(root / f"plan-{name}.json")]
            )  # fmt: skip
            out, _, sched_mb = _child(
                [sys.executable, "-m", "pipeline.bench.scale", name, str(items_file),
                 "--tile-size", str(a.tile_size), "--workers", str(a.workers)]
            )  # fmt: skip
            sched = json.loads(out)
            rows[name] = {
                "items_found": sched["items"],
                "items_expected": expect,
                "search_s": search_s,
                "pages": math.ceil(sched["items"] / scfg.page_size),
                "plan_s": plan_s,
                "plan_peak_mb": plan_mb,
                **sched,
                "driver_peak_mb": sched_mb,
            }
            print(json.dumps(rows[name]), flush=True)
            if sched["items"] != expect:
                raise SystemExit(f"{name}: the search returned {sched['items']} of {expect} items")
    finally:
        server.stop()
    entries = []
    for name, r in rows.items():
        notes = {**r, "catalog_items": len(all_items), "pgstac_load_s": load_s, "machine": machine}
        entries += [
            Entry(f"scale_schedule_tasks_per_s_{name}", r["tasks_per_s"], "tasks/s",
                  device="scheduling", threads=a.workers, notes=notes),
            Entry(f"scale_driver_peak_mb_{name}", r["driver_peak_mb"], "MB",
                  device="scheduling", notes={"tiles": r["tiles"], "items": r["items"]}),
            Entry(f"scale_search_s_{name}", r["search_s"], "s", device="pgstac",
                  notes={"items": r["items_found"], "pages": r["pages"]}),
            Entry(f"scale_plan_s_{name}", r["plan_s"], "s", device="pgstac",
                  notes={"peak_mb": r["plan_peak_mb"]}),
        ]  # fmt: skip
    if len(rows) >= 2:
        small, big = (rows[n] for n in list(rows)[:2])
        growth = (big["driver_peak_mb"] / small["driver_peak_mb"]) / (big["tiles"] / small["tiles"])
        entries.append(
            Entry("scale_memory_growth_vs_tiles", growth, "ratio (<= 1: sublinear)",
                  device="scheduling", notes={"from": list(rows)[0], "to": list(rows)[1]})
        )  # fmt: skip
    write_results(entries, RESULTS)
    print(table(entries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
