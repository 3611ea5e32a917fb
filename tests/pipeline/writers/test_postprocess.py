"""The majority filter and the gdal_sieve-style minimum mapping unit, on small seeded arrays:
against a brute-force majority, against GDAL's own sieve (rasterio.features.sieve) where its
rule and ours must agree, and the rules GDAL leaves open (ties, nodata, passes)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.writers.postprocess import (
    label_regions,
    majority_filter,
    postprocess,
    sieve,
)

N = 255


def _brute_majority(c: np.ndarray, r: int) -> np.ndarray:
    h, w = c.shape
    out = c.copy()
    for y in range(h):
        for x in range(w):
            if c[y, x] == N:
                continue
            win = c[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            counts = np.bincount(win[win != N].ravel(), minlength=N)
            out[y, x] = int(np.argmax(counts))  # argmax: the first (lowest) class of the ties
    return out


@pytest.mark.parametrize("radius", [1, 2])
def test_majority_matches_brute_force_with_ties_to_the_lower_class(radius):
    rng = np.random.default_rng(radius)
    c = rng.integers(0, 4, (23, 31)).astype(np.uint8)
    c[rng.random(c.shape) < 0.1] = N
    got = majority_filter(c, radius)
    np.testing.assert_array_equal(got, _brute_majority(c, radius))
    assert ((got == N) == (c == N)).all()  # nodata neither filled nor created
    # a 2-2 tie in a 1-radius window at a corner goes to the lower class
    t = np.array([[3, 1], [3, 1]], np.uint8)
    np.testing.assert_array_equal(majority_filter(t, 1), [[1, 1], [1, 1]])


def test_regions_are_8_connected():
    c = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 2]], np.uint8)
    labels, region_class = label_regions(c)
    assert labels[0, 0] == labels[1, 1]  # diagonal neighbours: one region
    assert labels[0, 1] == labels[1, 0]  # the zeros around them too (diagonal through)
    assert len(region_class) - 1 == 3


def test_sieve_agrees_with_gdal_where_the_rules_coincide():
    """Large blocks with isolated specks (each speck inside one block): GDAL's sieve and ours
    both give each speck its block's class."""
    from rasterio.features import sieve as gdal_sieve

    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 5, (6, 6)), np.ones((20, 20), int)).astype(np.uint8)
    c = blocks.copy()
    ys, xs = rng.integers(2, 18, 60), rng.integers(2, 18, 60)
    by, bx = rng.integers(0, 6, 60), rng.integers(0, 6, 60)
    for y, x, i, j in zip(ys, xs, by, bx, strict=True):
        c[i * 20 + y, j * 20 + x] = (blocks[i * 20, j * 20] + 1) % 5
        if y % 2:  # some specks of 2 pixels
            c[i * 20 + y + 1, j * 20 + x] = c[i * 20 + y, j * 20 + x]
    ours = sieve(c, 5)
    theirs = gdal_sieve(c, 5, connectivity=8)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours, blocks)


def test_sieve_largest_neighbour_ties_nodata_and_islands():
    # a 1-px region of class 2 between a 6-px region of 0 and a 3-px region of 1: takes 0
    c = np.array(
        [
            [0, 0, 0, 1],
            [0, 2, 1, 1],
            [0, 0, N, N],
        ],
        np.uint8,
    )
    assert sieve(c, 2)[1, 1] == 0
    # equal neighbours (4 px each): the lower class index
    t = np.array([[3, 3, 2, 1, 1], [3, 3, 2, 1, 1]], np.uint8)
    got = sieve(t, 3)
    assert (got[:, 2] == 1).all() and (got[:, :2] == 3).all()
    # nodata is never filled, and an island in nodata stays
    isl = np.full((5, 5), N, np.uint8)
    isl[2, 2] = 4
    np.testing.assert_array_equal(sieve(isl, 10), isl)
    # two small regions never swap: the smaller joins the larger; the result has no region
    # under the MMU that has a neighbour
    pair = np.array([[5, 6, 6]], np.uint8)
    np.testing.assert_array_equal(sieve(pair, 10), [[6, 6, 6]])


def test_sieve_leaves_no_small_region_with_a_neighbour():
    rng = np.random.default_rng(3)
    c = rng.integers(0, 4, (40, 50)).astype(np.uint8)
    c[10:14, :] = N
    out = sieve(c, 12)
    assert ((out == N) == (c == N)).all()
    labels, _ = label_regions(out)
    size = np.bincount(labels.ravel())
    small = {int(i) for i in np.flatnonzero(size < 12) if i > 0}
    for i in small:  # a small region left is alone in its nodata-bounded strip
        m = labels == i
        grown = m.copy()
        grown[1:] |= m[:-1]
        grown[:-1] |= m[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        assert set(np.unique(labels[grown & ~m])) <= {0}


def test_postprocess_flags_exactly_the_changed_pixels():
    rng = np.random.default_rng(5)
    c = rng.integers(0, 3, (30, 30)).astype(np.uint8)
    c[:3] = N
    out, flag = postprocess(c, majority=1, mmu=6)
    assert ((flag == 1) == ((out != c) & (c != N))).all()
    assert ((flag == N) == (c == N)).all() and ((out == N) == (c == N)).all()
    assert flag[c != N].max() == 1  # it did change something
    same, none = postprocess(c)
    np.testing.assert_array_equal(same, c)
    assert (none[c != N] == 0).all()
