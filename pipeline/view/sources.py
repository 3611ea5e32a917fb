"""What a map folder holds for the viewer: its layers, legend and optional extras.

:func:`find_sources` looks at a folder written by ``run`` (or ``classify``) and returns a frozen
:class:`MapSources`. Each layer is a Cloud-Optimised GeoTIFF (``classes.tif``, ...) or, for
gridded continental outputs, a GDAL VRT over the cell COGs (``classes.vrt``, ...); where both
exist the VRT wins, because it covers every cell. Nothing here reads pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rasterio

from pipeline.base.colours import to_hex
from pipeline.base.errors import UserError
from pipeline.writers.tile_result import CLASS_NODATA

__all__ = ["ClassInfo", "MapSources", "find_sources"]

# RGB composite layer names, in order of preference (a 3-band COG/VRT of red, green, blue).
RGB_NAMES = ("rgb", "composite_rgb", "rgb_composite")
# Reflectance bands of the map store's ``composite`` array that make true colour.
RGB_BANDS = ("B4", "B3", "B2")
STORE_NAME = "map.zarr"
#: Single-band value layers shown as colour ramps: name -> (label, vmin, vmax, ramp).
RAMP_LAYERS: dict[str, tuple[str, float, float, str]] = {
    "margin": ("Margin, top-1 minus top-2 (0–1)", 0.0, 1.0, "viridis"),
    "entropy": ("Entropy, normalised (0–1)", 0.0, 1.0, "magma"),
    "ood": ("Out of distribution (score 0–2, > 1 flagged)", 0.0, 2.0, "magma"),
    "postprocessed": ("Changed by post-processing (0/1)", 0.0, 1.0, "cividis"),
}


@dataclass(frozen=True)
class ClassInfo:
    """One legend entry: the pixel value, the class name and its colour (``#rrggbb``)."""

    value: int
    name: str
    color: str


@dataclass(frozen=True)
class MapSources:
    """The files of one map, as the viewer uses them.

    :ivar root: the map folder.
    :ivar title: a short title (region, period, model where known).
    :ivar classes: the class raster (uint8, ``nodata`` = 255), COG or VRT.
    :ivar classes_legend: legend entries, in value order.
    :ivar confidence: probability of the chosen class (float32, NaN nodata), or None.
    :ivar valid_obs: clear observations (uint16, band 1 = total), or None.
    :ivar rgb: a 3-band true-colour COG/VRT, or None.
    :ivar store: the Zarr map store (top-k probabilities, optional composite), or None.
    :ivar store_has_composite: the store holds ``composite`` with bands B4, B3, B2.
    :ivar field: where to open the embedding field for free-text queries (the map folder when it
        has a store; the field API decides whether it holds a field), or None.
    :ivar ramps: the value layers of :data:`RAMP_LAYERS` the folder holds, name -> COG/VRT.
    :ivar untrained: the map was made with untrained (random) weights.
    :ivar warning: a line the page shows above the map (e.g. the untrained-weights warning).
    """

    root: Path
    title: str
    classes: Path
    classes_legend: tuple[ClassInfo, ...]
    confidence: Path | None = None
    valid_obs: Path | None = None
    rgb: Path | None = None
    store: Path | None = None
    store_has_composite: bool = False
    field: Path | None = None
    ramps: tuple[tuple[str, Path], ...] = ()
    untrained: bool = False
    warning: str | None = None

    @property
    def rgb_source(self) -> str | None:
        """Where the RGB layer comes from: ``"cog"``, ``"store"`` (the saved composite) or None."""
        if self.rgb is not None:
            return "cog"
        if self.store_has_composite:
            return "store"
        return None


def _layer(root: Path, name: str) -> Path | None:
    for suffix in (".vrt", ".tif"):
        p = root / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable JSON ({exc})") from None
    return doc if isinstance(doc, dict) else None


def _legend_from_json(doc: dict[str, Any]) -> tuple[ClassInfo, ...]:
    out = []
    for c in doc.get("classes", []):
        v = int(c["value"])
        if v == CLASS_NODATA:
            continue
        out.append(ClassInfo(v, str(c["name"]), to_hex(c["color"])))
    return tuple(sorted(out, key=lambda c: c.value))


def _legend_from_raster(path: Path) -> tuple[ClassInfo, ...]:
    """Class names and colours embedded in the classes raster (tags and colour table)."""

    with rasterio.open(path) as src:
        tags = src.tags()
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = {}
        names = json.loads(tags["class_names"]) if "class_names" in tags else []
        if not names:
            band = src.tags(1)
            names = [
                band[k]
                for k in sorted(
                    (k for k in band if k.startswith("CLASS_")), key=lambda k: int(k.split("_")[1])
                )
            ]
    return tuple(
        ClassInfo(i, str(n), "#{:02x}{:02x}{:02x}".format(*cmap.get(i, (128, 128, 128))[:3]))
        for i, n in enumerate(names)
    )


def _store_has_composite(store: Path) -> bool:
    v3 = _read_json(store / "zarr.json") or {}  # Zarr v3; older s2lc wrote v2
    meta = _read_json(store / ".zmetadata") or {}
    attrs = (
        v3.get("attributes")
        or (meta.get("metadata") or {}).get(".zattrs")
        or _read_json(store / ".zattrs")
        or {}
    )
    bands = (attrs.get("s2lc:layout") or {}).get("bands") or []
    return (store / "composite").is_dir() and all(b in bands for b in RGB_BANDS)


def find_sources(root: str | Path) -> MapSources:
    """Describe the map in ``root``.

    :raises UserError: ``root`` is not a folder, or holds no class raster (``classes.tif`` or
        ``classes.vrt``), or its legend cannot be read.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; pass the output folder of a run")
    classes = _layer(root, "classes")
    if classes is None:
        unfinished = (root / ".s2lc").is_dir()
        hint = " (the run has not finished: run it again to complete it)" if unfinished else ""
        raise UserError(f"{root} holds no classes.tif or classes.vrt{hint}")
    legend_doc = _read_json(root / "legend.json")
    legend = _legend_from_json(legend_doc) if legend_doc else _legend_from_raster(classes)
    if not legend:
        raise UserError(f"{root}: no class names found in legend.json or {classes.name}")
    store = root / STORE_NAME if (root / STORE_NAME).is_dir() else None
    rgb = next((p for n in RGB_NAMES if (p := _layer(root, n)) is not None), None)
    item = _read_json(root / "item.json") or {}
    props = item.get("properties") or {}
    untrained = bool((legend_doc or {}).get("untrained") or props.get("s2lc:untrained"))
    title_parts = [str(item.get("id") or root.name)]
    warning = (legend_doc or {}).get("warning") or (
        "UNTRAINED WEIGHTS (demo): the classes are not land cover" if untrained else None
    )
    return MapSources(
        root=root,
        title=" ".join(title_parts),
        classes=classes,
        classes_legend=legend,
        confidence=_layer(root, "confidence"),
        valid_obs=_layer(root, "valid_obs"),
        rgb=rgb,
        store=store,
        store_has_composite=store is not None and _store_has_composite(store),
        field=root if store is not None else None,
        ramps=tuple((n, p) for n in RAMP_LAYERS if (p := _layer(root, n)) is not None),
        untrained=untrained,
        warning=warning,
    )
