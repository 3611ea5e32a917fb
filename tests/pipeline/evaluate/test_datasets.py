"""Dataset readers on tiny synthetic copies in the real on-disk layouts (tests/data generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.base.errors import UserError
from pipeline.evaluate.datasets import (
    BEN19,
    EUROSAT_CLASSES,
    ben_bands,
    bigearthnet,
    eurosat_ms,
    eurosat_ms_bands,
    eurosat_rgb,
)
from tests.data import make_eval_datasets as gen


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> dict[str, Path]:
    return gen.make_all(tmp_path_factory.mktemp("eval-data"))


def test_eurosat_rgb_layout(eval_data):
    ds = eurosat_rgb(eval_data["eurosat_rgb"])
    assert len(ds) == 30 and ds.class_names == EUROSAT_CLASSES
    assert ds.paths[0].parent.parent.name == "2750"
    imgs, labels = next(ds.batches(batch_size=7))
    assert imgs.shape == (7, 3, 64, 64) and imgs.dtype == np.float32
    assert 0 <= imgs.min() and imgs.max() <= 1
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2]
    # brighter classes come later (the generator's class signal survives JPEG)
    means = [imgs[labels == k].mean() for k in (0, 1, 2)]
    assert means[0] < means[1] < means[2]
    # the class folder is found from any parent, and a per-class limit applies
    assert len(eurosat_rgb(eval_data["eurosat_rgb"] / "2750", limit_per_class=1)) == 10


def test_eurosat_ms_layout_and_bands(eval_data):
    ds = eurosat_ms(eval_data["eurosat_ms"])
    assert len(ds) == 30
    assert "sentinel_2/tif" in ds.paths[0].as_posix()
    imgs, labels = next(ds.batches(batch_size=4))
    assert imgs.shape == (4, 13, 64, 64)
    assert imgs[0].mean() == pytest.approx(gen.class_level(0) + 0.005, abs=2e-3)
    assert eurosat_ms_bands(["B4", "B3", "B2"]) == [3, 2, 1]
    assert eurosat_ms_bands(["B8", "B8A", "B11", "B12"]) == [7, 12, 10, 11]


def test_bigearthnet_layout_and_labels(eval_data):
    ds = bigearthnet(eval_data["bigearthnet"], split="test")
    assert len(ds) == 5
    imgs, targets = next(ds.batches(batch_size=5))
    assert imgs.shape == (5, 12, 120, 120)
    assert targets.shape == (5, 19)
    arable, pastures = BEN19.index("Arable land"), BEN19.index("Pastures")
    assert np.flatnonzero(targets[0]).tolist() == [arable, pastures]
    assert np.flatnonzero(targets[1]).tolist() == [
        BEN19.index("Coniferous forest"),
        BEN19.index("Mixed forest"),
    ]
    assert np.flatnonzero(targets[2]).tolist() == [BEN19.index("Marine waters")]
    assert np.flatnonzero(targets[3]).tolist() == [
        BEN19.index("Urban fabric"),
        BEN19.index("Inland waters"),
    ]
    assert targets[4].sum() == 0  # "Port areas" has no 19-class equivalent
    val = bigearthnet(eval_data["bigearthnet"], split="val")
    # Peatbogs -> Inland wetlands, Natural grassland -> Natural grassland and sparsely vegetated
    assert set(np.flatnonzero(val.target(0))) == {15, 11}
    assert len(bigearthnet(eval_data["bigearthnet"], split="all")) == 7
    assert ben_bands(["B4", "B3", "B2"]) == [3, 2, 1]
    assert ben_bands(["B8A", "B11"]) == [8, 10]


def test_reader_errors(tmp_path, eval_data):
    with pytest.raises(UserError, match="not found"):
        eurosat_rgb(tmp_path / "missing")
    with pytest.raises(UserError, match="no EuroSAT class folders"):
        eurosat_rgb(tmp_path)
    with pytest.raises(UserError, match="BigEarthNet-v1.0"):
        bigearthnet(tmp_path)
    with pytest.raises(UserError, match="no split file"):
        bigearthnet(eval_data["bigearthnet"], split="nope")
