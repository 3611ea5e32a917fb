"""Seconds per stage of a mapping run, in one shape for ``run`` (measured) and ``plan`` (predicted).

Both ``run.json`` and ``plan.json`` carry ``stages``: for each name in :data:`STAGES` the wall
seconds it adds to the run and the core-seconds it occupies, plus their totals. The driver's
stages (``search``, ``backend``, ``prepare``, ``calibrate``, ``publish``, ``other``) run on the
driver, one core each; the tile stages (``model``, ``load``, ``composite``, ``infer``, ``write``)
run on the workers, their wall share being their worker-seconds over the worker slots used.
``schedule`` is the tile phase's wall time beyond that (task start-up, imports in the workers,
uneven tiles). :func:`compare_plan_to_run` sets a plan beside a run: |plan - run| / run per stage
and in total (the target of issue 26: at most 0.25 each).

Pure arithmetic over dicts; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DRIVER_STAGES",
    "STAGES",
    "TILE_STAGES",
    "StageRates",
    "compare_plan_to_run",
    "predict_stages",
    "run_stages",
    "tile_cpu_seconds",
    "tile_phase_s",
]

#: Stages of the driver process, in run order (one core each).
DRIVER_STAGES = ("search", "backend", "prepare", "calibrate", "publish", "other")
#: Stages of each tile task on a worker (``model``: building the model, once per worker).
TILE_STAGES = ("model", "load", "composite", "infer", "write")
#: Every stage name ``run.json`` and ``plan.json`` record, in run order.
STAGES = ("search", "backend", "prepare", "calibrate", *TILE_STAGES, "schedule", "publish", "other")
#: A stage is judged (its error counts towards the target) when it makes at least this share of
#: the run's total wall time or core-seconds; smaller ones are recorded but are mostly noise.
JUDGED_SHARE = 0.05


def _stages(wall: Mapping[str, float], core: Mapping[str, float], slots: int) -> dict[str, Any]:
    wall_s = {s: float(wall.get(s, 0.0)) for s in STAGES}
    core_s = {s: float(core.get(s, 0.0)) for s in STAGES}
    return {
        "wall_s": wall_s,
        "core_s": core_s,
        "total_wall_s": sum(wall_s.values()),
        "total_core_s": sum(core_s.values()),
        "slots": slots,
    }


def tile_cpu_seconds(tile: Mapping[str, Any]) -> dict[str, float]:
    """A tile's CPU seconds per tile stage (its worker process's ``time.process_time``, all its
    threads), or its wall seconds where the tile has no CPU times (a run of an older s2lc).

    ``load`` and ``composite`` are timed together on the CPU (``cpu_seconds["read"]``: the
    reader's threads interleave them) and split here in the ratio of their wall seconds.
    """
    wall = {s: float(tile.get("seconds", {}).get(s, 0.0)) for s in TILE_STAGES}
    cpu = tile.get("cpu_seconds")
    if not cpu:
        return wall
    read = float(cpu.get("read", 0.0))
    both = wall["load"] + wall["composite"]
    share = wall["load"] / both if both > 0 else 1.0
    return {
        "model": float(cpu.get("model", 0.0)),
        "load": read * share,
        "composite": read * (1.0 - share),
        "infer": float(cpu.get("infer", 0.0)),
        "write": float(cpu.get("write", 0.0)),
    }


def run_stages(seconds: Mapping[str, float], tile_stats: list[dict], slots: int) -> dict[str, Any]:
    """A run's stages from ``run.json``'s ``seconds`` and this run's ``tile_stats``.

    :param seconds: the driver's timings (``search``, ``backend``, ``prepare``, ``calibrate``,
        ``tiles_wall``, ``publish``, ``publish_cells``, ``postprocess``, ``total``; seconds).
    :param tile_stats: per tile ``{"seconds": {"model", "load", "composite", "infer", "write"}}``
        (wall) and ``"cpu_seconds"`` (:func:`tile_cpu_seconds`).
    :param slots: worker processes (or threads) that ran tiles at once.
    :returns: ``{"wall_s": {stage: s}, "core_s": {stage: s}, "total_wall_s", "total_core_s",
        "slots", "cpu_share"}`` (``slots``: the tiles that ran at once; ``cpu_share``: the tile
        stages' CPU seconds over their wall seconds, about 1 when each worker had a core to itself
        and below 1 when other processes took a share of the cores);
        ``total_wall_s`` equals ``seconds["total"]`` (``other`` is what no stage accounts for).

    A tile stage's core-seconds are its CPU seconds (what it occupied of the cores, whatever else
    ran on the machine); its wall seconds the tiles' wall seconds over the slots used.
    """
    wall: dict[str, float] = {}
    core: dict[str, float] = {}
    for s in ("search", "backend", "prepare", "calibrate"):
        wall[s] = core[s] = float(seconds.get(s, 0.0))
    wall["publish"] = core["publish"] = float(
        seconds.get("publish", 0.0) + seconds.get("publish_cells", 0.0)
    )
    used = max(1, min(int(slots), len(tile_stats) or 1))
    cpu = [tile_cpu_seconds(t) for t in tile_stats]
    for s in TILE_STAGES:
        core[s] = float(sum(c[s] for c in cpu))
        wall[s] = float(sum(t.get("seconds", {}).get(s, 0.0) for t in tile_stats)) / used
    tiles_wall = float(seconds.get("tiles_wall", 0.0))
    wall["schedule"] = core["schedule"] = max(0.0, tiles_wall - sum(wall[s] for s in TILE_STAGES))
    known = sum(wall.values()) - sum(wall[s] for s in TILE_STAGES) - wall["schedule"] + tiles_wall
    total = float(seconds.get("total", known))
    wall["other"] = core["other"] = max(0.0, total - known)
    out = _stages(wall, core, used)
    tile_wall = sum(wall[s] for s in TILE_STAGES) * used
    out["cpu_share"] = sum(core[s] for s in TILE_STAGES) / tile_wall if tile_wall > 0 else None
    return out


@dataclass(frozen=True)
class StageRates:
    """Measured costs of each stage, apart: fixed per map, per worker, per tile, per unit.

    All in core-seconds, measured by ``make bench ARGS="--only plan"`` (bench runs made before
    the run they predict, on the machine named in ``sources``):

    Attributes:
        fixed_s: per map, driver stages (``search``, ``backend``, ``prepare``, ``publish``,
            ``other``) and ``schedule``.
        publish_s_per_mpx: publishing per output Mpx, on top of its fixed cost.
        model_s_per_worker: building the model in a worker (once per worker used).
        worker_fixed_s: per worker and stage, its first use (``load``, ``composite``: per
            scene): opening each scene's file, compiling the inference graph, ...
        tile_s_per_unit: per stage: ``load``, ``composite`` per Mpx x scene; ``infer`` per
            valid Mpx; ``write`` per Mpx.
        tile_s_per_tile: per stage, what every tile costs whatever its size (``load``,
            ``composite``: per scene, e.g. opening a file's window and setting up its warp;
            ``write``: opening the store, writing the tile's rasters): fitted apart from the
            per-unit costs over tiles of different sizes, so a plan for larger or smaller tiles
            than the bench's does not scale fixed costs with pixels (empty in older entries).
        backend: the precision/backend the rates were measured with (``--backend auto``'s pick).
        batch: the CPU batch they were measured with (None: the model's default).
        tile_size: the tile edge (px) they were measured with.
        sources: where each figure comes from (entry, machine, date).
        task_gap_s: wall seconds a worker waits between one tile task and its next (the
            result's trip to the scheduler, the next work order's); ``fixed_s["schedule"]`` is
            the tile phase's start and end beyond the tasks (once per run).
    """

    fixed_s: dict[str, float]
    publish_s_per_mpx: float
    model_s_per_worker: float
    worker_fixed_s: dict[str, float]
    tile_s_per_unit: dict[str, float]
    backend: str | None = None
    batch: int | None = None
    tile_size: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    task_gap_s: float = 0.0
    tile_s_per_tile: dict[str, float] = field(default_factory=dict)


def tile_phase_s(tile_s: list[float], first_s: float, slots: int, gap_s: float = 0.0) -> float:
    """Wall seconds from the first tile task's start to the last one's end (the makespan).

    :param tile_s: each tile's seconds on a worker, in submission order.
    :param first_s: what a worker's first tile costs on top (building the model, opening the
        files, compiling the inference graph).
    :param slots: workers that run tiles at once (one tile each).
    :param gap_s: a worker's wait between two of its tiles.

    Greedy list scheduling (Graham 1966): each tile goes to the worker free first, as Dask's
    scheduler hands a freed worker the next task. With few tiles per worker the last ones leave
    workers idle while others finish: the tile phase is longer than worker-seconds / slots.
    Pure.
    """
    free = [0.0] * max(1, min(int(slots), len(tile_s) or 1))
    started = [False] * len(free)
    for s in tile_s:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += (gap_s if started[i] else first_s) + s
        started[i] = True
    return max(free) if tile_s else 0.0


def predict_stages(
    rates: StageRates,
    *,
    tile_shapes: list[tuple[int, int]],
    valid_mpx: float,
    scenes_per_pixel: float,
    slots: int,
    measures_backend: bool,
    calibration_tiles: list[tuple[int, int]] = (),
    calibration_samples: int = 0,
    read_wait_s_per_mpx_scene: float = 0.0,
) -> dict[str, Any]:
    """The plan's stages, in :func:`run_stages`'s shape.

    :param tile_shapes: (rows, cols) of every output tile.
    :param valid_mpx: output pixels inside the region (what the model classifies), Mpx.
    :param scenes_per_pixel: scenes read per output pixel.
    :param slots: tiles that run at once (worker processes).
    :param measures_backend: ``--backend auto`` (the run times the backends first).
    :param calibration_tiles: (rows, cols) of the reference sample's tiles (empty: no
        calibration), each classifying ``calibration_samples`` pixels; they run in parallel.
    :param read_wait_s_per_mpx_scene: seconds a worker waits on the object store per Mpx and
        scene (requests x latency / requests in flight, :func:`pipeline.run.plan.estimate`'s
        network model); the reader's threads overlap it with decoding, so a tile's load takes
        the longer of the two.

    Tile stages: a cost per tile plus ``rate x units``, plus each worker's first-use cost per stage (its
    first tile opens every scene's file, compiles the inference graph, ...: measured, these are
    paid once per worker, not per tile). Seconds are CPU seconds, each worker on a core of its
    own: wall = core-seconds / slots used. ``schedule``: the tile phase's fixed start and end,
    plus what :func:`tile_phase_s` (tiles run whole, one per worker, with ``task_gap_s`` between
    two on a worker) adds to worker-seconds / slots.
    """
    f, per, first = rates.fixed_s, rates.tile_s_per_unit, rates.worker_fixed_s
    each = rates.tile_s_per_tile
    scenes = max(scenes_per_pixel, 0.0)

    def tile_cost(shape: tuple[int, int], infer_mpx: float) -> dict[str, float]:
        mpx = shape[0] * shape[1] / 1e6
        decode = each.get("load", 0.0) + per.get("load", 0.0) * mpx
        return {
            "load": scenes * max(decode, read_wait_s_per_mpx_scene * mpx),
            "composite": scenes * (each.get("composite", 0.0) + per.get("composite", 0.0) * mpx),
            "infer": each.get("infer", 0.0) + per.get("infer", 0.0) * infer_mpx,
            "write": each.get("write", 0.0) + per.get("write", 0.0) * mpx,
        }

    once = {
        "load": scenes * first.get("load", 0.0),
        "composite": scenes * first.get("composite", 0.0),
        "infer": first.get("infer", 0.0),
        "write": first.get("write", 0.0),
    }
    all_mpx = sum(r * c for r, c in tile_shapes) / 1e6
    costs = [
        tile_cost(s, valid_mpx * (s[0] * s[1] / 1e6) / all_mpx if all_mpx else 0.0)
        for s in tile_shapes
    ]
    used = max(1, min(slots, len(tile_shapes) or 1))
    calibrates = bool(calibration_tiles and calibration_samples)
    # with calibration, the sample's tasks come first on the workers and pay their first uses
    # (the model, reading, compositing, inference; not writing: the sample writes nothing)
    paid = {"model", "load", "composite", "infer"} if calibrates else set()
    core: dict[str, float] = {"model": 0.0 if calibrates else rates.model_s_per_worker * used}
    for s in ("load", "composite", "infer", "write"):
        core[s] = sum(c[s] for c in costs) + (0.0 if s in paid else once[s] * used)
    wall = {s: core[s] / used for s in core}
    first = core["model"] / used + sum(v for s, v in once.items() if s not in paid)
    makespan = tile_phase_s([sum(c.values()) for c in costs], first, used, rates.task_gap_s)
    spread = sum(wall[s] for s in TILE_STAGES)
    wall["schedule"] = core["schedule"] = f.get("schedule", 0.0) + max(0.0, makespan - spread)
    for s in ("search", "prepare", "other"):
        wall[s] = core[s] = f.get(s, 0.0)
    wall["backend"] = core["backend"] = f.get("backend", 0.0) if measures_backend else 0.0
    wall["publish"] = core["publish"] = f.get("publish", 0.0) + rates.publish_s_per_mpx * all_mpx
    if calibrates:
        # the sample's tiles are loaded, composited and classified at the sampled pixels only
        cal = [tile_cost(s, calibration_samples / 1e6) for s in calibration_tiles]
        cal_used = max(1, min(slots, len(cal)))
        sampled = sum(c["load"] + c["composite"] + c["infer"] for c in cal)
        first_uses = rates.model_s_per_worker + once["load"] + once["composite"] + once["infer"]
        core["calibrate"] = sampled + first_uses * cal_used
        wall["calibrate"] = core["calibrate"] / cal_used
    return _stages(wall, core, used)


#: Differences below this many seconds are the timers' noise: the error is 0 (a stage the run
#: skips takes microseconds, and any plan of 0 s would otherwise be "100 % off").
NEGLIGIBLE_S = 0.1


def _error(plan: float, run: float) -> float | None:
    if abs(plan - run) < NEGLIGIBLE_S:
        return 0.0
    return abs(plan - run) / run if run > 0 else None


def compare_plan_to_run(
    plan_json: Mapping[str, Any], run_json: Mapping[str, Any]
) -> dict[str, Any]:
    """Errors of a plan against the run it predicts: |plan - run| / run.

    :param plan_json: ``plan.json``'s content (its ``stages``, :func:`predict_stages`).
    :param run_json: ``run.json``'s content (its ``stages``, :func:`run_stages`).
    :returns: ``wall_error`` and ``core_s_error`` (totals), ``stages``: per stage ``plan_wall_s``,
        ``run_wall_s``, ``plan_core_s``, ``run_core_s``, ``wall_error``, ``core_s_error`` (0 when
        they differ by less than :data:`NEGLIGIBLE_S`, None when the run spent 0 s there and the
        plan more) and ``judged`` (the stage makes at
        least :data:`JUDGED_SHARE` of the run's wall time or core-seconds); ``max_judged_error``:
        the largest error of the totals and of the judged stages.
    :raises ValueError: either side has no ``stages`` (a plan without the bench's stage rates, or a
        run written before stages were recorded).
    """
    for what, doc in (("plan", plan_json), ("run", run_json)):
        if "stages" not in doc:
            raise ValueError(f"the {what} JSON has no 'stages' (seconds per stage)")
    p, r = plan_json["stages"], run_json["stages"]
    rw, rc = float(r["total_wall_s"]), float(r["total_core_s"])
    stages: dict[str, dict[str, Any]] = {}
    for s in STAGES:
        pw, pc = p["wall_s"].get(s, 0.0), p["core_s"].get(s, 0.0)
        w, c = r["wall_s"].get(s, 0.0), r["core_s"].get(s, 0.0)
        stages[s] = {
            "plan_wall_s": pw,
            "run_wall_s": w,
            "plan_core_s": pc,
            "run_core_s": c,
            "wall_error": _error(pw, w),
            "core_s_error": _error(pc, c),
            "judged": (rw > 0 and w >= JUDGED_SHARE * rw) or (rc > 0 and c >= JUDGED_SHARE * rc),
        }
    wall_error = _error(float(p["total_wall_s"]), rw)
    core_error = _error(float(p["total_core_s"]), rc)
    judged = [wall_error, core_error] + [
        e
        for v in stages.values()
        if v["judged"]
        for e in (v["wall_error"], v["core_s_error"])
        if e is not None
    ]
    return {
        "wall_error": wall_error,
        "core_s_error": core_error,
        "plan_wall_s": float(p["total_wall_s"]),
        "run_wall_s": rw,
        "plan_core_s": float(p["total_core_s"]),
        "run_core_s": rc,
        "stages": stages,
        "max_judged_error": max(
            (e for e in judged if e is not None and not math.isnan(e)), default=None
        ),
    }
