"""Model adapters: the registry, the built-in kinds, and a third kind added from a test alone.

The toy kind below (a per-pixel NDVI threshold "model") is defined, registered and run through
the real tile path (``process_tile`` on the small demo catalog's scenes) without touching any
other module: that is what the adapter registry is for (issue 14, step 1).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, ClassVar

import numpy as np
import pytest
from odc.geo.geom import Geometry
from shapely.geometry import box

from pipeline import adapters
from pipeline.adapters.base import ModelAdapter
from pipeline.base.errors import UserError
from tests.conftest import SMALL_BOUNDS

NDVI_THRESHOLD = 0.3


class _NDVIModel:
    """The toy's "model": no weights, two-dimensional embeddings."""

    name = "ndvi-toy"
    identity = "ndvi-toy:threshold-0.3"
    embed_dim = 2
    checkpoint_sha256 = None
    untrained = False


class NDVIAdapter(ModelAdapter):
    """A per-pixel NDVI threshold: class 1 (vegetation) where NDVI > 0.3, else class 0."""

    name: ClassVar[str] = "ndvi-toy"
    title: ClassVar[str] = "NDVI toy"
    bands: ClassVar[tuple[str, ...]] = ("B4", "B8")
    scale: ClassVar[float] = 1.0
    input: ClassVar[str] = "pixel"
    default_period: ClassVar[str] = "annual"
    throughput_key: ClassVar[str] = "ndvi_pixels_per_s"

    def load(self, spec: Any) -> _NDVIModel:
        return _NDVIModel()

    def embed(self, m: Any, x: np.ndarray) -> np.ndarray:
        """(N, P, 2) red/NIR series -> (N, 2) unit vectors [1 - v, v], v = mean NDVI > 0.3."""
        red, nir = x[..., 0].mean(axis=1), x[..., 1].mean(axis=1)
        veg = ((nir - red) / (nir + red) > NDVI_THRESHOLD).astype(np.float32)
        return np.stack([1 - veg, veg], axis=1)

    def infer(self, job: Any, m: Any, comp: Any, plan: Any, valid: np.ndarray):
        from pipeline.adapters.base import band_index

        series = comp.values[:, band_index(self.bands)][:, :, valid].transpose(2, 0, 1)
        emb = self.embed(m, series * np.float32(self.scale))
        return emb, emb, valid  # the embedding already is a probability vector

    def sample(self, job: Any, m: Any, comp: Any, plan: Any, n: int, rng: Any) -> np.ndarray:
        return np.zeros((0, 2), np.float32)


@pytest.fixture
def toy_adapter():
    adapter = adapters.register(NDVIAdapter())
    yield adapter
    adapters.unregister(adapter.name)


def test_builtin_adapters_say_what_their_models_need():
    pixel, patch = adapters.get("timesenclip"), adapters.get("senclip")
    assert adapters.names()[0] == adapters.DEFAULT == "timesenclip"
    assert (pixel.input, len(pixel.bands), pixel.scale) == ("pixel", 10, 1e4)
    assert (patch.input, patch.bands, patch.scale) == ("patch", ("B4", "B3", "B2"), 1.0)
    assert (pixel.default_period, patch.default_period) == ("monthly", "annual")
    assert patch.default_calibration(None) == "reference"
    assert patch.default_calibration("head.npz") == pixel.default_calibration(None) == "none"
    assert (pixel.halo(64), patch.halo(64)) == (0, 64)
    assert pixel.inference_units(1024, 32) == 1024 and patch.inference_units(1024, 32) == 1
    pixel.check_periods(12, "2023-01-01", "2023-12-31", "monthly")
    with pytest.raises(UserError, match="TimeSenCLIP takes 12 monthly"):
        pixel.check_periods(24, "2022-01-01", "2023-12-31", "monthly")
    patch.check_periods(24, "2022-01-01", "2023-12-31", "monthly")  # any number of composites


def test_unknown_model_is_one_line_naming_the_known_ones():
    with pytest.raises(UserError, match="unknown model 'nope'; choose one of timesenclip, senclip"):
        adapters.get("nope")


def test_a_name_cannot_be_registered_twice(toy_adapter):
    with pytest.raises(ValueError, match="already registered"):
        adapters.register(NDVIAdapter())


def test_a_third_model_kind_maps_a_tile_through_the_real_tile_path(
    toy_adapter, small_catalog, tmp_path
):
    """Registered from this file alone, the toy runs in a RunConfig, a TileJob and process_tile
    (real scenes, real composite, real Zarr and COG writers) and its map is its NDVI rule."""
    from pipeline.grid.tiling import make_grid
    from pipeline.run.config import RunConfig
    from pipeline.run.inputs import RunInputs
    from pipeline.run.tile_task import TileJob, load_composite, process_tile
    from pipeline.writers import create_map_store, open_map

    w, s, e, n = SMALL_BOUNDS
    aoi = Geometry(box(w + 40, s + 40, e - 40, n - 40), "EPSG:32632").to_crs("EPSG:4326").geom
    cfg = RunConfig.of(region="toy", start=dt.date(2023, 1, 1), end=dt.date(2023, 12, 31),
                    model="ndvi-toy", period="annual", untrained=True, top_k=2)  # fmt: skip
    assert cfg.halo == 0 and cfg.model.adapter is toy_adapter
    grid = make_grid(aoi, "EPSG:32632", 10.0, 64)
    items = json.loads((small_catalog / "items.json").read_text())["features"]
    store = create_map_store(
        tmp_path / "map.zarr", grid, class_names=["other", "vegetation"], k=2,
        period_labels=["2023"],
    )  # fmt: skip
    inputs = RunInputs.write(tmp_path / "work", aoi, items)
    classes = {}
    for tile in grid.tiles:
        job = TileJob(
            tile=tile, inputs=inputs.refs(range(len(items))), model=cfg.model,
            classifier=np.zeros((2, 2), np.float32), calibration=None, composite=cfg.composite,
            mask=cfg.mask, chips=cfg.chips, output=cfg.output, store=str(store),
            tile_dir=str(tmp_path / "tiles" / tile.id),
        )  # fmt: skip
        stats = process_tile(job)
        assert stats["valid_pixels"] > 0
        comp = load_composite(job, tile.geobox)[0]
        red, nir = comp.values[0, 2], comp.values[0, 6]  # B4, B8 of BANDS
        with np.errstate(invalid="ignore", divide="ignore"):
            expect = np.where((nir - red) / (nir + red) > NDVI_THRESHOLD, 1, 0)
        classes[tile.id] = expect
        got = open_map(store)["classes"].values[tile.window]
        mapped = got != 255
        assert mapped.sum() == stats["valid_pixels"]
        np.testing.assert_array_equal(got[mapped], expect[mapped])
        assert (tmp_path / "tiles" / tile.id / "classes.tif").is_file()
    both = np.concatenate([c.ravel() for c in classes.values()])
    assert 0 < both.mean() < 1, "the scene has vegetated and other pixels"
