"""Real EOPF Zarr Sentinel-2 L2A products (``$S2LC_REAL_DATA/eopf/*.zarr``, never committed):
the reader opens each one and reads a 256 px window at the tile centre as plausible reflectance.

No such product is in the shared samples yet (2026-12-07): this skips until one is added there
(e.g. a product downloaded from the EOPF Sample Service, https://stac.core.eopf.eodc.eu).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real


def _products() -> list[Path]:
    value = os.environ.get("S2LC_REAL_DATA")
    if not value:
        pytest.skip("S2LC_REAL_DATA is not set (real Sentinel-2 samples; see make test-real)")
    found = sorted((Path(value).expanduser() / "eopf").glob("*.zarr"))
    if not found:
        pytest.skip(f"no EOPF Zarr product in {value}/eopf")
    return found


def test_real_eopf_products_read_as_plausible_reflectance():
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from pipeline.reading.eopf import _read_band, open_product
    from pipeline.stac.bands import BANDS, SCL
    from pipeline.stac.eopf import EOPF_ARRAYS, EopfRef

    for path in _products():
        product = open_product(EopfRef(str(path), dict(EOPF_ARRAYS)))
        assert product.crs and product.crs.startswith("EPSG:")
        assert product.scale == pytest.approx(1e-4)
        g = product.grids["B2"]
        row, col = g.shape[0] // 2, g.shape[1] // 2
        t = Affine(10, 0, g.x0 + 10 * col, 0, -10, g.y0 - 10 * row)
        gb = GeoBox((256, 256), t, product.crs)
        dn = np.stack([_read_band(product, b, gb, "nearest", True, path.name) for b in BANDS])
        scl = _read_band(product, SCL, gb, "nearest", True, path.name)
        clear = (dn > 0).all(axis=0) & np.isin(scl, (4, 5, 6))
        if clear.sum() < 256:
            continue  # a cloudy or empty centre says nothing
        refl = dn[:, clear] * product.scale + product.offset
        assert -0.05 < np.median(refl) < 0.8, path.name
