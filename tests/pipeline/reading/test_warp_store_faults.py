"""The warp read path (odc-stac, any target grid) against a faulty object store (issue 26).

Real HTTP on loopback (:mod:`pipeline.testing.object_store`): truncated bodies, resets and 503s
are retried until the cube equals the local read; an object answering 404 forever is pinned on
its scene, so the tile can drop that scene (GDAL's warp errors name no URL).
"""

from __future__ import annotations

import json

import numpy as np
import pytest


def _prefix(catalog) -> str:
    """The hrefs' common start (``file:///.../catalog``), whatever spelling of the folder."""
    doc = json.loads((catalog / "items.json").read_text())
    return doc["features"][0]["assets"]["red"]["href"].split("/items/")[0]


def _items(catalog, base: str | None = None):
    import pystac

    text = (catalog / "items.json").read_text()
    if base:
        text = text.replace(_prefix(catalog), base)
    return [pystac.Item.from_dict(f) for f in json.loads(text)["features"]]


def _geobox():
    from odc.geo.geobox import GeoBox

    from tests.conftest import SMALL_BOUNDS

    # the small catalog's middle, on EPSG:3035 (every read is warped from UTM 32N)
    w, s, e, n = SMALL_BOUNDS
    utm = GeoBox.from_bbox((w + 160, s + 160, e - 160, n - 160), "EPSG:32632", resolution=10)
    return utm.to_crs("EPSG:3035")


def test_transient_faults_are_retried_until_the_cube_equals_the_local_one(small_catalog):
    from pipeline.reading.cube import load_cube
    from pipeline.testing.object_store import StoreConfig, serve_store

    local = load_cube(_items(small_catalog), _geobox())
    cfg = StoreConfig(fault_rate=0.05, fault_kinds=("truncate", "reset", "503"), seed=3)
    with serve_store(small_catalog, cfg) as store:
        remote = load_cube(_items(small_catalog, store.url), _geobox())
        faults = dict(store.counter.faults)
    assert faults.get("truncate", 0) > 0, faults  # the faults happened
    assert np.isfinite(local.values).any()
    np.testing.assert_array_equal(remote.values, local.values)


def test_an_object_gone_for_good_is_pinned_on_its_scene(small_catalog):
    from pipeline.reading.cube import ReadFailure, load_cube
    from pipeline.testing.object_store import StoreConfig, serve_store

    feats = json.loads((small_catalog / "items.json").read_text())["features"]
    lost = feats[3]
    rel = lost["assets"]["red"]["href"].removeprefix(_prefix(small_catalog) + "/")
    with serve_store(small_catalog, StoreConfig(missing={rel})) as store:
        with pytest.raises(ReadFailure) as info:
            load_cube(_items(small_catalog, store.url), _geobox())
    gone = info.value.permanent_scenes()
    assert list(gone) == [lost["id"]]
    assert gone[lost["id"]]["status"] == 404 and gone[lost["id"]]["asset"].endswith(rel)
