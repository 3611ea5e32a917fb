"""The model kinds a run can use, by name (``--model``).

Built-in kinds are named by module and imported on first use, so listing the names (every
command line's ``--model`` choices) costs no import of numpy, odc-geo or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.base.errors import UserError

if TYPE_CHECKING:
    from pipeline.adapters.base import ModelAdapter

DEFAULT = "timesenclip"
"""The model a run uses when none is named."""

#: name -> the adapter, or the module whose ``ADAPTER`` it is (imported on first use).
_ADAPTERS: dict[str, ModelAdapter | str] = {
    "timesenclip": "pipeline.adapters.timesenclip",
    "senclip": "pipeline.adapters.senclip",
}


def register(adapter: ModelAdapter) -> ModelAdapter:
    """Add a model kind (a new kind, or a test's toy model); returns it.

    Raises:
        ValueError: another adapter already has that name.
    """
    if adapter.name in _ADAPTERS and _ADAPTERS[adapter.name] is not adapter:
        raise ValueError(f"a model adapter named {adapter.name!r} is already registered")
    _ADAPTERS[adapter.name] = adapter
    return adapter


def unregister(name: str) -> None:
    """Remove a model kind (tests that registered one)."""
    _ADAPTERS.pop(name, None)


def names() -> tuple[str, ...]:
    """Registered model names, the default first."""
    return tuple(_ADAPTERS)


def get(name: str) -> ModelAdapter:
    """The adapter of a model name.

    Raises:
        UserError: no model of that name (one line listing the known ones).
    """
    entry = _ADAPTERS.get(str(name))
    if entry is None:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(names())}")
    if isinstance(entry, str):
        entry = _ADAPTERS[str(name)] = importlib.import_module(entry).ADAPTER
    return entry


def all_adapters() -> tuple[ModelAdapter, ...]:
    """Every registered adapter (imports the built-in ones)."""
    return tuple(get(n) for n in names())
