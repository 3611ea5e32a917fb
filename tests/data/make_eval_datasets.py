"""Tiny synthetic copies of EuroSAT (RGB and MS) and BigEarthNet-19 in their real on-disk layouts.

    python tests/data/make_eval_datasets.py OUT_DIR

writes (seeded, a few KB each):

- ``eurosat-rgb/2750/<Class>/<Class>_<n>.jpg``: 64 x 64 RGB JPEGs, as in ``EuroSAT.zip``;
- ``eurosat-ms/ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif``:
  13-band uint16 GeoTIFFs (B01..B12, B8A), as in ``EuroSATallBands.zip``;
- ``bigearthnet/BigEarthNet-v1.0/<patch>/<patch>_B01.tif`` ... ``_B12.tif`` at their native
  sizes (120 x 120 at 10 m, 60 x 60 at 20 m, 20 x 20 at 60 m), ``<patch>_labels_metadata.json``
  and ``bigearthnet-{train,val,test}.csv`` (``<s2 patch>,<s1 patch>`` lines), as torchgeo expects.

Every image of a class carries a class-specific brightness, so readers can be checked end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

EUROSAT_CLASSES = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
    "PermanentCrop", "Residential", "River", "SeaLake",
)  # fmt: skip
EUROSAT_MS_SUBDIR = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
BEN_BANDS = {
    "B01": 20, "B02": 120, "B03": 120, "B04": 120, "B05": 60, "B06": 60, "B07": 60,
    "B08": 120, "B8A": 60, "B09": 20, "B11": 60, "B12": 60,
}  # fmt: skip
BEN_PATCHES = {
    # patch name -> (CLC labels, split)
    "S2A_MSIL2A_20170613T101031_0_48": (["Non-irrigated arable land", "Pastures"], "test"),
    "S2A_MSIL2A_20170613T101031_0_49": (["Coniferous forest", "Mixed forest"], "test"),
    "S2B_MSIL2A_20170924T93020_11_33": (["Sea and ocean"], "test"),
    "S2B_MSIL2A_20170924T93020_11_34": (["Discontinuous urban fabric", "Water bodies"], "test"),
    "S2A_MSIL2A_20180204T94161_52_71": (["Port areas"], "test"),  # no 19-class label
    "S2A_MSIL2A_20180204T94161_52_72": (["Broad-leaved forest"], "train"),
    "S2A_MSIL2A_20180204T94161_52_73": (["Peatbogs", "Natural grassland"], "val"),
}


def class_level(k: int) -> float:
    """The mean reflectance given to class ``k`` (distinct per class)."""
    return 0.03 + 0.03 * k


def make_eurosat_rgb(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = root / "2750"
    for k, cls in enumerate(EUROSAT_CLASSES):
        d = base / cls
        d.mkdir(parents=True, exist_ok=True)
        for n in range(1, per_class + 1):
            v = 20 + 20 * k + rng.integers(0, 10, size=(64, 64, 3))
            Image.fromarray(v.clip(0, 255).astype(np.uint8)).save(d / f"{cls}_{n}.jpg", quality=95)
    return root


def _write_tif(path: Path, data: np.ndarray, res: float, epsg: int = 32632) -> None:
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    count, h, w = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=h,
        width=w,
        count=count,
        dtype=data.dtype,
        crs=f"EPSG:{epsg}",
        transform=from_origin(600000, 5340000, res, res),
    ) as dst:
        dst.write(data)


def make_eurosat_ms(root: Path, per_class: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / EUROSAT_MS_SUBDIR
    for k, cls in enumerate(EUROSAT_CLASSES):
        for n in range(1, per_class + 1):
            refl = class_level(k) + rng.uniform(0, 0.01, size=(13, 64, 64))
            _write_tif(base / cls / f"{cls}_{n}.tif", (refl * 10_000).astype(np.uint16), 10.0)
    return root


def make_bigearthnet(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "BigEarthNet-v1.0"
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, (name, (labels, split)) in enumerate(BEN_PATCHES.items()):
        folder = base / name
        for band, size in BEN_BANDS.items():
            refl = class_level(i) + rng.uniform(0, 0.01, size=(1, size, size))
            _write_tif(
                folder / f"{name}_{band}.tif", (refl * 10_000).astype(np.uint16), 1200.0 / size
            )
        meta = {
            "labels": labels,
            "coordinates": {"ulx": 600000, "uly": 5340000, "lrx": 601200, "lry": 5338800},
            "projection": "EPSG:32632",
            "tile_source": name.rsplit("_", 2)[0],
            "acquisition_date": "2017-06-13 10:10:31",
        }
        (folder / f"{name}_labels_metadata.json").write_text(json.dumps(meta))
        splits[split].append(f"{name},S1A_IW_GRDH_1SDV_{i:04d}")
    for split, rows in splits.items():
        (root / f"bigearthnet-{split}.csv").write_text("".join(r + "\n" for r in rows))
    return root


def make_all(out: Path) -> dict[str, Path]:
    out = Path(out)
    return {
        "eurosat_rgb": make_eurosat_rgb(out / "eurosat-rgb"),
        "eurosat_ms": make_eurosat_ms(out / "eurosat-ms"),
        "bigearthnet": make_bigearthnet(out / "bigearthnet"),
    }


if __name__ == "__main__":
    for k, v in make_all(Path(sys.argv[1] if len(sys.argv) > 1 else "eval-data")).items():
        print(k, v)
