"""EOPF Zarr Sentinel-2 L2A products on the native 10 m lattice, read with zarr-python 3.

The format read is :data:`pipeline.stac.eopf.EOPF_FORMAT` (Zarr v3, EOPF-CPM 3.x; a Zarr v2 sample
product with the same groups opens too): per scene one product, the bands as 2-D arrays
(:data:`pipeline.stac.eopf.EOPF_ARRAYS`) chunked 1830² (10 m) and 915² (20 m). A window reads
only the chunks it overlaps: zarr fetches each chunk object whole, one request each (over HTTP
with :class:`HttpStore`, a read-only zarr store on ``requests``), and decodes it whole (the
products are not sharded); decoded chunks stay in a per-process LRU cache (:data:`chunk_cache`,
``S2LC_BLOCK_CACHE_MB``) for the neighbouring tiles. The array metadata and the 1-D ``x``/``y``
coordinates are read once per product and process (:func:`open_product`, cached).

The result is the COG fast path's (:func:`pipeline.reading.native.load_native`), step by step:

* grouping by (solar day, scale, offset), odc-stac's order within a group, first valid pixel wins;
* scale and offset from the product's own array attributes (``scale_factor``, ``add_offset``;
  all 10 bands must agree), checked against the decoded DN
  (:func:`pipeline.stac.bands.offset_contradiction`, ``offset_warnings`` as for COGs). The STAC
  item's ``processing:version`` of an EOPF product is the EOPF processing version (``1.0.0``),
  not the Sentinel-2 baseline, so the item is not asked;
* 20 m bands and SCL to 10 m by the same compiled 2x kernels (nearest by default), the same SCL
  mask and nodata (DN 0 = the arrays' ``fill_value``), groups of one solar day fused.

A chunk that is absent from the store is the array's ``fill_value`` (0, nodata), as the Zarr v3
specification defines it; every other failure (an HTTP error status, a connection error, a chunk
that does not decode, missing metadata) is a :class:`pipeline.reading.failure.ReadFailure` naming
the scene, never "no observation". Targets off the products' lattice raise :class:`OffLattice`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from pipeline.base.errors import UserError
from pipeline.reading.failure import ReadFailure, classify_read_error
from pipeline.reading.native import NotNative, Reflectance, to_reflectance
from pipeline.stac.bands import BANDS, NATIVE_RESOLUTION, SCL, item_crs
from pipeline.stac.eopf import EOPF_FORMAT, EopfRef, eopf_ref

__all__ = [
    "EOPF_FORMAT",
    "ChunkCache",
    "EopfProduct",
    "OffLattice",
    "HttpStore",
    "chunk_cache",
    "clear_products",
    "load_eopf",
    "open_product",
]

_log = logging.getLogger(__name__)

MAX_PRODUCTS = 256
"""Opened products (array handles, grids, attributes) kept per process, LRU."""

HTTP_TIMEOUT_S = 60.0
_TOL = 1e-6


# -- store --------------------------------------------------------------------------------------
class HttpStore:
    """A read-only zarr-python 3 store over HTTP(S) GETs (``requests``), one object per request.

    ``get`` of an absent object (HTTP 404) returns None, which zarr reads as the fill value (the
    Zarr v3 rule for absent chunks); any other status >= 400 raises ``OSError`` whose message
    carries ``HTTP response code: <status>`` (:func:`pipeline.reading.failure.classify_read_error`
    reads it). Byte ranges become ``Range`` headers. Listing is not supported (not needed: the
    reader opens arrays by path).
    """

    def __new__(cls, url: str, *, timeout: float = HTTP_TIMEOUT_S):
        # Built lazily so zarr is imported only when an EOPF product is read.
        return _http_store_class()(url, timeout=timeout)


_STORE_CLASS: Any = None


def _http_store_class() -> Any:
    global _STORE_CLASS
    if _STORE_CLASS is not None:
        return _STORE_CLASS
    import requests
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest

    local = threading.local()

    def session() -> Any:
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
        return s

    class _HttpStore(Store):
        supports_writes = False
        supports_deletes = False
        supports_partial_writes = False
        supports_listing = False

        def __init__(self, url: str, *, timeout: float = HTTP_TIMEOUT_S) -> None:
            super().__init__(read_only=True)
            self.url = url.rstrip("/")
            self.timeout = timeout

        def __eq__(self, other: object) -> bool:
            return isinstance(other, _HttpStore) and other.url == self.url

        def __repr__(self) -> str:
            return f"HttpStore({self.url!r})"

        def _fetch(self, key: str, byte_range: Any) -> bytes | None:
            headers = {}
            if isinstance(byte_range, RangeByteRequest):
                headers["Range"] = f"bytes={byte_range.start}-{byte_range.end - 1}"
            elif isinstance(byte_range, OffsetByteRequest):
                headers["Range"] = f"bytes={byte_range.offset}-"
            elif isinstance(byte_range, SuffixByteRequest):
                headers["Range"] = f"bytes=-{byte_range.suffix}"
            url = f"{self.url}/{key}"
            try:
                resp = session().get(url, headers=headers, timeout=self.timeout)
            except requests.RequestException as exc:
                raise OSError(f"read error: {url}: {exc}") from None
            if resp.status_code == 404:
                return None
            if resp.status_code >= 400:
                raise OSError(f"HTTP response code: {resp.status_code} for {url}")
            return resp.content

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            data = await asyncio.to_thread(self._fetch, key, byte_range)
            return None if data is None else prototype.buffer.from_bytes(data)

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> list[Any]:
            return [await self.get(k, prototype, r) for k, r in key_ranges]

        async def exists(self, key: str) -> bool:
            return await asyncio.to_thread(self._fetch, key, None) is not None

        async def set(self, key: str, value: Any) -> None:
            raise NotImplementedError("HttpStore is read-only")

        async def delete(self, key: str) -> None:
            raise NotImplementedError("HttpStore is read-only")

        def list(self) -> Any:
            raise NotImplementedError("HttpStore cannot list")

        def list_prefix(self, prefix: str) -> Any:
            raise NotImplementedError("HttpStore cannot list")

        def list_dir(self, prefix: str) -> Any:
            raise NotImplementedError("HttpStore cannot list")

    _STORE_CLASS = _HttpStore
    return _HttpStore


def _store(root: str) -> Any:
    """The zarr store of a product root: :class:`HttpStore` for http(s), a local store otherwise."""
    from zarr.storage import LocalStore

    u = urlparse(root)
    if u.scheme in ("http", "https"):
        return HttpStore(root)
    if u.scheme in ("", "file"):
        return LocalStore(u.path if u.scheme == "file" else root, read_only=True)
    raise ReadFailure(f"cannot read EOPF product {root}: scheme {u.scheme!r} unsupported", "io")


# -- products -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A resolution group's lattice: pixel size and the outer corner of its first pixel."""

    res: float
    x0: float
    y0: float
    shape: tuple[int, int]


@dataclass
class EopfProduct:
    """One opened product: its band arrays, their grids and their scale/offset."""

    root: str
    arrays: dict[str, Any]
    """Canonical band (and SCL) -> ``zarr.Array``."""
    grids: dict[str, Grid]
    """Canonical band (and SCL) -> the grid of its resolution group."""
    crs: str | None
    scale: float
    offset: float
    """``scale_factor`` and ``add_offset`` of the 10 reflectance arrays (they agree)."""


_products: OrderedDict[str, EopfProduct] = OrderedDict()
_products_lock = threading.Lock()


def clear_products() -> None:
    """Forget the opened products and decoded chunks of this process (read again next time)."""
    with _products_lock:
        _products.clear()
    chunk_cache.clear()


def _grid(group: Any, path: str) -> Grid:
    """The lattice of the resolution group at ``path`` from its 1-D ``x``/``y`` pixel centres."""
    x = np.asarray(group[f"{path}/x"][...], np.float64)
    y = np.asarray(group[f"{path}/y"][...], np.float64)
    if x.size < 2 or y.size < 2:
        raise ReadFailure(f"{path}: x/y have fewer than 2 coordinates", "corrupt")
    res = float(x[1] - x[0])
    if res <= 0 or abs((y[0] - y[1]) - res) > 1e-3 or np.abs(np.diff(x) - res).max() > 0.5:
        raise ReadFailure(f"{path}: x/y are not a regular north-up grid", "corrupt")
    return Grid(res, float(x[0] - res / 2), float(y[0] + res / 2), (y.size, x.size))


def _product_crs(group: Any) -> str | None:
    attrs = dict(group.attrs)
    props = (attrs.get("stac_discovery") or {}).get("properties") or {}
    if props.get("proj:code"):
        return str(props["proj:code"])
    if props.get("proj:epsg"):
        return f"EPSG:{int(props['proj:epsg'])}"
    code = (attrs.get("other_metadata") or {}).get("horizontal_CRS_code")
    return str(code) if code else None


def open_product(ref: EopfRef, item: Any = None) -> EopfProduct:
    """The product at ``ref.root`` opened once per process (array metadata and grids fetched).

    The CRS comes from the STAC item (``proj:code``/``proj:epsg``) when it has one, else from the
    product's root attributes (one more request: the root metadata holds all product metadata).

    Raises:
        ReadFailure: metadata missing or unreadable, grids irregular, or the reflectance arrays'
            ``scale_factor``/``add_offset`` disagree.
    """
    import zarr

    with _products_lock:
        hit = _products.get(ref.root)
        if hit is not None:
            _products.move_to_end(ref.root)
            return hit
    ident = getattr(item, "id", None) or ref.root
    try:
        store = _store(ref.root)
        arrays = {b: zarr.open_array(store, path=p, mode="r") for b, p in ref.arrays.items()}
        root = None
        crs = item_crs(item) if item is not None else None
        if crs is None:
            root = zarr.open_group(store, mode="r")
            crs = _product_crs(root)
        node = zarr.open_group(store, mode="r", zarr_format=arrays[SCL].metadata.zarr_format)
        grids: dict[str, Grid] = {}
        by_group: dict[str, Grid] = {}
        for band, path in ref.arrays.items():
            parent = path.rsplit("/", 1)[0]
            if parent not in by_group:
                by_group[parent] = _grid(node, parent)
            grids[band] = by_group[parent]
    except ReadFailure as exc:
        raise ReadFailure(f"{ref.root}: {exc.message}", exc.kind, exc.status, [ident]) from None
    except Exception as exc:  # noqa: BLE001 - any failure to read the metadata is lost input
        failure = classify_read_error(exc, [ident]) if isinstance(exc, OSError) else None
        if failure is None:
            failure = ReadFailure(
                f"unreadable EOPF product {ref.root}: {type(exc).__name__}: {exc}"[:400],
                "corrupt",
                None,
                [ident],
            )
        raise failure from None
    pairs = set()
    for band in BANDS:
        a = arrays[band].attrs
        pairs.add((float(a.get("scale_factor", 1.0)), float(a.get("add_offset", 0.0))))
    if len(pairs) != 1:
        raise ReadFailure(
            f"{ref.root}: the reflectance arrays disagree on scale_factor/add_offset {sorted(pairs)}",
            "corrupt",
            None,
            [ident],
        )
    scale, offset = pairs.pop()
    product = EopfProduct(ref.root, arrays, grids, crs, scale, offset)
    _log.debug("opened %s (%s, %s, scale %g offset %g)", ref.root, EOPF_FORMAT, crs, scale, offset)
    with _products_lock:
        _products[ref.root] = product
        while len(_products) > MAX_PRODUCTS:
            _products.popitem(last=False)
    return product


# -- windows ------------------------------------------------------------------------------------
class ChunkCache:
    """Decoded chunks of this process, LRU, bounded in bytes (``S2LC_BLOCK_CACHE_MB``, the COG
    block cache's budget). A 1830² chunk is 7 times a 256 px tile's edge squared: without the
    cache every tile would fetch and decode its chunks again (measured 3.6x the COG path's CPU
    at 256 px tiles). Counters ``decoded`` and ``hits`` count chunks."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.decoded = self.hits = 0

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            arr = self._chunks.get(key)
            if arr is not None:
                self._chunks.move_to_end(key)
                self.hits += 1
            return arr

    def put(self, key: tuple, arr: np.ndarray) -> None:
        with self._lock:
            old = self._chunks.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._chunks[key] = arr
            self._nbytes += arr.nbytes
            self.decoded += 1
            while self._nbytes > self.max_bytes and len(self._chunks) > 1:
                _, dropped = self._chunks.popitem(last=False)
                self._nbytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._nbytes = 0


def _cache_bytes() -> int:
    import os

    from pipeline.reading.blocks import CACHE_ENV, DEFAULT_CACHE_MB

    try:
        return int(float(os.environ.get(CACHE_ENV, DEFAULT_CACHE_MB)) * 2**20)
    except ValueError:
        return DEFAULT_CACHE_MB * 2**20


chunk_cache = ChunkCache(_cache_bytes())
"""This process's decoded-chunk cache (:class:`ChunkCache`)."""


def _fetch(arr: Any, i0: int, i1: int, j0: int, j1: int, ident: str) -> np.ndarray:
    """Chunks [i0, i1] x [j0, j1] of ``arr`` decoded (zarr fetches them concurrently)."""
    try:
        return np.asarray(arr.blocks[i0 : i1 + 1, j0 : j1 + 1])
    except Exception as exc:  # noqa: BLE001 - a chunk that cannot be fetched or decoded
        failure = classify_read_error(exc, [ident]) if isinstance(exc, OSError) else None
        if failure is None:
            failure = ReadFailure(
                f"unreadable chunk of {arr.path} in {ident}: {type(exc).__name__}: {exc}"[:400],
                "corrupt",
                None,
                [ident],
            )
        raise failure from None


def _window(arr: Any, key: tuple, r0: int, c0: int, h: int, w: int, ident: str) -> np.ndarray:
    """``arr[r0:r0+h, c0:c0+w]`` with 0 outside the array, from whole decoded chunks: only the
    chunks the window overlaps are read, each once per process while it stays in
    :data:`chunk_cache` (``key`` names the array there)."""
    ny, nx = arr.shape
    ch, cw = arr.chunks
    out = np.zeros((h, w), dtype=arr.dtype)
    ra, rb, ca, cb = max(r0, 0), min(r0 + h, ny), max(c0, 0), min(c0 + w, nx)
    if ra >= rb or ca >= cb:
        return out
    need = [(i, j) for i in range(ra // ch, (rb - 1) // ch + 1)
            for j in range(ca // cw, (cb - 1) // cw + 1)]  # fmt: skip
    got = {ij: chunk_cache.get((*key, *ij)) for ij in need}
    missing = [ij for ij, a in got.items() if a is None]
    if missing:
        i0, i1 = min(i for i, _ in missing), max(i for i, _ in missing)
        j0, j1 = min(j for _, j in missing), max(j for _, j in missing)
        block = _fetch(arr, i0, i1, j0, j1, ident)
        single = i0 == i1 and j0 == j1
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                part = block[(i - i0) * ch : (i - i0 + 1) * ch, (j - j0) * cw : (j - j0 + 1) * cw]
                part = part if single else np.ascontiguousarray(part)
                chunk_cache.put((*key, i, j), part)
                if (i, j) in got:
                    got[(i, j)] = part
    for (i, j), chunk in got.items():
        ya, yb = max(ra, i * ch), min(rb, (i + 1) * ch)
        xa, xb = max(ca, j * cw), min(cb, (j + 1) * cw)
        out[ya - r0 : yb - r0, xa - c0 : xb - c0] = chunk[ya - i * ch : yb - i * ch,
                                                          xa - j * cw : xb - j * cw]  # fmt: skip
    return out


def _lattice(geobox: Any, grid: Grid, crs_same: bool) -> tuple[int, int]:
    """(row, col) of the GeoBox's first pixel on the grid's origin-anchored 10 m lattice."""
    gt = geobox.transform
    if not crs_same:
        raise NotNative(f"CRS {geobox.crs} is not the product's")
    if not (abs(gt.a - 10.0) < _TOL and abs(gt.e + 10.0) < _TOL and gt.b == 0 and gt.d == 0):
        raise NotNative(f"target pixels {gt.a} x {gt.e} m, not 10 m north-up")
    col = (gt.c - grid.x0) / 10.0
    row = (grid.y0 - gt.f) / 10.0
    if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
        raise NotNative("target origin is not on the product's 10 m lattice")
    return int(round(row)), int(round(col))


def _read_band(
    product: EopfProduct, band: str, geobox: Any, resampling: str, crs_same: bool, ident: str
) -> np.ndarray:
    """One band's DN on ``geobox`` (uint16, SCL uint8); 0 outside the product."""
    from pipeline.reading.kernels import upsample2x_bilinear, upsample2x_nearest

    grid = product.grids[band]
    res = int(round(grid.res))
    if res != NATIVE_RESOLUTION[band]:
        raise NotNative(f"{band} at {res} m, expected {NATIVE_RESOLUTION[band]} m")
    row, col = _lattice(geobox, grid, crs_same)
    ny, nx = geobox.shape
    arr = product.arrays[band]
    key = (product.root, band)
    if res == 10:
        return _window(arr, key, row, col, ny, nx, ident)
    m = 0 if (band == SCL or resampling == "nearest") else 1
    sr0, sc0 = row // 2 - m, col // 2 - m
    sh, sw = (row + ny - 1) // 2 + m - sr0 + 1, (col + nx - 1) // 2 + m - sc0 + 1
    src = _window(arr, key, sr0, sc0, sh, sw, ident)
    if band == SCL and src.dtype != np.uint8:  # a CPM bug stored SCL as a wider integer
        src = src.astype(np.uint8)
    out = np.empty((ny, nx), dtype=src.dtype)
    if band == SCL or resampling == "nearest":
        upsample2x_nearest(src, sr0, sc0, row, col, out)
    else:
        upsample2x_bilinear(src, sr0, sc0, row, col, out)
    return out


def _groups(items: list[Any], products: dict[str, EopfProduct]) -> list:
    """(solar day, scale, offset) groups as :func:`pipeline.reading.native.group_items` makes
    them, with the scale and offset of each item's product; odc-stac parses the solar day."""
    import odc.stac

    from pipeline.reading.cube import STAC_CFG
    from pipeline.stac.eopf import eopf_canonical_item

    parsed = list(odc.stac.parse_items([eopf_canonical_item(it) for it in items], cfg=STAC_CFG))
    keyed = []
    for it, p in zip(items, parsed, strict=True):
        prod = products[it.id]
        key = (p.solar_date.date(), prod.scale, prod.offset)
        keyed.append((key, p.nominal_datetime, p.id, it))
    keyed.sort(key=lambda k: k[:3])
    groups: list = []
    for key, when, _, it in keyed:
        if groups and groups[-1][0] == key:
            groups[-1][1].append((when, it))
        else:
            groups.append((key, [(when, it)]))
    return groups


class OffLattice(UserError):
    """A target grid that is not the EOPF products' own 10 m lattice (no warp for Zarr yet)."""


def load_eopf(
    items: Iterable[Any],
    geobox: Any,
    *,
    mask: Any = None,
    reader: Any = None,
    work_buffer: bool = False,
) -> Reflectance:
    """Masked reflectance (time, band, y, x) of EOPF Zarr items on a native-lattice ``geobox``.

    Args:
        items: pystac Items or item dicts whose assets are EOPF products or arrays in them
            (:func:`pipeline.stac.eopf.is_eopf_item`).
        geobox: the target window: 10 m pixels on the products' UTM lattice.
        mask: :class:`pipeline.reading.cube.MaskConfig` (default masking when None).
        reader: a :class:`pipeline.reading.blocks.BlockReader` for its work arrays and offset
            verdicts (default: this process's).
        work_buffer: as :func:`pipeline.reading.native.load_native`.

    Returns:
        :class:`pipeline.reading.native.Reflectance`: (T, 10, ny, nx) float32 reflectance (0-1),
        NaN where nodata or masked; ``native`` is True.

    Raises:
        OffLattice: the grid is not the products' 10 m lattice (another CRS, resolution or a
            sub-pixel origin) or the resampling is not nearest/bilinear.
        UserError: EOPF and COG items in one window.
        ReadFailure: a product's metadata or a chunk cannot be read (every failed scene named).
    """
    try:
        return _load_eopf(items, geobox, mask=mask, reader=reader, work_buffer=work_buffer)
    except NotNative as exc:
        raise OffLattice(
            f"EOPF Zarr products are read on their own 10 m UTM lattice only ({exc}): map in "
            "the products' UTM zone on a 10 m grid"
        ) from None


def _load_eopf(
    items: Iterable[Any],
    geobox: Any,
    *,
    mask: Any = None,
    reader: Any = None,
    work_buffer: bool = False,
) -> Reflectance:
    """:func:`load_eopf` without turning :class:`NotNative` into :class:`OffLattice`."""
    from pipeline.reading.blocks import block_reader
    from pipeline.reading.cube import MaskConfig
    from pipeline.reading.kernels import fill_nodata

    mask = mask or MaskConfig()
    if mask.resampling not in ("nearest", "bilinear"):
        raise NotNative(f"{mask.resampling} resampling")
    reader = reader or block_reader()
    items, groups = _prepared(list(items), reader)
    failed: dict[str, ReadFailure] = {}
    products: dict[str, EopfProduct] = {}
    for it in items:
        try:
            products[it.id] = open_product(eopf_ref(it), it)
        except ReadFailure as exc:
            failed[it.id] = exc
    _raise_failed(failed)
    if groups is None:  # a worker's tiles share their scenes: group them once
        groups = _groups(items, products)
        reader.items[_key(items)] = (items, groups)
    ny, nx = geobox.shape
    nt = len(groups)
    dn = reader.scratch("eopf_dn", (nt, len(BANDS), ny, nx), np.dtype(np.uint16))
    scl = reader.scratch("eopf_scl", (nt, ny, nx), np.dtype(np.uint8))
    target_crs = str(geobox.crs) if geobox.crs is not None else None
    for t, (_, members) in enumerate(groups):
        for m, (_, it) in enumerate(members):
            prod = products[it.id]
            same = prod.crs is not None and target_crs is not None and _same_crs(prod.crs, geobox)
            for k, band in enumerate((*BANDS, SCL)):
                dst = scl[t] if band == SCL else dn[t, k]
                try:
                    arr = _read_band(prod, band, geobox, mask.resampling, same, it.id)
                except ReadFailure as exc:
                    failed[it.id] = exc
                    break
                if m == 0:
                    dst[...] = arr
                else:
                    fill_nodata(dst, arr.astype(dst.dtype, copy=False))
    _raise_failed(failed)
    return to_reflectance(dn, scl, groups, mask, reader, work_buffer)


def _key(items: list[Any]) -> tuple:
    from pipeline.reading import _fingerprint

    return ("eopf", *(_fingerprint(it) for it in items))


def _prepared(items: list[Any], reader: Any) -> tuple[list[Any], list | None]:
    """The items as pystac Items and their groups if this reader has seen them (else None).

    Raises:
        UserError: some items are EOPF products and others are not (one layout per window).
    """
    import pystac

    from pipeline.base.errors import UserError
    from pipeline.stac.eopf import is_eopf_item

    key = _key(items)
    hit = reader.items.get(key)
    if hit is not None:
        reader.items.move_to_end(key)
        return hit[0], hit[1]
    if not all(is_eopf_item(it) for it in items):
        raise UserError("EOPF Zarr and COG items in one window: read one provider layout at a time")
    conv = [it if isinstance(it, pystac.Item) else pystac.Item.from_dict(it) for it in items]
    reader.items[key] = (conv, None)
    while len(reader.items) > 64:
        reader.items.popitem(last=False)
    return conv, None


_crs_cache: dict[tuple[str, str], bool] = {}


def _same_crs(code: str, geobox: Any) -> bool:
    key = (code, str(geobox.crs))
    same = _crs_cache.get(key)
    if same is None:
        from odc.geo.crs import CRS

        same = _crs_cache[key] = CRS(code) == geobox.crs
    return same


def _raise_failed(failed: dict[str, ReadFailure]) -> None:
    if not failed:
        return
    first = next(iter(failed.values()))
    more = f" (and {len(failed) - 1} more scene(s))" if len(failed) > 1 else ""
    raise ReadFailure(first.message + more, first.kind, first.status, list(failed))
