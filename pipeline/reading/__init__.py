"""The read path: STAC items -> masked reflectance of one window, at the decode floor.

:func:`load_reflectance` is what a tile task calls. On the scenes' own 10 m lattice it takes the
native-grid fast path (:mod:`pipeline.reading.native`: block-aligned reads through a per-worker
dataset and block cache, compiled 2x upsampling and one compiled scale/mask pass); on any other
grid it falls back to :func:`pipeline.reading.cube.load_cube` (odc-stac's warp). Items whose
assets are ESA's EOPF Zarr products are read by :func:`pipeline.reading.eopf.load_eopf`. Both raise
:class:`pipeline.reading.cube.ReadFailure` for input that cannot be read, never NaN ("no clear
observation"), and re-sign signed URLs once on HTTP 403.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from pipeline.reading.blocks import BlockReader, block_reader, gdal_options, is_remote
from pipeline.reading.native import UPSAMPLE_TOLERANCE_DN, NotNative, Reflectance, load_native
from pipeline.stac.bands import BANDS

__all__ = [
    "UPSAMPLE_TOLERANCE_DN",
    "BlockReader",
    "NotNative",
    "Reflectance",
    "block_reader",
    "gdal_options",
    "load_native",
    "load_reflectance",
    "read_group",
    "read_order",
    "READ_GROUP_PX",
]

_log = logging.getLogger(__name__)

READ_GROUP_PX = 2048
"""Tiles are grouped into squares of this many 10 m pixels for scheduling: one 1024 px block of
the 20 m bands and SCL (4 blocks of the 10 m bands). The runner sends a group's tiles to one
worker in a row, so that worker's block cache decodes each source block once."""


def read_group(tile: Any, px: int = READ_GROUP_PX) -> tuple[int, int]:
    """(row, col) of the ``px`` square of the output grid that holds ``tile``'s first pixel."""
    rows, cols = tile.window
    return rows.start // px, cols.start // px


def read_order(
    tiles: Iterable[Any], n_workers: int, px: int = READ_GROUP_PX
) -> list[tuple[Any, int]]:
    """(tile, worker index) in submission order: each read group's tiles on one worker.

    Groups are taken ``n_workers`` at a time, each on its own worker, and their tiles interleaved,
    so every worker has its own group in flight; within a group tiles keep their order.
    """
    by_group: dict[tuple[int, int], list[Any]] = {}
    for t in tiles:
        by_group.setdefault(read_group(t, px), []).append(t)
    groups = [by_group[g] for g in sorted(by_group)]
    n = max(1, n_workers)
    out: list[tuple[Any, int]] = []
    for b in range(0, len(groups), n):
        batch = groups[b : b + n]
        for k in range(max(len(g) for g in batch)):
            out += [(g[k], w) for w, g in enumerate(batch) if k < len(g)]
    return out


def load_reflectance(
    items: Iterable[Any],
    geobox: Any,
    *,
    mask: Any = None,
    reader: BlockReader | None = None,
    native: bool = True,
    work_buffer: bool = False,
) -> Reflectance:
    """Masked float32 reflectance (time, band, y, x) of ``items`` on ``geobox``.

    Args:
        items: pystac Items or item dicts of any provider layout; scenes missing an asset are
            logged and skipped (:func:`pipeline.reading.cube.usable_items`).
        geobox: the target window (``odc.geo`` GeoBox, any CRS).
        mask: :class:`pipeline.reading.cube.MaskConfig` (default masking when None).
        reader: the block reader of the fast path (default: this process's).
        native: try the native-grid fast path first (False: odc-stac's warp on every grid).
            Over a network, the warp reads its files on ``reader``'s threads
            (:meth:`BlockReader.lend_pool`); local files one after the other.
        work_buffer: the fast path writes the values into this thread's reused work array of
            ``reader``: valid until this thread's next call with ``work_buffer`` (for callers
            that reduce them at once, like :func:`pipeline.composite.window.composite_window`).

    Returns:
        :class:`Reflectance` (``native`` says which path ran).
    """
    import pystac

    from pipeline.reading.cube import (
        MaskConfig,
        ReadFailure,
        _resign,
        canonical_item,
        load_cube,
        usable_items,
    )

    mask = mask or MaskConfig()
    reader = reader or block_reader()
    items = list(items)
    if items and _is_eopf(items[0]):  # ESA's EOPF Zarr products: pipeline.reading.eopf
        from pipeline.reading.eopf import load_eopf

        return load_eopf(items, geobox, mask=mask, reader=reader, work_buffer=work_buffer)
    key = tuple(_fingerprint(it) for it in items)
    cached = reader.items.get(key)
    if cached is None:  # a worker's tiles share their scenes: convert them once
        items = [it if isinstance(it, pystac.Item) else pystac.Item.from_dict(it) for it in items]
        items = usable_items(items)
        cached = (items, [canonical_item(it) for it in items])
        reader.items[key] = cached
        while len(reader.items) > 64:
            reader.items.popitem(last=False)
    items, canon = cached
    ny, nx = geobox.shape
    if not items:
        empty = np.full((0, len(BANDS), ny, nx), np.nan, np.float32)
        return Reflectance(empty, np.array([], "datetime64[ns]"))
    for attempt in (1, 2) if native else ():
        try:
            return load_native(canon, geobox, mask=mask, reader=reader, work_buffer=work_buffer)
        except NotNative as exc:
            _log.debug("general warp (odc-stac): %s", exc)
            break
        except ReadFailure as exc:
            # An expired signature (403) is re-signed once with a fresh token, as load_cube does.
            if attempt == 1 and exc.status == 403 and _resign(canon):
                _log.warning("HTTP 403 reading %s: re-signing and retrying", exc.scenes)
                reader.clear()
                continue
            raise
    # odc-stac reads one (band, acquisition) after the other unless given threads. Over a network
    # the reader's own (their GDAL state is warm) let reads of many files wait on the store at
    # once; local files are read in turn: warping on 64 threads doubled their CPU seconds (the
    # rehearsal's local run, 2026-12-08: 214 core-s of reading against 111 in turn).
    remote = any(is_remote(a.href) for it in canon for a in it.assets.values())
    cube = load_cube(items, geobox, mask=mask, pool=reader.lend_pool() if remote else None)
    return Reflectance(
        np.asarray(cube.values, np.float32),
        cube["time"].values,
        dict(cube.attrs.get("offset_warnings") or {}),
        native=False,
    )


def _is_eopf(item: Any) -> bool:
    from pipeline.stac.eopf import is_eopf_item

    return is_eopf_item(item)


def _fingerprint(item: Any) -> tuple:
    """What identifies an item's pixels: id, collection, time and asset hrefs (dict or Item)."""
    if isinstance(item, dict):
        assets = item.get("assets", {})
        hrefs = tuple(sorted((k, a.get("href")) for k, a in assets.items()))
        props = item.get("properties", {})
        return (item.get("id"), item.get("collection"), str(props.get("datetime")), hrefs)
    hrefs = tuple(sorted((k, a.href) for k, a in item.assets.items()))
    return (item.id, item.collection_id, str(item.datetime), hrefs)
