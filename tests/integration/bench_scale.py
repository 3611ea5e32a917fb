"""``make bench-scale``: search, plan and scheduling at EU-27 scale, without pixels.

1. A metadata-only Sentinel-2 L2A catalog of EU-27 for one year (every MGRS tile touching the
   region, the real revisit, the demo generator's item JSON: :mod:`pipeline.testing.demo.metadata`),
   generated once into the cache.
2. Loaded into the real pgstac of the integration tests (:class:`tests.integration.pgstac.LocalPgstac`).
3. Per region (one country, then ``eu27``): ``run`` itself from the whole year's search to the
   last tile scheduled, with a stand-in tile task that reads nothing
   (:func:`pipeline.bench.scale.run_standin`: search time, driver peak memory, tasks per second;
   every generated item that should match is found), ``plan`` (time, driver peak memory), and
   the scheduling alone on the items a correct search returns (:func:`pipeline.bench.scale.schedule_only`:
   work-order size).

Results go to ``bench/results.json`` (``scale_*`` entries). Run as
``python -m tests.integration.bench_scale [--regions luxembourg eu27] [--tile-size 2000]
[--no-search eu27]`` (``--no-search``: that region is planned offline and not run through the
search). ``python -m tests.integration.bench_scale run-eu27`` runs only ``run`` over EU-27
(:func:`run_eu27`, the rehearsal's part (a)).
"""

from __future__ import annotations

import argparse
import json
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


def _run_standin(name: str, url: str, tile_size: int, workers: int) -> tuple[dict, float]:
    """``run`` from the search to the last tile, in a child process (its peak RSS is the
    driver's): :func:`pipeline.bench.scale.run_standin`'s measurements and the wall seconds."""
    out, seconds, _ = _child(
        [sys.executable, "-m", "pipeline.bench.scale", "run", name, "--stac-url", url,
         "--year", str(YEAR), "--tile-size", str(tile_size), "--workers", str(workers),
         "--max-cloud", str(MAX_CLOUD)]
    )  # fmt: skip
    return json.loads(out), seconds


def _run_entries(name: str, r: dict, notes: dict) -> list:
    """The bench entries of one :func:`pipeline.bench.scale.run_standin` of region ``name``."""
    from pipeline.bench.results import Entry
    from pipeline.stac.search import SearchConfig

    scfg = SearchConfig()
    notes = {**notes, "scenes": r["scenes"], "tiles": r["tiles"], "tile_size": r["tile_size"],
             "workers": r["workers"], "seconds": r["seconds"],
             "inputs_file_mb": r["inputs_file_mb"], "page_size": scfg.page_size,
             "search_pages": r["search_pages"],
             "search_process_peak_mb": r["search_process_peak_mb"],
             "parallel": scfg.parallel, "path": "pipeline.run.driver.execute, stand-in tile task"}  # fmt: skip
    return [
        Entry(f"scale_search_s_{name}", r["search_s"], "s", device="pgstac", notes=notes),
        Entry(f"scale_driver_peak_mb_{name}_run", r["driver_peak_mb"], "MB",
              device="scheduling", notes=notes),
        Entry(f"scale_run_tasks_per_s_{name}", r["tasks_per_s"], "tasks/s",
              device="scheduling", threads=r["workers"], notes=notes),
    ]  # fmt: skip


def run_eu27(
    tile_size: int = 2000,
    workers: int = 2,
    results: Path | None = RESULTS,
    stac_url: str | None = None,
) -> dict:
    """The rehearsal's part (a): the whole of EU-27 for a year, metadata only, through ``run``.

    Generates the catalog once (cached), starts the local pgstac, loads it (``stac_url``: a
    pgstac already serving that catalog instead), and runs ``run``
    from the search to the last tile scheduled with the stand-in task, in a child process
    (:func:`pipeline.bench.scale.run_standin`). Checks that the run found every item a correct
    search returns and that every tile ran; writes ``scale_search_s_eu27``,
    ``scale_driver_peak_mb_eu27_run`` and ``scale_run_tasks_per_s_eu27`` to ``results`` (None:
    nothing written). Returns the run's measurements plus ``items_expected``,
    ``pgstac_load_s`` and ``load_average`` (1, 5, 15 min, at the end).

    :raises SystemExit: the run failed or found another number of items than expected.
    """
    from aoi import load_region
    from pipeline.base.paths import cache_dir
    from pipeline.bench.results import write_results
    from tests.integration.pgstac import LocalPgstac

    root = _catalog(cache_dir("scale", f"eu27-{YEAR}"))
    feet, cloud = _footprints(root)
    expect = int(_expected(feet, cloud, load_region("eu27").geometry).sum())
    del feet
    if stac_url is not None:
        load_s = None
        r, wall = _run_standin("eu27", stac_url, tile_size, workers)
    else:
        server = LocalPgstac()
        server.start()
        try:
            t = time.perf_counter()
            server.load_catalog(root)
            load_s = time.perf_counter() - t
            r, wall = _run_standin("eu27", server.url, tile_size, workers)
        finally:
            server.stop()
    r.update(items_expected=expect, pgstac_load_s=load_s, wall_s=wall,
             load_average=list(os.getloadavg()))  # fmt: skip
    if r["scenes"] != expect or r["tiles_done"] != r["tiles"]:
        raise SystemExit(
            f"eu27: run found {r['scenes']} of {expect} items, ran {r['tiles_done']} of "
            f"{r['tiles']} tiles"
        )
    if results is not None:
        notes = {"catalog_items": len(cloud), "pgstac_load_s": load_s,
                 "load_average_end": r["load_average"], "items_expected": expect}  # fmt: skip
        write_results(_run_entries("eu27", r, notes), results)
    return r


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
    if argv[:1] == ["run-eu27"]:  # [--stac-url URL]: a pgstac already serving the catalog
        url = argv[2] if argv[1:2] == ["--stac-url"] else None
        print(json.dumps(run_eu27(stac_url=url)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", nargs="+", default=["luxembourg", "eu27"])
    ap.add_argument("--tile-size", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--no-search",
        nargs="*",
        default=[],
        metavar="REGION",
        help="regions not run through the search: planned --offline and scheduled on the items "
        "a correct search returns",
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
            items_file = root / f"expected-{name}.ndjson"
            _write_selected(root, keep, items_file)
            if searched:
                run, _ = _run_standin(name, server.url, a.tile_size, a.workers)
                found = {"items": run["scenes"], "search_s": run["search_s"]}
            else:
                run, found = None, {"items": expect, "search_s": None}
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
                "items_expected": expect,
                "search_s": found["search_s"],
                "run": run,
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
            entries += _run_entries(
                name,
                r["run"],
                {
                    "pgstac_load_s": load_s,
                    "machine": machine,
                    "load_average_end": list(os.getloadavg()),
                },
            )
            entries.append(
                Entry(f"scale_plan_s_{name}", r["plan_s"], "s", device="pgstac",
                      notes={"peak_mb": r["plan_peak_mb"]})
            )  # fmt: skip
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
