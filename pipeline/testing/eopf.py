"""EOPF Zarr Sentinel-2 L2A products of the demo scenes: the same pixels as a COG catalog.

:func:`eopf_catalog` turns a catalog written by :func:`pipeline.testing.demo.generate_catalog`
(any layout) into one EOPF Zarr v3 product per scene plus STAC items like the EOPF Sample
Service's (asset ``product`` = the product root; ``B02_10m`` ... ``B12_20m``, ``SCL_20m`` = the
arrays in it, media type ``application/vnd+zarr``), so the same scenes can be read both ways.

Each product has the real layout, attributes and chunking (checked against the real product
metadata in ``tests/data/eopf/`` by ``tests/pipeline/reading/test_eopf.py``):

* ``measurements/reflectance/r10m/{b02,b03,b04,b08}``: uint16 10980² in 1830² chunks;
  ``measurements/reflectance/r20m/{b05,b06,b07,b8a,b11,b12}``: uint16 5490² in 915² chunks;
  ``conditions/mask/l2a_classification/r20m/scl``: uint8 5490² in 915² chunks;
* ``bytes`` + ``zstd`` (level 0, no checksum) codecs, ``fill_value`` 0, dims (``y``, ``x``), the
  real attributes (``scale_factor`` 0.0001, ``add_offset`` -0.1, ...); 1-D float32 ``x``/``y``
  pixel-centre coordinates per resolution group;
* root attribute ``stac_discovery`` with ``proj:code`` and the EOPF ``processing:version``.

The scene is placed in the full 109.8 km tile so that it straddles the chunk boundary in the
middle of the tile (a window of one quadrant needs one chunk per array, the whole scene four);
only chunks holding data are written (zarr's default: absent chunks read as ``fill_value``).
DN carry ``BOA_ADD_OFFSET`` as in every product from baseline 04.00 on: a catalog whose DN are
offset-free (Earth Search v1) gets +1000 on every non-zero DN.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import zarr
from zarr.codecs import ZstdCodec

from pipeline.stac.bands import (
    BANDS,
    BOA_ADD_OFFSET,
    CDSE_KEYS,
    NATIVE_RESOLUTION,
    SCL,
    asset_keys,
    item_crs,
    reflectance_scale_offset,
)
from pipeline.stac.eopf import EOPF_ARRAYS, PRODUCT_ASSET

MEDIA_TYPE = "application/vnd+zarr"
TILE_PX = 10980
"""Pixels of a Sentinel-2 tile at 10 m (109.8 km)."""
CHUNK_PX = {10: 1830, 20: 915}
"""Chunk edge per resolution in the real products (tile / 6)."""

_NM = {"B2": ("02", 490), "B3": ("03", 560), "B4": ("04", 665), "B8": ("08", 842),
       "B5": ("05", 705), "B6": ("06", 740), "B7": ("07", 783), "B8A": ("8A", 865),
       "B11": ("11", 1610), "B12": ("12", 2190)}  # fmt: skip
_NAN_FILL = "AAAAAAAA+H8="  # the real coordinates' _FillValue attribute: base64 of float64 NaN


def band_attributes(band: str) -> dict[str, Any]:
    """The real attributes of a reflectance array (EOPF-CPM 3.0.0; ``short_name`` as it writes
    them, ``b02_10m`` but ``b03_r10m``)."""
    num, nm = _NM[band]
    res = NATIVE_RESOLUTION[band]
    short = f"b{num.lower()}_{'' if band == 'B2' else 'r'}{res}m"
    return {
        "add_offset": BOA_ADD_OFFSET / 10000.0,
        "dtype": "<u2",
        "fill_value": 0,
        "long_name": f"BOA reflectance from MSI acquisition at spectral band {num} {nm} nm",
        "scale_factor": 0.0001,
        "short_name": short,
        "units": "digital_counts",
        "valid_max": 65535,
        "valid_min": 1,
    }


SCL_ATTRIBUTES = {
    "add_offset": 0,
    "dtype": "<u1",
    "fill_value": 0,
    "long_name": "scene classification map at 20m",
    "scale_factor": 1,
    "short_name": "scl_r20m",
    "valid_max": 65535,
    "valid_min": 1,
}


def _coord_attributes(axis: str, res: int) -> dict[str, Any]:
    return {
        "_FillValue": _NAN_FILL,
        "dtype": "<f4",
        "long_name": f"{axis} coordinates of the image at {res}m in meters from up-left pixel",
        "units": "m",
    }


def _codecs() -> dict[str, Any]:
    return {"compressors": ZstdCodec(level=0, checksum=False)}


def write_product(
    path: Path,
    dn: dict[str, np.ndarray],
    offset_px: tuple[int, int],
    origin: tuple[float, float],
    crs: str,
    stac_discovery: dict[str, Any],
    *,
    tile_px: int = TILE_PX,
    chunk_px: dict[int, int] = CHUNK_PX,
) -> Path:
    """Write one EOPF Zarr v3 product at ``path`` holding ``dn`` (canonical band -> DN array).

    Args:
        path: the product folder (``...zarr``), replaced if it exists.
        dn: canonical band (and SCL) -> (rows, cols) DN at the band's native resolution.
        offset_px: (row, col) of the data's first 10 m pixel in the tile (even numbers).
        origin: (x, y) of the tile's upper-left corner, metres in ``crs``.
        crs: ``EPSG:nnnn``.
        stac_discovery: the root ``stac_discovery`` attribute.
        tile_px, chunk_px: the 10 m tile edge and the chunk edge per resolution (m).
    """
    if offset_px[0] % 2 or offset_px[1] % 2:
        raise ValueError("offset_px must be even (on the 20 m lattice)")
    if path.exists():
        shutil.rmtree(path)
    root = zarr.open_group(zarr.storage.LocalStore(path), mode="w", zarr_format=3)
    root.attrs.update({"stac_discovery": stac_discovery})
    groups: dict[str, Any] = {}

    def group(p: str) -> Any:
        if p not in groups:
            groups[p] = root.require_group(p)
        return groups[p]

    for band, arr_path in EOPF_ARRAYS.items():
        parent, name = arr_path.rsplit("/", 1)
        res = 10 if parent.endswith("r10m") else 20
        f = res // 10
        g = group(parent)
        n = tile_px // f
        if "x" not in g:
            for axis in ("x", "y"):
                centres = (
                    origin[0] + res * (np.arange(n) + 0.5)
                    if axis == "x"
                    else origin[1] - res * (np.arange(n) + 0.5)
                )
                c = g.create_array(
                    axis, shape=(n,), chunks=(n,), dtype="float32", fill_value=np.nan,
                    dimension_names=[axis], attributes=_coord_attributes(axis, res), **_codecs(),
                )  # fmt: skip
                c[...] = centres.astype(np.float32)
        data = dn[band]
        attrs = SCL_ATTRIBUTES if band == SCL else band_attributes(band)
        a = g.create_array(
            name, shape=(n, n), chunks=(chunk_px[res],) * 2, dtype=data.dtype, fill_value=0,
            dimension_names=["y", "x"], attributes=attrs, **_codecs(),
            config={"write_empty_chunks": True},  # only the chunks the data touch are written
        )  # fmt: skip
        r0, c0 = offset_px[0] // f, offset_px[1] // f
        a[r0 : r0 + data.shape[0], c0 : c0 + data.shape[1]] = data
    return path


def _read_dn(href: str) -> tuple[np.ndarray, Any]:
    with rasterio.open(href.removeprefix("file://")) as src:
        return src.read(1), src.transform


def eopf_catalog(
    cog_catalog: Path,
    root: Path,
    *,
    tile_px: int = TILE_PX,
    chunk_px: dict[int, int] = CHUNK_PX,
) -> Path:
    """Write the scenes of ``cog_catalog`` as EOPF Zarr products and items under ``root``.

    Args:
        cog_catalog: a folder with ``items.json`` and ``collection.json`` of COG items
            (:func:`pipeline.testing.demo.generate_catalog`, any layout).
        root: output folder: ``items/<id>.zarr`` products, ``items.json`` (asset hrefs are
            ``file://`` URLs), ``collection.json`` (the COG catalog's).
        tile_px, chunk_px: as :func:`write_product` (default: the real 10980 px and 1830/915).

    Returns:
        ``root``.
    """
    cog_catalog, root = Path(cog_catalog), Path(root).resolve()
    (root / "items").mkdir(parents=True, exist_ok=True)
    doc = json.loads((cog_catalog / "items.json").read_text())
    feats = doc["features"] if isinstance(doc, dict) else doc
    half = tile_px // 2
    out = []
    for feat in feats:
        item = pystac.Item.from_dict(copy.deepcopy(feat))
        keys = asset_keys(item)
        crs = item_crs(item) or "EPSG:32632"
        h = reflectance_scale_offset(item)
        add = 0 if h.offset != 0 else int(-BOA_ADD_OFFSET)  # products carry the offset
        dn: dict[str, np.ndarray] = {}
        west = north = None
        for band in (*BANDS, SCL):
            data, t = _read_dn(item.assets[keys[band]].href)
            if band == "B2":
                west, north, rows, cols = t.c, t.f, data.shape[0], data.shape[1]
            if band != SCL and add:
                data = np.where(data > 0, np.minimum(data.astype(np.uint32) + add, 65535), 0)
                data = data.astype(np.uint16)
            dn[band] = data
        # the scene's first pixel at an even (20 m) offset, straddling the middle chunk boundary
        off = (2 * ((half - rows // 2) // 2), 2 * ((half - cols // 2) // 2))
        origin = (west - 10.0 * off[1], north + 10.0 * off[0])
        path = root / "items" / f"{item.id}.zarr"
        props = {
            "datetime": item.properties.get("datetime"),
            "platform": item.properties.get("platform"),
            "processing:version": "1.0.0",
            "product:type": "S02MSIL2A",
            "proj:code": crs,
            "proj:bbox": [origin[0], origin[1] - 10.0 * tile_px, origin[0] + 10.0 * tile_px,
                          origin[1]],
        }  # fmt: skip
        write_product(
            path, dn, off, origin, crs, {"id": item.id, "properties": props, "type": "Feature"},
            tile_px=tile_px, chunk_px=chunk_px,
        )  # fmt: skip
        out.append(_eopf_item(feat, path.as_uri(), crs))
    (root / "items.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": out}, indent=1)
    )
    coll = cog_catalog / "collection.json"
    if coll.is_file():
        (root / "collection.json").write_text(coll.read_text())
    return root


def _eopf_item(feat: dict, product_href: str, crs: str) -> dict:
    """A STAC item like the EOPF Sample Service's for the product at ``product_href``."""
    props = {
        k: v
        for k, v in feat["properties"].items()
        if not k.startswith(("earthsearch:", "sentinel:")) and k != "proj:epsg"
    }
    props.update({"proj:code": crs, "product:type": "S2MSI2A"})
    assets: dict[str, Any] = {
        PRODUCT_ASSET: {
            "href": product_href,
            "type": MEDIA_TYPE,
            "roles": ["data", "metadata"],
            "title": "EOPF Product",
        }
    }
    for band, path in EOPF_ARRAYS.items():
        assets[CDSE_KEYS[band]] = {
            "href": f"{product_href}/{path}",
            "type": MEDIA_TYPE,
            "roles": ["data"] if band == SCL else ["data", "reflectance"],
        }
    return {
        "type": "Feature",
        "stac_version": feat.get("stac_version", "1.0.0"),
        "stac_extensions": [e for e in feat.get("stac_extensions", []) if "/projection/" not in e]
        + ["https://stac-extensions.github.io/projection/v2.0.0/schema.json"],
        "id": feat["id"],
        "collection": feat.get("collection"),
        "geometry": feat["geometry"],
        "bbox": feat["bbox"],
        "properties": props,
        "links": [],
        "assets": assets,
    }


def rebase(items: list[dict], root: Path, url: str) -> list[dict]:
    """Copies of ``items`` whose ``file://`` hrefs under ``root`` are served from ``url``."""
    base = Path(root).resolve().as_uri()
    out = copy.deepcopy(items)
    for it in out:
        for a in it["assets"].values():
            if a["href"].startswith(base):
                a["href"] = url.rstrip("/") + a["href"][len(base) :]
    return out
