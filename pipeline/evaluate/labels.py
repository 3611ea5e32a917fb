"""Matching reference labels to a legend's classes.

Reference data name classes their own way (LUCAS codes ``A11``/``B13``, CORINE names, integers).
:func:`match_labels` maps each label to a class index by, in order: an explicit label map
(``{label: class name}``, YAML/JSON file or a built-in), the exact class name, the class name
case-insensitively, or an integer class index. Unmatched labels get -1 and are reported.

Built-in maps: ``lucas-lc1`` (LUCAS LC1 codes by their first letter A..H -> the ``lucas-lc8``
legend's classes in order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import yaml

from pipeline.base.errors import UserError

LUCAS_LC8 = (
    "Artificial Land",
    "Cropland",
    "Woodland",
    "Shrubland",
    "Grassland",
    "Bare Land",
    "Water",
    "Wetlands",
)


class _PrefixMap(dict):
    """A label map keyed by the first character of the label (LUCAS LC1 -> level 1)."""

    def get(self, key, default=None):  # type: ignore[override]
        k = str(key).strip()[:1].upper()
        return super().get(k, default)


BUILTIN_MAPS: dict[str, Mapping[str, str]] = {
    "lucas-lc1": _PrefixMap(zip("ABCDEFGH", LUCAS_LC8, strict=True)),
}


def load_label_map(spec: str | Path | None) -> Mapping[str, str] | None:
    """A built-in map name, or a YAML/JSON file ``{label: class name}``; None passes through."""
    if spec is None:
        return None
    key = str(spec)
    if key in BUILTIN_MAPS:
        return BUILTIN_MAPS[key]
    p = Path(key).expanduser()
    if not p.is_file():
        raise UserError(f"label map {key!r}: not a file nor one of {', '.join(BUILTIN_MAPS)}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - parse errors of either format
        raise UserError(f"{p}: cannot parse the label map ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a label map is a mapping label -> class name")
    return {str(k).strip(): str(v).strip() for k, v in data.items()}


def match_labels(
    labels: Sequence[object] | np.ndarray,
    class_names: Sequence[str],
    label_map: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Class index of every label (-1 where none matches)."""
    names = [str(c) for c in class_names]
    exact = {c: i for i, c in enumerate(names)}
    lower = {c.strip().lower(): i for i, c in enumerate(names)}
    if label_map is not None:
        missing = sorted(
            {v for v in _values(label_map) if v not in exact and v.lower() not in lower}
        )
        if missing:
            raise UserError(
                f"the label map names classes not in the legend: {', '.join(missing[:5])} "
                f"(legend: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
            )
    out = np.full(len(labels), -1, dtype=np.int64)
    for k, lab in enumerate(labels):
        s = str(lab).strip()
        if label_map is not None:
            target = label_map.get(s)
            if target is not None:
                out[k] = exact.get(target, lower.get(target.lower(), -1))
                continue
        if s in exact:
            out[k] = exact[s]
        elif s.lower() in lower:
            out[k] = lower[s.lower()]
        elif s.lstrip("-").isdigit() and 0 <= int(s) < len(names):
            out[k] = int(s)
    return out


def _values(m: Mapping[str, str]) -> list[str]:
    return [str(v) for v in (dict.values(m) if isinstance(m, dict) else m.values())]


def unmatched_summary(labels: Sequence[object], idx: np.ndarray, n: int = 10) -> dict[str, int]:
    """The most frequent labels that matched no class (for reports)."""
    vals, counts = np.unique(np.asarray(labels, dtype=str)[idx < 0], return_counts=True)
    order = np.argsort(-counts)[:n]
    return {str(vals[i]): int(counts[i]) for i in order}
