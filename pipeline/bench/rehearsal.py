"""The pixel-real rehearsal of a continental run (issue 26, 6b): faults survived, the map unchanged.

:func:`rehearse` builds a region in EPSG:3035 that crosses a UTM zone border (12 E: zones 32 and
33) and the edge of two 100 km EEA cells, draws provider-shaped COGs for it with the demo
generator (one scene set per UTM zone, :func:`generate_multizone_catalog`), and maps it twice
through the real ``run`` command (a gridded run, a LocalCluster of worker processes):

1. **faulty**: the COGs come from the loopback object store (:mod:`pipeline.testing.object_store`)
   with ``latency_s`` per request, ``fault_rate`` transient faults (429, 503, connection resets,
   truncated bodies) and one object answering 404 forever: a band of the clearest scene. The
   items come from a real STAC API (``rustac serve``). ``kills`` worker processes are SIGKILLed
   at random points of the run (after a random number of finished tiles). ``plan`` runs for the
   same region first; its plan.json lies next to the run's run.json.
2. **clean**: the same items with local file hrefs, without the scene whose object is missing, no
   latency, no faults, no kills.

``identical`` is True when every array of the two runs is equal (each cell's COGs, every
written chunk of the Zarr store) and the faulty run's ledger records the lost scene as
``read_failure`` with ``permanent: true``. The model is the deterministic stand-in encoder
(:mod:`pipeline.testing.standin_run`): GPU inference is measured on its own.

``python -m pipeline.bench.rehearsal [--small] [--out DIR]`` runs it and merges its entries into
bench/results.json (``make rehearsal``; ``--small`` is the integration test's size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.run.plan import STANDIN_STAGE_RATES_ENTRY

_log = logging.getLogger(__name__)

__all__ = [
    "FULL",
    "SMALL",
    "RehearsalConfig",
    "compare_outputs",
    "rehearsal_entries",
    "rehearse",
]

#: A point of EPSG:3035 on the 12 E meridian (UTM 32 | 33) and on the 2,800 km northing line
#: (EEA cells 100kmE44N27 | 100kmE44N28): a square centred here crosses both.
CENTRE_3035 = (4_469_450.0, 2_800_000.0)


@dataclass(frozen=True)
class RehearsalConfig:
    """What the rehearsal maps and what goes wrong while it does."""

    size_m: float = 20_000.0
    """Edge of the square region in metres (EPSG:3035), centred on ``centre_3035``."""
    dates_per_zone: int = 15
    """Acquisitions per UTM zone; each zone's scenes cover the region, so a pixel sees twice this."""
    tile_size: int = 500
    """``run --tile-size`` (pixels)."""
    workers: int = 2
    """Local worker processes."""
    latency_s: float = 0.03
    """Object store time to first byte per request (0.03: object storage in the same region)."""
    fault_rate: float = 0.05
    """Share of requests with a transient fault (429, 503, reset, truncated body)."""
    kills: int = 2
    """Worker processes SIGKILLed during the faulty run."""
    seed: int = 0
    """Seed of the scenes, the faults and the kills."""
    timeout_s: float = 3600.0
    """Limit of each run (seconds)."""
    fault_kinds: tuple[str, ...] = ("429", "503", "reset", "truncate")
    centre_3035: tuple[float, float] = CENTRE_3035
    """The region's centre (EPSG:3035 metres)."""

    @property
    def bounds_3035(self) -> tuple[float, float, float, float]:
        x, y = self.centre_3035
        h = self.size_m / 2
        return (x - h, y - h, x + h, y + h)


#: ``make rehearsal``: 20 x 20 km (400 km^2), 30 acquisitions.
FULL = RehearsalConfig()
#: The integration test's: 1.2 x 1.2 km, 30 acquisitions, small tiles (several per cell).
SMALL = RehearsalConfig(size_m=1_200.0, tile_size=80, timeout_s=900.0)

#: The stand-in's stage rates (``make bench ARGS="--only plan"``, ``plan_stage_rates_standin``):
#: runs on the rehearsal's read path (EPSG:3035 cells warped from two UTM zones, through the
#: loopback object store without latency or faults) but not on its data: squares of these edges
#: (m) at these tile sizes (px), 30 km north of the rehearsal's centre (the same zone border), on
#: a catalog of their own (another seed). Two tile sizes let each stage's cost per tile be
#: fitted apart from its cost per pixel, and the larger is :data:`FULL`'s: a warp's cost does not
#: scale with the window's pixels from small tiles (each source block is decoded whole), so rates
#: fitted on 40-80 px tiles put the rehearsal's reading at 7x its cost (measured 2026-12-08).
RATE_RUNS = ((7_500.0, 250), (7_500.0, 500))
RATE_CENTRE_3035 = (CENTRE_3035[0], CENTRE_3035[1] + 30_000.0)
RATE_SEED = 7

_LAYERS = ("classes.tif", "confidence.tif", "valid_obs.tif")


@dataclass
class RunRecord:
    """One ``run`` as the rehearsal saw it."""

    out: Path
    returncode: int
    wall_s: float
    stderr_tail: str
    kills: list[dict] = field(default_factory=list)


def _region_yaml(path: Path, cfg: RehearsalConfig) -> Path:
    path.write_text(
        "name: rehearsal\ncrs: auto\nresolution: 10\nstac: earth-search\n"
        f"bounds: {list(cfg.bounds_3035)}\nbounds_crs: EPSG:3035\n"
        "period: {start: 2023-01-01, end: 2023-12-31}\n"
    )
    return path


def _dates(n: int) -> list[dt.datetime]:
    """``n`` acquisition times spread over 2023 (every 24 days from 10 January)."""
    step = max(1, 360 // max(n, 1))
    return [dt.datetime(2023, 1, 10, 10, 30, tzinfo=dt.UTC) + dt.timedelta(days=step * i)
            for i in range(n)]  # fmt: skip


def _clearest(items: list[dict], data: Path) -> tuple[dict, str]:
    """The item with the least cloud cover and the store path of its red band (B04)."""
    item = min(items, key=lambda f: (f["properties"].get("eo:cloud_cover", 100.0), f["id"]))
    href = item["assets"]["red"]["href"]
    from pipeline.stac.hrefs import local_path

    rel = Path(local_path(href)).resolve().relative_to(data.resolve()).as_posix()
    return item, rel


def _write_catalog(folder: Path, items: list[dict], collection: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    shutil.copy(collection, folder / "collection.json")
    return folder


def _remote_catalog(folder: Path, items: list[dict], data: Path, store_url: str) -> Path:
    """``items`` of the catalog in ``data`` with their hrefs on the object store at ``store_url``
    (which serves ``data``), written as a catalog into ``folder``."""
    remote = json.loads(json.dumps(items).replace(data.resolve().as_uri(), store_url))
    return _write_catalog(folder, remote, data / "collection.json")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    kids = [int(p) for p in out.stdout.split()]
    return kids + [g for k in kids for g in _children(k)]


def _workers(pid: int) -> list[int]:
    """The Dask worker processes under ``pid`` (multiprocessing's spawned children)."""
    found = []
    for p in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes():
                found.append(p)
        except OSError:
            pass
    return found


def _command(sub: str, region: Path, stac_url: str, out: Path, cfg: RehearsalConfig) -> list[str]:
    return [
        sys.executable, "-m", "pipeline.testing.standin_run", sub, "--region", str(region),
        "--year", "2023", "--model", "timesenclip", "--untrained", "--backend", "fp32",
        "--stac-url", stac_url, "--max-cloud", "100", "--tile-size", str(cfg.tile_size),
        "--workers", str(cfg.workers), "--allow-large", "--no-progress", "--out", str(out),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{root}:{path}" if path else root}


def _run(cmd: list[str], out: Path, cfg: RehearsalConfig, kill_after: list[int]) -> RunRecord:
    """Run ``cmd``; SIGKILL one worker each time the finished tiles reach a count in
    ``kill_after``; returns the record (the kills with their time and tile count)."""
    markers = out / ".s2lc" / "tiles"
    log = out.parent / f"{out.name}.log"  # the run's stderr, to watch while it runs
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    rng = random.Random(cfg.seed)
    kills: list[dict] = []
    pending = sorted(kill_after)
    try:
        while proc.poll() is None:
            if time.perf_counter() - t0 > cfg.timeout_s:
                proc.kill()
                with open(log, "a") as err:
                    err.write(f"\nrehearsal: no end after {cfg.timeout_s:.0f} s: killed\n")
                break
            done = len(list(markers.glob("*.json"))) if markers.is_dir() else 0
            if pending and done >= pending[0]:
                workers = _workers(proc.pid)
                if workers:
                    victim = rng.choice(workers)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        kills.append({"pid": victim, "after_tiles": done,
                                      "at_s": round(time.perf_counter() - t0, 1)})  # fmt: skip
                        _log.info("killed worker %d after %d tiles", victim, done)
                    except ProcessLookupError:
                        continue
                    pending.pop(0)
            time.sleep(0.2)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - t0
    return RunRecord(out, proc.returncode, wall, _log_tail(log), kills)


def _chunk_slices(arr: Any, key: str) -> tuple[slice, ...]:
    idx = [int(k) for k in key.split("/")]
    return tuple(slice(i * c, min((i + 1) * c, n))
                 for i, c, n in zip(idx, arr.chunks, arr.shape, strict=True))  # fmt: skip


def _store_differences(a: Path, b: Path) -> list[str]:
    """Arrays of two Zarr v3 stores that differ, compared on every chunk either store wrote."""
    import zarr

    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names_a = {n for n, _ in ga.arrays()}
    names_b = {n for n, _ in gb.arrays()}
    diff = sorted(names_a ^ names_b)
    for name in sorted(names_a & names_b):
        xa, xb = ga[name], gb[name]
        if xa.shape != xb.shape or xa.dtype != xb.dtype:
            diff.append(name)
            continue
        keys = set()
        for root in (a, b):
            base = root / name / "c"
            if base.is_dir():
                keys |= {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
        if not keys and xa.ndim == 1:  # coordinates: small, compare whole
            keys = {"all"}
        for key in sorted(keys):
            sl = (slice(None),) * xa.ndim if key == "all" else _chunk_slices(xa, key)
            if not np.array_equal(xa[sl], xb[sl], equal_nan=xa.dtype.kind == "f"):
                diff.append(name)
                break
    return diff


def compare_outputs(a: Path, b: Path) -> list[str]:
    """What differs between two gridded run outputs: each cell's layer COGs (arrays, georeference)
    and the Zarr store (``map.zarr``, every written chunk). Returns ``[]`` when identical."""
    import rasterio

    diff: list[str] = []
    cells_a = sorted(p.name for p in (a / "cells").iterdir() if p.is_dir())
    cells_b = sorted(p.name for p in (b / "cells").iterdir() if p.is_dir())
    if cells_a != cells_b:
        return [f"cells {cells_a} != {cells_b}"]
    for code in cells_a:
        for layer in _LAYERS:
            with rasterio.open(a / "cells" / code / layer) as x, \
                    rasterio.open(b / "cells" / code / layer) as y:  # fmt: skip
                if x.transform != y.transform or x.crs != y.crs or x.shape != y.shape:
                    diff.append(f"{code}/{layer} georeference")
                elif not np.array_equal(x.read(), y.read(), equal_nan=True):
                    diff.append(f"{code}/{layer}")
    diff += [f"map.zarr/{n}" for n in _store_differences(a / "map.zarr", b / "map.zarr")]
    return diff


#: Log lines that say nothing about a failure: odc-stac's per-read messages and the empty
#: "Error in sys.excepthook" reports a worker prints when a faulty run's cluster shuts down.
_NOISE = ("Error in sys.excepthook", "Original exception was", "Failed to load ")


def _log_tail(log: Path, chars: int = 4000) -> str:
    """The last ``chars`` characters of ``log`` without blank and :data:`_NOISE` lines."""
    keep = [ln for ln in log.read_text(errors="replace").splitlines()
            if ln.strip() and not ln.startswith(_NOISE)]  # fmt: skip
    return "\n".join(keep)[-chars:]


def _why(run: RunRecord) -> str:
    """Why ``run`` failed: its tile failures from ``run.json`` (error, where it was raised,
    attempts) where it wrote one, and the last lines of its log that are not a worker's teardown
    noise; the log's path for the rest."""
    lines = []
    report = run.out / "run.json"
    if report.is_file():
        try:
            failures = (json.loads(report.read_text()).get("tiles") or {}).get("failures") or {}
        except ValueError:
            failures = {}
        for tid, f in sorted(failures.items()):
            lines.append(f"tile {tid}: {f.get('error_kind')}, {f.get('message')} "
                         f"(attempts {f.get('attempts')}, at {f.get('where') or '?'})")  # fmt: skip
    lines += run.stderr_tail.splitlines()[-12:]
    lines.append(f"(whole log: {run.out.parent / (run.out.name + '.log')})")
    return "\n".join(lines)


def _kill_points(cfg: RehearsalConfig, n_tiles: int) -> list[int]:
    """Finished-tile counts after which a worker is killed: drawn from the first 3/4 of the run."""
    hi = max(cfg.kills + 1, (3 * n_tiles) // 4)
    return sorted(random.Random(cfg.seed).sample(range(1, hi), cfg.kills))


def _tiles_of(plan: dict) -> int:
    """The run's tile count as ``plan`` predicts it (``output.tiles``)."""
    return int((plan.get("output") or {}).get("tiles") or 0)


def rehearse(cfg: RehearsalConfig, root: Path) -> dict[str, Any]:
    """Run the rehearsal in ``root`` (created; its runs are ``root/faulty`` and ``root/clean``).

    Returns the measurements: ``identical``, the faulty run's ``wall_s``, the differences, the
    lost scene and its ledger entry, the kills, the store's request and fault counts, the region's
    area, acquisitions and cells, and the paths of ``plan.json`` and ``run.json``.

    Raises:
        RuntimeError: a run or the plan exits non-zero (its stderr's tail in the message).
    """
    from aoi import load_region
    from pipeline.testing.demo.multizone import generate_multizone_catalog
    from pipeline.testing.object_store import StoreConfig, serve_store
    from pipeline.testing.stac_server import serve

    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    region_file = _region_yaml(root / "region.yaml", cfg)
    region = load_region(region_file)
    t = time.perf_counter()
    data = generate_multizone_catalog(
        root / "data", region.geometry, dates=_dates(cfg.dates_per_zone), seed=cfg.seed
    )
    generate_s = time.perf_counter() - t
    items = json.loads((data / "items.json").read_text())["features"]
    lost, lost_rel = _clearest(items, data)
    _log.info("%d items; the object %s of %s is missing", len(items), lost_rel, lost["id"])

    store_cfg = StoreConfig(ttfb_s=cfg.latency_s, fault_rate=cfg.fault_rate,
                            fault_kinds=cfg.fault_kinds, seed=cfg.seed,
                            missing={lost_rel})  # fmt: skip
    faulty_out, clean_out = root / "faulty", root / "clean"
    with serve_store(data, store_cfg) as store:
        cat = _remote_catalog(root / "catalog-remote", items, data, store.url)
        with serve(cat) as url:
            plan_cmd = _command("plan", region_file, url, faulty_out, cfg)
            plan_cmd += ["--latency-ms", str(cfg.latency_s * 1000),
                         "--stage-rates", STANDIN_STAGE_RATES_ENTRY,
                         "--plan-out", str(faulty_out / "plan.json")]  # fmt: skip
            store.config.fault_rate = 0.0  # the plan searches only; its HEADs are not the run's
            p = subprocess.run(plan_cmd, env=_env(), capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"plan failed: {p.stderr[-2000:]}")
            plan = json.loads((faulty_out / "plan.json").read_text())
            store.config.fault_rate = cfg.fault_rate
            store.counter.reset()
            kill_after = _kill_points(cfg, _tiles_of(plan))
            faulty = _run(_command("run", region_file, url, faulty_out, cfg), faulty_out, cfg,
                          kill_after)  # fmt: skip
            counts = store.counter
            store_counts = {"requests": counts.requests, "range_requests": counts.range_requests,
                            "bytes": counts.bytes, "not_found": counts.not_found,
                            "faults": dict(counts.faults),
                            "max_in_flight": counts.max_in_flight}  # fmt: skip
    if faulty.returncode != 0:
        raise RuntimeError(f"the faulty run exited {faulty.returncode}: {_why(faulty)}")

    local = [f for f in items if f["id"] != lost["id"]]
    cat = _write_catalog(root / "catalog-local", local, data / "collection.json")
    with serve(cat) as url:
        clean = _run(_command("run", region_file, url, clean_out, cfg), clean_out, cfg, [])
    if clean.returncode != 0:
        raise RuntimeError(f"the clean run exited {clean.returncode}: {_why(clean)}")

    report = json.loads((faulty_out / "run.json").read_text())
    entry = ((report.get("scene_ledger") or {}).get("scenes") or {}).get(lost["id"], {})
    accounted = entry.get("reason") == "read_failure" and entry.get("permanent") is True
    differences = compare_outputs(faulty_out, clean_out)
    cells = sorted(p.name for p in (faulty_out / "cells").iterdir() if p.is_dir())
    zones = sorted({f["properties"].get("proj:epsg") for f in items})
    return {
        "identical": not differences and accounted and len(faulty.kills) == cfg.kills,
        "outputs_identical": not differences,
        "differences": differences,
        "ledger_accounts_lost_scene": accounted,
        "lost_scene": {
            "id": lost["id"],
            "object": lost_rel,
            "cloud_cover": lost["properties"].get("eo:cloud_cover"),
            "ledger": entry,
        },  # fmt: skip
        "wall_s": faulty.wall_s,
        "clean_wall_s": clean.wall_s,
        "generate_s": generate_s,
        "kills": faulty.kills,
        "kill_after_tiles": kill_after,
        "store": store_counts,
        "area_km2": round(float(region.area_km2()), 3),
        "acquisitions": len({f["properties"]["datetime"] for f in items}),
        "items": len(items),
        "utm_epsg": zones,
        "cells": cells,
        "plan_json": str(faulty_out / "plan.json"),
        "run_json": str(faulty_out / "run.json"),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


def standin_rate_runs(work: Path, timed: Any) -> list[tuple[RehearsalConfig, dict[str, Any]]]:
    """The stand-in's rate runs (:data:`RATE_RUNS`, after a warm-up run of the first) in ``work``:
    each as (its config, its ``run.json``). ``timed(cmd, key)`` runs a command (the bench's
    timer, which records its seconds and the load under ``key``).

    Raises:
        RuntimeError: a run exits non-zero (from ``timed``).
    """
    from aoi import load_region
    from pipeline.testing.demo.multizone import generate_multizone_catalog
    from pipeline.testing.object_store import serve_store
    from pipeline.testing.stac_server import serve

    cfgs = [replace(FULL, size_m=size, tile_size=tile, centre_3035=RATE_CENTRE_3035, kills=0,
                    fault_rate=0.0, latency_s=0.0, seed=RATE_SEED)
            for size, tile in RATE_RUNS]  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    largest = max(cfgs, key=lambda c: c.size_m)
    region = load_region(_region_yaml(work / "largest.yaml", largest))
    data = generate_multizone_catalog(work / "data", region.geometry,
                                      dates=_dates(largest.dates_per_zone), seed=RATE_SEED)  # fmt: skip
    items = json.loads((data / "items.json").read_text())["features"]
    out: list[tuple[RehearsalConfig, dict[str, Any]]] = []
    with serve_store(data) as store:
        cat = _remote_catalog(work / "catalog", items, data, store.url)
        with serve(cat) as url:
            for i, cfg in enumerate([cfgs[0], *cfgs]):
                key = "warm_up" if i == 0 else f"run_{i - 1}"
                region_file = _region_yaml(work / f"{key}.yaml", cfg)
                run_out = work / key
                timed(_command("run", region_file, url, run_out, cfg), key)
                if i:
                    out.append((cfg, json.loads((run_out / "run.json").read_text())))
    return out


def plan_entries(plan_json: Path, run_json: Path) -> list:
    """The plan's errors against the faulty rehearsal run (issue 26, point 5):
    ``plan_wall_error``, ``plan_core_s_error`` and ``plan_stage_errors``
    (:func:`pipeline.run.stages.compare_plan_to_run`); none, with a warning, when the plan has no
    stages (no ``plan_stage_rates`` in the results file: run ``bench --only plan`` first)."""
    from pipeline.bench.plan_accuracy import error_entries
    from pipeline.run.stages import compare_plan_to_run

    plan, run = json.loads(plan_json.read_text()), json.loads(run_json.read_text())
    try:
        cmp = compare_plan_to_run(plan, run)
    except ValueError as exc:
        _log.warning("no plan errors for the rehearsal: %s", exc)
        return []
    notes = {k: cmp[k] for k in ("plan_wall_s", "run_wall_s", "plan_core_s", "run_core_s")}
    notes["rates"] = (
        "plan_stage_rates_standin of the results file: the stand-in encoder's own rates, "
        "measured by bench processes before the run"
    )
    return error_entries(cmp, "", notes)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rehearsal_entries(result: dict[str, Any], load_before: list[float]) -> list:
    """Bench entries: ``rehearsal_identical`` (1/0) and ``rehearsal_wall_s`` (the faulty run)."""
    from pipeline.bench.results import Entry

    run_json = json.loads(Path(result["run_json"]).read_text())
    notes = {
        **{
            k: result[k]
            for k in (
                "area_km2",
                "acquisitions",
                "items",
                "utm_epsg",
                "cells",
                "kills",
                "store",
                "lost_scene",
                "differences",
                "ledger_accounts_lost_scene",
                "config",
                "plan_json",
                "run_json",
            )
        },  # fmt: skip
        "load_before": load_before,
        "load_after": _load(),
        "stand_in_encoder": "pipeline.testing.encoder.FakeEncoder (not the model)",
    }
    return [
        Entry("rehearsal_identical", float(result["identical"]), "bool", notes=notes),
        Entry(
            "rehearsal_wall_s",
            result["wall_s"],
            "s",
            notes={
                "clean_run_wall_s": result["clean_wall_s"],
                "generate_s": result["generate_s"],
                "load_before": load_before,
                "load_after": notes["load_after"],
                "area_km2": result["area_km2"],
                "run_seconds": run_json.get("seconds"),
            },  # fmt: skip
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="the integration test's size (1.2 km)")
    p.add_argument("--size-km", type=float, help="region edge in km (default 20: 400 km^2)")
    p.add_argument("--tile-size", type=int, help="run --tile-size")
    p.add_argument(
        "--fault-kinds",
        help=f"comma-separated transient faults (default {','.join(FULL.fault_kinds)})",
    )
    p.add_argument("--kills", type=int, help="workers killed during the faulty run (default 2)")
    p.add_argument("--out", type=Path, default=Path("outputs/rehearsal"), help="work folder")
    p.add_argument("--results", type=Path, default=Path("bench/results.json"))
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = SMALL if a.small else FULL
    if a.size_km:
        cfg = replace(cfg, size_m=a.size_km * 1000)
    if a.tile_size:
        cfg = replace(cfg, tile_size=a.tile_size)
    if a.kills is not None:
        cfg = replace(cfg, kills=a.kills)
    if a.fault_kinds:
        cfg = replace(cfg, fault_kinds=tuple(a.fault_kinds.split(",")))
    load_before = _load()
    from pipeline.bench.results import Entry, table, write_results

    try:
        result = rehearse(cfg, a.out)
    except RuntimeError as exc:  # a run failed or hung: the rehearsal's answer is 0, with why
        notes = {"error": str(exc)[-2000:], "config": asdict(cfg), "load_before": load_before,
                 "load_after": _load(), "work_folder": str(a.out)}  # fmt: skip
        write_results([Entry("rehearsal_identical", 0.0, "bool", notes=notes)], a.results)
        print(f"error: the rehearsal failed: {str(exc)[-500:]}", file=sys.stderr)
        return 1
    (a.out / "rehearsal.json").write_text(json.dumps(result, indent=2, default=str))
    entries = rehearsal_entries(result, load_before)
    entries += plan_entries(Path(result["plan_json"]), Path(result["run_json"]))
    write_results(entries, a.results)
    print(table(entries))
    print(json.dumps({k: result[k] for k in ("identical", "differences", "kills", "store")}))
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
