"""The patch model's chips: the map and its calibration sample use the same ones.

Found on the real Flanders sites (tests/real): a 640 m region has no 64 px chip without a pixel
outside the data, so the SenCLIP calibration sample (gap-free chips only) was empty and the run
stopped, although the map itself classifies chips with gaps (filled with the chip mean)."""

from __future__ import annotations

import numpy as np

from pipeline.adapters.senclip import usable_chips


def test_partial_chips_are_kept_and_filled_empty_ones_dropped():
    chips = np.full((3, 3, 4, 4), np.nan, np.float32)
    chips[0] = 0.2  # complete
    chips[1, :, :2] = np.arange(3, dtype=np.float32)[:, None, None] / 10  # half observed
    ok, filled = usable_chips(chips)
    np.testing.assert_array_equal(ok, [True, True, False])
    assert filled.shape == (2, 3, 4, 4) and np.isfinite(filled).all()
    np.testing.assert_allclose(filled[1, :, 2:], np.broadcast_to(filled[1, :, :1], (3, 2, 4)))
    np.testing.assert_allclose(filled[1, 2], 0.2)
