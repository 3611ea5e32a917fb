"""Post-processing a map held as blocks (a gridded run's 100 km cells), identical to
post-processing the whole map at once (:func:`pipeline.writers.postprocess.postprocess`), one
block in memory at a time.

The map is a (H, W) class raster of which only disjoint rectangular ``blocks`` hold valid pixels
(the rest is nodata). The blocks are read and written through callables (:class:`BlockIO`); the
functions here do no file I/O.

- **Majority filter.** A pixel's window reaches ``R`` pixels across a block edge, so each block
  is filtered with a halo of ``R`` pixels read from the raw classes around it and cropped: the
  same windows, the same votes, the same ties as on the whole map.
- **Minimum mapping unit.** Each pass of :func:`pipeline.writers.postprocess.sieve` is run block
  by block. A block's regions are labelled on their own (8-connectivity); a region that does not
  touch the block's border is whole (it and every neighbour of it are inside the block). The
  regions that touch the border (*boundary regions*) are the nodes of a small global graph: a
  union-find over the 8-adjacent border pixels of different blocks joins those of one class into
  one region, so every region's size is its size on the whole map, and each region's largest
  neighbour (largest area, then lowest class index) is reduced over all the blocks it lies in.
  Then each block applies the pass: a boundary region takes the global decision, a whole region
  the one made from its block with the global sizes of its neighbours. The passes repeat, as
  :func:`~pipeline.writers.postprocess.sieve` does, until one changes nothing (at most
  :data:`~pipeline.writers.postprocess.MAX_SIEVE_PASSES`). A region may span any number of
  blocks, so a block's result can depend on blocks far away: the passes need every block's raw
  classes, and nothing is final until the last pass.

Memory: one block at a time, about 20 bytes per pixel at the peak (measured with
``ru_maxrss`` on a 2,000 x 2,000 px block, 2026-12-07: 19.8 bytes per pixel for the majority
filter's window sums over the block and its halo, 8.1 for a sieve pass's labels; so about 2 GB
for a 100 km cell at 10 m), plus, for the whole map, a summary per block that grows with the
block's perimeter, not its area: its valid border pixels (16 bytes each), its boundary regions (48 bytes each with the
verdict) and the pairs of boundary regions adjacent inside it (16 bytes each; a pair needs two
regions that both reach the border). A 100 km cell at 10 m has at most 40,000 border pixels, so
at most 40,000 boundary regions: about 3 MB per cell besides the pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from pipeline.writers.postprocess import MAX_SIEVE_PASSES, label_regions, majority_filter
from pipeline.writers.tile_result import CLASS_NODATA

__all__ = [
    "BlockIO",
    "BlockSummary",
    "BlockVerdict",
    "Window",
    "apply_block",
    "postprocess_blocks",
    "resolve_pass",
    "summarize_block",
]

#: (rows, cols) of a block in the map's pixel grid.
Window = tuple[slice, slice]

# the 8 neighbours, as (dy, dx)
_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


@dataclass(frozen=True)
class BlockIO:
    """How :func:`postprocess_blocks` reads and writes the map (no I/O in this module).

    Attributes:
        read_raw: ``(rows, cols) -> (h, w) uint8`` raw classes of any window inside the map.
        read: ``(rows, cols) -> (h, w) uint8`` the working classes of a block.
        write: ``(rows, cols, (h, w) uint8) -> None`` overwrite the working classes of a block.
    """

    read_raw: Callable[[slice, slice], np.ndarray]
    read: Callable[[slice, slice], np.ndarray]
    write: Callable[[slice, slice, np.ndarray], None]


@dataclass(frozen=True)
class BlockSummary:
    """What the global step needs of one block's regions in one pass (perimeter-sized).

    Attributes:
        keys: (m,) int64 map keys ``(y + 1) * (W + 2) + x + 1`` of the block's valid border pixels.
        pixel_node: (m,) int64 node (index into the next arrays) of each of those pixels.
        node_size: (n,) int64 pixels of each boundary region inside this block.
        node_class: (n,) int64 class of each boundary region.
        best_size: (n,) int64 size of the largest neighbour of each boundary region among the
            block's whole regions (-1: none); ``best_class`` (n,) int64 its class.
        pairs: (p, 2) int64 nodes of boundary regions 8-adjacent inside the block (both orders).
    """

    keys: np.ndarray
    pixel_node: np.ndarray
    node_size: np.ndarray
    node_class: np.ndarray
    best_size: np.ndarray
    best_class: np.ndarray
    pairs: np.ndarray


@dataclass(frozen=True)
class BlockVerdict:
    """The global step's answer for one block's boundary regions (indexed like its summary).

    Attributes:
        size: (n,) int64 size of each boundary region on the whole map.
        new_class: (n,) int64 class each takes in this pass (its own when it stays).
    """

    size: np.ndarray
    new_class: np.ndarray


def _border_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local (row, col) of a (h, w) block's border pixels, once each, and their labels."""
    h, w = labels.shape
    ys = np.concatenate([np.zeros(w, np.int64), np.full(w, h - 1), np.arange(h), np.arange(h)])
    xs = np.concatenate([np.arange(w), np.arange(w), np.zeros(h, np.int64), np.full(h, w - 1)])
    _, first = np.unique(ys * w + xs, return_index=True)
    ys, xs = ys[first], xs[first]
    return ys, xs, labels[ys, xs]


@numba.njit(cache=True, nogil=True)
def _best_neighbours(
    labels: np.ndarray, size: np.ndarray, cls: np.ndarray, want: np.ndarray, allow: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each region ``a`` with ``want[a]``: the largest (then lowest-class) 8-adjacent region
    ``b != a`` with ``allow[b]``, as (size, class) arrays indexed by region id (-1: none)."""
    h, w = labels.shape
    n = size.shape[0]
    best_size = np.full(n, -1, np.int64)
    best_class = np.full(n, -1, np.int64)
    for y in range(h):
        for x in range(w):
            a = labels[y, x]
            if a == 0 or not want[a]:
                continue
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if yy < 0 or yy >= h or xx < 0 or xx >= w:
                        continue
                    b = labels[yy, xx]
                    if b == 0 or b == a or not allow[b]:
                        continue
                    s, c = size[b], cls[b]
                    if s > best_size[a] or (s == best_size[a] and c < best_class[a]):
                        best_size[a] = s
                        best_class[a] = c
    return best_size, best_class


def _boundary_pairs(labels: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    """(p, 2) unique label pairs, both orders, of 8-adjacent distinct boundary regions."""
    out = []
    for a, b in (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1, :], labels[1:, :]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    ):
        m = (a != b) & boundary[a] & boundary[b]
        p = np.stack([a[m], b[m]], axis=1).astype(np.int64)
        out += [p, p[:, ::-1]]
    pairs = np.concatenate(out)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def summarize_block(
    classes: np.ndarray, window: Window, shape: tuple[int, int], nodata: int = CLASS_NODATA
) -> BlockSummary:
    """Label a block's regions and keep what the global step needs (see :class:`BlockSummary`).

    Args:
        classes: (h, w) uint8 the block's current classes.
        window: the block's (rows, cols) in the (H, W) map ``shape``.
    """
    labels, region_class = label_regions(classes, nodata)
    size = np.bincount(labels.ravel(), minlength=len(region_class)).astype(np.int64)
    ys, xs, border = _border_labels(labels)
    valid = border > 0
    ys, xs, border = ys[valid], xs[valid], border[valid]
    node_label = np.unique(border)
    node_of = np.full(len(region_class), -1, np.int64)
    node_of[node_label] = np.arange(len(node_label))
    boundary = node_of >= 0
    whole = ~boundary
    whole[0] = False
    best_size, best_class = _best_neighbours(labels, size, region_class, boundary, whole)
    width = shape[1] + 2
    keys = (ys + window[0].start + 1) * width + xs + window[1].start + 1
    return BlockSummary(
        keys=keys.astype(np.int64),
        pixel_node=node_of[border],
        node_size=size[node_label],
        node_class=region_class[node_label],
        best_size=best_size[node_label],
        best_class=best_class[node_label],
        pairs=node_of[_boundary_pairs(labels, boundary)],
    )


@numba.njit(cache=True, nogil=True)
def _union_roots(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find: (n,) root of each node after joining a[i] with b[i] (roots: lowest node)."""
    parent = np.arange(n)
    for i in range(a.shape[0]):
        x, y = a[i], b[i]
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        while parent[y] != y:
            parent[y] = parent[parent[y]]
            y = parent[y]
        if x < y:
            parent[y] = x
        elif y < x:
            parent[x] = y
    for i in range(n):
        r = i
        while parent[r] != r:
            r = parent[r]
        parent[i] = r
    return parent


def _cross_block_pairs(
    summaries: Sequence[BlockSummary], offsets: np.ndarray, width: int
) -> np.ndarray:
    """(q, 2) global nodes of 8-adjacent border pixels of different blocks (both orders)."""
    keys = np.concatenate([s.keys for s in summaries])
    node = np.concatenate([s.pixel_node + o for s, o in zip(summaries, offsets[:-1], strict=True)])
    block = np.repeat(np.arange(len(summaries)), [len(s.keys) for s in summaries])
    order = np.argsort(keys, kind="stable")
    keys, node, block = keys[order], node[order], block[order]
    out = [np.empty((0, 2), np.int64)]
    if not len(keys):
        return out[0]
    for dy, dx in _OFFSETS:
        want = keys + dy * width + dx
        i = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        hit = (keys[i] == want) & (block[i] != block)
        out.append(np.stack([node[hit], node[i[hit]]], axis=1))
    return np.concatenate(out)


def resolve_pass(
    summaries: Sequence[BlockSummary], shape: tuple[int, int], mmu: int
) -> tuple[list[BlockVerdict], int]:
    """The global step of one sieve pass: join the boundary regions across block edges, size
    them on the whole map, and decide the class each small one takes (gdal_sieve's rule, as
    :func:`pipeline.writers.postprocess.sieve`: the largest 8-adjacent region, ties to the lower
    class index, taken only when it outranks the small one).

    Args:
        summaries: one :func:`summarize_block` per block of the (H, W) map ``shape``.
        mmu: minimum mapping unit in pixels.

    Returns:
        One :class:`BlockVerdict` per block, and the number of regions that change class.
    """
    offsets = np.cumsum([0] + [len(s.node_size) for s in summaries])
    n = int(offsets[-1])
    size = np.concatenate([s.node_size for s in summaries] + [np.zeros(0, np.int64)])
    cls = np.concatenate([s.node_class for s in summaries] + [np.zeros(0, np.int64)])
    cross = _cross_block_pairs(summaries, offsets, shape[1] + 2)
    same = cls[cross[:, 0]] == cls[cross[:, 1]]
    root = _union_roots(n, cross[same, 0], cross[same, 1])
    total = np.zeros(n, np.int64)
    np.add.at(total, root, size)
    # candidates (region root, neighbour size, neighbour class): the block's whole regions, then
    # boundary regions adjacent inside a block or across an edge
    inner = np.concatenate([s.pairs + o for s, o in zip(summaries, offsets[:-1], strict=True)])
    adjacent = np.concatenate([inner.reshape(-1, 2), cross[~same]])
    best_size = np.concatenate([s.best_size for s in summaries] + [np.zeros(0, np.int64)])
    best_class = np.concatenate([s.best_class for s in summaries] + [np.zeros(0, np.int64)])
    has = best_size >= 0
    r = np.concatenate([root[has], root[adjacent[:, 0]]])
    nb_size = np.concatenate([best_size[has], total[root[adjacent[:, 1]]]])
    nb_class = np.concatenate([best_class[has], cls[adjacent[:, 1]]])
    own_size, own_class = total[r], cls[r]
    keep = (own_size < mmu) & (
        (nb_size > own_size) | ((nb_size == own_size) & (nb_class < own_class))
    )
    r, nb_size, nb_class = r[keep], nb_size[keep], nb_class[keep]
    order = np.lexsort((nb_class, -nb_size, r))
    r, nb_class = r[order], nb_class[order]
    first = np.ones(len(r), bool)
    first[1:] = r[1:] != r[:-1]
    new_class = cls.copy()
    new_class[r[first]] = nb_class[first]
    verdicts = [
        BlockVerdict(size=total[root[a:b]], new_class=new_class[root[a:b]])
        for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]
    return verdicts, int(first.sum())


def apply_block(
    classes: np.ndarray, verdict: BlockVerdict, mmu: int, nodata: int = CLASS_NODATA
) -> tuple[np.ndarray, int]:
    """One sieve pass on a block: boundary regions take ``verdict``; each whole region under
    ``mmu`` pixels takes its largest outranking neighbour's class (neighbour sizes from the whole
    map). ``classes`` must be the block :func:`summarize_block` summarised for the verdict.

    Returns:
        (h, w) uint8 classes after the pass, and the number of whole regions that changed.
    """
    labels, region_class = label_regions(classes, nodata)
    size = np.bincount(labels.ravel(), minlength=len(region_class)).astype(np.int64)
    _, _, border = _border_labels(labels)
    node_label = np.unique(border[border > 0])
    if len(node_label) != len(verdict.size):
        raise ValueError("the block is not the one summarised for this verdict")
    size[node_label] = verdict.size
    new_class = region_class.copy()
    new_class[node_label] = verdict.new_class
    small = size < mmu
    small[0] = False
    small[node_label] = False
    valid = np.ones(len(size), bool)
    valid[0] = False
    best_size, best_class = _best_neighbours(labels, size, region_class, small, valid)
    decide = small & (
        (best_size > size) | ((best_size == size) & (best_class >= 0) & (best_class < region_class))
    )
    new_class[decide] = best_class[decide]
    return new_class.astype(np.uint8)[labels], int(decide.sum())


def _majority_block(
    io: BlockIO, window: Window, shape: tuple[int, int], radius: int, nodata: int
) -> np.ndarray:
    """The block's raw classes majority-filtered with a halo of ``radius`` px from around it."""
    ys, xs = window
    if radius <= 0:
        return np.asarray(io.read_raw(ys, xs), np.uint8).copy()
    y0, y1 = max(0, ys.start - radius), min(shape[0], ys.stop + radius)
    x0, x1 = max(0, xs.start - radius), min(shape[1], xs.stop + radius)
    raw = io.read_raw(slice(y0, y1), slice(x0, x1))
    out = majority_filter(raw, radius, nodata)
    return out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def postprocess_blocks(
    shape: tuple[int, int],
    blocks: Sequence[Window],
    io: BlockIO,
    majority: int = 0,
    mmu: int = 0,
    nodata: int = CLASS_NODATA,
) -> int:
    """Write into the working classes of every block the result of
    ``postprocess(raw, majority, mmu)[0]`` on the whole (H, W) map, one block at a time.

    Args:
        shape: (H, W) of the map.
        blocks: disjoint windows; every valid raw pixel lies in one of them (the rest is nodata).
        io: reads the raw classes (any window) and reads/writes the working classes (a block).
        majority: majority filter radius in pixels (0: off).
        mmu: minimum mapping unit in pixels (<= 1: off).

    Returns:
        The number of sieve passes run (the last changed nothing, unless the cap was reached).
    """
    if not blocks:
        return 0
    summaries = []
    for ys, xs in blocks:
        out = _majority_block(io, (ys, xs), shape, majority, nodata)
        io.write(ys, xs, out)
        if mmu > 1:
            summaries.append(summarize_block(out, (ys, xs), shape, nodata))
    if mmu <= 1:
        return 0
    for passes in range(1, MAX_SIEVE_PASSES + 1):
        verdicts, changed = resolve_pass(summaries, shape, mmu)
        for i, ((ys, xs), verdict) in enumerate(zip(blocks, verdicts, strict=True)):
            cur = np.asarray(io.read(ys, xs), np.uint8)
            out, n = apply_block(cur, verdict, mmu, nodata)
            changed += n
            if not np.array_equal(out, cur):
                io.write(ys, xs, out)
                summaries[i] = summarize_block(out, (ys, xs), shape, nodata)
        if not changed:
            return passes
    return MAX_SIEVE_PASSES
