"""Planted signal: on the demo's synthetic truth, ground embeddings are replaced by fixed per-class
vectors (random orthonormal, plus per-photo noise). Training through the real commands
(extract-points on the demo STAC API, train timesenclip, evaluate points) must align the pixel
encoder so that zero-shot against those vectors recovers >= 90 % of the truth on held-out pixels;
a full ``run`` with the checkpoint and the vectors as its legend must reproduce it on the map.

The model is the real TimeSenCLIP architecture at a small size (64-d, 2 layers, 4 heads) through
its constructor arguments, so that training fits the CPU budget of the default suite; the paper's
6 x 512 encoder is the same code with the default arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.train.ground import save_ground_embeddings
from pipeline.cli import main
from pipeline.points import PointTable

DIM = 64
N_TRAIN, N_TEST = 3000, 1500
ARCH = ["--dim", str(DIM), "--depth", "2", "--heads", "4", "--mlp-dim", "128"]


def _pixel_lonlat(gbox, rows, cols):
    from pyproj import Transformer

    a = gbox.affine
    x = a.c + (cols + 0.5) * a.a
    y = a.f + (rows + 0.5) * a.e
    lon, lat = Transformer.from_crs(str(gbox.crs), "EPSG:4326", always_xy=True).transform(x, y)
    return np.asarray(lon), np.asarray(lat)


@pytest.fixture(scope="module")
def planted(demo_catalog, tmp_path_factory) -> dict:
    from pipeline.testing.demo import load_truth

    root = tmp_path_factory.mktemp("planted")
    truth, names, gbox = load_truth(demo_catalog)
    rng = np.random.default_rng(0)
    h, w = truth.shape
    flat = rng.choice(h * w, N_TRAIN + N_TEST, replace=False)
    rows, cols = flat // w, flat % w
    lon, lat = _pixel_lonlat(gbox, rows, cols)
    labels = [names[k] for k in truth[rows, cols]]
    csv = root / "points.csv"
    with csv.open("w") as f:
        f.write("id,lon,lat,label,split\n")
        for i in range(len(flat)):
            split = "train" if i < N_TRAIN else "test"
            f.write(f"DE_{i},{lon[i]:.9f},{lat[i]:.9f},{labels[i]},{split}\n")
    table_path = root / "points.npz"
    rc = main([
        "extract-points", "--points", str(csv), "--year", "2023", "--profile", "demo",
        "--tile-size", "512", "--cluster-px", "512", "--workers", "2", "--out", str(table_path),
    ])  # fmt: skip
    assert rc == 0
    table = PointTable.load(table_path)
    split = table.attrs["split"]
    train = table.subset(np.flatnonzero(split == "train"))
    test = table.subset(np.flatnonzero(split == "test"))
    train.save(root / "train.npz")
    test.save(root / "test.npz")

    # The planted signal: one fixed unit vector per class, a noisy copy per photo direction.
    vecs = np.linalg.qr(rng.normal(size=(DIM, len(names))))[0].T.astype(np.float32)
    np.savez(root / "legend.npz", names=np.array(names), embeddings=vecs)
    cls_idx = np.array([names.index(s) for s in train.attrs["label"]])
    noise = rng.normal(0, 0.5 / np.sqrt(DIM), (len(train), 4, DIM)).astype(np.float32)
    save_ground_embeddings(root / "ground.pt", train.ids.tolist(), vecs[cls_idx][:, None] + noise)
    return {"root": root, "names": names, "truth": truth, "gbox": gbox, "table": table}


@pytest.fixture(scope="module")
def trained(planted) -> Path:
    root = planted["root"]
    rc = main([
        "train", "timesenclip", "--points", str(root / "train.npz"),
        "--ground-embeddings", str(root / "ground.pt"), "--out", str(root / "train"),
        "--epochs", "8", "--batch-size", "256", "--lr", "2e-3", "--warmup-epochs", "0.5",
        "--queue-size", "1024", "--weight-decay", "1e-4", "--min-valid-periods", "1",
        "--legend", str(root / "legend.npz"), "--label-column", "label",
        "--clip", "untrained-seed0", "--device", "cpu", *ARCH,
    ])  # fmt: skip
    assert rc == 0
    return root / "train" / "checkpoints" / "best.pt"


def test_extracted_points_cover_the_demo(planted):
    table = planted["table"]
    assert len(table) == N_TRAIN + N_TEST and table.n_periods == 12
    assert (table.counts > 0).sum(axis=1).min() >= 1
    assert np.isfinite(table.values).all()  # gap-filled


def test_planted_signal_recovered_on_held_out_pixels(planted, trained, capsys):
    root = planted["root"]
    summary = json.loads((root / "train" / "train.json").read_text())
    assert summary["epochs"] == 8 and summary["final"]["val_zeroshot_acc"] >= 0.9
    history = json.loads((root / "train" / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    capsys.readouterr()
    rc = main([
        "evaluate", "points", "--points", str(root / "test.npz"), "--label-column", "label",
        "--checkpoint", str(trained), "--legend", str(root / "legend.npz"),
        "--out", str(root / "eval"), "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((root / "eval" / "metrics.json").read_text())
    assert report["n"] == N_TEST
    assert report["overall_accuracy"] >= 0.90, report["overall_accuracy"]
    assert (root / "eval" / "confusion_matrix.png").stat().st_size > 1000


def test_probe_head_on_trained_embeddings(planted, trained, capsys):
    root = planted["root"]
    capsys.readouterr()
    rc = main([
        "probe", "--points", str(root / "train.npz"), "--label-column", "label",
        "--checkpoint", str(trained), "--out", str(root / "head.npz"), "--shots", "20",
        "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_overall_accuracy"] >= 0.85
    rc = main([
        "evaluate", "points", "--points", str(root / "test.npz"), "--label-column", "label",
        "--checkpoint", str(trained), "--head", str(root / "head.npz"),
        "--out", str(root / "eval-head"), "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0
    report = json.loads((root / "eval-head" / "metrics.json").read_text())
    assert report["overall_accuracy"] >= 0.85 and report["scorer"]["head"]


@pytest.mark.integration
def test_planted_signal_reproduced_by_a_full_run(planted, trained, tmp_path):
    """``run`` with the trained checkpoint and the class vectors as legend maps the truth."""
    import rasterio

    root = planted["root"]
    out = tmp_path / "map"
    rc = main([
        "run", "--region", "demo", "--checkpoint", str(trained),
        "--legend", str(root / "legend.npz"), "--calibration", "none", "--out", str(out),
        "--workers", "1", "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    truth, gbox = planted["truth"], planted["gbox"]
    with rasterio.open(out / "classes.tif") as src:
        mapped, t, nodata = src.read(1), src.transform, src.nodata
    a = gbox.affine
    r0, c0 = round((t.f - a.f) / a.e), round((t.c - a.c) / a.a)
    ref = truth[r0 : r0 + mapped.shape[0], c0 : c0 + mapped.shape[1]]
    valid = mapped != nodata
    assert valid.mean() > 0.95
    agreement = float((mapped[valid] == ref[valid]).mean())
    assert agreement >= 0.90, agreement

    # and the map's accuracy against a reference sample of the truth, with area estimates
    rng = np.random.default_rng(1)
    rows = rng.integers(0, mapped.shape[0], 400) + r0
    cols = rng.integers(0, mapped.shape[1], 400) + c0
    lon, lat = _pixel_lonlat(gbox, rows, cols)
    ref_csv = tmp_path / "reference.csv"
    ref_csv.write_text("id,lon,lat,lc\n" + "".join(
        f"R{i},{lon[i]:.9f},{lat[i]:.9f},{planted['names'][truth[rows[i], cols[i]]]}\n"
        for i in range(400)
    ))  # fmt: skip
    rc = main([
        "evaluate", "map", "--map", str(out), "--reference", str(ref_csv), "--label-column", "lc",
        "--out", str(tmp_path / "acc"),
    ])  # fmt: skip
    assert rc == 0
    acc = json.loads((tmp_path / "acc" / "metrics.json").read_text())
    assert acc["overall_accuracy"] >= 0.85
    lo, hi = acc["overall_accuracy_ci"]
    assert lo < acc["overall_accuracy"] < hi
    total = sum(c["estimated_area"] for c in acc["classes"].values())
    assert total == pytest.approx(sum(c["mapped_area"] for c in acc["classes"].values()))
