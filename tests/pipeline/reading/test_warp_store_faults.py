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


# -- per-read retries (pipeline.reading.warp_driver): a fault costs one read, not the load -------

#: Per fault kind, (fault rate, burst). 429/503 come in bursts of 4, which outlast GDAL's own
#: 1 + 3 tries of one request, so the read itself fails and is retried; resets and truncated
#: bodies GDAL does not retry at all.
FAULTS = {"429": (0.01, 4), "503": (0.01, 4), "reset": (0.05, 1), "truncate": (0.05, 1)}


@pytest.fixture(scope="module")
def clean_load(small_catalog):
    """The local cube on EPSG:3035 and the requests of the same load through a fault-free store."""
    from pipeline.reading.cube import load_cube
    from pipeline.testing.object_store import serve_store

    local = load_cube(_items(small_catalog), _geobox())
    with serve_store(small_catalog) as store:
        remote = load_cube(_items(small_catalog, store.url), _geobox())
        requests = store.counter.requests
    np.testing.assert_array_equal(remote.values, local.values)
    return local, requests


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_a_transient_fault_costs_one_read_again_not_the_whole_load(small_catalog, clean_load, kind):
    """Issue 26: each source read of the warp retries its own fault (backoff, GDAL's cached bytes
    of that file dropped); the cube equals the fault-free one and the store sees the fault-free
    load's requests plus a few per fault (the failed request, a status probe, the file's
    re-read), where retrying the whole load re-reads every object (twice the requests and more)."""
    from pipeline.reading.cube import load_cube
    from pipeline.testing.object_store import StoreConfig, serve_store

    local, clean_requests = clean_load
    rate, burst = FAULTS[kind]
    cfg = StoreConfig(fault_rate=rate, fault_kinds=(kind,), burst=burst, seed=3)
    with serve_store(small_catalog, cfg) as store:
        remote = load_cube(_items(small_catalog, store.url), _geobox())
        c = store.counter
    faults = c.faults[kind]
    assert faults >= 2, dict(c.faults)  # the faults happened
    np.testing.assert_array_equal(remote.values, local.values)
    assert c.requests <= clean_requests + 3 * faults, (c.requests, clean_requests, faults)


def test_a_gone_object_fails_its_read_at_once_naming_its_scene(small_catalog, clean_load):
    """Issue 26: a 404 is final at once (no retries, no status probe of every other object): a
    permanent ReadFailure naming the scene and the object, so the tile can drop that scene."""
    from pipeline.reading.cube import ReadFailure, load_cube
    from pipeline.testing.object_store import StoreConfig, serve_store

    _, clean_requests = clean_load
    feats = json.loads((small_catalog / "items.json").read_text())["features"]
    lost = feats[3]
    rel = lost["assets"]["red"]["href"].removeprefix(_prefix(small_catalog) + "/")
    with serve_store(small_catalog, StoreConfig(missing={rel})) as store:
        with pytest.raises(ReadFailure) as info:
            load_cube(_items(small_catalog, store.url), _geobox())
        c = store.counter
    exc = info.value
    assert exc.permanent and exc.status == 404 and exc.scenes == (lost["id"],)
    assert exc.asset.endswith(rel) and lost["id"] in str(exc.scenes)
    assert list(exc.permanent_scenes()) == [lost["id"]]
    assert c.paths[rel] <= 3  # GDAL's HEAD and GET, one status probe: never retried
    assert c.requests < clean_requests, (c.requests, clean_requests)  # stopped at the lost read
    others = max(n for p, n in c.paths.items() if p != rel)
    assert others <= 2, others  # the objects read before: GDAL's HEAD and GET, no probe each


def test_the_warp_reads_many_files_at_once_with_the_same_result(small_catalog, clean_load):
    """odc-stac alone reads one (band, acquisition) after the other: at 30 ms per request one
    request was in flight per worker. Over HTTP, through the reader's threads, many are, and the
    cube is the serial local load's, bit for bit."""
    from pipeline.reading import load_reflectance
    from pipeline.testing.object_store import StoreConfig, serve_store

    serial, _ = clean_load
    with serve_store(small_catalog, StoreConfig(ttfb_s=0.005)) as store:
        refl = load_reflectance(_items(small_catalog, store.url), _geobox(), native=False)
        in_flight = store.counter.max_in_flight
    assert not refl.native
    assert in_flight >= 8, in_flight
    np.testing.assert_array_equal(refl.values, serial.values)
