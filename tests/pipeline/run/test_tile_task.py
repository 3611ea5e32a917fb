"""process_tile and run_tiles in-process, with a deterministic fake encoder (no weights, no workers).

The fake (:class:`pipeline.testing.encoder.FakeEncoder`) is a real object with the models'
interface; ``model.get_model`` hands it out, so the prep, the tile jobs, the engine, the zero-shot
classifier, the Zarr store and the COG writers all run for real on the small demo catalog. Its
embeddings are a fixed linear map of the composite, so the expected map is computed here from the
composite alone and compared pixel by pixel.
"""

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
from pipeline.run.scheduling import run_tiles, tile_job
from pipeline.run.tile_task import load_composite, process_tile
from pipeline.run.workspace import Workspace
from pipeline.testing.encoder import FakeEncoder
from pipeline.writers import create_map_store, open_map
from tests.conftest import SMALL_BOUNDS


@pytest.fixture
def fake(monkeypatch) -> FakeEncoder:
    enc = FakeEncoder("timesenclip")
    monkeypatch.setattr(model, "get_model", lambda *a, **k: enc)
    return enc


@pytest.fixture
def run(fake, small_catalog, tmp_path):
    """A real RunConfig (from the run command's own options), prep, workspace and store."""
    w, s, e, n = SMALL_BOUNDS
    aoi = Geometry(box(w + 40, s + 40, e - 40, n - 40), "EPSG:32632").to_crs("EPSG:4326")
    lon0, lat0, lon1, lat1 = aoi.boundingbox
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--bbox", str(lon0), str(lat0), str(lon1), str(lat1), "--start", "2023-01-01",
         "--end", "2023-12-31", "--period", "annual", "--untrained", "--tile-size", "32",
         "--out", str(tmp_path / "out")]
    )  # fmt: skip
    cfg = resolve(args)
    c = cfg.composite
    prep = prepare_run(cfg)
    assert prep.model_info["identity"] == fake.identity
    ws = Workspace(tmp_path / "out")
    ws.prepare(cfg.output_hash(), overwrite=False)
    create_map_store(
        ws.store, prep.grid, class_names=prep.class_names, k=cfg.output.top_k,
        period_labels=list(period_labels(c.start, c.end, c.period)),
    )  # fmt: skip
    items = json.loads((small_catalog / "items.json").read_text())["features"]
    return cfg, prep, ws, RunInputs.write(ws.work, prep.geometry, items)


def _expected_classes(fake: FakeEncoder, classifier: np.ndarray, values: np.ndarray):
    """(N,) classes and the gap between the best two cosines, from (P, B, N) composite values."""
    series = np.ascontiguousarray(np.transpose(values, (2, 0, 1))) * np.float32(1e4)
    w = classifier / np.linalg.norm(classifier, axis=1, keepdims=True)
    cos = fake.expected_embeddings(series) @ w.T
    top2 = np.sort(cos, axis=1)[:, -2:]
    return cos.argmax(axis=1), top2[:, 1] - top2[:, 0]


def test_process_tile_maps_every_valid_pixel_to_the_encoders_class(fake, run):
    cfg, prep, ws, inputs = run
    assert len(prep.grid.tiles) > 1
    checked = 0
    for tile in prep.grid.tiles:
        job = tile_job(cfg, prep, ws, inputs, tile, None)
        stats = process_tile(job)
        got = open_map(ws.store)["classes"].values[tile.window]
        mapped = got != 255
        assert mapped.sum() == stats["valid_pixels"]
        assert (ws.tile_dir(tile.id) / "classes.tif").is_file()
        if not mapped.any():
            continue
        comp = load_composite(job, tile.geobox)[0]
        expect, gap = _expected_classes(fake, prep.classifier, comp.values[:, :, mapped])
        clear = gap > 1e-5  # float32 rounding (~1e-7) may only flip near-ties
        assert clear.mean() > 0.95
        np.testing.assert_array_equal(got[mapped][clear], expect[clear])
        checked += int(mapped.sum())
    assert checked > 0.5 * sum(t.shape[0] * t.shape[1] for t in prep.grid.tiles)


def test_run_tiles_marks_done_tiles_and_records_a_failing_one(run):
    from distributed import Client

    cfg, prep, ws, inputs = run
    tiles = list(prep.grid.tiles)
    bad = tiles[0].id

    def task(job):
        if job.tile.id == bad:
            raise RuntimeError("this tile always fails")
        return process_tile(job)

    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as c:
        stats, failures = run_tiles(c, cfg, prep, ws, inputs, None, tiles, task=task)
    assert set(stats) == {t.id for t in tiles} - {bad}
    assert set(ws.done_tiles()) == set(stats)
    assert list(failures) == [bad]
    assert failures[bad].error_kind == "error" and "always fails" in failures[bad].message
    assert failures[bad].attempts == cfg.execution.retries + 1
    assert ws.failed_tiles() == failures


def _over_http(feats: list[dict], store, root) -> list[dict]:
    """The items with their assets read from the loopback object store."""
    import copy
    from pathlib import Path

    out = copy.deepcopy(feats)
    for f in out:
        for a in f["assets"].values():
            if a["href"].startswith("file://"):
                p = Path(a["href"].removeprefix("file://"))
                if p.is_relative_to(root):
                    a["href"] = store.href(p)
    return out


def test_a_scene_whose_object_is_gone_is_dropped_and_the_tile_made_from_the_others(
    run, small_catalog
):
    """Issue 26: a 404 (after a second try) drops its scene from the tile; the composite is the
    one of the other scenes, bit for bit; later tiles on the worker do not ask for it again."""
    from pathlib import Path

    from pipeline.reading import block_reader
    from pipeline.testing.object_store import serve_store

    cfg, prep, ws, _ = run
    feats = json.loads((small_catalog / "items.json").read_text())["features"]
    gone = feats[3]
    b04 = Path(gone["assets"]["red"]["href"].removeprefix("file://"))
    tiles = prep.grid.tiles[:2]
    reader = block_reader()
    with serve_store(small_catalog) as store:
        http = _over_http(feats, store, small_catalog)
        store.config.missing.add(b04.relative_to(small_catalog).as_posix())
        everything = RunInputs.write(ws.work, prep.geometry, http)
        others = RunInputs.write(
            ws.work / "others", prep.geometry, [f for f in http if f["id"] != gone["id"]]
        )
        reader.clear()
        reader.gone.clear()
        got = load_composite(tile_job(cfg, prep, ws, everything, tiles[0], None), tiles[0].geobox)
        asked = store.counter.not_found
        second = load_composite(
            tile_job(cfg, prep, ws, everything, tiles[1], None), tiles[1].geobox
        )
        assert store.counter.not_found == asked >= 1  # known gone on this worker: not asked again
        reader.clear()
        want = load_composite(tile_job(cfg, prep, ws, others, tiles[0], None), tiles[0].geobox)
        reader.gone.clear()
    comp, n, _, _, dropped = got
    assert list(dropped) == [gone["id"]] and list(second[4]) == [gone["id"]]
    rec = dropped[gone["id"]]
    assert (rec["status"], rec["permanent"], rec["kind"]) == (404, True, "http")
    assert rec["asset"] == f"{store.url}/{b04.relative_to(small_catalog).as_posix()}"
    assert want[4] == {} and n == want[1] == len(feats) - 1
    np.testing.assert_array_equal(comp.values, want[0].values)
    np.testing.assert_array_equal(comp.counts, want[0].counts)


def test_a_transient_read_failure_fails_the_tile_and_drops_nothing(run, small_catalog):
    """A 503 that outlasts the retries is not a lost scene: the tile fails (and is redone)."""
    from pathlib import Path

    from pipeline.reading import block_reader
    from pipeline.reading.failure import ReadFailure
    from pipeline.testing.object_store import serve_store

    cfg, prep, ws, _ = run
    feats = json.loads((small_catalog / "items.json").read_text())["features"]
    b04 = Path(feats[3]["assets"]["red"]["href"].removeprefix("file://"))
    tile = prep.grid.tiles[0]
    reader = block_reader()
    with serve_store(small_catalog) as store:
        http = _over_http(feats, store, small_catalog)
        store.config.fail_paths.add(b04.relative_to(small_catalog).as_posix())
        inputs = RunInputs.write(ws.work, prep.geometry, http)
        reader.clear()
        reader.gone.clear()
        attempts, reader.attempts = reader.attempts, 2  # the test need not wait 16 s
        try:
            with pytest.raises(ReadFailure) as info:
                load_composite(tile_job(cfg, prep, ws, inputs, tile, None), tile.geobox)
        finally:
            reader.attempts = attempts
        assert store.counter.faults["503"] >= 2 * 4  # 2 tries of GDAL's 1 + 3 retries
    assert info.value.status == 503 and not info.value.permanent
    assert info.value.scenes == (feats[3]["id"],) and reader.gone == {}
