"""Tiling math: output grid, tile partition, AOI masks and seamless sliding-window blending."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from odc.geo.geobox import GeoBox
from shapely.geometry import Polygon, box

from aoi import to_crs
from pipeline.base.errors import UserError
from pipeline.grid.tiling import (
    TileGrid,
    aoi_mask,
    blend,
    blend_weights,
    chip_layout,
    grid_offset,
    halo_geobox,
    make_grid,
)

UTM = "EPSG:32632"
# ~3 x 2 km around (11.7E, 48.4N), deliberately not on any 10 m lattice.
AOI = to_crs(box(701_234.5, 5_362_101.3, 704_321.7, 5_364_089.9), "EPSG:4326", src=UTM)
# An L-shaped AOI: tiles in the empty quadrant must be dropped.
L_AOI = to_crs(
    Polygon(
        [(700_000, 5_360_000), (706_000, 5_360_000), (706_000, 5_362_000),
         (702_000, 5_362_000), (702_000, 5_366_000), (700_000, 5_366_000)]
    ),
    "EPSG:4326",
    src=UTM,
)  # fmt: skip


def _coverage(grid: TileGrid) -> np.ndarray:
    count = np.zeros(grid.shape, dtype=np.int32)
    for t in grid.tiles:
        count[t.window] += 1
    return count


def test_grid_is_snapped_outward_and_covers_the_aoi():
    grid = make_grid(AOI, UTM, 10, 64)
    a = grid.geobox.affine
    assert grid.geobox.crs == UTM and (a.a, a.e) == (10, -10)
    assert a.c % 10 == 0 and a.f % 10 == 0
    x0, y0, x1, y1 = to_crs(AOI, UTM).bounds
    gx0, gy0, gx1, gy1 = grid.geobox.boundingbox
    assert gx0 <= x0 < gx0 + 10 and gx1 - 10 < x1 <= gx1
    assert gy0 <= y0 < gy0 + 10 and gy1 - 10 < y1 <= gy1
    assert grid_offset(grid.geobox) == (10.0, round(-a.f / 10), round(a.c / 10))


@pytest.mark.parametrize("aoi", [AOI, L_AOI], ids=["rect", "L"])
def test_output_grid_is_independent_of_tile_size_and_tiles_partition_it(aoi):
    grids = [make_grid(aoi, UTM, 10, ts) for ts in (16, 50, 64, 256, 1000)]
    assert all(g.geobox == grids[0].geobox for g in grids)
    inside = aoi_mask(grids[0].geobox, aoi)
    assert inside.any()
    for g in grids:
        cov = _coverage(g)
        assert cov.max() == 1  # no overlaps
        assert (cov[inside] == 1).all()  # every AOI pixel lies in exactly one tile
        ids = [t.id for t in g.tiles]
        assert len(set(ids)) == len(ids) == len(g) == len(set(g.tiles))  # tiles are hashable
        assert ids == sorted(ids)
        for t in g.tiles:
            assert t.geobox == g.geobox[t.window]
            assert max(t.shape) <= g.tile_size
            assert t.window[0].start % g.tile_size == 0 and t.window[1].start % g.tile_size == 0
            assert g[t.id] is t


def test_rectangular_aoi_keeps_every_tile_and_l_shape_drops_the_empty_quadrant():
    g = make_grid(AOI, UTM, 10, 64)
    assert len(g) == g.lattice_shape[0] * g.lattice_shape[1]
    assert (_coverage(g) == 1).all()
    gl = make_grid(L_AOI, UTM, 10, 50)
    assert len(gl) < gl.lattice_shape[0] * gl.lattice_shape[1]
    # The dropped tiles are exactly those without AOI pixels.
    inside = aoi_mask(gl.geobox, L_AOI)
    kept = {t.id for t in gl.tiles}
    for r in range(gl.lattice_shape[0]):
        for c in range(gl.lattice_shape[1]):
            t = gl.tile(r, c)
            assert (t.id in kept) == bool(inside[t.window].any()), t.id


def test_aoi_mask_uses_pixel_centres():
    gbox = GeoBox((10, 10), Affine(10, 0, 700_000, 0, -10, 5_360_100), UTM)
    # The AOI covers x in [700_000, 700_036): centres at 5, 15, 25, 35 are inside.
    aoi = to_crs(box(700_000, 5_360_000, 700_036, 5_360_100), "EPSG:4326", src=UTM)
    m = aoi_mask(gbox, aoi)
    assert m.dtype == bool and m.shape == (10, 10)
    assert m[:, :4].all() and not m[:, 4:].any()
    far = to_crs(box(0, 0, 100, 100), "EPSG:4326", src=UTM)
    assert not aoi_mask(gbox, far).any()


def test_halo_geobox_is_the_same_grid_enlarged():
    g = make_grid(AOI, UTM, 10, 64).tiles[3].geobox
    h = halo_geobox(g, 8)
    assert h.shape == (g.shape[0] + 16, g.shape[1] + 16)
    assert h[8:-8, 8:-8] == g
    assert halo_geobox(g, 0) == g
    with pytest.raises(UserError):
        halo_geobox(g, -1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tile_size": 8}, "tile_size"),
        ({"tile_size": 64.5}, "tile_size"),
        ({"tile_size": 10**6}, "tile_size"),
        ({"resolution": 0}, "resolution"),
        ({"resolution": float("nan")}, "resolution"),
        ({"resolution": 0.001}, "tiles"),
        ({"geometry": Polygon()}, "empty"),
        ({"geometry": box(0, 0, 1, 1).boundary}, "polygon"),
        ({"crs": "EPSG:999999"}, "project"),
    ],
)
def test_make_grid_rejects_absurd_input(kwargs, match):
    args = {"geometry": AOI, "crs": UTM, "resolution": 10, "tile_size": 64} | kwargs
    with pytest.raises(UserError, match=match):
        make_grid(**args)


# --- sliding windows ------------------------------------------------------------------------


def _chip_probs(plan, seed: int, n_cls: int = 5) -> np.ndarray:
    """Class probabilities as a function of the chip's *global* id only, as a model would give."""
    rng = np.random.default_rng(seed)
    fj, fi, ph = (
        rng.uniform(0.1, 2.0, n_cls),
        rng.uniform(0.1, 2.0, n_cls),
        rng.uniform(0, 6, n_cls),
    )
    ids = plan.chip_ids.astype(np.float64)
    logits = 3 * np.sin(ids[:, :1] * fj + ids[:, 1:] * fi + ph)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _map(grid: TileGrid, window: int, stride: int, seed: int) -> np.ndarray:
    out = np.full((5, *grid.shape), np.nan, dtype=np.float32)
    for t in grid.tiles:
        plan = chip_layout(t.geobox, window, stride)
        out[(slice(None), *t.window)] = blend(_chip_probs(plan, seed), plan)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_blending_two_tilings_gives_the_same_map(seed):
    rng = np.random.default_rng(100 + seed)
    window = int(rng.choice([8, 16, 24]))
    stride = int(rng.integers(max(1, window // 4), window + 1))
    ts_a, ts_b = (int(v) for v in rng.choice([16, 23, 40, 64, 97], size=2, replace=False))
    grid_a = make_grid(AOI, UTM, 10, ts_a)
    grid_b = make_grid(AOI, UTM, 10, ts_b)
    a = _map(grid_a, window, stride, seed)
    b = _map(grid_b, window, stride, seed)
    assert np.isfinite(a).all()  # every pixel covered
    # Bit-identical, not just within 1e-6: every pixel sums the same chips in the same order.
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.sum(axis=0), 1.0, atol=1e-5)
    # And the whole grid as a single "tile" agrees too.
    whole = chip_layout(grid_a.geobox, window, stride)
    np.testing.assert_array_equal(blend(_chip_probs(whole, seed), whole), a)


def test_overlapping_regions_share_chips_and_values():
    other = to_crs(box(702_001.2, 5_361_500.0, 705_000.0, 5_363_000.0), "EPSG:4326", src=UTM)
    ga, gb = make_grid(AOI, UTM, 10, 64), make_grid(other, UTM, 10, 40)
    a, b = _map(ga, 16, 8, seed=7), _map(gb, 16, 8, seed=7)
    # Pixels on the shared lattice get the same values, whichever region mapped them.
    _, ra, ca = grid_offset(ga.geobox)
    _, rb, cb = grid_offset(gb.geobox)
    r0, c0 = max(ra, rb), max(ca, cb)
    r1 = min(ra + ga.shape[0], rb + gb.shape[0])
    c1 = min(ca + ga.shape[1], cb + gb.shape[1])
    assert r1 - r0 > 20 and c1 - c0 > 20
    np.testing.assert_array_equal(
        a[:, r0 - ra : r1 - ra, c0 - ca : c1 - ca], b[:, r0 - rb : r1 - rb, c0 - cb : c1 - cb]
    )


def test_chip_plan_geometry():
    g = GeoBox((37, 50), Affine(10, 0, 700_030, 0, -10, 5_360_070), UTM)  # global row -536007
    plan = chip_layout(g, 16, 8)
    _, gy, gx = grid_offset(plan.geobox)
    assert gy % 8 == 0 and gx % 8 == 0  # chips sit on the global stride lattice
    assert plan.geobox[plan.tile_window] == g
    assert hash(plan) == hash(chip_layout(g, 16, 8)) and plan == chip_layout(g, 16, 8)
    assert plan.n_chips == len(plan.offsets) == len(plan.chip_ids)
    # Every chip touches the tile, and every chip that touches the tile is included.
    ys, xs = plan.tile_window
    for r, c in plan.offsets:
        assert r < ys.stop and r + 16 > ys.start and c < xs.stop and c + 16 > xs.start
    assert plan.offsets[0].min() == 0
    # Margins hold exactly the chips reaching into the tile: [window - stride, window) pixels.
    for margin in (
        ys.start,
        xs.start,
        plan.geobox.shape[0] - ys.stop,
        plan.geobox.shape[1] - xs.stop,
    ):
        assert 8 <= margin < 16
    data = np.arange(3 * plan.geobox.shape[0] * plan.geobox.shape[1], dtype=np.float32).reshape(
        3, *plan.geobox.shape
    )
    chips = plan.extract(data)
    assert chips.shape == (plan.n_chips, 3, 16, 16)
    for i in (0, 5, plan.n_chips - 1):
        r, c = plan.offsets[i]
        np.testing.assert_array_equal(chips[i], data[:, r : r + 16, c : c + 16])
        assert plan.chip_geobox(i) == plan.geobox[r : r + 16, c : c + 16]


def test_blend_of_constant_probabilities_is_that_constant_and_nan_chips_are_skipped():
    g = GeoBox((20, 30), Affine(10, 0, 700_000, 0, -10, 5_360_000), UTM)
    plan = chip_layout(g, 12, 5)
    const = np.tile(np.array([0.1, 0.6, 0.3]), (plan.n_chips, 1))
    out = blend(const, plan)
    assert out.shape == (3, 20, 30) and out.dtype == np.float32
    np.testing.assert_allclose(out, const[0][:, None, None] * np.ones((3, 20, 30)), atol=1e-6)
    gappy = np.full_like(const, np.nan)
    gappy[plan.n_chips // 2] = const[0]  # one chip with data, the rest without
    out2 = blend(gappy, plan)
    covered = np.isfinite(out2[0])
    assert covered.any() and not covered.all()
    np.testing.assert_allclose(out2[:, covered], out[:, covered], atol=1e-6)
    assert np.isnan(blend(np.full_like(const, np.nan), plan)).all()


def test_blend_weights_smooth_and_strictly_positive():
    w = blend_weights(64)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert (w > 0).all() and w.max() <= 1
    np.testing.assert_allclose(w, w.T)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    assert w[31, 31] > w[0, 31] > w[0, 0]
    assert np.abs(np.diff(w, axis=0)).max() < 0.1  # no jumps


def test_chip_plan_rejects_bad_windows():
    g = GeoBox((20, 30), Affine(10, 0, 700_000, 0, -10, 5_360_000), UTM)
    with pytest.raises(UserError, match="stride"):
        chip_layout(g, 8, 9)
    with pytest.raises(ValueError, match="lattice"):
        chip_layout(GeoBox((5, 5), Affine(10, 0, 700_003, 0, -10, 5_360_000), UTM), 8, 4)
    with pytest.raises(ValueError, match="does not match"):
        chip_layout(g, 8, 4).extract(np.zeros((3, 3)))


# --- the odc-geo-backed grid keeps the catalogue's grids -----------------------------------------


@pytest.mark.parametrize(
    "name, tile_size, bounds, shape, n_tiles, lattice",
    [
        ("demo", 100, (600_000, 5_340_000, 602_000, 5_342_000), (200, 200), 4, (2, 2)),
        ("freising", 100, (681_280, 5_349_230, 725_580, 5_389_680), (4045, 4430), 1751, (41, 45)),
        ("freising", 1000, (681_280, 5_349_230, 725_580, 5_389_680), (4045, 4430), 22, (5, 5)),
        ("mgrs-32UPU", 1000, (600_000, 5_300_040, 709_800, 5_409_840), (10980, 10980), 121, (11, 11)),
        # EPSG:3035: snapped outward to whole 100 km cells of the EEA grid.
        ("luxembourg", 1000, (4_000_000, 2_900_000, 4_100_000, 3_100_000), (20000, 10000), 41, (20, 10)),
    ],
)  # fmt: skip
def test_catalogue_regions_keep_their_grids_and_tile_counts(
    name, tile_size, bounds, shape, n_tiles, lattice
):
    from aoi import load_region
    from pipeline.grid.cells import output_grid

    r = load_region(name)
    grid = output_grid(r.geometry, r.crs, r.resolution, tile_size)
    assert tuple(grid.geobox.boundingbox) == bounds
    assert grid.shape == shape and grid.resolution == 10.0
    assert (len(grid), grid.lattice_shape) == (n_tiles, lattice)
    last = grid.tiles[-1]
    assert grid.tile(last.row, last.col) == last  # the two tile constructions agree


def test_aoi_mask_of_freising_counts_its_pixels_the_same_whole_or_per_tile():
    from aoi import load_region

    r = load_region("freising")
    grid = make_grid(r.geometry, r.crs, r.resolution, 1000)
    whole = aoi_mask(grid.geobox, r.geometry)
    assert whole.shape == (4045, 4430) and int(whole.sum()) == 16_703_735
    for t in grid.tiles:  # per-tile masks clip the AOI first; they must match the whole mask
        assert (aoi_mask(t.geobox, r.geometry) == whole[t.window]).all(), t.id
