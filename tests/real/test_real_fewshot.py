"""Few-shot on real labels: a linear head on TimeSenCLIP pixel embeddings, fitted at the LPIS
parcels of site 31UDS (2018) and scored on the parcels of site 31UES (2019), through the CLI:
``extract-points`` -> ``probe`` -> ``run --head`` -> ``evaluate map``.

The encoder is untrained (no TimeSenCLIP weights are public), so the figures measure how
separable the crop types stay through a random encoder, not zero-shot accuracy. Next to them:
the training majority class, and the same head fitted on the raw monthly composites (no encoder).
The three figures go to bench/results.json as ``real_fewshot_*``; the only assertion on them is
that the head beats the majority class.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from .flanders import EPSG, YEARS

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
TRAIN, TEST = "31UDS", "31UES"
CLASSES = (1200, 5100, 9120)
"""WorldCereal crop-type (CT) codes with parcels on both sites (the others occur on one only)."""
MAX_TRAIN_PER_CLASS = 150


def _label_points(real_root, tile: str, per_class: int | None, seed: int) -> list[dict]:
    """Pixel centres of the site's parcels of :data:`CLASSES` (at most ``per_class`` each)."""
    from pyproj import Transformer

    from . import flanders

    _, _, labels = flanders.Site.find(real_root, tile).open()
    ct = np.asarray(labels["CT"].values)
    x = np.asarray(labels["x"].values)
    y = np.asarray(labels["y"].values)
    tr = Transformer.from_crs(EPSG, 4326, always_xy=True)
    rng = np.random.default_rng(seed)
    rows = []
    for code in CLASSES:
        rr, cc = np.nonzero(ct == code)
        pick = np.sort(rng.permutation(rr.size)[:per_class]) if per_class else np.arange(rr.size)
        for i in pick:
            lon, lat = tr.transform(x[cc[i]], y[rr[i]])
            rows.append(
                {"id": f"{tile}_{rr[i]:02d}_{cc[i]:02d}", "lon": f"{lon:.8f}", "lat": f"{lat:.8f}",
                 "ct": f"ct{code}", "row": int(rr[i]), "col": int(cc[i])}
            )  # fmt: skip
    return rows


def _write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "lon", "lat", "ct"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _features(series: np.ndarray) -> np.ndarray:
    """Raw-composite features: (N, 12, 10) reflectance -> (N, 120)."""
    return series.reshape(series.shape[0], -1).astype(np.float64)


def test_fewshot_head_on_real_parcels(real_root, cli, map_args, flanders_stac, tsc_maps, tmp_path):
    import xarray as xr

    from model.train.probe import fit_linear_head
    from pipeline.bench.results import Entry, write_results
    from pipeline.evaluate.metrics import classification_report
    from pipeline.points import PointTable

    train_rows = _label_points(real_root, TRAIN, MAX_TRAIN_PER_CLASS, seed=0)
    test_rows = _label_points(real_root, TEST, None, seed=0)
    names = [f"ct{c}" for c in CLASSES]

    # 1. monthly composites at the training parcels, through the STAC API like a map
    table_path = tmp_path / "train.npz"
    cli(
        "extract-points", "--points", str(_write_csv(train_rows, tmp_path / "train.csv")),
        "--year", str(YEARS[TRAIN]), "--stac-url", flanders_stac, "--max-cloud", "100",
        "--crs", f"EPSG:{EPSG}", "--workers", "2", "--out", str(table_path),
    )  # fmt: skip
    table = PointTable.load(table_path)
    assert len(table) == len(train_rows)
    # the points' composites are the map's composites at those pixels (one composite code path)
    z = xr.open_zarr(tsc_maps[TRAIN] / "map.zarr")
    comp = z["composite"].values  # (12, 10, 64, 64)
    rc = {r["id"]: (r["row"], r["col"]) for r in train_rows}
    at = np.stack([comp[:, :, rc[i][0], rc[i][1]] for i in table.ids.astype(str)])
    np.testing.assert_allclose(table.values, at, atol=1e-6, equal_nan=True)

    # 2. the head on untrained TimeSenCLIP embeddings, 3. the map of the other site with it
    head = tmp_path / "head.npz"
    cli(
        "probe", "--points", str(table_path), "--label-column", "ct", "--untrained",
        "--test-fraction", "0", "--class-balanced", "--out", str(head),
    )  # fmt: skip
    out = tmp_path / "map"
    cli(*map_args(TEST, out), "--head", str(head))

    # 4. the map against the other site's parcels
    reference = _write_csv(test_rows, tmp_path / "test.csv")
    cli(
        "evaluate", "map", "--map", str(out), "--reference", str(reference),
        "--label-column", "ct", "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    rep = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert rep["reference"]["used"] == len(test_rows), rep["reference"]
    ours = rep["sample_metrics"]

    # baselines on the same reference pixels
    truth = np.array([names.index(r["ct"]) for r in test_rows])
    y_train = np.array([names.index(str(v)) for v in table.column("ct")])
    # the majority class of the training site's parcels (before the per-class cap)
    site_counts = np.bincount(
        [names.index(r["ct"]) for r in _label_points(real_root, TRAIN, None, 0)], minlength=3
    )
    majority = classification_report(np.full_like(truth, site_counts.argmax()), truth, names)
    x_train = _features(table.values)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    raw_head = fit_linear_head(
        (x_train - mean) / std, y_train, names, class_balanced=True, normalize=False
    )
    test_comp = xr.open_zarr(tsc_maps[TEST] / "map.zarr")["composite"].values
    x_test = _features(np.stack([test_comp[:, :, r["row"], r["col"]] for r in test_rows]))
    raw_pred = np.asarray(raw_head.predict((x_test - mean) / std)).argmax(axis=1)
    raw = classification_report(raw_pred, truth, names)

    notes = {
        "train": f"{TRAIN} {YEARS[TRAIN]}: {len(train_rows)} parcel pixels (<= {MAX_TRAIN_PER_CLASS} per class)",
        "test": f"{TEST} {YEARS[TEST]}: all {len(test_rows)} parcel pixels of the same classes",
        "classes": names,
        "encoder": "TimeSenCLIP untrained (seed 0): separability, not zero-shot accuracy",
        "data": "WorldCereal Flanders L2A series + LPIS crop types (S2LC_REAL_DATA)",
    }
    entries = [
        Entry("real_fewshot_timesenclip_head", ours["overall_accuracy"], "overall accuracy",
              notes={**notes, "macro_f1": ours["macro_f1"], "kappa": ours["kappa"]}),
        Entry("real_fewshot_majority_baseline", majority["overall_accuracy"], "overall accuracy",
              notes={**notes, "macro_f1": majority["macro_f1"],
                     "baseline": f"the training site's majority class ({names[site_counts.argmax()]}) "
                                 "everywhere",
                     "test_majority_share": float(np.bincount(truth).max() / truth.size)}),
        Entry("real_fewshot_raw_composite_head", raw["overall_accuracy"], "overall accuracy",
              notes={**notes, "macro_f1": raw["macro_f1"],
                     "baseline": "the same logistic head on the standardised raw 12 x 10 composites"}),
    ]  # fmt: skip
    write_results(entries, ROOT / "bench" / "results.json")
    print(json.dumps({e.name: [e.value, e.notes["macro_f1"]] for e in entries}, indent=1))

    assert ours["macro_f1"] > majority["macro_f1"]
    assert ours["overall_accuracy"] > majority["overall_accuracy"]
