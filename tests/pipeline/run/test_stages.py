"""Seconds per stage, one shape for ``run`` and ``plan`` (issue 26, point 5): the run's stages
from its timings, the plan's from measured rates (fixed costs apart from per-pixel ones), and the
comparison of the two."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from pipeline.bench.plan_accuracy import fit_stage_rates, schedule_costs, task_gaps
from pipeline.run.stages import (
    STAGES,
    TILE_STAGES,
    StageRates,
    compare_plan_to_run,
    predict_stages,
    run_stages,
    tile_cpu_seconds,
    tile_phase_s,
)

RATES = StageRates(
    fixed_s={
        "search": 0.2,
        "backend": 6.0,
        "prepare": 0.1,
        "other": 4.0,
        "schedule": 3.0,
        "publish": 0.5,
    },  # fmt: skip
    publish_s_per_mpx=20.0,
    model_s_per_worker=1.5,
    worker_fixed_s={"load": 0.02, "composite": 0.001, "infer": 0.3, "write": 0.2},
    tile_s_per_unit={"load": 3.0, "composite": 0.5, "infer": 4000.0, "write": 20.0},
    backend="bf16",
    tile_size=100,
)


def _seconds(tile_s: float, tiles: int) -> tuple[dict, list[dict]]:
    stats = [
        {
            "seconds": {
                "model": 1.0 if i < 2 else 0.0,
                "load": 2.0,
                "composite": 0.1,
                "infer": tile_s,
                "write": 0.5,
            }
        }  # fmt: skip
        for i in range(tiles)
    ]
    seconds = {"search": 0.3, "backend": 5.0, "prepare": 0.2, "calibrate": 0.0,
               "tiles_wall": tiles / 2 * (tile_s + 2.6) + 1.0 + 4.0, "publish": 1.5}  # fmt: skip
    seconds["total"] = sum(seconds.values()) + 2.0
    return seconds, stats


def test_run_and_plan_record_the_same_stage_names():
    seconds, stats = _seconds(40.0, 4)
    run = run_stages(seconds, stats, slots=2)
    plan = predict_stages(
        RATES, tile_shapes=[(100, 100)] * 4, valid_mpx=0.04, scenes_per_pixel=31, slots=2,
        measures_backend=True,
    )  # fmt: skip
    for st in (run, plan):
        assert tuple(st["wall_s"]) == STAGES and tuple(st["core_s"]) == STAGES
        assert st["total_wall_s"] == pytest.approx(sum(st["wall_s"].values()))
        assert st["total_core_s"] == pytest.approx(sum(st["core_s"].values()))
        assert st["slots"] == 2
    # the run's stages add up to its measured total; tile stages are worker-seconds
    assert run["total_wall_s"] == pytest.approx(seconds["total"])
    assert run["core_s"]["infer"] == 160.0 and run["wall_s"]["infer"] == 80.0
    assert run["core_s"]["model"] == 2.0 and run["wall_s"]["schedule"] == pytest.approx(4.0)
    assert run["wall_s"]["other"] == pytest.approx(2.0)


def test_plan_fixed_costs_do_not_scale_with_area():
    def plan(tiles: int) -> dict:
        return predict_stages(
            RATES, tile_shapes=[(100, 100)] * tiles, valid_mpx=0.01 * tiles,
            scenes_per_pixel=31, slots=2, measures_backend=True,
        )  # fmt: skip

    small, big = plan(4), plan(400)
    for s in ("search", "backend", "prepare", "other", "schedule", "model"):
        assert big["wall_s"][s] == small["wall_s"][s] > 0, s
    assert big["core_s"]["model"] == small["core_s"]["model"] == 2 * 1.5  # once per worker
    # each worker's first use (opening the scenes, compiling, ...) once, the pixels per pixel
    once = {"load": 31 * 0.02, "composite": 31 * 0.001, "infer": 0.3, "write": 0.2}
    for s, first in once.items():
        per_pixel = small["core_s"][s] - 2 * first
        assert per_pixel > 0, s
        assert big["core_s"][s] == pytest.approx(2 * first + 100 * per_pixel), s
    assert small["core_s"]["infer"] == pytest.approx(2 * 0.3 + 4000 * 0.04)
    # publishing: fixed + per Mpx, so 100x the area costs less than 100x
    assert small["wall_s"]["publish"] == pytest.approx(0.5 + 20 * 0.04)
    assert big["wall_s"]["publish"] == pytest.approx(0.5 + 20 * 4.0)
    # a forced backend is not measured by the run
    forced = predict_stages(
        RATES, tile_shapes=[(100, 100)], valid_mpx=0.01, scenes_per_pixel=31, slots=2,
        measures_backend=False,
    )  # fmt: skip
    assert forced["wall_s"]["backend"] == 0


def test_calibration_is_modelled_and_builds_the_model_first():
    kw = dict(tile_shapes=[(100, 100)] * 4, valid_mpx=0.04, scenes_per_pixel=31, slots=2,
              measures_backend=True)  # fmt: skip
    without = predict_stages(RATES, **kw)
    with_cal = predict_stages(
        RATES, **kw, calibration_tiles=[(128, 128)] * 4, calibration_samples=2048
    )
    assert without["wall_s"]["calibrate"] == 0
    # 4 sample tiles on 2 workers: their load + composite of 128 x 128 px x 31 scenes, 2048 px
    # classified each; each worker's first uses (model, files, inference) are paid here
    per_tile = 31 * (3.0 * 0.016384 + 0.5 * 0.016384) + 4000 * 0.002048
    first = 1.5 + 31 * 0.02 + 31 * 0.001 + 0.3
    assert with_cal["core_s"]["calibrate"] == pytest.approx(4 * per_tile + 2 * first)
    assert with_cal["wall_s"]["calibrate"] == pytest.approx((4 * per_tile + 2 * first) / 2)
    assert with_cal["core_s"]["model"] == 0  # the tiles reuse the workers' model
    assert with_cal["core_s"]["infer"] == pytest.approx(4000 * 0.04)  # compiled already
    assert with_cal["core_s"]["write"] == without["core_s"]["write"]  # the sample writes none
    assert with_cal["total_wall_s"] > without["total_wall_s"]


def test_compare_plan_to_run():
    seconds, stats = _seconds(40.0, 4)
    run = {"stages": run_stages(seconds, stats, slots=2)}
    same = compare_plan_to_run(run, run)
    assert same["wall_error"] == same["core_s_error"] == same["max_judged_error"] == 0
    assert set(same["stages"]) == set(STAGES)
    # a plan that predicts inference 50 % too slow and everything else right
    plan = {"stages": run_stages(*_seconds(60.0, 4), slots=2)}
    cmp = compare_plan_to_run(plan, run)
    inf = cmp["stages"]["infer"]
    assert inf["judged"] and inf["wall_error"] == pytest.approx(0.5)
    assert inf["core_s_error"] == pytest.approx(0.5)
    assert cmp["wall_error"] == pytest.approx(40.0 / run["stages"]["total_wall_s"])
    assert cmp["core_s_error"] == pytest.approx(80.0 / run["stages"]["total_core_s"])
    assert cmp["max_judged_error"] == pytest.approx(0.5)
    assert not cmp["stages"]["search"]["judged"]  # 0.3 s of a ~100 s run: recorded, not judged
    assert cmp["stages"]["calibrate"]["wall_error"] == 0  # 0 s both: exact
    skipped = {
        "stages": {**run["stages"], "wall_s": {**run["stages"]["wall_s"], "calibrate": 8e-5}}
    }
    assert compare_plan_to_run(run, skipped)["stages"]["calibrate"]["wall_error"] == 0  # noise
    with pytest.raises(ValueError, match="plan JSON has no 'stages'"):
        compare_plan_to_run({}, run)


def _cpu_and_wall(cpu: dict[str, float], slow: float) -> dict:
    """A tile's CPU seconds per stage and its wall seconds ``slow`` times them."""
    return {
        "seconds": {s: slow * v for s, v in cpu.items()},
        "cpu_seconds": {
            "model": cpu["model"],
            "read": cpu["load"] + cpu["composite"],
            "infer": cpu["infer"],
            "write": cpu["write"],
        },  # fmt: skip
    }


def test_stage_rates_are_fitted_first_use_plus_per_unit():
    """Two runs of different areas: each tile stage's first-use cost per worker and per-pixel
    cost, publishing's fixed part beside its per-Mpx cost at scale, the driver's fixed costs.
    Fitted on CPU seconds: the second run's tiles took 1.7x their CPU seconds in wall time (a
    shared machine), which changes no rate."""

    def report(tiles: list[int], publish: float, slow: float) -> dict:
        # two workers: the first two tiles are each worker's first (they build the model)
        stats = [
            {
                "pixels": px,
                "valid_pixels": px,
                "scenes": 10,
                **_cpu_and_wall(
                    {
                        "model": 2.0 if i < 2 else 0.0,
                        "load": 10 * ((0.5 if i < 2 else 0.0) + 2.0 * px / 1e6),
                        "composite": 10 * 0.1 * px / 1e6,
                        "infer": (4.0 if i < 2 else 0.0) + 3000.0 * px / 1e6,
                        "write": (0.1 if i < 2 else 0.0) + 5.0 * px / 1e6,
                    },
                    slow,
                ),
            }  # fmt: skip
            for i, px in enumerate(tiles)
        ]
        seconds = {"search": 0.2, "backend": 4.0, "prepare": 0.1, "publish": publish,
                   "tiles_wall": 100.0, "total": 120.0}  # fmt: skip
        return {
            "seconds": seconds,
            "tile_stats": stats,
            "stages": run_stages(seconds, stats, slots=2),
            "precision": {"resolved": "bf16", "batch": 512},
            "tiles": {"tile_size": 100},
        }

    r = fit_stage_rates(
        [
            report([2500], 1.0 + 10 * 0.0025, 1.0),
            report([10000, 300, 200, 10000], 1.0 + 10 * 0.0205, 1.7),
        ],
        publish_s_per_mpx=10.0,
    )
    assert r["worker_fixed_s"]["load"] == pytest.approx(0.5)
    assert r["tile_s_per_unit"]["load"] == pytest.approx(2.0)
    assert r["worker_fixed_s"]["composite"] == pytest.approx(0, abs=1e-12)
    assert r["tile_s_per_unit"]["composite"] == pytest.approx(0.1)
    assert r["worker_fixed_s"]["infer"] == pytest.approx(4.0)
    assert r["tile_s_per_unit"]["infer"] == pytest.approx(3000.0)
    assert r["tile_s_per_unit"]["write"] == pytest.approx(5.0)
    assert r["worker_fixed_s"]["write"] == pytest.approx(0.1)
    assert r["fixed_s"]["publish"] == pytest.approx(1.0) and r["publish_s_per_mpx"] == 10.0
    assert r["fixed_s"]["backend"] == 4.0 and r["model_s_per_worker"] == 2.0  # CPU-s
    assert r["backend"] == "bf16" and r["batch"] == 512 and r["tile_size"] == 100
    assert set(TILE_STAGES) - {"model"} == set(r["tile_s_per_unit"]) == set(r["worker_fixed_s"])
    assert r["tile_s_per_tile"] == pytest.approx(dict.fromkeys(r["tile_s_per_unit"], 0.0))


def test_per_tile_costs_are_fitted_apart_from_per_pixel_costs():
    """Each window costs something whatever its size (a warp set up per scene, a tile's files
    written): fitted over tiles of two sizes, the plan for tiles 25 times larger than the
    bench's scales only the per-pixel part (a per-pixel rate alone made the rehearsal's writing
    6x too slow in the plan: 44 s planned, 7.5 s run)."""
    from pipeline.bench.plan_accuracy import _fit_terms

    px = [2500, 10000, 2500, 10000, 900, 6400]
    first = [True, True, False, False, False, False]
    y = [(0.3 if f else 0.0) + 0.05 + 4.0 * p / 1e6 for f, p in zip(first, px, strict=True)]
    assert _fit_terms(first, [p / 1e6 for p in px], y) == pytest.approx((0.3, 0.05, 4.0))
    # one size only: the two terms cannot be told apart, the per-pixel rate takes it all
    same = [0.05 + 4.0 * 0.01] * 3
    assert _fit_terms([False] * 3, [0.01] * 3, same) == pytest.approx((0.0, 0.0, 9.0))
    # never negative: a per-tile saving is no per-tile cost
    assert min(_fit_terms([False] * 3, [0.01, 0.02, 0.04], [0.0, 0.1, 0.3])) >= 0.0

    big = [(500, 500)] * 4
    kw = dict(tile_shapes=big, valid_mpx=1.0, scenes_per_pixel=10, slots=2,
              measures_backend=False)  # fmt: skip
    flat = replace(RATES, tile_s_per_unit={**RATES.tile_s_per_unit, "write": 9.0})
    split = replace(flat, tile_s_per_unit={**flat.tile_s_per_unit, "write": 4.0},
                    tile_s_per_tile={"write": 0.05})  # fmt: skip
    assert predict_stages(flat, **kw)["core_s"]["write"] == pytest.approx(
        RATES.worker_fixed_s["write"] * 2 + 9.0 * 1.0
    )
    assert predict_stages(split, **kw)["core_s"]["write"] == pytest.approx(
        RATES.worker_fixed_s["write"] * 2 + 4 * 0.05 + 4.0 * 1.0
    )


def test_object_store_waits_bound_the_load_stage():
    kw = dict(tile_shapes=[(100, 100)] * 4, valid_mpx=0.04, scenes_per_pixel=31, slots=2,
              measures_backend=False)  # fmt: skip
    fast = predict_stages(RATES, **kw)
    # 244 requests per Mpx and scene at 50 ms, 2 in flight: 6.1 s per Mpx and scene, above the
    # 3 s of decoding, so the waits make the load (each worker opens the files once as before)
    slow = predict_stages(RATES, **kw, read_wait_s_per_mpx_scene=244 * 0.050 / 2)
    assert slow["core_s"]["load"] == pytest.approx(4 * 31 * 0.01 * 6.1 + 2 * 31 * 0.02)
    assert slow["core_s"]["load"] > fast["core_s"]["load"]
    assert slow["core_s"]["infer"] == fast["core_s"]["infer"]
    quick = predict_stages(RATES, **kw, read_wait_s_per_mpx_scene=0.5)  # hidden by decoding
    assert quick["core_s"]["load"] == fast["core_s"]["load"]


def test_rehearsal_records_the_plans_errors(tmp_path):
    """The rehearsal's bench entries: the plan's errors against its faulty run, by name; none
    when the plan was made without stage rates."""
    from pipeline.bench.rehearsal import plan_entries

    seconds, stats = _seconds(40.0, 4)
    run = {"stages": run_stages(seconds, stats, slots=2)}
    plan = {"stages": run_stages(*_seconds(60.0, 4), slots=2)}
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    entries = {e.name: e for e in plan_entries(tmp_path / "plan.json", tmp_path / "run.json")}
    assert set(entries) == {"plan_wall_error", "plan_core_s_error", "plan_stage_errors"}
    assert entries["plan_stage_errors"].value == pytest.approx(0.5)  # inference 50 % off
    assert entries["plan_stage_errors"].notes["stages"]["infer"]["judged"]
    (tmp_path / "plan.json").write_text(json.dumps({"summary": "no rates"}))
    assert plan_entries(tmp_path / "plan.json", tmp_path / "run.json") == []


def test_tile_stages_count_cpu_seconds_as_core_seconds():
    """A run on a shared machine: its tiles' wall seconds are twice their CPU seconds (other
    processes had half the cores). Core-seconds are the CPU seconds, wall the wall seconds, and
    ``cpu_share`` says how much of the cores the workers had."""
    seconds, stats = _seconds(40.0, 4)
    for t in stats:
        w = t["seconds"]
        t["cpu_seconds"] = {"model": w["model"] / 2, "read": (w["load"] + w["composite"]) / 2,
                            "infer": w["infer"] / 2, "write": w["write"] / 2}  # fmt: skip
    run = run_stages(seconds, stats, slots=2)
    assert run["wall_s"]["infer"] == 80.0 and run["core_s"]["infer"] == 80.0  # 4 x 20 CPU-s
    assert run["core_s"]["load"] == pytest.approx(4 * 1.0)  # read CPU split by the wall ratio
    assert run["core_s"]["composite"] == pytest.approx(4 * 0.05)
    assert run["cpu_share"] == pytest.approx(0.5)
    # a tile of an older s2lc (no CPU times) counts its wall seconds
    assert tile_cpu_seconds({"seconds": {"infer": 3.0}})["infer"] == 3.0
    assert run_stages(*_seconds(40.0, 4), slots=2)["cpu_share"] == pytest.approx(1.0)


def test_tile_phase_is_the_makespan_of_whole_tiles():
    # 4 equal tiles on 2 workers: no idle worker, only the first uses and the wait between tiles
    assert tile_phase_s([10.0] * 4, first_s=2.0, slots=2, gap_s=0.5) == pytest.approx(22.5)
    # 5 equal tiles on 2 workers: one worker runs the fifth alone (worker-seconds / 2 = 25)
    assert tile_phase_s([10.0] * 5, first_s=0.0, slots=2) == pytest.approx(30.0)
    # one big tile and small ones: the big one bounds the phase, the small ones fill the other
    assert tile_phase_s([20.0, 1.0, 1.0, 1.0], first_s=1.0, slots=2) == pytest.approx(21.0)
    assert tile_phase_s([], first_s=1.0, slots=2) == 0.0
    assert tile_phase_s([3.0, 4.0], first_s=1.0, slots=8) == pytest.approx(5.0)


def test_plan_schedules_the_idle_tail_of_uneven_tiles():
    """5 tiles on 2 workers: the plan's tile phase is the makespan, not worker-seconds / 2."""
    rates = StageRates(**{**RATES.__dict__, "task_gap_s": 0.5})
    kw = dict(valid_mpx=0.05, scenes_per_pixel=31, slots=2, measures_backend=False)
    five = predict_stages(rates, tile_shapes=[(100, 100)] * 5, **kw)
    tile = 31 * 0.01 * (3.0 + 0.5) + 4000 * 0.01 + 20 * 0.01
    first = 1.5 + 31 * 0.02 + 31 * 0.001 + 0.3 + 0.2
    # worker A: first + 3 tiles + 2 waits; B: first + 2 tiles + 1 wait
    phase = first + 3 * tile + 2 * 0.5
    spread = sum(five["wall_s"][s] for s in TILE_STAGES)
    assert spread == pytest.approx((5 * tile + 2 * first) / 2)
    assert five["wall_s"]["schedule"] == pytest.approx(3.0 + phase - spread)
    four = predict_stages(rates, tile_shapes=[(100, 100)] * 4, **{**kw, "valid_mpx": 0.04})
    assert four["wall_s"]["schedule"] == pytest.approx(3.0 + 0.5)  # balanced: start + one wait


def test_schedule_costs_from_the_tiles_spans():
    """Bench runs' tiles name their worker and wall span: the wait between two tiles on a
    worker, and the phase's start and end beyond its busiest worker's tasks and waits."""

    def tile(worker: int, start: float, end: float) -> dict:
        return {"worker": worker, "wall_span": [start, end], "seconds": {"infer": end - start}}

    one = {"tile_stats": [tile(1, 100.0, 110.0)], "seconds": {"tiles_wall": 11.0}}
    two = {
        "tile_stats": [tile(1, 200.0, 210.0), tile(2, 200.0, 205.0), tile(2, 205.5, 206.5)],
        "seconds": {"tiles_wall": 11.2},
    }
    assert task_gaps(two["tile_stats"]) == pytest.approx([0.5])
    gap, fixed = schedule_costs([one, two])
    assert gap == pytest.approx(0.5)
    assert fixed == pytest.approx((1.0 + 1.2) / 2)  # worker 1 is the busiest of both runs


def test_the_rehearsals_plan_reads_the_stand_ins_rates(tmp_path):
    """The rehearsal's runs replace the model with the stand-in encoder: its ``plan`` reads the
    stand-in's own measured rates (``--stage-rates plan_stage_rates_standin``), not the model's."""
    from pipeline.bench.rehearsal import RehearsalConfig, _command
    from pipeline.run.plan import STAGE_RATES_ENTRY, STANDIN_STAGE_RATES_ENTRY, load_stage_rates

    def entry(name: str, infer: float) -> dict:
        rates = {"fixed_s": {"schedule": 1.0}, "publish_s_per_mpx": 1.0,
                 "model_s_per_worker": 0.1, "worker_fixed_s": {"infer": 0.0},
                 "tile_s_per_unit": {"infer": infer}, "backend": "fp32", "task_gap_s": 0.2}  # fmt: skip
        return {"name": name, "device": "cpu", "date": "2026-12-07", "value": infer,
                "notes": {"model": "timesenclip", "rates": rates}}  # fmt: skip

    results = tmp_path / "results.json"
    results.write_text(
        json.dumps([entry(STAGE_RATES_ENTRY, 1200.0), entry(STANDIN_STAGE_RATES_ENTRY, 3.0)])
    )
    assert load_stage_rates(results, "timesenclip").tile_s_per_unit["infer"] == 1200.0
    standin = load_stage_rates(results, "timesenclip", STANDIN_STAGE_RATES_ENTRY)
    assert standin.tile_s_per_unit["infer"] == 3.0 and standin.task_gap_s == 0.2
    assert STANDIN_STAGE_RATES_ENTRY in standin.sources["stages"]
    # and the rehearsal's plan goes through the stand-in launcher
    cmd = _command("plan", tmp_path / "r.geojson", "http://x", tmp_path, RehearsalConfig())
    assert cmd[1:4] == ["-m", "pipeline.testing.standin_run", "plan"]
