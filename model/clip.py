"""The CLIP parts both models share: building the network, loading CLIP weights, encoding text.

SenCLIP's released checkpoints are OpenAI-CLIP state dicts (no prefix, no projection head,
REFERENCE_MODELS.md 1.7). They load strictly into open_clip's ``ViT-B-32-quickgelu`` /
``RN50-quickgelu`` built with ``pretrained=None``. Never plain ``ViT-B-32``: it uses exact GELU,
loads the same keys without complaint and gives different image embeddings (up to 0.045).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F

import model._torchvision_compat  # noqa: F401 (before open_clip imports torchvision)
from model.checkpoints import Checkpoint, find_prefix, match_keys, strip_prefix
from pipeline.base.atomic import atomic_path
from pipeline.base.errors import UserError
from pipeline.base.paths import cache_dir

_log = logging.getLogger(__name__)

#: Accepted spellings -> the open_clip model name (always the QuickGELU variant).
ARCHS = {
    "vit-b-32": "ViT-B-32-quickgelu",
    "vit-b/32": "ViT-B-32-quickgelu",
    "vitb32": "ViT-B-32-quickgelu",
    "vit-b-32-quickgelu": "ViT-B-32-quickgelu",
    "rn50": "RN50-quickgelu",
    "rn50-quickgelu": "RN50-quickgelu",
}
#: Short names used in identities and messages.
SHORT = {"ViT-B-32-quickgelu": "ViT-B-32", "RN50-quickgelu": "RN50"}

#: Key every CLIP state dict has exactly once at its top level (used to find wrapper prefixes).
ANCHOR = "text_projection"
#: Wrapper prefixes seen in the wild, most specific first (SenCLIP's Lightning module stores the
#: CLIP under ``model.encoder.model.``; TimeSenCLIP checkpoints carry ``clip_model.``).
PREFERRED_PREFIXES = (
    "",
    "model.",
    "clip_model.",
    "module.",
    "model.encoder.model.",
    "encoder.model.",
)

_BUILD_LOCK = threading.Lock()


def open_clip_name(arch: str) -> str:
    """Map an architecture spelling (``ViT-B-32``, ``ViT-B/32``, ``RN50``) to its open_clip name."""
    key = str(arch).strip().lower()
    if key not in ARCHS:
        raise UserError(f"unknown CLIP architecture {arch!r}; choose ViT-B-32 or RN50")
    return ARCHS[key]


def arch_from_keys(keys: Sequence[str] | set[str], prefix: str = "") -> str | None:
    """Guess the architecture of a CLIP state dict from its visual-tower keys."""
    keys = set(keys)
    if f"{prefix}visual.class_embedding" in keys:
        return "ViT-B-32"  # other ViT sizes fail the strict shape check with a clear message
    if f"{prefix}visual.layer1.0.conv1.weight" in keys:
        return "RN50"
    return None


@contextlib.contextmanager
def _quiet_open_clip():
    # open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def build_clip(arch: str, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP (QuickGELU), deterministic for a given ``seed``.

    The global RNG is left untouched (``fork_rng``), so building a model does not change what
    the caller's random numbers would have been.
    """
    import open_clip  # noqa: PLC0415 (lazy: open_clip takes seconds to import)

    name = open_clip_name(arch)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(seed)
        net = open_clip.create_model(name, pretrained=None)
    net.eval()
    return net


def untrained_text_tower(arch: str, seed: int = 0) -> torch.nn.Module:
    """The text tower of :func:`build_clip` ``(arch, seed)`` (``visual`` removed), the same
    values, cached on disk after the first build.

    A random CLIP costs seconds to initialise (151M parameters for ViT-B/32, most of them in the
    image tower, whose random draws come first and so cannot be skipped), and the untrained demo
    needs only its text tower, in every process that encodes prompts. The first build stores the
    text tower's state dict under ``cache_dir("untrained")`` (~250 MB for ViT-B/32), keyed by
    architecture, seed and the open_clip and torch versions (their RNG use decides the values);
    later processes load it into an uninitialised network instead. An unreadable cache entry is
    rebuilt.
    """
    import open_clip  # noqa: PLC0415 (lazy: open_clip takes seconds to import)

    name = open_clip_name(arch)
    key = f"{name}-seed{seed}-open_clip{open_clip.__version__}-torch{torch.__version__}"
    path = cache_dir("untrained") / f"{key.replace('+', '_')}.text.pt"
    net = _empty_clip(arch) if path.is_file() else None
    if net is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("visual.") for k in missing):
                raise ValueError(
                    f"keys differ (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
            net.visual = None
            return net.eval()
        except Exception as exc:  # noqa: BLE001 - a bad cache entry is rebuilt, never fatal
            _log.warning("ignoring unreadable text-tower cache %s (%s)", path, exc)
    net = build_clip(arch, seed)
    net.visual = None
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    return net


def clip_state_from_checkpoint(ckpt: Checkpoint, net: torch.nn.Module, arch: str) -> dict:
    """The CLIP state dict inside ``ckpt`` (prefix removed), checked against ``net``'s keys."""
    prefix = find_prefix(ckpt.state_dict, ANCHOR, PREFERRED_PREFIXES)
    what = f"CLIP {SHORT.get(open_clip_name(arch), arch)}"
    if prefix is None:
        # Not CLIP at all: let match_keys produce the missing/unexpected listing.
        return match_keys(ckpt.state_dict, net.state_dict(), where=str(ckpt.path), what=what)
    state = strip_prefix(ckpt.state_dict, prefix)
    if prefix:
        _log.debug("%s: CLIP weights found under prefix %r", ckpt.path, prefix)
    return match_keys(state, net.state_dict(), where=str(ckpt.path), what=what)


def _empty_clip(arch: str) -> torch.nn.Module | None:
    """``arch`` with uninitialised weights (built on the meta device: no slow random init).

    Only for loading a full state dict right after. Non-persistent buffers are not in state
    dicts, so they are rebuilt here; None if the model has one this function does not know.
    """
    import open_clip  # noqa: PLC0415 (lazy: open_clip takes seconds to import)

    with _BUILD_LOCK, torch.device("meta"), _quiet_open_clip():
        net = open_clip.create_model(open_clip_name(arch), pretrained=None, device="meta")
    net = net.to_empty(device="cpu")
    persistent = set(net.state_dict())
    for name, buf in list(net.named_buffers()):
        if name in persistent:
            continue
        if name.split(".")[-1] != "attn_mask" or buf.dim() != 2:
            return None
        mask = torch.full(tuple(buf.shape), float("-inf")).triu_(1)  # open_clip's causal mask
        owner = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
        owner.register_buffer(name.split(".")[-1], mask, persistent=False)
    return net


def load_clip(ckpt: Checkpoint, arch: str) -> torch.nn.Module:
    """Build ``arch`` and load the CLIP weights from ``ckpt`` strictly."""
    net = _empty_clip(arch) or build_clip(arch)
    state = clip_state_from_checkpoint(ckpt, net, arch)
    net.load_state_dict(state, strict=True)
    net.eval()
    return net


class ClipText:
    """CLIP's text tower with its tokenizer: prompts -> L2-normalised embeddings."""

    def __init__(self, net: torch.nn.Module, arch: str) -> None:
        import open_clip  # noqa: PLC0415 (lazy: open_clip takes seconds to import)

        self.net = net
        self.arch = arch
        self.tokenizer = open_clip.get_tokenizer(open_clip_name(arch))

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the CLIP weights (100 for trained OpenAI CLIP)."""
        return float(self.net.logit_scale.detach().exp().clamp(max=100.0))

    @torch.inference_mode()
    def embed(
        self, prompts: Sequence[str], device: torch.device, batch_size: int = 256
    ) -> torch.Tensor:
        """Encode ``prompts`` (tokenised together; longer than 77 tokens are truncated)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise UserError("no prompts to encode")
        tokens = self.tokenizer(list(prompts))
        out = []
        for i in range(0, len(tokens), batch_size):
            t = tokens[i : i + batch_size].to(device)
            out.append(self.net.encode_text(t).float())
        return F.normalize(torch.cat(out), dim=-1)
