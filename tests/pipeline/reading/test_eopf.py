"""ESA's EOPF Zarr products: the generator against real product metadata, the reader against
the COG path on the same scenes, the chunks one tile fetches over HTTP, and read failures."""

from __future__ import annotations

import copy
import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

REAL = (
    Path(__file__).parents[2]
    / "data/eopf/S2B_MSIL2A_20260721T100559_N0512_R022_T33UWQ_20260721T143508.excerpt.json"
)


def _features(folder: Path) -> list[dict]:
    doc = json.loads((Path(folder) / "items.json").read_text())
    return doc["features"] if isinstance(doc, dict) else doc


@pytest.fixture
def eopf_small(small_eopf_catalog) -> Path:
    """``small_pc_catalog``'s 12 scenes as EOPF Zarr products (real tile size and chunking)."""
    return small_eopf_catalog


@pytest.fixture(autouse=True)
def _fresh_products():
    from pipeline.reading.eopf import clear_products

    clear_products()
    yield
    clear_products()


def _geobox(row: int, col: int, h: int, w: int):
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from tests.conftest import SMALL_BOUNDS

    t = Affine(10, 0, SMALL_BOUNDS[0] + 10 * col, 0, -10, SMALL_BOUNDS[3] - 10 * row)
    return GeoBox((h, w), t, "EPSG:32632")


def _nodes(doc: dict, path: str = ""):
    """(path, zarr.json document) of every node of a nested ``members`` tree."""
    yield path, {k: v for k, v in doc.items() if k != "members"}
    for name, child in doc.get("members", {}).items():
        yield from _nodes(child, f"{path}/{name}".lstrip("/"))


# -- the generator against the real metadata ----------------------------------------------------
def test_generated_products_have_the_real_layout_attributes_and_chunking(eopf_small):
    """Every group and array of the real excerpt exists in a generated product with the same
    zarr.json: dtype, shape, chunking, chunk keys, codecs, fill value, dims and attributes."""
    real = json.loads(REAL.read_text())
    product = next((eopf_small / "items").glob("*.zarr"))
    n_arrays = 0
    for path, want in _nodes(real):
        got = json.loads((product / path / "zarr.json").read_text())
        if want["node_type"] == "group" and path:
            assert got == want, path
        elif want["node_type"] == "array":
            assert got == want, path
            n_arrays += 1
    assert n_arrays == 17  # 10 bands, SCL, x and y of the three resolution groups
    props = json.loads((product / "zarr.json").read_text())["attributes"]["stac_discovery"][
        "properties"
    ]
    real_props = real["attributes"]["stac_discovery"]["properties"]
    for key in ("processing:version", "product:type"):
        assert props[key] == real_props[key]
    assert props["proj:code"] == "EPSG:32632" and real_props["proj:code"].startswith("EPSG:")


def test_the_reader_opens_the_real_metadata(tmp_path):
    """A product made of the real zarr.json documents (coordinates from its own proj:bbox, no
    pixel chunk): the CRS, the grids and the scale/offset are read from ESA's attributes."""
    from pipeline.reading.eopf import open_product
    from pipeline.stac.eopf import EOPF_ARRAYS, EopfRef

    real = json.loads(REAL.read_text())
    root = tmp_path / "real.zarr"
    for path, doc in _nodes(real):
        (root / path).mkdir(parents=True, exist_ok=True)
        (root / path / "zarr.json").write_text(json.dumps(doc))
    west, _, _, north = real["attributes"]["stac_discovery"]["properties"]["proj:bbox"]
    import zarr

    group = zarr.open_group(zarr.storage.LocalStore(root), mode="r+")
    for parent in {p.rsplit("/", 1)[0] for p in EOPF_ARRAYS.values()}:
        res = 10 if parent.endswith("r10m") else 20
        n = group[f"{parent}/x"].shape[0]
        group[f"{parent}/x"][...] = (west + res * (np.arange(n) + 0.5)).astype(np.float32)
        group[f"{parent}/y"][...] = (north - res * (np.arange(n) + 0.5)).astype(np.float32)
    product = open_product(EopfRef(str(root), dict(EOPF_ARRAYS)))
    assert product.crs == "EPSG:32633"
    assert (product.scale, product.offset) == (0.0001, -0.1)
    g10, g20 = product.grids["B2"], product.grids["SCL"]
    assert (g10.res, g10.x0, g10.y0, g10.shape) == (10.0, 499980.0, 5500020.0, (10980, 10980))
    assert (g20.res, g20.x0, g20.y0, g20.shape) == (20.0, 499980.0, 5500020.0, (5490, 5490))
    assert product.arrays["SCL"].dtype == np.uint8 and product.arrays["B8A"].chunks == (915, 915)


# -- the same scenes as COGs and as EOPF Zarr ---------------------------------------------------
def test_items_are_recognised_as_eopf(eopf_small, small_pc_catalog):
    from pipeline.stac.bands import asset_keys
    from pipeline.stac.eopf import eopf_ref, is_eopf_item

    feat = _features(eopf_small)[0]
    assert is_eopf_item(feat) and not is_eopf_item(_features(small_pc_catalog)[0])
    ref = eopf_ref(feat)
    assert ref.root.endswith(".zarr") and ref.arrays["SCL"].endswith("l2a_classification/r20m/scl")
    assert asset_keys(feat)["B8A"] == "B8A_20m"  # the Data Space's keys, as its COG items
    only_product = {**feat, "assets": {"product": feat["assets"]["product"]}}
    assert eopf_ref(only_product) == ref
    from pipeline.stac.profiles import get_profile

    assert get_profile("cdse-zarr").collection == "sentinel-2-l2a"


def test_eopf_and_cogs_give_identical_reflectance_and_composites(eopf_small, small_pc_catalog):
    """Same scenes, read as provider COGs and as EOPF Zarr: bit-identical masked reflectance,
    offset verdicts and monthly composites (hence the same map) on a 48 px window."""
    import datetime as dt

    from pipeline.composite.window import composite_window
    from pipeline.reading import BlockReader, load_reflectance

    gb = _geobox(8, 8, 48, 48)  # crosses the 10 m and 20 m chunk boundaries of the products
    cog = load_reflectance(_features(small_pc_catalog), gb, reader=BlockReader())
    eo = load_reflectance(_features(eopf_small), gb, reader=BlockReader())
    assert eo.native and cog.native
    np.testing.assert_array_equal(eo.times, cog.times)
    np.testing.assert_array_equal(eo.values, cog.values)
    assert eo.offset_warnings == cog.offset_warnings
    assert 0.1 < np.isnan(eo.values).mean() < 0.95  # masked pixels and clear ones both present
    args = {"start": dt.date(2023, 1, 1), "end": dt.date(2023, 12, 31), "period": "monthly"}
    a = composite_window(_features(small_pc_catalog), gb, **args)
    b = composite_window(_features(eopf_small), gb, **args)
    assert a.acquisitions == b.acquisitions == len(cog.times)
    np.testing.assert_array_equal(a.composite.values, b.composite.values)
    np.testing.assert_array_equal(a.composite.counts, b.composite.counts)


def test_the_product_offset_is_checked_against_the_dn(eopf_small, tmp_path):
    """add_offset 0 on products whose DN carry +1000: the DN check names the scenes."""
    from pipeline.reading import BlockReader, load_reflectance

    root = tmp_path / "eopf"
    shutil.copytree(eopf_small, root)
    for meta in (root / "items").glob("*.zarr/measurements/reflectance/*/b*/zarr.json"):
        doc = json.loads(meta.read_text())
        doc["attributes"]["add_offset"] = 0.0
        meta.write_text(json.dumps(doc))
    feats = json.loads(
        (root / "items.json").read_text().replace(eopf_small.as_uri(), root.as_uri())
    )["features"]
    got = load_reflectance(feats, _geobox(0, 0, 64, 64), reader=BlockReader())
    # every scene with enough clear pixels in the window is named (8 of the 12 here)
    assert set(got.offset_warnings) <= {f["id"] for f in feats}
    assert len(got.offset_warnings) >= len(feats) // 2
    assert all("BOA_ADD_OFFSET" in r for r in got.offset_warnings.values())


# -- one tile over HTTP -------------------------------------------------------------------------
def test_one_tile_fetches_only_the_chunks_it_overlaps(eopf_small):
    """Over loopback HTTP a 32 px tile in one quadrant of the scenes fetches, per scene, one
    chunk of each of the 11 arrays it reads (of 4 per array in the product), plus the products'
    metadata on the first tile; the next tile fetches its 11 chunks per scene and nothing else,
    and a tile inside chunks already decoded fetches nothing."""
    from pipeline.bench.http_range import serve_ranges
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.testing.eopf import rebase

    feats = _features(eopf_small)
    n = len(feats)
    with serve_ranges(eopf_small) as (url, counter):
        items = rebase(feats, eopf_small, url)
        reader = BlockReader()
        load_reflectance(items, _geobox(0, 0, 32, 32), reader=reader)
        data = [p for p in counter.paths if "/c/" in p and not p.endswith(("/x/c/0", "/y/c/0"))]
        meta = [p for p in counter.paths if p not in data]
        assert len(data) == 11 * n
        assert {p.rsplit("/c/", 1)[1] for p in data} == {"2/2"}
        # zarr-python also probes the Zarr v2 keys once per node (answered 404, no bytes)
        probes = (".zarray", ".zattrs", ".zgroup", ".zmetadata")
        assert all(p.endswith(("zarr.json", "/x/c/0", "/y/c/0", *probes)) for p in meta)
        first = (counter.requests, counter.bytes)
        counter.reset()
        load_reflectance(items, _geobox(32, 32, 32, 32), reader=reader)
        assert counter.requests == 11 * n
        assert {p.rsplit("/c/", 1)[1] for p in counter.paths} == {"3/3"}
        want = sum((eopf_small / p.lstrip("/")).stat().st_size for p in counter.paths)
        assert counter.bytes == want
        second = (counter.requests, counter.bytes)
        counter.reset()  # decoded chunks stay in the worker's cache: a neighbour tile is free
        load_reflectance(items, _geobox(40, 40, 24, 24), reader=reader)
        assert counter.requests == 0
        print(f"first tile {first[0]} requests {first[1]} B; next tile {second[0]} / {second[1]} B; "
              f"metadata requests {len(meta)}")  # fmt: skip


# -- read failures ------------------------------------------------------------------------------
def _copy(eopf_small: Path, tmp_path: Path) -> tuple[Path, list[dict]]:
    root = tmp_path / "eopf"
    shutil.copytree(eopf_small, root)
    text = (root / "items.json").read_text().replace(eopf_small.as_uri(), root.as_uri())
    return root, json.loads(text)["features"]


def test_a_corrupt_chunk_or_missing_metadata_is_a_read_failure(eopf_small, tmp_path):
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.eopf import clear_products
    from pipeline.reading.failure import ReadFailure

    root, feats = _copy(eopf_small, tmp_path)
    bad = feats[3]["id"]
    chunk = root / "items" / f"{bad}.zarr/measurements/reflectance/r20m/b05/c/2/2"
    chunk.write_bytes(chunk.read_bytes()[:40])  # truncated
    with pytest.raises(ReadFailure) as err:
        load_reflectance(feats, _geobox(0, 0, 32, 32), reader=BlockReader())
    assert err.value.kind == "corrupt" and err.value.scenes == (bad,)
    assert "b05" in err.value.message
    clear_products()
    (root / "items" / f"{bad}.zarr/measurements/reflectance/r20m/b8a/zarr.json").unlink()
    with pytest.raises(ReadFailure) as err:
        load_reflectance(feats, _geobox(32, 32, 32, 32), reader=BlockReader())
    assert err.value.scenes == (bad,)


def test_an_http_error_on_a_chunk_is_a_read_failure_with_its_status(eopf_small):
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.failure import ReadFailure
    from pipeline.testing.eopf import rebase

    feats = _features(eopf_small)
    bad = feats[5]["id"]

    class Flaky(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            if bad in self.path and self.path.endswith("/b04/c/2/2"):
                self.send_error(503)
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Flaky, directory=str(eopf_small)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(ReadFailure) as err:
            load_reflectance(rebase(feats, eopf_small, url), _geobox(0, 0, 32, 32),
                             reader=BlockReader())  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert (err.value.kind, err.value.status, err.value.scenes) == ("http", 503, (bad,))


def test_an_absent_chunk_is_the_fill_value_as_zarr_specifies(eopf_small, tmp_path):
    """Zarr v3: a chunk absent from the store holds ``fill_value`` (here 0, nodata). Producers
    omit all-nodata chunks, so the reader cannot tell them from lost ones: documented, pinned."""
    from pipeline.reading import BlockReader, load_reflectance

    root, feats = _copy(eopf_small, tmp_path)
    gb = _geobox(0, 0, 32, 32)
    before = load_reflectance(feats, gb, reader=BlockReader()).values
    victim = feats[0]["id"]
    (root / "items" / f"{victim}.zarr/measurements/reflectance/r10m/b02/c/2/2").unlink()
    from pipeline.reading.eopf import clear_products

    clear_products()
    after = load_reflectance(feats, gb, reader=BlockReader()).values
    t = 0  # the first scene is the first solar day of the small catalog
    assert np.isfinite(before[t, 0]).any() and np.isnan(after[t, 0]).all()
    np.testing.assert_array_equal(after[1:], before[1:])


def test_mixed_layouts_in_one_window_are_a_user_error(eopf_small, small_pc_catalog):
    from pipeline.base.errors import UserError
    from pipeline.reading import BlockReader, load_reflectance

    mixed = _features(eopf_small)[:2] + copy.deepcopy(_features(small_pc_catalog)[2:4])
    with pytest.raises(UserError, match="one provider layout"):
        load_reflectance(mixed, _geobox(0, 0, 32, 32), reader=BlockReader())


def test_a_grid_off_the_products_lattice_is_a_user_error(eopf_small):
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.eopf import OffLattice
    from tests.conftest import SMALL_BOUNDS

    shifted = GeoBox((16, 16), Affine(10, 0, SMALL_BOUNDS[0] + 5, 0, -10, SMALL_BOUNDS[3]),
                     "EPSG:32632")  # fmt: skip
    with pytest.raises(OffLattice, match="10 m UTM lattice"):
        load_reflectance(_features(eopf_small), shifted, reader=BlockReader())
