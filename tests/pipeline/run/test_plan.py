"""Which benchmark rates ``plan`` uses for the CPU stages."""

from __future__ import annotations

import json

import pytest

from pipeline.base.errors import UserError
from pipeline.run.plan import load_rates

INFER = {"name": "timesenclip_pixels_per_s", "value": 600.0, "device": "cpu", "threads": 2}
DEMO_WINDOW = {
    "name": "data_path_cpu_s_per_mpx",
    "value": 79.3,
    "device": "cpu",
    "notes": {"load_s_per_mpx": 62.0, "composite_s_per_mpx": 0.93, "mosaic_s_per_mpx": 0.8,
              "scenes": 31},
}  # fmt: skip
READ_PATH = {
    "name": "mgrs_tile_year_cpu_min",
    "value": 1.05,
    "device": "projection",
    "notes": {"acquisitions": 73, "load_core_s_per_mpx_per_acquisition": 0.075,
              "composite_core_s_per_mpx": 2.6, "write_core_s_per_mpx": 0.28,
              "mosaic_core_s_per_mpx": 0.99},
}  # fmt: skip


def _rates(tmp_path, *entries):
    path = tmp_path / "results.json"
    path.write_text(json.dumps([INFER, *entries]))
    return load_rates(path, "timesenclip")


def test_the_read_path_at_scale_is_preferred_to_the_demo_window(tmp_path):
    r = _rates(tmp_path, DEMO_WINDOW, READ_PATH)
    assert r.load_core_s_per_mpx_scene == pytest.approx(0.075)
    assert r.composite_core_s_per_mpx_scene == pytest.approx(2.6 / 73)
    assert r.publish_core_s_per_mpx == pytest.approx(0.99 + 0.28)
    assert r.sources["load"].startswith("mgrs_tile_year_cpu_min")


def test_an_older_results_file_falls_back_to_the_demo_window(tmp_path):
    r = _rates(tmp_path, DEMO_WINDOW)
    assert r.load_core_s_per_mpx_scene == pytest.approx(62.0 / 31)
    assert r.publish_core_s_per_mpx == pytest.approx(0.8)
    assert "31 scenes" in r.sources["load"]


def test_no_stage_rates_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="make bench"):
        _rates(tmp_path)


def test_the_cpu_inference_rate_is_that_of_the_backend_auto_picked(tmp_path):
    """``make bench`` records the CPU entry at the backend ``--backend auto`` chose there."""
    auto = {
        **INFER,
        "value": 900.0,
        "batch": 1024,
        "notes": {"backend": "openvino-bf16", "cpu_model": "AMD EPYC", "vs_fp32": 3.1},
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps([auto, READ_PATH]))
    r = load_rates(path, "timesenclip")
    assert r.infer_cpu_px_per_core_s == pytest.approx(450.0)
    assert "AMD EPYC" in r.sources["infer_cpu"]
    assert "backend openvino-bf16 (batch 1024)" in r.sources["infer_cpu"]


def test_the_cpu_rate_is_the_picked_backends_rate_per_cpu_second(tmp_path):
    auto = {**INFER, "value": 200.0, "notes": {"backend": "openvino-bf16"}}
    per_backend = [
        {"name": f"timesenclip_cpu_backend_{b}", "value": v, "device": "cpu", "threads": 2}
        for b, v in (("fp32", 218.0), ("openvino-bf16", 670.0))
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps([auto, *per_backend, READ_PATH]))
    r = load_rates(path, "timesenclip")
    assert r.infer_cpu_px_per_core_s == pytest.approx(670.0)
    assert "auto picked (openvino-bf16)" in r.sources["infer_cpu"]


READS = {
    "name": "http_requests_per_mpx",
    "value": 366.0,
    "device": "cpu",
    "threads": 16,
    "notes": {"requests_per_mpx_scene": 30.5, "mean_in_flight_30ms": 6.0, "acquisitions": 12},
}


def _estimate(rates, network=None, count=2, cores=4):
    from pipeline.run.plan import Network, Workers, estimate

    return estimate(
        tiles=10, tile_pixels=100e6, area_km2=1e3, scenes_per_pixel=50.0, items=100, cells=1,
        model="timesenclip", stride=1, rates=rates,
        workers=Workers(count=count, kind="cpu", cores=cores), network=network or Network(),
    )  # fmt: skip


def test_latency_waits_come_from_the_measured_requests_and_concurrency(tmp_path):
    """Issue 26: ``plan --latency-ms``: requests = scene Mpx x the measured requests per Mpx and
    scene; each core's worker waits requests x latency / its mean requests in flight; the wait
    overlaps the CPU stages, so it bounds the tile stage only when it is the longer."""
    from pipeline.run.plan import Network

    r = _rates(tmp_path, READ_PATH, READS)
    assert (r.requests_per_mpx_scene, r.read_in_flight) == (30.5, 6.0)
    assert r.sources["reads"].startswith("http_requests_per_mpx")
    base = _estimate(r)
    assert (
        base["network"]["read_wait_hours"] == 0 and base["network"]["requests"] == 100 * 50 * 30.5
    )
    near = _estimate(r, Network(latency_ms=30))
    wait_h = 100 * 50 * 30.5 * 0.030 / 6.0 / 8 / 3600  # 8 cores in all
    assert near["network"]["read_wait_hours"] == pytest.approx(wait_h)
    cpu_h = sum(v for k, v in near["core_hours"].items() if k not in ("publish", "total")) / 8
    assert wait_h < cpu_h and near["wall_hours"] == pytest.approx(base["wall_hours"])
    slow = 30 * 2 * cpu_h / wait_h  # a latency at which the waits take twice the CPU stages
    far = _estimate(r, Network(latency_ms=slow))
    assert far["wall_hours"] - base["wall_hours"] == pytest.approx(2 * cpu_h - cpu_h, rel=1e-6)


def test_bandwidth_bounds_the_tile_stage_and_bad_networks_are_refused(tmp_path):
    from pipeline.run.plan import Network

    r = _rates(tmp_path, READ_PATH, READS)
    slow = _estimate(r, Network(bandwidth_mbps=1.0))
    transfer_h = slow["input"]["compressed_bytes"] * 8 / (1e6 * 2) / 3600
    assert slow["network"]["transfer_hours"] == pytest.approx(transfer_h)
    assert slow["wall_hours"] >= transfer_h
    with pytest.raises(UserError, match="latency-ms"):
        Network(latency_ms=-1)
    with pytest.raises(UserError, match="bandwidth-mbps"):
        Network(bandwidth_mbps=0)
    with pytest.raises(UserError, match="only latency"):  # no measured request count
        _estimate(_rates(tmp_path, READ_PATH), Network(latency_ms=30))
