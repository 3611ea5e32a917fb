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
:func:`reflectance_scale_offset` decides from every signal a provider gives, in this order:

1. an explicit provider flag: ``earthsearch:boa_offset_applied`` (Earth Search v1) or
   ``sentinel:boa_offset_applied`` (Earth Search v0); ``true`` means the DN are offset-free;
2. without such a flag, the ``raster:bands`` ``scale``/``offset`` the band assets declare
   (Earth Search ``sentinel-2-c1-l2a``, Copernicus Data Space);
3. the processing baseline (``s2:processing_baseline``, ``processing:version`` or the ``_Nxxyy_``
   of the product name);
4. the acquisition date (on or after 2022-01-25: baseline 04.00 or newer).

Metadata can be wrong, so :func:`offset_contradiction` checks decoded DN for plausibility against
the offset applied (see :mod:`pipeline.reading.cube`, which records contradictions per scene).

Asset layouts (:func:`asset_keys`) are recognised per provider scheme (:data:`LAYOUTS`); the CRS
is read from ``proj:epsg`` or ``proj:code``, on the item or on its assets (:func:`item_crs`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.base.errors import UserError

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

LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    # Earth Search v1 (sentinel-2-l2a and sentinel-2-c1-l2a): common names. Its "<name>-jp2"
    # duplicates are never used.
    "earth-search-v1": {
        "B2": ("blue",), "B3": ("green",), "B4": ("red",), "B5": ("rededge1",),
        "B6": ("rededge2",), "B7": ("rededge3",), "B8": ("nir",), "B8A": ("nir08",),
        "B11": ("swir16",), "B12": ("swir22",), SCL: ("scl",),
    },
    # Earth Search v0 (sentinel-s2-l2a-cogs) and Planetary Computer: band ids.
    "band-ids": {
        "B2": ("B02", "B2"), "B3": ("B03", "B3"), "B4": ("B04", "B4"), "B5": ("B05", "B5"),
        "B6": ("B06", "B6"), "B7": ("B07", "B7"), "B8": ("B08", "B8"), "B8A": ("B8A", "B08A"),
        "B11": ("B11",), "B12": ("B12",), SCL: ("SCL",),
    },
    # Copernicus Data Space Ecosystem STAC: band id and resolution, native resolution first.
    "cdse": {
        "B2": ("B02_10m", "B02_20m", "B02_60m"), "B3": ("B03_10m", "B03_20m", "B03_60m"),
        "B4": ("B04_10m", "B04_20m", "B04_60m"), "B5": ("B05_20m", "B05_60m"),
        "B6": ("B06_20m", "B06_60m"), "B7": ("B07_20m", "B07_60m"), "B8": ("B08_10m",),
        "B8A": ("B8A_20m", "B8A_60m"), "B11": ("B11_20m", "B11_60m"),
        "B12": ("B12_20m", "B12_60m"), SCL: ("SCL_20m", "SCL_60m"),
    },
}  # fmt: skip
"""Asset keys of each provider scheme per canonical band (and SCL), preferred key first."""

# Provider asset keys per canonical band over all schemes, most specific first.
ASSET_KEYS: dict[str, tuple[str, ...]] = {
    b: tuple(k for keys in LAYOUTS.values() for k in keys[b]) for b in (*BANDS, SCL)
}

EARTH_SEARCH_V1_KEYS: dict[str, str] = {b: k[0] for b, k in LAYOUTS["earth-search-v1"].items()}
"""Canonical band -> Earth Search v1 asset key."""

PC_KEYS: dict[str, str] = {b: k[0] for b, k in LAYOUTS["band-ids"].items()}
"""Canonical band -> Planetary Computer / Earth Search v0 asset key."""

CDSE_KEYS: dict[str, str] = {b: k[0] for b, k in LAYOUTS["cdse"].items()}
"""Canonical band -> Copernicus Data Space Ecosystem asset key."""


class UnknownAssetLayout(UserError):
    """An item whose asset keys follow none of the known provider schemes (:data:`LAYOUTS`)."""


class MissingBand(UserError):
    """An item of a known layout that lacks a band (or SCL) the pipeline needs."""


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
    """The SCL classes of the ``clouds`` preset, snow/ice optionally (see :data:`SCL_PRESETS`)."""
    return (*SCL_INVALID, SCL_SNOW) if mask_snow else SCL_INVALID


SCL_DARK = 2
SCL_PRESETS: dict[str, tuple[int, ...]] = {
    "default": (0, 1, 2, 3, 8, 9, 10, 11),
    "clouds": (*SCL_INVALID, SCL_SNOW),
    "none": (0,),
}
"""Named SCL masks (``--scl-mask``): the classes whose observations become NaN.

* ``default``: no data, saturated/defective, dark area pixels (2), cloud shadow, medium and high
  cloud probability, thin cirrus and snow/ice. Class 2 is "dark area pixels" in processing
  baselines before 04.00 and topographic/cast shadow from 04.00 (ESA, Sen2Cor 2.10+ SCL
  definitions, S2 L2A Product Specification). On the real Flanders series (``S2LC_REAL_DATA``)
  class-2 observations read about 24 % darker than the same pixel's other clear observations of
  the month and lowered the monthly median in 4.5 % of pixel-months, mostly in winter: kept as
  clear, they bias the composite toward shadow.
* ``clouds``: the mask of s2lc before issue 25, and what odc-stats' Sentinel-2 geomedian masks
  (no data, saturated/defective and its ``cloud_classes``: shadow, medium/high cloud, cirrus),
  plus snow: class 2 counts as clear. For dark surfaces (burnt land, dark soils, lava) that
  Sen2Cor labels 2 even when clear.
* ``none``: only no data (0); every SCL class counts as an observation.
"""


def parse_scl_mask(spec: str) -> tuple[int, ...]:
    """The sorted SCL classes of an ``--scl-mask`` value: preset names and class numbers,
    comma-separated and combined (``default``, ``clouds,2``, ``0,1,3,8,9,10``). Class 0 (no
    data) is always masked.

    :raises UserError: an unknown name or a number outside 0..11.
    """
    classes = {0}
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        if part in SCL_PRESETS:
            classes.update(SCL_PRESETS[part])
        elif part.isdigit() and int(part) in SCL_NAMES:
            classes.add(int(part))
        else:
            raise UserError(
                f"--scl-mask: {part!r} is neither a preset ({', '.join(SCL_PRESETS)}) nor an SCL "
                "class number 0..11"
            )
    return tuple(sorted(classes))


def asset_layout(assets: Mapping[str, Any] | Any) -> str:
    """The provider scheme (a key of :data:`LAYOUTS`) whose keys the item uses most.

    Raises:
        UnknownAssetLayout: when no key of any scheme is present, naming the keys found.
    """
    keys, ident = _asset_keys_of(assets)
    best, hits = "", 0
    for name, scheme in LAYOUTS.items():
        n = sum(any(k in keys for k in ks) for ks in scheme.values())
        if n > hits:
            best, hits = name, n
    if not hits:
        raise UnknownAssetLayout(
            f"item {ident}: unknown asset layout, no Sentinel-2 band keys among "
            f"{', '.join(sorted(keys)) or 'no assets'} (known: Earth Search v1 'red', "
            "Earth Search v0 / Planetary Computer 'B04', Copernicus Data Space 'B04_10m')"
        )
    return best


def asset_keys(assets: Mapping[str, Any] | Any, *, with_scl: bool = True) -> dict[str, str]:
    """Map each canonical band (and SCL) to the asset key the provider uses.

    Args:
        assets: a ``pystac.Item``, an item dict, or a mapping of asset keys.
        with_scl: also map :data:`SCL`.

    Raises:
        UnknownAssetLayout: when the keys follow no known scheme, naming the keys found.
        MissingBand: when a band is missing, naming the item and the keys it has.
    """
    keys, ident = _asset_keys_of(assets)
    scheme = LAYOUTS[asset_layout(assets)]
    out: dict[str, str] = {}
    missing = []
    for band in (*BANDS, SCL) if with_scl else BANDS:
        found = next((k for k in (*scheme[band], *ASSET_KEYS[band]) if k in keys), None)
        if found is None:
            missing.append(band)
        else:
            out[band] = found
    if missing:
        raise MissingBand(
            f"item {ident}: no asset for band(s) {', '.join(missing)} "
            f"(it has {', '.join(sorted(keys))}); is this a Sentinel-2 L2A item?"
        )
    return out


def item_crs(item: Any) -> str | None:
    """The item's CRS as ``EPSG:nnnn`` (or the WKT/PROJJSON code given), or None.

    Read from ``proj:epsg`` or ``proj:code`` (projection extension v1 / v2) in the item
    properties, else from its assets (the first asset that has one).
    """
    props = _properties(item)
    assets = item.assets if hasattr(item, "assets") else item.get("assets", {})
    sources = [props] + [
        a.extra_fields if hasattr(a, "extra_fields") else a for a in assets.values()
    ]
    for src in sources:
        if src.get("proj:epsg") is not None:
            return f"EPSG:{int(src['proj:epsg'])}"
        if src.get("proj:code"):
            return str(src["proj:code"])
    return None


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

    Read from ``s2:processing_baseline`` (Earth Search v1, Planetary Computer),
    ``processing:version`` (Copernicus Data Space), ``sentinel:processing_baseline`` (Earth Search
    v0) or parsed from the
    product name (``..._N0214_...`` in ``s2:product_uri`` / ``sentinel:product_id``, Earth Search v0).
    """
    props = _properties(item)
    value = (
        props.get("s2:processing_baseline")
        or props.get("processing:version")
        or props.get("sentinel:processing_baseline")
    )
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


#: Provider flags saying whether BOA_ADD_OFFSET was already removed from the DN.
OFFSET_FLAGS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")


def declared_scale_offset(item: Any) -> tuple[float, float] | None:
    """The ``raster:bands`` (scale, offset) the reflectance band assets declare, or None.

    Only assets of the 10 bands count; None when none declares a scale or an offset, or when they
    disagree with each other (then the declaration is not a usable signal).
    """
    assets = item.assets if hasattr(item, "assets") else item.get("assets", {})
    try:
        keys = asset_keys(item, with_scl=False)
    except UserError:
        return None
    seen = set()
    for key in keys.values():
        a = assets[key]
        extra = a.extra_fields if hasattr(a, "extra_fields") else a
        rb = extra.get("raster:bands") or []
        if not rb or not isinstance(rb[0], Mapping):
            continue
        if "scale" in rb[0] or "offset" in rb[0]:
            seen.add((float(rb[0].get("scale", 1.0)), float(rb[0].get("offset", 0.0))))
    if len(seen) != 1:
        return None
    return seen.pop()


def reflectance_scale_offset(item: Any) -> Harmonisation:
    """Per-item reflectance scale/offset, harmonised across the baseline 04.00 change.

    Signals in order (see the module docstring): a provider flag
    (``earthsearch:boa_offset_applied`` / ``sentinel:boa_offset_applied``; ``true`` wins over
    everything, whatever ``raster:bands`` declares), else the ``raster:bands`` scale/offset of an
    item without such a flag, else the processing baseline (>= 04.00: ``-1000 DN``), else the
    acquisition date (on or after 2022-01-25: ``-1000 DN``, as the ESA products do).
    """
    props = _properties(item)
    scale = 1.0 / QUANTIFICATION
    offset = BOA_ADD_OFFSET / QUANTIFICATION
    flags = [f for f in OFFSET_FLAGS if props.get(f) is not None]
    for flag in flags:
        if _truthy(props[flag]):
            return Harmonisation(scale, 0.0, f"{flag}: true")
    baseline = processing_baseline(item)
    if not flags:
        declared = declared_scale_offset(item)
        if declared is not None:
            return Harmonisation(declared[0], declared[1], "raster:bands scale/offset")
    if baseline is None:
        when = str(props.get("datetime") or props.get("start_datetime") or "")
        if when[:10] >= "2022-01-25":
            return Harmonisation(scale, offset, "no baseline, acquired after 2022-01-25")
        return Harmonisation(scale, 0.0, "no baseline, acquired before 2022-01-25")
    name = f"baseline {baseline[0]:02d}.{baseline[1]:02d}"
    if flags:
        name += f", {flags[0]}: false"
    if baseline >= OFFSET_BASELINE:
        return Harmonisation(scale, offset, name)
    return Harmonisation(scale, 0.0, name)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


#: A contradiction needs at least this many clear pixels to be judged.
PLAUSIBILITY_MIN_PIXELS = 256
#: With the offset subtracted, more than this share of clear DN below -BOA_ADD_OFFSET (negative
#: reflectance) means the DN were already offset-free.
NEGATIVE_SHARE_LIMIT = 0.05
#: Without the offset, the darkest band of this quantile of clear pixels at or above
#: -BOA_ADD_OFFSET DN means the DN still carry the offset (dark targets read >= 0.1).
DARK_QUANTILE = 0.01


def offset_contradiction(dn: Any, offset: float, scale: float = 1.0 / QUANTIFICATION) -> str | None:
    """Whether decoded DN contradict the offset applied to them; a one-line reason or None.

    Args:
        dn: (band, n) DN of clear pixels (all bands non-zero, SCL not masked).
        offset: the offset applied, in reflectance units (0 or -0.1).
        scale: the scale applied (reflectance per DN).

    With the offset applied, L2A DN are at least ``-BOA_ADD_OFFSET`` (1000) but for a few
    pixels: a larger share below it gives negative reflectance. Without it, every scene has dark
    targets (water, shadowed vegetation in the visible, SWIR): when even the darkest band of the
    darkest 1 % of clear pixels reads >= 0.1, the DN most likely still carry the offset.
    Source: ESA, Sentinel-2 L2A product baseline 04.00 (BOA_ADD_OFFSET = -1000).
    """

    dn = np.asarray(dn, dtype=np.float64)
    if dn.ndim != 2 or dn.shape[1] < PLAUSIBILITY_MIN_PIXELS:
        return None
    shift = -offset / scale  # DN that decode to reflectance 0
    if shift > 0:
        share = float(np.mean(dn < shift))
        if share > NEGATIVE_SHARE_LIMIT:
            return (
                f"offset {offset:g} applied but {share:.0%} of clear DN are below {shift:.0f} "
                "(negative reflectance): the DN look offset-free"
            )
        return None
    dark = float(np.quantile(dn.min(axis=0), DARK_QUANTILE))
    if dark * scale + offset >= -BOA_ADD_OFFSET / QUANTIFICATION:
        return (
            f"no offset applied but the darkest clear pixels read {dark * scale + offset:.3f}: the DN "
            "look like they still carry BOA_ADD_OFFSET (+1000)"
        )
    return None
