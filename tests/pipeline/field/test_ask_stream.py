"""Ask the map streamed and mosaicked (issue 28, points 2 and 3): several fields of one basis as
one output, refusals of another basis / CRS / pixel grid, the calibration rule, units published
as they finish, and a real local Dask cluster giving the same pixels as one process.

The fields are format-valid synthetic ones (:func:`pipeline.testing.field.write_synthetic_field`)
with the metadata of a demo run (untrained TimeSenCLIP), side by side: A at x0, B at x0 + A's
width, sharing A's basis; C has another basis; D another CRS; E is half a pixel off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from pipeline.base.errors import UserError
from pipeline.field import stream
from pipeline.field.classify_map import MapConfig, classify_fields
from pipeline.field.fieldset import open_fields
from pipeline.field.query import query_field
from pipeline.testing.field import write_synthetic_field

TILE = 64
SHAPE = (96, 128)
X0, Y0 = 600_000.0, 5_400_000.0


@pytest.fixture(scope="module")
def meta():
    from pipeline.bench.ask import _demo_run_metadata

    return _demo_run_metadata(TILE)


def _field(root, name, meta, *, seed, basis_seed=0, origin=(X0, Y0), crs=None, calibration=None):
    run = {**meta["run"], "calibration": calibration}
    return write_synthetic_field(
        root / name, SHAPE, run=run, field_meta=meta["field_meta"],
        class_names=meta["class_names"], colors=meta["colors"], legend_info=meta["legend_info"],
        period_labels=["2023-01"], crs=crs or meta["crs"], origin=origin, tile_size=TILE,
        seed=seed, basis_seed=basis_seed,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fields(meta, tmp_path_factory):
    root = tmp_path_factory.mktemp("ask")
    w = SHAPE[1] * 10.0
    return {
        "A": _field(root, "A", meta, seed=0),
        "B": _field(root, "B", meta, seed=1, origin=(X0 + w, Y0)),
        "C": _field(root, "C", meta, seed=2, basis_seed=7, origin=(X0 + w, Y0)),
        "D": _field(root, "D", meta, seed=1, origin=(X0 + w, Y0), crs="EPSG:32633"),
        "E": _field(root, "E", meta, seed=1, origin=(X0 + w + 5.0, Y0)),
        "root": root,
    }


LEGEND = (
    "name: mine\nclasses:\n"
    "  water: {color: '#1f78b4', prompts: ['a lake', 'a river']}\n"
    "  houses: {color: '#e31a1c', prompts: ['a village']}\n"
    "  trees: {color: '#33a02c', prompts: ['a forest']}\n"
)


def _read(path, band=1):
    with rasterio.open(path) as src:
        return src.read(band), src.transform, src.crs


def test_two_fields_mosaic_into_one_map_equal_to_each_alone(fields, tmp_path):
    legend = tmp_path / "mine.yaml"
    legend.write_text(LEGEND)
    outs = {}
    for name, paths in (("AB", ["A", "B"]), ("A", ["A"]), ("B", ["B"])):
        cfg = MapConfig(legend=str(legend), out=tmp_path / name, progress=False)
        outs[name] = classify_fields(open_fields([fields[p] for p in paths]), cfg)
    ab, t_ab, crs = _read(outs["AB"] / "classes.tif")
    a, t_a, _ = _read(outs["A"] / "classes.tif")
    b, t_b, _ = _read(outs["B"] / "classes.tif")
    assert ab.shape == (SHAPE[0], 2 * SHAPE[1]) and t_ab == t_a and crs == meta_crs(fields)
    assert np.array_equal(ab[:, : SHAPE[1]], a) and np.array_equal(ab[:, SHAPE[1] :], b)
    assert (t_b.c, t_b.f) == (X0 + SHAPE[1] * 10.0, Y0)
    assert set(np.unique(ab)) <= {0, 1, 2} and len(np.unique(ab)) > 1
    run = json.loads((outs["AB"] / "run.json").read_text())
    assert run["source_fields"] == [str(fields["A"]), str(fields["B"])]
    assert not (outs["AB"] / "tiles").exists()  # the units' files are gone once mosaicked
    item = json.loads((outs["AB"] / "item.json").read_text())
    assert item["properties"]["s2lc:field_basis_sha256"] == run["basis_sha256"]
    # the query mosaics alike
    qa = query_field(open_fields([fields["A"], fields["B"]]), ["a lake"], tmp_path / "qab")
    qb = query_field(open_fields([fields["B"]]), ["a lake"], tmp_path / "qb")
    sim_ab, sim_b = _read(qa["a lake"])[0], _read(qb["a lake"])[0]
    assert np.array_equal(sim_ab[:, SHAPE[1] :], sim_b) and (sim_ab != stream.QUERY_NODATA).all()


def meta_crs(fields):
    with rasterio.open(f'ZARR:"{fields["A"] / "map.zarr"}":/field_scale') as z:
        return z.crs


def test_another_basis_crs_or_grid_is_refused_in_one_line(fields):
    with pytest.raises(UserError) as e:
        open_fields([fields["A"], fields["C"]])
    msg = str(e.value)
    a_hash = open_fields([fields["A"]]).basis_sha256
    c_hash = open_fields([fields["C"]]).basis_sha256
    assert a_hash != c_hash and a_hash[:16] in msg and c_hash[:16] in msg and "\n" not in msg
    with pytest.raises(UserError, match="CRS"):
        open_fields([fields["A"], fields["D"]])
    with pytest.raises(UserError, match="pixel grid"):
        open_fields([fields["A"], fields["E"]])


def test_calibration_rule_when_the_runs_differ(meta, fields, tmp_path):
    """The runs' own legend: their stored vector when they agree; one vector fitted on the
    fields together when they differ (one calibration for the whole mosaic)."""
    c = len(meta["class_names"])
    root = fields["root"]
    same = [0.2 + 0.01 * i for i in range(c)]
    other = [0.3 - 0.01 * i for i in range(c)]
    w = SHAPE[1] * 10.0
    f1 = _field(root, "cal1", meta, seed=0, calibration=same)
    f2 = _field(root, "cal2", meta, seed=1, origin=(X0 + w, Y0), calibration=same)
    f3 = _field(root, "cal3", meta, seed=1, origin=(X0 + w, Y0), calibration=other)
    legend = meta["legend_info"]["name"]
    runs = {}
    for name, paths in (("same", [f1, f2]), ("differ", [f1, f3])):
        cfg = MapConfig(legend=legend, calibration="reference", out=tmp_path / name, progress=False)
        runs[name] = json.loads((classify_fields(open_fields(paths), cfg) / "run.json").read_text())
    assert runs["same"]["calibration_source"] == "runs" and runs["same"]["calibration"] == same
    assert runs["differ"]["calibration_source"] == "fitted"
    fitted = runs["differ"]["calibration"]
    assert len(fitted) == c and fitted not in (same, other) and all(-1 <= v <= 1 for v in fitted)


def test_units_are_published_as_they_finish(fields, tmp_path):
    """Each unit's file exists (complete, openable) when its unit reports done, before the end."""
    from pipeline.field.texts import text_vectors

    fs = open_fields([fields["A"]])
    pv = fs.first.codec.project(text_vectors(fs.first, ["a lake"]))
    tiles = tmp_path / "tiles"
    job = stream.Job(
        kind="classify", stores=(str(fs.first.store),), tiles_dir=str(tiles),
        crs_wkt=fs.geobox.crs.to_wkt(), transform=tuple(fs.geobox.affine)[:6], proj=pv.proj,
        t_mean=pv.t_mean, mean_sq=pv.mean_sq,
    )  # fmt: skip
    units = fs.units()
    seen = []

    def check(stats):
        files = sorted(tiles.glob("*/classes.tif"))
        seen.append(len(files))
        with rasterio.open(tiles / stats["unit"] / "classes.tif") as src:
            assert src.read(1).shape == next(u.shape for u in units if u.id == stats["unit"])

    stream.execute(units, job, None, check)
    assert seen == list(range(1, len(units) + 1)) and len(units) == 4


@pytest.mark.timeout(300)
def test_a_local_dask_cluster_gives_the_same_pixels(fields, tmp_path):
    """--workers 2 on a real local cluster (8 units >= 2 per worker): the same heat maps."""
    fs = open_fields([fields["A"], fields["B"]])
    where = stream.Where(kind="local", workers=2)
    assert stream._worth_a_cluster(len(fs.units()), where)
    texts = ["a lake", "a forest"]
    par = query_field(fs, texts, tmp_path / "par", cluster=where, probability=True)
    one = query_field(fs, texts, tmp_path / "one", probability=True)
    for text in ("a lake", "a forest"):
        for band in (1, 2):
            assert np.array_equal(_read(par[text], band)[0], _read(one[text], band)[0])
    with pytest.raises(UserError, match="--cluster"):
        stream.Where(kind="nowhere")


def test_a_call_with_cached_texts_imports_no_torch(fields, tmp_path):
    """The fixed cost: with the legend's vectors in the text cache, classify imports neither
    PyTorch nor Dask (with --workers 1 the units stay in the process)."""
    import os
    import subprocess
    import sys

    from tests.paths import REPO_ROOT

    legend = tmp_path / "mine.yaml"
    legend.write_text(LEGEND)
    classify_fields(  # fills the text cache
        open_fields([fields["A"]]), MapConfig(legend=str(legend), out=tmp_path / "warm")
    )
    cmd = [sys.executable, "-X", "importtime", "-m", "pipeline", "classify", "--no-progress",
           "--field", str(fields["A"]), "--legend", str(legend), "--workers", "1",
           "--out", str(tmp_path / "c")]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO_ROOT, env=dict(os.environ), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "distributed" not in imported
    assert (tmp_path / "c" / "classes.tif").is_file()
