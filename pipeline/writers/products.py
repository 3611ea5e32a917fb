"""Small products next to the map: legend.json, quicklook.png and the STAC item (item.json).

All are written through :func:`~pipeline.base.atomic.atomic_path`.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.atomic import atomic_path
from pipeline.base.colours import parse_color, to_hex
from pipeline.base.jsonio import to_json_safe, write_json
from pipeline.grid.tiling import TileGrid
from pipeline.writers.layers import layer_of_product
from pipeline.writers.tile_result import CLASS_NODATA

__all__ = [
    "write_json",
    "write_legend_json",
    "quicklook_window",
    "write_quicklook",
    "write_rgb_quicklook",
    "write_stac_item",
]

QUICKLOOK_MAX_PX = 1200
_NODATA_RGBA = (1.0, 1.0, 1.0, 1.0)


def write_legend_json(
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str],
    colors: Sequence[Any],
    legend_name: str,
    style: str | None,
    prompt_hash: str | None,
    untrained: bool,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """The legend: class value -> name and colour, the nodata value, and how it was made."""
    if len(colors) < len(class_names):
        raise ValueError(f"{len(class_names)} classes but {len(colors)} colours")
    doc: dict[str, Any] = {
        "legend": legend_name,
        "style": style,
        "prompt_hash": prompt_hash,
        "untrained": bool(untrained),
        "nodata": CLASS_NODATA,
        "classes": [
            {"value": i, "name": str(n), "color": to_hex(c)}
            for i, (n, c) in enumerate(zip(class_names, colors, strict=False))
        ],
    }
    if untrained and style == "few-shot head":
        # The few-shot demo: random-weight embeddings, but a head fitted on labelled points of
        # this scene; its classes are land cover as far as its accuracy report says.
        doc["warning"] = (
            "UNTRAINED ENCODER (demo): classes from a few-shot head fitted on labelled points "
            "of this scene; see its accuracy report"
        )
    elif untrained:
        doc["warning"] = "UNTRAINED WEIGHTS (demo): the classes are not land cover"
    for key, value in (extra or {}).items():
        doc.setdefault(key, value)
    return write_json(path, doc)


def write_quicklook(
    path: str | os.PathLike[str],
    classes_tif: str | os.PathLike[str],
    class_names: Sequence[str],
    colors: Sequence[Any],
    title: str,
    max_px: int = QUICKLOOK_MAX_PX,
    bounds: tuple[float, float, float, float] | None = None,
) -> Path:
    """A PNG of the class map with a legend (class shares of the mapped area) and ``title``.

    Large maps are read from the COG's overviews (nearest), so this never loads the full map.
    ``bounds`` (left, bottom, right, top in the raster's CRS) shows only that part, snapped out
    to whole pixels (:func:`quicklook_window`): a gridded map's VRT spans whole 100 km cells, the
    quicklook only the region.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.patches import Patch
    from rasterio.coords import BoundingBox
    from rasterio.enums import Resampling
    from rasterio.windows import bounds as window_bounds

    path = Path(path)
    with rasterio.open(classes_tif) as src:
        win = quicklook_window(src.transform, src.height, src.width, bounds)
        scale = max(1.0, max(win.height, win.width) / max_px)
        shape = (max(1, round(win.height / scale)), max(1, round(win.width / scale)))
        data = src.read(1, window=win, out_shape=shape, resampling=Resampling.nearest)
        b = BoundingBox(*window_bounds(win, src.transform))
        crs = src.crs

    lut = np.tile(np.array(_NODATA_RGBA, dtype=np.float32), (256, 1))
    for i, c in enumerate(colors[: len(class_names)]):
        lut[i, :3] = np.array(parse_color(c), dtype=np.float32) / 255
    rgba = lut[data]

    n_valid = int((data != CLASS_NODATA).sum())
    counts = np.bincount(data.ravel(), minlength=256)
    handles = []
    for i, name in enumerate(class_names):
        share = f" ({100 * counts[i] / n_valid:.1f}%)" if n_valid else ""
        handles.append(Patch(facecolor=lut[i, :3], edgecolor="0.3", label=f"{i}: {name}{share}"))
    if counts[CLASS_NODATA]:
        handles.append(Patch(facecolor=_NODATA_RGBA[:3], edgecolor="0.3", label="no data"))

    aspect = shape[1] / shape[0]
    fig_h = 7.0
    fig_w = min(18.0, max(6.0, fig_h * aspect)) + 3.5
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=110)
    try:
        ax.imshow(rgba, extent=(b.left, b.right, b.bottom, b.top), interpolation="nearest")
        units = crs.linear_units if crs is not None and crs.is_projected else "deg"
        ax.set_xlabel(f"x ({units})")
        ax.set_ylabel(f"y ({units})")
        ax.ticklabel_format(style="plain", useOffset=False)
        ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=10)
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=8,
            frameon=False,
            title=str(crs) if crs else None,
            title_fontsize=8,
        )
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.2)
    finally:
        plt.close(fig)
    return path


def quicklook_window(transform: Any, height: int, width: int, bounds: Any = None) -> Any:
    """The rasterio ``Window`` of a north-up raster covering ``bounds`` (left, bottom, right,
    top in its CRS), snapped out to whole pixels and clipped to the raster; the whole raster when
    ``bounds`` is None or does not overlap it."""
    from rasterio.windows import Window

    full = Window(0, 0, width, height)
    if bounds is None:
        return full
    left, bottom, right, top = bounds
    inv = ~transform
    c0, r0 = inv * (left, top)
    c1, r1 = inv * (right, bottom)
    col0, row0 = max(0, math.floor(min(c0, c1))), max(0, math.floor(min(r0, r1)))
    col1, row1 = min(width, math.ceil(max(c0, c1))), min(height, math.ceil(max(r0, r1)))
    if col1 <= col0 or row1 <= row0:
        return full
    return Window(col0, row0, col1 - col0, row1 - row0)


def write_rgb_quicklook(
    path: str | os.PathLike[str], rgb_tif: str | os.PathLike[str], max_px: int = QUICKLOOK_MAX_PX
) -> Path:
    """A PNG of a 3-band uint8 composite COG (nodata 0 -> transparent), at most ``max_px`` on its
    long side, read from the COG's overviews (never the full raster)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import rasterio
    from rasterio.enums import Resampling

    path = Path(path)
    with rasterio.open(rgb_tif) as src:
        scale = max(1.0, max(src.height, src.width) / max_px)
        shape = (3, max(1, round(src.height / scale)), max(1, round(src.width / scale)))
        data = src.read((1, 2, 3), out_shape=shape, resampling=Resampling.average)
    alpha = np.where((data == 0).all(axis=0), 0, 255).astype(np.uint8)
    rgba = np.concatenate([data, alpha[None]], axis=0).transpose(1, 2, 0)
    with atomic_path(path) as tmp:
        plt.imsave(tmp, np.ascontiguousarray(rgba), format="png")
    return path


def _utc(d: dt.date | dt.datetime | str, end: bool) -> dt.datetime:
    if isinstance(d, str):
        d = dt.date.fromisoformat(d[:10]) if len(d) <= 10 else dt.datetime.fromisoformat(d)
    if isinstance(d, dt.datetime):
        return d if d.tzinfo else d.replace(tzinfo=dt.UTC)
    t = dt.time(23, 59, 59) if end else dt.time(0, 0, 0)
    return dt.datetime.combine(d, t, tzinfo=dt.UTC)


#: Assets that are not layers (those are described by their LayerSpec): name -> (title, roles).
_ASSET_META: dict[str, tuple[str, list[str]]] = {
    "zarr": ("Map store (classes, confidence, top-k, valid observations)", ["data"]),
    "legend": ("Legend", ["metadata"]),
    "quicklook": ("Quicklook", ["overview", "visual"]),
    "composite_quicklook": ("True-colour composite, quicklook", ["overview"]),
    "run": ("Run provenance", ["metadata"]),
    "model_card": ("Model card of the embedding field", ["metadata"]),
    "embeddings": (
        "Embedding field: the store's field_codes (time, embedding, y, x) int8 and field_scale "
        "(time, y, x); the decoding recipe in its s2lc:field attribute and the model card",
        ["data"],
    ),
}


def _asset_meta(name: str) -> tuple[str, list[str]]:
    """(title, roles) of the asset called ``name``: a layer's COG product or another file."""
    spec = layer_of_product(name)
    if spec is not None:
        return (spec.title or name, list(spec.roles))
    return _ASSET_META.get(name, (name, ["data"]))


def _raster_bands(name: str) -> list[Any] | None:
    """``raster:bands`` of a layer's COG asset (one per band of an RGB); None for other assets
    and for the embedding field (its COGs document themselves, see pipeline.writers.field)."""
    from pystac.extensions.raster import DataType, RasterBand

    spec = layer_of_product(name)
    if spec is None or spec.group == "field":
        return None
    nodata = spec.nodata
    band = RasterBand.create(
        nodata="nan" if nodata is not None and math.isnan(nodata) else nodata,
        data_type=DataType(spec.file_dtype),
        unit=spec.stac_unit,
    )
    return [band] * (3 if spec.kind == "rgb" else 1)


def _media_type(p: Path) -> str:
    import pystac

    suffix = p.suffix.lower()
    return {
        ".tif": pystac.MediaType.COG,
        ".tiff": pystac.MediaType.COG,
        ".zarr": "application/vnd+zarr",
        ".json": pystac.MediaType.JSON,
        ".png": pystac.MediaType.PNG,
    }.get(suffix, "application/octet-stream")


def write_stac_item(
    path: str | os.PathLike[str],
    *,
    grid: TileGrid,
    geometry_4326: Any,
    start: dt.date | dt.datetime | str,
    end: dt.date | dt.datetime | str,
    assets: Mapping[str, str | os.PathLike[str]],
    class_names: Sequence[str],
    colors: Sequence[Any],
    properties: Mapping[str, Any] | None = None,
    item_id: str | None = None,
    extensions: Sequence[str] = (),
) -> Path:
    """A STAC item for the outputs, with the projection and classification extensions.

    ``extensions``: further schema URLs the ``properties`` follow (e.g. the embeddings
    extension of a map with an embedding field).

    Asset hrefs are relative to the item's folder when the files are inside it. The classes
    asset (and the Zarr store) carry ``classification:classes``; COG assets ``raster:bands``.
    """
    import pystac
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension
    from shapely.geometry import mapping

    path = Path(path)
    a = grid.geobox.affine
    w, s, e, n = (float(v) for v in geometry_4326.bounds)
    props = {"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    props.update(to_json_safe(dict(properties or {})))
    item = pystac.Item(
        id=item_id or path.parent.name or "map",
        geometry=mapping(geometry_4326),
        bbox=[w, s, e, n],
        datetime=None,
        start_datetime=_utc(start, end=False),
        end_datetime=_utc(end, end=True),
        properties=props,
    )
    for url in extensions:
        if url not in item.stac_extensions:
            item.stac_extensions.append(url)
    crs = grid.geobox.crs
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    x0, y0, x1, y1 = grid.geobox.boundingbox
    proj.apply(
        code=f"EPSG:{crs.epsg}" if crs.epsg is not None else None,
        wkt2=None if crs.epsg is not None else crs.to_wkt(),
        shape=[int(v) for v in grid.shape],
        transform=[a.a, a.b, a.c, a.d, a.e, a.f],
        bbox=[x0, y0, x1, y1],
    )

    classes = [
        Classification.create(
            value=i,
            name=_slug(name, i),
            title=str(name),
            color_hint=to_hex(c).lstrip("#").upper(),
        )
        for i, (name, c) in enumerate(zip(class_names, colors, strict=False))
    ]
    classes.append(
        Classification.create(value=CLASS_NODATA, name="nodata", title="no data", nodata=True)
    )

    for name, p in assets.items():
        p = Path(p)
        try:
            href = "./" + os.path.relpath(p.resolve(), path.parent.resolve()).replace(os.sep, "/")
            if href.startswith("./.."):
                href = p.resolve().as_uri()
        except ValueError:  # another drive
            href = p.resolve().as_uri()
        title, roles = _asset_meta(name)
        asset = pystac.Asset(href=href, title=title, roles=roles, media_type=_media_type(p))
        item.add_asset(name, asset)
        spec = layer_of_product(name)
        if name == "zarr" or (spec is not None and spec.kind == "classes"):
            ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=classes)
        bands = _raster_bands(name)
        if bands is not None:
            RasterExtension.ext(asset, add_if_missing=True).apply(bands=bands)
    return write_json(path, item.to_dict(include_self_link=False, transform_hrefs=False))


def _slug(name: str, i: int) -> str:
    """A classification ``name`` (letters, digits, ``-``, ``_`` only)."""
    s = "".join(
        c if (c.isascii() and c.isalnum()) or c in "-_" else "_"
        for c in "_".join(str(name).split())
    )
    return s.strip("_") or f"class_{i}"
