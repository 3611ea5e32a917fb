"""The change rule (transitions, mask, confidence, consistency) and its scoring, on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.change import (
    MASK_NODATA,
    TRANSITION_NODATA,
    ChangeOptions,
    detect_change,
    score_change,
    transition_legend,
)


def _year(classes, second, p1, p2):
    """A year with top-2: its class (p1) and ``second`` (p2), as (classes, topk, probs)."""
    c = np.array(classes, np.uint8)
    k = np.stack([c, np.array(second, np.uint8)])
    p = np.stack([np.array(p1, np.float32), np.array(p2, np.float32)])
    return c, k, p


def _maps():
    # pixel 0: stable 0; 1: 1 -> 2, sure in both years; 2: 3 -> 1, torn between 3 and 1 in
    # both years; 3: nodata in year a; 4: 0 -> 2 with 2 outside year a's top-2 (k-th prob 0.3)
    a = _year([0, 1, 3, 255, 0], [1, 0, 1, 255, 1], [0.9, 0.8, 0.5, np.nan, 0.6],
              [0.05, 0.1, 0.45, np.nan, 0.3])  # fmt: skip
    b = _year([0, 2, 1, 1, 2], [1, 1, 3, 0, 0], [0.8, 0.9, 0.5, 0.9, 0.7],
              [0.1, 0.05, 0.4, 0.1, 0.2])  # fmt: skip
    return a, b


def test_transitions_mask_and_confidence():
    a, b = _maps()
    ch = detect_change(a, b, 4)
    np.testing.assert_array_equal(ch.transition, [13 * 0 + 0, 6, 13, TRANSITION_NODATA, 2])
    np.testing.assert_array_equal(ch.changed, [0, 1, 1, MASK_NODATA, 1])
    # stable: min(0.9, 0.8); 1 -> 2: min(0.8 - 0 (2 not in top-2: k-th 0.1) , 0.9 - 0.05);
    # 3 -> 1: min(0.5 - 0.45, 0.5 - 0.4); 0 -> 2: min(0.6 - 0.3, 0.7 - 0.2)
    np.testing.assert_allclose(ch.confidence, [0.8, 0.7, 0.05, np.nan, 0.3], atol=1e-6)
    assert ch.rejected == 0


def test_consistency_turns_unsure_changes_stable():
    a, b = _maps()
    ch = detect_change(a, b, 4, ChangeOptions(consistency=True, min_margin=0.1))
    np.testing.assert_array_equal(ch.changed, [0, 1, 0, MASK_NODATA, 1])
    assert ch.transition[2] == 3 * 4 + 3 and ch.transition[1] == 1 * 4 + 2
    assert ch.rejected == 1


def test_bad_inputs_are_refused():
    a, b = _maps()
    with pytest.raises(ValueError, match="shape"):
        detect_change(a, (b[0][:3], b[1], b[2]), 4)
    with pytest.raises(ValueError, match="class index"):
        detect_change(a, b, 3)
    with pytest.raises(ValueError, match="min_margin"):
        ChangeOptions(min_margin=1.5)


def test_legend_codes_every_transition():
    leg = transition_legend(["water", "forest"])
    assert [c["value"] for c in leg["classes"]] == [0, 1, 2, 3]
    assert leg["classes"][1]["name"] == "water -> forest" and leg["nodata"] == TRANSITION_NODATA


def test_score_counts_precision_recall_and_flips():
    truth_from = np.array([[0, 0, 1, 1]], np.uint8)
    truth_to = np.array([[0, 2, 1, 2]], np.uint8)  # pixels 1 and 3 changed
    changed = np.array([[1, 1, 0, 0]], np.uint8)  # one flip, one hit, one miss
    s = score_change(changed, truth_from, truth_to)
    assert s["change_precision"] == 0.5 and s["change_recall"] == 0.5
    assert s["stable_flip_rate"] == 0.5 and s["true_changed_px"] == 2
