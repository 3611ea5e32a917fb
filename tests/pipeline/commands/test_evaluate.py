"""``evaluate`` end to end on tiny synthetic datasets (real layouts), and map accuracy against a
synthetic map whose Olofsson estimates are checked against the estimator directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.base.errors import UserError
from pipeline.cli import main
from pipeline.evaluate.area import stratified_estimates
from pipeline.evaluate.labels import load_label_map, match_labels
from tests.data import make_eval_datasets as gen


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> dict[str, Path]:
    return gen.make_all(tmp_path_factory.mktemp("eval-data"))


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_eurosat_rgb_untrained_senclip(eval_data, tmp_path, capsys):
    out = tmp_path / "eurosat"
    rc = main([
        "evaluate", "eurosat", "--root", str(eval_data["eurosat_rgb"]), "--untrained",
        "--limit-per-class", "1", "--out", str(out), "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0
    rep = _metrics(out)
    assert rep["n"] == 10 and rep["task"] == "eurosat"
    assert rep["scorer"]["legend"] == "eurosat10" and "UNTRAINED" in rep["warning"]
    assert set(rep["per_class"]) == set(rep["class_names"]) and len(rep["class_names"]) == 10
    assert rep["dataset_classes"]["SeaLake"] == "Sea or Lake"
    assert 0 <= rep["overall_accuracy"] <= 1 and rep["macro_f1"] is not None
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 10


def test_evaluate_eurosat_ms_timesenclip_and_bigearthnet_senclip(eval_data, tmp_path):
    out = tmp_path / "ms"
    rc = main([
        "evaluate", "eurosat-ms", "--root", str(eval_data["eurosat_ms"]), "--untrained",
        "--out", str(out), "--device", "cpu", "--calibration", "shifted",
    ])  # fmt: skip
    assert rc == 0
    rep = _metrics(out)
    assert rep["n"] == 30 and rep["model"]["name"] == "timesenclip"
    assert rep["calibration"] == "shifted"

    out = tmp_path / "ben"
    rc = main([
        "evaluate", "bigearthnet", "--root", str(eval_data["bigearthnet"]), "--untrained",
        "--out", str(out), "--device", "cpu", "--batch-size", "2",
    ])  # fmt: skip
    assert rc == 0
    rep = _metrics(out)
    assert rep["n"] == 5 and rep["samples_without_labels"] == 1
    assert 0 <= rep["macro_map"] <= 1 and 0 <= rep["recall_at_label_count"] <= 1
    assert rep["per_class"]["Arable land"]["positives"] == 1
    assert (out / "average_precision.png").is_file()


def test_evaluate_rgb_needs_senclip(eval_data, tmp_path):
    rc = main([
        "evaluate", "eurosat", "--root", str(eval_data["eurosat_rgb"]), "--untrained",
        "--model", "timesenclip", "--out", str(tmp_path / "x"), "--device", "cpu",
    ])  # fmt: skip
    assert rc == 2


# --- labels -------------------------------------------------------------------------------------


def test_label_matching():
    names = ["Artificial Land", "Cropland", "Woodland"]
    assert match_labels(["Cropland", "woodland", "2", "x", "9"], names).tolist() == [
        1,
        2,
        2,
        -1,
        -1,
    ]
    lc1 = load_label_map("lucas-lc1")
    lc8 = ["Artificial Land", "Cropland", "Woodland", "Shrubland", "Grassland", "Bare Land",
           "Water", "Wetlands"]  # fmt: skip
    assert match_labels(["A11", "B13", "C21", "G11", "H12"], lc8, lc1).tolist() == [0, 1, 2, 6, 7]
    with pytest.raises(UserError, match="not in the legend"):
        match_labels(["A11"], names[:1], lc1)


def test_label_map_file(tmp_path):
    p = tmp_path / "map.yaml"
    p.write_text("wheat: Cropland\n'311': Woodland\n")
    m = load_label_map(p)
    assert match_labels(["wheat", "311", "Cropland"], ["Cropland", "Woodland"], m).tolist() == [
        0,
        1,
        0,
    ]
    with pytest.raises(UserError):
        load_label_map(tmp_path / "none.yaml")


# --- map accuracy ------------------------------------------------------------------------------


def _write_map(folder: Path, classes: np.ndarray, names: list[str], nodata: int = 255) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        folder / "classes.tif", "w", driver="GTiff", height=classes.shape[0],
        width=classes.shape[1], count=1, dtype="uint8", crs="EPSG:32632", nodata=nodata,
        transform=from_origin(600000, 5340000, 10, 10), tiled=True, blockxsize=16, blockysize=16,
    ) as dst:  # fmt: skip
        dst.write(classes[None])
    legend = {"nodata": nodata, "classes": [{"value": i, "name": n} for i, n in enumerate(names)]}
    (folder / "legend.json").write_text(json.dumps(legend))
    return folder


def test_evaluate_map_olofsson(tmp_path):
    from pyproj import Transformer

    names = ["forest", "crop", "water"]
    rng = np.random.default_rng(0)
    cmap = np.zeros((40, 50), np.uint8)
    cmap[:, 20:] = 1
    cmap[30:, 40:] = 2
    cmap[0, 0] = 255  # one nodata pixel
    folder = _write_map(tmp_path / "run", cmap, names)
    # reference: 30 random pixels per map class; truth = map, except a few deliberate errors
    rows, cols, truth = [], [], []
    for k in range(3):
        r, c = np.nonzero(cmap == k)
        pick = rng.choice(len(r), 30, replace=False)
        rows += r[pick].tolist()
        cols += c[pick].tolist()
        t = np.full(30, k)
        t[:3] = (k + 1) % 3  # 3 errors per stratum
        truth += t.tolist()
    x = 600000 + (np.array(cols) + 0.5) * 10
    y = 5340000 - (np.array(rows) + 0.5) * 10
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(x, y)
    csv = tmp_path / "ref.csv"
    csv.write_text("id,lon,lat,lc\n" + "".join(
        f"r{i},{lon[i]:.10f},{lat[i]:.10f},{names[truth[i]]}\n" for i in range(90)
    ) + "out,11.9,48.0,forest\n")  # fmt: skip
    out = tmp_path / "acc"
    assert main(["evaluate", "map", "--map", str(folder), "--reference", str(csv),
                 "--label-column", "lc", "--out", str(out)]) == 0  # fmt: skip
    rep = _metrics(out)
    cm = np.zeros((3, 3), int)
    for k, t in zip(np.repeat([0, 1, 2], 30), truth, strict=True):
        cm[k, t] += 1
    assert rep["sample_confusion_matrix"] == cm.tolist()
    pix = np.array([(cmap == k).sum() for k in range(3)])
    est = stratified_estimates(cm, pix * 100 * 1e-4)  # ha
    assert rep["overall_accuracy"] == pytest.approx(est["overall_accuracy"])
    assert rep["overall_accuracy_se"] == pytest.approx(est["overall_accuracy_se"])
    for k, n in enumerate(names):
        c = rep["classes"][n]
        assert c["mapped_area"] == pytest.approx(pix[k] * 0.01)
        assert c["estimated_area"] == pytest.approx(est["area"][k])
        assert c["users_accuracy"] == pytest.approx(0.9)
        assert c["estimated_area_ci"][0] < c["estimated_area"] < c["estimated_area_ci"][1]
    assert rep["reference"]["outside_map"] == 1 and rep["reference"]["used"] == 90
    assert rep["area_unit"] == "ha" and rep["pixel_area_m2"] == 100.0
    assert rep["sample_metrics"]["overall_accuracy"] == pytest.approx(0.9)
    for png in ("confusion_matrix.png", "area_estimates.png"):
        assert (out / png).stat().st_size > 1000
    # per-point results as CSV and GeoParquet (EPSG:4326 points), one row per reference point
    import geopandas as gpd
    import pandas as pd

    gdf = gpd.read_parquet(out / "points.parquet")
    table = pd.read_csv(out / "points.csv", keep_default_na=False)
    assert gdf.crs.to_epsg() == 4326 and len(gdf) == len(table) == 91
    assert list(gdf["point_id"]) == [f"r{i}" for i in range(90)] + ["out"]
    np.testing.assert_allclose(gdf.geometry.x[:90], lon, atol=1e-9)
    np.testing.assert_allclose(gdf.geometry.y[:90], lat, atol=1e-9)
    assert gdf["used"].sum() == 90 and not gdf["used"].iloc[-1]
    assert gdf["correct"].sum() == 81  # 3 deliberate errors per stratum
    assert list(gdf["map_class"][:90]) == [names[k] for k in np.repeat([0, 1, 2], 30)]
    assert list(gdf["reference_class"][:90]) == [names[t] for t in truth]
    assert list(table["correct"]) == list(gdf["correct"]) and rep["points_files"]
