"""Legends: the classes of a map, their prompts (per prompt style) and display colours.

Built-in legends are the YAML files next to this module (``list_legends()``); prompts in them are
the project's own sentences. ``load_legend`` also reads:

- a YAML file of the same form, or the short form ``classes: {name: [prompts...]}`` with an
  optional ``colors: {name: "#rrggbb"}``;
- a SenCLIP prompt JSON (``{class name: [sentences]}``, the authors' ``src/prompts/*.json``);
- an ``.npz`` (or ``.pt``) file of precomputed class embeddings: ``names`` (C,) and
  ``embeddings`` (C, D), optional ``colors``; the classifier is then these vectors, no text.

Built-in YAML form::

    name: lucas-lc8
    generic_templates: ["a centered satellite photo of {}."]   # "generic" style, per class name
    classes:
      Water:
        color: "#1f5fbf"
        aerial: ["Satellite photo of a dark blue lake.", ...]
        ground: ["A calm lake with the far shore in the distance.", ...]

Styles: ``generic`` (templates filled with the class name, the SenCLIP paper's "Generic"
column), ``aerial``, ``ground`` (ground-level photo descriptions: SenCLIP's text tower matches
ground photos), ``mixed`` (aerial + ground), ``name`` (the class name alone, TimeSenCLIP's (C)).
A class may also give ``prompts:`` used for every style.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.base.colours import to_hex
from pipeline.base.errors import UserError

BUILTIN_DIR = Path(__file__).resolve().parent
STYLES = ("generic", "aerial", "ground", "mixed", "name")
_STYLE_ALIASES = {"ground-level": "ground", "groundlevel": "ground", "classname": "name"}
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
#: Colours for classes that give none (matplotlib's tab20, then repeats).
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)  # fmt: skip
DEFAULT_TEMPLATES = ("a centered satellite photo of {}.",)


@dataclass(frozen=True)
class LegendClass:
    """One class: display name, the prompts that describe it, and its map colour."""

    name: str
    prompts: tuple[str, ...]
    color: str
    """``#rrggbb``."""

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@dataclass(frozen=True)
class Legend:
    """A set of classes in map order (class index = position in ``classes``)."""

    name: str
    style: str
    classes: tuple[LegendClass, ...]
    source: str = ""
    """Where it came from (``builtin``, a file path)."""
    embeddings: np.ndarray | None = field(default=None, compare=False, hash=False, repr=False)
    """(C, D) precomputed class embeddings (``.npz`` legends); None for text legends."""

    def __post_init__(self) -> None:
        if not self.classes:
            raise UserError(f"legend {self.name!r} has no classes")
        names = [c.name for c in self.classes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserError(f"legend {self.name!r}: duplicate class names {', '.join(dup)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(c.color for c in self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def prompt_hash(self) -> str:
        """SHA-256 of what determines the classifier: class names and prompts (or embeddings)."""
        h = hashlib.sha256()
        if self.embeddings is not None:
            h.update(b"embeddings\0")
            h.update(json.dumps(list(self.names)).encode())
            arr = np.ascontiguousarray(self.embeddings, dtype=np.float32)
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        else:
            h.update(json.dumps([[c.name, list(c.prompts)] for c in self.classes]).encode())
        return h.hexdigest()

    def with_prompts(self, prompts: dict[str, tuple[str, ...]], style: str | None = None) -> Legend:
        """A copy with some classes' prompts replaced (e.g. after prompt selection)."""
        classes = tuple(
            LegendClass(c.name, tuple(prompts.get(c.name, c.prompts)), c.color)
            for c in self.classes
        )
        return Legend(self.name, style or self.style, classes, self.source, self.embeddings)


def _norm_style(style: str) -> str:
    s = str(style).strip().lower()
    s = _STYLE_ALIASES.get(s, s)
    if s not in STYLES:
        raise UserError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLES)}")
    return s


def _color(value: Any, index: int, where: str) -> str:
    if value is None:
        return PALETTE[index % len(PALETTE)]
    if isinstance(value, (list, tuple)) and len(value) == 3:
        try:
            r, g, b = (int(v) for v in value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: colour {value!r} is not [r, g, b]") from None
        if all(0 <= v <= 255 for v in (r, g, b)):
            return to_hex((r, g, b))
    if isinstance(value, str) and _COLOR_RE.match(value.strip()):
        return value.strip().lower()
    raise UserError(f"{where}: colour {value!r} is not '#rrggbb' or [r, g, b]")


def _prompt_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise UserError(f"{where}: prompts must be a list of strings")
    out = tuple(" ".join(p.split()) for p in value if p.strip())
    if not out:
        raise UserError(f"{where}: no prompts")
    return out


def _class_prompts(
    name: str, spec: Any, style: str, templates: tuple[str, ...], where: str
) -> tuple[tuple[str, ...], Any]:
    """(prompts for ``style``, colour value) of one class entry."""
    if not isinstance(spec, dict):  # short form: a list (or one string) of prompts
        return _prompt_list(spec, where), None
    known = {"color", "colour", "prompts", "generic", "aerial", "ground", "mixed", "name"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}")
    color = spec.get("color", spec.get("colour"))
    if style in spec:
        return _prompt_list(spec[style], f"{where}.{style}"), color
    if "prompts" in spec:
        return _prompt_list(spec["prompts"], f"{where}.prompts"), color
    if style == "mixed" and ("aerial" in spec or "ground" in spec):
        both = [*spec.get("aerial", []), *spec.get("ground", [])]
        return _prompt_list(both, f"{where}.aerial+ground"), color
    if style == "generic":
        return tuple(t.format(name) for t in templates), color
    if style == "name":
        return (name,), color
    raise UserError(f"{where}: no prompts for style {style!r} (has: {', '.join(sorted(spec))})")


def from_mapping(data: Any, *, style: str, name: str, source: str) -> Legend:
    """Build a legend from a parsed YAML/JSON document (see the module docstring)."""
    style = _norm_style(style)
    if not isinstance(data, dict):
        raise UserError(f"{source}: a legend must be a mapping, got {type(data).__name__}")
    if "classes" not in data:
        # a SenCLIP prompt JSON: {class: [sentences]}
        if data and all(isinstance(v, (list, str)) for v in data.values()):
            data = {"classes": data}
        else:
            raise UserError(f"{source}: no 'classes' mapping")
    classes_spec = data["classes"]
    if isinstance(classes_spec, list):  # [{name: ..., color: ..., aerial: [...]}, ...]
        try:
            classes_spec = {
                str(c["name"]): {k: v for k, v in c.items() if k != "name"} for c in classes_spec
            }
        except (TypeError, KeyError):
            raise UserError(f"{source}: 'classes' list entries need a 'name'") from None
    if not isinstance(classes_spec, dict) or not classes_spec:
        raise UserError(f"{source}: 'classes' must be a non-empty mapping of name -> prompts")
    colors = data.get("colors") or data.get("colours") or {}
    if not isinstance(colors, dict):
        raise UserError(f"{source}: 'colors' must map class names to '#rrggbb'")
    unknown = sorted(set(map(str, colors)) - set(map(str, classes_spec)))
    if unknown:
        raise UserError(f"{source}: colours given for unknown classes {', '.join(unknown)}")
    templates = tuple(data.get("generic_templates") or DEFAULT_TEMPLATES)
    if not all(isinstance(t, str) and "{}" in t for t in templates):
        raise UserError(f"{source}: generic_templates must be strings containing '{{}}'")
    classes = []
    for i, (cname, spec) in enumerate(classes_spec.items()):
        cname = str(cname)
        where = f"{source}: class {cname!r}"
        prompts, color = _class_prompts(cname, spec, style, templates, where)
        color = colors.get(cname, color)
        classes.append(LegendClass(cname, prompts, _color(color, i, where)))
    legend_name = str(data.get("name") or name)
    return Legend(legend_name, style, tuple(classes), source)


def _load_embeddings(path: Path, style: str) -> Legend:
    where = str(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # noqa: BLE001 - any failure: not a readable npz
            raise UserError(f"{where}: not a readable .npz ({exc})") from None
    else:
        from model.checkpoints import _torch_load  # noqa: PLC0415 (torch only for .pt files)

        obj = _torch_load(path)
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a dict with 'names' and 'embeddings'")
        data = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in obj.items()}
    if "names" not in data or "embeddings" not in data:
        raise UserError(f"{where}: needs arrays 'names' (C,) and 'embeddings' (C, D)")
    names = [str(n) for n in np.asarray(data["names"]).reshape(-1)]
    emb = np.asarray(data["embeddings"], dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise UserError(f"{where}: embeddings must be (C, D) with C = {len(names)} names")
    if not np.isfinite(emb).all() or (np.linalg.norm(emb, axis=1) == 0).any():
        raise UserError(f"{where}: embeddings must be finite and non-zero")
    colors = data.get("colors")
    colors = [None] * len(names) if colors is None else [str(c) for c in np.asarray(colors)]
    classes = tuple(
        LegendClass(n, (), _color(c, i, f"{where}: class {n!r}"))
        for i, (n, c) in enumerate(zip(names, colors))
    )
    return Legend(path.stem, "embeddings", classes, where, emb)


def list_legends() -> list[str]:
    """Names of the built-in legends."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


#: Shorter names accepted for the built-ins.
ALIASES = {
    "eurosat": "eurosat10",
    "bigearthnet": "bigearthnet19",
    "ben19": "bigearthnet19",
    "lucas-lc": "lucas-lc8",
    "lucas-lu": "lucas-lu16",
}


def load_legend(name_or_path: str | Path, style: str = "aerial") -> Legend:
    """A built-in legend by name, or a legend file (.yaml/.yml, .json, .npz, .pt).

    Raises:
        UserError: unknown name, unreadable file, malformed content, unknown style.
    """
    style = _norm_style(style)
    key = str(name_or_path)
    builtin = BUILTIN_DIR / f"{ALIASES.get(key, key)}.yaml"
    if "/" not in key and builtin.is_file():
        path, source = builtin, "builtin"
    else:
        path = Path(key).expanduser()
        if not path.is_file():
            raise UserError(
                f"unknown legend {key!r}: not a file, nor a built-in ({', '.join(list_legends())})"
            )
        source = str(path)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".pt", ".pth"):
        return _load_embeddings(path, style)
    text = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    elif suffix in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    else:
        raise UserError(f"{path}: legend files are .yaml, .json, .npz or .pt")
    return from_mapping(data, style=style, name=path.stem, source=source)


def save_embeddings(
    path: str | Path, names: list[str], embeddings: np.ndarray, colors=None
) -> Path:
    """Write an ``.npz`` legend of fixed class embeddings (see :func:`load_legend`)."""
    out = Path(path)
    arrays: dict[str, np.ndarray] = {
        "names": np.asarray([str(n) for n in names]),
        "embeddings": np.asarray(embeddings, dtype=np.float32),
    }
    if colors is not None:
        arrays["colors"] = np.asarray([str(c) for c in colors])
    np.savez(out, **arrays)
    return out if out.suffix == ".npz" else out.with_name(out.name + ".npz")
