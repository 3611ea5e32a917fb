"""Post-processing of a class map: a majority filter and a minimum mapping unit (MMU). Pure numpy
(and a numba flood fill for the region labels: scipy is not a dependency), on the whole map at once, so the result does not depend on how the map was
tiled (regions are labelled across tile and cell edges).

Both leave nodata (255) as it is: a nodata pixel is never filled and never votes.

- :func:`majority_filter`: each valid pixel takes the most frequent class among the valid
  pixels of the (2R+1) x (2R+1) window centred on it (itself included); ties go to the lower
  class index.
- :func:`sieve`: the minimum mapping unit of gdal_sieve (GDAL's ``GDALSieveFilter``,
  https://gdal.org/en/stable/programs/gdal_sieve.html), on 8-connectivity: a region (a
  connected set of pixels of one class) smaller than ``mmu`` pixels takes the class of its
  largest neighbouring region by area (8-connected adjacency; ties to the lower class index).
  A region merges only into a neighbour that outranks it (larger, or as large with a lower
  class index), so two small regions never swap classes; the passes repeat until no region
  changes, each pass on the regions of the previous one. A small region with no valid
  neighbour (an island in nodata) stays.
"""

from __future__ import annotations

import numba
import numpy as np

from pipeline.writers.tile_result import CLASS_NODATA

__all__ = ["MAX_SIEVE_PASSES", "label_regions", "majority_filter", "postprocess", "sieve"]

#: Upper bound of sieve passes (each pass merges every small region that has an outranking
#: neighbour; a handful suffice in practice).
MAX_SIEVE_PASSES = 100


def _box_sum(mask: np.ndarray, r: int) -> np.ndarray:
    """(H, W) int32 count of True in the (2r+1)^2 window around each pixel (outside: False)."""
    h, w = mask.shape
    c = np.zeros((h + 1, w + 1), np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=c[1:, 1:])
    y0 = np.clip(np.arange(h) - r, 0, h)
    y1 = np.clip(np.arange(h) + r + 1, 0, h)
    x0 = np.clip(np.arange(w) - r, 0, w)
    x1 = np.clip(np.arange(w) + r + 1, 0, w)
    return c[np.ix_(y1, x1)] - c[np.ix_(y0, x1)] - c[np.ix_(y1, x0)] + c[np.ix_(y0, x0)]


def majority_filter(classes: np.ndarray, radius: int, nodata: int = CLASS_NODATA) -> np.ndarray:
    """(H, W) uint8 classes -> (H, W) uint8, each valid pixel the majority class of its window.

    Args:
        classes: class indices, ``nodata`` where there is no class.
        radius: window half-size in pixels (0: a copy).

    Ties go to the lower class index; nodata pixels stay nodata and never vote.
    """
    classes = np.asarray(classes, np.uint8)
    if radius <= 0:
        return classes.copy()
    valid = classes != nodata
    best = np.zeros(classes.shape, np.int32)
    out = classes.copy()
    for c in np.unique(classes[valid]):  # ascending: a later class must beat, not tie
        n = _box_sum(classes == c, radius)
        win = n > best
        best[win] = n[win]
        out[win & valid] = c
    return out


@numba.njit(cache=True, nogil=True)
def _flood_labels(classes: np.ndarray, nodata: int) -> tuple[np.ndarray, int]:
    """8-connected components of equal value (nodata: 0); ids 1.. in raster-scan order of each
    region's first pixel."""
    h, w = classes.shape
    labels = np.zeros((h, w), np.int32)
    stack = np.empty(h * w, np.int64)
    n = 0
    for y0 in range(h):
        for x0 in range(w):
            c = classes[y0, x0]
            if c == nodata or labels[y0, x0] != 0:
                continue
            n += 1
            labels[y0, x0] = n
            top = 0
            stack[0] = y0 * w + x0
            top = 1
            while top > 0:
                top -= 1
                y, x = stack[top] // w, stack[top] % w
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and labels[yy, xx] == 0:
                            if classes[yy, xx] == c:
                                labels[yy, xx] = n
                                stack[top] = yy * w + xx
                                top += 1
    return labels, n


def label_regions(classes: np.ndarray, nodata: int = CLASS_NODATA) -> tuple[np.ndarray, np.ndarray]:
    """8-connected regions of equal class: ((H, W) int32 region ids, 0 = nodata; (n+1,) class of
    each region id, nodata at 0)."""
    classes = np.ascontiguousarray(classes, np.uint8)
    labels, n = _flood_labels(classes, np.uint8(nodata))
    region_class = np.full(n + 1, nodata, np.int64)
    region_class[labels.ravel()] = classes.ravel()
    region_class[0] = nodata
    return labels, region_class


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """(M, 2) unique (region, neighbour) pairs, both orders, of 8-adjacent distinct regions."""
    pairs = []
    for a, b in (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([a[m], b[m]], axis=1))
    p = np.concatenate(pairs + [pairs_[:, ::-1] for pairs_ in pairs]).astype(np.int64)
    if not len(p):
        return p.reshape(0, 2)
    n = int(labels.max()) + 1
    key = np.unique(p[:, 0] * n + p[:, 1])
    return np.stack([key // n, key % n], axis=1)


def _sieve_pass(classes: np.ndarray, mmu: int, nodata: int) -> tuple[np.ndarray, int]:
    labels, region_class = label_regions(classes, nodata)
    size = np.bincount(labels.ravel(), minlength=len(region_class)).astype(np.int64)
    pairs = _adjacent_pairs(labels)
    if len(pairs) == 0:
        return classes, 0
    a, b = pairs[:, 0], pairs[:, 1]
    small = (size[a] < mmu) & (
        (size[b] > size[a]) | ((size[b] == size[a]) & (region_class[b] < region_class[a]))
    )
    a, b = a[small], b[small]
    if len(a) == 0:
        return classes, 0
    # per small region: the neighbour with the largest area, then the lowest class index
    order = np.lexsort((region_class[b], -size[b], a))
    a, b = a[order], b[order]
    first = np.ones(len(a), bool)
    first[1:] = a[1:] != a[:-1]
    new_class = region_class.copy()
    new_class[a[first]] = region_class[b[first]]
    return new_class[labels].astype(np.uint8), int(first.sum())


def sieve(classes: np.ndarray, mmu: int, nodata: int = CLASS_NODATA) -> np.ndarray:
    """(H, W) uint8 classes -> (H, W) uint8 with no region under ``mmu`` pixels that has an
    outranking neighbour (see the module docstring; gdal_sieve semantics, 8-connectivity).

    Args:
        classes: class indices, ``nodata`` where there is no class (never filled).
        mmu: minimum mapping unit in pixels (<= 1: a copy).
    """
    out = np.asarray(classes, np.uint8).copy()
    if mmu <= 1:
        return out
    for _ in range(MAX_SIEVE_PASSES):
        out, changed = _sieve_pass(out, mmu, nodata)
        if not changed:
            break
    return out


def postprocess(
    classes: np.ndarray, majority: int = 0, mmu: int = 0, nodata: int = CLASS_NODATA
) -> tuple[np.ndarray, np.ndarray]:
    """The majority filter (radius ``majority``), then the minimum mapping unit (``mmu``).

    Returns:
        (H, W) uint8 post-processed classes, and (H, W) uint8 flag: 1 where the class changed,
        0 where not, ``nodata`` where the map has no class.
    """
    raw = np.asarray(classes, np.uint8)
    out = majority_filter(raw, majority, nodata) if majority > 0 else raw.copy()
    if mmu > 1:
        out = sieve(out, mmu, nodata)
    flag = np.where(raw == nodata, nodata, (out != raw).astype(np.uint8)).astype(np.uint8)
    return out, flag
