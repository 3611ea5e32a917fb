"""Make ``import torchvision`` (and so ``open_clip`` / ``timm``) work on CPU-only torch.

Why: torchvision 0.28.0, the release that matches torch 2.13.0, is published only as a CUDA build.
On a CPU build of torch its C++ extension (``torchvision/_C.so``) fails to load, and two of its
modules, ``torchvision._meta_registrations`` and ``torchvision._autograd_registrations``, then
die at import because they attach Python kernels to C++ operators (``torchvision::nms``, ...)
that were never registered. Nothing in this project uses those operators (NMS, RoI ops, image
decoding); it needs torchvision only for the transforms and model code that open_clip imports.

What: :func:`ensure` first tries to load the real extension exactly as torchvision would. Only if
that fails does it register empty stand-ins for those two modules, so the rest of torchvision
imports normally. Where the extension loads (CUDA torch, PyTorch's own CPU builds) it changes
nothing. Import this module (``model`` does, first thing) before anything imports torchvision.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

_log = logging.getLogger(__name__)

#: Modules that register kernels on torchvision's C++ operators at import time.
_OP_REGISTRATION_MODULES = (
    "torchvision._meta_registrations",
    "torchvision._autograd_registrations",
)

#: Set by :func:`ensure`: True where torchvision's native extension loaded, False where stubbed.
native_extension_loaded: bool | None = None


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd")):
            return candidate
    return None


def ensure() -> bool:
    """Idempotently prepare torchvision's import; return whether the native extension loaded."""
    global native_extension_loaded
    if native_extension_loaded is not None:
        return native_extension_loaded
    if "torchvision" in sys.modules:  # already imported successfully by someone else
        native_extension_loaded = True
        return True
    path = _extension_path()
    if path is None:  # torchvision not installed: nothing to fix
        native_extension_loaded = False
        return False
    import torch  # noqa: PLC0415 (lazy: only when torchvision is installed)

    try:
        torch.ops.load_library(str(path))
        native_extension_loaded = True
    except (OSError, RuntimeError) as exc:
        native_extension_loaded = False
        _log.debug("torchvision C++ extension unavailable (%s); stubbing op registrations", exc)
        for name in _OP_REGISTRATION_MODULES:
            stub = types.ModuleType(name)
            stub.__doc__ = (
                "Empty stand-in: torchvision's C++ ops are unavailable on this torch build."
            )
            sys.modules.setdefault(name, stub)
    return native_extension_loaded


ensure()
