"""Sentinel-2 L2A band harmonisation: one band vocabulary and one reflectance rule for all providers.

Providers name the same bands differently (Earth Search v1 uses common names ``blue`` ...
``swir22``/``scl``; Earth Search v0 and Planetary Computer use ``B02`` ... ``B12``/``SCL``) and store
reflectance differently since processing baseline 04.00 (25 Jan 2022), which added
``BOA_ADD_OFFSET = -1000`` to the digital numbers (DN):

==========================================================  =========================
item                                                        reflectance
==========================================================  =========================
baseline < 04.00 (any provider)                             DN / 10000
baseline >= 04.00, DN still carry the offset (PC, ES v1     (DN - 1000) / 10000
without ``earthsearch:boa_offset_applied``)
Earth Search v1 with ``earthsearch:boa_offset_applied``     DN / 10000
==========================================================  =========================

The last row is the trap: those items still declare ``offset: -0.1`` in ``raster:bands`` although
the catalogue already removed the offset from the DN, so the declared offset must *not* be applied.
:func:`reflectance_scale_offset` therefore decides from the baseline and the flag, never from
``raster:bands``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError

BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
"""The 10 surface-reflectance bands every model and composite uses, in this order."""

SCL = "SCL"
"""The Sen2Cor scene classification layer."""

NATIVE_RESOLUTION: dict[str, int] = {
    "B2": 10, "B3": 10, "B4": 10, "B8": 10,
    "B5": 20, "B6": 20, "B7": 20, "B8A": 20, "B11": 20, "B12": 20,
    SCL: 20,
}  # fmt: skip

QUANTIFICATION = 10_000.0
"""L2A DN per unit reflectance."""

BOA_ADD_OFFSET = -1000.0
"""DN offset added from processing baseline 04.00 on."""

OFFSET_BASELINE = (4, 0)
"""First processing baseline whose DN carry :data:`BOA_ADD_OFFSET`."""

# Provider asset keys per canonical band, most specific first. Earth Search v1 also has
# "<name>-jp2" duplicates; only the COG keys are used.
ASSET_KEYS: dict[str, tuple[str, ...]] = {
    "B2": ("blue", "B02", "B2"),
    "B3": ("green", "B03", "B3"),
    "B4": ("red", "B04", "B4"),
    "B5": ("rededge1", "B05", "B5"),
    "B6": ("rededge2", "B06", "B6"),
    "B7": ("rededge3", "B07", "B7"),
    "B8": ("nir", "B08", "B8"),
    "B8A": ("nir08", "B8A", "B08A"),
    "B11": ("swir16", "B11"),
    "B12": ("swir22", "B12"),
    SCL: ("scl", "SCL"),
}

EARTH_SEARCH_V1_KEYS: dict[str, str] = {b: keys[0] for b, keys in ASSET_KEYS.items()}
"""Canonical band -> Earth Search v1 asset key."""

PC_KEYS: dict[str, str] = {
    **{b: f"B{b[1:].zfill(2)}" if b != "B8A" else "B8A" for b in BANDS},
    SCL: "SCL",
}
"""Canonical band -> Planetary Computer / Earth Search v0 asset key."""

# SCL classes (Sen2Cor): 0 no data, 1 saturated/defective, 2 dark features, 3 cloud shadow,
# 4 vegetation, 5 not vegetated, 6 water, 7 unclassified, 8 medium/9 high probability cloud,
# 10 thin cirrus, 11 snow/ice.
SCL_NAMES: dict[int, str] = {
    0: "no_data",
    1: "saturated_defective",
    2: "dark_features",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow_ice",
}
SCL_INVALID: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
"""SCL classes that are always masked."""
SCL_SNOW = 11


def scl_masked_classes(mask_snow: bool = True) -> tuple[int, ...]:
    """The SCL classes masked to NaN (snow/ice optionally)."""
    return (*SCL_INVALID, SCL_SNOW) if mask_snow else SCL_INVALID


def asset_keys(assets: Mapping[str, Any] | Any, *, with_scl: bool = True) -> dict[str, str]:
    """Map each canonical band (and SCL) to the asset key the provider uses.

    Args:
        assets: a ``pystac.Item``, an item dict, or a mapping of asset keys.
        with_scl: also map :data:`SCL`.

    Raises:
        UserError: when a band is missing, naming the item and the keys it has.
    """
    keys, ident = _asset_keys_of(assets)
    out: dict[str, str] = {}
    missing = []
    for band in (*BANDS, SCL) if with_scl else BANDS:
        found = next((k for k in ASSET_KEYS[band] if k in keys), None)
        if found is None:
            missing.append(band)
        else:
            out[band] = found
    if missing:
        raise UserError(
            f"item {ident}: no asset for band(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(keys))}); is this a Sentinel-2 L2A item?"
        )
    return out


def _asset_keys_of(obj: Any) -> tuple[set[str], str]:
    if hasattr(obj, "assets") and hasattr(obj, "id"):  # pystac.Item
        return set(obj.assets), str(obj.id)
    if isinstance(obj, Mapping) and "assets" in obj:
        return set(obj["assets"]), str(obj.get("id", "?"))
    return set(obj), "?"


def _properties(item: Any) -> Mapping[str, Any]:
    if hasattr(item, "properties"):
        return item.properties
    return item.get("properties", {})


_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})_")


def processing_baseline(item: Any) -> tuple[int, int] | None:
    """The item's processing baseline as (major, minor), or None when unknown.

    Read from ``s2:processing_baseline`` (Earth Search v1, Planetary Computer) or parsed from the
    product name (``..._N0214_...`` in ``s2:product_uri`` / ``sentinel:product_id``, Earth Search v0).
    """
    props = _properties(item)
    value = props.get("s2:processing_baseline") or props.get("processing:version")
    if value:
        m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(value))
        if m:
            return int(m.group(1)), int(m.group(2))
    for key in ("s2:product_uri", "sentinel:product_id", "s2:product_id", "s2:datatake_id"):
        m = _BASELINE_IN_NAME.search(str(props.get(key, "")) + "_")
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


@dataclass(frozen=True)
class Harmonisation:
    """How one item's DN become reflectance: ``reflectance = DN * scale + offset``."""

    scale: float
    """Multiplier applied to the DN (1e-4 for L2A)."""
    offset: float
    """Additive offset in reflectance units (-0.1 where the DN still carry BOA_ADD_OFFSET)."""
    reason: str
    """Why, for logs and provenance."""


def reflectance_scale_offset(item: Any) -> Harmonisation:
    """Per-item reflectance scale/offset, harmonised across the baseline 04.00 change.

    ``earthsearch:boa_offset_applied: true`` wins over everything (the catalogue removed the offset
    from the DN, whatever ``raster:bands`` declares). Otherwise items with baseline >= 04.00 get
    ``-1000 DN``; older items and items without a known baseline get none. Items without a known
    baseline but acquired after the change (2022-01-25) are assumed to carry the offset, as the
    ESA products do.
    """
    props = _properties(item)
    scale = 1.0 / QUANTIFICATION
    if bool(props.get("earthsearch:boa_offset_applied", False)):
        return Harmonisation(scale, 0.0, "earthsearch:boa_offset_applied")
    baseline = processing_baseline(item)
    if baseline is None:
        when = str(props.get("datetime") or props.get("start_datetime") or "")
        if when[:10] >= "2022-01-25":
            return Harmonisation(
                scale, BOA_ADD_OFFSET / QUANTIFICATION, "no baseline, acquired after 2022-01-25"
            )
        return Harmonisation(scale, 0.0, "no baseline, acquired before 2022-01-25")
    if baseline >= OFFSET_BASELINE:
        return Harmonisation(
            scale, BOA_ADD_OFFSET / QUANTIFICATION, f"baseline {baseline[0]:02d}.{baseline[1]:02d}"
        )
    return Harmonisation(scale, 0.0, f"baseline {baseline[0]:02d}.{baseline[1]:02d}")
