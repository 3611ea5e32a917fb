"""Post-processing block by block (a gridded run's cells) gives exactly the whole-map result.

The oracle is :func:`pipeline.writers.postprocess.postprocess` on the mosaic of all blocks; the
maps are the demo generator's seeded landscape (parcels, forest, a river and a lake, so regions
cross many block edges) with speckle and nodata, cut into blocks of uneven sizes, with gaps of
nodata between some (cells of a coast), and with small regions built across a 4-block corner.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.testing.demo.landscape import make_landscape
from pipeline.writers.postprocess import postprocess
from pipeline.writers.postprocess_blocks import (
    BlockIO,
    apply_block,
    postprocess_blocks,
    resolve_pass,
    summarize_block,
)

N = 255


def _noisy_map(seed: int, shape: tuple[int, int], speckle: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = make_landscape(rng, shape, parcel_px=9.0).classes.copy()
    noise = rng.random(shape) < speckle
    c[noise] = rng.integers(0, 6, int(noise.sum()))
    c[rng.random(shape) < 0.02] = N  # cloud-gap pixels
    c[5:9, 20:26] = N  # and a patch of them
    return c


def _blocks(rows: list[int], cols: list[int]) -> list[tuple[slice, slice]]:
    """The lattice with the given row and column cut positions (first 0, last the edge)."""
    return [
        (slice(y0, y1), slice(x0, x1))
        for y0, y1 in zip(rows[:-1], rows[1:], strict=True)
        for x0, x1 in zip(cols[:-1], cols[1:], strict=True)
    ]


def _run_blocks(raw, blocks, majority, mmu):
    """Post-process ``raw`` block by block, the working map outside the blocks left nodata;
    also checks that a block is only ever read and written whole."""
    work = np.full(raw.shape, N, np.uint8)
    allowed = {(b[0].start, b[0].stop, b[1].start, b[1].stop) for b in blocks}

    def read(ys, xs):
        assert (ys.start, ys.stop, xs.start, xs.stop) in allowed
        return work[ys, xs].copy()

    def write(ys, xs, data):
        assert (ys.start, ys.stop, xs.start, xs.stop) in allowed
        work[ys, xs] = data

    io = BlockIO(read_raw=lambda ys, xs: raw[ys, xs].copy(), read=read, write=write)
    passes = postprocess_blocks(raw.shape, blocks, io, majority=majority, mmu=mmu)
    return work, passes


@pytest.mark.parametrize(
    ("majority", "mmu", "rows", "cols"),
    [
        (0, 12, [0, 17, 40, 41, 64], [0, 23, 24, 50, 80]),  # 1-px-wide blocks, uneven sizes
        (1, 9, [0, 16, 32, 48, 64], [0, 16, 32, 48, 64, 80]),  # a regular lattice
        (2, 30, [0, 33, 64], [0, 9, 57, 80]),
        (1, 0, [0, 10, 64], [0, 45, 80]),  # majority only
    ],
)
def test_blocks_give_the_whole_map_result(majority, mmu, rows, cols):
    raw = _noisy_map(1, (64, 80), speckle=0.15)
    want, _ = postprocess(raw, majority, mmu)
    got, passes = _run_blocks(raw, _blocks(rows, cols), majority, mmu)
    np.testing.assert_array_equal(got, want)
    assert ((got == N) == (raw == N)).all()  # nodata never filled
    assert (got != raw).any()
    if mmu:
        assert passes >= 2  # the merges chain over several passes
    # the test can tell: each block on its own gives another map
    alone = raw.copy()
    for ys, xs in _blocks(rows, cols):
        alone[ys, xs] = postprocess(raw[ys, xs], majority, mmu)[0]
    assert (alone != want).any()


def test_blocks_with_gaps_between_them():
    """Cells of a coast: blocks that leave nodata between them, touching only at corners too."""
    raw = _noisy_map(2, (60, 60), speckle=0.1)
    blocks = _blocks([0, 20, 40, 60], [0, 20, 40, 60])
    blocks = [b for i, b in enumerate(blocks) if i not in (1, 3)]  # a checkerboard-ish hole
    mask = np.zeros(raw.shape, bool)
    for ys, xs in blocks:
        mask[ys, xs] = True
    raw[~mask] = N
    want, _ = postprocess(raw, 1, 15)
    got, _ = _run_blocks(raw, blocks, 1, 15)
    np.testing.assert_array_equal(got, want)


def test_a_region_across_a_four_block_corner_is_one_region():
    """Two regions cross the corner where 4 blocks meet, each joined only diagonally there:
    class 2 (2 px top-left, 2 px bottom-right: 4 px, not under the MMU of 4, so it stays) and
    class 3 (1 px top-right, 1 px bottom-left: 2 px, so it joins the class-0 background). Block
    by block, the class-2 halves would be 2-px regions and vanish."""
    raw = np.zeros((8, 8), np.uint8)
    raw[2, 2] = raw[3, 3] = raw[4, 4] = raw[5, 5] = 2
    raw[3, 4] = raw[4, 3] = 3
    raw[7, 0] = N
    blocks = _blocks([0, 4, 8], [0, 4, 8])
    want, _ = postprocess(raw, 0, 4)
    got, _ = _run_blocks(raw, blocks, 0, 4)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got == 2, raw == 2)
    assert got[3, 4] == got[4, 3] == 0 and got[7, 0] == N
    # the global step sees one 4-px class-2 region and one 2-px class-3 region
    summaries = [summarize_block(raw[ys, xs], (ys, xs), raw.shape) for ys, xs in blocks]
    verdicts, changed = resolve_pass(summaries, raw.shape, 4)
    sizes = {
        int(c): int(v.size[s.node_class == c][0])
        for s, v in zip(summaries, verdicts, strict=True)
        for c in (2, 3)
        if (s.node_class == c).any()
    }
    assert sizes == {2: 4, 3: 2} and changed == 1
    # and a verdict must meet the block it was made for
    with pytest.raises(ValueError, match="summarised"):
        apply_block(np.zeros((4, 4), np.uint8), verdicts[0], 4)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_random_maps_and_random_cuts(seed):
    rng = np.random.default_rng(100 + seed)
    raw = _noisy_map(seed, (50, 70), speckle=float(rng.uniform(0.05, 0.4)))
    rows = [0, *sorted(rng.choice(np.arange(1, 50), 3, replace=False)), 50]
    cols = [0, *sorted(rng.choice(np.arange(1, 70), 4, replace=False)), 70]
    majority, mmu = int(rng.integers(0, 3)), int(rng.integers(2, 40))
    want, _ = postprocess(raw, majority, mmu)
    got, _ = _run_blocks(raw, _blocks(rows, cols), majority, mmu)
    np.testing.assert_array_equal(got, want)
