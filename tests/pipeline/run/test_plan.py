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
