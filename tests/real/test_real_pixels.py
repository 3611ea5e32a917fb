"""TimeSenCLIP's preprocessing on real monthly L2A composites (``worldcereal-pixels``: 500
labelled pixels x 12 months x 10 bands, WorldCereal extractions, DN = reflectance x 1e4,
65535 = no data): band order and scaling against the file's own column names, and how much of
the real value range the normalisation clamps."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytestmark = pytest.mark.real

_COLUMN = re.compile(r"OPTICAL-(B\d\d|B8A)-ts(\d+)-(\d+)m")


@pytest.fixture(scope="module")
def pixels(real_root):
    import pandas as pd

    path = real_root / "worldcereal-pixels" / "test_public_extractions.parquet"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return pd.read_parquet(path)


def _canonical(name: str) -> str:
    """``B02`` -> ``B2`` (the project's band names); ``B8A`` stays."""
    return re.sub(r"^B0", "B", name)


def test_band_order_scaling_and_clamping(pixels, record_property):
    import torch

    from model.timesenclip import BANDS, NORM_OFFSET, NORM_SCALE, normalise
    from pipeline.stac.bands import NATIVE_RESOLUTION

    found: dict[str, dict[int, str]] = {}
    for col in pixels.columns:
        m = _COLUMN.fullmatch(col)
        if m:
            band, ts, res = _canonical(m.group(1)), int(m.group(2)), int(m.group(3))
            assert NATIVE_RESOLUTION[band] == res, (
                f"{col}: {band} is a {NATIVE_RESOLUTION[band]} m band"
            )
            found.setdefault(band, {})[ts] = col
    # the file has exactly the encoder's 10 bands, 12 monthly steps each
    assert sorted(found) == sorted(BANDS)
    assert all(sorted(v) == list(range(12)) for v in found.values())

    # (N, 12, 10) in the encoder's band order, straight from the named columns
    dn = np.stack(
        [np.stack([pixels[found[b][t]].to_numpy() for b in BANDS], axis=-1) for t in range(12)],
        axis=1,
    ).astype(np.float64)
    series = np.where(dn == 65535, np.nan, dn)
    valid = np.isfinite(series)
    assert valid.mean() > 0.8
    # scaling: reflectance x 1e4 without the +1000 offset; vegetated land is brighter in the
    # near-infrared (B8) than in the red (B4), and no clear value lies below the offset range
    med = np.nanmedian(series, axis=(0, 1))
    assert 200 < med[BANDS.index("B2")] < 2000 and 1000 < med[BANDS.index("B8")] < 6000
    assert med[BANDS.index("B8")] > 1.5 * med[BANDS.index("B4")]

    x = (series - np.array(NORM_OFFSET)) / (np.array(NORM_SCALE) + 1e-6)
    got = normalise(torch.as_tensor(series, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got[valid], np.clip(x, 0, 1)[valid], atol=1e-6)
    assert (got[~valid] == 0).all()

    below = {b: float((x[..., i][valid[..., i]] < 0).mean()) for i, b in enumerate(BANDS)}
    above = {b: float((x[..., i][valid[..., i]] > 1).mean()) for i, b in enumerate(BANDS)}
    report = {
        "clamped_below_0": below,
        "clamped_above_1": above,
        "valid_fraction": float(valid.mean()),
    }
    record_property("timesenclip_clamp_fractions", json.dumps(report))
    print(json.dumps(report, indent=1))
    # the normalisation's range fits real reflectance: it clamps a small tail, not the bulk
    assert max(below.values()) < 0.05 and max(above.values()) < 0.05
