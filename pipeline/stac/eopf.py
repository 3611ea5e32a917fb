"""ESA's EOPF Zarr Sentinel-2 L2A products as a provider layout: which items they are, where each
band lives inside the product.

An EOPF product is one Zarr v3 hierarchy per scene (EOPF-CPM 3.x; earlier sample products were
Zarr v2 with the same groups). The pipeline reads, for each canonical band (:data:`EOPF_ARRAYS`):

==========================================================  ======================  ==========
array (inside the product)                                  dtype                   grid
==========================================================  ======================  ==========
``measurements/reflectance/r10m/{b02,b03,b04,b08}``         uint16, fill 0          10 m
``measurements/reflectance/r20m/{b05,b06,b07,b8a,b11,b12}`` uint16, fill 0          20 m
``conditions/mask/l2a_classification/r20m/scl``             uint8, fill 0           20 m
==========================================================  ======================  ==========

Each resolution group holds 1-D ``x``/``y`` pixel-centre coordinates; the CRS is the root
attribute ``stac_discovery.properties["proj:code"]`` (or ``proj:epsg``, or
``other_metadata.horizontal_CRS_code`` in older products); reflectance is
``DN * scale_factor + add_offset`` from each array's own attributes. Source: the real product
metadata in ``tests/data/eopf/`` (EOPF-CPM 3.0.0, baseline 05.12) and the EOPF Sample Service's
STAC items (asset ``product`` = the product root, ``B02_10m`` ... ``SCL_20m`` = arrays in it).

An item is an EOPF item (:func:`is_eopf_item`) when an asset is a Zarr (media type
``application/vnd+zarr`` or ``application/vnd.zarr...``) or its href names a ``.zarr`` product.
The Data Space's per-band keys (``B02_10m``) are the same as its COG keys
(:data:`pipeline.stac.bands.LAYOUTS` ``cdse``), so the href, not the key, tells them apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pystac

from pipeline.base.errors import UserError
from pipeline.stac.bands import BANDS, LAYOUTS, SCL

EOPF_FORMAT = "EOPF Zarr product format, Zarr v3 (EOPF-CPM 3.x, product type S02MSIL2A)"
"""The EOPF product format version read (and written by :mod:`pipeline.testing.eopf`)."""

EOPF_ARRAYS: dict[str, str] = {
    "B2": "measurements/reflectance/r10m/b02",
    "B3": "measurements/reflectance/r10m/b03",
    "B4": "measurements/reflectance/r10m/b04",
    "B8": "measurements/reflectance/r10m/b08",
    "B5": "measurements/reflectance/r20m/b05",
    "B6": "measurements/reflectance/r20m/b06",
    "B7": "measurements/reflectance/r20m/b07",
    "B8A": "measurements/reflectance/r20m/b8a",
    "B11": "measurements/reflectance/r20m/b11",
    "B12": "measurements/reflectance/r20m/b12",
    SCL: "conditions/mask/l2a_classification/r20m/scl",
}
"""Canonical band -> array path inside an EOPF Sentinel-2 L2A product (native resolution)."""

PRODUCT_ASSET = "product"
"""The EOPF Sample Service's asset key of the whole product (roles ``data``, ``metadata``)."""

ZARR_MEDIA_TYPES = ("application/vnd+zarr", "application/vnd.zarr")

_IN_PRODUCT = re.compile(r"^(?P<root>.+?\.zarr)(?:/(?P<path>[^?#]*))?/?(?:[?#].*)?$")


class NotEopfItem(UserError):
    """An item with no EOPF Zarr product among its assets."""


@dataclass(frozen=True)
class EopfRef:
    """Where one item's bands are: the product root and each band's array path in it."""

    root: str
    """The product's URL or path (``.../S2B_MSIL2A_...zarr``), without a trailing slash."""
    arrays: dict[str, str]
    """Canonical band (and SCL) -> array path inside the product (:data:`EOPF_ARRAYS`)."""


def _assets(item: Any) -> Mapping[str, Any]:
    return item.assets if hasattr(item, "assets") else item.get("assets", {})


def _field(asset: Any, key: str) -> Any:
    if hasattr(asset, "href"):
        return asset.href if key == "href" else getattr(asset, "media_type", None)
    return asset.get(key)


def _is_zarr(asset: Any) -> bool:
    media = str(_field(asset, "type") or "")
    href = str(_field(asset, "href") or "")
    return media.startswith(ZARR_MEDIA_TYPES) or _IN_PRODUCT.match(href) is not None


def is_eopf_item(item: Any) -> bool:
    """True when an asset of ``item`` (pystac Item or dict) is an EOPF Zarr product or array."""
    return any(_is_zarr(a) for a in _assets(item).values())


def split_product_href(href: str) -> tuple[str, str]:
    """(product root, path inside it) of an href into a ``.zarr`` product; path ``""`` for the root.

    Raises:
        NotEopfItem: the href names no ``.zarr`` product.
    """
    m = _IN_PRODUCT.match(href.rstrip("/"))
    if not m:
        raise NotEopfItem(f"{href} is not inside a .zarr product")
    return m.group("root"), (m.group("path") or "").strip("/")


def eopf_ref(item: Any) -> EopfRef:
    """The product root and per-band array paths of an EOPF item.

    Per-band assets pointing into the product (``B02_10m`` -> ``<root>/measurements/...``) win;
    bands without one use :data:`EOPF_ARRAYS` under the product root (the ``product`` asset, or
    the root shared by the band assets).

    Raises:
        NotEopfItem: no asset is an EOPF Zarr product, or the assets name different products.
    """
    ident = item.id if hasattr(item, "id") else item.get("id", "?")
    assets = _assets(item)
    roots: set[str] = set()
    arrays: dict[str, str] = {}
    for key, asset in assets.items():
        if not _is_zarr(asset):
            continue
        try:
            root, path = split_product_href(str(_field(asset, "href")))
        except NotEopfItem:
            continue
        roots.add(root)
        for band, keys in LAYOUTS["cdse"].items():
            if key == keys[0] and path:  # the native-resolution key only (B05_20m, not B05_60m)
                arrays[band] = path
    if not roots:
        raise NotEopfItem(f"item {ident}: no EOPF Zarr product among its assets")
    if len(roots) > 1:
        raise NotEopfItem(f"item {ident}: assets in {len(roots)} products ({', '.join(roots)})")
    out = {b: arrays.get(b, EOPF_ARRAYS[b]) for b in (*BANDS, SCL)}
    return EopfRef(roots.pop(), out)


def eopf_canonical_item(item: Any) -> Any:
    """A pystac copy of an EOPF ``item`` whose assets are the canonical bands (and SCL), each
    href the array's URL inside the product (``<root>/<path>``), roles ``data``, no media type.

    What odc-stac's parser needs to give the solar day and order of the scenes exactly as it does
    for COG items (:func:`pipeline.reading.native.group_items`); nothing opens these hrefs.

    Raises:
        NotEopfItem: as :func:`eopf_ref`.
    """
    if not isinstance(item, pystac.Item):
        item = pystac.Item.from_dict(item)
    ref = eopf_ref(item)
    clone = pystac.Item(
        id=item.id,
        geometry=item.geometry,
        bbox=item.bbox,
        datetime=item.datetime,
        properties=dict(item.properties),
        collection=item.collection_id,
    )
    for band, path in ref.arrays.items():
        clone.add_asset(band, pystac.Asset(href=f"{ref.root}/{path}", roles=["data"]))
    return clone
