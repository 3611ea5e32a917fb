"""Planted land-cover change for a multi-year demo: a forest cleared, a field built on, a lake shrunk.

:func:`plan_changes` places patches of several sizes (including 3 x 3 px and smaller) inside an
area of the landscape, each over a single source class; :func:`landscape_in` gives the landscape
of one year with the changes of that year and before applied (the changed pixels become new
parcels of the target kind, so their spectra follow the target's phenology, with the same
static texture). Everything is drawn from the seed; the years' clouds, gaps and noise come from
the scene renderer as in the one-year demo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.testing.demo.landscape import (
    CROP,
    FOREST,
    KIND_CLASS,
    KINDS,
    WATER,
    Landscape,
)

#: (name, source class, target parcel kind, patch edges in px). Lake patches are boxes on the
#: lake's shore: only their water pixels change, so their pixel counts vary.
CHANGE_KINDS: tuple[tuple[str, int, str, tuple[int, ...]], ...] = (
    ("forest cleared", FOREST, "bare", (14, 8, 3, 2)),
    ("field built on", CROP, "built", (12, 6, 3, 1)),
    ("lake shrunk", WATER, "bare", (10, 6, 3)),
)


@dataclass(frozen=True)
class PlantedChange:
    """One planted change: ``mask`` pixels go from ``from_class`` to ``to_class`` in ``year``."""

    name: str
    """``forest cleared``, ``field built on`` or ``lake shrunk``."""
    year: int
    """The first year whose scenes show the change."""
    box: tuple[int, int, int, int]
    """(row0, col0, row1, col1) on the catalog's 10 m grid (end exclusive)."""
    from_class: int
    to_class: int
    to_kind: str
    """The target parcel kind (:data:`~pipeline.testing.demo.landscape.KINDS`)."""
    pixels: int
    """Changed pixels (the box's pixels of the source class)."""

    def mask(self, classes: np.ndarray) -> np.ndarray:
        """(H, W) bool: the pixels of the box that are of ``from_class`` in ``classes``."""
        r0, c0, r1, c1 = self.box
        out = np.zeros(classes.shape, bool)
        out[r0:r1, c0:c1] = classes[r0:r1, c0:c1] == self.from_class
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name, "year": self.year, "box": list(self.box),
            "from_class": self.from_class, "to_class": self.to_class, "pixels": self.pixels,
        }  # fmt: skip


def _box_all(mask: np.ndarray, size: int) -> np.ndarray:
    """(H-size+1, W-size+1) bool: the size x size box at (r, c) lies entirely in ``mask``."""
    s = np.pad(np.cumsum(np.cumsum(mask.astype(np.int32), 0), 1), ((1, 0), (1, 0)))
    total = s[size:, size:] - s[:-size, size:] - s[size:, :-size] + s[:-size, :-size]
    return total == size * size


def _lake(land: Landscape) -> np.ndarray:
    """(H, W) bool: the lake (the water parcel of smallest row extent; the river spans the grid)."""
    best, span = None, None
    for pid in np.flatnonzero(np.array([KINDS[k] == "water" for k in land.kind])):
        rows = np.flatnonzero((land.parcel == pid).any(axis=1))
        if rows.size and (span is None or rows[-1] - rows[0] < span):
            best, span = pid, rows[-1] - rows[0]
    return land.parcel == best if best is not None else np.zeros(land.classes.shape, bool)


def plan_changes(
    land: Landscape,
    rng: np.random.Generator,
    years: Sequence[int],
    area: tuple[int, int, int, int],
    margin: int = 3,
) -> list[PlantedChange]:
    """Place the :data:`CHANGE_KINDS` patches inside ``area`` = (row0, col0, row1, col1).

    Each patch lies over one source class, ``margin`` px or more from any other patch and from
    the area's edge; patches take effect in ``years[1:]`` in turn. Sizes that find no place are
    left out (the returned list says what was planted).

    Raises:
        ValueError: fewer than two years.
    """
    if len(years) < 2:
        raise ValueError(f"planted change needs two years or more, got {list(years)}")
    h, w = land.classes.shape
    r0, c0, r1, c1 = area
    taken = np.zeros((h, w), bool)
    inside = np.zeros((h, w), bool)
    inside[r0 + margin : r1 - margin, c0 + margin : c1 - margin] = True
    lake = _lake(land)
    shore = lake & ~(
        np.roll(lake, 1, 0) & np.roll(lake, -1, 0) & np.roll(lake, 1, 1) & np.roll(lake, -1, 1)
    )
    out: list[PlantedChange] = []
    j = 0
    for name, src, kind, sizes in CHANGE_KINDS:
        for size in sizes:
            free = inside & ~taken
            if src == WATER:  # a box centred on a shore pixel
                ok = np.zeros((h - size + 1, w - size + 1), bool)
                sr, sc = np.nonzero(shore & free)
                rr, cc = sr - size // 2, sc - size // 2
                keep = (rr >= 0) & (cc >= 0) & (rr < ok.shape[0]) & (cc < ok.shape[1])
                ok[rr[keep], cc[keep]] = True
                ok &= _box_all(free, size)
            else:
                ok = _box_all(free & (land.classes == src), size)
            cand = np.argwhere(ok)
            if cand.size == 0:
                continue
            r, c = cand[rng.integers(len(cand))]
            box = (int(r), int(c), int(r) + size, int(c) + size)
            change = PlantedChange(
                name, int(years[1 + j % (len(years) - 1)]), box, src, KIND_CLASS[kind], kind, 0
            )
            change = dataclasses.replace(change, pixels=int(change.mask(land.classes).sum()))
            out.append(change)
            taken[
                max(0, r - margin) : r + size + margin, max(0, c - margin) : c + size + margin
            ] = True
            j += 1
    return out


def landscape_in(
    land: Landscape, changes: Sequence[PlantedChange], year: int, rng: np.random.Generator
) -> Landscape:
    """``land`` as it is in ``year``: every change of that year or before applied.

    A changed patch becomes one new parcel of its target kind (brightness, phenology shift and
    variant drawn from ``rng`` like the generator's); the static texture stays. ``rng`` must be
    seeded the same for every year so a patch keeps its parcel attributes.
    """
    parcel, classes = land.parcel.copy(), land.classes.copy()
    kinds, bright = [land.kind], [land.brightness]
    shift, variant, cuts = [land.shift], [land.variant], [land.cuts]
    n = land.kind.size
    for ch in changes:
        b, s, v = rng.normal(1.0, 0.08), rng.normal(0.0, 5.0), rng.uniform(-0.5, 0.5)
        if ch.year > year:
            continue
        m = ch.mask(land.classes)
        parcel[m] = n
        classes[m] = ch.to_class
        kinds.append(np.array([KINDS.index(ch.to_kind)]))
        bright.append(np.array([np.clip(b, 0.8, 1.2)]))
        shift.append(np.array([np.clip(s, -10, 10)]))
        variant.append(np.array([v]))
        cuts.append(np.full((1, land.cuts.shape[1]), np.nan))
        n += 1
    return dataclasses.replace(
        land,
        classes=classes,
        parcel=parcel,
        kind=np.concatenate(kinds),
        brightness=np.concatenate(bright),
        shift=np.concatenate(shift),
        variant=np.concatenate(variant),
        cuts=np.concatenate(cuts),
    )


def change_truth(
    first: np.ndarray, last: np.ndarray, nodata: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """(from, to) uint8 (H, W) truth of change between two years' class rasters (``nodata``
    where either is nodata); a pixel changed where they differ."""
    bad = (first == nodata) | (last == nodata)
    return (
        np.where(bad, nodata, first).astype(np.uint8),
        np.where(bad, nodata, last).astype(np.uint8),
    )


__all__ = [
    "CHANGE_KINDS",
    "PlantedChange",
    "change_truth",
    "landscape_in",
    "plan_changes",
]
