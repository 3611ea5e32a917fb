"""Faults inside the data: a corrupt COG is a read failure; a missing asset costs its scene."""

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


def _items(folder):
    import pystac

    doc = json.loads((folder / "items.json").read_text())
    return [pystac.Item.from_dict(f) for f in (doc["features"] if isinstance(doc, dict) else doc)]


def _geobox():
    from odc.geo.geobox import GeoBox

    from tests.conftest import SMALL_BOUNDS

    return GeoBox.from_bbox(SMALL_BOUNDS, "EPSG:32632", resolution=10)


def test_corrupt_cog_is_a_read_failure_naming_its_scene(damaged_catalog):
    """A file that cannot be read is lost input, never "no clear observation" (issue 11)."""
    import pickle

    from pipeline.reading.cube import ReadFailure, load_cube

    root, corrupt_id, missing_id = damaged_catalog
    with pytest.raises(ReadFailure) as info:
        load_cube(_items(root), _geobox())
    fail = info.value
    assert fail.kind == "corrupt" and fail.status is None
    assert fail.scenes == (corrupt_id,)
    again = pickle.loads(pickle.dumps(fail))  # crosses Dask process boundaries intact
    assert (again.kind, again.scenes, again.message) == (fail.kind, fail.scenes, fail.message)


def test_missing_asset_skips_its_scene_and_valid_obs_shows_it(
    damaged_catalog, small_catalog, caplog
):
    from pipeline.composite.median import composite
    from pipeline.reading.cube import load_cube

    root, corrupt_id, missing_id = damaged_catalog
    readable = [it for it in _items(root) if it.id != corrupt_id]
    good_items = [it for it in _items(small_catalog) if it.id != corrupt_id]
    with caplog.at_level("WARNING"):
        bad = load_cube(readable, _geobox())
    good = load_cube(good_items, _geobox())
    assert missing_id in caplog.text and "skipping scene" in caplog.text
    assert bad.sizes["time"] == good.sizes["time"] - 1  # the scene without SCL is gone
    cb = composite(bad.values, bad["time"].values, *_period())
    cg = composite(good.values, good["time"].values, *_period())
    assert cb.counts.sum() < cg.counts.sum()  # valid_obs shows what was lost
    assert np.isfinite(cb.values).any()  # and the composite is still made


def _period():
    import datetime as dt

    return dt.date(2023, 1, 1), dt.date(2023, 12, 31), "monthly"
