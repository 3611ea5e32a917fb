"""Typed, frozen configuration: dataclasses built from YAML mappings plus CLI overrides.

Every config in the project is a ``@dataclass(frozen=True)`` that validates itself in
``__post_init__`` (raising :class:`~pipeline.base.errors.UserError`). :func:`from_mapping` builds one
from plain data (a YAML document, CLI overrides), checking keys and coercing values by the field's
annotation, so a typo in a YAML key is a one-line error, never a silent default.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.base.dates import parse_date
from pipeline.base.errors import UserError


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))
            )
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return from_mapping(tp, value, where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UserError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list, tuple)):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(str(value)).expanduser()
    if tp is dt.date:
        return parse_date(value, where)
    return value


def from_mapping[T](cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Build the frozen dataclass ``cls`` from ``data``, rejecting unknown keys.

    Fields missing from ``data`` keep their defaults; ``None`` values are treated as missing so
    that unset CLI options do not override YAML values.
    """
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        if value is None:
            continue
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"{where}: {exc}") from None


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Shallow-merge ``overrides`` (None values ignored) over ``base``."""
    out = dict(base)
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def to_plain(obj: Any) -> Any:
    """A JSON/YAML-safe representation of a config (dataclasses, paths, dates, tuples)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (Path, dt.date)):
        return str(obj) if isinstance(obj, Path) else obj.isoformat()
    return obj


#: The first year with Sentinel-2 L2A data.
FIRST_YEAR = 2015


def period_dates(
    year: int | None,
    start: Any = None,
    end: Any = None,
    default: tuple[dt.date, dt.date] | None = None,
) -> tuple[dt.date, dt.date]:
    """The (start, end) dates of ``--year`` or ``--start``/``--end``, one rule for every command.

    Args:
        year: a calendar year (Jan 1 to Dec 31), exclusive with ``start``/``end``.
        start, end: YYYY-MM-DD strings or dates (inclusive); a missing one comes from ``default``.
        default: the dates when neither is given (a region's period); None: they are required.

    Raises:
        UserError: ``year`` with ``start``/``end``, a year before Sentinel-2 or in the future,
            a malformed date, a missing date without a default, or ``end`` before ``start``.
    """
    if year is not None:
        if start or end:
            raise UserError("--year cannot be combined with --start/--end")
        if not FIRST_YEAR <= year <= dt.date.today().year:
            raise UserError(f"--year {year} is outside the Sentinel-2 era (2015 onwards)")
        return dt.date(year, 1, 1), dt.date(year, 12, 31)
    if default is None and not (start and end):
        raise UserError("give --start and --end (or --year)")
    first = parse_date(start, "--start") if start else default[0]
    last = parse_date(end, "--end") if end else default[1]
    if last < first:
        raise UserError(f"--end {last} is before --start {first}")
    return first, last
