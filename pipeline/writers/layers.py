"""The map's layers, one row each: what the Zarr store, the COGs, the STAC item and the output
folder know about a layer.

Every writer reads this table instead of keeping its own lists of names, dtypes and nodata
values: :mod:`pipeline.writers.zarr_map` creates and fills one array per row,
:mod:`pipeline.writers.cog` writes and mosaics the rows with a ``cog`` product,
:mod:`pipeline.writers.products` describes those as STAC assets, and :mod:`pipeline.run.workspace`
lists the published files. A new per-pixel layer is one row here, a field of
:class:`~pipeline.writers.tile_result.TileResult` of the same name, and the code that computes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.writers.tile_result import CLASS_NODATA

__all__ = [
    "LAYER_SPECS",
    "LAYERS",
    "LayerSpec",
    "cog_layers",
    "layer",
    "layer_of_product",
    "product_files",
]


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the map: its array, and the product published from it (if any).

    Attributes:
        name: Zarr array name, :class:`TileResult` field and per-tile GeoTIFF stem.
        dims: Zarr dimension names; the last two are always ``("y", "x")``.
        dtype: numpy dtype of the array (and of the COG unless ``cog_dtype`` says otherwise).
        nodata: the value that means "no data" (NaN for floats); None when there is none.
        fill: the Zarr ``fill_value``. Class layers have none (xarray would decode them to
            float; their nodata chunks are written instead) and counts have none (0 is a count).
        long_name: Zarr ``long_name`` (CF).
        group: when the layer exists: ``map`` (every run), ``composite`` (with composite bands),
            ``embeddings`` / ``field`` (``--save-embeddings``, float16 or the compact field),
            ``ood`` (``--ood``), ``postprocess`` (``--majority`` or ``--mmu``), or ``tile``
            (only in per-tile GeoTIFFs, mosaicked when the tiles wrote it).
        kind: how values are shown: ``classes`` (class indices: CF flags, colour table, STAC
            classification), ``rgb`` (three true-colour bands) or ``values``.
        units: Zarr ``units`` attribute.
        attrs: further Zarr attributes.
        lead_chunks: Zarr chunk sizes of the leading dims (None: the whole dim).
        cog: stem of the published COG, or None when the layer lives only in the store.
        cog_dtype: the COG's dtype when it differs from ``dtype``.
        description: band 1 description in the COG.
        resampling: GDAL overview resampling of the COG (None: no overviews).
        title: STAC asset title (None: the asset's name).
        roles: STAC asset roles.
        stac_unit: ``unit`` of the asset's ``raster:bands``.
    """

    name: str
    dims: tuple[str, ...]
    dtype: str
    nodata: float | None
    fill: float | None
    long_name: str
    group: Literal["map", "composite", "embeddings", "field", "ood", "postprocess", "tile"] = "map"
    kind: Literal["classes", "rgb", "values"] = "values"
    units: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)
    lead_chunks: tuple[int | None, ...] | None = None
    cog: str | None = None
    cog_dtype: str | None = None
    description: str = ""
    resampling: str | None = None
    title: str | None = None
    roles: tuple[str, ...] = ("data",)
    stac_unit: str | None = None

    @property
    def file_dtype(self) -> str:
        """The COG's dtype."""
        return self.cog_dtype or self.dtype

    @property
    def zarr_attrs(self) -> dict[str, Any]:
        """The layer's own Zarr attributes (class layers add their flags, see zarr_map)."""
        units = {"units": self.units} if self.units is not None else {}
        return {"long_name": self.long_name, **units, **self.attrs}


_NAN = math.nan

#: Every layer, in the order the store lists them.
LAYER_SPECS: tuple[LayerSpec, ...] = (
    LayerSpec(
        "classes", ("y", "x"), "uint8", CLASS_NODATA, None, "land-cover class",
        kind="classes", cog="classes", description="land-cover class", resampling="NEAREST",
        title="Land-cover classes",
    ),
    LayerSpec(
        "confidence", ("y", "x"), "float32", _NAN, _NAN, "probability of the predicted class",
        units="1", attrs={"valid_min": 0.0, "valid_max": 1.0},
        cog="confidence", description="probability of the class", resampling="AVERAGE",
        title="Probability of the predicted class", stac_unit="1",
    ),
    LayerSpec(
        "topk_classes", ("k", "y", "x"), "uint8", CLASS_NODATA, None,
        "classes by decreasing probability", kind="classes",
    ),
    LayerSpec(
        "topk_probs", ("k", "y", "x"), "float32", _NAN, _NAN, "probabilities of topk_classes",
        units="1",
    ),
    LayerSpec(
        "valid_obs", ("period", "y", "x"), "uint16", 0, None,
        "number of valid (cloud-free) observations", units="1",
        cog="valid_obs", description="total", resampling="AVERAGE",
        title="Valid observations (band 1: total; 2..: per period)", roles=("data", "metadata"),
    ),
    LayerSpec(
        "composite", ("period", "band", "y", "x"), "float32", _NAN, _NAN,
        "surface reflectance composite", group="composite", units="1", lead_chunks=(1, None),
    ),
    LayerSpec(
        "embeddings", ("time", "embedding", "y", "x"), "float16", _NAN, _NAN, "per-pixel embedding",
        group="embeddings",
    ),
    LayerSpec(
        "field_codes", ("time", "embedding", "y", "x"), "int8", None, 0,
        "compact embedding field: int8 codes", group="field", cog="field",
    ),
    LayerSpec(
        "field_scale", ("time", "y", "x"), "float16", _NAN, _NAN,
        "compact embedding field: per-pixel scale of the codes", group="field",
        cog="field_scale", cog_dtype="float32",
    ),
    LayerSpec(
        "rgb", ("band", "y", "x"), "uint8", 0, None, "true-colour composite", group="tile",
        kind="rgb", cog="composite_rgb", resampling="AVERAGE",
        title="True-colour composite (B4, B3, B2, median)", roles=("visual",),
    ),
    LayerSpec(
        "margin", ("y", "x"), "float32", _NAN, _NAN,
        "top-1 minus top-2 class probability", units="1",
        attrs={"valid_min": 0.0, "valid_max": 1.0},
        cog="margin", description="top-1 minus top-2 probability", resampling="AVERAGE",
        title="Margin: top-1 minus top-2 class probability (low = confused)", stac_unit="1",
    ),
    LayerSpec(
        "entropy", ("y", "x"), "float32", _NAN, _NAN,
        "Shannon entropy of the class probabilities over ln(number of classes)", units="1",
        attrs={"valid_min": 0.0, "valid_max": 1.0},
        cog="entropy", description="normalised entropy (0 certain, 1 uniform)",
        resampling="AVERAGE", title="Normalised entropy of the class probabilities (0-1)",
        stac_unit="1",
    ),
    LayerSpec(
        "ood", ("y", "x"), "float32", _NAN, _NAN,
        "out-of-distribution score: k-NN distance to the reference sample over its threshold "
        "(> 1: flagged)", group="ood", units="1",
        cog="ood", description="k-NN distance / threshold (> 1: out of distribution)",
        resampling="AVERAGE", title="Out-of-distribution score (> 1: unlike the reference sample)",
        stac_unit="1",
    ),
    LayerSpec(
        "classes_raw", ("y", "x"), "uint8", CLASS_NODATA, None,
        "land-cover class before post-processing", group="postprocess", kind="classes",
        cog="classes_raw", description="land-cover class before post-processing",
        resampling="NEAREST", title="Land-cover classes before post-processing",
    ),
    LayerSpec(
        "postprocessed", ("y", "x"), "uint8", CLASS_NODATA, CLASS_NODATA,
        "1 where post-processing changed the class, 0 where not", group="postprocess",
        attrs={"flag_values": [0, 1, CLASS_NODATA], "flag_meanings": "unchanged changed nodata"},
        cog="postprocessed", description="1: class changed by post-processing",
        resampling="NEAREST", title="Post-processing flag (1: class changed)",
    ),
)  # fmt: skip

_BY_NAME = {s.name: s for s in LAYER_SPECS}


def layer(name: str) -> LayerSpec:
    """The spec of the layer called ``name`` (KeyError if there is none)."""
    return _BY_NAME[name]


def layer_of_product(product: str) -> LayerSpec | None:
    """The layer published as the COG ``<product>.tif`` (e.g. ``composite_rgb``), or None."""
    return next((s for s in LAYER_SPECS if s.cog == product), None)


def cog_layers(*groups: str) -> tuple[LayerSpec, ...]:
    """The layers of ``groups`` that are published as COGs, in table order."""
    return tuple(s for s in LAYER_SPECS if s.cog is not None and s.group in groups)


def product_files(*groups: str, suffix: str = ".tif") -> tuple[str, ...]:
    """File names of the COG products of ``groups`` (``classes.tif``, ...)."""
    return tuple(f"{s.cog}{suffix}" for s in cog_layers(*groups))


#: The layers every run publishes as COGs (and gridded runs as VRTs over the cells' COGs).
LAYERS: tuple[str, ...] = tuple(s.name for s in cog_layers("map"))
