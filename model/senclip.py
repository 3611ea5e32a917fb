"""SenCLIP: CLIP (ViT-B/32 or RN50) fine-tuned on Sentinel-2 RGB chips, applied patch-wise.

The released checkpoints are plain OpenAI-CLIP state dicts (REFERENCE_MODELS.md 1.7), loaded
strictly into open_clip's QuickGELU models. Zero-shot inference uses ``encode_image`` directly
(no projection head: it is not in the checkpoints).

Preprocessing follows the reference evaluation of Sentinel-2 arrays (``dataset_bigearthnet.py``)
with the bands in the right order (B4, B3, B2 = R, G, B; the reference fed B2, B3, B4):

1. a per-chip min-max stretch computed jointly over the 3 bands to [0, 1] (``cv2.NORM_MINMAX``),
   then quantised to 8 bits as the reference's ``np.uint8`` cast does (truncation);
2. resize to 224 x 224, bicubic with PIL's kernel (torch's antialiased bicubic), in PIL's two
   separable passes with 8-bit rounding after each (matches PIL within 1-2 levels of 255);
3. ``Normalize`` with the "Bing" statistics :data:`BING_MEAN` / :data:`BING_STD`.

The stretch makes the result independent of the reflectance scale and offset (so of the
post-2022 BOA offset too). NaN pixels are ignored by the stretch and become 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.clip import SHORT, ClipText, open_clip_name
from pipeline.base.errors import UserError

#: The "BingCLIP" normalisation of the SenCLIP code (origin undocumented).
BING_MEAN = (0.347, 0.376, 0.296)
BING_STD = (0.269, 0.261, 0.276)
IMAGE_SIZE = 224
#: Input band order (R, G, B).
BANDS = ("B4", "B3", "B2")


def stretch(rgb: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Per-chip min-max over all 3 bands jointly: (N, 3, h, w) -> [0, 1] (NaN -> 0)."""
    x = rgb.float()
    flat = x.flatten(1)
    finite = torch.isfinite(flat)
    lo = torch.where(finite, flat, torch.inf).amin(dim=1)
    hi = torch.where(finite, flat, -torch.inf).amax(dim=1)
    lo = torch.where(torch.isfinite(lo), lo, 0.0)
    span = torch.where(torch.isfinite(hi), hi - lo, 0.0)
    span = torch.where(span > 0, span, torch.ones_like(span))  # constant chip -> all zeros
    y = (x - lo.view(-1, 1, 1, 1)) / span.view(-1, 1, 1, 1)
    y = torch.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)
    if quantize:  # cv2.normalize -> float [0, 255] -> np.uint8 (truncates)
        y = torch.floor(y * 255.0 + 1e-4) / 255.0
    return y


def _resize(y: torch.Tensor, size: int, mode: str, quantize: bool) -> torch.Tensor:
    if not quantize:
        y = F.interpolate(y, size=(size, size), mode=mode, antialias=True, align_corners=False)
        return y.clamp(0.0, 1.0)
    # PIL resizes a uint8 image in two separable passes and rounds to uint8 after each: with
    # torch's antialiased (PIL-kernel) interpolation this matches PIL to 1-2 levels of 255.
    h = y.shape[-2]
    for shape in ((h, size), (size, size)):
        y = F.interpolate(y, size=shape, mode=mode, antialias=True, align_corners=False)
        y = torch.round(y.clamp(0.0, 1.0) * 255.0) / 255.0
    return y


def preprocess_rgb(
    rgb: np.ndarray | torch.Tensor,
    *,
    size: int = IMAGE_SIZE,
    interpolation: str = "bicubic",
    quantize: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(N, 3, h, w) reflectance (B4, B3, B2) -> (N, 3, size, size) CLIP input (see module doc)."""
    x = torch.as_tensor(rgb)
    if device is not None:
        x = x.to(device, non_blocking=True)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise UserError(f"SenCLIP expects (N, 3, h, w) RGB chips, got {tuple(x.shape)}")
    if interpolation not in ("bicubic", "bilinear"):
        raise UserError(f"interpolation must be bicubic or bilinear, got {interpolation!r}")
    y = stretch(x, quantize=quantize)
    if tuple(y.shape[-2:]) != (size, size):
        y = _resize(y, size, interpolation, quantize)
    mean = torch.tensor(BING_MEAN, device=y.device).view(1, 3, 1, 1)
    std = torch.tensor(BING_STD, device=y.device).view(1, 3, 1, 1)
    return (y - mean) / std


class SenCLIP:
    """A loaded SenCLIP (or any OpenAI-format CLIP): see :func:`model.load`."""

    name = "senclip"
    bands = BANDS
    inputs = "chips"
    """What :mod:`model.engine` feeds it: (N, 3, h, w) RGB chips (``embed_chips``)."""

    def __init__(
        self,
        net: torch.nn.Module,
        arch: str,
        *,
        device: torch.device,
        identity: str,
        checkpoint_sha256: str | None,
        untrained: bool,
    ) -> None:
        self.net = net.to(device).eval()
        self.arch = SHORT.get(open_clip_name(arch), arch)
        self.text = ClipText(self.net, self.arch)
        self.device = device
        self.identity = identity
        #: The embedding space (the whole CLIP image tower).
        self.embedding_identity = identity
        self.checkpoint_sha256 = checkpoint_sha256
        self.untrained = untrained
        self.embed_dim = int(self.net.text_projection.shape[1])
        self.image_size = IMAGE_SIZE

    def __repr__(self) -> str:
        return f"SenCLIP(identity={self.identity!r}, device={self.device})"

    @property
    def logit_scale(self) -> float:
        return self.text.logit_scale

    def preprocess(
        self,
        rgb: np.ndarray | torch.Tensor,
        *,
        interpolation: str = "bicubic",
        quantize: bool = True,
    ) -> torch.Tensor:
        """(N, 3, h, w) reflectance B4, B3, B2 (0-1) -> (N, 3, 224, 224) normalised CLIP input.

        ``interpolation="bilinear"`` matches the authors' training transform instead of their
        evaluation; ``quantize=False`` skips the 8-bit rounding of the reference pipeline.
        """
        return preprocess_rgb(rgb, interpolation=interpolation, quantize=quantize)

    @torch.inference_mode()
    def image_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, 224, 224) CLIP input -> (N, D) L2-normalised image embeddings (float32)."""
        x = torch.as_tensor(x).to(self.device, dtype=torch.float32, non_blocking=True)
        return F.normalize(self.net.encode_image(x).float(), dim=-1)

    def text_embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """list of prompts -> (P, D) L2-normalised text embeddings."""
        return self.text.embed(prompts, self.device)
