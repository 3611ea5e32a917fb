"""GeoTIFF outputs: per-tile GeoTIFFs written by tile tasks, mosaicked into Cloud-Optimised GeoTIFFs.

Tile tasks write ``<tile_dir>/{classes,confidence,valid_obs}.tif`` (plain tiled GeoTIFFs on the
tile's grid; the folder appears atomically). :func:`build_cogs` then describes the whole map as a
VRT over those files (or over the Zarr store's arrays, through GDAL's Zarr driver) and lets GDAL's
COG driver stream it into the final COGs: GDAL reads block by block, so memory does not grow with
the map. Tiles that were never written (outside the AOI) are nodata.

Products:

* ``classes.tif``: uint8, nodata 255, an embedded colour table, class names in-file (band
  description, dataset tag ``class_names`` as JSON and band tags ``CLASS_<value>``), and for GIS
  legends GDAL category names in a ``classes.tif.aux.xml`` sidecar (GeoTIFF cannot hold them
  in-file). Nearest-neighbour overviews.
* ``confidence.tif``: float32, nodata NaN, average overviews.
* ``valid_obs.tif``: uint16, nodata 0 (no valid observation). Band 1 is the total over the
  whole period; with several composite periods, bands 2.. hold each period's count (band
  descriptions name them). Average overviews.
* ``composite_rgb.tif`` (when the tiles wrote ``rgb.tif``): uint8 true-colour composite, bands
  red, green, blue (B4, B3, B2, median over the periods, TCI scaling), nodata 0, average
  overviews.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from pipeline.base.atomic import atomic_path, remove_path
from pipeline.base.colours import parse_color
from pipeline.grid.tiling import Tile, TileGrid
from pipeline.reading.blocks import worker_cores
from pipeline.writers.layers import LAYERS, LayerSpec, cog_layers
from pipeline.writers.tile_result import CLASS_NODATA, TileResult

__all__ = ["LAYERS", "build_cogs", "rewrite_tile_layers", "write_tile_rasters"]

#: The layers tile tasks write as GeoTIFFs: every run's, and the optional ones (true-colour
#: composite, OOD score, post-processing), mosaicked when the tiles wrote them.
TILE_LAYERS = cog_layers("map", "ood", "postprocess", "tile")
_GDT = {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}
_BLOCK = 256
_CACHE_MB = 256  # GDAL block cache while mosaicking (rasterio reads small ints as MB)


def _profile(tile: Tile, dtype: str, count: int, nodata: float | None) -> dict[str, Any]:
    h, w = tile.shape
    prof: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": count,
        "dtype": dtype,
        "crs": str(tile.geobox.crs),
        "transform": tile.geobox.affine,
        "compress": "zstd",
        "interleave": "band",
    }
    if h >= 16 and w >= 16:
        prof.update(tiled=True, blockxsize=_BLOCK, blockysize=_BLOCK)
    if nodata is not None:
        prof["nodata"] = nodata
    return prof


def write_tile_rasters(
    tile_dir: str | os.PathLike[str],
    tile: Tile,
    result: TileResult,
    period_labels: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write one tile's GeoTIFFs into ``tile_dir`` (which appears complete, atomically).

    :returns: layer name -> file path (``classes``, ``confidence``, ``valid_obs``).
    """
    import rasterio

    tile_dir = Path(tile_dir)
    if result.shape != tile.shape:
        raise ValueError(f"tile {tile.id} is {tile.shape} pixels, the result {result.shape}")
    labels = (
        list(period_labels)
        if period_labels
        else [f"period {i + 1}" for i in range(result.n_periods)]
    )
    layers: dict[str, tuple[LayerSpec, np.ndarray]] = {}
    for spec in TILE_LAYERS:
        data = getattr(result, spec.name)
        if spec.name == "valid_obs":  # band 1: the total, then each period's count
            data = result.total_valid_obs()[None]
            if result.n_periods > 1:
                data = np.concatenate([data, result.valid_obs], axis=0)
        if data is not None:
            layers[spec.name] = (spec, data if data.ndim == 3 else data[None])
    with atomic_path(tile_dir) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
        tmp.mkdir()
        for name, (spec, data) in layers.items():
            prof = _profile(tile, spec.file_dtype, data.shape[0], spec.nodata)
            with rasterio.open(tmp / f"{name}.tif", "w", **prof) as dst:
                dst.write(data)
                if name == "valid_obs":
                    descs = ["total"] + (labels if result.n_periods > 1 else [])
                    for i, d in enumerate(descs, start=1):
                        dst.set_band_description(i, d)
    return {name: tile_dir / f"{name}.tif" for name in layers}


def rewrite_tile_layers(
    tile_dir: str | os.PathLike[str], tile: Tile, layers: dict[str, np.ndarray]
) -> None:
    """Replace single-band layers of a tile folder written by :func:`write_tile_rasters` (e.g.
    the post-processed ``classes``), each file atomically; ``layers``: name -> (h, w) array."""
    import rasterio

    from pipeline.writers.layers import layer

    for name, data in layers.items():
        spec = layer(name)
        if data.shape != tile.shape:
            raise ValueError(f"tile {tile.id}: {name} is {data.shape}, the tile {tile.shape}")
        prof = _profile(tile, spec.file_dtype, 1, spec.nodata)
        with (
            atomic_path(Path(tile_dir) / f"{name}.tif") as tmp,
            rasterio.Env(GDAL_PAM_ENABLED="NO"),
        ):
            with rasterio.open(tmp, "w", **prof) as dst:
                dst.write(np.asarray(data, spec.file_dtype)[None])


# --- mosaic -------------------------------------------------------------------------------------


def _is_zarr(path: Path) -> bool:
    return (path / ".zgroup").is_file() or (path / "zarr.json").is_file()


def _sources(
    source: Path, grid: TileGrid, name: str
) -> tuple[list[tuple[str, int, Tile | None]], list[str]]:
    """[(GDAL filename, band count, tile or None for full-grid)], band descriptions."""
    import rasterio

    if _is_zarr(source):
        import zarr

        g = zarr.open_group(str(source), mode="r")
        n = g[name].shape[0] if g[name].ndim == 3 else 1
        periods = [str(p) for p in g["period"][...]] if "period" in g else []
        return [(f'ZARR:"{source.resolve()}":/{name}', n, None)], periods
    out = []
    descriptions: list[str] = []
    for tile in grid.tiles:
        f = source / tile.id / f"{name}.tif"
        if f.is_file():
            out.append((str(f.resolve()), 0, tile))
    if out:
        with rasterio.open(out[0][0]) as src:
            count = src.count
            descriptions = [d or "" for d in src.descriptions]
        out = [(f, count, t) for f, _, t in out]
    return out, descriptions


def _band_xml(
    band: int,
    dtype: str,
    sources: list[tuple[str, int, Tile | None]],
    src_band: int,
    grid: TileGrid,
    nodata: float | None,
    description: str = "",
    extra: str = "",
) -> str:
    h, w = grid.shape
    parts = [f'  <VRTRasterBand dataType="{_GDT[dtype]}" band="{band}">']
    if description:
        parts.append(f"    <Description>{escape(description)}</Description>")
    if nodata is not None:
        parts.append(
            f"    <NoDataValue>{'nan' if math.isnan(nodata) else int(nodata)}</NoDataValue>"
        )
    parts.append(extra)
    for fname, _, tile in sources:
        if tile is None:
            ys, xs = slice(0, h), slice(0, w)
        else:
            ys, xs = tile.window
        th, tw = ys.stop - ys.start, xs.stop - xs.start
        # Tiles never overlap, so plain sources do; uncovered areas read as the band's nodata.
        parts.append(
            f'    <SimpleSource><SourceFilename relativeToVRT="0">{escape(fname)}</SourceFilename>'
            f"<SourceBand>{src_band}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{tw}" ySize="{th}"/>'
            f'<DstRect xOff="{xs.start}" yOff="{ys.start}" xSize="{tw}" ySize="{th}"/></SimpleSource>'
        )
    parts.append("  </VRTRasterBand>")
    return "\n".join(p for p in parts if p)


def _sum_band_xml(band: int, sources: list[tuple[str, int, Tile | None]], grid: TileGrid) -> str:
    """A derived band summing every band of a full-grid source (total valid observations)."""
    h, w = grid.shape
    fname, n, _ = sources[0]
    srcs = "\n".join(
        f'    <SimpleSource><SourceFilename relativeToVRT="0">{escape(fname)}</SourceFilename>'
        f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
        f'<DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/></SimpleSource>'
        for b in range(1, n + 1)
    )
    return (
        f'  <VRTRasterBand dataType="UInt16" band="{band}" subClass="VRTDerivedRasterBand">\n'
        f"    <Description>total</Description>\n"
        f"    <NoDataValue>0</NoDataValue>\n"
        f"    <PixelFunctionType>sum</PixelFunctionType>\n"
        f"    <SourceTransferType>Float64</SourceTransferType>\n{srcs}\n  </VRTRasterBand>"
    )


def _metadata_xml(items: dict[str, str], indent: str = "  ") -> str:
    mdi = "".join(f"<MDI key={quoteattr(k)}>{escape(v)}</MDI>" for k, v in items.items())
    return f"{indent}<Metadata>{mdi}</Metadata>"


def _vrt(grid: TileGrid, bands_xml: list[str], metadata: dict[str, str]) -> str:
    h, w = grid.shape
    a = grid.geobox.affine
    return "\n".join(
        [
            f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">',
            f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(grid.geobox.crs.to_wkt())}</SRS>',
            f"  <GeoTransform>{a.c!r}, {a.a!r}, {a.b!r}, {a.f!r}, {a.d!r}, {a.e!r}</GeoTransform>",
            _metadata_xml(metadata),
            *bands_xml,
            "</VRTDataset>",
        ]
    )


def _classes_band_extra(class_names: Sequence[str], colors: Sequence[Any]) -> str:
    entries = []
    for v in range(256):
        if v < len(colors):
            r, g, b = parse_color(colors[v])
            entries.append(f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="255"/>')
        else:
            entries.append('<Entry c1="0" c2="0" c3="0" c4="0"/>')
    cats = "".join(f"<Category>{escape(str(n))}</Category>" for n in class_names)
    tags = {f"CLASS_{i}": str(n) for i, n in enumerate(class_names)}
    return "\n".join(
        [
            "    <ColorInterp>Palette</ColorInterp>",
            f"    <CategoryNames>{cats}</CategoryNames>",
            f"    <ColorTable>{''.join(entries)}</ColorTable>",
            _metadata_xml(tags, indent="    "),
        ]
    )


def _overview_count(grid: TileGrid) -> int:
    """Levels down to <= 256 px, and at least one (small maps get an overview too), except for a
    one-pixel map: GDAL's COG driver fails on an overview of a 1 x 1 raster ("Unknown GDAL
    Error"), and there is nothing to reduce."""
    if max(grid.shape) < 2:
        return 0
    n, size = 0, max(grid.shape)
    while size / 2**n > _BLOCK:
        n += 1
    return max(1, min(n, int(math.log2(max(2, min(grid.shape))))))


def build_cogs(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    grid: TileGrid,
    class_names: Sequence[str],
    colors: Sequence[Any],
    period_labels: Sequence[str] | None = None,
    *,
    threads: int | None = None,
    cpu_seconds: dict[str, float] | None = None,
) -> dict[str, Path]:
    """Mosaic per-tile GeoTIFFs (a folder of ``<tile id>/`` folders) or a map store into COGs.

    :param source: the folder holding the ``<tile id>/`` folders of :func:`write_tile_rasters`,
        or the Zarr map store (read through GDAL's Zarr driver).
    :param period_labels: descriptions of the per-period ``valid_obs`` bands (default: those
        stored in the tile files or the store).
    :param threads: GDAL threads per layer (default: :func:`pipeline.reading.blocks.worker_cores`).
    :param cpu_seconds: if given, receives each layer's CPU seconds (its writing thread; with
        ``threads`` 1 that is all of the layer's work), for benchmarks.
    :returns: ``{"classes": out_dir/classes.tif, "confidence": ..., "valid_obs": ...}``, plus
        ``"composite_rgb"`` when the tiles wrote a true-colour composite.

    The layers are written at the same time, and each uses the worker's cores
    (:func:`pipeline.reading.blocks.worker_cores`: ``OMP_NUM_THREADS`` or the CPU affinity) for
    the COG driver's ``NUM_THREADS`` (block compression) and ``GDAL_NUM_THREADS`` (overviews).
    """
    source, out_dir = Path(source), Path(out_dir)
    if len(colors) < len(class_names):
        raise ValueError(f"{len(class_names)} classes but {len(colors)} colours")
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or worker_cores()
    # The layers are written side by side, each in a pool thread (rasterio gives pool threads
    # their own GDAL settings, so one layer's PAM setting is not another's), and each layer's
    # COG driver compresses blocks and computes overviews on the worker's cores: the layers
    # differ tenfold in cost (valid_obs has a band per period), so both kinds of parallelism
    # are needed to use a node.
    with ThreadPoolExecutor(max_workers=len(TILE_LAYERS), thread_name_prefix="cog") as pool:
        futures = [
            pool.submit(
                _write_layer,
                spec,
                source,
                out_dir,
                grid,
                class_names,
                colors,
                period_labels,
                threads,
            )  # fmt: skip
            for spec in TILE_LAYERS
        ]
        written = [f.result() for f in futures]
    if cpu_seconds is not None:
        cpu_seconds.update({str(spec.cog): w[1] for spec, w in zip(TILE_LAYERS, written) if w})
    written = [w[0] if w else None for w in written]
    return {str(spec.cog): path for spec, path in zip(TILE_LAYERS, written, strict=True) if path}


def _write_layer(
    spec: LayerSpec,
    source: Path,
    out_dir: Path,
    grid: TileGrid,
    class_names: Sequence[str],
    colors: Sequence[Any],
    period_labels: Sequence[str] | None,
    threads: int,
) -> tuple[Path, float] | None:
    """(the layer's COG, this thread's CPU seconds) (None: an optional layer not written)."""
    t0 = time.thread_time()
    import rasterio
    import rasterio.shutil

    name = spec.name
    if spec.group != "map" and (_is_zarr(source) or not _sources(source, grid, name)[0]):
        return None  # an optional layer the tiles did not write
    sources, descriptions = _sources(source, grid, name)
    dtype, nodata = spec.file_dtype, spec.nodata
    metadata: dict[str, str] = {}
    if spec.kind == "classes":
        metadata["class_names"] = json.dumps(list(map(str, class_names)))
        metadata["nodata_class"] = str(CLASS_NODATA)
        bands = [
            _band_xml(1, dtype, sources, 1, grid, nodata, spec.description,
                      _classes_band_extra(class_names, colors))
        ]  # fmt: skip
    elif spec.kind == "rgb":
        metadata["composite"] = "B4, B3, B2 median over the periods; reflectance 0-0.2 -> 1-255"
        bands = [
            _band_xml(i + 1, dtype, sources, i + 1, grid, nodata, desc,
                      f"    <ColorInterp>{desc.capitalize()}</ColorInterp>")
            for i, desc in enumerate(("red", "green", "blue"))
        ]  # fmt: skip
    elif name == "valid_obs" and sources and sources[0][2] is None:  # store: (period, y, x)
        n = sources[0][1]
        bands = [_sum_band_xml(1, sources, grid)]
        if n > 1:
            bands += [
                _band_xml(i + 2, dtype, sources, i + 1, grid, nodata, descriptions[i])
                for i in range(n)
            ]
    elif name == "valid_obs":  # from tiles: band 1 total, then one band per period
        n = sources[0][1] if sources else 1
        descs = descriptions or [spec.description]
        if period_labels and n == len(period_labels) + 1:
            descs = ["total", *map(str, period_labels)]
        bands = [
            _band_xml(
                i + 1, dtype, sources, i + 1, grid, nodata, descs[i] if i < len(descs) else ""
            )
            for i in range(n)
        ]
    else:
        bands = [_band_xml(1, dtype, sources, 1, grid, nodata, spec.description)]
    if name == "valid_obs":
        metadata["valid_obs"] = "band 1: total valid observations; bands 2..: per period"
    final = out_dir / f"{spec.cog}.tif"
    with atomic_path(final) as tmp:
        vrt_path = tmp.with_name(tmp.name + ".vrt")
        try:
            vrt_path.write_text(_vrt(grid, bands, metadata))
            opts = {
                "compress": "deflate",
                "predictor": "yes",
                "blocksize": _BLOCK,
                "overview_resampling": spec.resampling,
                "overview_count": _overview_count(grid),
                "bigtiff": "if_safer",
                "num_threads": str(threads),
            }
            # No PHOTOMETRIC option: the COG driver does not take it (GDAL warned on every run);
            # the true-colour bands are red, green, blue through the VRT's ColorInterp.
            # PAM only for classes: its category names go to the .aux.xml sidecar.
            env: dict[str, Any] = {
                "GDAL_PAM_ENABLED": "YES" if spec.kind == "classes" else "NO",
                "GDAL_NUM_THREADS": str(threads),  # overviews computed on the worker's cores
            }
            if "GDAL_CACHEMAX" not in os.environ:  # bounded memory, whatever the map size
                env["GDAL_CACHEMAX"] = _CACHE_MB
            with rasterio.Env(**env):
                rasterio.shutil.copy(str(vrt_path), str(tmp), driver="COG", **opts)
            aux = tmp.with_name(tmp.name + ".aux.xml")
            if aux.exists():  # category names (GeoTIFF keeps them only in the sidecar)
                os.replace(aux, final.with_name(final.name + ".aux.xml"))
        finally:
            remove_path(vrt_path)
            remove_path(tmp.with_name(tmp.name + ".aux.xml"))
    return final, time.thread_time() - t0
