"""Metrics and Olofsson area estimates against hand-computed and published numbers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.area import accuracy_assessment, stratified_estimates
from pipeline.evaluate.metrics import (
    average_precision,
    classification_report,
    cohen_kappa,
    confusion_matrix,
    macro_f1,
    mean_average_precision,
    overall_accuracy,
    per_class_scores,
    recall_at_label_count,
)


def test_confusion_matrix_rows_are_predictions():
    pred = np.array([0, 0, 1, 2, 2, 2])
    truth = np.array([0, 1, 1, 2, 2, 0])
    cm = confusion_matrix(pred, truth, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError):
        confusion_matrix(np.array([3]), np.array([0]), 3)


def test_scores_hand_computed():
    # cm rows = predicted, columns = reference
    cm = np.array([[5, 2, 0], [1, 3, 1], [0, 0, 0]])
    assert overall_accuracy(cm) == pytest.approx(8 / 12)
    s = per_class_scores(cm)
    np.testing.assert_allclose(s["precision"][:2], [5 / 7, 3 / 5])
    assert np.isnan(s["precision"][2])  # never predicted
    np.testing.assert_allclose(s["recall"], [5 / 6, 3 / 5, 0.0])
    f1_0 = 2 * 5 / (7 + 6)
    f1_1 = 2 * 3 / (5 + 5)
    np.testing.assert_allclose(s["f1"], [f1_0, f1_1, 0.0])
    assert s["support"].tolist() == [6, 5, 1]
    assert macro_f1(cm) == pytest.approx((f1_0 + f1_1 + 0.0) / 3)
    # Kappa: po = 8/12, pe = (6*7 + 5*5 + 1*0) / 144
    pe = (6 * 7 + 5 * 5) / 144
    assert cohen_kappa(cm) == pytest.approx((8 / 12 - pe) / (1 - pe))


def test_macro_f1_ignores_classes_absent_from_reference():
    cm = np.array([[3, 0], [0, 0]])
    assert macro_f1(cm) == pytest.approx(1.0)


def test_classification_report_is_json_ready():
    import json

    rep = classification_report(np.array([0, 1, 1]), np.array([0, 1, 0]), ["a", "b", "c"])
    json.dumps(rep, allow_nan=False)
    assert rep["overall_accuracy"] == pytest.approx(2 / 3)
    assert rep["per_class"]["c"]["precision"] is None
    assert rep["per_class"]["a"]["recall"] == pytest.approx(0.5)


def test_average_precision_hand_computed():
    # ranking: 0.9(+) 0.8(-) 0.7(+) 0.1(-): AP = (1/1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    # a tie between a positive and a negative at the top: precision 1/2 for the tie block
    assert average_precision([0.5, 0.5, 0.1], [1, 0, 0]) == pytest.approx(0.5)
    assert np.isnan(average_precision([0.1, 0.2], [0, 0]))


def test_map_and_recall_at_label_count():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7], [0.3, 0.2, 0.1]])
    targets = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0]])
    m = mean_average_precision(scores, targets)
    # class 0: ranking 0.9(+) 0.3(+) 0.2(-) -> AP 1; class 1: no positive -> excluded;
    # class 2: 0.7(+) 0.5(+) 0.1(-) -> AP 1
    assert m["macro_map"] == pytest.approx(1.0)
    assert np.isnan(m["per_class_ap"][1])
    # recall@|y|: sample 0 top-2 {0, 2} -> 2 hits; sample 1 top-1 {1} -> 0; sample 2 top-1 {0} -> 1
    assert recall_at_label_count(scores, targets) == pytest.approx(3 / 4)


# Olofsson et al. (2014), section 5 / Table 8: the worked example (30 m pixels, 0.09 ha).
OLOFSSON_CM = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
OLOFSSON_PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])


def test_olofsson_2014_worked_example():
    est = stratified_estimates(OLOFSSON_CM, OLOFSSON_PIXELS * 0.09)
    # Published: deforestation area 21,158 +- 6,158 ha; forest gain 11,686 +- 3,756 ha;
    # overall accuracy 0.95; user's 0.88 and producer's 0.75 for deforestation.
    assert est["area"][0] == pytest.approx(21_158, abs=1)
    assert 1.96 * est["area_se"][0] == pytest.approx(6_158, abs=2)
    assert est["area"][1] == pytest.approx(11_686, abs=1)
    assert 1.96 * est["area_se"][1] == pytest.approx(3_756, abs=2)
    assert est["overall_accuracy"] == pytest.approx(0.9465, abs=1e-4)
    assert est["users_accuracy"][0] == pytest.approx(0.88)
    assert est["producers_accuracy"][0] == pytest.approx(0.7487, abs=1e-4)
    # Areas of all classes add up to the total mapped area.
    assert est["area"].sum() == pytest.approx(OLOFSSON_PIXELS.sum() * 0.09)


def test_stratified_estimates_hand_worked_small():
    # Two strata, areas 80 / 20; 10 samples each.
    cm = np.array([[8, 2], [1, 9]])
    est = stratified_estimates(cm, [80.0, 20.0])
    w = np.array([0.8, 0.2])
    p = np.array([[0.8 * 0.8, 0.8 * 0.2], [0.2 * 0.1, 0.2 * 0.9]])
    np.testing.assert_allclose(est["proportions"], p)
    assert est["overall_accuracy"] == pytest.approx(0.64 + 0.18)
    ua = np.array([0.8, 0.9])
    np.testing.assert_allclose(est["users_accuracy"], ua)
    np.testing.assert_allclose(est["users_accuracy_se"], np.sqrt(ua * (1 - ua) / 9))
    oa_var = (w**2 * ua * (1 - ua) / 9).sum()
    assert est["overall_accuracy_se"] == pytest.approx(np.sqrt(oa_var))
    np.testing.assert_allclose(est["producers_accuracy"], [0.64 / 0.66, 0.18 / 0.34])
    # area of class 1: 100 * (0.16 + 0.18) = 34
    assert est["area"][1] == pytest.approx(34.0)
    var = (0.8 * 0.16 - 0.16**2) / 9 + (0.2 * 0.18 - 0.18**2) / 9
    assert est["area_se"][1] == pytest.approx(100 * np.sqrt(var))
    # producer's accuracy of class 0 by Olofsson eq. 7 (N_i. = mapped areas)
    n_hat = 80 / 10 * 8 + 20 / 10 * 1
    pa = 0.64 / 0.66
    v = (80**2 * (1 - pa) ** 2 * 0.8 * 0.2 / 9 + pa**2 * 20**2 * 0.1 * 0.9 / 9) / n_hat**2
    assert est["producers_accuracy_se"][0] == pytest.approx(np.sqrt(v))


def test_accuracy_assessment_report_and_warnings():
    import json

    rep = accuracy_assessment(
        np.array([[3, 0, 0], [0, 1, 0], [0, 0, 0]]), [50, 30, 20], ["a", "b", "c"]
    )
    json.dumps(rep, allow_nan=False)
    assert rep["classes"]["a"]["users_accuracy"] == 1.0
    assert rep["classes"]["b"]["users_accuracy_se"] is None  # one sample: no variance
    assert len(rep["warnings"]) == 2  # b (1 sample) and c (none)


def test_a_fully_sampled_stratum_has_no_sampling_variance():
    """A class of one pixel, sampled (a census): the other classes keep their intervals."""
    import numpy as np

    from pipeline.evaluate.area import stratified_estimates

    cm = np.array([[18, 2, 0], [3, 27, 0], [0, 0, 1]])
    areas = np.array([400.0, 600.0, 1.0])
    plain = stratified_estimates(cm, areas)
    assert np.isnan(plain["area_se"]).all() and plain["warnings"]
    est = stratified_estimates(cm, areas, census=[False, False, True])
    assert np.isfinite(est["area_se"]).all() and not est["warnings"]
    assert est["area_se"][2] == 0.0 and est["area"][2] == 1.0
    np.testing.assert_allclose(est["area"], plain["area"])  # the estimates themselves agree
    # without the tiny class, the same variances for the others
    ref = stratified_estimates(cm[:2, :2], areas[:2])
    np.testing.assert_allclose(est["area_se"][:2], ref["area_se"] * 1001 / 1000, rtol=0.01)
