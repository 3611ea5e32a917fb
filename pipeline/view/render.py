"""Pure colouring for the viewer's tiles: class look-up tables, colour ramps, RGB stretch, PNG.

Every function takes arrays and returns arrays (or PNG bytes); nothing here reads files. Tile
arrays are ``(h, w)`` (or ``(3, h, w)`` for RGB) with a boolean ``valid`` mask of the same
``(h, w)``; the result is always ``(h, w, 4)`` uint8 RGBA, transparent where not valid.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from pipeline.base.colours import parse_color

__all__ = [
    "RAMPS",
    "class_lut",
    "colorize_classes",
    "colorize_ramp",
    "encode_png",
    "ramp_lut",
    "stretch_rgb",
]

# Named matplotlib colour maps (sampled to 256 entries) used for the continuous layers.
RAMPS = ("viridis", "magma", "cividis", "inferno")


def class_lut(
    colors: Sequence[Any],
    alpha: Mapping[int, float] | None = None,
) -> np.ndarray:
    """``(256, 4)`` uint8 RGBA look-up table: class ``i`` -> ``colors[i]`` at opacity ``alpha[i]``.

    :param colors: one colour per class (anything :func:`parse_color` reads).
    :param alpha: class value -> opacity in ``[0, 1]`` (0 hides the class); missing classes are
        opaque. Values outside ``[0, 1]`` are clipped.
    Entries past the last class (including the nodata value 255) are fully transparent.
    """
    lut = np.zeros((256, 4), dtype=np.uint8)
    for i, c in enumerate(colors[:255]):
        lut[i, :3] = parse_color(c)
        a = 1.0 if alpha is None else float(alpha.get(i, 1.0))
        lut[i, 3] = round(255 * min(1.0, max(0.0, a)))
    return lut


def colorize_classes(classes: np.ndarray, valid: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``(h, w)`` integer class values -> ``(h, w, 4)`` RGBA through ``lut`` (see :func:`class_lut`)."""
    idx = np.clip(classes, 0, 255).astype(np.uint8)
    rgba = lut[idx]
    rgba[~valid] = 0
    return rgba


def ramp_lut(name: str) -> np.ndarray:
    """``(256, 4)`` uint8 RGBA samples of the matplotlib colour map ``name`` (one of :data:`RAMPS`)."""
    if name not in RAMPS:
        raise ValueError(f"unknown colour ramp {name!r}; one of {', '.join(RAMPS)}")

    return (colormaps[name](np.linspace(0.0, 1.0, 256)) * 255).round().astype(np.uint8)


def colorize_ramp(
    values: np.ndarray, valid: np.ndarray, vmin: float, vmax: float, lut: np.ndarray
) -> np.ndarray:
    """``(h, w)`` values -> ``(h, w, 4)`` RGBA: ``vmin``..``vmax`` mapped linearly onto ``lut``.

    Values outside the range are clipped to its ends; NaN and ``~valid`` are transparent.
    """
    v = np.asarray(values, dtype=np.float64)
    ok = valid & np.isfinite(v)
    span = (vmax - vmin) or 1.0
    idx = np.clip(np.nan_to_num((v - vmin) / span * 255.0), 0, 255).astype(np.uint8)
    rgba = lut[idx]
    rgba[~ok] = 0
    return rgba


def stretch_rgb(
    rgb: np.ndarray, valid: np.ndarray, lo: float, hi: float, gamma: float = 1.0
) -> np.ndarray:
    """``(3, h, w)`` reflectances -> ``(h, w, 4)`` RGBA: ``lo``..``hi`` to 0..255, then ``gamma``.

    Pixels with a non-finite band or ``~valid`` are transparent.
    """
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"expected (3, h, w) red, green, blue; got shape {rgb.shape}")
    x = np.asarray(rgb, dtype=np.float64)
    ok = valid & np.isfinite(x).all(axis=0)
    span = (hi - lo) or 1.0
    x = np.clip(np.nan_to_num((x - lo) / span), 0.0, 1.0) ** (1.0 / gamma)
    out = np.zeros((*x.shape[1:], 4), dtype=np.uint8)
    out[..., :3] = np.moveaxis((x * 255).round().astype(np.uint8), 0, -1)
    out[..., 3] = np.where(ok, 255, 0)
    out[~ok, :3] = 0
    return out


def encode_png(rgba: np.ndarray) -> bytes:
    """``(h, w, 4)`` uint8 RGBA -> PNG bytes."""

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba, dtype=np.uint8), mode="RGBA").save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()
