"""A (time, band, y, x) reflectance cube on any target GeoBox: odc-stac load, harmonise, mask.

:func:`load_cube` renames every item's assets to the canonical bands (:mod:`pipeline.bands`), so
items from Earth Search v1, v0 and Planetary Computer load together, then lets odc-stac read the
raw DN onto the target grid (nearest neighbour, so every value is from the pixel whose SCL masks
it, see :class:`MaskConfig`), one time step per solar day.
Reflectance is ``DN * scale + offset`` with the item's own harmonisation
(:func:`pipeline.bands.reflectance_scale_offset`, which handles the baseline 04.00 offset) applied
per time step, nodata (DN 0) and masked SCL classes become NaN.

Assumption: the items of one solar day share one harmonisation. Items are grouped by
(solar day, scale, offset), so were a day to mix baselines (a reprocessing overlapping an older
product, in practice never within one provider's collection), it would give two time steps
rather than a wrong offset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.bands import BANDS, SCL, asset_keys, reflectance_scale_offset, scl_masked_classes
from pipeline.errors import UserError

_log = logging.getLogger(__name__)

STAC_CFG: dict[str, Any] = {
    "*": {
        "assets": {
            "*": {"data_type": "uint16", "nodata": 0, "unit": "1"},
            SCL: {"data_type": "uint8", "nodata": 0, "unit": "1"},
        },
        "warnings": "ignore",
    }
}
"""odc-stac metadata for providers whose items lack ``raster:bands`` (Planetary Computer, v0)."""


@dataclass(frozen=True)
class MaskConfig:
    """Which pixels become NaN."""

    mask_snow: bool = True
    """Mask SCL 11 (snow/ice) as well as no data, defective, shadow, clouds and cirrus."""
    use_scl: bool = True
    """Apply the SCL mask at all (nodata DN 0 is always masked)."""
    resampling: str = "nearest"
    """Resampling of the reflectance bands that are not on the target grid (SCL: always nearest).

    ``nearest`` (default) gives each target pixel the value of the source pixel containing its
    centre; on the 10 m lattice a 20 m band's value then comes from the same 20 m pixel as the
    SCL class that masks it. ``bilinear`` blends in 25-75 % of the neighbouring 20 m pixels
    whatever their SCL class, so clear pixels next to a cloud or shadow take part of its
    reflectance (on real Flanders series: +0.005 mean bias in B05 at such pixels, up to 0.1 in
    single composites); use it only where smoothness matters more than the mask."""

    def __post_init__(self) -> None:
        if self.resampling not in ("nearest", "bilinear", "cubic", "average"):
            raise UserError(f"unknown resampling {self.resampling!r}")

    @property
    def scl_classes(self) -> tuple[int, ...]:
        return scl_masked_classes(self.mask_snow) if self.use_scl else (0,)


def canonical_item(item: Any) -> Any:
    """A copy of ``item`` whose assets are exactly :data:`BANDS` + SCL under canonical names."""
    import pystac

    keys = asset_keys(item)
    clone = pystac.Item(
        id=item.id,
        geometry=item.geometry,
        bbox=item.bbox,
        datetime=item.datetime,
        properties=dict(item.properties),
        stac_extensions=list(item.stac_extensions),
        collection=item.collection_id,
    )
    for band, key in keys.items():
        asset = item.assets[key]
        extra = {k: v for k, v in asset.extra_fields.items() if k != "eo:bands"}
        clone.add_asset(
            band,
            pystac.Asset(
                href=asset.href, media_type=asset.media_type, roles=["data"], extra_fields=extra
            ),
        )
    return clone


def usable_items(items: Iterable[Any]) -> list[Any]:
    """The items that have every band and SCL; a scene missing an asset is logged and skipped."""
    keep = []
    for it in items:
        try:
            asset_keys(it)
        except UserError as exc:
            _log.warning("skipping scene %s: %s", it.id, exc)
            continue
        keep.append(it)
    return keep


def load_cube(
    items: Iterable[Any],
    geobox: Any,
    *,
    mask: MaskConfig = MaskConfig(),
    chunks: dict[str, int] | None = None,
    pool: int | None = None,
) -> Any:
    """Load Sentinel-2 L2A items as float32 reflectance (0-1) on ``geobox``.

    Args:
        items: pystac Items (any provider layout; dicts are converted).
        geobox: an ``odc.geo`` GeoBox in any CRS (a whole region or one tile window of it).
        mask: SCL masking options.
        chunks: odc-stac chunking, e.g. ``{"x": 1024, "y": 1024}``; given (even ``{}``), the
            result is lazy (dask), one chunk per time step and spatial block.
        pool: threads for an eager load (None: odc-stac's default).

    Returns:
        DataArray (time, band, y, x), ``band`` = :data:`BANDS`, NaN where nodata or masked, with
        the GeoBox's spatial coordinates and CRS (``odc`` accessor works).
    """
    import odc.stac
    import pystac
    import xarray as xr

    items = [it if isinstance(it, pystac.Item) else pystac.Item.from_dict(it) for it in items]
    if not items:
        raise ValueError("load_cube needs at least one item")
    items = usable_items(items)
    if not items:
        ny, nx = geobox.shape
        empty = np.full((0, len(BANDS), ny, nx), np.nan, np.float32)
        return xr.DataArray(
            empty,
            dims=("time", "band", "y", "x"),
            coords={"time": np.array([], "datetime64[ns]"), "band": list(BANDS)},
            name="reflectance",
        )
    canon = [canonical_item(it) for it in items]
    harm = {it.id: reflectance_scale_offset(it) for it in items}
    keys_seen: set[tuple[Any, float, float]] = set()

    def group_key(item: Any, parsed: Any, idx: int) -> tuple[Any, float, float]:
        h = harm[item.id]
        key = (parsed.solar_date.date(), h.scale, h.offset)
        keys_seen.add(key)
        return key

    resampling = {"*": mask.resampling, SCL: "nearest"}
    ds = odc.stac.load(
        canon,
        bands=[*BANDS, SCL],
        geobox=geobox,
        groupby=group_key,
        chunks=chunks,
        resampling=resampling,
        stac_cfg=STAC_CFG,
        pool=pool,
        # A corrupt or unreachable file is logged by odc-stac and read as nodata: that scene's
        # band is NaN (so the observation does not count in the composite), the map goes on.
        fail_on_error=False,
    )
    keys = sorted(keys_seen)
    if len(keys) != ds.sizes["time"]:  # odc-stac changed its grouping: fail loudly
        raise RuntimeError(f"{len(keys)} groups but {ds.sizes['time']} time steps")
    scale = xr.DataArray(np.array([k[1] for k in keys], np.float32), dims="time")
    offset = xr.DataArray(np.array([k[2] for k in keys], np.float32), dims="time")
    scl = ds[SCL]
    bad = scl.isin(list(mask.scl_classes)) if mask.use_scl else xr.zeros_like(scl, dtype=bool)
    bands = []
    for band in BANDS:
        dn = ds[band]
        refl = dn.astype(np.float32) * scale + offset
        bands.append(refl.where((dn != 0) & ~bad))
    cube = xr.concat(bands, dim=xr.DataArray(list(BANDS), dims="band", name="band"))
    cube = cube.transpose("time", "band", "y", "x").astype(np.float32)
    cube.name = "reflectance"
    cube.attrs = {"units": "1", "scl_masked": list(mask.scl_classes)}
    _log.debug("cube %s from %d items, %d solar days", dict(cube.sizes), len(items), len(keys))
    return cube
