"""The map store: a Zarr v3 group with one array per layer, chunked on the tile grid.

Layout (the arrays' ``dimension_names``; one row of :mod:`pipeline.writers.layers` per per-pixel
array; the embedding layers in the geoembeddings conventions' order ``(time, embedding, y, x)``)::

    classes       (y, x)                 uint8    255 = nodata (a CF flag value; xarray keeps uint8)
    confidence    (y, x)                 float32  NaN = nodata
    topk_classes  (k, y, x)              uint8    255 = nodata (as classes)
    topk_probs    (k, y, x)              float32  NaN = nodata
    valid_obs     (period, y, x)         uint16   0 = no valid observation (no fill value)
    composite     (period, band, y, x)   float32  NaN = nodata           (optional)
    embeddings    (time, embedding, y, x)  float16  NaN = nodata         (optional)
    field_codes   (time, embedding, y, x)  int8     the compact embedding field (optional, see
    field_scale   (time, y, x)             float16  NaN = nodata          pipeline.writers.codec)
    field_mean    (feature,)             float32  its decoding recipe: mean and
    field_basis   (feature, embedding)   float32  projection basis
    x, y, k, period, band, time, embedding, feature   coordinates (pixel centres for x/y)
    spatial_ref                          CF grid mapping (crs_wkt, spatial_ref, GeoTransform)

``time`` has one entry, the year of the map's first period (a map is one year); a composite
keeps its own ``period``. ``embedding`` is the stored embedding's dimension: the field's ``d``
components, or the model's ``D`` for float16 ``embeddings``; ``feature`` is the model's ``D``
when the field is projected.

Why Zarr **v3**, ZSTD, **not sharded**: GDAL 3.12.2 (rasterio 1.5.2) reads zarr-python 3's v3
stores with plain/bytes, ZSTD and Blosc-ZSTD codecs but refuses sharding ("Unsupported codec:
sharding_indexed"; GDAL >= 3.13 reads it), and the map must open in GDAL/QGIS as well as in
xarray, so chunks stay one object each. One store per CRS (a map is on one grid; a gridded run
keeps one store per cell grid). The CRS is stored twice so both understand it: the CF
``grid_mapping`` -> ``spatial_ref`` variable (xarray with ``decode_coords="all"``, rioxarray,
odc-geo) and GDAL's own ``_CRS`` attribute on every array; GDAL derives the geotransform from the
``x``/``y`` coordinate arrays. Read it back with ``xr.open_zarr(path, decode_coords="all")`` or
``rasterio.open('ZARR:"path":/classes')`` (GDAL >= 3.11 for Zarr v3; older GDAL refuses the
``bytes`` codec). Stores written before (Zarr v2) still open with :func:`open_map`, the field
API and the viewer; :func:`store_format` tells which.

Concurrency: every spatial chunk is ``tile_size`` square and the tile lattice starts at the
grid's first pixel (:mod:`pipeline.grid.tiling`), so each chunk belongs to exactly one tile and
concurrent :func:`write_tile` calls for different tiles never touch the same chunk file (and
zarr's local store writes each chunk file atomically). Metadata is written once, atomically, by
:func:`create_map_store`; tile writes never change it, so the consolidated metadata stays valid.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError
from pipeline.base.hashing import json_digest
from pipeline.base.jsonio import to_json_safe
from pipeline.grid.tiling import Tile, TileGrid
from pipeline.writers.layers import LAYER_SPECS, LayerSpec
from pipeline.writers.tile_result import CLASS_NODATA, TileResult

__all__ = [
    "ZARR_FORMAT",
    "create_map_store",
    "open_map",
    "read_layer",
    "read_store_attrs",
    "store_format",
    "write_layer",
    "write_tile",
]

_EMBED_CHUNK_BYTES = 64 * 2**20
_CRS_VAR = "spatial_ref"


#: The map store's Zarr format.
ZARR_FORMAT = 3


def _compressor() -> Any:
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=3)


def store_format(path: str | os.PathLike[str]) -> int:
    """The Zarr format of a map store: 3 (``zarr.json``) or 2 (``.zattrs``, older s2lc).

    Raises:
        UserError: no Zarr group at ``path``.
    """
    p = Path(path)
    if (p / "zarr.json").is_file():
        return 3
    if (p / ".zgroup").is_file() or (p / ".zattrs").is_file():
        return 2
    raise UserError(f"{p}: not a Zarr map store (no zarr.json or .zattrs)")


def read_store_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The store group's attributes (Zarr v3 ``zarr.json`` or v2 ``.zattrs``), without zarr.

    Raises:
        UserError: no Zarr group at ``path``.
    """
    p = Path(path)
    if store_format(p) == 3:
        return dict(json.loads((p / "zarr.json").read_text()).get("attributes") or {})
    f = p / ".zattrs"
    return json.loads(f.read_text()) if f.is_file() else {}


def _layout(
    grid: TileGrid,
    class_names: Sequence[str],
    k: int,
    period_labels: Sequence[str],
    band_names: Sequence[str] | None,
    embed_dim: int | None,
    field_dims: int | None = None,
    ood: bool = False,
    postprocess: bool = False,
) -> dict[str, Any]:
    a = grid.geobox.affine
    return {
        "crs": str(grid.geobox.crs),
        "transform": [a.a, a.b, a.c, a.d, a.e, a.f],
        "shape": list(grid.shape),
        "tile_size": grid.tile_size,
        "class_names": list(class_names),
        "k": k,
        "periods": list(period_labels),
        "bands": None if band_names is None else list(band_names),
        "embed_dim": embed_dim,
        **({"field_dims": field_dims} if field_dims is not None else {}),
        **({"ood": True} if ood else {}),
        **({"postprocess": True} if postprocess else {}),
    }


def _layout_hash(layout: Mapping[str, Any]) -> str:
    return json_digest(dict(layout))


def create_map_store(
    path: str | os.PathLike[str],
    grid: TileGrid,
    *,
    class_names: Sequence[str],
    k: int,
    period_labels: Sequence[str],
    band_names: Sequence[str] | None = None,
    embed_dim: int | None = None,
    field_dims: int | None = None,
    ood: bool = False,
    postprocess: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Create the (empty) map store at ``path``, or reopen it if it already matches.

    The store is built in a temporary sibling folder and renamed into place, so a crash never
    leaves a half-made store. If ``path`` exists with the same layout (grid, classes, k, periods,
    bands, embedding size) and the same ``attrs["config_hash"]``, it is kept as it is (resume);
    otherwise this is a :class:`UserError`. Unwritten chunks read as nodata.

    With ``field_dims`` (and ``embed_dim``), the embeddings are stored as the compact field
    (``field_*`` arrays, :mod:`pipeline.writers.codec`) instead of the float16 ``embeddings``.
    ``ood`` adds the ``ood`` layer, ``postprocess`` the ``classes_raw`` and ``postprocessed``
    layers (:mod:`pipeline.writers.layers`).
    """
    path = Path(path)
    attrs = dict(attrs or {})
    names = [str(n) for n in class_names]
    if not 1 <= len(names) <= 254:
        raise UserError(f"a map needs 1 to 254 classes (255 is nodata), got {len(names)}")
    if not 1 <= k <= len(names):
        raise UserError(f"top-k must be between 1 and the number of classes, got k={k}")
    if not period_labels:
        raise UserError("a map needs at least one composite period")
    if embed_dim is not None and embed_dim < 1:
        raise UserError(f"embed_dim must be positive, got {embed_dim}")
    if field_dims is not None and (embed_dim is None or not 1 <= field_dims <= embed_dim):
        raise UserError(
            f"field_dims must be between 1 and embed_dim ({embed_dim}), got {field_dims}"
        )
    layout = _layout(
        grid,
        names,
        k,
        [str(p) for p in period_labels],
        band_names,
        embed_dim,
        field_dims,
        ood,
        postprocess,
    )
    layout_hash = _layout_hash(layout)

    if path.exists():
        _check_existing(path, layout_hash, attrs.get("config_hash"))
        return path
    try:
        with atomic_path(path, replace=False) as tmp:
            _build_store(tmp, grid, layout, layout_hash, attrs)
    except FileExistsError:  # another process created it first: it must match too
        _check_existing(path, layout_hash, attrs.get("config_hash"))
    return path


def _check_existing(path: Path, layout_hash: str, config_hash: Any) -> None:
    try:
        fmt = store_format(path)
        found = _read_attrs(path)
    except Exception:  # not a zarr group, unreadable metadata
        raise UserError(
            f"{path} exists and is not a map store; remove it or use --overwrite"
        ) from None
    if fmt != ZARR_FORMAT:
        raise UserError(
            f"{path} holds a Zarr v{fmt} map store of an older s2lc; remove it or use --overwrite"
        )
    if found.get("s2lc:layout_hash") != layout_hash:
        raise UserError(
            f"{path} holds a map store with another grid or layers; remove it or use --overwrite"
        )
    if config_hash is not None and found.get("config_hash") != config_hash:
        raise UserError(
            f"{path} holds a map store made with other settings (config_hash "
            f"{found.get('config_hash')} != {config_hash}); remove it or use --overwrite"
        )


def _read_attrs(path: Path) -> dict[str, Any]:
    return read_store_attrs(path)


def _crs_attrs(grid: TileGrid) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spatial_ref variable attrs for CF/xarray, GDAL ``_CRS`` attribute value)."""
    from odc.geo.xr import xr_coords

    coords = xr_coords(grid.geobox, crs_coord_name=_CRS_VAR)
    cf = {k: to_json_safe(v) for k, v in coords[_CRS_VAR].attrs.items()}
    crs = grid.geobox.crs
    gdal_crs: dict[str, Any] = {"wkt": crs.to_wkt()}
    if crs.epsg is not None:
        gdal_crs["url"] = f"http://www.opengis.net/def/crs/EPSG/0/{crs.epsg}"
    return cf, gdal_crs


def _build_store(
    root: Path,
    grid: TileGrid,
    layout: dict[str, Any],
    layout_hash: str,
    attrs: dict[str, Any],
) -> None:
    import zarr
    from odc.geo.xr import xr_coords

    h, w = grid.shape
    ts = grid.tile_size
    names, k, periods = layout["class_names"], layout["k"], layout["periods"]
    bands, embed_dim = layout["bands"], layout["embed_dim"]
    cf_crs, gdal_crs = _crs_attrs(grid)
    comp = _compressor()
    g = zarr.open_group(str(root), mode="w-", zarr_format=ZARR_FORMAT)
    g.attrs.update(
        to_json_safe(
            {
                **attrs,
                "title": attrs.get("title", "land-cover map"),
                "Conventions": "CF-1.8",
                "class_names": names,
                "s2lc:layout": layout,
                "s2lc:layout_hash": layout_hash,
            }
        )
    )

    def coord(name: str, values: np.ndarray, extra: Mapping[str, Any] | None = None) -> None:
        text = values.dtype.kind == "U"  # Zarr v3's variable-length UTF-8 strings
        a = g.create_array(
            name,
            shape=values.shape,
            dtype="str" if text else values.dtype,
            chunks=values.shape or None,
            fill_value="" if text else None,
            compressors=comp,
            dimension_names=[name],
            attributes=dict(extra or {}),
        )
        a[...] = values

    xy = xr_coords(grid.geobox, crs_coord_name=_CRS_VAR)
    for dim in ("y", "x"):
        cf = {"standard_name": f"projection_{dim}_coordinate", "axis": dim.upper()}
        coord(dim, xy[dim].values.astype(np.float64), {**to_json_safe(xy[dim].attrs), **cf})
    coord("k", np.arange(1, k + 1, dtype=np.int16), {"long_name": "rank of the class probability"})
    coord("period", np.array(periods, dtype=str), {"long_name": "composite period"})
    if bands is not None:
        coord("band", np.array(bands, dtype=str), {"long_name": "spectral band"})
    field_dims = layout.get("field_dims")
    if embed_dim is not None:
        coord(
            "time",
            np.array([_year(periods)], dtype=str),
            {"long_name": "year of the map (its first period)"},
        )
        if field_dims is not None:
            coord(
                "embedding",
                np.arange(field_dims, dtype=np.int32),
                {"long_name": "component of the compact embedding field"},
            )
            coord("feature", np.arange(embed_dim, dtype=np.int32), {"long_name": "model dim"})
        else:
            coord("embedding", np.arange(embed_dim, dtype=np.int32), {"long_name": "model dim"})
    sref = g.create_array(
        _CRS_VAR,
        shape=(),
        dtype=np.int32,
        fill_value=None,
        dimension_names=[],
        attributes=cf_crs,
    )
    sref[...] = int(grid.geobox.crs.epsg or 0)

    common = {"grid_mapping": _CRS_VAR, "coordinates": _CRS_VAR, "_CRS": gdal_crs}

    # Class layers have no Zarr fill_value: xarray would take it as a CF _FillValue and decode
    # the classes to float32 with NaN. They stay uint8; 255 (nodata) is a CF flag value, and
    # every chunk is written (below), so no chunk reads as zarr's default 0.
    # A continental grid has ~10^5..10^6 chunks outside the AOI: writing each would take hours,
    # so there the class layers carry fill_value 255 instead (xarray then decodes them with
    # NaN for nodata; ``mask_and_scale=False`` keeps uint8).
    nr, nc = grid.lattice_shape
    sparse = nr * nc - len(grid.tiles) > MAX_FILLED_CHUNKS
    flags = {
        "flag_values": [*range(len(names)), CLASS_NODATA],
        "flag_meanings": " ".join([*(_cf_word(n) for n in names), "nodata"]),
        "class_names": names,
        "nodata": CLASS_NODATA,
    }
    chunk = {
        "k": k,
        "period": len(periods),
        "band": len(bands or ()),
        "time": 1,
        "embedding": field_dims or max(1, min(embed_dim or 1, _EMBED_CHUNK_BYTES // (2 * ts * ts))),
    }
    for spec in store_layers(layout):
        lead = spec.dims[:-2]
        chunks = tuple(
            chunk[d] if n is None else n
            for d, n in zip(lead, spec.lead_chunks or (None,) * len(lead), strict=True)
        )
        classes = spec.kind == "classes"
        # Zarr v3 arrays always have a fill value; xarray does not mask with it (only CF
        # _FillValue), so class layers stay uint8 with 255 = nodata, counts 0.
        fill = spec.fill if spec.fill is not None else (CLASS_NODATA if classes else 0)
        g.create_array(
            spec.name,
            shape=tuple(len(_dim_values(d, layout)) for d in lead) + (h, w),
            dtype=np.dtype(spec.dtype),
            chunks=chunks + (ts, ts),
            fill_value=fill,
            compressors=comp,
            dimension_names=list(spec.dims),
            attributes={
                **common,
                **spec.zarr_attrs,
                **(flags if classes else {}),
            },
        )
    if layout.get("field_dims") is not None:
        _field_recipe_arrays(g, embed_dim, layout["field_dims"], comp)
    if not sparse:
        classes = [s.name for s in store_layers(layout) if s.kind == "classes"]
        _fill_uncovered_chunks(g, grid, classes, CLASS_NODATA)
    with warnings.catch_warnings():  # consolidated metadata is zarr-python's v3 extension
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(root), zarr_format=ZARR_FORMAT)


def _year(periods: Sequence[str]) -> str:
    """The ``time`` label of a map: the year of its first period (``2023-01`` -> ``2023``)."""
    first = str(periods[0]) if periods else ""
    return first[:4] if first[:4].isdigit() else first


def store_layers(layout: Mapping[str, Any]) -> tuple[LayerSpec, ...]:
    """The layers a store with this layout holds: every run's, the composite when it has
    bands, and the embeddings as float16 or as the compact field."""
    groups = {"map"}
    if layout.get("bands") is not None:
        groups.add("composite")
    if layout.get("field_dims") is not None:
        groups.add("field")
    elif layout.get("embed_dim") is not None:
        groups.add("embeddings")
    if layout.get("ood"):
        groups.add("ood")
    if layout.get("postprocess"):
        groups.add("postprocess")
    return tuple(s for s in LAYER_SPECS if s.group in groups)


def _field_recipe_arrays(g: Any, embed_dim: int, dims: int, comp: Any) -> None:
    """The compact field's decoding recipe (mean and basis), next to its per-pixel layers."""
    for name, shape, dimnames in (
        ("field_mean", (embed_dim,), ["feature"]),
        ("field_basis", (embed_dim, dims), ["feature", "embedding"]),
    ):
        g.create_array(
            name,
            shape=shape,
            dtype=np.float32,
            chunks=shape,
            fill_value=np.nan,
            compressors=comp,
            dimension_names=dimnames,
        )


#: Above this many chunks outside the AOI, class layers use a fill value instead of written
#: nodata chunks (see ``_build_store``).
MAX_FILLED_CHUNKS = 2_000


def _fill_uncovered_chunks(g: Any, grid: TileGrid, names: Sequence[str], value: int) -> None:
    """Write ``value`` into the chunks no tile covers (outside the AOI), once, at creation.

    Arrays without a fill_value read unwritten chunks as 0; the tiles write the others. An
    all-``value`` chunk compresses to a few bytes.
    """
    ts = grid.tile_size
    covered = {(t.window[0].start // ts, t.window[1].start // ts) for t in grid.tiles}
    nr, nc = grid.lattice_shape
    h, w = grid.shape
    for r in range(nr):
        for c in range(nc):
            if (r, c) in covered:
                continue
            ys, xs = slice(r * ts, min(h, (r + 1) * ts)), slice(c * ts, min(w, (c + 1) * ts))
            for name in names:
                arr = g[name]
                lead = (slice(None),) * (arr.ndim - 2)
                arr[(*lead, ys, xs)] = value


def _dim_values(dim: str, layout: Mapping[str, Any]) -> Sequence[Any]:
    return {
        "k": range(layout["k"]),
        "period": layout["periods"],
        "band": layout["bands"] or (),
        "time": range(1),
        "embedding": range(layout.get("field_dims") or layout["embed_dim"] or 0),
    }[dim]


def _cf_word(name: str) -> str:
    """A class name as one CF flag_meanings word."""
    word = "_".join(str(name).split())
    return "".join(c if c.isalnum() or c in "_-.+@" else "_" for c in word) or "class"


def open_map(path: str | os.PathLike[str]) -> Any:
    """The store as an xarray Dataset (lazy), with its CRS decoded (``spatial_ref``)."""
    import odc.geo.xr  # noqa: F401  (registers .odc: ds.odc.geobox)
    import xarray as xr

    return xr.open_zarr(str(path), decode_coords="all", consolidated=True)


def write_tile(path: str | os.PathLike[str], tile: Tile, result: TileResult) -> None:
    """Write one tile's layers into its window of every array of the store at ``path``.

    Safe to call concurrently for different tiles (each chunk belongs to one tile) and to repeat
    for the same tile (it overwrites). An optional layer the store has but the result lacks
    (``None`` or empty, e.g. embeddings of a tile without valid pixels) is written as nodata;
    optional layers the result has but the store lacks are ignored.
    """
    import zarr

    g = zarr.open_group(str(path), mode="r+", zarr_format=ZARR_FORMAT)
    ys, xs = tile.window
    if result.shape != tile.shape:
        raise ValueError(f"tile {tile.id} is {tile.shape} pixels, the result {result.shape}")
    ts = g["classes"].chunks[-1]
    if ys.start % ts or xs.start % ts:
        raise ValueError(f"tile {tile.id} at {ys.start}, {xs.start} is not on the {ts} chunk grid")
    present = set(g.array_keys())
    for spec in LAYER_SPECS:
        if spec.name not in present:
            continue
        data: np.ndarray | None = getattr(result, spec.name)
        arr = g[spec.name]
        want = tuple(arr.shape[:-2]) + tile.shape
        if data is None or data.size == 0:  # e.g. no embeddings for a tile without valid pixels
            fill = arr.fill_value
            if fill is None:  # class layers: nodata 255; counts: 0 observations
                fill = spec.nodata
            data = np.full(want, fill, dtype=arr.dtype)
        if spec.dims[0] == "time" and data.ndim == len(want) - 1:
            data = data[None]  # a tile's result is one time step
        if data.shape != want:
            raise ValueError(
                f"tile {tile.id}: {spec.name} has shape {data.shape}, the store {want}"
            )
        lead = (slice(None),) * (data.ndim - 2)
        arr[(*lead, ys, xs)] = data


def read_layer(
    path: str | os.PathLike[str], name: str, window: tuple[slice, slice] | None = None
) -> np.ndarray:
    """The array ``name`` of the store at ``path`` (e.g. the raw classes to post-process): whole,
    or its (rows, cols) ``window`` of a (y, x) layer."""
    import zarr

    arr = zarr.open_group(str(path), mode="r", zarr_format=ZARR_FORMAT)[name]
    return arr[...] if window is None else arr[window[0], window[1]]


def write_layer(
    path: str | os.PathLike[str],
    name: str,
    data: np.ndarray,
    window: tuple[slice, slice] | None = None,
) -> None:
    """Overwrite the array ``name`` of the store at ``path`` (shape and dtype as stored): whole,
    or its (rows, cols) ``window`` of a (y, x) layer (``data`` then the window's shape)."""
    import zarr

    arr = zarr.open_group(str(path), mode="r+", zarr_format=ZARR_FORMAT)[name]
    if window is None:
        if tuple(data.shape) != tuple(arr.shape):
            raise ValueError(f"{name} has shape {data.shape}, the store {arr.shape}")
        arr[...] = np.asarray(data, dtype=arr.dtype)
        return
    ys, xs = window
    want = (len(range(*ys.indices(arr.shape[0]))), len(range(*xs.indices(arr.shape[1]))))
    if tuple(data.shape) != want:
        raise ValueError(f"{name} window is {want}, the data {data.shape}")
    arr[ys, xs] = np.asarray(data, dtype=arr.dtype)
