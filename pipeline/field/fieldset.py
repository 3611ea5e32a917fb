"""Several embedding fields as one: the runs of a list, or the cells of a gridded run, mosaicked.

:func:`open_fields` opens each map folder (:func:`pipeline.field.api.open_field`) and checks
that they can be read as one field, refusing in one line otherwise:

- the same embedding space (model identity) and the same **basis**: the SHA-256 of the decoding
  recipe (:func:`pipeline.writers.field.basis_sha256`, the ``s2lc:field_basis_sha256`` of each
  map's STAC item and model card), computed from each store's own ``field_mean``/``field_basis``;
  codes of two bases are different coordinates and cannot share projected vectors;
- the same CRS, pixel size and pixel alignment (origins a whole number of pixels apart), so the
  mosaic is a plain copy of pixels, never a resampling.

The mosaic's grid is the union of the fields' grids. Its units of work are each field's own
store chunks (:meth:`~pipeline.field.api.Field.windows`), placed on the mosaic's grid. Where
fields overlap, the first field given wins wherever it has data; the others fill its nodata
(:mod:`pipeline.field.stream` writes the mosaic that way).

A gridded run's folder (``cells/<cell>/map.zarr``) is expanded to its cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affine import Affine
from odc.geo.geobox import GeoBox

from pipeline.base.errors import UserError
from pipeline.field.api import Field, open_field
from pipeline.field.stream import Unit
from pipeline.writers.field import basis_sha256

#: Misalignment tolerated between two fields' origins, in pixels (float rounding of transforms).
ALIGN_TOLERANCE_PX = 1e-6


@dataclass(frozen=True)
class FieldSet:
    """Fields checked to be one (:func:`open_fields`): one basis, one CRS, aligned pixels."""

    fields: tuple[Field, ...]
    geobox: Any
    """The mosaic's grid (odc-geo GeoBox): the union of the fields' grids."""
    offsets: tuple[tuple[int, int], ...]
    """(row, col) of each field's top-left pixel on the mosaic's grid."""
    basis_sha256: str

    @property
    def first(self) -> Field:
        """The first field (its run's settings are the defaults of a classify)."""
        return self.fields[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the mosaic's grid."""
        return tuple(self.geobox.shape)  # type: ignore[return-value]

    def units(self) -> list[Unit]:
        """Every field's chunks, field by field, row by row."""
        out = []
        for i, (f, (r0, c0)) in enumerate(zip(self.fields, self.offsets, strict=True)):
            for ys, xs in f.windows():
                out.append(
                    Unit(
                        i,
                        (ys, xs),
                        (
                            slice(ys.start + r0, ys.stop + r0),
                            slice(xs.start + c0, xs.stop + c0),
                        ),
                    )
                )
        return out


def _expand(path: str | Path) -> list[Path]:
    """A map folder, or a gridded run's cells (``cells/*/map.zarr``), as map folders."""
    p = Path(path).expanduser()
    if not (p / "map.zarr").exists() and not p.name.endswith(".zarr"):
        cells = sorted(c.parent for c in p.glob("cells/*/map.zarr"))
        if cells:
            return cells
    return [p]


def basis_of(f: Field) -> str:
    """The SHA-256 of the field's decoding recipe (as its STAC item and model card record it)."""
    return basis_sha256(f.codec)


def open_fields(paths: Sequence[str | Path]) -> FieldSet:
    """Open one or several map folders (or gridded runs) as one field.

    Raises:
        UserError: a path without a finished field; a field of another model, basis, CRS, pixel
            size or pixel alignment than the first (one line naming both).
    """
    expanded = [p for path in paths for p in _expand(path)]
    if not expanded:
        raise UserError("give at least one --field MAP_DIR")
    fields = tuple(open_field(p) for p in expanded)
    first = fields[0]
    basis = basis_of(first)
    a0 = Affine(*first.layout["transform"][:6])
    crs0 = first.geobox.crs
    offsets = []
    for f in fields:
        if f.embedding_identity != first.embedding_identity:
            raise UserError(
                f"{f.map_dir}: made by {f.embedding_identity}, not by {first.embedding_identity} "
                f"as {first.map_dir}; fields of one map must come from one model"
            )
        b = basis_of(f)
        if b != basis:
            raise UserError(
                f"{f.map_dir}: its field's basis is {b[:16]}, not {basis[:16]} of "
                f"{first.map_dir}; only fields of one basis can be read as one"
            )
        if f.geobox.crs != crs0:
            raise UserError(
                f"{f.map_dir}: its CRS is {f.geobox.crs}, not {crs0} of {first.map_dir}; "
                "fields of one map must share a CRS"
            )
        a = Affine(*f.layout["transform"][:6])
        if (a.a, a.b, a.d, a.e) != (a0.a, a0.b, a0.d, a0.e):
            raise UserError(
                f"{f.map_dir}: its pixels are {a.a:g} x {abs(a.e):g}, not {a0.a:g} x "
                f"{abs(a0.e):g} of {first.map_dir}; fields of one map must share a pixel size"
            )
        col, row = (a.c - a0.c) / a0.a, (a.f - a0.f) / a0.e
        if abs(col - round(col)) > ALIGN_TOLERANCE_PX or abs(row - round(row)) > ALIGN_TOLERANCE_PX:
            raise UserError(
                f"{f.map_dir}: its pixels are offset by ({row:.3f}, {col:.3f}) px from "
                f"{first.map_dir}'s; fields of one map must share a pixel grid"
            )
        offsets.append((round(row), round(col)))
    r_min = min(r for r, _ in offsets)
    c_min = min(c for _, c in offsets)
    h = max(r + f.shape[0] for (r, _), f in zip(offsets, fields, strict=True)) - r_min
    w = max(c + f.shape[1] for (_, c), f in zip(offsets, fields, strict=True)) - c_min
    origin = a0 * Affine.translation(c_min, r_min)
    return FieldSet(
        fields=fields,
        geobox=GeoBox((h, w), origin, crs0),
        offsets=tuple((r - r_min, c - c_min) for r, c in offsets),
        basis_sha256=basis,
    )
