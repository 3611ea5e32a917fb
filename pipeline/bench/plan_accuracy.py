"""Does ``plan`` predict ``make map``'s mapping step? Stage rates first, then plan, then the run.

``make bench ARGS="--only plan"`` does, in this order, in separate processes:

1. the demo's few-shot head, as ``make map`` fits it (``demo truth``, ``sample-points``,
   ``extract-points``, ``probe``: :func:`pipeline.commands.demo.run_map`'s steps 1-4);
2. **stage rates** from two bench runs (after a warm-up run, :func:`rate_entry`) on boxes
   inside the demo region other than the whole region (0.25 and 1 km², the map's settings otherwise): each tile stage fitted as a first-use
   cost per worker + a cost per unit (least squares over the tiles of both runs, in the workers'
   CPU seconds: the machine's other processes inflate wall seconds, not those), fixed per-map
   costs of the driver's stages, publishing's fixed part (its per-Mpx part is the bench's COG
   mosaic at scale), building the model once per worker. Written to ``bench/results.json``
   (``plan_stage_rates``) before step 3;
3. ``plan`` with the mapping step's arguments (reads only those rates);
4. the mapping step itself, ``run --region demo --untrained --seed 0 --head HEAD --tile-size
   100`` as ``make map`` runs it;
5. :func:`pipeline.run.stages.compare_plan_to_run` of the two: ``plan_wall_error_demo``,
   ``plan_core_s_error_demo``, ``plan_stage_errors_demo`` (|plan - run| / run).

The rates never see the run they predict: they come from other processes on other boxes, run
before it. The machine's load average is recorded around each step, and each run's
``cpu_share`` (its tile stages' CPU seconds over their wall seconds): the plan predicts a
machine of its own, so on a shared one the run's wall time exceeds the plan by about
1 / ``cpu_share`` while core-seconds still agree.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench.results import Entry, write_results
from pipeline.run.plan import STAGE_RATES_ENTRY, STANDIN_STAGE_RATES_ENTRY
from pipeline.run.stages import (
    DRIVER_STAGES,
    TILE_STAGES,
    compare_plan_to_run,
    tile_cpu_seconds,
)

_log = logging.getLogger(__name__)

#: The rate runs' boxes (W, S, E, N in degrees), inside the demo region, 0.25 and 1 km².
RATE_BOXES = (
    (10.3470, 48.2060, 10.3537, 48.2105),
    (10.3500, 48.2080, 10.3634, 48.2170),
)
#: The demo's seed, as ``make map`` (``demo map --seed 0``).
SEED = "0"


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _cli(argv: list[str], log: dict[str, Any], key: str, module: str = "pipeline") -> None:
    """Run ``python -m MODULE ARGV`` in a fresh process; its seconds and the load go to ``log``."""
    _timed([sys.executable, "-m", module, *argv], log, key)


def _timed(cmd: list[str], log: dict[str, Any], key: str) -> None:
    """Run ``cmd``; its seconds and the load before and after go to ``log[key]``.

    :raises RuntimeError: it exits non-zero (its stderr's tail in the message).
    """
    t, before = time.perf_counter(), _load()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ}, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    log[key] = {"seconds": time.perf_counter() - t, "load_before": before, "load_after": _load()}


def fit_head(work: Path, log: dict[str, Any]) -> Path:
    """The demo's few-shot head, fitted as ``make map`` fits it (steps 1-4); returns its path."""
    ref = work / "reference"
    truth, train, table, head = (
        ref / "truth.tif",
        ref / "training_points.gpkg",
        ref / "training_points.npz",
        ref / "head.npz",
    )
    _cli(["demo", "truth", "--out", str(truth)], log, "truth")
    _cli(["sample-points", "--strata", str(truth), "--labels", str(truth), "--per-class", "40",
          "--seed", SEED, "--id-prefix", "t", "--out", str(train)], log, "sample_points")  # fmt: skip
    _cli(["extract-points", "--points", str(train), "--year", "2023", "--profile", "demo",
          "--tile-size", "256", "--cluster-px", "256", "--out", str(table)], log, "extract_points")  # fmt: skip
    _cli(["probe", "--points", str(table), "--label-column", "label", "--legend", "demo",
          "--untrained", "--seed", SEED, "--test-fraction", "0", "--out", str(head)], log, "probe")  # fmt: skip
    return head


def map_argv(head: Path, out: Path) -> list[str]:
    """``make map``'s mapping step (:func:`pipeline.commands.demo.run_map`, step 5)."""
    return ["run", "--region", "demo", "--untrained", "--seed", SEED, "--head", str(head),
            "--tile-size", "100", "--out", str(out)]  # fmt: skip


#: A tile whose model took longer than this was its worker's first (later ones hit the cache).
FIRST_TILE_MODEL_S = 0.05


#: The column subsets :func:`_fit_terms` tries, in order of preference where fits are equally
#: good (first use, per tile, per unit: 0, 1, 2): per unit before per tile, fewer terms first.
_SUBSETS = ((0, 2), (2,), (0, 1, 2), (1, 2), (0, 1), (1,), (0,), ())


def _fit_terms(first: list[bool], x: list[float], y: list[float]) -> tuple[float, float, float]:
    """(a, b, c) >= 0 of y = a [first tile of its worker] + b + c x (first use, per tile, per
    unit) by non-negative least squares: every subset of the three terms is fitted by ordinary
    least squares and the best fit whose coefficients are all >= 0 wins (ties, as when every tile
    has the same size and the per-tile and per-unit terms cannot be told apart, go to the earlier
    subset of :data:`_SUBSETS`). Pure."""
    f, xa, ya = (np.asarray(v, float) for v in (first, x, y))
    if len(ya) == 0:
        return 0.0, 0.0, 0.0
    cols = np.stack([f, np.ones_like(xa), xa], axis=1)
    tol = 1e-9 * (1.0 + float(ya @ ya))
    best_res, best = float(ya @ ya), [0.0, 0.0, 0.0]  # no term at all: the last resort
    for subset in _SUBSETS[:-1]:
        sol, *_ = np.linalg.lstsq(cols[:, list(subset)], ya, rcond=None)
        if (sol < -1e-12).any():
            continue
        coef = [0.0, 0.0, 0.0]
        for i, v in zip(subset, sol, strict=True):
            coef[i] = max(0.0, float(v))
        err = cols @ np.asarray(coef) - ya
        if float(err @ err) < best_res - tol:
            best_res, best = float(err @ err), coef
    return best[0], best[1], best[2]


def fit_stage_rates(reports: list[dict[str, Any]], publish_s_per_mpx: float) -> dict[str, Any]:
    """Fixed and per-unit costs of every stage from bench runs' ``run.json`` (runs of different
    areas, at least one with several tiles on a worker). Pure; the result holds
    :class:`pipeline.run.stages.StageRates`' fields.

    :param publish_s_per_mpx: publishing's per-Mpx cost, measured at scale (the bench's COG
        mosaic, ``mgrs_tile_year_cpu_min``): the small runs' areas are too close to fit it.
    """
    tiles = [t for r in reports for t in r["tile_stats"]]
    first = [t["seconds"].get("model", 0.0) > FIRST_TILE_MODEL_S for t in tiles]
    cpu = [tile_cpu_seconds(t) for t in tiles]  # what each stage occupied of a core
    mpx = [t["pixels"] / 1e6 for t in tiles]
    per_unit, per_tile, once = {}, {}, {}
    for s in ("load", "composite"):  # per scene: its file's first use, each window, its pixels
        y = [c[s] / max(1, t["scenes"]) for c, t in zip(cpu, tiles, strict=True)]
        once[s], per_tile[s], per_unit[s] = _fit_terms(first, mpx, y)
    once["infer"], per_tile["infer"], per_unit["infer"] = _fit_terms(
        first, [t["valid_pixels"] / 1e6 for t in tiles], [c["infer"] for c in cpu]
    )
    once["write"], per_tile["write"], per_unit["write"] = _fit_terms(
        first, mpx, [c["write"] for c in cpu]
    )
    models = [r["stages"]["core_s"]["model"] / r["stages"]["slots"] for r in reports]
    map_fixed = {
        s: float(np.mean([r["stages"]["wall_s"][s] for r in reports]))
        for s in DRIVER_STAGES
        if s not in ("publish", "calibrate")
    }
    gap, map_fixed["schedule"] = schedule_costs(reports)
    map_fixed["publish"] = max(
        0.0,
        float(
            np.mean(
                [
                    r["stages"]["wall_s"]["publish"]
                    - publish_s_per_mpx * sum(t["pixels"] for t in r["tile_stats"]) / 1e6
                    for r in reports
                ]
            )
        ),
    )
    precision = reports[-1].get("precision") or {}
    return {
        "fixed_s": map_fixed,
        "publish_s_per_mpx": publish_s_per_mpx,
        "model_s_per_worker": float(np.mean(models)),
        "worker_fixed_s": once,
        "tile_s_per_unit": per_unit,
        "tile_s_per_tile": per_tile,
        "backend": precision.get("resolved"),
        "batch": precision.get("batch"),
        "tile_size": reports[-1]["tiles"]["tile_size"],
        "task_gap_s": gap,
    }


def task_gaps(tile_stats: list[dict]) -> list[float]:
    """Wall seconds each worker waited between two of its tiles (``wall_span``s, per worker in
    start order); empty for tiles without spans (an older s2lc)."""
    by_worker: dict[Any, list[list[float]]] = {}
    for t in tile_stats:
        if "wall_span" not in t or "worker" not in t:
            return []
        by_worker.setdefault(t["worker"], []).append(t["wall_span"])
    return [
        max(0.0, b[0] - a[1])
        for spans in by_worker.values()
        for a, b in zip(sorted(spans), sorted(spans)[1:])
    ]


def schedule_costs(reports: list[dict[str, Any]]) -> tuple[float, float]:
    """(wait between two tiles on a worker, the tile phase's fixed start and end), seconds, from
    bench runs' ``run.json``: the tile phase less its busiest worker's time inside tasks is the
    start, the end and the waits between that worker's tasks (the plan adds the imbalance of
    uneven tiles back, :func:`pipeline.run.stages.tile_phase_s`). Pure."""
    gaps = [g for r in reports for g in task_gaps(r["tile_stats"])]
    gap = float(np.mean(gaps)) if gaps else 0.0
    fixed = []
    for r in reports:
        tiles, tiles_wall = r["tile_stats"], r["seconds"]["tiles_wall"]
        if not all("worker" in t for t in tiles):  # an older s2lc: beyond worker-seconds / slots
            st = r["stages"]
            longest = max(sum(t["seconds"].values()) for t in tiles)
            spread = sum(st["wall_s"][s] for s in TILE_STAGES)
            fixed.append(max(0.0, st["wall_s"]["schedule"] - max(0.0, longest - spread)))
            continue
        busy: dict[Any, float] = {}  # each worker's time inside tasks and between them
        for t in tiles:
            w = t["worker"]
            busy[w] = busy.get(w, -gap) + gap + sum(t["seconds"].values())
        fixed.append(max(0.0, tiles_wall - max(busy.values())))
    return gap, float(np.mean(fixed))


def rate_entry(
    work: Path, head: Path | None, log: dict[str, Any], results: Path, standin: bool = False
) -> Entry:
    """Two bench runs on :data:`RATE_BOXES` with the map's settings -> ``plan_stage_rates``.

    :param standin: the rehearsal's settings instead (:mod:`pipeline.testing.standin_run`: the
        deterministic stand-in encoder in place of the model, backend fp32, zero-shot with the
        reference calibration, no head) -> ``plan_stage_rates_standin``, which
        ``plan --stage-rates plan_stage_rates_standin`` reads (the rehearsal's plan).
    """
    key = "standin_" if standin else ""
    if standin:  # on the rehearsal's read path, through the loopback store
        from pipeline.bench.rehearsal import standin_rate_runs

        runs = standin_rate_runs(
            work / "standin-rates", lambda cmd, k: _timed(cmd, log, f"{key}rates_{k}")
        )
        reports = [r for _, r in runs]
        where = [{"region_m_3035": c.size_m, "centre_3035": list(c.centre_3035),
                  "tile_size": c.tile_size} for c, _ in runs]  # fmt: skip
    else:
        reports = _demo_rate_runs(work, head, log)
        where = [{"bbox": list(box), "tile_size": 100} for box in RATE_BOXES]
    rates = fit_stage_rates(reports, _mosaic_s_per_mpx(results))
    return Entry(
        STANDIN_STAGE_RATES_ENTRY if standin else STAGE_RATES_ENTRY,
        rates["tile_s_per_unit"]["infer"],
        "core-s per valid Mpx (inference; fixed and per-unit costs of every stage in notes)",
        dtype=str(rates["backend"]),
        batch=rates["batch"],
        threads=_slots(),
        notes={
            "model": "timesenclip",
            "encoder": "the stand-in (pipeline.testing.encoder.FakeEncoder), as the rehearsal"
            if standin
            else "timesenclip",
            "rates": rates,
            "runs": [
                {
                    **w,
                    "tiles": len(r["tile_stats"]),
                    "pixels": sum(t["pixels"] for t in r["tile_stats"]),
                    "backend": (r.get("precision") or {}).get("resolved"),
                    "total_s": r["seconds"]["total"],
                    "cpu_share": r["stages"].get("cpu_share"),
                }
                for w, r in zip(where, reports, strict=True)
            ],
            "load": {k: v for k, v in log.items() if k.startswith(f"{key}rates_")},
            "method": (
                "two runs on the rehearsal's read path (EPSG:3035 cells from two UTM zones through "
                "the loopback store, no latency or faults) on data of their own, 30 km north of "
                "the rehearsal, at two tile sizes"
                if standin
                else "two runs on boxes inside the demo region (not the run predicted)"
            )
            + " after a warm-up run, the predicted run's settings otherwise; tile stages fitted "
            "as first use per worker + per tile + per unit over their tiles, in the workers' CPU "
            "seconds (process_time), not "
            "wall seconds, so other processes on the machine do not inflate them; the wait "
            "between two tiles on a worker and the tile phase's start and end from the tiles' "
            "spans",
        },
    )


def _demo_rate_runs(work: Path, head: Path | None, log: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's rate runs: :data:`RATE_BOXES` of the demo region with the map's settings (a
    warm-up run of the first box before them); their ``run.json``."""

    def argv(box: tuple[float, ...], out: Path) -> list[str]:
        return ["run", "--bbox", *map(str, box), "--profile", "demo", "--year", "2023",
                "--untrained", "--seed", SEED, "--head", str(head), "--tile-size", "100",
                "--out", str(out)]  # fmt: skip

    # Warm-up, not fitted: the first run of a checkout compiles the reader's numba kernels into
    # their on-disk cache (measured: ~4.5 CPU-s more in its first tile's read), which the run
    # predicted, coming after, never pays.
    _cli(argv(RATE_BOXES[0], work / "warm-up"), log, "rates_warm_up")
    reports = []
    for i, box in enumerate(RATE_BOXES):
        out = work / f"rates-{i}"
        _cli(argv(box, out), log, f"rates_run_{i}")
        reports.append(json.loads((out / "run.json").read_text()))
    return reports


def _mosaic_s_per_mpx(results: Path) -> float:
    """The COG mosaic's core-seconds per output Mpx at scale (``mgrs_tile_year_cpu_min``, section
    ``projection``); 0 when that entry is missing (publishing then counts as fixed only)."""
    for e in json.loads(results.read_text()) if results.exists() else []:
        if e.get("name") == "mgrs_tile_year_cpu_min":
            return float((e.get("notes") or {}).get("mosaic_core_s_per_mpx") or 0.0)
    return 0.0


def _slots() -> int:
    from pipeline.run.cluster import ClusterConfig

    return ClusterConfig(kind="local").planned_workers() or 1


def plan_entries(results: Path) -> list[Entry]:
    """Rates, then ``plan``, then the run, then the comparison (see the module docstring).

    :param results: the ``bench/results.json`` the rates are written to and ``plan`` reads.
    """
    log: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="s2lc-bench-plan-") as tmp:
        work = Path(tmp)
        _log.info("plan: the demo's few-shot head (make map's steps 1-4)")
        head = fit_head(work, log)
        _log.info("plan: stage rates from two bench runs on other boxes")
        rates = rate_entry(work, head, log, results)
        _log.info("plan: the stand-in encoder's stage rates (the rehearsal's plan reads them)")
        standin = rate_entry(work, None, log, results, standin=True)
        write_results([rates, standin], results)  # plan reads the rates from here
        out = work / "map"
        _log.info("plan: plan, then make map's mapping step")
        _cli(
            ["plan", *map_argv(head, out)[1:], "--worker-kind", "cpu", "--rates", str(results),
             "--plan-out", str(work / "plan.json")],
            log,
            "plan",
        )  # fmt: skip
        _cli(map_argv(head, out), log, "run")
        plan = json.loads((work / "plan.json").read_text())
        run = json.loads((out / "run.json").read_text())
    cmp = compare_plan_to_run(plan, run)
    notes = {
        "plan_wall_s": cmp["plan_wall_s"],
        "run_wall_s": cmp["run_wall_s"],
        "plan_core_s": cmp["plan_core_s"],
        "run_core_s": cmp["run_core_s"],
        "plan_backend": plan["stages"]["backend"],
        "run_backend": (run.get("precision") or {}).get("resolved"),
        # the run's tile stages: CPU seconds / wall seconds (1: each worker had a core to
        # itself; below 1: other processes took a share, and the run's wall time grew by 1/share
        # where the plan, made for a machine of its own, cannot know it)
        "run_cpu_share": run["stages"].get("cpu_share"),
        "rates_cpu_share": [r.get("cpu_share") for r in rates.notes["runs"]],
        "command": "python -m pipeline " + " ".join(map_argv(Path("HEAD"), Path("OUT"))),
        "load_average": {k: [v["load_before"], v["load_after"]] for k, v in log.items()},
        "step_seconds": {k: v["seconds"] for k, v in log.items()},
        "rates": f"{STAGE_RATES_ENTRY}, measured just before in other processes on other boxes",
    }
    return [rates, standin, *error_entries(cmp, "_demo", notes)]


def error_entries(cmp: dict[str, Any], suffix: str, notes: dict[str, Any]) -> list[Entry]:
    """``plan_wall_error{suffix}``, ``plan_core_s_error{suffix}`` and
    ``plan_stage_errors{suffix}`` (the largest error of the judged stages and the totals, every
    stage in its notes) from :func:`~pipeline.run.stages.compare_plan_to_run`'s ``cmp``."""
    stages = {
        s: {k: v[k] for k in ("plan_wall_s", "run_wall_s", "wall_error", "core_s_error", "judged")}
        for s, v in cmp["stages"].items()
    }
    unit = "|plan - run| / run"
    return [
        Entry(f"plan_wall_error{suffix}", cmp["wall_error"], unit, notes=notes),
        Entry(f"plan_core_s_error{suffix}", cmp["core_s_error"], unit, notes=notes),
        Entry(
            f"plan_stage_errors{suffix}",
            cmp["max_judged_error"],
            unit + ", the largest of the judged stages (>= 5 % of the run) and totals",
            notes={"stages": stages, **notes},
        ),
    ]
