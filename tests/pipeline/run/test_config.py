"""RunConfig: frozen parts, one flat view (``--config``, ``run.json``), and an output hash over
the parts that change pixels whose values did not change with the nesting (resumed runs)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pipeline.base.errors import UserError
from pipeline.reading.cube import MaskConfig
from pipeline.run.config import FLAT_KEYS, ExecutionConfig, RunConfig
from pipeline.stac.search import SearchConfig

YEAR = {"start": dt.date(2023, 1, 1), "end": dt.date(2023, 12, 31)}

#: Hashes computed with the flat RunConfig before the parts (commit 5167cc5), renewed when the SCL
#: mask became a setting (issue 25: scl_mask is in every hash; a map made before is another map);
#: with --save-embeddings, renewed when the field's basis became the model's (issue 28).
PINNED = [
    ({"region": "demo", **YEAR, "untrained": True}, "ea3c2727acf9c232"),
    (
        {
            "region": "freising",
            "start": dt.date(2022, 1, 1),
            "end": dt.date(2022, 12, 31),
            "model": "senclip",
            "untrained": True,
            "period": "annual",
            "calibration": "reference",
            "legend": "lucas-lc8",
            "tile_size": 100,
            "bbox": (11.6, 48.3, 11.8, 48.45),
            "max_cloud": 30.0,
            "mask_snow": False,
            "workers": 3,
            "out": "/tmp/x",
            "precision": "fp32",
        },
        "af397350a4926d76",
    ),  # fmt: skip
    (
        {
            "region": "demo",
            **YEAR,
            "untrained": True,
            "save_embeddings": True,
            "field_dims": 32,
            "top_k": 2,
            "profile": "demo",
            "retries": 5,
            "progress": False,
        },
        "11f310d55e35e7a4",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("flat", "expected"), PINNED)
def test_output_hash_values_are_those_of_the_flat_config(flat, expected):
    assert RunConfig.of(**flat).output_hash() == expected


def test_the_parts_are_the_existing_search_and_mask_configs():
    cfg = RunConfig.of(region="demo", **YEAR, untrained=True, max_cloud=20, mask_snow=False)
    assert isinstance(cfg.search, SearchConfig) and cfg.search.max_cloud == 20.0
    assert cfg.mask == MaskConfig(mask_snow=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.seed = 3  # type: ignore[misc]


def test_flat_view_round_trips_and_covers_every_field():
    cfg = RunConfig.of(region="demo", **YEAR, untrained=True, model="senclip", window=32,
                       stride=16, top_k=2, workers=2)  # fmt: skip
    assert RunConfig.from_flat(cfg.flat()) == cfg
    assert set(cfg.flat()) == set(FLAT_KEYS) and cfg.flat()["model"] == "senclip"
    assert cfg.with_(top_k=3).output.top_k == 3 and cfg.with_(top_k=3).chips == cfg.chips


def test_execution_settings_do_not_change_the_hash_and_every_other_part_does():
    cfg = RunConfig.of(region="demo", **YEAR, untrained=True)
    for f in dataclasses.fields(ExecutionConfig):
        value = {"out": "/elsewhere", "cluster": "slurm", "workers": 7, "cluster_config": "x.yaml",
                 "retries": 9, "max_attempts": 2, "max_unreadable": "0"}.get(f.name, True)  # fmt: skip
        assert cfg.with_(**{f.name: value}).output_hash() == cfg.output_hash(), f.name
    changes = {"start": dt.date(2023, 2, 1), "model": "senclip", "max_cloud": 10.0,
               "mask_snow": False, "tile_size": 128, "top_k": 1, "seed": 1, "bbox": (1, 2, 3, 4),
               "ood": True, "majority": 1, "mmu": 9}  # fmt: skip
    for key, value in changes.items():
        assert cfg.with_(**{key: value}).output_hash() != cfg.output_hash(), key


def test_unknown_flat_key_and_part_validation_are_one_line_errors():
    with pytest.raises(UserError, match="unknown key.*tile_sise"):
        RunConfig.from_flat({"region": "demo", **YEAR, "untrained": True, "tile_sise": 3})
    with pytest.raises(UserError, match="--top-k must be between 1 and 10"):
        RunConfig.of(region="demo", **YEAR, untrained=True, top_k=11)
    with pytest.raises(UserError, match="--window must be between 8 and 512"):
        RunConfig.of(region="demo", **YEAR, untrained=True, model="senclip", window=4)
    with pytest.raises(UserError, match="--majority must be a radius of 0"):
        RunConfig.of(region="demo", **YEAR, untrained=True, majority=-1)
    with pytest.raises(UserError, match="--mmu must be 0 .off. or 2"):
        RunConfig.of(region="demo", **YEAR, untrained=True, mmu=1)
    with pytest.raises(UserError, match="no weights for timesenclip"):
        RunConfig.of(region="demo", **YEAR)
