"""BigEarthNet read from the folder of patch folders itself (the released archive's
``BigEarthNet-v1.0/``, or a subset of it such as the dataset's own tiny sample), not only from
torchgeo's parent folder with split CSVs. Found by the real-data suite (tests/real)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.base.errors import UserError
from pipeline.evaluate.datasets import bigearthnet
from tests.data import make_eval_datasets as gen


def test_patch_folder_root_reads_like_torchgeo_root(tmp_path):
    root = gen.make_bigearthnet(tmp_path / "ben")
    via_parent = bigearthnet(root, split="all")
    direct = bigearthnet(root / "BigEarthNet-v1.0", split="all")
    assert [f.name for f in direct.folders] == [f.name for f in via_parent.folders]
    assert len(direct) == 7
    for i in range(len(direct)):
        np.testing.assert_array_equal(direct.target(i), via_parent.target(i))
    assert direct.read(0).shape == (12, 120, 120)
    with pytest.raises(UserError, match="no split file"):
        bigearthnet(root / "BigEarthNet-v1.0", split="test")
    with pytest.raises(UserError, match="no patch folders"):
        bigearthnet(tmp_path)
