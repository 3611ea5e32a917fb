"""Output writers on real files: atomic publishing, the Zarr v3 map store (xarray and GDAL), COGs,
legend, quicklook and the STAC item."""

from __future__ import annotations

import datetime as dt
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from shapely.geometry import Polygon

from aoi import to_crs
from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError
from pipeline.base.jsonio import write_json
from pipeline.grid.tiling import aoi_mask, make_grid
from pipeline.writers import (
    TileResult,
    build_cogs,
    create_map_store,
    open_map,
    write_legend_json,
    write_quicklook,
    write_stac_item,
    write_tile,
    write_tile_rasters,
)

UTM = "EPSG:32632"
NAMES = ["water", "tree cover", "crop land", "built-up", "bare / sparse"]
COLORS = ["#1f78b4", "#33a02c", (255, 200, 0), "e31a1c", (0.6, 0.6, 0.6)]
PERIODS = ["2023-01", "2023-02", "2023-03"]
BANDS = ["B2", "B3"]
# An L-shaped AOI (not on the 10 m lattice): the tile in the empty corner is never written.
AOI = to_crs(
    Polygon(
        [(600_003, 5_340_007), (601_234, 5_340_007), (601_234, 5_340_500),
         (600_700, 5_340_500), (600_700, 5_341_051), (600_003, 5_341_051)]
    ),
    "EPSG:4326",
    src=UTM,
)  # fmt: skip


def _result(tile, mask, seed):
    rng = np.random.default_rng(seed)
    h, w = tile.shape
    yy, xx = np.mgrid[tile.window[0], tile.window[1]]
    m = mask[tile.window]
    cls = np.where(m, (yy // 17 + xx // 23) % len(NAMES), 255).astype(np.uint8)
    conf = np.where(m, rng.uniform(0.2, 1.0, (h, w)), np.nan).astype(np.float32)
    second = np.where(m, (cls + 1) % len(NAMES), 255).astype(np.uint8)
    return TileResult(
        classes=cls,
        confidence=conf,
        topk_classes=np.stack([cls, second]),
        topk_probs=np.stack([conf, conf / 3]),
        valid_obs=np.where(m, rng.integers(1, 6, (len(PERIODS), h, w)), 0),
        composite=rng.random((len(PERIODS), len(BANDS), h, w)).astype(np.float32),
        embeddings=rng.standard_normal((8, h, w)).astype(np.float16),
        rgb=np.where(m, rng.integers(1, 256, (3, h, w)), 0).astype(np.uint8),
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A map written tile by tile (concurrently) into a store and per-tile GeoTIFFs."""
    root = tmp_path_factory.mktemp("map")
    grid = make_grid(AOI, UTM, 10, 32)
    mask = aoi_mask(grid.geobox, AOI)
    store = root / "work" / "map.zarr"
    tiles_dir = root / "work" / "tiles"
    create_map_store(
        store, grid, class_names=NAMES, k=2, period_labels=PERIODS, band_names=BANDS,
        embed_dim=8, attrs={"config_hash": "h1", "region": "test"},
    )  # fmt: skip
    expected = {}

    def one(tile):
        r = _result(tile, mask, seed=tile.row * 100 + tile.col)
        write_tile(store, tile, r)
        # Half the tiles without labels: build_cogs(period_labels=...) names the bands then.
        write_tile_rasters(
            tiles_dir / tile.id, tile, r, period_labels=PERIODS if tile.col else None
        )
        expected[tile.id] = r

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, grid.tiles))
    full = {
        "classes": np.full(grid.shape, 255, np.uint8),
        "confidence": np.full(grid.shape, np.nan, np.float32),
        "valid_obs": np.zeros((len(PERIODS), *grid.shape), np.uint16),
        "rgb": np.zeros((3, *grid.shape), np.uint8),
        "embeddings": np.full((8, *grid.shape), np.nan, np.float16),
    }
    for t in grid.tiles:
        full["embeddings"][(slice(None), *t.window)] = expected[t.id].embeddings
        full["rgb"][(slice(None), *t.window)] = expected[t.id].rgb
        full["classes"][t.window] = expected[t.id].classes
        full["confidence"][t.window] = expected[t.id].confidence
        full["valid_obs"][(slice(None), *t.window)] = expected[t.id].valid_obs
    return {"root": root, "grid": grid, "store": store, "tiles": tiles_dir, "full": full}


# --- atomic publishing -------------------------------------------------------------------------


def test_atomic_path_publishes_files_and_dirs_only_when_complete(tmp_path):
    final = tmp_path / "sub" / "a.txt"
    with atomic_path(final) as tmp:
        assert tmp.parent == final.parent and not final.exists()
        tmp.write_text("one")
    assert final.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert final.read_text() == "one"  # old result untouched, no partial file
    d = tmp_path / "d"
    for content in ("first", "second"):  # a directory replaces an existing one
        with atomic_path(d) as tmp:
            tmp.mkdir()
            (tmp / "f").write_text(content)
    assert (d / "f").read_text() == "second"
    with pytest.raises(FileExistsError), atomic_path(d, replace=False) as tmp:
        tmp.mkdir()
    assert (d / "f").read_text() == "second"
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never"):
        pass
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "d", "f", "sub"]


def test_atomic_path_leaves_nothing_when_the_body_raises(tmp_path):
    for is_dir in (False, True):
        final = tmp_path / f"out{is_dir}"
        with pytest.raises(ValueError), atomic_path(final) as tmp:
            if is_dir:
                tmp.mkdir()
                (tmp / "x").write_text("partial")
            else:
                tmp.write_text("partial")
            raise ValueError
        assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_write_json_is_plain_json(tmp_path):
    p = write_json(tmp_path / "r.json", {"a": np.float32(0.5), "b": [np.nan, 1], "d": dt.date(2023, 1, 2), "p": tmp_path})  # fmt: skip
    assert json.loads(p.read_text()) == {"a": 0.5, "b": [None, 1], "d": "2023-01-02", "p": str(tmp_path)}  # fmt: skip


def test_tile_result_validates_shapes():
    ok = dict(
        classes=np.zeros((4, 5), np.uint8), confidence=np.zeros((4, 5)),
        topk_classes=np.zeros((2, 4, 5), np.uint8), topk_probs=np.zeros((2, 4, 5)),
        valid_obs=np.zeros((3, 4, 5), np.int64),
    )  # fmt: skip
    r = TileResult(**ok)
    assert r.confidence.dtype == np.float32 and r.valid_obs.dtype == np.uint16 and r.k == 2
    for key, bad in [
        ("confidence", np.zeros((4, 4))),
        ("topk_probs", np.zeros((3, 4, 5))),
        ("valid_obs", np.zeros((4, 5))),
        ("classes", np.zeros((4, 5), np.float32)),
        ("composite", np.zeros((2, 2, 4, 5))),
    ]:
        with pytest.raises(ValueError):
            TileResult(**{**ok, key: bad})


# --- map store -----------------------------------------------------------------------------------


def test_map_store_reads_back_in_xarray_with_its_crs(written):
    import rioxarray  # noqa: F401  (registers .rio)

    grid, full = written["grid"], written["full"]
    ds = open_map(written["store"])
    assert ds.odc.geobox == grid.geobox  # CRS and transform from spatial_ref / x / y
    assert ds.rio.crs == grid.geobox.crs
    assert ds["spatial_ref"].attrs["crs_wkt"]
    assert ds.classes.dims == ("y", "x") and ds.topk_probs.dims == ("k", "y", "x")
    assert ds.valid_obs.dims == ("period", "y", "x") and list(ds.period.values) == PERIODS
    assert ds.composite.dims == ("period", "band", "y", "x") and list(ds.band.values) == BANDS
    # the geoembeddings conventions' order; the year is the time step
    assert ds.embeddings.dims == ("time", "embedding", "y", "x")
    assert ds.embeddings.dtype == np.float16 and list(ds.time.values) == [PERIODS[0][:4]]
    assert ds.classes.encoding["chunks"] == (32, 32)
    # classes stay uint8 (nodata 255 is a CF flag value, not a _FillValue decoded to NaN)
    assert ds.classes.dtype == np.uint8 and ds.topk_classes.dtype == np.uint8
    assert ds.classes.attrs["flag_values"][-1] == 255 and ds.classes.attrs["nodata"] == 255
    np.testing.assert_array_equal(ds.classes.values, full["classes"])
    np.testing.assert_array_equal(ds.confidence.values, full["confidence"])
    np.testing.assert_array_equal(ds.valid_obs.values, full["valid_obs"])  # counts stay integers
    assert ds.valid_obs.dtype == np.uint16
    assert ds.attrs["config_hash"] == "h1" and ds.attrs["class_names"] == NAMES
    # The tile outside the L-shaped AOI was never written and reads as nodata.
    lat = written["grid"].lattice_shape
    assert len(grid) < lat[0] * lat[1]
    assert (full["classes"] == 255).any() and np.isnan(ds.confidence.values).any()


def test_map_store_reads_in_gdal(written):
    """Zarr v3 (issue 28): ZSTD chunks, not sharded (GDAL 3.12 refuses sharding_indexed), read
    by the GDAL of rasterio 1.5 with the map in the right place."""
    grid, full, store = written["grid"], written["full"], written["store"]
    meta = json.loads((store / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and not (store / ".zattrs").exists()
    arr = json.loads((store / "classes" / "zarr.json").read_text())
    codecs = [c["name"] for c in arr["codecs"]]
    assert codecs == ["bytes", "zstd"] and "sharding_indexed" not in codecs
    assert arr["dimension_names"] == ["y", "x"]
    with rasterio.open(f'ZARR:"{store}":/classes') as src:
        assert src.crs == grid.geobox.crs
        assert src.transform.almost_equals(grid.geobox.affine)
        # no Zarr fill_value (so xarray keeps uint8): GDAL sees the values, classes.tif the nodata
        np.testing.assert_array_equal(src.read(1), full["classes"])
    with rasterio.open(f'ZARR:"{store}":/confidence') as src:
        assert src.crs == grid.geobox.crs and np.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(1), full["confidence"])
    with rasterio.open(f'ZARR:"{store}":/valid_obs') as src:
        assert src.count == len(PERIODS) and src.crs == grid.geobox.crs
        np.testing.assert_array_equal(src.read(), full["valid_obs"])
    with rasterio.open(f'ZARR:"{store}":/embeddings') as src:  # (time, embedding, y, x)
        assert src.transform.almost_equals(grid.geobox.affine) and src.count == 8
        np.testing.assert_array_equal(src.read(3), full["embeddings"][2])


def test_map_store_create_is_atomic_and_idempotent(written, tmp_path):
    grid, store = written["grid"], written["store"]
    kw = dict(class_names=NAMES, k=2, period_labels=PERIODS, band_names=BANDS, embed_dim=8)
    before = (store / "classes" / "c" / "0" / "0").read_bytes()
    assert create_map_store(store, grid, **kw, attrs={"config_hash": "h1"}) == store  # reopen
    assert (store / "classes" / "c" / "0" / "0").read_bytes() == before  # written tiles kept
    with pytest.raises(UserError, match="other settings"):
        create_map_store(store, grid, **kw, attrs={"config_hash": "h2"})
    with pytest.raises(UserError, match="another grid"):
        create_map_store(store, grid, **{**kw, "k": 3}, attrs={"config_hash": "h1"})
    assert [p.name for p in store.parent.iterdir() if p.name.startswith(".")] == []
    # Concurrent creators: one wins, the others reopen.
    new = tmp_path / "m.zarr"
    errors = []

    def create():
        try:
            create_map_store(new, grid, **kw, attrs={"config_hash": "x"})
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and (new / "zarr.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]


def test_write_tile_checks_shapes_and_fills_missing_optional_layers(written, tmp_path):
    grid = written["grid"]
    store = create_map_store(
        tmp_path / "s.zarr", grid, class_names=NAMES, k=2, period_labels=PERIODS, embed_dim=8,
    )  # fmt: skip
    tile = grid.tiles[0]
    r = _result(tile, aoi_mask(grid.geobox, AOI), 0)
    with pytest.raises(ValueError, match="embeddings"):
        write_tile(store, tile, TileResult(**{**r.__dict__, "embeddings": r.embeddings[:3]}))
    # A tile without embeddings (no valid pixel) writes nodata there.
    write_tile(store, tile, r)
    write_tile(store, tile, TileResult(**{**r.__dict__, "embeddings": np.zeros((0, *tile.shape))}))
    assert np.isnan(open_map(store).embeddings[:, tile.window[0], tile.window[1]].values).all()
    small = TileResult(**{k: None if v is None else v[..., :-1] for k, v in r.__dict__.items()})
    with pytest.raises(ValueError, match="pixels"):
        write_tile(store, tile, small)
    with pytest.raises(ValueError, match="pixels"):
        write_tile_rasters(tmp_path / "t", tile, small)
    assert not (tmp_path / "t").exists()


# --- COGs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cogs(written):
    out = written["root"] / "out"
    return build_cogs(written["tiles"], out, written["grid"], NAMES, COLORS, period_labels=PERIODS)


def test_cogs_validate_with_colours_names_overviews_and_nodata(written, cogs):
    from rio_cogeo.cogeo import cog_validate

    grid, full = written["grid"], written["full"]
    # margin and entropy are every run's layers: nodata where the tiles did not compute them
    assert set(cogs) == {"classes", "confidence", "valid_obs", "composite_rgb", "margin", "entropy"}
    for path in cogs.values():
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
        with rasterio.open(path) as src:
            assert src.crs == grid.geobox.crs and src.transform.almost_equals(grid.geobox.affine)
            assert src.shape == grid.shape and src.overviews(1)
    with rasterio.open(cogs["classes"]) as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.colormap(1)[2] == (255, 200, 0, 255) and src.colormap(1)[4] == (153, 153, 153, 255)  # fmt: skip
        assert json.loads(src.tags()["class_names"]) == NAMES
        assert src.tags(1)["CLASS_1"] == "tree cover" and src.descriptions[0]
        np.testing.assert_array_equal(src.read(1), full["classes"])
        ovr = src.read(1, out_shape=(grid.shape[0] // 2, grid.shape[1] // 2))
        assert set(np.unique(ovr)) <= set(range(len(NAMES))) | {255}  # nearest: no blends
    aux = cogs["classes"].with_name("classes.tif.aux.xml").read_text()
    assert "<Category>bare / sparse</Category>" in aux
    with rasterio.open(cogs["confidence"]) as src:
        assert src.dtypes[0] == "float32" and np.isnan(src.nodata)
        np.testing.assert_array_equal(src.read(1), full["confidence"])
    with rasterio.open(cogs["valid_obs"]) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 0  # 0 = no valid observation
        assert src.descriptions == ("total", *PERIODS)
        np.testing.assert_array_equal(src.read(1), full["valid_obs"].sum(axis=0))
        np.testing.assert_array_equal(src.read()[1:], full["valid_obs"])
    with rasterio.open(cogs["composite_rgb"]) as src:
        from rasterio.enums import ColorInterp

        assert src.count == 3 and src.dtypes[0] == "uint8" and src.nodata == 0
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        np.testing.assert_array_equal(src.read(), full["rgb"])
    assert cogs["composite_rgb"].name == "composite_rgb.tif"
    leftovers = [p.name for p in cogs["classes"].parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_true_colour_scaling_and_nodata():
    from pipeline.writers.tile_result import true_colour

    x = np.array([[[0.0, 0.1, 0.2, 0.5, np.nan]]] * 3, np.float32).reshape(3, 1, 5)
    x[1, 0, 0] = np.nan  # one band missing: the pixel is nodata in all bands
    out = true_colour(x)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [0, 128, 255, 255, 0])


def test_rgb_quicklook(cogs, tmp_path):
    import matplotlib.image

    from pipeline.writers import write_rgb_quicklook

    png = write_rgb_quicklook(tmp_path / "c.png", cogs["composite_rgb"], max_px=40)
    img = matplotlib.image.imread(png)
    assert img.shape[2] == 4 and max(img.shape[:2]) <= 40
    assert (img[..., 3] == 0).any() and (img[..., 3] == 1).any()  # nodata is transparent


def test_cogs_from_the_store_equal_cogs_from_tiles(written, cogs, tmp_path):
    from_store = build_cogs(written["store"], tmp_path, written["grid"], NAMES, COLORS)
    for name, path in from_store.items():
        with rasterio.open(path) as a, rasterio.open(cogs[name]) as b:
            assert a.descriptions == b.descriptions
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.colormap(1) == b.colormap(1) if name == "classes" else True


# --- legend, quicklook, STAC ---------------------------------------------------------------------


def test_legend_quicklook_and_stac_item(written, cogs):
    import pystac
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension

    grid = written["grid"]
    out = cogs["classes"].parent
    legend = write_legend_json(
        out / "legend.json", class_names=NAMES, colors=COLORS, legend_name="test",
        style="plain", prompt_hash="abc", untrained=True, extra={"model": "m"},
    )  # fmt: skip
    doc = json.loads(legend.read_text())
    assert doc["untrained"] is True and doc["nodata"] == 255 and doc["model"] == "m"
    assert doc["classes"][2] == {"value": 2, "name": "crop land", "color": "#ffc800"}

    ql = write_quicklook(out / "quicklook.png", cogs["classes"], NAMES, COLORS, "test\nUNTRAINED WEIGHTS (demo)")  # fmt: skip
    assert ql.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(ql) as im:
        assert im.width > 400 and im.height > 300
        colours = {c for _, c in im.convert("RGB").getcolors(1 << 20)}
    assert {(31, 120, 180), (51, 160, 44), (255, 200, 0)} <= colours  # classes drawn

    assets = {**cogs, "zarr": written["store"], "legend": legend, "quicklook": ql}
    path = write_stac_item(
        out / "item.json", grid=grid, geometry_4326=AOI, start=dt.date(2023, 1, 1),
        end=dt.date(2023, 3, 31), assets=assets, class_names=NAMES, colors=COLORS,
        properties={"s2lc:untrained": True}, item_id="test-map",
    )  # fmt: skip
    item = pystac.Item.from_file(str(path))
    assert item.id == "test-map" and item.datetime is None
    assert item.properties["start_datetime"].startswith("2023-01-01")
    assert item.properties["end_datetime"].startswith("2023-03-31")
    assert item.properties["s2lc:untrained"] is True
    proj = ProjectionExtension.ext(item)
    assert proj.code == UTM and proj.shape == list(grid.shape)
    classes = ClassificationExtension.ext(item.assets["classes"]).classes
    assert [c.value for c in classes] == [0, 1, 2, 3, 4, 255]
    assert classes[1].title == "tree cover" and classes[1].name == "tree_cover"
    assert classes[2].color_hint == "FFC800" and classes[-1].nodata
    # Files next to the item are relative; others (the store here) are file:// URLs.
    assert item.assets["classes"].href == "./classes.tif"
    assert Path(item.assets["classes"].get_absolute_href()).is_file()
    assert item.assets["zarr"].href == written["store"].resolve().as_uri()
    assert item.assets["quicklook"].roles == ["overview", "visual"]


def test_quicklook_window_covers_the_bounds_snapped_out_to_pixels():
    from affine import Affine

    from pipeline.writers.products import quicklook_window

    t = Affine(10.0, 0, 4_000_000.0, 0, -10.0, 3_000_000.0)  # a 100 km cell at 10 m
    w = quicklook_window(t, 10_000, 10_000)
    assert (w.col_off, w.row_off, w.width, w.height) == (0, 0, 10_000, 10_000)
    # a 600 m region, its corners inside pixels: whole pixels around it
    w = quicklook_window(t, 10_000, 10_000, (4_000_105.0, 2_999_395.0, 4_000_705.0, 2_999_995.0))
    assert (w.col_off, w.row_off, w.width, w.height) == (10, 0, 61, 61)
    # clipped to the raster; no overlap: the whole raster
    w = quicklook_window(t, 100, 100, (3_999_000.0, 2_999_500.0, 4_000_500.0, 3_001_000.0))
    assert (w.col_off, w.row_off, w.width, w.height) == (0, 0, 50, 50)
    assert quicklook_window(t, 100, 100, (0.0, 0.0, 1.0, 1.0)).width == 100
