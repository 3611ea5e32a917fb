"""Training building blocks: ground embeddings, pooling, the InfoNCE + queue loss, augmentation,
the learning-rate schedule and the few-shot linear head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model.train.ground import (
    DirectionPool,
    average_pool,
    from_mapping,
    load_ground_embeddings,
    parse_key,
    save_ground_embeddings,
)
from model.train.loop import lr_lambda, split_indices
from model.train.loss import INIT_LOGIT_SCALE, MAX_LOGIT_SCALE, ContrastiveLoss
from model.train.probe import check_head_matches, fit_linear_head, load_head
from model.train.temporal import TemporalAugment
from pipeline.base.errors import UserError

# --- ground embeddings ----------------------------------------------------------------------


def test_parse_key():
    assert parse_key("DE_45061526N") == ("DE_45061526", "N")
    assert parse_key("EL_1234W") == ("EL_1234", "W")
    with pytest.raises(ValueError):
        parse_key("DE_45061526")


def test_published_dict_roundtrip_and_matching(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for pid in ("DE_1", "FR_22"):
        for d in "NESW":
            data[f"{pid}{d}"] = torch.from_numpy(rng.normal(size=8).astype(np.float32)) * 3
    del data["FR_22S"]  # a missing photo
    data["garbage"] = torch.zeros(8)
    path = tmp_path / "emb.pt"
    torch.save(data, path)
    table = load_ground_embeddings(path)
    assert table.keys == ("DE_1", "FR_22")
    assert table.mask.tolist() == [[True] * 4, [True, True, False, True]]
    np.testing.assert_allclose(np.linalg.norm(table.vectors[table.mask], axis=1), 1, atol=1e-6)
    # match by full key, by bare point id, by a float-looking id; unknown -> -1
    assert table.match(["FR_22", "1", "22.0", "nope"]).tolist() == [1, 0, 1, -1]
    pooled = table.pooled_average()
    v = table.vectors[1, [0, 1, 3]].mean(0)
    np.testing.assert_allclose(pooled[1], v / np.linalg.norm(v), atol=1e-6)


def test_save_ground_embeddings_writes_published_format(tmp_path):
    vec = np.random.default_rng(1).normal(size=(2, 4, 6)).astype(np.float32)
    p = save_ground_embeddings(tmp_path / "g.pt", ["AT_5", "AT_6"], vec)
    raw = torch.load(p, weights_only=True)
    assert sorted(raw) == sorted(f"AT_{i}{d}" for i in (5, 6) for d in "NESW")
    assert from_mapping(raw).vectors.shape == (2, 4, 6)


def test_ground_embedding_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_ground_embeddings(tmp_path / "none.pt")
    torch.save({"x": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="no keys"):
        load_ground_embeddings(tmp_path / "bad.pt")
    torch.save({"A_1N": torch.zeros(3), "A_1E": torch.zeros(4)}, tmp_path / "dims.pt")
    with pytest.raises(UserError, match="has 4 values"):
        load_ground_embeddings(tmp_path / "dims.pt")


def test_attention_pool_starts_as_average_and_respects_mask():
    g = torch.nn.functional.normalize(torch.randn(5, 4, 16), dim=-1)
    mask = torch.tensor(
        [[1, 1, 1, 1], [1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 1]]
    ).bool()
    avg = average_pool(g, mask)
    att = DirectionPool(16, "attention")(g, mask)
    torch.testing.assert_close(att, avg)
    torch.testing.assert_close(avg[1], g[1, 0])
    pool = DirectionPool(16, "attention")
    with torch.no_grad():
        pool.score.weight.copy_(g[1, 0].unsqueeze(0) * 50)
    out = pool(g, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], g[1, 0])  # a single photo: weight 1 whatever the score
    with pytest.raises(UserError):
        DirectionPool(16, "max")


# --- loss --------------------------------------------------------------------------------------


def test_loss_is_infonce_over_batch_and_queue():
    torch.manual_seed(0)
    loss_fn = ContrastiveLoss(8, queue_size=5, symmetric=False)
    assert float(loss_fn.logit_scale.detach()) == pytest.approx(INIT_LOGIT_SCALE)
    s = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    g = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    loss, info = loss_fn(s, g)
    scale = math.exp(INIT_LOGIT_SCALE)
    ref = torch.nn.functional.cross_entropy(scale * s @ g.T, torch.arange(3))
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5)
    assert info["queue"] == 0
    # with queued negatives
    q = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    loss_fn.enqueue(q)
    loss2, info2 = loss_fn(s, g)
    logits = torch.cat([s @ g.T, s @ q.T], dim=1) * scale
    ref2 = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    assert float(loss2.detach()) == pytest.approx(float(ref2), rel=1e-5)
    assert info2["queue"] == 4
    # symmetric adds the ground-anchored in-batch term
    sym = ContrastiveLoss(8, queue_size=0, symmetric=True)
    ref3 = 0.5 * (ref + torch.nn.functional.cross_entropy(scale * g @ s.T, torch.arange(3)))
    assert float(sym(s, g)[0].detach()) == pytest.approx(float(ref3), rel=1e-5)


def test_queue_is_a_ring_buffer():
    loss_fn = ContrastiveLoss(2, queue_size=4)
    for i in range(3):
        loss_fn.enqueue(torch.full((3, 2), float(i + 1)))
    # 9 rows pushed into 4 slots: the 4 newest survive (values 3,3,3 and the last 2 of batch 2)
    assert int(loss_fn.queue_filled) == 4
    assert sorted(loss_fn.queued()[:, 0].tolist()) == [2.0, 3.0, 3.0, 3.0]
    loss_fn.enqueue(torch.full((10, 2), 7.0))
    assert (loss_fn.queued() == 7.0).all()


def test_temperature_clamp():
    loss_fn = ContrastiveLoss(2, queue_size=0)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(10.0)
    loss_fn.clamp_()
    assert float(loss_fn.logit_scale.detach()) == pytest.approx(MAX_LOGIT_SCALE)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(-1.0)
    loss_fn.clamp_()
    assert float(loss_fn.logit_scale.detach()) == 0.0


# --- augmentation and schedule ---------------------------------------------------------------


def test_temporal_augment_operations():
    x = torch.arange(2 * 12 * 3, dtype=torch.float32).reshape(2, 12, 3)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(60):
        y, months, op = TemporalAugment("tsmix", p=1.0).apply(x, gen)
        seen.add(op)
        if op == "median":
            assert y.shape == (2, 1, 3) and months is None
            torch.testing.assert_close(y[:, 0], x.median(dim=1).values)
        else:
            assert op == "quarter" and y.shape == (2, 9, 3)
            # kept months keep their own positions, and they are 9 of 12 with one gap of 3
            torch.testing.assert_close(y, x[:, months])
            dropped = sorted(set(range(12)) - set(months.tolist()))
            assert len(dropped) == 3 and dropped[2] - dropped[0] == 2
    assert seen == {"median", "quarter"}
    # the reference quirk: after a drop the first n positions are used
    for _ in range(20):
        y, months, op = TemporalAugment("quarter", p=1.0, position_mode="reference").apply(x, gen)
        assert months.tolist() == list(range(9))
    y, months, op = TemporalAugment("tsmix", p=0.0).apply(x, gen)
    assert op == "none" and months.tolist() == list(range(12))


def test_lr_schedule_warmup_then_cosine():
    vals = [lr_lambda(s, 10, 110, 0.0) for s in range(111)]
    assert vals[0] == pytest.approx(0.1) and vals[9] == pytest.approx(1.0)
    assert vals[10] == pytest.approx(1.0)
    assert vals[60] == pytest.approx(0.5)
    assert vals[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(vals[10:], vals[11:], strict=False))
    assert lr_lambda(110, 10, 110, 0.1) == pytest.approx(0.1)


def test_split_is_deterministic_and_disjoint():
    a, b = split_indices(100, 0.2, 3)
    a2, b2 = split_indices(100, 0.2, 3)
    assert a.tolist() == a2.tolist() and len(b) == 20
    assert not set(a) & set(b)


# --- few-shot linear head ----------------------------------------------------------------------


def _blobs(n_per=40, d=16, c=3, seed=0, counts=None):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 3
    counts = counts or [n_per] * c
    x = np.concatenate([centers[i] + rng.normal(size=(k, d)) for i, k in enumerate(counts)])
    y = np.concatenate([np.full(k, i) for i, k in enumerate(counts)])
    return x.astype(np.float32), y


def test_fit_save_load_predict(tmp_path):
    x, y = _blobs()
    head = fit_linear_head(x, y, ["a", "b", "c"], l2=1e-3, model_identity={"name": "timesenclip"})
    probs = head.predict(x)
    assert probs.shape == (120, 3)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == y).mean() > 0.95
    p = head.save(tmp_path / "head")
    assert p.suffix == ".npz" and p.stat().st_size < 10_000
    back = load_head(p)
    assert back.class_names == ("a", "b", "c")
    assert back.model_identity["name"] == "timesenclip" and back.model_identity["dim"] == 16
    np.testing.assert_allclose(back.predict(x), probs, atol=1e-6)
    t = back.predict(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor)


def test_head_l2_shrinks_weights_and_balanced_helps_minority():
    x, y = _blobs(counts=[200, 200, 6], seed=2)
    small = fit_linear_head(x, y, list("abc"), l2=1e-4)
    big = fit_linear_head(x, y, list("abc"), l2=1.0)
    assert np.abs(big.weight).sum() < np.abs(small.weight).sum()
    plain = fit_linear_head(x, y, list("abc"), l2=1.0)
    bal = fit_linear_head(x, y, list("abc"), l2=1.0, class_balanced=True)
    minority = y == 2
    assert bal.predict(x)[minority, 2].mean() > plain.predict(x)[minority, 2].mean()


def test_head_class_without_examples_is_never_predicted():
    x, y = _blobs(c=2)
    head = fit_linear_head(x, y, ["a", "b", "never"])
    assert head.predict(x)[:, 2].max() < 1e-6


def test_head_errors_and_identity_checks(tmp_path):
    x, y = _blobs()
    with pytest.raises(UserError):
        fit_linear_head(x, y, ["a", "b"])  # label 2 out of range
    with pytest.raises(UserError, match="not found"):
        load_head(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(UserError, match="not a linear-head"):
        load_head(tmp_path / "other.npz")
    head = fit_linear_head(
        x, y, list("abc"), model_identity={"name": "timesenclip", "checkpoint_sha256": "ab" * 32}
    )
    check_head_matches(head, {"name": "timesenclip", "dim": 16})
    with pytest.raises(UserError, match="senclip"):
        check_head_matches(head, {"name": "senclip"})
    with pytest.raises(UserError, match="checkpoint"):
        check_head_matches(head, {"name": "timesenclip", "checkpoint_sha256": "cd" * 32})
    with pytest.raises(ValueError):
        head.predict(np.zeros((2, 5), np.float32))
