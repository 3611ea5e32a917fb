"""Day one: artefacts that check each other, cheap checks before any model is built, ``--config``
with every option, stratified reference samples, and the demo truth as an output.

The bad-input cases assert the one-line message and that no model was built (the driver's
``prepare_map`` is replaced by a function that fails the test), not how many seconds they took.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main

DEMO = ["--region", "demo", "--untrained", "--no-progress"]


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a run gets as far as preparing the tiles (grid, classifier)."""
    import pipeline.run.driver

    def refuse(*args, **kwargs):  # noqa: ARG001
        raise AssertionError("a model was built before the cheap checks failed")

    monkeypatch.setattr(pipeline.run.driver, "prepare_map", refuse)


def _error(capsys, argv, out: Path | None = None) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code != 0, err
    assert len(errors) == 1 and "Traceback" not in err, err
    if out is not None:
        assert not out.exists() or not any(p.name != ".s2lc" for p in out.iterdir()), list(
            out.iterdir()
        )
    return errors[0]


def _head(path: Path, *, names=("water", "forest", "cropland", "grassland", "built-up", "bare"),
          **identity) -> Path:  # fmt: skip
    from model.train.probe import LinearHead

    ident = {"name": "timesenclip", "dim": 512, "periods": 12, "period": "monthly", **identity}
    rng = np.random.default_rng(0)
    head = LinearHead(
        weight=rng.normal(size=(len(names), ident["dim"])).astype(np.float32),
        bias=np.zeros(len(names), np.float32),
        class_names=tuple(names),
        model_identity=ident,
        meta={"legend": "demo"},
    )
    return head.save(path)


# --- artefacts check each other -----------------------------------------------------------------


def test_head_of_another_period_kind_or_t_is_refused_before_the_model(capsys, tmp_path, no_model):
    out = tmp_path / "out"
    quarterly = _head(tmp_path / "q.npz", period="quarterly", periods=4)
    msg = _error(capsys, ["run", *DEMO, "--head", str(quarterly), "--out", str(out)], out)
    assert "quarterly composites" in msg and "monthly" in msg
    short = _head(tmp_path / "t.npz", period=None, periods=4)
    msg = _error(capsys, ["run", *DEMO, "--head", str(short), "--out", str(out)], out)
    assert "T = 4" in msg and "T = 12" in msg
    senclip = _head(tmp_path / "s.npz", name="senclip")
    msg = _error(capsys, ["run", *DEMO, "--head", str(senclip), "--out", str(out)], out)
    assert "'senclip' embeddings" in msg


def test_head_legend_mismatch_is_refused(capsys, tmp_path, no_model):
    head = _head(tmp_path / "h.npz", names=("a", "b"))
    msg = _error(
        capsys,
        ["run", *DEMO, "--head", str(head), "--legend", "demo", "--out", str(tmp_path / "o")],
    )
    assert "--legend demo has classes" in msg


def test_head_of_another_seed_is_refused_with_one_line(capsys, tmp_path, demo_catalog):
    """The full identity (untrained weights of another seed) is checked once the model exists,
    still before any tile runs."""
    out = tmp_path / "out"
    head = _head(tmp_path / "h.npz", identity="timesenclip:untrained-seed1:clip=x")
    msg = _error(capsys, ["run", *DEMO, "--seed", "0", "--head", str(head), "--out", str(out)])
    assert "untrained-seed1" in msg and "untrained-seed0" in msg
    assert not (out / "classes.tif").exists() and not (out / "map.zarr").exists()


def test_refitted_head_changes_the_output_hash(tmp_path):
    import argparse

    from pipeline.commands.run import add_arguments, resolve

    p = argparse.ArgumentParser()
    add_arguments(p)
    head = _head(tmp_path / "h.npz")
    args = p.parse_args(["--region", "demo", "--untrained", "--head", str(head)])
    before = resolve(args).output_hash()
    _head(tmp_path / "h.npz", dim=256)  # same path, another head
    assert resolve(args).output_hash() != before


# --- cheap checks first -------------------------------------------------------------------------


def test_bad_legend_fails_before_the_model(capsys, tmp_path, no_model):
    msg = _error(
        capsys, ["run", *DEMO, "--legend", "no-such", "--out", str(tmp_path / "o")], tmp_path / "o"
    )
    assert "unknown legend 'no-such'" in msg


def test_empty_search_inside_the_demo_suggests_the_demo_profile(
    capsys, tmp_path, demo_stac_url, no_model
):
    msg = _error(
        capsys,
        ["run", *DEMO, "--stac-url", demo_stac_url, "--collection", "nothing-here",
         "--out", str(tmp_path / "o")],
    )  # fmt: skip
    assert "no sentinel-2 scenes" in msg.lower() and "--profile demo" in msg


def test_vector_region_without_a_period_says_which_year(caplog, tmp_path, no_model):
    import argparse
    import logging

    import geopandas as gpd
    from shapely.geometry import box

    from pipeline.commands.run import add_arguments, resolve

    f = tmp_path / "field.gpkg"
    gpd.GeoDataFrame(geometry=[box(11.7, 48.38, 11.71, 48.39)], crs="EPSG:4326").to_file(f)
    p = argparse.ArgumentParser()
    add_arguments(p)
    with caplog.at_level(logging.INFO):
        cfg = resolve(p.parse_args(["--region", str(f), "--untrained"]))
    assert cfg.composite.end.year == cfg.composite.start.year and (
        cfg.composite.start.month,
        cfg.composite.start.day,
    ) == (1, 1)
    first = caplog.records[0].getMessage()
    assert "last full year" in first and str(cfg.composite.start) in first and "--year" in first


# --- --config takes every option ------------------------------------------------------------------


def _resolve_with(tmp_path, doc: str, *cli: str):
    import argparse

    from pipeline.commands.run import add_arguments, resolve

    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(doc)
    p = argparse.ArgumentParser()
    add_arguments(p)
    return resolve(p.parse_args(["--config", str(cfg_file), *cli]))


def test_config_takes_region_year_bbox_and_flags(tmp_path):
    cfg = _resolve_with(
        tmp_path,
        "region: freising\nyear: 2022\nbbox: [11.70, 48.38, 11.80, 48.44]\nmodel: senclip\n"
        "untrained: true\ntile-size: 128\nkeep_snow: true\nmax-cloud: 30\nretries: 4\n",
    )
    assert cfg.region == "freising" and cfg.model.name == "senclip" and cfg.model.untrained
    assert (str(cfg.composite.start), str(cfg.composite.end)) == ("2022-01-01", "2022-12-31")
    assert cfg.bbox == (11.70, 48.38, 11.80, 48.44)
    assert (
        cfg.chips.tile_size,
        cfg.mask.mask_snow,
        cfg.search.max_cloud,
        cfg.execution.retries,
    ) == (128, False, 30.0, 4)
    assert cfg.composite.period == "annual"  # senclip's default follows the model from the file
    # the command line wins
    cfg = _resolve_with(
        tmp_path, "region: freising\nyear: 2022\nuntrained: true\n", "--year", "2021"
    )
    assert cfg.composite.start.year == 2021


def test_config_unknown_key_names_the_nearest(capsys, tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("region: demo\nuntrained: true\ntile_sise: 128\n")
    msg = _error(capsys, ["run", "--config", str(f)])
    assert "unknown key 'tile_sise'" in msg and "did you mean 'tile-size'" in msg
    f.write_text("region: demo\nuntrained: true\nbbox: [1, 2]\n")
    assert "expected 4 values" in _error(capsys, ["run", "--config", str(f)])
    f.write_text("untrained: true\n")
    assert "give the region" in _error(capsys, ["run", "--config", str(f)])


# --- stratified samples, the demo truth ----------------------------------------------------------


def test_stratified_sample_counts_exclusion_and_seed():
    from pipeline.base.errors import UserError
    from pipeline.evaluate.sampling import stratified_sample

    strata = np.zeros((50, 60), np.uint8)
    strata[:10] = 1
    strata[10:12, :5] = 2  # 10 pixels only
    strata[40:] = 255
    exclude = np.zeros_like(strata, bool)
    exclude[20:30] = True
    r, c = stratified_sample(strata, 25, exclude=exclude, seed=3)
    vals = strata[r, c]
    assert [int((vals == k).sum()) for k in (0, 1, 2)] == [25, 25, 10]
    assert not (vals == 255).any() and not exclude[r, c].any()
    assert len(set(zip(r.tolist(), c.tolist()))) == len(r)  # without replacement
    r2, c2 = stratified_sample(strata, 25, exclude=exclude, seed=3)
    assert np.array_equal(r, r2) and np.array_equal(c, c2)
    r3, _ = stratified_sample(strata, 25, exclude=exclude, seed=4)
    assert not np.array_equal(r, r3)
    with pytest.raises(UserError):
        stratified_sample(np.full((4, 4), 255, np.uint8), 5)


def test_demo_truth_and_sample_points_commands(capsys, tmp_path, demo_catalog):
    import geopandas as gpd
    import rasterio

    from pipeline.testing.demo import load_truth

    truth = tmp_path / "truth.tif"
    assert main(["demo", "truth", "--out", str(truth)]) == 0
    assert capsys.readouterr().out.strip() == str(truth)
    with rasterio.open(truth) as src:
        data, tags, cmap = src.read(1), src.tags(), src.colormap(1)
        bounds = src.bounds
    full, names, gbox = load_truth(demo_catalog)
    assert json.loads(tags["class_names"]) == names
    assert cmap[0][:3] == (0x1F, 0x5F, 0xBF)  # the demo legend's water
    assert bounds.left == 600000 and bounds.top == 5342000
    # the exported window is the generator's truth at the same pixels
    col0 = int(round((bounds.left - gbox.affine.c) / 10))
    row0 = int(round((gbox.affine.f - bounds.top) / 10))
    assert np.array_equal(data, full[row0 : row0 + data.shape[0], col0 : col0 + data.shape[1]])

    train = tmp_path / "train.gpkg"
    argv = ["sample-points", "--strata", str(truth), "--labels", str(truth), "--per-class", "7"]
    assert main([*argv, "--out", str(train)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["points"] == 7 * len(names) and summary["labelled"]
    val = tmp_path / "val.gpkg"
    assert main([*argv, "--seed", "1", "--exclude", str(train), "--out", str(val)]) == 0
    a, b = gpd.read_file(train), gpd.read_file(val)
    assert (a["stratum"] == a["label"]).all()  # strata and labels from the same raster
    assert not set(zip(a.geometry.x, a.geometry.y)) & set(zip(b.geometry.x, b.geometry.y))
    assert str(a.crs) == "EPSG:32632"


# --- evaluate map: what the numbers mean -----------------------------------------------------------


def _class_map(folder: Path, classes: np.ndarray, names: list[str], untrained: bool) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        folder / "classes.tif", "w", driver="GTiff", height=classes.shape[0],
        width=classes.shape[1], count=1, dtype="uint8", crs="EPSG:32632", nodata=255,
        transform=from_origin(600000, 5340000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(classes[None])
    legend = {"nodata": 255, "untrained": untrained,
              "classes": [{"value": i, "name": n} for i, n in enumerate(names)]}  # fmt: skip
    (folder / "legend.json").write_text(json.dumps(legend))
    return folder


def _points_csv(path: Path, rows, cols, labels, extra: dict | None = None) -> Path:
    from pyproj import Transformer

    x = 600000 + (np.asarray(cols) + 0.5) * 10
    y = 5340000 - (np.asarray(rows) + 0.5) * 10
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(x, y)
    cols_extra = list(extra or {})
    lines = ["id,lon,lat,lc" + "".join(f",{c}" for c in cols_extra)]
    for i in range(len(labels)):
        more = "".join(f",{extra[c][i]}" for c in cols_extra)
        lines.append(f"r{i},{lon[i]:.10f},{lat[i]:.10f},{labels[i]}{more}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _evaluate_map_argv(folder, csv) -> list[str]:
    """``evaluate map`` of the class map in ``folder`` against the points in ``csv`` (column lc)."""
    return [
        "evaluate",
        "map",
        "--map",
        str(folder),
        "--reference",
        str(csv),
        "--label-column",
        "lc",
    ]


def test_evaluate_map_reports_drops_clips_cis_and_warns(tmp_path, capsys):
    names = ["forest", "crop"]
    cmap = np.zeros((30, 30), np.uint8)
    cmap[:, 15:] = 1
    cmap[0, :3] = 255
    folder = _class_map(tmp_path / "map", cmap, names, untrained=True)
    # all points in the forest half (not stratified, not SRS), all correct: UA 1.0 (CI [1, 1]);
    # one on nodata, one label that matches nothing
    rows = [*range(5, 29), 0, 29]
    cols = [*(r % 14 for r in range(5, 29)), 0, 9]
    labels = ["forest"] * 25 + ["wetland"]
    csv = _points_csv(tmp_path / "ref.csv", rows, cols, labels)
    out = tmp_path / "eval"
    argv = _evaluate_map_argv(folder, csv)
    assert main([*argv, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    dropped = summary["reference_points"]["dropped"]
    assert summary["reference_points"]["used"] == 24
    assert dropped["on nodata pixels"] == 1 and dropped["label matching no map class"] == 1
    text = " ".join(summary["warnings"])
    assert "UNTRAINED" in text and "--label-map" in text and "stratified" in text
    rep = json.loads((out / "metrics.json").read_text())
    for c in rep["classes"].values():
        for key in ("users_accuracy_ci", "producers_accuracy_ci"):
            assert all(v is None or 0.0 <= v <= 1.0 for v in c[key]), (key, c[key])
        lo = c["estimated_area_ci"][0]
        assert lo is None or lo >= 0
    assert all(0.0 <= v <= 1.0 for v in rep["overall_accuracy_ci"])


def test_evaluate_map_stratified_sample_has_no_design_warning_and_label_hint(tmp_path, capsys):
    names = ["forest", "crop"]
    cmap = np.zeros((30, 30), np.uint8)
    cmap[:, 15:] = 1
    folder = _class_map(tmp_path / "map", cmap, names, untrained=False)
    rows = [1, 2, 3, 4, 5, 6]
    cols = [1, 2, 3, 20, 21, 22]
    strata = ["forest"] * 3 + ["crop"] * 3
    csv = _points_csv(tmp_path / "ref.csv", rows, cols, strata, {"stratum": strata})
    argv = _evaluate_map_argv(folder, csv)
    assert main([*argv, "--out", str(tmp_path / "e")]) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []
    bad = _points_csv(tmp_path / "bad.csv", rows, cols, ["Wald"] * 6)
    argv[argv.index(str(csv))] = str(bad)
    msg = _error(capsys, [*argv, "--out", str(tmp_path / "e2")])
    assert "--label-map" in msg and "Wald" in msg


def test_classifier_cache_entry_of_another_model_is_rebuilt(tmp_path, monkeypatch):
    """A cache file is trusted for what it records, not for its name."""
    import shutil

    import torch

    from model.legends import load_legend
    from model.zeroshot import build_classifier, classifier_key, clear_memory_cache

    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path / "cache"))

    class TextModel:  # deterministic text embeddings, counts calls (as in test_model_zeroshot)
        name, embed_dim = "fake", 8

        def __init__(self, identity):
            self.identity, self.calls = identity, 0

        def text_embed(self, prompts):
            self.calls += 1
            g = torch.Generator().manual_seed(len(self.identity))
            return torch.nn.functional.normalize(torch.randn(len(prompts), 8, generator=g), dim=-1)

    lg = load_legend("demo")
    a = TextModel("fake:a")
    wa = build_classifier(a, lg)
    d = tmp_path / "cache" / "classifiers"
    # the entry of model a placed under model b's key (a copied or stale cache)
    shutil.copy(d / f"{classifier_key('fake:a', lg.prompt_hash)}.pt",
                d / f"{classifier_key('fake:bb', lg.prompt_hash)}.pt")  # fmt: skip
    clear_memory_cache()
    b = TextModel("fake:bb")
    wb = build_classifier(b, lg)
    assert b.calls == 1 and not torch.equal(wa, wb)


def test_replaced_checkpoint_changes_the_output_hash(tmp_path):
    import argparse

    from pipeline.commands.run import add_arguments, resolve

    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"one")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--region", "demo", "--checkpoint", str(ckpt)])
    before = resolve(args).output_hash()
    ckpt.write_bytes(b"two!")  # same path, other weights
    assert resolve(args).output_hash() != before
