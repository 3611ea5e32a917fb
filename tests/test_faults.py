"""Faults inside the data: a corrupt COG and a missing asset cost their scene, not the map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture()
def damaged_catalog(small_catalog, tmp_path) -> tuple[Path, str, str]:
    """A copy of the small catalog with one scene's red COG corrupt and another's SCL missing."""
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(small_catalog, root)
    doc = json.loads((root / "items.json").read_text())
    feats = doc["features"] if isinstance(doc, dict) else doc
    for f in feats:  # hrefs point into the original folder: repoint them at the copy
        for a in f["assets"].values():
            a["href"] = a["href"].replace(str(small_catalog), str(root))
    corrupt, missing = feats[2], feats[5]
    Path(corrupt["assets"]["red"]["href"].removeprefix("file://")).write_bytes(b"\0garbage")
    del missing["assets"]["scl"]
    (root / "items.json").write_text(json.dumps(doc))
    return root, corrupt["id"], missing["id"]


def test_corrupt_cog_and_missing_asset_skip_their_scene(damaged_catalog, small_catalog, caplog):
    import pystac
    from conftest import SMALL_BOUNDS
    from odc.geo.geobox import GeoBox

    from pipeline.composite import composite
    from pipeline.cube import load_cube

    root, corrupt_id, missing_id = damaged_catalog

    def items(folder):
        doc = json.loads((folder / "items.json").read_text())
        return [
            pystac.Item.from_dict(f) for f in (doc["features"] if isinstance(doc, dict) else doc)
        ]

    gb = GeoBox.from_bbox(SMALL_BOUNDS, "EPSG:32632", resolution=10)
    with caplog.at_level("WARNING"):
        bad = load_cube(items(root), gb)
    good = load_cube(items(small_catalog), gb)
    assert missing_id in caplog.text and "skipping scene" in caplog.text
    assert bad.sizes["time"] == good.sizes["time"] - 1  # the scene without SCL is gone
    red = list(bad["band"].values).index("B4")
    red_nan = np.isnan(bad.values[:, red]).all(axis=(1, 2))
    assert red_nan.sum() >= 1  # the corrupt band reads as nodata for its scene
    cb = composite(bad.values, bad["time"].values, *_period())
    cg = composite(good.values, good["time"].values, *_period())
    assert cb.counts.sum() < cg.counts.sum()  # valid_obs shows what was lost
    assert np.isfinite(cb.values).any()  # and the composite is still made


def _period():
    import datetime as dt

    return dt.date(2023, 1, 1), dt.date(2023, 12, 31), "monthly"
