"""JSON: one rule for turning run metadata into plain JSON data, and one atomic JSON writer."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.atomic import atomic_path

__all__ = ["to_json_safe", "write_json"]


def to_json_safe(obj: Any) -> Any:
    """Plain JSON data from run metadata.

    Dataclass instances become dicts of their fields, mapping keys strings, tuples/sets lists,
    numpy scalars/arrays Python values, dates ISO strings, NaN/inf ``None`` (JSON has neither),
    and anything else (paths, enums) its ``str``.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json_safe(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return to_json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    return str(obj)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (see :func:`to_json_safe`), atomically; returns the path."""
    path = Path(path)
    text = json.dumps(to_json_safe(obj), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return path
