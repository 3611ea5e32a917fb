"""Named, released checkpoints: where they come from and where they are cached.

``python -m pipeline weights fetch NAME`` downloads one into ``cache_dir("weights")``; after that
``model.load("senclip", checkpoint=NAME)`` finds it by name. Nothing here touches the network
unless :func:`fetch` is called.

The SenCLIP authors publish four checkpoints (RN50 and ViT-B/32, average and attention pooling)
in the Hugging Face repository ``pallavijainpj/SenCLIP`` (REFERENCE_MODELS.md 1.7). Only the two
ViT-B/32 file names were seen in the authors' code; the RN50 names follow the same pattern and are
marked unconfirmed.

The TimeSenCLIP authors publish ``TimeSenCLIP_1x1.ckpt`` in ``pallavijainpj/TimeSenCLIP`` (their
README: a strict ``load_state_dict`` into ``TimeSenCLIPEncoder(image_size=1, time_frames=12,
dim=512, depth=6, heads=8, mlp_dim=256, spectral_bands=10, dim_head=64)``; plain or Lightning
``state_dict``-wrapped, both read by :func:`model.timesenclip.encoder_from_checkpoint`). It holds
the pixel encoder only. Prompts need the text tower of the CLIP the LUCAS ground-photo embeddings
were made with, OpenAI CLIP ViT-B/32: ``openai-clip-vitb32`` is the file open_clip itself fetches
for ``create_model("ViT-B-32-quickgelu", pretrained="openai")`` (the Hugging Face mirror
``timm/vit_base_patch32_clip_224.openai``, an open_clip state dict with OpenAI's key names).

Licences (the ``licence`` column of ``weights list``) say only what was seen: the file listings
and model cards of the Hugging Face repositories could not be checked from here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.base.errors import UserError
from pipeline.base.paths import cache_dir

HF_REPO = "pallavijainpj/SenCLIP"


@dataclass(frozen=True)
class WeightsSpec:
    """One released checkpoint."""

    name: str
    """The name ``model.load`` and ``weights fetch`` accept."""
    model: str
    """Which model it belongs to (``senclip``)."""
    arch: str
    """CLIP architecture (``ViT-B-32`` or ``RN50``)."""
    filename: str
    """File name in the Hugging Face repository (and in the cache)."""
    description: str
    confirmed: bool = True
    """False where the file name is inferred, not seen in the authors' code."""
    repo_id: str = HF_REPO
    licence: str = "unknown"
    """What is known of the licence, and what is not."""

    @property
    def path(self) -> Path:
        """Where the file lives once fetched."""
        return cache_dir("weights") / self.filename

    @property
    def cached(self) -> bool:
        return self.path.is_file()


REGISTRY: dict[str, WeightsSpec] = {
    s.name: s
    for s in (
        WeightsSpec(
            "senclip-vitb32-avgpool",
            "senclip",
            "ViT-B-32",
            "SenCLIP_AvgPool_ViTB32.ckpt",
            "SenCLIP ViT-B/32, average pooling of the ground photos",
            licence="not stated (no LICENSE in the SenCLIP code; model card not seen)",
        ),
        WeightsSpec(
            "senclip-vitb32-attpool",
            "senclip",
            "ViT-B-32",
            "SenCLIP_AttPoolPerImg_ViTB32.ckpt",
            "SenCLIP ViT-B/32, attention pooling (per image)",
            licence="not stated (no LICENSE in the SenCLIP code; model card not seen)",
        ),
        WeightsSpec(
            "senclip-rn50-avgpool",
            "senclip",
            "RN50",
            "SenCLIP_AvgPool_RN50.ckpt",
            "SenCLIP RN50, average pooling (file name unconfirmed)",
            confirmed=False,
            licence="not stated (no LICENSE in the SenCLIP code; model card not seen)",
        ),
        WeightsSpec(
            "senclip-rn50-attpool",
            "senclip",
            "RN50",
            "SenCLIP_AttPoolPerImg_RN50.ckpt",
            "SenCLIP RN50, attention pooling (file name unconfirmed)",
            confirmed=False,
            licence="not stated (no LICENSE in the SenCLIP code; model card not seen)",
        ),
        WeightsSpec(
            "timesenclip-1x1",
            "timesenclip",
            "TimeSenCLIP-P1",
            "TimeSenCLIP_1x1.ckpt",
            "TimeSenCLIP 1x1 pixel encoder (12 months x 10 bands), encoder only",
            repo_id="pallavijainpj/TimeSenCLIP",
            licence="code MIT (TimeSenCLIP repo LICENSE); the weights' own terms not seen",
        ),
        WeightsSpec(
            "openai-clip-vitb32",
            "clip",
            "ViT-B-32",
            "open_clip_pytorch_model.bin",
            "OpenAI CLIP ViT-B/32 (open_clip ViT-B-32-quickgelu, pretrained=openai): "
            "TimeSenCLIP's text tower",
            repo_id="timm/vit_base_patch32_clip_224.openai",
            licence="MIT (openai/CLIP); its model card limits intended uses",
        ),
    )
}


def get_spec(name: str) -> WeightsSpec:
    """The registry entry for ``name``, or a UserError listing the known names."""
    if name not in REGISTRY:
        raise UserError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def cached_path(name: str) -> Path:
    """The cached file of a named checkpoint; a UserError saying how to fetch it if absent."""
    spec = get_spec(name)
    if not spec.cached:
        raise UserError(
            f"weights {name!r} are not downloaded (expected {spec.path}); "
            f"run: python -m pipeline weights fetch {name}"
        )
    return spec.path


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(timeout: float = 5.0) -> str | None:
    """None if the Hub's host accepts a connection, else the reason (skipped behind a proxy)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"cannot reach {host}:{port} ({exc.strerror or exc})"
    return None


def fetch(name: str, force: bool = False) -> Path:
    """Download a named checkpoint into ``cache_dir("weights")`` (no-op when already there).

    Raises:
        UserError: offline (``HF_HUB_OFFLINE=1`` or no connection), or the download failed.
    """
    spec = get_spec(name)
    if spec.cached and not force:
        return spec.path
    if _offline():
        raise UserError(
            f"cannot download {name}: offline (HF_HUB_OFFLINE=1); unset it, or copy "
            f"{spec.filename} from huggingface.co/{spec.repo_id} to {spec.path}"
        )
    unreachable = _reachable()
    if unreachable:
        raise UserError(f"cannot download {name}: offline, {unreachable}")
    try:
        from huggingface_hub import hf_hub_download  # noqa: PLC0415 (lazy: only downloads need huggingface_hub)
    except ImportError:  # pragma: no cover - pinned in requirements.txt
        raise UserError("huggingface_hub is not installed; pip install huggingface_hub") from None
    try:
        got = hf_hub_download(
            repo_id=spec.repo_id,
            filename=spec.filename,
            local_dir=str(spec.path.parent),
            force_download=force,
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        hint = "" if spec.confirmed else " (this file name is unconfirmed; check the model card)"
        raise UserError(
            f"cannot download {name} from huggingface.co/{spec.repo_id}: "
            f"{type(exc).__name__}: {reason}{hint}"
        ) from None
    return Path(got)


def check(checkpoint: str | os.PathLike) -> None:
    """Raise UserError unless ``checkpoint`` is a file or a registry name (no download, no
    torch: a run's cheap checks call it before any model is built)."""
    if Path(checkpoint).expanduser().is_file() or str(checkpoint) in REGISTRY:
        return
    raise UserError(
        f"checkpoint not found: {checkpoint} (not a file, nor a weights name: "
        f"{', '.join(REGISTRY)})"
    )


def resolve(checkpoint: str | os.PathLike) -> Path:
    """A checkpoint argument (a file path or a registry name) -> an existing file path."""
    check(checkpoint)
    p = Path(checkpoint).expanduser()
    if p.is_file():
        return p
    return cached_path(str(checkpoint))
