"""``model.load`` and ``model.get_model``: build a model from a checkpoint, once per process.

Each model kind has one loader in :data:`LOADERS` (name -> function); ``load`` checks what is
common to all (a checkpoint or ``untrained``) and hands the rest to the kind's loader. The
pipeline's model adapters (``pipeline.adapters``) name these kinds; ``model`` never imports them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

_UNTRAINED_RE = re.compile(r"^untrained-seed(\d+)$")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None picks CUDA when available, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return dev


def _checkpoint_file(checkpoint: str | os.PathLike) -> Path:
    from model.weights import resolve

    return resolve(checkpoint)


def _load_senclip(checkpoint, *, arch, clip_checkpoint, untrained, device, seed):
    if clip_checkpoint is not None:
        raise UserError("clip_checkpoint is for timesenclip; SenCLIP's checkpoint is a CLIP")
    from model.checkpoints import find_prefix, read_checkpoint
    from model.clip import ANCHOR, SHORT, arch_from_keys, build_clip, load_clip, open_clip_name
    from model.senclip import SenCLIP
    from model.weights import REGISTRY

    if checkpoint is None:
        arch = arch or "ViT-B-32"
        net = build_clip(arch, seed)
        short = SHORT[open_clip_name(arch)]
        return SenCLIP(
            net,
            arch,
            device=device,
            identity=f"senclip:{short}:untrained-seed{seed}",
            checkpoint_sha256=None,
            untrained=True,
        )
    path = _checkpoint_file(checkpoint)
    ckpt = read_checkpoint(path)
    if arch is None:
        spec = REGISTRY.get(str(checkpoint))
        prefix = find_prefix(ckpt.state_dict, ANCHOR, ()) or ""
        arch = spec.arch if spec else (arch_from_keys(ckpt.state_dict, prefix) or "ViT-B-32")
    net = load_clip(ckpt, arch)
    short = SHORT[open_clip_name(arch)]
    return SenCLIP(
        net,
        arch,
        device=device,
        identity=f"senclip:{short}:{ckpt.sha256}",
        checkpoint_sha256=ckpt.sha256,
        untrained=False,
    )


def _clip_text_from_spec(spec: str) -> tuple[Any, str]:
    """A CLIP ViT-B/32 text tower from a spec: ``untrained-seed<k>``, a weights name or a path."""
    from model.checkpoints import read_checkpoint
    from model.clip import ClipText, load_clip, untrained_text_tower

    m = _UNTRAINED_RE.match(str(spec))
    if m:
        seed = int(m.group(1))
        net, ident = untrained_text_tower("ViT-B-32", seed), f"untrained-seed{seed}"
    else:
        ckpt = read_checkpoint(_checkpoint_file(spec))
        net, ident = load_clip(ckpt, "ViT-B-32"), f"ViT-B-32:{ckpt.sha256}"
        net.visual = None  # only the text tower is used; frees ~88M parameters
    return ClipText(net, "ViT-B-32"), ident


def _clip_text_from_embedded(ckpt) -> tuple[Any, str] | None:
    """The frozen CLIP a reference TimeSenCLIP checkpoint carries under ``clip_model.*``."""
    from model.clip import ClipText, _empty_clip, build_clip

    state = {
        k[len("clip_model.") :]: v
        for k, v in ckpt.state_dict.items()
        if k.startswith("clip_model.")
    }
    if "text_projection" not in state:
        return None
    net = _empty_clip("ViT-B-32") or build_clip("ViT-B-32")
    expected = net.state_dict()
    text_keys = [k for k in expected if not k.startswith("visual.")]
    if any(k not in state or state[k].shape != expected[k].shape for k in text_keys):
        _log.warning("%s: clip_model.* is not a CLIP ViT-B/32 text tower; ignored", ckpt.path)
        return None
    net.load_state_dict({k: state[k].float() for k in text_keys}, strict=False)
    net.visual = None
    return ClipText(net.eval(), "ViT-B-32"), f"ViT-B-32:embedded:{ckpt.sha256}"


#: Text towers tried, in order, for a TimeSenCLIP checkpoint that names none: OpenAI CLIP
#: ViT-B/32 (what the ground-photo embeddings were made with), then a SenCLIP ViT-B/32 release
#: (SenCLIP kept CLIP's text tower frozen, so it is the same).
TEXT_TOWERS = ("openai-clip-vitb32", "senclip-vitb32-avgpool", "senclip-vitb32-attpool")


def _text_identity(spec: str) -> str:
    """Identity of a text-tower spec without loading it (the file's hash for a file)."""
    from pipeline.base.hashing import sha256_file

    m = _UNTRAINED_RE.match(str(spec))
    if m:
        return f"untrained-seed{m.group(1)}"
    return f"ViT-B-32:{sha256_file(_checkpoint_file(spec))}"


def _text_source(clip_checkpoint, ckpt, seed):
    """(eager text tower or None, lazy loader or None, identity) for a TimeSenCLIP.

    Order: ``clip_checkpoint``; the untrained tower of ``seed`` for an untrained model; the
    ``clip`` a project checkpoint records; a ``clip_model.*`` CLIP inside the checkpoint (already
    in memory, so taken at once); a fetched text tower (:data:`TEXT_TOWERS`). None of them: no
    text tower (embeddings and few-shot heads still work).
    """
    from model.weights import REGISTRY

    if clip_checkpoint is not None:
        spec = str(clip_checkpoint)
    elif ckpt is None:
        spec = f"untrained-seed{seed}"
    elif ckpt.meta.get("clip"):
        spec = str(ckpt.meta["clip"])
    else:
        embedded = _clip_text_from_embedded(ckpt)
        if embedded is not None:
            return embedded[0], None, embedded[1]
        cached = [n for n in TEXT_TOWERS if n in REGISTRY and REGISTRY[n].cached]
        if not cached:
            return None, None, "none"
        spec = cached[0]
        _log.debug("TimeSenCLIP text encoder: CLIP text tower of %s", spec)
    ident = _text_identity(spec)
    return None, (lambda: _clip_text_from_spec(spec)[0]), ident


def _load_timesenclip(checkpoint, *, arch, clip_checkpoint, untrained, device, seed):
    if arch not in (None, "ViT-B-32", "TimeSenCLIP"):
        raise UserError("timesenclip has one architecture; arch applies to senclip only")
    from model.checkpoints import read_checkpoint
    from model.timesenclip import TimeSenCLIP, build_encoder, encoder_from_checkpoint

    if checkpoint is None:
        encoder, ckpt, enc_id = build_encoder(seed=seed), None, f"untrained-seed{seed}"
    else:
        ckpt = read_checkpoint(_checkpoint_file(checkpoint))
        encoder, enc_id = encoder_from_checkpoint(ckpt), ckpt.sha256

    text, loader, clip_id = _text_source(clip_checkpoint, ckpt, seed)
    missing = (
        f"{getattr(ckpt, 'path', checkpoint)}: TimeSenCLIP needs the CLIP ViT-B/32 text tower it "
        "was aligned with to encode prompts; run: python -m pipeline weights fetch "
        "openai-clip-vitb32 (or pass clip_checkpoint / --clip-checkpoint)"
    )
    return TimeSenCLIP(
        encoder,
        text,
        device=device,
        identity=f"timesenclip:{enc_id}:clip={clip_id}",
        checkpoint_sha256=None if ckpt is None else ckpt.sha256,
        untrained=ckpt is None,
        clip_identity=clip_id,
        text_loader=loader,
        missing_text=missing,
    )


#: name -> loader(checkpoint, *, arch, clip_checkpoint, untrained, device, seed) -> model.
LOADERS: dict[str, Callable[..., Any]] = {
    "senclip": _load_senclip,
    "timesenclip": _load_timesenclip,
}
NAMES = tuple(LOADERS)
"""The model kinds :func:`load` builds."""


def load(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    arch: str | None = None,
    clip_checkpoint: str | os.PathLike | None = None,
    untrained: bool = False,
    device: str | torch.device | None = None,
    seed: int = 0,
):
    """Load SenCLIP or TimeSenCLIP for inference.

    Args:
        name: ``"senclip"`` or ``"timesenclip"``.
        checkpoint: a checkpoint file, or the name of a fetched release
            (``python -m pipeline weights list``). Required unless ``untrained=True``.
        arch: SenCLIP's CLIP architecture, ``"ViT-B-32"`` or ``"RN50"``; None takes it from the
            weights registry or the checkpoint's keys (default ViT-B-32).
        clip_checkpoint: TimeSenCLIP only: the CLIP ViT-B/32 (SenCLIP or OpenAI-format) whose text
            tower encodes prompts, or ``"untrained-seed<k>"``. None uses, in order: the ``clip``
            recorded in the checkpoint, a ``clip_model.*`` CLIP inside it, a fetched OpenAI CLIP
            ViT-B/32 (``openai-clip-vitb32``) or SenCLIP ViT-B/32 release (its text tower is
            OpenAI CLIP's, kept frozen in training). The tower is loaded only when prompts are
            first encoded; an encoder-only checkpoint without any of these still embeds pixels
            and runs few-shot heads (encoding prompts is then a UserError naming the fetch).
        untrained: build a deterministic random init from ``seed`` instead (offline demo and
            tests only; identical in every process).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when available.
        seed: seed of the untrained init.

    Returns:
        :class:`model.senclip.SenCLIP` or :class:`model.timesenclip.TimeSenCLIP`.

    Raises:
        UserError: unknown name, no checkpoint without ``untrained=True``, a file that is not a
            checkpoint of the expected architecture (one line naming missing/unexpected keys).
    """
    name = str(name).strip().lower()
    if name not in LOADERS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(LOADERS)}")
    if checkpoint is None and not untrained:
        raise UserError(
            f"model {name!r} needs a checkpoint (a file, or a name from 'python -m pipeline "
            "weights list'); pass untrained=True (--untrained) only for the offline demo"
        )
    if checkpoint is not None and untrained:
        raise UserError("untrained=True builds a random model; do not pass a checkpoint with it")
    dev = pick_device(device)
    m = LOADERS[name](
        checkpoint,
        arch=arch,
        clip_checkpoint=clip_checkpoint,
        untrained=untrained,
        device=dev,
        seed=int(seed),
    )
    _log.debug("loaded %s", m.identity)
    return m


_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()
_KEY_LOCKS: dict[tuple, threading.Lock] = {}


def _cache_key(name, checkpoint, kwargs) -> tuple:
    ck = None
    if checkpoint is not None:
        p = Path(checkpoint).expanduser()
        if p.is_file():  # a rewritten file is a different model
            st = p.stat()
            ck = f"{p.resolve()}@{st.st_size}:{st.st_mtime_ns}"
        else:
            ck = str(checkpoint)
    dev = str(pick_device(kwargs.get("device")))
    items = tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "device"))
    return (str(name).lower(), ck, dev, items)


def get_model(name: str, checkpoint: str | os.PathLike | None = None, **kwargs: Any):
    """:func:`load` memoised per process by its arguments (one instance per Dask worker).

    Thread-safe: concurrent callers with the same arguments wait for one load.
    """
    key = _cache_key(name, checkpoint, kwargs)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        lock = _KEY_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _CACHE_LOCK:
            if key in _CACHE:
                return _CACHE[key]
        m = load(name, checkpoint, **kwargs)
        with _CACHE_LOCK:
            _CACHE[key] = m
        return m


def clear_cache() -> None:
    """Forget the models :func:`get_model` holds (tests, or to free memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _KEY_LOCKS.clear()
