"""Readers for local copies of the benchmark datasets, in their released on-disk layouts.

Nothing is downloaded; torchgeo is not needed (files are read with PIL and rasterio).

- **EuroSAT RGB** (``EuroSAT.zip`` -> ``2750/<Class>/<Class>_<n>.jpg``, 64 x 64 JPEG; torchgeo's
  newer copy ``EuroSAT_RGB/``): classes in ``ImageFolder`` (alphabetical) order, as the SenCLIP
  evaluation reads them.
- **EuroSAT MS** (``EuroSATallBands.zip`` -> ``ds/images/remote_sensing/otherDatasets/sentinel_2/
  tif/<Class>/<Class>_<n>.tif``; torchgeo's newer ``EuroSAT_MS/``): 13-band GeoTIFFs, bands
  ``B01..B12, B8A`` (B8A last), L1C digital numbers (reflectance x 1e4).
- **BigEarthNet-19** (torchgeo's layout: ``BigEarthNet-v1.0/<patch>/<patch>_B01.tif`` ...
  ``_B12.tif`` (12 bands, 10/20/60 m, resampled to 120 x 120 bilinear as torchgeo does) and
  ``<patch>_labels_metadata.json`` with the 43 CLC labels, plus ``bigearthnet-<split>.csv``
  listing ``<s2 patch>,<s1 patch>`` per line), mapped to the 19-class nomenclature.

Every reader yields batches of ``(images, targets)``: images (B, bands, h, w) float32 (RGB in
0-1 for JPEGs, reflectance for GeoTIFFs), targets (B,) class indices or (B, 19) multi-hot.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling

from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

EUROSAT_CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)
#: The display names the SenCLIP evaluation prompts with (REFERENCE_MODELS.md 1.5).
EUROSAT_DISPLAY = (
    "Annual Crop Land",
    "Forest",
    "Herbaceous Vegetation Land",
    "Highway or Road",
    "Industrial Buildings",
    "Pasture Land",
    "Permanent Crop Land",
    "Residential Buildings",
    "River",
    "Sea or Lake",
)
#: Band order of the EuroSAT MS GeoTIFFs.
EUROSAT_MS_BANDS = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A",
)  # fmt: skip
_EUROSAT_RGB_DIRS = ("2750", "EuroSAT_RGB", "EuroSAT", "eurosat-rgb")
_EUROSAT_MS_DIRS = (
    "ds/images/remote_sensing/otherDatasets/sentinel_2/tif",
    "EuroSAT_MS",
    "EuroSATallBands",
    "tif",
)

#: BigEarthNet's 43 CLC level-3 labels (as in the label JSON files) and their 19-class groups.
BEN43 = (
    "Continuous urban fabric", "Discontinuous urban fabric", "Industrial or commercial units",
    "Road and rail networks and associated land", "Port areas", "Airports",
    "Mineral extraction sites", "Dump sites", "Construction sites", "Green urban areas",
    "Sport and leisure facilities", "Non-irrigated arable land", "Permanently irrigated land",
    "Rice fields", "Vineyards", "Fruit trees and berry plantations", "Olive groves", "Pastures",
    "Annual crops associated with permanent crops", "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland", "Moors and heathland", "Sclerophyllous vegetation",
    "Transitional woodland/shrub", "Beaches, dunes, sands", "Bare rock",
    "Sparsely vegetated areas", "Burnt areas", "Inland marshes", "Peatbogs", "Salt marshes",
    "Salines", "Intertidal flats", "Water courses", "Water bodies", "Coastal lagoons",
    "Estuaries", "Sea and ocean",
)  # fmt: skip
BEN19 = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
#: 43-class index -> 19-class index (labels absent here have no 19-class equivalent).
BEN43_TO_19 = {
    0: 0, 1: 0, 2: 1, 11: 2, 12: 2, 13: 2, 14: 3, 15: 3, 16: 3, 18: 3, 17: 4, 19: 5, 20: 6,
    21: 7, 22: 8, 23: 9, 24: 10, 25: 11, 31: 11, 26: 12, 27: 12, 28: 13, 29: 14, 33: 15,
    34: 15, 35: 16, 36: 16, 38: 17, 39: 17, 40: 18, 41: 18, 42: 18,
}  # fmt: skip
BEN_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
BEN_SIZE = 120


def _natural_key(path: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name))


def _find_class_root(root: Path, candidates: Sequence[str], suffixes: Sequence[str]) -> Path:
    """The folder holding the EuroSAT class folders (root itself, a known sub-path, or a search)."""
    tried = [root] + [root / c for c in candidates]
    for d in tried:
        if (d / EUROSAT_CLASSES[0]).is_dir():
            return d
    for d in sorted(root.rglob(EUROSAT_CLASSES[0])):
        if d.is_dir() and any(f.suffix.lower() in suffixes for f in d.iterdir()):
            return d.parent
    raise UserError(
        f"{root}: no EuroSAT class folders (expected e.g. {root}/{candidates[0]}/"
        f"{EUROSAT_CLASSES[0]}/{EUROSAT_CLASSES[0]}_1{suffixes[0]})"
    )


@dataclass(frozen=True)
class ImageFolderDataset:
    """Single-label images in ``<root>/<Class>/*`` (EuroSAT RGB or MS)."""

    paths: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    display_names: tuple[str, ...]
    kind: str
    """``rgb`` (JPEG, 0-1) or ``ms`` (13-band GeoTIFF, reflectance)."""

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        if self.kind == "rgb":
            with Image.open(self.paths[i]) as im:
                a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            return np.transpose(a, (2, 0, 1))

        with rasterio.open(self.paths[i]) as src:
            return src.read().astype(np.float32) / 10_000.0

    def batches(
        self, batch_size: int = 64, limit: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self) if limit is None else min(limit, len(self))
        for s in range(0, n, batch_size):
            idx = range(s, min(n, s + batch_size))
            yield np.stack([self.read(i) for i in idx]), self.labels[list(idx)]


def _image_folder(
    root: str | Path, kind: str, limit_per_class: int | None = None
) -> ImageFolderDataset:
    r = Path(root).expanduser()
    if not r.is_dir():
        raise UserError(f"dataset folder not found: {r}")
    suffixes = (".jpg", ".jpeg", ".png") if kind == "rgb" else (".tif", ".tiff")
    base = _find_class_root(r, _EUROSAT_RGB_DIRS if kind == "rgb" else _EUROSAT_MS_DIRS, suffixes)
    paths, labels = [], []
    for k, cls in enumerate(EUROSAT_CLASSES):
        d = base / cls
        files = (
            sorted((f for f in d.iterdir() if f.suffix.lower() in suffixes), key=_natural_key)
            if d.is_dir()
            else []
        )
        if not files:
            _log.warning("%s: no images for class %s", base, cls)
        files = files[:limit_per_class] if limit_per_class else files
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise UserError(f"{base}: no images")
    _log.info("EuroSAT %s at %s: %d images", kind.upper(), base, len(paths))
    return ImageFolderDataset(
        paths=tuple(paths),
        labels=np.array(labels, dtype=np.int64),
        class_names=EUROSAT_CLASSES,
        display_names=EUROSAT_DISPLAY,
        kind=kind,
    )


def eurosat_rgb(root: str | Path, limit_per_class: int | None = None) -> ImageFolderDataset:
    """EuroSAT RGB JPEGs (all 27,000 images, as the SenCLIP evaluation uses them)."""
    return _image_folder(root, "rgb", limit_per_class)


def eurosat_ms(root: str | Path, limit_per_class: int | None = None) -> ImageFolderDataset:
    """EuroSAT MS 13-band GeoTIFFs (reflectance = DN / 1e4)."""
    return _image_folder(root, "ms", limit_per_class)


def eurosat_ms_bands(names: Sequence[str]) -> list[int]:
    """0-based indices of ``names`` (e.g. ``pipeline.stac.bands.BANDS`` or B4, B3, B2) in an MS tif."""
    return [EUROSAT_MS_BANDS.index(n) for n in names]


@dataclass(frozen=True)
class BigEarthNetDataset:
    """BigEarthNet-S2 v1 patches with their 19-class multi-hot labels."""

    folders: tuple[Path, ...]
    class_names: tuple[str, ...] = BEN19

    def __len__(self) -> int:
        return len(self.folders)

    def band_paths(self, i: int) -> list[Path]:
        folder = self.folders[i]
        out = []
        for b in BEN_BANDS:
            p = folder / f"{folder.name}_{b}.tif"
            if not p.is_file():
                raise UserError(f"{folder}: missing band file {p.name}")
            out.append(p)
        return out

    def read(self, i: int) -> np.ndarray:
        """(12, 120, 120) reflectance in :data:`BEN_BANDS` order (bilinear to 120 x 120)."""

        bands = []
        for p in self.band_paths(i):
            with rasterio.open(p) as src:
                bands.append(
                    src.read(
                        1,
                        out_shape=(BEN_SIZE, BEN_SIZE),
                        out_dtype="float32",
                        resampling=Resampling.bilinear,
                    )
                )
        return np.stack(bands) / 10_000.0

    def target(self, i: int) -> np.ndarray:
        folder = self.folders[i]
        path = folder / f"{folder.name}_labels_metadata.json"
        if not path.is_file():
            found = sorted(folder.glob("*.json"))
            if not found:
                raise UserError(f"{folder}: no labels JSON")
            path = found[0]
        labels = json.loads(path.read_text())["labels"]
        y = np.zeros(len(BEN19), dtype=np.int64)
        for lab in labels:
            if lab not in BEN43:
                raise UserError(f"{path}: unknown BigEarthNet label {lab!r}")
            k = BEN43_TO_19.get(BEN43.index(lab))
            if k is not None:
                y[k] = 1
        return y

    def batches(
        self, batch_size: int = 64, limit: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        n = len(self) if limit is None else min(limit, len(self))
        for s in range(0, n, batch_size):
            idx = range(s, min(n, s + batch_size))
            yield np.stack([self.read(i) for i in idx]), np.stack([self.target(i) for i in idx])


def ben_bands(names: Sequence[str]) -> list[int]:
    """0-based indices of ``names`` (``B4`` or ``B04`` spellings) in :data:`BEN_BANDS` order."""
    norm = {re.sub(r"^B0?", "B", b): i for i, b in enumerate(BEN_BANDS)}
    return [norm[re.sub(r"^B0?", "B", n)] for n in names]


def bigearthnet(root: str | Path, split: str = "test") -> BigEarthNetDataset:
    """BigEarthNet-S2 v1 in torchgeo's layout; ``split`` from ``bigearthnet-<split>.csv`` (or
    ``all``: every patch folder). Patches without a 19-class label are kept (all-zero target).

    ``root`` may also be the folder of patch folders itself (what the released
    ``BigEarthNet-S2-v1.0.tar.gz`` unpacks to, or any subset of it), read with ``split="all"``
    or a split CSV inside it.
    """
    r = Path(root).expanduser()
    base = r / "BigEarthNet-v1.0"
    if not base.is_dir():
        if not any(r.glob("*/*_labels_metadata.json")):
            raise UserError(
                f"{r}: no BigEarthNet-v1.0 folder (torchgeo's layout) and no patch folders "
                "(<patch>/<patch>_labels_metadata.json)"
            )
        base = r
    if split == "all":
        folders = sorted(d for d in base.iterdir() if d.is_dir())
    else:
        csv = r / f"bigearthnet-{split}.csv"
        if not csv.is_file():
            raise UserError(f"{r}: no split file {csv.name} (or use --split all)")
        names = [
            line.split(",")[0].strip() for line in csv.read_text().splitlines() if line.strip()
        ]
        folders = [base / n for n in names]
        missing = [f for f in folders if not f.is_dir()]
        if missing:
            raise UserError(
                f"{csv}: {len(missing)} patch folders missing (first: {missing[0].name})"
            )
    if not folders:
        raise UserError(f"{base}: no patches")
    _log.info("BigEarthNet %s: %d patches", split, len(folders))
    return BigEarthNetDataset(folders=tuple(folders))
