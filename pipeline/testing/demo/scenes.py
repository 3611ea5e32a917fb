"""One synthetic L2A acquisition: clouds, shadows, cirrus, snow, swath edge, and a consistent SCL.

Clouds are thresholded smooth random fields at 20 m (the SCL resolution), so every cloudy 10 m
pixel lies in a cloudy SCL pixel. The cloud fraction is the scene's draw from
Beta(m k, (1 - m) k) with the monthly climatology m (S2_REFERENCE_VALUES.md §5); cores are SCL 9,
rims SCL 8 (blended with the ground), shadows SCL 3 are the cloud mask displaced away from the sun
and darken the ground band-wise (§1.2), thin cirrus SCL 10 adds a smooth haze, and a partial-swath
scene has DN 0 / SCL 0 in a corner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.testing.demo import spectra
from pipeline.testing.demo.landscape import BARE, CROP, GRASS, WATER, Landscape, smooth_noise

CLOUD_PROXY = (0.76, 0.70, 0.66, 0.57, 0.53, 0.57, 0.52, 0.52, 0.58, 0.64, 0.76, 0.80)
"""Monthly mean cloud fraction (1 - relative sunshine), §5."""
SUN_ELEVATION = (16, 24, 34, 45, 54, 58, 56, 49, 39, 27, 18, 14)
"""Sun elevation (degrees) at the 10:30 overpass, 50°N, mid-month, §4."""
SUN_AZIMUTH = 155.0
"""Approximate solar azimuth (degrees from north) at 10:30 local solar time."""


@dataclass(frozen=True)
class SceneSpec:
    """What happens in one acquisition."""

    cloud_fraction: float
    """Fraction of the scene under cloud (SCL 8/9)."""
    cirrus: bool = False
    """Add a thin-cirrus layer (SCL 10)."""
    snow: bool = False
    """Snow on open land (SCL 11)."""
    partial_swath: bool = False
    """Leave a corner outside the swath (DN 0, SCL 0)."""
    defects: bool = False
    """Inject a few saturated/defective pixels (SCL 1)."""


def draw_specs(rng: np.random.Generator, months: list[int]) -> list[SceneSpec]:
    """Per-scene events for acquisitions in the given months (1-12)."""
    out = []
    for m in months:
        mean = CLOUD_PROXY[m - 1]
        cf = float(rng.beta(mean * 1.0, (1 - mean) * 1.0))
        out.append(
            SceneSpec(
                cloud_fraction=cf,
                cirrus=bool(rng.random() < 0.15),
                snow=bool(m in (1, 2, 12) and rng.random() < 0.25),
                defects=bool(rng.random() < 0.1),
            )
        )
    return out


def sun_elevation(doy: float) -> float:
    mid = np.array([15, 46, 74, 105, 135, 166, 196, 227, 258, 288, 319, 349], float)
    xp = np.concatenate([mid - 365, mid, mid + 365])
    return float(np.interp(doy % 365, xp, np.tile(SUN_ELEVATION, 3)))


def block_mean(a: np.ndarray, f: int = 2) -> np.ndarray:
    """Mean over f x f blocks of the last two axes (their sizes must divide by f)."""
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


def upsample(a: np.ndarray, f: int = 2) -> np.ndarray:
    """Repeat each pixel f x f times over the last two axes."""
    return np.repeat(np.repeat(a, f, axis=-2), f, axis=-1)


def _shift(mask: np.ndarray, drow: int, dcol: int) -> np.ndarray:
    """Shift a 2-D mask by whole pixels, filling with False (no wrap-around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    src = mask[max(0, -drow) : h - max(0, drow), max(0, -dcol) : w - max(0, dcol)]
    out[max(0, drow) : max(0, drow) + src.shape[0], max(0, dcol) : max(0, dcol) + src.shape[1]] = (
        src
    )
    return out


@dataclass
class Scene:
    """A rendered acquisition."""

    reflectance: np.ndarray
    """(10, H, W) float32 at 10 m, clouds etc. applied; meaningless where ``nodata``."""
    scl: np.ndarray
    """(H/2, W/2) uint8 SCL at 20 m."""
    nodata: np.ndarray
    """(H, W) bool, outside the swath."""


def render(
    land: Landscape, doy: float, spec: SceneSpec, rng: np.random.Generator, res: float = 10.0
) -> Scene:
    """Render one acquisition of ``land`` on day of year ``doy``."""
    refl = land.reflectance(doy)
    refl *= rng.normal(1.0, 0.01, refl.shape).astype(np.float32)  # per-date noise
    refl *= np.float32(rng.normal(1.0, 0.015))  # residual scene-wide calibration/atmosphere
    h, w = land.classes.shape
    h2, w2 = h // 2, w // 2
    # base SCL from the clean 20 m spectra
    agg = block_mean(refl)
    ndvi = spectra.ndvi_of(agg, axis=0)
    scl = np.where(ndvi >= 0.42, 4, 5).astype(np.uint8)
    water = block_mean((land.classes == WATER).astype(np.float32)) >= 0.5
    scl[water] = 6
    scl[(rng.random((h2, w2)) < 0.005) & ~water] = 7
    if spec.snow:
        open_land = (
            block_mean(np.isin(land.classes, (CROP, GRASS, BARE)).astype(np.float32)) >= 0.75
        )
        snow = open_land & (smooth_noise(rng, (h2, w2), 20) > -0.3)
        refl = np.where(
            upsample(snow)[None],
            spectra.R["snow"][:, None, None] * np.float32(rng.uniform(0.85, 1.0)),
            refl,
        )
        scl[snow] = 11
    cf = float(np.clip(spec.cloud_fraction, 0.0, 1.0))
    cloud = core = np.zeros((h2, w2), bool)
    alpha = np.zeros((h2, w2), np.float32)
    if cf >= 0.995:
        cloud = core = np.ones((h2, w2), bool)
        alpha[:] = 1.0
    elif cf > 0.005:
        field = smooth_noise(rng, (h2, w2), rng.uniform(5, 12))
        t = np.quantile(field, 1 - cf)
        t_core = np.quantile(field, 1 - 0.65 * cf)
        cloud = field > t
        core = field > t_core
        alpha = np.where(
            core, 1.0, np.clip(0.35 + 0.65 * (field - t) / max(t_core - t, 1e-6), 0.35, 1.0)
        )
        alpha = np.where(cloud, alpha, 0.0).astype(np.float32)
    if cloud.any() and not cloud.all():
        zenith = math.radians(90 - sun_elevation(doy))
        dist = min(rng.uniform(500, 3000) * math.tan(zenith), 1500.0) / (2 * res)
        az = math.radians(SUN_AZIMUTH + 180)  # shadows fall away from the sun
        drow, dcol = int(round(-dist * math.cos(az))), int(round(dist * math.sin(az)))
        shadow = _shift(cloud, drow, dcol) & ~cloud
        refl = np.where(upsample(shadow)[None], refl * spectra.SHADOW_FACTOR[:, None, None], refl)
        scl[shadow] = 3
    if spec.cirrus:
        cir = (smooth_noise(rng, (h2, w2), 25) > rng.uniform(-0.5, 0.5)) & ~cloud
        tau = rng.uniform(0.03, 0.08)
        refl = refl + (upsample(cir)[None] * tau * spectra.CIRRUS_ADD[:, None, None]).astype(
            np.float32
        )
        scl[cir] = 10
    if cloud.any():
        cloud_spec = (
            spectra.R["cloud"][:, None, None] * (1 + 0.1 * smooth_noise(rng, (h, w), 3))[None]
        )
        a = upsample(alpha)[None]
        refl = (1 - a) * refl + a * cloud_spec
        scl[cloud & ~core] = 8
        scl[core] = 9
    if spec.defects:
        bad = rng.random((h2, w2)) < 0.0008
        refl = np.where(upsample(bad)[None], np.float32(6.5535), refl)
        scl[bad] = 1
    nodata = np.zeros((h, w), bool)
    if spec.partial_swath:
        yy, xx = np.mgrid[0:h2, 0:w2]
        edge = (xx - w2 * 0.55) + (h2 * 0.45 - yy) * 1.3 > 0  # the north-east corner
        scl[edge] = 0
        nodata = upsample(edge)
    return Scene(refl.astype(np.float32), scl, nodata)
