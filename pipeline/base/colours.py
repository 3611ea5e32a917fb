"""Colours: one parser for the ways a class colour is written, one hex form, one default palette."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TAB20", "palette", "parse_color", "to_hex"]

#: matplotlib's ``tab20`` colour map, in its order (kept as data so the base imports no plotting).
TAB20 = (
    "#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7",
    "#bcbd22", "#dbdb8d", "#17becf", "#9edae5",
)  # fmt: skip


def parse_color(color: Any) -> tuple[int, int, int]:
    """``"#rrggbb"``/``"rrggbb"``/``"#rgb"``, (r, g, b[, a]) in 0..255, or floats in 0..1 -> (r, g, b).

    Raises :class:`ValueError` for anything else.
    """
    if isinstance(color, str):
        s = color.strip().lstrip("#")
        if len(s) == 3:
            s = "".join(c * 2 for c in s)
        if len(s) not in (6, 8):
            raise ValueError(f"not a hex colour: {color!r}")
        return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
    vals = list(color)[:3]
    if len(vals) != 3:
        raise ValueError(f"not an RGB colour: {color!r}")
    if all(isinstance(v, float) for v in vals) and all(0 <= v <= 1 for v in vals):
        vals = [round(v * 255) for v in vals]
    return tuple(int(min(255, max(0, v))) for v in vals)  # type: ignore[return-value]


def to_hex(color: Any) -> str:
    """Any colour :func:`parse_color` reads -> lower-case ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*parse_color(color))


def palette(n: int, colors: Sequence[str] = TAB20) -> list[str]:
    """``n`` colours from ``colors``, repeating it when there are more classes than colours."""
    return [colors[i % len(colors)] for i in range(n)]
