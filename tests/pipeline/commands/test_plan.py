"""Continental planning: member-state regions, MGRS tiles and revisit, the EEA cell grid, ``plan``."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main

MEMBERS = (
    "austria belgium bulgaria croatia cyprus czechia denmark estonia finland france germany "
    "greece hungary ireland italy latvia lithuania luxembourg malta netherlands poland portugal "
    "romania slovakia slovenia spain sweden"
).split()


def test_every_member_state_loads_grids_and_plans(tmp_path, capsys):
    from aoi import load_region
    from pipeline.grid.cells import cells_of, is_gridded, output_grid

    total = 0.0
    for name in MEMBERS:
        r = load_region(name)
        assert r.name == name and r.geometry.is_valid
        # crs auto: one UTM zone -> that zone; several -> LAEA Europe on 100 km cells
        assert r.crs == "EPSG:3035" or r.crs.startswith("EPSG:326")
        # a coarse tile size keeps this fast; the grid and its cells are the run's
        ts = 5000 if is_gridded(r.crs) else 4096
        grid = output_grid(r.geometry, r.crs, r.resolution, ts)
        assert len(grid.tiles) > 0
        if is_gridded(r.crs):
            cells = cells_of(grid)
            assert sum(len(c.grid.tiles) for c in cells.values()) == len(grid.tiles)
        out = tmp_path / f"{name}.json"
        args = ["plan", "--region", name, "--year", "2023", "--offline", "--tile-size", str(ts)]
        assert main([*args, "--plan-out", str(out)]) == 0, capsys.readouterr().err
        p = json.loads(out.read_text())
        assert p["output"]["tiles"] == len(grid.tiles) and p["input"]["scenes"] > 0
        total += r.area_km2()
    eu = load_region("eu27")
    assert eu.crs == "EPSG:3035"
    # Natural Earth 1:10m, simplified: EU-27 in Europe is about 4.1-4.2 million km2
    assert 4.0e6 < eu.area_km2() < 4.3e6
    assert abs(total - eu.area_km2()) / total < 0.01
    assert load_region("germany").crs == "EPSG:3035"  # zones 32 and 33
    assert load_region("malta").crs == "EPSG:32633"  # one zone keeps UTM
    assert 2000 < load_region("luxembourg").area_km2() < 3000


def test_mgrs_tiles_and_revisit():
    from shapely.geometry import Point

    from pipeline.grid.mgrs import acquisitions_per_year, observations_per_year, s2_tiles

    # Known tiles: Munich, Utrecht, Madrid, Helsinki, and the 32/33 zone edge near 12 E
    for (lon, lat), codes in [
        ((11.58, 48.14), {"32UPU"}),
        ((5.0, 52.0), {"31UFT"}),
        ((-3.7, 40.4), {"30TVK"}),
        ((24.9, 60.2), {"35VLG"}),
        ((12.0, 48.5), {"32UQU", "33UTP"}),
    ]:
        assert {t.code for t in s2_tiles(Point(lon, lat).buffer(0.001))} == codes
    # two satellites, 5-day repeat: about 73 passes at the equator, more towards the poles
    assert 70 < observations_per_year(0.0) < 80
    assert observations_per_year(60.0) == pytest.approx(2 * observations_per_year(0.0))
    assert acquisitions_per_year(48.0) > observations_per_year(48.0)


def test_eea_cells_are_named_and_tiles_stay_inside():
    from shapely.geometry import box

    from aoi import to_crs
    from pipeline.grid.cells import cell_code, cells_of, output_grid

    assert cell_code(4_321_000, 3_210_000) == "100kmE43N32"
    # a 3 x 3 km box straddling the 4,400 km easting line -> two cells
    lonlat = to_crs(box(4_398_500, 2_850_500, 4_401_500, 2_853_500), "EPSG:4326", "EPSG:3035")
    grid = output_grid(lonlat, "EPSG:3035", 10.0, 100)
    cells = cells_of(grid)
    assert set(cells) == {"100kmE43N28", "100kmE44N28"}
    for c in cells.values():
        h, w = c.grid.geobox.shape
        assert h <= 10_000 and w <= 10_000 and h % 100 == 0 and w % 100 == 0
        for t in c.grid.tiles:  # windows relative to the cell's box, inside it
            assert 0 <= t.window[0].start < t.window[0].stop <= h
            assert c.grid.geobox[t.window].affine == t.geobox.affine
    with pytest.raises(Exception, match="must divide"):
        output_grid(lonlat, "EPSG:3035", 10.0, 256)


def test_plan_offline_writes_a_full_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(
        ["plan", "--region", "luxembourg", "--year", "2023", "--offline", "--workers", "4",
         "--price-core-hour", "0.05", "--price-gpu-hour", "2.5", "--plan-out", str(out)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "MGRS tiles" in text and "GPU-hours" in text and "cents/km2" in text
    p = json.loads(out.read_text())
    assert p["crs"] == "EPSG:3035" and p["layout"] == "100 km EEA grid cells"
    assert p["output"]["cells"] >= 2 and p["tile_size"] == 500
    # Luxembourg (2,600 km2) straddles UTM zones 31/32: tiles of both (31UGQ, 32ULA, ...), each
    # pixel seen ~120 times a year, half of them under the cloud limit
    assert 4 <= p["scenes"]["mgrs_tiles"] <= 10
    assert 40 < p["input"]["scenes_per_pixel"] < 100
    assert p["input"]["decoded_bytes"] > p["input"]["compressed_bytes"] > 0
    assert p["core_hours"]["load"] > 0 and p["gpu_hours"] > 0
    w = p["workers"]
    expect = p["wall_hours"] * 4 * (16 * 0.05 + 1 * 2.5)
    assert p["cost"]["total"] == pytest.approx(expect) and w["count"] == 4
    assert "measured" in p["rates"]["sources"]["load"]
    assert p["network"]["latency_ms"] == 0 and p["network"]["read_wait_hours"] == 0


def test_plan_with_object_store_latency_and_bandwidth(tmp_path, capsys):
    """``--latency-ms``/``--bandwidth-mbps`` (issue 26) use the bench's measured requests per
    Mpx and requests in flight (bench/results.json); the summary names the waits."""
    out = tmp_path / "plan.json"
    args = ["plan", "--region", "luxembourg", "--year", "2023", "--offline", "--worker-kind",
            "cpu", "--plan-out", str(out)]  # fmt: skip
    assert main([*args, "--latency-ms", "30", "--bandwidth-mbps", "10000"]) == 0
    text = capsys.readouterr().out
    assert "requests at 30 ms" in text and "Mbit/s" in text
    p = json.loads(out.read_text())["network"]
    assert p["requests"] > 0 and p["read_wait_hours"] > 0 and p["transfer_hours"] > 0
    code = main([*args, "--latency-ms", "-5"])
    assert code == 2 and "--latency-ms" in capsys.readouterr().err


def test_plan_searches_the_stac_api(demo_stac_url, tmp_path, capsys):
    out = tmp_path / "plan.json"
    code = main(
        ["plan", "--region", "demo", "--stac-url", demo_stac_url, "--worker-kind", "cpu",
         "--plan-out", str(out)]
    )  # fmt: skip
    assert code == 0
    p = json.loads(out.read_text())
    assert p["layout"] == "single files" and p["output"]["cells"] == 0
    # the demo catalog: 73 dates, some above --max-cloud 60; every scene covers the whole AOI
    assert 10 < p["input"]["scenes"] <= 73
    assert p["input"]["scenes_per_pixel"] == pytest.approx(p["input"]["scenes"], rel=1e-6)
    assert p["gpu_hours"] == 0 and p["core_hours"]["infer"] > 0


def test_plan_refuses_bad_options(tmp_path, capsys):
    code = main(["plan", "--region", "demo", "--offline", "--clear-fraction", "2"])
    assert code == 2 and "--clear-fraction" in capsys.readouterr().err
    code = main(["plan", "--region", "demo", "--offline", "--rates", str(tmp_path / "none.json")])
    assert code == 2 and "make bench" in capsys.readouterr().err


def test_plan_predicts_the_runs_stages(demo_stac_url, tmp_path, capsys):
    """With the bench's stage rates (``plan_stage_rates``) the plan writes ``stages`` under the
    run's stage names (issue 26, point 5): fixed costs once, tile stages per tile, calibration
    when the run calibrates, the backend measurement only when the run measures it."""
    from pipeline.commands.plan import DEFAULT_RATES
    from pipeline.run.stages import STAGES

    rates = [e for e in json.loads(DEFAULT_RATES.read_text()) if e["name"] != "plan_stage_rates"]
    rates.append(
        {"name": "plan_stage_rates", "device": "cpu", "value": 4000.0, "date": "2026-12-07",
         "notes": {"model": "timesenclip", "rates": {
             "fixed_s": {"search": 0.2, "backend": 6.0, "prepare": 0.1, "other": 4.0,
                         "schedule": 3.0, "publish": 0.5},
             "publish_s_per_mpx": 20.0, "model_s_per_worker": 1.5,
             "worker_fixed_s": {"load": 0.02, "composite": 0.0, "infer": 0.3, "write": 0.2},
             "tile_s_per_unit": {"load": 3.0, "composite": 0.5, "infer": 4000.0, "write": 20.0},
             "backend": "bf16", "batch": None, "tile_size": 100}}}
    )  # fmt: skip
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rates))
    out = tmp_path / "plan.json"
    args = ["plan", "--region", "demo", "--stac-url", demo_stac_url, "--worker-kind", "cpu",
            "--tile-size", "100", "--rates", str(path), "--plan-out", str(out)]  # fmt: skip
    assert main([*args, "--backend", "auto", "--calibration", "reference"]) == 0
    assert "this machine" in capsys.readouterr().out
    st = json.loads(out.read_text())["stages"]
    assert tuple(st["wall_s"]) == STAGES and tuple(st["core_s"]) == STAGES
    assert st["calibration"] is True and st["wall_s"]["calibrate"] > 0
    assert st["backend"] == "bf16" and st["rates_differ"] == []
    # 4 tiles of 100 x 100 px, 2 km x 2 km inside the region: 0.04 Mpx classified
    scenes = json.loads(out.read_text())["input"]["scenes_per_pixel"]
    # (calibrating: each worker's first uses are paid by the calibration sample)
    assert st["core_s"]["infer"] == pytest.approx(4000.0 * 0.04)
    assert st["core_s"]["load"] == pytest.approx(4 * scenes * 3.0 * 0.01)
    assert st["wall_s"]["backend"] == 6.0 and st["wall_s"]["other"] == 4.0
    head = tmp_path / "head.npz"
    _head(head)
    assert main([*args, "--head", str(head), "--backend", "fp32"]) == 0
    st = json.loads(out.read_text())["stages"]
    assert st["calibration"] is False and st["wall_s"]["calibrate"] == 0
    assert st["wall_s"]["backend"] == 0 and st["backend"] == "fp32"
    assert st["core_s"]["infer"] == pytest.approx(2 * 0.3 + 4000.0 * 0.04)  # 2 workers compile
    assert st["rates_differ"] == ["the run forces backend fp32, rates are bf16"]


def _head(path):
    import numpy as np

    from model.train.probe import LinearHead

    names = ("a", "b")
    LinearHead(np.zeros((2, 512), np.float32), np.zeros(2, np.float32), names, {}).save(path)
