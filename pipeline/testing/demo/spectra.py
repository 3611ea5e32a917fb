"""Class spectra and phenology for the synthetic scene (docs: S2_REFERENCE_VALUES.md §1-§3).

Pure numpy. Every function takes a day of year (possibly per parcel, already shifted by its
phenology jitter) and returns reflectance on a 0-1 scale for the 10 bands of
:data:`pipeline.stac.bands.BANDS`. A date's spectrum mixes an off-season and a peak endmember,
``R = f * R_peak + (1 - f) * R_off``, with ``f`` solved in closed form so that NDVI(R) matches the
monthly NDVI table (interpolated to the day).
"""

from __future__ import annotations

import numpy as np

# Reflectance rows (B2 B3 B4 B5 B6 B7 B8 B8A B11 B12), §1.
ROWS: dict[str, tuple[float, ...]] = {
    "water_clear": (.035, .045, .025, .018, .012, .010, .010, .008, .005, .003),
    "water_turbid": (.050, .075, .060, .055, .030, .025, .022, .018, .008, .005),
    "broadleaf_on": (.025, .050, .025, .075, .250, .320, .340, .360, .170, .080),
    "broadleaf_off": (.045, .060, .060, .085, .125, .140, .150, .160, .180, .120),
    "conifer_summer": (.020, .035, .018, .050, .150, .190, .210, .220, .100, .045),
    "conifer_winter": (.018, .028, .018, .035, .095, .115, .125, .130, .070, .035),
    "cereal_peak": (.025, .055, .025, .080, .300, .400, .430, .450, .200, .090),
    "cereal_ripe": (.060, .090, .120, .160, .200, .230, .250, .270, .330, .240),
    "stubble": (.070, .100, .130, .160, .190, .210, .220, .235, .320, .240),
    "maize_peak": (.030, .060, .030, .090, .300, .400, .440, .460, .210, .100),
    "grass_peak": (.030, .065, .035, .095, .270, .340, .370, .390, .220, .110),
    "grass_off": (.040, .060, .050, .080, .160, .190, .210, .220, .200, .120),
    "built": (.080, .090, .100, .120, .145, .155, .160, .170, .200, .170),
    "bare": (.070, .100, .130, .155, .175, .185, .190, .200, .300, .240),
    "bare_dry": (.100, .140, .190, .220, .240, .250, .260, .270, .380, .320),
    "bare_wet": (.040, .060, .075, .090, .100, .105, .110, .115, .150, .110),
    "cloud": (.50, .49, .49, .50, .52, .53, .53, .54, .34, .22),
    # planted materials no demo class describes (opt-in, generate_catalog(plant=...)):
    # glacier ice (bright in the visible, falling through the NIR, near 0 in the SWIR) and a
    # solar farm (dark, flat, blue-tinted glass over panels, some SWIR from the frames)
    "glacier": (.62, .60, .57, .53, .48, .43, .38, .35, .04, .03),
    "solar": (.090, .075, .060, .058, .057, .057, .058, .059, .075, .065),
    "snow": (.85, .85, .83, .81, .79, .77, .75, .73, .08, .06),
}  # fmt: skip
R = {k: np.asarray(v, dtype=np.float32) for k, v in ROWS.items()}

SHADOW_FACTOR = np.array([0.50, 0.45, 0.40, 0.35, 0.30, 0.30, 0.30, 0.30, 0.25, 0.25], np.float32)
"""Band-wise multiplier of the sunlit spectrum under a cloud shadow (§1.2)."""
CIRRUS_ADD = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0.6, 0.6], np.float32)
"""Relative band weights of the thin-cirrus additive term (§1.2: B2-B8A 0.03-0.08, SWIR less)."""

RED, NIR = 2, 6  # indices of B4 and B8 in BANDS

# Mid-month NDVI, §3.
NDVI_TABLE: dict[str, tuple[float, ...]] = {
    "broadleaf": (.40, .40, .42, .55, .82, .86, .86, .85, .82, .70, .48, .40),
    "conifer": (.68, .70, .74, .78, .82, .84, .85, .84, .83, .80, .74, .68),
    "cereal": (.40, .42, .50, .70, .86, .78, .35, .22, .20, .25, .35, .38),
    "maize": (.25, .25, .22, .18, .22, .45, .80, .86, .70, .30, .25, .25),
    "grass": (.62, .63, .68, .78, .82, .72, .74, .72, .76, .76, .72, .65),
}  # fmt: skip
_MID_MONTH = np.array([15, 46, 74, 105, 135, 166, 196, 227, 258, 288, 319, 349], np.float64)


def ndvi_of(refl: np.ndarray, axis: int = -1) -> np.ndarray:
    """NDVI of spectra whose band axis is ``axis``."""
    red = np.take(refl, RED, axis=axis)
    nir = np.take(refl, NIR, axis=axis)
    return (nir - red) / np.maximum(nir + red, 1e-6)


def ndvi_on(kind: str, doy: np.ndarray | float) -> np.ndarray:
    """The table NDVI of ``kind`` on day(s) of year, linear between mid-months, periodic."""
    table = np.asarray(NDVI_TABLE[kind], np.float64)
    xp = np.concatenate([_MID_MONTH - 365, _MID_MONTH, _MID_MONTH + 365])
    fp = np.tile(table, 3)
    return np.interp(np.mod(np.asarray(doy, np.float64), 365.0), xp, fp)


def mix_for_ndvi(off: np.ndarray, peak: np.ndarray, ndvi: np.ndarray) -> np.ndarray:
    """Spectra ``f*peak + (1-f)*off`` whose NDVI is ``ndvi`` (f clipped to [0, 1]).

    ``off``/``peak`` are (..., 10) or (10,), ``ndvi`` broadcasts against their leading dims.
    """
    off = np.asarray(off, np.float64)
    peak = np.asarray(peak, np.float64)
    n = np.asarray(ndvi, np.float64)[..., None]
    a0 = off[..., NIR] - off[..., RED]
    a1 = (peak[..., NIR] - peak[..., RED]) - a0
    s0 = off[..., NIR] + off[..., RED]
    s1 = (peak[..., NIR] + peak[..., RED]) - s0
    den = n[..., 0] * s1 - a1
    f = np.where(np.abs(den) > 1e-9, (a0 - n[..., 0] * s0) / np.where(den == 0, 1, den), 0.0)
    f = np.clip(f, 0.0, 1.0)[..., None]
    return (f * peak + (1.0 - f) * off).astype(np.float32)


def _rows(mask: np.ndarray, a: str, b: str) -> np.ndarray:
    """Per-element endmember: row ``a`` where mask else row ``b`` -> (..., 10)."""
    return np.where(np.asarray(mask)[..., None], R[a], R[b])


def spectrum(kind: str, doy: np.ndarray, variant: np.ndarray | None = None) -> np.ndarray:
    """Clean spectra (n, 10) for parcels of one kind on (per-parcel) days of year ``doy`` (n,).

    kinds: ``water`` (variant = turbidity 0-1), ``broadleaf``, ``conifer``, ``cereal``, ``maize``,
    ``grass`` (variant = NDVI after mowing cuts, overriding the table), ``built``, ``bare``
    (variant in -1 (wet/dark) .. 1 (dry/bright)).
    """
    doy = np.asarray(doy, np.float64)
    n = doy.shape[0]
    if kind == "water":
        t = np.zeros(n) if variant is None else np.asarray(variant)
        return ((1 - t)[:, None] * R["water_clear"] + t[:, None] * R["water_turbid"]).astype(
            np.float32
        )
    if kind == "built":
        return np.broadcast_to(R["built"], (n, 10)).astype(np.float32)
    if kind == "bare":
        v = np.zeros(n) if variant is None else np.asarray(variant)
        other = np.where((v > 0)[:, None], R["bare_dry"], R["bare_wet"])
        return (np.abs(v)[:, None] * other + (1 - np.abs(v))[:, None] * R["bare"]).astype(
            np.float32
        )
    ndvi = ndvi_on(kind if kind != "grass" else "grass", doy)
    if kind == "grass" and variant is not None:
        ndvi = np.minimum(ndvi, np.asarray(variant))
    if kind == "broadleaf":
        off, peak = R["broadleaf_off"], R["broadleaf_on"]
    elif kind == "conifer":
        off, peak = R["conifer_winter"], R["conifer_summer"]
    elif kind == "grass":
        off, peak = R["grass_off"], R["grass_peak"]
    elif kind == "cereal":
        # bare soil <-> peak; ripening late Jun-Jul, stubble after harvest until tillage in Sep
        ripe = (doy >= 172) & (doy < 206)
        stubble = (doy >= 206) & (doy < 265)
        off = np.where(ripe[:, None], R["cereal_ripe"], _rows(stubble, "stubble", "bare"))
        peak = R["cereal_peak"]
    elif kind == "maize":
        off = _rows((doy >= 245) & (doy < 275), "cereal_ripe", "bare")
        peak = R["maize_peak"]
    else:
        raise ValueError(f"unknown land-cover kind {kind!r}")
    return mix_for_ndvi(np.broadcast_to(off, (n, 10)), np.broadcast_to(peak, (n, 10)), ndvi)
