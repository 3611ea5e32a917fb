"""The coverage record of a run: gap-filled periods and nodata, said once each."""

from __future__ import annotations

from pipeline.run.reporting import coverage_report


def test_gap_filled_periods_are_one_warning_line():
    labels = ["2023-01", "2023-02", "2023-03", "2023-04"]
    stats = {
        "t0": {"coverage": {"inside": 100, "no_data": 0, "gap_filled": [34, 5, 100, 11]}},
        "t1": {"coverage": {"inside": 100, "no_data": 2, "gap_filled": [34, 5, 100, 10]}},
    }
    rep = coverage_report(stats, labels)
    assert rep["pixels_counted"] == 200 and rep["no_data_fraction"] == 0.01
    assert rep["periods"]["2023-03"]["gap_filled_fraction"] == 1.0
    gap = [w for w in rep["warnings"] if "gap-filled" in w]
    assert len(gap) == 1, rep["warnings"]
    assert gap[0].startswith("3 of 4 periods") and "2023-01 34%" in gap[0]
    assert "2023-03 100%" in gap[0] and "2023-04 10%" in gap[0] and "2023-02" not in gap[0]
    assert any("no clear observation in any period" in w for w in rep["warnings"])
