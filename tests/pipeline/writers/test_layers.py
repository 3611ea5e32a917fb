"""The table of layer specs: the store, the COGs, the STAC item and the workspace all follow it."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import rasterio
from shapely.geometry import box

from aoi import to_crs
from pipeline.grid.tiling import make_grid
from pipeline.run.workspace import GRIDDED_PRODUCTS, OPTIONAL_PRODUCTS, PRODUCTS, SIDECARS
from pipeline.writers import (
    TileResult,
    build_cogs,
    create_map_store,
    write_stac_item,
    write_tile,
    write_tile_rasters,
)
from pipeline.writers.layers import LAYER_SPECS, LAYERS, cog_layers, layer, layer_of_product
from pipeline.writers.zarr_map import store_layers

UTM = "EPSG:32632"
NAMES = ["water", "trees"]
COLORS = ["#0000ff", "#00ff00"]
PERIODS = ["2023-01", "2023-02"]
AOI = to_crs(box(600_000, 5_340_000, 600_480, 5_340_320), "EPSG:4326", src=UTM)


def _same(a, b) -> bool:
    return (a is None and b is None) or a == b or (math.isnan(a) and math.isnan(b))


def _result(tile, rgb: bool) -> TileResult:
    rng = np.random.default_rng(tile.row * 10 + tile.col)
    h, w = tile.shape
    cls = rng.integers(0, len(NAMES), (h, w)).astype(np.uint8)
    conf = rng.uniform(0.5, 1, (h, w)).astype(np.float32)
    return TileResult(
        classes=cls,
        confidence=conf,
        topk_classes=cls[None],
        topk_probs=conf[None],
        valid_obs=rng.integers(1, 4, (len(PERIODS), h, w)),
        embeddings=rng.standard_normal((4, h, w)).astype(np.float16),
        rgb=rng.integers(1, 256, (3, h, w)).astype(np.uint8) if rgb else None,
        margin=rng.uniform(0, 1, (h, w)).astype(np.float32),
        entropy=rng.uniform(0, 1, (h, w)).astype(np.float32),
        ood=rng.uniform(0, 2, (h, w)).astype(np.float32),
        classes_raw=cls,
        postprocessed=np.zeros((h, w), np.uint8),
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    grid = make_grid(AOI, UTM, 10, 16)
    store = root / "map.zarr"
    create_map_store(
        store, grid, class_names=NAMES, k=1, period_labels=PERIODS, embed_dim=4, ood=True,
        postprocess=True,
    )  # fmt: skip
    for t in grid.tiles:
        r = _result(t, rgb=True)
        write_tile(store, t, r)
        write_tile_rasters(root / "tiles" / t.id, t, r, period_labels=PERIODS)
    cogs = build_cogs(root / "tiles", root / "out", grid, NAMES, COLORS, period_labels=PERIODS)
    item = write_stac_item(
        root / "out" / "item.json", grid=grid, geometry_4326=AOI, start="2023-01-01",
        end="2023-02-28", assets={**cogs, "zarr": store}, class_names=NAMES, colors=COLORS,
    )  # fmt: skip
    return {"store": store, "cogs": cogs, "item": json.loads(item.read_text())}


def test_every_tile_result_field_is_a_layer_of_the_table():
    assert [f.name for f in dataclasses.fields(TileResult)] == [s.name for s in LAYER_SPECS]
    assert LAYERS == ("classes", "confidence", "valid_obs", "margin", "entropy")
    assert layer("rgb").cog == "composite_rgb" and layer_of_product("composite_rgb").name == "rgb"


def test_store_arrays_follow_the_table(published):
    import zarr

    g = zarr.open_group(str(published["store"]), mode="r", zarr_format=3)
    layout = dict(g.attrs["s2lc:layout"])
    specs = store_layers(layout)
    assert [s.name for s in specs] == [
        "classes", "confidence", "topk_classes", "topk_probs", "valid_obs", "embeddings",
        "margin", "entropy", "ood", "classes_raw", "postprocessed",
    ]  # fmt: skip
    for spec in specs:
        arr = g[spec.name]
        assert arr.dtype == np.dtype(spec.dtype), spec.name
        # Zarr v3 arrays always have a fill value: nodata for class layers, 0 for counts
        want = spec.fill if spec.fill is not None else spec.nodata
        assert _same(arr.fill_value, want), spec.name
        assert arr.metadata.dimension_names == spec.dims
        assert arr.attrs["long_name"] == spec.long_name
        assert arr.attrs.get("units") == spec.units
    for spec in LAYER_SPECS:
        if spec not in specs:
            assert spec.name not in g  # no composite (no bands), no field, rgb is tiles only
    plain = {k: v for k, v in layout.items() if k not in ("ood", "postprocess")}
    assert store_layers({**plain, "field_dims": 2})[-4:] == (
        layer("field_codes"),
        layer("field_scale"),
        layer("margin"),
        layer("entropy"),
    )


def test_cogs_and_the_stac_item_follow_the_table(published):
    cogs, assets = published["cogs"], published["item"]["assets"]
    assert set(cogs) == {s.cog for s in cog_layers("map", "ood", "postprocess", "tile")}
    for product, path in cogs.items():
        spec = layer_of_product(product)
        with rasterio.open(path) as src:
            assert src.dtypes[0] == spec.file_dtype, product
            assert _same(src.nodata, spec.nodata), product
            assert src.descriptions[0] == (spec.description or "red"), product
            assert src.count == {"rgb": 3, "valid_obs": 1 + len(PERIODS)}.get(spec.name, 1)
        asset = assets[product]
        assert asset["title"] == spec.title and asset["roles"] == list(spec.roles)
        for band in asset["raster:bands"]:
            assert band["data_type"] == spec.file_dtype
            assert _same(float(band["nodata"]), spec.nodata)
            assert band.get("unit") == spec.stac_unit
        assert ("classification:classes" in asset) == (spec.kind == "classes")


def test_the_workspace_lists_the_tables_products():
    assert PRODUCTS[1:4] == ("classes.tif", "confidence.tif", "valid_obs.tif")
    assert GRIDDED_PRODUCTS[2:5] == ("classes.vrt", "confidence.vrt", "valid_obs.vrt")
    assert SIDECARS == ("classes.tif.aux.xml", "classes_raw.tif.aux.xml")
    assert OPTIONAL_PRODUCTS == (
        "field.tif",
        "field_scale.tif",
        "composite_rgb.tif",
        "ood.tif",
        "classes_raw.tif",
        "postprocessed.tif",
        "composite_rgb.png",
        "model_card.json",
    )
