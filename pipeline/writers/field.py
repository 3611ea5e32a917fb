"""The compact embedding field in a map: its decoding recipe in the Zarr store, and its COGs.

The field's arrays live in the map store (``field_codes``, ``field_scale``, ``field_mean``,
``field_basis``; :mod:`pipeline.writers.zarr_map`), written tile by tile like every other layer.
The driver writes the recipe (mean and basis) once, before any tile, with :func:`write_codec`.
After the tiles, :func:`build_field_cogs` streams the two per-pixel arrays into COGs on the same
grid through GDAL's Zarr driver (block by block, bounded memory):

* ``field.tif``: Int8, one band per component (``d`` bands), no nodata value (use the scale);
* ``field_scale.tif``: Float32, nodata NaN.

Decoding a pixel: ``normalise(field_mean + field_basis @ (codes * scale))``
(:class:`pipeline.writers.codec.FieldCodec`); the same recipe is in the store's ``s2lc:field``
attribute and in the COGs' metadata (``S2LC_FIELD``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.atomic import atomic_path, remove_path
from pipeline.writers.layers import cog_layers, layer

__all__ = [
    "FIELD_COGS",
    "basis_sha256",
    "build_field_cogs",
    "field_basis_hash",
    "read_codec",
    "write_codec",
]

#: COG file -> Zarr array it is made from (the ``field`` layers of pipeline.writers.layers).
#: Group attribute of the map store that holds the field's metadata.
FIELD_ATTR = "s2lc:field"
FIELD_COGS = {f"{s.cog}.tif": s.name for s in cog_layers("field")}
_BLOCK = 256
_CACHE_MB = 256


def write_codec(store: str | os.PathLike[str], codec: Any) -> None:
    """Write the codec's mean and basis into the store's ``field_mean`` / ``field_basis``."""
    import zarr

    g = zarr.open_group(str(store), mode="r+")
    g["field_mean"][...] = codec.mean
    g["field_basis"][...] = codec.basis


def basis_sha256(codec: Any) -> str:
    """SHA-256 of a field's decoding recipe: its float32 mean then basis (C order) bytes. Fields
    with the same digest are in the same space (``s2lc:field_basis_sha256`` of the STAC item)."""
    return codec.sha256


def read_codec(store: str | os.PathLike[str]) -> Any | None:
    """The store's :class:`~pipeline.writers.codec.FieldCodec`, or None if not written yet."""
    import zarr

    from pipeline.writers.codec import FieldCodec

    g = zarr.open_group(str(store), mode="r")  # Zarr v3, or v2 of older s2lc
    if "field_basis" not in g:
        return None
    mean, basis = np.asarray(g["field_mean"][...]), np.asarray(g["field_basis"][...])
    if not (np.isfinite(mean).all() and np.isfinite(basis).all()):
        return None
    return FieldCodec(mean, basis)


def field_basis_hash(meta: Mapping[str, Any], codec: Any) -> str:
    """The hash that says which space a field is in: equal hashes, the same basis.

    A field made since one basis per model (issue 28) names its model's basis in its metadata
    (``s2lc:field`` ``basis_hash``, :mod:`pipeline.run.basis`). An older field had a basis fitted
    on its own run's pixels: it gets ``"run-"`` + the SHA-256 of its mean and basis, which no
    other run shares (it still opens and decodes; it cannot be combined with other fields).
    """
    digest = meta.get("basis_hash")
    return str(digest) if digest else f"run-{codec.sha256}"


def build_field_cogs(
    store: str | os.PathLike[str], out_dir: str | os.PathLike[str], recipe: Mapping[str, Any]
) -> dict[str, Path]:
    """Stream the store's field arrays into ``field.tif`` and ``field_scale.tif`` in ``out_dir``.

    :param recipe: the field metadata (model identity, encoding), written into each COG as the
        ``S2LC_FIELD`` tag (JSON).
    :returns: ``{"field": out_dir/field.tif, "field_scale": out_dir/field_scale.tif}``.
    """
    import rasterio
    import rasterio.shutil

    store, out_dir = Path(store).resolve(), Path(out_dir)
    out: dict[str, Path] = {}
    for fname, array in FIELD_COGS.items():
        final = out_dir / fname
        src = f'ZARR:"{store}":/{array}'
        with atomic_path(final) as tmp:
            vrt = tmp.with_name(tmp.name + ".vrt")
            try:
                env: dict[str, Any] = {"GDAL_PAM_ENABLED": "NO"}
                if "GDAL_CACHEMAX" not in os.environ:
                    env["GDAL_CACHEMAX"] = _CACHE_MB
                with rasterio.Env(**env):
                    # A VRT in between sets the output type (float16 scale -> Float32) and tags.
                    rasterio.shutil.copy(src, str(vrt), driver="VRT")
                    if layer(array).file_dtype == "float32":
                        # GDAL >= 3.11 keeps Zarr float16 as Float16 (older GDAL promoted it);
                        # the COG is Float32 (the floating-point predictor needs it).
                        text = vrt.read_text()
                        vrt.write_text(text.replace('dataType="Float16"', 'dataType="Float32"'))
                    with rasterio.open(str(vrt), "r+") as ds:
                        ds.update_tags(S2LC_FIELD=json.dumps(dict(recipe)), S2LC_ARRAY=array)
                    opts = {
                        "compress": "zstd",
                        "blocksize": _BLOCK,
                        "overviews": "none",
                        "bigtiff": "if_safer",
                        "num_threads": "all_cpus",
                    }
                    if layer(array).file_dtype == "float32":
                        opts["predictor"] = "yes"
                    rasterio.shutil.copy(str(vrt), str(tmp), driver="COG", **opts)
            finally:
                remove_path(vrt)
        out[fname.removesuffix(".tif")] = final
    return out
