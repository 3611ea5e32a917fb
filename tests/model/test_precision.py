"""CPU inference precision: --precision auto|fp32|bf16 and the cache-sized CPU batch."""

from __future__ import annotations

import numpy as np
import pytest

import model
from model import engine
from pipeline.base.errors import UserError


@pytest.fixture()
def tsc():
    m = model.get_model("timesenclip", untrained=True, seed=0, device="cpu")
    yield m
    m.__dict__.pop("precision", None)


def test_cpu_batch_size_is_bit_identical(tsc):
    """The cache-sized CPU batch gives exactly the numbers of the previous 2,048 batches."""
    from model.precision import fixed_sample

    x = fixed_sample(600)
    small = engine.embed_pixels(tsc, x)  # CPU_PIXEL_BATCH
    assert engine.pixel_batch_size("cpu") == engine.CPU_PIXEL_BATCH < 600
    np.testing.assert_array_equal(small, engine.embed_pixels(tsc, x, batch_size=2048))


def test_bf16_runs_in_bf16_and_stays_close(tsc):
    from model.precision import fixed_sample

    x = fixed_sample(64)
    engine.set_precision(tsc, "fp32")
    a = engine.embed_pixels(tsc, x)
    engine.set_precision(tsc, "bf16")
    assert engine.model_dtype(tsc) == engine.torch.bfloat16
    b = engine.embed_pixels(tsc, x)
    assert not np.array_equal(a, b)  # really computed in bf16
    assert (a * b).sum(1).min() > 0.99
    with pytest.raises(UserError):
        engine.set_precision(tsc, "fp16")


def test_resolve_auto_measures_once_and_caches(tsc, tmp_path, monkeypatch):
    from model.precision import resolve

    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path))
    w = np.random.default_rng(0).normal(size=(5, tsc.embed_dim)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    got, info = resolve(tsc, "auto", w)
    assert got in ("fp32", "bf16") and info["resolved"] == got
    assert 0 <= info["agreement"] <= 1 and info["fp32_items_per_cpu_s"] > 0
    wants_bf16 = info["speedup"] >= 1.1 and info["agreement"] >= 0.99
    assert got == ("bf16" if wants_bf16 else "fp32")
    assert not hasattr(tsc, "precision")  # measuring leaves the model as it was
    again, info2 = resolve(tsc, "auto", w)
    assert again == got and "cached" in info2
    assert resolve(tsc, "fp32", w)[0] == "fp32"
    with pytest.raises(UserError, match="precision"):
        resolve(tsc, "half", w)


def test_precision_is_part_of_the_config_and_hash():
    import datetime as dt

    from pipeline.run.config import RunConfig

    base = RunConfig.of(
        region="demo", start=dt.date(2023, 1, 1), end=dt.date(2023, 12, 31), untrained=True
    )
    assert base.model.precision == "auto"
    fp32, bf16 = base.with_(precision="fp32"), base.with_(precision="bf16")
    assert fp32.output_hash() != bf16.output_hash()
    with pytest.raises(UserError, match="precision"):
        base.with_(precision="fp16")
    m = bf16.model.load()
    try:
        assert m.precision == "bf16"
    finally:
        m.__dict__.pop("precision", None)
