"""Native-grid fast path: a 10 m window on the scenes' own UTM lattice, read without a warper.

When the target GeoBox is the scenes' own lattice (same CRS, 10 m pixels, origin a whole number
of 10 m pixels from each asset's origin: the usual case, a window of an MGRS tile), the 10 m bands
are read as they are, and the 20 m bands and SCL are replicated on the exact 2x lattice in
compiled code (:mod:`pipeline.reading.kernels`; nearest, the default of
:class:`pipeline.reading.cube.MaskConfig`, or bilinear), from blocks decoded once per worker
(:mod:`pipeline.reading.blocks`). Scenes of one group are fused as odc-stac fuses them (sorted by
time then id, the first valid pixel wins); scaling, harmonisation and masking run in one compiled
pass over the integer DN; groups of one solar day are then fused as
:func:`pipeline.reading.cube.load_cube` fuses them.

Same result as :func:`pipeline.reading.cube.load_cube`, bit for bit (:data:`UPSAMPLE_TOLERANCE_DN` is 0,
pinned by ``tests/pipeline/reading/test_reading.py``, including GDAL's nodata rule of the bilinear kernel), and the
same offset warnings and :class:`pipeline.reading.cube.ReadFailure` on unreadable input. Any other grid
raises :class:`NotNative`, and :func:`pipeline.reading.load_reflectance` falls back to the
general warp (odc-stac).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.reading.blocks import BlockReader, block_reader, is_remote
from pipeline.stac.bands import BANDS, NATIVE_RESOLUTION, SCL, offset_contradiction
from pipeline.stac.bands import reflectance_scale_offset as _harmonisation

_log = logging.getLogger(__name__)

UPSAMPLE_TOLERANCE_DN = 0
"""Largest difference (DN) of a 2x-replicated 20 m band from GDAL 3.10's warp (measured)."""

OFFSET_CHECK_PX = 512 * 512
"""At most about this many pixels of a window feed its offset-plausibility check."""

_TOL = 1e-6  # metres: how close a GeoBox origin must be to an asset's lattice
_KERNELS = ("nearest", "bilinear")


class NotNative(Exception):
    """The target GeoBox is not on the scenes' own 10 m lattice (use the general warp)."""


@dataclass
class Reflectance:
    """Masked reflectance of one window."""

    values: np.ndarray
    """(time, band, y, x) float32 reflectance (0-1), NaN where nodata or masked."""
    times: np.ndarray
    """(time,) datetime64[ns]: the first scene's acquisition time of each solar day."""
    offset_warnings: dict[str, str] = field(default_factory=dict)
    """Scene id -> why its DN contradict the offset applied (:func:`offset_contradiction`)."""
    native: bool = True
    """Whether the native-grid fast path was used (else odc-stac's warp)."""


def _lattice_offset(geobox: Any, info: Any, same_crs: bool) -> tuple[int, int]:
    """(row, col) of the GeoBox's first pixel on the asset's origin-anchored 10 m lattice."""
    gt = geobox.transform
    at = info.transform
    if not same_crs:
        raise NotNative(f"CRS {geobox.crs} vs asset {info.crs}")
    if not (abs(gt.a - 10.0) < _TOL and abs(gt.e + 10.0) < _TOL and gt.b == 0 and gt.d == 0):
        raise NotNative(f"target pixels {gt.a} x {gt.e} m, not 10 m north-up")
    if at.b != 0 or at.d != 0 or abs(at.a + at.e) > _TOL or round(at.a) not in (10, 20):
        raise NotNative(f"asset pixels {at.a} x {at.e} m")
    col = (gt.c - at.c) / 10.0
    row = (at.f - gt.f) / 10.0
    if abs(col - round(col)) > _TOL or abs(row - round(row)) > _TOL:
        raise NotNative("target origin is not on the asset's 10 m lattice")
    return int(round(row)), int(round(col))


def _same_crs(reader: BlockReader, geobox: Any, href: str, info: Any) -> bool:
    """Whether ``href`` is in the GeoBox's CRS (compared once per reader, target CRS and file)."""
    key = (str(geobox.crs), href)
    same = reader.same_crs.get(key)
    if same is None:
        same = geobox.crs is not None and info.crs is not None and geobox.crs == info.crs
        if len(reader.same_crs) > 4 * reader.max_open:
            reader.same_crs.clear()
        reader.same_crs[key] = same
    return same


def _read_asset(
    reader: BlockReader,
    href: str,
    band: str,
    geobox: Any,
    resampling: str,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One asset's DN on ``geobox`` (uint16, SCL uint8); 0 outside the raster.

    ``out`` ((ny, nx) of the asset's dtype, any contents): written in full instead of a new array.
    """
    from pipeline.reading.cube import sign_on_read
    from pipeline.reading.kernels import upsample2x_bilinear, upsample2x_nearest

    url = None if reader.is_open(href) else sign_on_read(href)  # signed when opened
    info = reader.info(href, url)
    row, col = _lattice_offset(geobox, info, _same_crs(reader, geobox, href, info))
    ny, nx = geobox.shape
    res = int(round(info.transform.a))
    if out is not None and (out.shape != (ny, nx) or out.dtype != np.dtype(info.dtype)):
        out = None  # e.g. a provider's SCL stored as uint16: convert when fusing
    sr0, sc0, sh, sw = _source_window(reader, href, band, geobox, resampling, info)
    if res == 10:
        return reader.read(href, sr0, sc0, sh, sw, url, out=out)
    src = reader.read(href, sr0, sc0, sh, sw, url)
    if out is None:
        out = np.empty((ny, nx), dtype=src.dtype)
    if band == SCL or resampling == "nearest":
        upsample2x_nearest(src, sr0, sc0, row, col, out)
    else:
        if src.dtype != np.uint16:
            raise NotNative(f"{band} is {src.dtype}, the compiled path reads uint16")
        upsample2x_bilinear(src, sr0, sc0, row, col, out)
    return out


def _source_window(
    reader: BlockReader, href: str, band: str, geobox: Any, resampling: str, info: Any
) -> tuple[int, int, int, int]:
    """(row0, col0, height, width) of the asset's own pixels that ``geobox`` needs.

    Raises NotNative when the asset is not on the window's lattice or resolution.
    """
    row, col = _lattice_offset(geobox, info, _same_crs(reader, geobox, href, info))
    ny, nx = geobox.shape
    res = int(round(info.transform.a))
    if res != NATIVE_RESOLUTION[band]:
        raise NotNative(f"{band} at {res} m, expected {NATIVE_RESOLUTION[band]} m")
    if res == 10:
        return row, col, ny, nx
    # 20 m: the source pixels under the window (bilinear: one pixel of margin, which may sit in
    # the neighbouring block; nearest needs none, so no neighbour block is decoded for it).
    m = 0 if (band == SCL or resampling == "nearest") else 1
    sr0, sc0 = row // 2 - m, col // 2 - m
    return sr0, sc0, (row + ny - 1) // 2 + m - sr0 + 1, (col + nx - 1) // 2 + m - sc0 + 1


def _prefetch(reader: BlockReader, groups: list, geobox: Any, resampling: str) -> None:
    """Open every remote asset of the window's scenes and fetch the blocks it needs, many files
    in flight, each opened and read in one task (:meth:`BlockReader.fetch_many`): the serial
    assembly that follows then finds them in the cache. Failures are left to it (retried,
    classified). Local files are left to it too."""
    from pipeline.reading.cube import ReadFailure, sign_on_read

    if reader.threads <= 1:
        return
    jobs = []
    for _, members in groups:
        for _, it in members:
            for band in (*BANDS, SCL):
                href = it.assets[band].href
                if not is_remote(href):  # no latency to hide; threads only cost CPU (measured:
                    continue  # 1.43 vs 1.14 core-s/Mpx on local files, 2 loaded cores)
                try:
                    url = None if reader.is_open(href) else sign_on_read(href)
                except ReadFailure:
                    continue
                jobs.append((href, url, _window_of(reader, href, band, geobox, resampling)))
    reader.fetch_many(jobs)


def _window_of(reader: BlockReader, href: str, band: str, geobox: Any, resampling: str):
    """``info -> (row0, col0, height, width)`` of the asset's pixels ``geobox`` needs, or None
    when it is not on the native lattice (the serial path raises :class:`NotNative` then)."""

    def window(info: Any) -> tuple[int, int, int, int] | None:
        try:
            return _source_window(reader, href, band, geobox, resampling, info)
        except NotNative:
            return None

    return window


def group_items(items: list[Any]) -> list[tuple[tuple[Any, float, float], list[tuple[Any, Any]]]]:
    """Items grouped as :func:`pipeline.reading.cube.load_cube` groups them (solar day, scale, offset).

    Groups are sorted by key and each group's (nominal time, item) pairs by (time, id):
    odc-stac's order, so the first valid pixel of a group comes from the same scene.
    """
    import odc.stac

    from pipeline.reading.cube import STAC_CFG

    parsed = list(odc.stac.parse_items(items, cfg=STAC_CFG))
    keyed = []
    for it, p in zip(items, parsed, strict=True):
        h = _harmonisation(it)
        keyed.append(((p.solar_date.date(), h.scale, h.offset), p.nominal_datetime, p.id, it))
    keyed.sort(key=lambda k: k[:3])
    groups: list[tuple[tuple[Any, float, float], list[tuple[Any, Any]]]] = []
    for key, when, _, it in keyed:
        if groups and groups[-1][0] == key:
            groups[-1][1].append((when, it))
        else:
            groups.append((key, [(when, it)]))
    return groups


def _offset_warnings(dn, scl, masked, groups, seen: dict) -> dict[str, str]:
    """Scene id -> reason, for groups whose clear DN contradict their offset (as load_cube).

    A group is checked on the first window a reader loads it for; ``seen`` (the reader's) keeps
    the verdict, so a worker's later tiles of the same scenes reuse it (the check is about the
    scene's DN encoding, and over all clear pixels it cost more than the decode). Windows above
    :data:`OFFSET_CHECK_PX` pixels are checked on an even subsample (every ``step``-th row and
    column) of about that many pixels: the check's statistics (the share of DN below the offset,
    the 1 % quantile of the darkest band) need a sample, not a 1024 px window's million pixels.
    """
    out: dict[str, str] = {}
    ny, nx = dn.shape[-2:]
    step = max(1, int(np.ceil(np.sqrt(ny * nx / OFFSET_CHECK_PX))))
    for t, (key, members) in enumerate(groups):
        ids = tuple(it.id for _, it in members)
        if (ids, key) not in seen:
            d = dn[t][:, ::step, ::step]
            clear = (d != 0).all(axis=0) & ~masked[scl[t][::step, ::step]]
            reason = offset_contradiction(d[:, clear], key[2], key[1])
            if reason:
                _log.warning("scenes %s: %s", ", ".join(ids), reason)
            if clear.any():  # an all-cloud window says nothing: check again on the next one
                seen[(ids, key)] = reason
        else:
            reason = seen[(ids, key)]
        if reason:
            for sid in ids:
                out[sid] = reason
    return out


def _fuse_same_day(values: np.ndarray, groups: list) -> tuple[np.ndarray, list[int]]:
    """One step per solar day: later groups of a day fill the first group's NaN (as load_cube)."""
    days = [key[0] for key, _ in groups]
    if len(set(days)) == len(days):
        return values, list(range(len(days)))
    first: dict[Any, int] = {}
    keep: list[int] = []
    for t, day in enumerate(days):
        if day in first:
            dst = values[first[day]]
            np.copyto(dst, values[t], where=np.isnan(dst))
        else:
            first[day] = t
            keep.append(t)
    return values[keep], keep


def to_reflectance(
    dn: np.ndarray, scl: np.ndarray, groups: list, mask: Any, reader: BlockReader, work_buffer: bool
) -> Reflectance:
    """The window's DN of every acquisition, turned into masked, same-day-fused reflectance.

    Shared by every native reader (COG blocks, EOPF chunks): each group's scale and offset
    (``groups`` from :func:`group_items`), the SCL classes ``mask`` masks, the offset check
    against the DN (:func:`_offset_warnings`) and the fusion of one day's scenes.

    :param dn: (acquisitions, bands, y, x) uint16 DN; :param scl: (acquisitions, y, x) classes.
    :returns: :class:`Reflectance` of (days, bands, y, x) float32, NaN where masked.
    """
    from pipeline.reading.kernels import reflectance

    scale = np.array([k[1] for k, _ in groups], np.float32)
    offset = np.array([k[2] for k, _ in groups], np.float32)
    masked = np.zeros(256, np.bool_)
    if mask.use_scl:
        masked[list(mask.scl_classes)] = True
    values = (
        reader.scratch("values", dn.shape, np.dtype(np.float32))
        if work_buffer
        else np.empty(dn.shape, np.float32)
    )
    reflectance(dn, scl, scale, offset, masked, values)
    warnings = _offset_warnings(dn, scl, masked, groups, reader.offset_checks)
    values, keep = _fuse_same_day(values, groups)
    times = np.array([groups[t][1][0][0].replace(tzinfo=None) for t in keep], "datetime64[ns]")
    return Reflectance(values, times, warnings, native=True)


def load_native(
    items: Iterable[Any],
    geobox: Any,
    *,
    mask: Any = None,
    reader: BlockReader | None = None,
    work_buffer: bool = False,
) -> Reflectance:
    """Masked reflectance of canonical items on a native-lattice ``geobox``.

    Args:
        items: pystac Items whose assets are the canonical bands
            (:func:`pipeline.reading.cube.canonical_item`), all with every band and SCL.
        geobox: the target window: 10 m pixels on the scenes' UTM lattice.
        mask: :class:`pipeline.reading.cube.MaskConfig` (default masking when None).
        reader: the block reader (default: this process's :func:`block_reader`).
        work_buffer: write the values into this thread's work array of ``reader`` (reused by
            its next call with ``work_buffer``), not a new array: for callers that reduce them
            at once (:func:`pipeline.composite.window.composite_window`). A fresh (T, 10, 1024, 1024)
            float32 array is 0.5 GB of first-touch page faults per window.

    Returns:
        :class:`Reflectance`.

    Raises:
        NotNative: the grid needs a warp (different CRS, resolution or sub-pixel origin), or a
            resampling other than nearest/bilinear.
        pipeline.reading.cube.ReadFailure: a scene's file cannot be read (its id in ``scenes``).
    """
    from pipeline.reading.cube import MaskConfig, ReadFailure
    from pipeline.reading.kernels import fill_nodata

    mask = mask or MaskConfig()
    if mask.resampling not in _KERNELS:
        raise NotNative(f"{mask.resampling} resampling")
    reader = reader or block_reader()
    items = list(items)
    # The reader's converted items are the same objects tile after tile (load_reflectance):
    # group them once. The cached entry holds the items, so their ids cannot be reused.
    gkey = tuple(id(it) for it in items)
    hit = reader.groups.get(gkey)
    if hit is not None and all(a is b for a, b in zip(hit[0], items, strict=True)):
        groups = hit[1]
    else:
        groups = group_items(items)
        reader.groups[gkey] = (items, groups)
        while len(reader.groups) > 64:
            reader.groups.popitem(last=False)
    ny, nx = geobox.shape
    nt = len(groups)
    # The DN stay inside this call: reused from window to window (every pixel is written below).
    dn = reader.scratch("dn", (nt, len(BANDS), ny, nx), np.dtype(np.uint16))
    scl = reader.scratch("scl", (nt, ny, nx), np.dtype(np.uint8))
    failed: dict[str, ReadFailure] = {}  # every unreadable scene is named, not only the first
    _prefetch(reader, groups, geobox, mask.resampling)
    for t, (_, members) in enumerate(groups):
        for m, (_, it) in enumerate(members):
            for k, band in enumerate((*BANDS, SCL)):
                dst = scl[t] if band == SCL else dn[t, k]
                try:
                    # The group's first scene is read straight into place; later ones fill its
                    # nodata (odc-stac's fuse: the first valid pixel wins).
                    arr = _read_asset(
                        reader, it.assets[band].href, band, geobox, mask.resampling,
                        out=dst if m == 0 else None,
                    )  # fmt: skip
                except ReadFailure as exc:
                    failed[it.id] = exc  # raised below: the DN of this call are dropped
                    break
                if arr is not dst:
                    if m == 0:
                        dst[...] = 0
                    fill_nodata(dst, arr)
    if failed:
        first = next(iter(failed.values()))
        more = f" (and {len(failed) - 1} more scene(s))" if len(failed) > 1 else ""
        per_scene = {sid: {**e.to_dict(), "scenes": [sid]} for sid, e in failed.items()}
        raise ReadFailure(
            first.message + more, first.kind, first.status, list(failed), first.asset, per_scene
        )
    return to_reflectance(dn, scl, groups, mask, reader, work_buffer)
