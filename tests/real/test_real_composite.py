"""The product's monthly composites of real Sentinel-2 series equal an independent computation.

The reference is computed here straight from the netCDF files, with plain numpy, as the product
documents its masking (pipeline.stac.bands, pipeline.reading.cube, pipeline.composite.median):

- reflectance = DN x 1e-4 (these pre-04.00 DN carry no offset);
- a 20 m band's value at a 10 m pixel is its 20 m pixel's (and so is the SCL class);
- an observation is clear when its SCL class is not 0, 1, 2, 3, 8, 9, 10, 11 (the default
  `--scl-mask`) and no band is DN 0;
- per calendar month (UTC acquisition date), the NaN median over clear observations; the count
  of clear observations is ``valid_obs``.

The product reads the same pixels as COGs through the local STAC API, odc-stac and a Dask worker.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from .flanders import YEARS

SCL_MASKED = (0, 1, 2, 3, 8, 9, 10, 11)
pytestmark = pytest.mark.real

ORDER = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
"""The netCDF names of the product's band order B2 ... B12."""


def _up(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, axis=-2), 2, axis=-1)


def independent_composite(real_root, tile: str, year: int) -> tuple[np.ndarray, np.ndarray]:
    """(12, 10, 64, 64) monthly NaN medians of reflectance and (12, 64, 64) clear counts."""
    from . import flanders

    ds10, ds20, _ = flanders.Site.find(real_root, tile).open()
    t = ds10["timestamp"].values
    sel = (t >= np.datetime64(f"{year}-01-01")) & (t < np.datetime64(f"{year + 1}-01-01"))
    dn = np.stack(
        [
            ds10[b].values[sel] if b in flanders.NC_BANDS_10M else _up(ds20[b].values[sel])
            for b in ORDER
        ],
        axis=1,
    ).astype(np.float64)
    scl = _up(ds20["SCL"].values[sel])
    clear = ~np.isin(scl, SCL_MASKED) & (dn != 0).all(axis=1)
    refl = np.where(clear[:, None], dn * 1e-4, np.nan)
    month = t[sel].astype("datetime64[M]").astype(np.int64) % 12
    med = np.full((12, len(ORDER), *scl.shape[1:]), np.nan)
    counts = np.zeros((12, *scl.shape[1:]), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        for m in range(12):
            if (month == m).any():
                med[m] = np.nanmedian(refl[month == m], axis=0)
                counts[m] = clear[month == m].sum(axis=0)
    return med, counts


@pytest.mark.parametrize("tile", list(YEARS))
def test_monthly_composite_equals_independent_computation(tile, real_root, tsc_maps):
    import rasterio
    import xarray as xr

    ref, ref_counts = independent_composite(real_root, tile, YEARS[tile])
    z = xr.open_zarr(tsc_maps[tile] / "map.zarr")
    prod = z["composite"].values
    counts = z["valid_obs"].values
    assert prod.shape == ref.shape, "the map is not exactly the site's 64 x 64 px"
    assert list(z["band"].values) == ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]

    # valid_obs: the clear acquisitions per pixel and month, in the Zarr store and the COG
    np.testing.assert_array_equal(counts, ref_counts)
    with rasterio.open(tsc_maps[tile] / "valid_obs.tif") as src:
        cog = src.read()
    np.testing.assert_array_equal(cog[0], ref_counts.sum(axis=0))
    np.testing.assert_array_equal(cog[1:], ref_counts)

    # values: 1e-4 reflectance wherever both are finite, and they are finite at the same
    # observed pixel-months (elsewhere the product gap-fills, which the reference does not)
    observed = np.broadcast_to((ref_counts > 0)[:, None], ref.shape)
    assert np.isfinite(prod[observed]).all() and np.isfinite(ref[observed]).all()
    both = np.isfinite(prod) & np.isfinite(ref)
    assert both.mean() > 0.5, "too few observed pixel-months to compare"
    diff = np.abs(prod - ref)[both]
    worst = np.unravel_index(np.argmax(np.where(both, np.abs(prod - ref), 0)), ref.shape)
    assert diff.max() <= 1e-4, (
        f"{tile}: composite differs by up to {diff.max():.5f} (month {worst[0] + 1}, "
        f"{ORDER[worst[1]]}, row {worst[2]}, col {worst[3]}); "
        f"{(diff > 1e-4).mean():.1%} of values beyond 1e-4"
    )
