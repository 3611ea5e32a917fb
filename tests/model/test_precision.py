"""CPU inference precision: the cache-sized CPU batch, bf16, and the backend in the config/hash.

The backends and ``--backend auto`` are tested in ``test_backends.py``.
"""

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
    m.__dict__.pop("cpu_batch", None)


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


def test_model_batch_is_used(tsc, monkeypatch):
    """``set_precision(..., batch=)`` sets the CPU batch the engine runs."""
    seen = []
    real = engine._run_batches
    monkeypatch.setattr(
        engine, "_run_batches", lambda x, b, *a, **k: seen.append(b) or real(x, b, *a, **k)
    )
    engine.set_precision(tsc, "fp32", batch=96)
    engine.embed_pixels(tsc, np.ones((4, 12, 10), np.float32))
    assert seen == [96]


def test_backend_is_part_of_the_config_and_hash():
    import datetime as dt

    from pipeline.run.config import RunConfig

    base = RunConfig.of(
        region="demo", start=dt.date(2023, 1, 1), end=dt.date(2023, 12, 31), untrained=True
    )
    assert base.model.precision == "auto" and base.model.cpu_batch is None
    runs = [base.with_(precision=p) for p in ("fp32", "bf16", "int8", "openvino-bf16")]
    assert len({r.output_hash() for r in runs}) == 4
    assert runs[0].with_(cpu_batch=1024).output_hash() != runs[0].output_hash()
    with pytest.raises(UserError, match="backend"):
        base.with_(precision="fp16")
    m = base.with_(precision="int8", cpu_batch=512).model.load()
    try:
        assert (m.precision, m.cpu_batch) == ("int8", 512)
    finally:
        m.__dict__.pop("precision", None)
        m.__dict__.pop("cpu_batch", None)


def test_backend_flag_and_its_old_name():
    import argparse

    from pipeline.commands import run

    p = argparse.ArgumentParser()
    run.add_arguments(p)
    a = p.parse_args(["--region", "demo", "--backend", "openvino-bf16"])
    b = p.parse_args(["--region", "demo", "--precision", "bf16"])
    assert (a.precision, b.precision) == ("openvino-bf16", "bf16")
