"""Legends, text classifier (+ disk cache), calibration, probabilities, prompt selection, engine."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from model import engine
from model.legends import list_legends, load_legend, save_embeddings
from model.zeroshot import (
    build_classifier,
    class_embeddings,
    classify,
    clear_memory_cache,
    fit_calibration,
    probabilities,
    prompt_scores,
    select_prompts,
)
from pipeline.base.errors import UserError
from tests.paths import TEST_DATA

DATA = TEST_DATA
BUILTIN = {"demo": 6, "eurosat10": 10, "bigearthnet19": 19, "lucas-lc8": 8, "lucas-lu16": 16}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    clear_memory_cache()


class FakeModel:
    """Deterministic text embeddings from a hash of each prompt; counts calls."""

    name = "fake"
    embed_dim = 16
    identity = "fake:1"

    def __init__(self) -> None:
        self.calls = 0

    def text_embed(self, prompts):
        self.calls += 1
        rows = []
        for p in prompts:
            seed = int(hashlib.sha256(p.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=-1)


@pytest.fixture(scope="module")
def tsc():
    return model.load("timesenclip", untrained=True, seed=0, device="cpu")


# ----------------------------------------------------------------------------- legends


def test_builtin_legends_all_styles():
    assert set(BUILTIN) <= set(list_legends())
    for name, n in BUILTIN.items():
        for style in ("generic", "aerial", "ground", "mixed", "name"):
            lg = load_legend(name, style=style)
            assert len(lg.classes) == n and lg.style == style, (name, style)
            for c in lg.classes:
                assert c.prompts and all(isinstance(p, str) and p for p in c.prompts)
                assert len(set(c.prompts)) == len(c.prompts), (name, c.name)
                assert c.color.startswith("#") and len(c.color) == 7
            assert len(set(lg.colors)) == n, f"{name}: classes share a colour"
    demo = load_legend("demo")
    assert demo.names == ("water", "forest", "cropland", "grassland", "built-up", "bare")
    assert load_legend("lucas-lc8", "generic").classes[0].prompts[0] == (
        "a centered satellite photo of Artificial Land."
    )
    assert load_legend("eurosat").name == "eurosat10"  # alias
    with pytest.raises(UserError, match="unknown prompt style"):
        load_legend("demo", style="poetic")
    with pytest.raises(UserError, match="unknown legend"):
        load_legend("no-such-legend")


def test_user_yaml_legend(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(
        "classes:\n"
        "  water: [a lake, a river]\n"
        "  trees: [a forest]\n"
        "  town: a town\n"
        "colors:\n"
        "  water: '#0000FF'\n"
        "  trees: [0, 128, 0]\n"
    )
    lg = load_legend(p, style="ground")  # short form: the same prompts for every style
    assert lg.name == "mine" and lg.names == ("water", "trees", "town")
    assert lg.classes[0].prompts == ("a lake", "a river")
    assert lg.colors[:2] == ("#0000ff", "#008000") and lg.colors[2].startswith("#")
    assert lg.classes[1].rgb == (0, 128, 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes:\n  water: [a lake]\ncolors:\n  water: blue\n")
    with pytest.raises(UserError, match="colour 'blue'"):
        load_legend(bad)
    bad.write_text("classes:\n  water:\n    aerial: [a lake]\n")
    with pytest.raises(UserError, match="no prompts for style 'ground'"):
        load_legend(bad, style="ground")
    bad.write_text("classes: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_legend(bad)


def test_senclip_json_import():
    lg = load_legend(DATA / "prompts" / "senclip_prompt_eurosat_ground_mixed.json")
    assert len(lg.classes) == 10 and lg.names[0] == "Annual Crop Land"
    assert all(len(c.prompts) == 51 for c in lg.classes)
    assert len(set(lg.colors)) == 10


def test_prompt_hash_ignores_colours_not_prompts(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("classes: {x: [one, two], y: [three]}\ncolors: {x: '#000000'}\n")
    b.write_text("classes: {x: [one, two], y: [three]}\n")
    assert load_legend(a).prompt_hash == load_legend(b).prompt_hash
    b.write_text("classes: {x: [one, two], y: [four]}\n")
    assert load_legend(a).prompt_hash != load_legend(b).prompt_hash


def test_embedding_legend(tmp_path):
    vecs = np.random.default_rng(0).normal(size=(3, 16)).astype("float32")
    path = save_embeddings(tmp_path / "fixed.npz", ["a", "b", "c"], vecs, colors=["#ff0000"] * 3)
    lg = load_legend(path)
    assert lg.names == ("a", "b", "c") and lg.embeddings is not None
    fake = FakeModel()
    w = build_classifier(fake, lg)
    assert fake.calls == 0
    assert torch.allclose(w, F.normalize(torch.from_numpy(vecs), dim=-1))
    other = save_embeddings(tmp_path / "other.npz", ["a", "b", "c"], vecs * 2)
    assert load_legend(other).prompt_hash != lg.prompt_hash
    wrong = save_embeddings(tmp_path / "wide.npz", ["a"], np.ones((1, 8)))
    with pytest.raises(UserError, match="8-d embeddings"):
        build_classifier(fake, load_legend(wrong))
    torch.save({"names": ["a", "b", "c"], "embeddings": torch.from_numpy(vecs)}, tmp_path / "e.pt")
    assert torch.allclose(build_classifier(fake, load_legend(tmp_path / "e.pt")), w)


# ----------------------------------------------------------------------------- classifier


def test_classifier_recipe_and_disk_cache(tmp_path):
    fake = FakeModel()
    lg = load_legend("demo", style="aerial")
    w = build_classifier(fake, lg)
    assert fake.calls == 1  # every prompt tokenised/encoded in one batch
    assert w.shape == (6, 16) and torch.allclose(w.norm(dim=1), torch.ones(6), atol=1e-6)
    prompts = [p for c in lg.classes for p in c.prompts]
    e = fake.text_embed(prompts)
    expect = torch.stack(
        [
            F.normalize(F.normalize(e[i : i + len(c.prompts)], dim=-1).mean(0), dim=0)
            for i, c in zip(np.cumsum([0] + [len(c.prompts) for c in lg.classes]), lg.classes)
        ]
    )
    assert torch.allclose(w, expect, atol=1e-6)
    files = list((tmp_path / "cache" / "classifiers").glob("*.pt"))
    assert len(files) == 1
    # a second build (new process: empty memory cache) hits the disk cache
    clear_memory_cache()
    fresh = FakeModel()
    assert torch.equal(build_classifier(fresh, lg), w) and fresh.calls == 0
    # another prompt set or another model identity misses
    build_classifier(fresh, load_legend("demo", style="ground"))
    assert fresh.calls == 1
    fresh.identity = "fake:2"
    build_classifier(fresh, lg)
    assert fresh.calls == 2
    assert build_classifier(fresh, lg, cache=False).shape == (6, 16) and fresh.calls == 3


def test_planted_class_is_found(tsc):
    lg = load_legend("demo", style="generic")  # 18 prompts: the CPU text tower is slow
    w = build_classifier(tsc, lg)
    assert w.shape == (6, 512)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, 60)
    emb = w.numpy()[truth] + rng.normal(0, 0.02, (60, 512)).astype("float32")
    pred = classify(emb, w, k=3)
    assert np.array_equal(pred.classes, truth)
    assert pred.classes.dtype == np.int64 and pred.confidence.dtype == np.float32
    assert pred.topk_classes.shape == (60, 3) and np.all(pred.topk_classes[:, 0] == truth)
    assert np.all(np.diff(pred.topk_probs, axis=1) <= 0)
    p = probabilities(emb, w)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p.max(1), pred.confidence, rtol=1e-5)
    # torch input on the same footing
    assert np.array_equal(classify(torch.from_numpy(emb), w).classes, truth)


def test_calibration_removes_a_class_bias():
    rng = np.random.default_rng(1)
    # like CLIP: class embeddings share a common direction, so all cosines are positive
    common = rng.normal(size=32)
    w = rng.normal(size=(4, 32)) + 1.5 * common / np.linalg.norm(common) * np.sqrt(32)
    w = F.normalize(torch.from_numpy(w.astype("float32")), dim=-1)
    truth = rng.integers(0, 4, 400)
    bias = 0.9 * w[0].numpy()  # every sample leans towards class 0
    emb = w.numpy()[truth] * 0.5 + bias + rng.normal(0, 0.05, (400, 32))
    raw = classify(emb, w)
    assert (raw.classes == 0).mean() > 0.9
    calib = fit_calibration(emb[:200], w)  # fitted once on a reference sample
    assert calib.shape == (4,) and calib.dtype == np.float64
    for mode in ("shifted", "ratio"):
        fixed = classify(emb[200:], w, calibration=calib, mode=mode)
        assert (fixed.classes == truth[200:]).mean() > 0.95, mode
    # ratio mode is undefined for non-positive class means; shifted always works
    neg = -np.abs(calib)
    with pytest.raises(UserError, match="ratio calibration is undefined"):
        classify(emb, w, calibration=neg, mode="ratio")
    assert classify(emb, w, calibration=neg).classes.shape == (400,)
    # equal class means change nothing
    same = classify(emb, w, calibration=np.full(4, 0.3))
    assert np.array_equal(same.classes, raw.classes)
    np.testing.assert_allclose(same.topk_probs, raw.topk_probs, rtol=1e-4, atol=1e-6)
    with pytest.raises(UserError, match="3 values for 4 classes"):
        classify(emb, w, calibration=np.ones(3))


def test_prompt_selection_drops_outliers():
    fake = FakeModel()
    # class "a": three near-identical prompts and one unrelated; class "b": random ones
    base = torch.randn(16, generator=torch.Generator().manual_seed(3))
    emb = torch.stack(
        [
            base + 0.05 * torch.randn(16, generator=torch.Generator().manual_seed(i))
            for i in range(3)
        ]
        + [torch.randn(16, generator=torch.Generator().manual_seed(99))]
        + [torch.randn(16, generator=torch.Generator().manual_seed(100 + i)) for i in range(3)]
    )
    scores = prompt_scores(emb, [4, 3])
    assert scores[0].shape == (4,) and np.argmin(scores[0]) == 3
    assert class_embeddings(emb, [4, 3]).shape == (2, 16)
    lg = load_legend("demo", style="mixed")
    sel = select_prompts(fake, lg, k=2)
    assert all(len(c.prompts) == 2 for c in sel.classes) and sel.style == "mixed+top2"
    assert all(set(s.prompts) <= set(c.prompts) for s, c in zip(sel.classes, lg.classes))
    assert sel.prompt_hash != lg.prompt_hash


# ----------------------------------------------------------------------------- engine


def test_embed_pixels_batches_and_matches_model(tsc):
    series = np.random.default_rng(0).uniform(0, 5000, (9, 12, 10)).astype("float32")
    out = engine.embed_pixels(tsc, series, batch_size=4)
    assert out.shape == (9, 512) and out.dtype == np.float32
    ref = tsc.pixel_embed(tsc.preprocess(series)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(engine.embed_pixels(tsc, series), out, atol=1e-5)
    quarterly = series.reshape(9, 4, 3, 10).mean(2).astype("float32")
    assert engine.embed_pixels(tsc, quarterly).shape == (9, 512)
    assert engine.embed_pixels(tsc, series[:0]).shape == (0, 512)
    w = F.normalize(torch.randn(6, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    cal = fit_calibration(out, w)
    p = engine.pixel_probabilities(tsc, series, w, cal, batch_size=4)
    np.testing.assert_allclose(p, probabilities(out, w, cal), atol=1e-5)
    assert engine.inference_dtype("cpu") == torch.float32
    assert engine.pixel_batch_size("cuda") >= 65536
    with pytest.raises(UserError):
        engine.embed_pixels(tsc, series[0])
    with pytest.raises(UserError, match="senclip"):
        engine.embed_chips(tsc, np.zeros((1, 3, 8, 8), "float32"))


def test_embed_chips_matches_model():
    m = model.get_model("senclip", untrained=True, seed=0, device="cpu")
    assert model.get_model("senclip", untrained=True, seed=0, device="cpu") is m
    chips = np.random.default_rng(0).uniform(0, 0.4, (2, 3, 32, 32)).astype("float32")
    out = engine.embed_chips(m, chips, batch_size=1)
    assert out.shape == (2, 512)
    np.testing.assert_allclose(out, m.image_embed(m.preprocess(chips)).numpy(), atol=1e-5)
    w = F.normalize(torch.randn(4, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    p = engine.chip_probabilities(m, chips, w)
    np.testing.assert_allclose(p, probabilities(out, w), atol=1e-5)
    model.clear_cache()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_engine_on_cuda_matches_cpu(tsc):
    gpu = model.load("timesenclip", untrained=True, seed=0, device="cuda")
    assert engine.inference_dtype(gpu.device) in (torch.bfloat16, torch.float16)
    series = np.random.default_rng(0).uniform(0, 5000, (300, 12, 10)).astype("float32")
    a = engine.embed_pixels(gpu, series, batch_size=128)  # several pinned batches
    b = engine.embed_pixels(tsc, series)
    assert (a * b).sum(1).min() > 0.99  # bf16 vs fp32
    w = F.normalize(torch.randn(6, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    p = engine.pixel_probabilities(gpu, series, w, batch_size=128)
    np.testing.assert_allclose(p, probabilities(a, w), atol=2e-3)
    s_gpu = model.load("senclip", untrained=True, seed=0, device="cuda")
    s_cpu = model.load("senclip", untrained=True, seed=0, device="cpu")
    chips = np.random.default_rng(1).uniform(0, 0.4, (3, 3, 40, 40)).astype("float32")
    pre = s_gpu.preprocess(torch.from_numpy(chips).cuda()).cpu()
    assert (pre - s_cpu.preprocess(chips)).abs().max() < 0.035  # <= two 8-bit levels
    e = engine.embed_chips(s_gpu, chips, batch_size=2)
    assert (e * engine.embed_chips(s_cpu, chips)).sum(1).min() > 0.99
