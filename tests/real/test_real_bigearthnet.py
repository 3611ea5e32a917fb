"""``evaluate bigearthnet`` on real BigEarthNet-S2 patches in the dataset's own layout
(``bigearthnet-tiny``: 11 patches, real file names, 12 bands at 10/20/60 m, CORINE labels JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.real

# BigEarthNet-19 class of each CORINE label occurring in the sample, as published with the
# 19-class nomenclature (Sumbul et al. 2021, Table 1); written out here, not taken from the product.
EXPECTED_19 = {
    "Non-irrigated arable land": "Arable land",
    "Pastures": "Pastures",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation"
    ),
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Peatbogs": "Inland wetlands",
}


@pytest.fixture(scope="module")
def ben_root(real_root):
    root = real_root / "bigearthnet-tiny"
    if not root.is_dir():
        pytest.skip(f"{root} is missing")
    return root


def test_reader_matches_the_files(ben_root):
    import rasterio

    from pipeline.evaluate.datasets import BEN19, bigearthnet

    ds = bigearthnet(ben_root, split="all")
    patches = sorted(p for p in ben_root.iterdir() if p.is_dir())
    assert [f.name for f in ds.folders] == [p.name for p in patches] and len(ds) == 11
    for i, folder in enumerate(ds.folders):
        files = sorted(p.name for p in folder.glob("*.tif"))
        assert [p.name for p in ds.band_paths(i)] == [
            f"{folder.name}_{b}.tif"
            for b in (
                "B01",
                "B02",
                "B03",
                "B04",
                "B05",
                "B06",
                "B07",
                "B08",
                "B8A",
                "B09",
                "B11",
                "B12",
            )
        ]
        assert sorted(p.name for p in ds.band_paths(i)) == files
        img = ds.read(i)
        assert img.shape == (12, 120, 120) and np.isfinite(img).all()
        with rasterio.open(folder / f"{folder.name}_B04.tif") as src:
            red = src.read(1)
        np.testing.assert_allclose(img[3], red / 1e4, rtol=1e-6)  # 10 m band: read as it is
        labels = json.loads((folder / f"{folder.name}_labels_metadata.json").read_text())["labels"]
        expected = {EXPECTED_19[lab] for lab in labels}
        got = {BEN19[k] for k in np.flatnonzero(ds.target(i))}
        assert got == expected, folder.name


def test_evaluate_bigearthnet_command(ben_root, cli, session_cache_dir, tmp_path):
    out = tmp_path / "eval"
    cli(
        "evaluate", "bigearthnet", "--root", str(ben_root), "--split", "all", "--model",
        "senclip", "--untrained", "--device", "cpu", "--batch-size", "11", "--out", str(out),
    )  # fmt: skip
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["n"] == 11 and rep["dataset"]["patches"] == 11
    assert 0.0 <= rep["macro_map"] <= 1.0 and (out / "average_precision.png").is_file()
    # the report's positives per class are the label JSONs' (through the published 19 classes)
    positives: dict[str, int] = {}
    for f in sorted(ben_root.glob("*/*_labels_metadata.json")):
        for name in {EXPECTED_19[lab] for lab in json.loads(f.read_text())["labels"]}:
            positives[name] = positives.get(name, 0) + 1
    got = {k: v["positives"] for k, v in rep["per_class"].items() if v["positives"]}
    assert got == positives
