"""The same demo scenes mapped from provider COGs and from ESA's EOPF Zarr products: the run's
tile tasks (prep, load, composite, engine, zero-shot classifier, map store) give the same map."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from odc.geo.geom import Geometry
from shapely.geometry import box

import model
from pipeline.commands.run import add_arguments, resolve
from pipeline.composite.median import period_labels
from pipeline.run.inputs import RunInputs
from pipeline.run.prepare import prepare_run
from pipeline.run.scheduling import tile_job
from pipeline.run.tile_task import process_tile
from pipeline.run.workspace import Workspace
from pipeline.testing.encoder import FakeEncoder
from pipeline.writers import create_map_store, open_map
from tests.conftest import SMALL_BOUNDS


@pytest.fixture
def fake(monkeypatch) -> FakeEncoder:
    enc = FakeEncoder("timesenclip")
    monkeypatch.setattr(model, "get_model", lambda *a, **k: enc)
    return enc


def _map(catalog, out) -> tuple[np.ndarray, dict]:
    """The classes layer and the per-tile stats of a run over ``catalog``'s items."""
    w, s, e, n = SMALL_BOUNDS
    aoi = Geometry(box(w + 40, s + 40, e - 40, n - 40), "EPSG:32632").to_crs("EPSG:4326")
    lon0, lat0, lon1, lat1 = aoi.boundingbox
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--bbox", str(lon0), str(lat0), str(lon1), str(lat1), "--start", "2023-01-01",
         "--end", "2023-12-31", "--period", "annual", "--untrained", "--tile-size", "32",
         "--out", str(out)]
    )  # fmt: skip
    cfg = resolve(args)
    c = cfg.composite
    prep = prepare_run(cfg)
    ws = Workspace(out)
    ws.prepare(cfg.output_hash(), overwrite=False)
    create_map_store(
        ws.store, prep.grid, class_names=prep.class_names, k=cfg.output.top_k,
        period_labels=list(period_labels(c.start, c.end, c.period)),
    )  # fmt: skip
    items = json.loads((catalog / "items.json").read_text())["features"]
    inputs = RunInputs.write(ws.work, prep.geometry, items)
    stats = {}
    for tile in prep.grid.tiles:
        stats[tile.id] = process_tile(tile_job(cfg, prep, ws, inputs, tile, None))
    return open_map(ws.store)["classes"].values, stats


def test_cogs_and_eopf_zarr_give_the_same_map(fake, small_pc_catalog, small_eopf_catalog, tmp_path):
    eopf = small_eopf_catalog
    cog_map, cog_stats = _map(small_pc_catalog, tmp_path / "out-cog")
    eopf_map, eopf_stats = _map(eopf, tmp_path / "out-eopf")
    assert (cog_map != 255).mean() > 0.5  # most pixels mapped
    np.testing.assert_array_equal(eopf_map, cog_map)
    assert {k: v["valid_pixels"] for k, v in eopf_stats.items()} == {
        k: v["valid_pixels"] for k, v in cog_stats.items()
    }
