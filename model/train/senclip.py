"""Fine-tuning SenCLIP: CLIP's image tower on Sentinel-2 RGB chips against pooled ground photos.

The same loop as TimeSenCLIP (:mod:`model.train.loop`); the task wraps an open_clip CLIP whose
text tower is frozen (it must stay aligned with the ground-photo embedding space, REFERENCE_MODELS
1.1) and whose image tower is trained: all of it (``trainable="visual"``, the reference code's
default) or only the last block with the final norm and projection (``"last"``, what the paper
says it did for ViT-B/32).

The paper's projection head H is not trained: the released checkpoints do not contain it and
zero-shot inference uses ``encode_image`` directly (REFERENCE_MODELS 1.2), so the exported
checkpoint is the plain OpenAI-format CLIP state dict that ``model.load("senclip", checkpoint=...)``
reads strictly.

Chips: (N, 3, h, w) reflectance in R, G, B (B4, B3, B2) order, from a folder of GeoTIFFs named by
point id or from an ``.npz``. They go through the model's own preprocessing (per-chip joint
min-max stretch, resize, Bing normalisation; bilinear as the authors trained), after a centre crop
and, in training, random flips and 90-degree rotations.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from torch import nn

from model.senclip import preprocess_rgb
from model.train.loop import split_decay
from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

TRAINABLE = ("visual", "last")


def tiny_clip(seed: int = 0, image_size: int = 32, embed_dim: int = 32) -> nn.Module:
    """A small random open_clip CLIP (2-layer ViT, 1-layer text) for tests and mechanics."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: PLC0415 (lazy: open_clip takes seconds to import)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CLIP(
            embed_dim,
            CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=image_size),
            CLIPTextCfg(context_length=77, width=32, heads=2, layers=1),
            quick_gelu=True,
        )
    return net


def _image_size(net: nn.Module) -> int:
    size = getattr(net.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class SenCLIPTask:
    """The :class:`~model.train.loop.ContrastiveTask` for CLIP's image tower."""

    name = "senclip"

    def __init__(
        self,
        net: nn.Module,
        *,
        trainable: str = "visual",
        crop: int | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        if trainable not in TRAINABLE:
            raise UserError(f"trainable must be one of {TRAINABLE}, got {trainable!r}")
        self.net = net
        self.crop = crop
        self.interpolation = interpolation
        self.size = _image_size(net)
        self.dim = int(net.text_projection.shape[1])
        for p in net.parameters():
            p.requires_grad = False
        for name, p in net.visual.named_parameters():
            p.requires_grad = trainable == "visual" or _is_last(net.visual, name)
        n = sum(p.numel() for p in net.parameters() if p.requires_grad)
        _log.info("SenCLIP: %.1fM trainable parameters (%s)", n / 1e6, trainable)

    def modules(self) -> dict[str, nn.Module]:
        return {"visual": self.net.visual}

    def _prepare(
        self, chips: torch.Tensor, train: bool, generator: torch.Generator
    ) -> torch.Tensor:

        x = chips
        if self.crop:
            h, w = x.shape[-2:]
            c = min(self.crop, h, w)
            top, left = (h - c) // 2, (w - c) // 2
            x = x[..., top : top + c, left : left + c]
        if train:
            r = torch.randint(0, 8, (1,), generator=generator).item()
            if r & 1:
                x = x.flip(-1)
            x = torch.rot90(x, k=r >> 1, dims=(-2, -1))
        return preprocess_rgb(x, size=self.size, interpolation=self.interpolation)

    def encode(
        self, inputs: torch.Tensor, *, train: bool, generator: torch.Generator
    ) -> torch.Tensor:
        x = self._prepare(inputs.float(), train, generator)
        return self.net.encode_image(x)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self.net.state_dict()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        named = [(f"visual.{n}", p) for n, p in self.net.visual.named_parameters()]
        return split_decay(named, weight_decay)

    def export_meta(self, arch: str | None) -> dict[str, Any]:
        return {"format": "s2lc-senclip-1", **({"arch": arch} if arch else {})}


def _is_last(visual: nn.Module, name: str) -> bool:
    """Parameters of the image tower's last block, final norm and projection (ViT or RN50)."""
    if name in ("proj",) or name.startswith(("ln_post.", "attnpool.")):
        return True
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None:
        return name.startswith(f"transformer.resblocks.{len(blocks) - 1}.")
    return name.startswith("layer4.")


# --- chips ------------------------------------------------------------------------------------


class ChipArray:
    """In-memory chips (N, 3, h, w) with their point ids."""

    def __init__(self, ids: Sequence[str], chips: np.ndarray) -> None:
        self.ids = [str(i) for i in ids]
        self.chips = torch.from_numpy(np.ascontiguousarray(chips, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.chips[idx]

    def take_rows(self, rows: np.ndarray) -> ChipArray:
        return ChipArray([self.ids[i] for i in rows], self.chips[torch.as_tensor(rows)].numpy())


class ChipFolder:
    """GeoTIFF chips on disk (``<pointid>.tif``), read lazily, centre-cropped/padded to ``size``."""

    def __init__(
        self,
        paths: Sequence[Path],
        ids: Sequence[str],
        bands: Sequence[int],
        size: int,
        scale: float,
    ) -> None:
        self.paths = list(paths)
        self.ids = [str(i) for i in ids]
        self.bands = list(bands)
        self.size = size
        self.scale = scale

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: Path) -> np.ndarray:

        with rasterio.open(path) as src:
            a = src.read(self.bands, masked=True).astype(np.float32).filled(np.nan)
        a = a / self.scale
        out = np.full((3, self.size, self.size), np.nan, np.float32)
        h, w = a.shape[1:]
        ch, cw = min(h, self.size), min(w, self.size)
        top, left = (h - ch) // 2, (w - cw) // 2
        dt, dl = (self.size - ch) // 2, (self.size - cw) // 2
        out[:, dt : dt + ch, dl : dl + cw] = a[:, top : top + ch, left : left + cw]
        return out

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        rows = [int(i) for i in torch.as_tensor(idx).reshape(-1)]
        return torch.from_numpy(np.stack([self._read(self.paths[i]) for i in rows]))

    def take_rows(self, rows: np.ndarray) -> ChipFolder:
        return ChipFolder(
            [self.paths[i] for i in rows],
            [self.ids[i] for i in rows],
            self.bands,
            self.size,
            self.scale,
        )


_RGB_NAMES = {"B4": ("b4", "b04", "red"), "B3": ("b3", "b03", "green"), "B2": ("b2", "b02", "blue")}


def _rgb_from_descriptions(descriptions: Sequence[str | None]) -> list[int] | None:
    found = []
    for band in ("B4", "B3", "B2"):
        idx = [
            i + 1 for i, d in enumerate(descriptions) if d and d.strip().lower() in _RGB_NAMES[band]
        ]
        if not idx:
            return None
        found.append(idx[0])
    return found


def open_chips(
    path: str | Path,
    *,
    rgb_bands: Sequence[int] | None = None,
    size: int = 100,
    scale: float | None = None,
) -> ChipArray | ChipFolder:
    """Chips from an ``.npz`` (``ids`` (N,), ``chips`` (N, 3, h, w) R, G, B reflectance) or a
    folder of GeoTIFFs ``<id>.tif`` (1-based ``rgb_bands`` in R, G, B order; default: from the
    band descriptions, else ``3, 2, 1`` as the reference read its chips).

    ``scale``: divide raw values by this (default 10000 for integer GeoTIFFs, 1 otherwise). The
    model's per-chip min-max stretch makes the result independent of it anyway.
    """
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "ids" not in z.files or "chips" not in z.files:
                raise UserError(f"{p}: expected arrays 'ids' and 'chips' (N, 3, h, w)")
            ids, chips = z["ids"], z["chips"]
        if chips.ndim != 4 or chips.shape[1] != 3 or len(ids) != chips.shape[0]:
            raise UserError(f"{p}: 'chips' must be (N, 3, h, w) matching 'ids', got {chips.shape}")
        return ChipArray([str(i) for i in ids], chips.astype(np.float32) / (scale or 1.0))
    if not p.is_dir():
        raise UserError(f"chips not found: {p} (a folder of <id>.tif or an .npz)")
    paths = sorted(q for q in p.iterdir() if q.suffix.lower() in (".tif", ".tiff"))
    if not paths:
        raise UserError(f"{p}: no .tif chips")

    with rasterio.open(paths[0]) as src:
        bands = list(rgb_bands) if rgb_bands else _rgb_from_descriptions(src.descriptions)
        if bands is None:
            bands = [3, 2, 1] if src.count >= 3 else None
        if bands is None or max(bands) > src.count:
            raise UserError(f"{paths[0]}: needs 3 bands (R, G, B), has {src.count}")
        integer = np.dtype(src.dtypes[0]).kind in "iu"
    ids = [re.sub(r"\.tiff?$", "", q.name, flags=re.I) for q in paths]
    return ChipFolder(paths, ids, bands, size, scale or (10_000.0 if integer else 1.0))
