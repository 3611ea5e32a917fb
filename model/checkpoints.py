"""Reading checkpoint files safely and matching their keys to an architecture.

Every checkpoint goes through :func:`read_checkpoint`, which uses ``torch.load(weights_only=True)``
(tensors and plain containers only, never arbitrary code), or ``safetensors`` for
``.safetensors`` files. A file that is not a checkpoint, or whose state dict does not fit the
architecture, becomes one :class:`~pipeline.base.errors.UserError` line that names the file and, for a
wrong architecture, the first few missing and unexpected keys with their counts.

Wrapped layouts are unwrapped here: a ``state_dict`` / ``model`` / ``model_state_dict`` entry
(Lightning and common trainer checkpoints), and key prefixes (``model.``, ``module.``,
``clip_model.``, ``learner.TS_ViT.``, ...), found by looking for an *anchor* key that every state
dict of the architecture has (see :func:`find_prefix`).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.base.errors import UserError
from pipeline.base.hashing import sha256_file

_log = logging.getLogger(__name__)

#: Containers that trainers wrap a state dict in, looked up in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "encoder")

#: Harmless classes that PyTorch Lightning pickles into checkpoints (hyper-parameters); allowed in
#: addition to what ``weights_only=True`` accepts by default. They carry data, never code.
_EXTRA_SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath]


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file read into memory."""

    path: Path
    """The file it came from."""
    sha256: str
    """SHA-256 of the file's bytes (the checkpoint's identity in caches and run metadata)."""
    state_dict: dict[str, torch.Tensor]
    """The (unwrapped, still prefixed) tensors: ``name -> tensor``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Plain (str/int/float/bool) top-level entries next to the state dict, e.g. ``clip``."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save's zip container, or a legacy / plain pickle (protocol 2+ starts with 0x80)
    return head == b"PK\x03\x04" or head[:1] == b"\x80"


def _torch_load(path: Path) -> Any:
    if not _looks_like_torch_file(path):
        raise UserError(f"{path}: not a PyTorch checkpoint (neither a zip nor a pickle file)")
    try:
        with torch.serialization.safe_globals(_EXTRA_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            raise UserError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # noqa: BLE001 - best effort, only for the message
            unsafe = []
        unsafe = [
            g
            for g in unsafe
            if g not in {f"{c.__module__}.{c.__qualname__}" for c in _EXTRA_SAFE_GLOBALS}
        ]
        what = ", ".join(unsafe[:5]) or "objects other than tensors"
        raise UserError(
            f"{path}: refusing to unpickle {what} (checkpoints load with weights_only=True); "
            "re-save only the weights, e.g. torch.save(torch.load(f, weights_only=False)"
            "['state_dict'], 'weights.pt'), from a trusted copy"
        ) from None
    except (
        RuntimeError,
        EOFError,
        KeyError,
        ValueError,
        AttributeError,
        TypeError,
        OSError,
    ) as exc:
        raise UserError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from None


def _safetensors_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file  # noqa: PLC0415 (optional: safetensors files only)

        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means "not a safetensors file"
        raise UserError(f"{path}: not a safetensors checkpoint ({_first_line(exc)})") from None


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta: dict[str, Any] = {}
    for _ in range(3):  # e.g. {"state_dict": {"model": {...}}} at most a few levels deep
        if not isinstance(obj, Mapping):
            break
        inner = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        meta.update(
            {
                k: v
                for k, v in obj.items()
                if k != inner and isinstance(v, (str, int, float, bool)) and isinstance(k, str)
            }
        )
        obj = obj[inner]
    if not _is_state_dict(obj):
        kind = type(obj).__name__
        if isinstance(obj, Mapping):
            keys = ", ".join(map(str, list(obj)[:5]))
            kind = f"a {kind} without tensors (keys: {keys})" if keys else "an empty mapping"
        raise UserError(f"{path}: not a model checkpoint (found {kind}, expected a state dict)")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return state, meta


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (weights only) and unwrap its state dict.

    Raises:
        UserError: the file is missing, is not a checkpoint, holds pickled objects other than
            tensors and plain containers, or holds no state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        obj: Any = _safetensors_load(p)
    else:
        obj = _torch_load(p)
    return from_object(obj, p, sha256_file(p))


def from_object(obj: Any, path: str | Path = "<memory>", sha256: str = "") -> Checkpoint:
    """Unwrap an already loaded checkpoint object (what ``torch.load`` returned)."""
    state, meta = _unwrap(obj, Path(path))
    return Checkpoint(path=Path(path), sha256=sha256, state_dict=state, meta=meta)


def find_prefix(keys: Iterable[str], anchor: str, preferred: Sequence[str] = ("",)) -> str | None:
    """The prefix under which a state dict is stored, found by its ``anchor`` key.

    Every key ending in ``anchor`` (at a ``.`` boundary) gives a candidate prefix. ``preferred``
    prefixes win in their order; otherwise the shortest candidate. None when the anchor is absent.
    """
    candidates = set()
    for k in keys:
        if k == anchor:
            candidates.add("")
        elif k.endswith("." + anchor):
            candidates.add(k[: -len(anchor)])
    if not candidates:
        return None
    for p in preferred:
        if p in candidates:
            return p
    return min(candidates, key=lambda c: (len(c), c))


def _listing(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def match_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    where: str,
    what: str,
) -> dict[str, torch.Tensor]:
    """Check that ``state`` has exactly the keys and shapes of ``expected`` (strict loading).

    Returns ``state`` as a plain dict of float tensors ready for ``load_state_dict(strict=True)``
    (half-precision weights are widened to the expected dtype).

    Raises:
        UserError: one line naming ``where`` and ``what`` with the first few missing and unexpected
            keys and their counts, or the first shape mismatches.
    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
        raise UserError(f"{where}: not a {what} state dict: {'; '.join(parts)}")
    bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad:
        raise UserError(
            f"{where}: not a {what} state dict: {len(bad)} tensors have the wrong shape "
            f"({'; '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        )
    return {k: (v.to(expected[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    if not prefix:
        return dict(state)
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}
