"""Margin, normalised entropy and the k-NN out-of-distribution score, on seeded arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.adapters.uncertainty import fit_ood, margin_entropy


def test_margin_and_entropy_values():
    p = np.array([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.3, 0.2, 0.0]], np.float32)
    margin, entropy = margin_entropy(p)
    np.testing.assert_allclose(margin, [1.0, 0.0, 0.2], atol=1e-6)
    h = -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)) / np.log(4)
    np.testing.assert_allclose(entropy, [0.0, 1.0, h], atol=1e-6)
    assert margin.dtype == entropy.dtype == np.float32
    m1, e1 = margin_entropy(np.ones((3, 1), np.float32))  # one class: certain
    assert (m1 == 1).all() and (e1 == 0).all()


def _clusters(rng, n, d=32, centres=4):
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.15 * rng.standard_normal((n, d))
    return x.astype(np.float32), c


def test_ood_threshold_holds_the_stated_share_and_flags_the_unseen():
    rng = np.random.default_rng(0)
    sample, centres = _clusters(rng, 6000)
    ref = fit_ood(sample, seed=1)
    assert len(ref.embeddings) == 2048 and ref.k == 20 and ref.quantile == 0.99
    # new draws from the same clusters: about 1 - quantile of them are flagged
    fresh_flag = ref.score(_same_clusters(centres, 4000)) > 1
    assert fresh_flag.mean() < 0.03
    unseen = ref.score(rng.standard_normal((500, 32)).astype(np.float32) * 3 + 5) > 1
    assert unseen.mean() > 0.99
    # a material under k/n of the sample is still flagged; the reference is deterministic
    assert fit_ood(sample, seed=1).threshold == ref.threshold
    with pytest.raises(ValueError, match="quantile"):
        fit_ood(sample, quantile=1.0)
    with pytest.raises(ValueError, match="more than k"):
        fit_ood(sample[:10])


def _same_clusters(centres, n):
    rng = np.random.default_rng(7)
    x = centres[rng.integers(0, len(centres), n)] + 0.15 * rng.standard_normal(
        (n, centres.shape[1])
    )
    return x.astype(np.float32)


def test_a_rare_material_in_the_sample_is_still_out_of_distribution():
    rng = np.random.default_rng(4)
    sample, centres = _clusters(rng, 8000)
    rare = (rng.standard_normal((40, 32)) * 0.1 + 4).astype(np.float32)  # 0.5 % of the sample
    ref = fit_ood(np.concatenate([sample, rare]), seed=0)
    probe = (rng.standard_normal((200, 32)) * 0.1 + 4).astype(np.float32)
    assert (ref.score(probe) > 1).mean() > 0.95
