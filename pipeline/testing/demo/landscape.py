"""The synthetic landscape: land-cover truth, parcels and their clean reflectance on any date.

Parcels are a domain-warped Voronoi tessellation (field-sized, ~150 m). A smooth random field
places forest, a village of built-up parcels surrounds a centre inside the AOI, a lake and a river
are drawn on top, and the remaining parcels become cropland, grassland or bare soil. Each parcel
has a sub-type (broadleaf/conifer, cereal/maize, ...), a brightness factor (CV ~10 %), a phenology
shift (sd 5 d, within +-10 d) and, for grassland, mowing dates. Pixels get a static texture
(CV ~3 %, per band). Everything follows S2_REFERENCE_VALUES.md §2-§3 and is fully determined by
the seed and the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.testing.demo import spectra

CLASS_NAMES: tuple[str, ...] = ("water", "forest", "cropland", "grassland", "built-up", "bare")
WATER, FOREST, CROP, GRASS, BUILT, BARE = range(6)

# parcel sub-types -> spectra.spectrum kind
KINDS: tuple[str, ...] = (
    "water",
    "broadleaf",
    "conifer",
    "cereal",
    "maize",
    "grass",
    "built",
    "bare",
)
KIND_CLASS = {
    "water": WATER, "broadleaf": FOREST, "conifer": FOREST, "cereal": CROP, "maize": CROP,
    "grass": GRASS, "built": BUILT, "bare": BARE,
}  # fmt: skip


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (periodic, via FFT), standardised to mean 0, sd 1."""
    h, w = shape
    noise = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    out = np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(h, w))
    return ((out - out.mean()) / max(out.std(), 1e-12)).astype(np.float32)


@dataclass
class Landscape:
    """Truth and parcel attributes on a (height, width) 10 m grid."""

    classes: np.ndarray
    """(H, W) uint8 class index into :data:`CLASS_NAMES`."""
    parcel: np.ndarray
    """(H, W) int32 parcel id."""
    kind: np.ndarray
    """(P,) int index into :data:`KINDS` per parcel."""
    brightness: np.ndarray
    """(P,) multiplicative brightness factor."""
    shift: np.ndarray
    """(P,) phenology shift in days."""
    variant: np.ndarray
    """(P,) sub-type variant (water turbidity, bare-soil wetness)."""
    cuts: np.ndarray
    """(P, 4) mowing days of year for grassland parcels (NaN elsewhere)."""
    texture: np.ndarray
    """(10, H, W) float32 static per-pixel, per-band factor."""
    planted: np.ndarray | None = None
    """(H, W) bool, pixels of a planted material no class describes (None: none planted)."""
    planted_spectrum: np.ndarray | None = None
    """(10,) its reflectance (constant through the year, texture applied)."""

    def parcel_spectra(self, doy: float) -> np.ndarray:
        """(P, 10) clean parcel spectra on a day of year (brightness included, texture not)."""
        out = np.zeros((self.kind.size, 10), np.float32)
        for k, name in enumerate(KINDS):
            idx = np.flatnonzero(self.kind == k)
            if idx.size == 0:
                continue
            d = doy - self.shift[idx]
            variant = self.variant[idx]
            if name == "grass":
                variant = _mown_ndvi(d, self.cuts[idx])
            out[idx] = spectra.spectrum(name, d, variant)
        return out * self.brightness[:, None].astype(np.float32)

    def reflectance(self, doy: float) -> np.ndarray:
        """(10, H, W) float32 clean surface reflectance on a day of year."""
        spec = self.parcel_spectra(doy)  # (P, 10)
        refl = spec.T[:, self.parcel] * self.texture
        if self.planted is not None:
            refl[:, self.planted] = (
                self.planted_spectrum[:, None] * self.texture[:, self.planted]
            ).astype(np.float32)
        return refl

    def plant(self, material: str, box: tuple[int, int, int, int]) -> None:
        """Plant ``material`` (a row of :data:`spectra.ROWS`: ``glacier``, ``solar``) over the
        pixels ``box`` = (row0, col0, row1, col1); their truth class becomes 255 (none)."""
        if material not in ("glacier", "solar"):
            raise ValueError(f"unknown planted material {material!r}; choose glacier or solar")
        r0, c0, r1, c1 = box
        mask = np.zeros(self.classes.shape, bool)
        mask[r0:r1, c0:c1] = True
        self.planted = mask
        self.planted_spectrum = spectra.R[material]
        self.classes = np.where(mask, np.uint8(255), self.classes).astype(np.uint8)


def _mown_ndvi(doy: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """NDVI cap after mowing: 0.55 right after a cut, back to the seasonal value after 21 d."""
    cap = np.full(doy.shape, np.inf)
    base = spectra.ndvi_on("grass", doy)
    for j in range(cuts.shape[1]):
        since = doy - cuts[:, j]
        hit = (since >= 0) & (since < 21)
        val = 0.55 + (base - 0.55) * np.clip(since / 21.0, 0, 1)
        cap = np.where(hit, np.minimum(cap, val), cap)
    return cap


def make_landscape(
    rng: np.random.Generator,
    shape: tuple[int, int],
    core: tuple[int, int, int, int] | None = None,
    parcel_px: float = 15.0,
) -> Landscape:
    """Draw a landscape on a (H, W) grid of 10 m pixels.

    Args:
        rng: the random generator (the only source of randomness).
        shape: (H, W).
        core: (row0, col0, row1, col1) of the AOI inside the grid; the village and the lake are
            placed inside it so that every class appears in the AOI. Defaults to the whole grid.
        parcel_px: mean parcel spacing in pixels.
    """
    h, w = shape
    r0, c0, r1, c1 = core or (0, 0, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # domain-warped Voronoi parcels on a jittered grid
    wy = yy + 3.0 * smooth_noise(rng, shape, 6.0)
    wx = xx + 3.0 * smooth_noise(rng, shape, 6.0)
    gy = np.arange(-parcel_px / 2, h + parcel_px, parcel_px)
    gx = np.arange(-parcel_px / 2, w + parcel_px, parcel_px)
    sy, sx = np.meshgrid(gy, gx, indexing="ij")
    sy = (sy + rng.uniform(-0.4, 0.4, sy.shape) * parcel_px).ravel()
    sx = (sx + rng.uniform(-0.4, 0.4, sx.shape) * parcel_px * 1.6).ravel()  # elongated fields
    parcel = _nearest_seed(wy, wx, sy.astype(np.float32), sx.astype(np.float32))
    n = sy.size
    # forest: parcels whose centre lies where a large-scale field is high (~25 % of the area)
    macro = smooth_noise(rng, shape, max(h, w) / 8)
    cy = np.clip(sy, 0, h - 1).astype(int)
    cx = np.clip(sx, 0, w - 1).astype(int)
    kind = np.full(n, KINDS.index("cereal"))
    u = rng.random(n)
    kind[u < 0.45] = KINDS.index("grass")
    kind[(u >= 0.45) & (u < 0.52)] = KINDS.index("bare")
    kind[(u >= 0.52) & (u < 0.75)] = KINDS.index("maize")
    forest = macro[cy, cx] > np.quantile(macro, 0.72)
    kind[forest] = np.where(rng.random(forest.sum()) < 0.55, 1, 2)  # broadleaf / conifer
    # village: parcels within ~350 m of a centre in the AOI (80 % built-up, gardens as grassland)
    vy, vx = rng.uniform(r0 + 0.3 * (r1 - r0), r0 + 0.7 * (r1 - r0)), rng.uniform(c0, c1)
    village = np.hypot(sy - vy, sx - vx) < 35.0
    kind[village] = np.where(
        rng.random(village.sum()) < 0.8, KINDS.index("built"), KINDS.index("grass")
    )
    # make sure the AOI has bare soil and both crop types even on small grids
    in_core = (sy >= r0) & (sy < r1) & (sx >= c0) & (sx < c1) & ~village & ~forest
    for name in ("bare", "maize", "cereal", "grass"):
        if not np.any(kind[in_core] == KINDS.index(name)) and in_core.any():
            choices = np.flatnonzero(in_core & (kind != KINDS.index("built")))
            kind[rng.choice(choices)] = KINDS.index(name)
    if not np.isin(kind[(sy >= r0) & (sy < r1) & (sx >= c0) & (sx < c1)], (1, 2)).any():
        kind[np.flatnonzero(in_core)[:1]] = KINDS.index("broadleaf")
    # water: a lake inside the AOI, away from the village, and a meandering river
    water_id = n
    for _ in range(50):
        ly, lx = rng.uniform(r0 + 15, r1 - 15), rng.uniform(c0 + 20, c1 - 20)
        if np.hypot(ly - vy, lx - vx) > 55:
            break
    ay, ax = rng.uniform(9, 14), rng.uniform(14, 24)
    lake = ((yy - ly) / ay) ** 2 + ((xx - lx) / ax) ** 2 + 0.15 * smooth_noise(rng, shape, 4) < 1
    river_x = w * rng.uniform(0.15, 0.85) + 0.12 * w * np.sin(yy[:, 0] / h * 2 * np.pi * 1.3)
    river = np.abs(xx - river_x[:, None]) < 1.6
    parcel = np.where(lake, water_id, np.where(river, water_id + 1, parcel)).astype(np.int32)
    kind = np.concatenate([kind, [0, 0]])
    # compact ids (drop seeds that own no pixel)
    used, parcel = np.unique(parcel, return_inverse=True)
    parcel = parcel.reshape(shape).astype(np.int32)
    kind = kind[used]
    p = kind.size
    classes = np.array([KIND_CLASS[k] for k in KINDS], np.uint8)[kind][parcel]
    brightness = np.clip(rng.normal(1.0, 0.10, p), 0.75, 1.3)
    brightness[kind == 0] = np.clip(rng.normal(1.0, 0.05, (kind == 0).sum()), 0.9, 1.1)
    shift = np.clip(rng.normal(0.0, 5.0, p), -10, 10)
    variant = np.zeros(p)
    variant[kind == 0] = rng.uniform(0.0, 0.4, (kind == 0).sum())
    variant[kind == KINDS.index("bare")] = rng.uniform(
        -0.5, 0.5, (kind == KINDS.index("bare")).sum()
    )
    cuts = np.full((p, 4), np.nan)
    g = kind == KINDS.index("grass")
    first = rng.normal(142, 8, g.sum())
    gaps = rng.uniform(35, 56, (g.sum(), 3))
    cuts[g] = np.column_stack([first, first[:, None] + np.cumsum(gaps, axis=1)])
    texture = rng.normal(1.0, 0.03, (10, h, w)).astype(np.float32)
    texture *= 1.0 + 0.02 * smooth_noise(rng, shape, 1.5)[None]
    return Landscape(classes, parcel, kind, brightness, shift, variant, cuts, texture)


def _nearest_seed(y: np.ndarray, x: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """Index of the nearest seed for every pixel, checking only seeds within a local window."""
    h, w = y.shape
    out = np.empty((h, w), np.int32)
    best = np.full((h, w), np.inf, np.float32)
    block = 64
    for r in range(0, h, block):
        for c in range(0, w, block):
            yb, xb = y[r : r + block, c : c + block], x[r : r + block, c : c + block]
            near = np.flatnonzero(
                (sy > yb.min() - 40)
                & (sy < yb.max() + 40)
                & (sx > xb.min() - 50)
                & (sx < xb.max() + 50)
            )
            d = (yb[..., None] - sy[near]) ** 2 + (xb[..., None] - sx[near]) ** 2
            arg = d.argmin(axis=-1)
            out[r : r + block, c : c + block] = near[arg]
            best[r : r + block, c : c + block] = d.min(axis=-1)
    return out
