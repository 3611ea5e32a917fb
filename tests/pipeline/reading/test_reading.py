"""The native-grid read path: same numbers as odc-stac, each block decoded once, failures raised."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from pathlib import Path

import numpy as np
import pytest
from affine import Affine


@pytest.fixture(scope="module")
def es_scenes(tmp_path_factory) -> list[dict]:
    """Three Earth-Search-like acquisitions, 512 px at 10 m, 128 px COG blocks (seed 3)."""
    from pipeline.bench.cogs import provider_scenes

    return provider_scenes(tmp_path_factory.mktemp("es-like"), size=512, n=3, block=128, seed=3)


def _geobox(row: int, col: int, h: int, w: int, res: float = 10.0, dx: float = 0.0):
    from odc.geo.geobox import GeoBox

    from pipeline.bench.cogs import ORIGIN

    t = Affine(res, 0, ORIGIN[0] + col * 10 + dx, 0, -res, ORIGIN[1] - row * 10)
    return GeoBox((h, w), t, "EPSG:32632")


def _items(folder: Path):
    import pystac

    doc = json.loads((folder / "items.json").read_text())
    return [pystac.Item.from_dict(f) for f in (doc["features"] if isinstance(doc, dict) else doc)]


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
@pytest.mark.parametrize(
    "window",
    [(0, 0, 512, 512), (3, 5, 100, 77), (130, 131, 120, 140), (490, 480, 40, 50), (-7, -3, 40, 50)],
)
def test_fast_path_is_bit_identical_to_odc_stac(es_scenes, window, resampling):
    """Whole scene, odd offsets, windows across blocks and beyond the raster (nodata there)."""
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.cube import MaskConfig, load_cube

    gb = _geobox(*window)
    mask = MaskConfig(resampling=resampling)
    ref = load_cube(es_scenes, gb, mask=mask)
    got = load_reflectance(es_scenes, gb, mask=mask, reader=BlockReader())
    assert got.native
    assert got.offset_warnings == ref.attrs["offset_warnings"]
    np.testing.assert_array_equal(got.times, ref["time"].values)
    assert got.values.dtype == np.float32
    # the 20 m bands too: UPSAMPLE_TOLERANCE_DN is 0 (the kernels reproduce GDAL's warp)
    np.testing.assert_array_equal(got.values, ref.values)
    assert np.isfinite(got.values).any()


def test_same_day_scenes_fuse_like_odc_stac(es_scenes):
    """Two scenes of one solar day: the earlier fills first, the later fills its nodata corner."""
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.cube import load_cube

    later = copy.deepcopy(es_scenes[0])
    later["id"] = "S2B_32TNT_20230105_1_L2A"
    later["properties"]["datetime"] = "2023-01-05T10:31:00.000000Z"
    for key, asset in later["assets"].items():
        asset["href"] = es_scenes[1]["assets"][key]["href"]
    items = [later, *es_scenes]  # out of order on purpose
    gb = _geobox(0, 0, 300, 300)
    ref = load_cube(items, gb)
    got = load_reflectance(items, gb, reader=BlockReader())
    assert got.values.shape[0] == 3
    np.testing.assert_array_equal(got.values, ref.values)


def test_one_reader_reuses_its_work_arrays_without_stale_pixels(es_scenes):
    """Windows of one shape on one reader (its DN work arrays reused): a window inside the
    raster, one beyond its edge (nodata there), then a same-day pair fused over the previous
    window's DN; each equals odc-stac's read on its own."""
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.cube import load_cube

    later = copy.deepcopy(es_scenes[0])
    later["id"] = "S2B_32TNT_20230105_1_L2A"
    later["properties"]["datetime"] = "2023-01-05T10:31:00.000000Z"
    for key, asset in later["assets"].items():
        asset["href"] = es_scenes[1]["assets"][key]["href"]
    reader = BlockReader()
    for items, window in (
        (es_scenes, (100, 200, 96, 96)),
        (es_scenes, (460, 470, 96, 96)),
        ([later, *es_scenes], (0, 0, 96, 96)),
        ([later, *es_scenes], (300, 20, 96, 96)),
    ):
        gb = _geobox(*window)
        got = load_reflectance(items, gb, reader=reader)
        np.testing.assert_array_equal(got.values, load_cube(items, gb).values)


def test_demo_layouts_and_harmonisation_match(small_catalog, small_pc_catalog):
    """Earth Search v1 and Planetary Computer (DN + 1000 from baseline 04.00) both match."""
    from odc.geo.geobox import GeoBox

    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.cube import load_cube
    from tests.conftest import SMALL_BOUNDS

    gb = GeoBox.from_bbox(SMALL_BOUNDS, "EPSG:32632", resolution=10)
    for folder in (small_catalog, small_pc_catalog):
        items = _items(folder)
        got = load_reflectance(items, gb, reader=BlockReader())
        assert got.native
        np.testing.assert_array_equal(got.values, load_cube(items, gb).values)


def test_other_grids_fall_back_to_the_warp(es_scenes):
    """A 5 m shifted origin or another resolution is not the native lattice: odc-stac runs."""
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.cube import load_cube

    for gb in (_geobox(10, 10, 64, 64, dx=5.0), _geobox(10, 10, 32, 32, res=20.0)):
        got = load_reflectance(es_scenes, gb, reader=BlockReader())
        assert not got.native
        np.testing.assert_array_equal(got.values, load_cube(es_scenes, gb).values)


@pytest.mark.parametrize("threads", [1, 16])
def test_each_block_is_decoded_once_across_tiles(es_scenes, threads):
    """16 tiles of 128 px over a 512 px scene decode each source block exactly once, with one
    reading thread or many (local files are not prefetched: no latency to hide)."""
    import rasterio

    from pipeline.reading import BlockReader, load_reflectance

    reader = BlockReader(cache_mb=512, threads=threads)
    for r in range(0, 512, 128):
        for c in range(0, 512, 128):
            load_reflectance(es_scenes, _geobox(r, c, 128, 128), reader=reader)
    blocks = blocks_20m = 0
    for it in es_scenes:
        for a in it["assets"].values():
            with rasterio.open(a["href"]) as ds:
                bh, bw = ds.block_shapes[0]
                n = -(-ds.height // bh) * -(-ds.width // bw)
                blocks += n
                blocks_20m += n if ds.transform.a == 20 else 0
    assert reader.decoded == blocks
    assert reader.opens == sum(len(it["assets"]) for it in es_scenes)
    assert reader.hits == 3 * blocks_20m  # a 20 m block covers 4 tiles: decoded once, hit 3x


def test_block_cache_stays_bounded(es_scenes):
    from pipeline.reading import BlockReader, load_reflectance

    reader = BlockReader(cache_mb=0.1)
    load_reflectance(es_scenes, _geobox(0, 0, 256, 256), reader=reader)
    assert reader.cached_mb <= 0.1 + 128 * 128 * 2 / 2**20  # at most one block over


def test_read_failure_is_raised_not_nodata(es_scenes, tmp_path):
    """A corrupt COG fails the load, naming its scene; a nodata corner is not a failure."""
    import shutil

    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.cube import ReadFailure

    items = copy.deepcopy(es_scenes)
    src = Path(items[1]["assets"]["red"]["href"].removeprefix("file://"))
    bad = tmp_path / src.name
    shutil.copy(src, bad)
    with open(bad, "r+b") as fh:  # keep the header, destroy the compressed blocks
        fh.seek(bad.stat().st_size // 2)
        fh.write(b"\xff" * 65536)
    items[1]["assets"]["red"]["href"] = bad.as_uri()
    gb = _geobox(0, 0, 512, 512)
    with pytest.raises(ReadFailure) as info:
        load_reflectance(items, gb, reader=BlockReader())
    assert info.value.scenes == (items[1]["id"],)
    assert info.value.kind in ("corrupt", "io")
    items[2]["assets"]["red"]["href"] = bad.as_uri()  # a second unreadable scene is named too
    with pytest.raises(ReadFailure) as info:
        load_reflectance(items, gb, reader=BlockReader())
    assert set(info.value.scenes) == {items[1]["id"], items[2]["id"]}
    clean = load_reflectance(es_scenes, gb, reader=BlockReader())
    assert np.isnan(clean.values[0]).any()  # scene 0's swath edge: nodata, no failure


def test_upsample_kernel_matches_gdal_bilinear_with_nodata():
    """The compiled 2x kernel against rasterio.warp.reproject on noise with 20 % nodata."""
    import rasterio.warp
    from rasterio.enums import Resampling

    from pipeline.reading.kernels import upsample2x_bilinear, upsample2x_nearest

    rng = np.random.default_rng(0)
    src = rng.integers(1, 10000, (40, 48), dtype=np.uint16)
    src[rng.random(src.shape) < 0.2] = 0
    st = Affine(20, 0, 0, 0, -20, 0)
    for r0, c0, h, w in [(0, 0, 80, 96), (7, 3, 30, 41), (-4, -2, 20, 20), (70, 90, 20, 20)]:
        ref = np.zeros((h, w), np.uint16)
        dt_ = Affine(10, 0, c0 * 10, 0, -10, -r0 * 10)
        for kind, fn in ((Resampling.bilinear, upsample2x_bilinear),
                         (Resampling.nearest, upsample2x_nearest)):  # fmt: skip
            rasterio.warp.reproject(
                src, ref, src_transform=st, src_crs="EPSG:32632", dst_transform=dt_,
                dst_crs="EPSG:32632", src_nodata=0, dst_nodata=0, resampling=kind,
            )  # fmt: skip
            got = np.empty_like(ref)
            fn(src, 0, 0, r0, c0, got)
            np.testing.assert_array_equal(got, ref, err_msg=f"{kind} {(r0, c0, h, w)}")


def test_nearest_kernel_matches_index_arithmetic_at_any_offset():
    """2x nearest (SCL, 20 m bands): 10 m pixel g reads 20 m pixel g // 2; outside ``src`` is 0.
    Random windows straddle every edge, with odd and negative offsets."""
    from pipeline.reading.kernels import upsample2x_nearest

    rng = np.random.default_rng(7)
    for _ in range(200):
        h, w, ny, nx = (int(v) for v in rng.integers(1, 40, 4))
        sr0, sc0, gr, gc = (int(v) for v in rng.integers(-6, 30, 4))
        src = rng.integers(1, 255, (h, w)).astype(np.uint8)
        got = np.full((ny, nx), 99, np.uint8)
        upsample2x_nearest(src, sr0, sc0, gr, gc, got)
        r = (gr + np.arange(ny)) // 2 - sr0
        c = (gc + np.arange(nx)) // 2 - sc0
        inside = ((r >= 0) & (r < h))[:, None] & ((c >= 0) & (c < w))[None, :]
        want = np.where(inside, src[np.clip(r, 0, h - 1)][:, np.clip(c, 0, w - 1)], 0)
        np.testing.assert_array_equal(got, want)


def test_reflectance_kernel_masks_and_scales():
    from pipeline.reading.kernels import reflectance

    dn = np.array([[[[0, 1000, 2000]]]], np.uint16)
    scl = np.array([[[4, 4, 9]]], np.uint8)
    masked = np.zeros(256, bool)
    masked[9] = True
    out = np.empty(dn.shape, np.float32)
    reflectance(dn, scl, np.array([1e-4], np.float32), np.array([-0.1], np.float32), masked, out)
    assert np.isnan(out[0, 0, 0, 0]) and np.isnan(out[0, 0, 0, 2])
    assert out[0, 0, 0, 1] == np.float32(1000) * np.float32(1e-4) + np.float32(-0.1)


def test_item_times_are_datetime64(es_scenes):
    from pipeline.reading import BlockReader, load_reflectance

    got = load_reflectance(es_scenes, _geobox(0, 0, 16, 16), reader=BlockReader())
    assert got.times[0] == np.datetime64(dt.datetime(2023, 1, 5, 10, 30))


def test_read_order_keeps_each_group_on_one_worker():
    """Tiles of one 2048 px read group go to one worker; groups in flight use every worker."""
    from odc.geo.geobox import GeoBox

    from pipeline.grid.tiling import Tile
    from pipeline.reading import read_group, read_order

    gb = GeoBox((256, 256), Affine(10, 0, 0, 0, -10, 0), "EPSG:32632")
    tiles = [
        Tile(r, c, gb, (slice(r * 256, r * 256 + 256), slice(c * 256, c * 256 + 256)))
        for r in range(16)
        for c in range(16)
    ]  # a 4096 px grid: 4 read groups of 64 tiles
    order = read_order(tiles, n_workers=2)
    assert sorted(t.id for t, _ in order) == sorted(t.id for t in tiles)
    worker_of: dict = {}
    for t, w in order:
        assert worker_of.setdefault(read_group(t), w) == w
    assert {w for _, w in order[:2]} == {0, 1}  # both workers start at once
    first = [t for t, w in order if w == 0][:64]
    assert len({read_group(t) for t in first}) == 1  # a worker finishes its group first


def test_http_reads_fetch_only_the_blocks_needed(es_scenes):
    """Over a loopback range server: same pixels, range requests, a fraction of the files."""
    from pipeline.bench.http_range import serve_ranges
    from pipeline.reading import BlockReader, load_reflectance

    root = Path(es_scenes[0]["assets"]["red"]["href"].removeprefix("file://")).parent
    gb = _geobox(0, 0, 128, 128)  # one 128 px block of each 10 m band
    local = load_reflectance(es_scenes, gb, reader=BlockReader())
    with serve_ranges(root) as (url, counter):
        remote = copy.deepcopy(es_scenes)
        for it in remote:
            for a in it["assets"].values():
                a["href"] = f"{url}/{Path(a['href']).name}"
        got = load_reflectance(remote, gb, reader=BlockReader())
    np.testing.assert_array_equal(got.values, local.values)
    files = sum(p.stat().st_size for p in root.glob("*.tif"))
    assert counter.range_requests > 0
    assert counter.bytes < files / 3


@pytest.mark.parametrize("kind", ["429", "503", "reset", "truncate"])
def test_transient_http_faults_are_retried_and_the_pixels_stay_bit_identical(es_scenes, kind):
    """Issue 26: 429/503 bursts, connection resets and truncated bodies from the loopback object
    store are retried per request (backoff, jitter); the values equal the local read exactly."""
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.testing.object_store import StoreConfig, serve_store

    root = Path(es_scenes[0]["assets"]["red"]["href"].removeprefix("file://")).parent
    gb = _geobox(0, 0, 128, 128)
    local = load_reflectance(es_scenes, gb, reader=BlockReader())
    cfg = StoreConfig(fault_rate=0.1, fault_kinds=(kind,), burst=2, seed=5)
    with serve_store(root, cfg) as store:
        remote = copy.deepcopy(es_scenes)
        for it in remote:
            for a in it["assets"].values():
                a["href"] = store.href(Path(a["href"].removeprefix("file://")).name)
        reader = BlockReader()
        got = load_reflectance(remote, gb, reader=reader)
    assert store.counter.faults[kind] >= 2
    if kind == "reset":  # GDAL retries 429/5xx itself, not resets (a truncated body it may
        assert reader.retries >= 1  # re-request itself, depending on where the cut falls)
    np.testing.assert_array_equal(got.values, local.values)


def test_reader_sizes_gdals_range_cache_for_its_threads():
    """Issue 26: a reader sets GDAL's range cache (process-wide) to hold what its read threads
    have in flight, unless the user set it; with GDAL's 16 MB, 64 threads made GDAL fetch a
    file's header range a second time."""
    from rasterio.env import get_gdal_config

    from pipeline.reading.blocks import CURL_CACHE_BYTES, READ_THREADS, BlockReader

    BlockReader()
    size = get_gdal_config("CPL_VSIL_CURL_CACHE_SIZE")
    assert size is not None
    if "CPL_VSIL_CURL_CACHE_SIZE" not in os.environ:  # the user's setting is kept
        assert int(size) == CURL_CACHE_BYTES
    assert CURL_CACHE_BYTES >= READ_THREADS * 2**20  # a MiB per file in flight


def test_is_remote():
    from pipeline.reading.blocks import is_remote

    assert is_remote("https://x/a.tif") and is_remote("/vsis3/b/a.tif")
    assert not is_remote("file:///tmp/a.tif") and not is_remote("/tmp/a.tif")
    assert not is_remote("/vsimem/a.tif")


def test_many_files_in_flight_each_opened_and_read_once_over_http(es_scenes):
    """Issue 26: through the loopback store at 50 ms per request, a window's files are opened and
    read several at once, each in one task (a file's blocks are requested before the last file
    is open, not after every open), each with a HEAD, one header range and one range for its
    blocks; pixels bit-identical to the local read, more than one request in flight on
    average."""
    import rasterio.cache

    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.testing.object_store import StoreConfig, in_flight_profile, serve_store

    root = Path(es_scenes[0]["assets"]["red"]["href"].removeprefix("file://")).parent
    gb = _geobox(0, 0, 128, 128)  # one 128 px block of each file
    local = load_reflectance(es_scenes, gb, reader=BlockReader())
    files = sum(len(it["assets"]) for it in es_scenes)
    rasterio.cache.invalidate_all()  # a port reused from an earlier test: nothing cached
    with serve_store(root, StoreConfig(ttfb_s=0.05)) as store:
        remote = copy.deepcopy(es_scenes)
        for it in remote:
            for a in it["assets"].values():
                a["href"] = store.href(Path(a["href"].removeprefix("file://")).name)
        reader = BlockReader(threads=8)
        got = load_reflectance(remote, gb, reader=reader)
        log = list(store.counter.log)
    np.testing.assert_array_equal(got.values, local.values)
    assert reader.decoded == files and reader.hits == files  # fetched, then assembled from cache
    assert len({r[3] for r in log}) == files
    per_file = {}
    for _, _, method, path, first, _ in log:
        per_file.setdefault(path, []).append((method, first))
    for path, reqs in per_file.items():
        assert reqs.count(("GET", 0)) <= 1, (path, reqs)  # the header once
        assert len(reqs) <= 3, (path, reqs)
    assert store.counter.max_in_flight > 1
    first_block = min(r[0] for r in log if r[2] == "GET" and r[4] > 0)
    last_header = max(r[1] for r in log if r[2] == "GET" and r[4] == 0)
    assert first_block < last_header  # opening and reading overlap
    flight = in_flight_profile(log)
    assert flight["mean"] > 1.2  # one request at a time: <= 1 (no tighter bound, no wall-time
    # bound: the machine running the tests is shared)
