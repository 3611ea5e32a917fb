"""``make bench-scale``: search, plan and scheduling at EU-27 scale, without pixels.

1. A metadata-only Sentinel-2 L2A catalog of EU-27 for one year (every MGRS tile touching the
   region, the real revisit, the demo generator's item JSON: :mod:`pipeline.testing.demo.metadata`),
   generated once into the cache.
2. Loaded into the real pgstac of the integration tests (:class:`tests.integration.pgstac.LocalPgstac`).
3. Per region (one country, then ``eu27``): the whole year's search through ``pipeline.stac.search``
   (time, pages, items; every generated item that should match is returned), ``plan`` (time,
   driver peak memory), and a ``run`` of the driver with a stand-in tile task that reads nothing
   (:mod:`pipeline.bench.scale`: tasks per second, driver peak memory, work-order size).

Results go to ``bench/results.json`` (``scale_*`` entries). Run as
``python -m tests.integration.bench_scale [--regions luxembourg eu27] [--tile-size 2000]
[--no-search eu27]`` (``--no-search``: that region is planned offline and scheduled on the items a
correct search returns; EU-27's search through pgstac takes ~45 min on a 2-core machine).
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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.base.atomic import atomic_path
from pipeline.base.jsonio import write_json

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results.json"
YEAR = 2023
MAX_CLOUD = 60.0


def _catalog(root: Path) -> Path:
    """The catalog folder (``collection.json`` + ``items.ndjson``), generated once, streamed."""
    from aoi import load_region
    from pipeline.testing.demo.metadata import metadata_collection, metadata_items

    if (root / "collection.json").is_file() and (root / "items.ndjson").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    extent = []  # what the collection document needs of each item: bbox and time
    with atomic_path(root / "items.ndjson") as tmp, open(tmp, "w") as fh:
        for item in metadata_items(load_region("eu27").geometry, YEAR):
            fh.write(json.dumps(item, separators=(",", ":")) + "\n")
            extent.append(
                {"bbox": item["bbox"], "properties": {"datetime": item["properties"]["datetime"]}}
            )
    write_json(root / "collection.json", metadata_collection(extent))
    print(f"catalog: {len(extent)} items in {time.perf_counter() - t:.0f} s", flush=True)
    return root


def _item_lines(root: Path) -> Iterator[dict]:
    with open(root / "items.ndjson") as fh:
        for line in fh:
            yield json.loads(line)


def _footprints(root: Path) -> tuple[list, np.ndarray]:
    """(footprints, cloud cover) of every catalog item, read once (not the items)."""
    from shapely.geometry import shape

    feet, cloud = [], []
    for d in _item_lines(root):
        feet.append(shape(d["geometry"]))
        cloud.append(d["properties"]["eo:cloud_cover"])
    return feet, np.asarray(cloud, np.float64)


def _expected(feet: list, cloud: np.ndarray, geometry) -> np.ndarray:
    """(N,) bool: the items a correct search returns (footprint meets the region, cloud cover
    <= the limit)."""
    import shapely

    shapely.prepare(geometry)
    return np.asarray(shapely.intersects(feet, geometry)) & (cloud <= MAX_CLOUD)


def _write_selected(root: Path, keep: np.ndarray, out: Path) -> None:
    """The catalog's lines where ``keep`` (streamed, copied as they are) to ``out``."""
    with open(root / "items.ndjson") as src, atomic_path(out) as tmp, open(tmp, "w") as dst:
        for line, k in zip(src, keep, strict=True):
            if k:
                dst.write(line)


def _search(name: str, url: str, out: Path) -> int:
    """Child process: the whole year's search over ``name``; items to ``out`` (JSON Lines)."""
    from aoi import load_region
    from pipeline.stac.search import SearchConfig, search_scenes

    region = load_region(name)
    scfg = SearchConfig(profile="custom", stac_url=url, max_cloud=MAX_CLOUD)
    t = time.perf_counter()
    result = search_scenes(region.geometry, dt.date(YEAR, 1, 1), dt.date(YEAR, 12, 31), scfg)
    seconds = time.perf_counter() - t
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        for it in result.items:
            fh.write(json.dumps(it.to_dict(), separators=(",", ":")) + "\n")
    json.dump(
        {"items": len(result.items), "matched": result.matched, "search_s": seconds,
         "page_size": scfg.page_size, "split_above": scfg.split_above},
        sys.stdout,
    )  # fmt: skip
    return 0


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
    from pipeline.run.provenance import host_info
    from tests.integration.pgstac import LocalPgstac

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["search"]:  # the child process of one region's search
        return _search(argv[1], argv[2], Path(argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", nargs="+", default=["luxembourg", "eu27"])
    ap.add_argument("--tile-size", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--no-search",
        nargs="*",
        default=[],
        metavar="REGION",
        help="regions whose pgstac search is skipped (EU-27 pages at ~3 s each here, ~45 min): "
        "they are planned --offline and scheduled on the items a correct search returns",
    )
    a = ap.parse_args(argv)
    machine = f"{os.cpu_count()} CPU cores, {host_info()['platform']}"
    root = _catalog(cache_dir("scale", f"eu27-{YEAR}"))
    feet, cloud = _footprints(root)
    server = LocalPgstac()
    server.start()
    rows: dict[str, dict] = {}
    try:
        t = time.perf_counter()
        server.load_catalog(root)
        load_s = time.perf_counter() - t
        print(f"pgstac: {len(feet)} items loaded in {load_s:.0f} s", flush=True)
        for name in a.regions:
            keep = _expected(feet, cloud, load_region(name).geometry)
            expect = int(keep.sum())
            searched = name not in a.no_search
            plan_args = ["--stac-url", server.url] if searched else ["--offline"]
            if searched:
                items_file = root / f"search-{name}.ndjson"
                out, _, search_mb = _child(
                    [sys.executable, "-m", "tests.integration.bench_scale", "search", name,
                     server.url, str(items_file)]
                )  # fmt: skip
                found = json.loads(out)
            else:
                items_file = root / f"expected-{name}.ndjson"
                _write_selected(root, keep, items_file)
                found = {"items": expect, "matched": None, "search_s": None, "page_size": 1}
                search_mb = None
            _, plan_s, plan_mb = _child(
                [sys.executable, "-m", "pipeline", "-q", "plan", "--region", name, "--year",
                 str(YEAR), *plan_args, "--tile-size", str(a.tile_size),
                 "--plan-out", str(root / f"plan-{name}.json")]
            )  # fmt: skip
            out, _, sched_mb = _child(
                [sys.executable, "-m", "pipeline.bench.scale", name, str(items_file),
                 "--tile-size", str(a.tile_size), "--workers", str(a.workers)]
            )  # fmt: skip
            sched = json.loads(out)
            rows[name] = {
                "items_found": found["items"],
                "items_matched": found["matched"],
                "items_expected": expect,
                "search_s": found["search_s"],
                "search_peak_mb": search_mb,
                # one page per page_size items of each searched part (months when split)
                "pages_min": math.ceil(found["items"] / found["page_size"]) if searched else None,
                "searched": searched,
                "plan_s": plan_s,
                "plan_peak_mb": plan_mb,
                **sched,
                "driver_peak_mb": sched_mb,
            }
            print(json.dumps(rows[name]), flush=True)
            if found["items"] != expect:
                raise SystemExit(f"{name}: the search returned {found['items']} of {expect} items")
    finally:
        server.stop()
    entries = []
    for name, r in rows.items():
        notes = {**r, "catalog_items": len(feet), "pgstac_load_s": load_s, "machine": machine}
        entries += [
            Entry(f"scale_schedule_tasks_per_s_{name}", r["tasks_per_s"], "tasks/s",
                  device="scheduling", threads=a.workers, notes=notes),
            Entry(f"scale_driver_peak_mb_{name}", r["driver_peak_mb"], "MB",
                  device="scheduling", notes={"tiles": r["tiles"], "items": r["items"]}),
            Entry(f"scale_work_order_bytes_{name}", r["work_order_bytes_mean"], "bytes",
                  device="scheduling",
                  notes={"max": r["work_order_bytes_max"],
                         "inlined_mean": r["inlined_work_order_bytes_mean"],
                         "inlined_max": r["inlined_work_order_bytes_max"], "pickled": True}),
        ]  # fmt: skip
        if r["searched"]:
            entries += [
                Entry(f"scale_search_s_{name}", r["search_s"], "s", device="pgstac",
                      notes={"items": r["items_found"], "pages_min": r["pages_min"],
                             "peak_mb": r["search_peak_mb"]}),
                Entry(f"scale_plan_s_{name}", r["plan_s"], "s", device="pgstac",
                      notes={"peak_mb": r["plan_peak_mb"]}),
            ]  # fmt: skip
        else:
            entries.append(
                Entry(f"scale_plan_offline_s_{name}", r["plan_s"], "s", device="cpu",
                      notes={"peak_mb": r["plan_peak_mb"], "tile_size": a.tile_size})
            )  # fmt: skip
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
