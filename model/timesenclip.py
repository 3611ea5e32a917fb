"""TimeSenCLIP: a per-pixel Sentinel-2 time-series transformer aligned with CLIP ViT-B/32.

The encoder is built exactly as the reference code builds it (REFERENCE_MODELS.md 2.2), with the
same parameter names, so the authors' weights drop in:

- ``spectral_embedding.1``: ``Linear(10 -> 512)``, one token per month (``spectral_embedding.0``
  only flattens ``(N, T, C, 1, 1)`` inputs, it has no weights);
- ``class_token`` (1, 1, 512) and ``time_pos_encoding`` (1, 12, 512), zero-initialised;
- ``transformer``: 6 x ``nn.TransformerEncoderLayer(512, 8 heads, FFN 256, dropout 0.2,
  batch_first=True)``, i.e. PyTorch's post-norm ReLU layer;
- ``mlp_head``: ``LayerNorm(512)`` + ``Linear(512, 512)`` on the CLS output.

Inference takes T = 12 (monthly), 4 (quarterly medians) or 1 (annual median) steps. The position
embeddings follow the reference ``inference()``: all 12 for T = 12, the median of each 3-month
group for T = 4, and the *mean* of all 12 for T = 1 (what training's median-token augmentation
uses; one reference version took position 0 instead).

Inputs are L2A reflectance x 1e4 with the post-2022 ``BOA_ADD_OFFSET`` (+1000) already removed, in
the band order :data:`BANDS`. They are normalised as ``(x - OFFSET) / (SCALE + 1e-6)`` clamped to
[0, 1] (the reference training dataset; its newest inference dataset drops the clamp). Missing
values (NaN) become 0 after normalisation, which is what the reference's zero-filled masked
pixels become too.

Checkpoints: a plain encoder state dict, or one wrapped as the reference's Lightning modules
save it (``state_dict`` entry; prefixes ``learner.ts_encoder.``, ``learner.TS_ViT.``,
``ts_encoder.``, ``TS_ViT.``; a frozen ``clip_model.*`` next to it is not part of the encoder).
:func:`save_checkpoint` writes the project's own format, which also records the CLIP text encoder
the weights were aligned with.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoints import Checkpoint, find_prefix, match_keys, read_checkpoint, strip_prefix
from model.clip import ClipText
from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

#: Band order of the encoder's input (the reference H5 channel order).
BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
#: Per-band offset subtracted first (called MEAN in the reference code), reflectance x 1e4.
NORM_OFFSET = (67.0, 122.0, 93.27, 158.5, 160.77, 174.27, 162.27, 149.0, 84.5, 66.27)
#: Per-band divisor (called STD in the reference code), reflectance x 1e4.
NORM_SCALE = (
    2089.0,
    2598.45,
    3214.5,
    3620.45,
    4033.61,
    4613.0,
    4825.45,
    4945.72,
    5140.84,
    4414.45,
)
NORM_EPS = 1e-6
#: Time steps the encoder accepts at inference.
SUPPORTED_T = (1, 4, 12)

#: Key every encoder state dict has (used to find wrapper prefixes).
ANCHOR = "spectral_embedding.1.weight"
#: Wrapper prefixes, preferred first. The reference Lightning module stores the encoder twice
#: (``learner.ts_encoder.*`` and a copy ``TS_ViT.*`` that can go stale); the learner's wins.
PREFERRED_PREFIXES = (
    "",
    "learner.ts_encoder.",
    "learner.TS_ViT.",
    "ts_encoder.",
    "TS_ViT.",
    "model.",
    "module.",
    "encoder.",
)
#: Entries of a checkpoint that are not the encoder and are ignored next to a plain state dict.
IGNORED_PREFIXES = ("clip_model.",)
#: ``format`` value written by :func:`save_checkpoint`.
FORMAT = "s2lc-timesenclip-1"


class _Flatten(nn.Module):
    """``spectral_embedding.0``: (N, T, C, H, W) -> (N, T, C*H*W); (N, T, C) passes through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2) if x.dim() > 3 else x


class TimeSenCLIPEncoder(nn.Module):
    """The TimeSenCLIP pixel encoder (reference architecture and parameter names).

    Args:
        bands: spectral bands per time step (10).
        dim: token and output width (512, CLIP ViT-B/32's embedding size).
        depth: transformer layers (6).
        heads: attention heads (8).
        mlp_dim: feed-forward width of each layer (256).
        dropout: dropout inside the transformer layers (0.2; inactive in ``eval()``).
        max_t: time steps of the full series and number of position embeddings (12).
    """

    def __init__(
        self,
        bands: int = 10,
        dim: int = 512,
        depth: int = 6,
        heads: int = 8,
        mlp_dim: int = 256,
        dropout: float = 0.2,
        max_t: int = 12,
    ) -> None:
        super().__init__()
        self.bands, self.dim, self.depth, self.heads = bands, dim, depth, heads
        self.mlp_dim, self.dropout, self.max_t = mlp_dim, dropout, max_t
        self.spectral_embedding = nn.Sequential(_Flatten(), nn.Linear(bands, dim))
        self.time_pos_encoding = nn.Parameter(torch.zeros(1, max_t, dim))
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=mlp_dim, dropout=dropout, batch_first=True
        )
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=depth, enable_nested_tensor=False
        )
        self.to_latent = nn.Identity()
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def config(self) -> dict[str, Any]:
        """Constructor arguments (stored in checkpoints written by :func:`save_checkpoint`)."""
        return {
            "bands": self.bands,
            "dim": self.dim,
            "depth": self.depth,
            "heads": self.heads,
            "mlp_dim": self.mlp_dim,
            "dropout": self.dropout,
            "max_t": self.max_t,
        }

    def positions(self, t: int) -> torch.Tensor:
        """Position embeddings (1, t, dim) for ``t`` time steps, as the reference derives them."""
        pos = self.time_pos_encoding
        if t == self.max_t:
            return pos
        if t == 1:
            return pos.mean(dim=1, keepdim=True)
        if t > 1 and self.max_t % t == 0:  # T = 4: median of each 3-month group
            return pos.view(1, t, self.max_t // t, self.dim).median(dim=2).values
        raise ValueError(
            f"TimeSenCLIP takes T in {SUPPORTED_T} time steps (or a divisor of {self.max_t}), "
            f"got {t}"
        )

    def encode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Transformer + head on embedded tokens (N, t, dim) with position embeddings (1|N, t, dim)."""
        x = tokens + pos.to(tokens.dtype)
        cls = self.class_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = self.transformer(torch.cat([cls, x], dim=1))
        return self.mlp_head(self.to_latent(x[:, 0]))

    def forward(self, x: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """Training path: (N, 12, bands) normalised series -> (N, dim) unnormalised embeddings.

        With ``augment=True`` applies the reference's default temporal augmentation (TSMixAug):
        with probability 0.5 per batch, either the median over all months as one token (with the
        mean position embedding) or dropping 3 consecutive months. Unlike the reference, the kept
        months keep their own position embeddings (the reference took the first 9). Randomness
        comes from torch's global RNG, so seeding it makes training reproducible.
        """
        if x.shape[1] != self.max_t:
            raise ValueError(f"forward() takes T={self.max_t} time steps, got {x.shape[1]}")
        tokens = self.spectral_embedding(x)
        pos = self.time_pos_encoding
        if augment and torch.rand(()) > 0.5:
            if torch.rand(()) > 0.5:
                tokens = tokens.median(dim=1, keepdim=True).values
                pos = pos.mean(dim=1, keepdim=True)
            else:
                start = int(torch.randint(0, self.max_t - 3 + 1, ()))
                keep = [i for i in range(self.max_t) if not start <= i < start + 3]
                tokens, pos = tokens[:, keep], pos[:, keep]
        return self.encode(tokens, pos)

    def inference(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, bands) normalised series, T in {1, 4, 12} -> (N, dim) unnormalised embeddings."""
        tokens = self.spectral_embedding(x)
        return self.encode(tokens, self.positions(tokens.shape[1]))


def build_encoder(seed: int | None = None, **config: Any) -> TimeSenCLIPEncoder:
    """An encoder in eval mode; with ``seed``, a deterministic random init (RNG left untouched)."""
    if seed is None:
        return TimeSenCLIPEncoder(**config).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = TimeSenCLIPEncoder(**config)
        # The reference zero-initialises these; a random untrained model uses small random values
        # so that months and the CLS token are distinguishable.
        nn.init.normal_(enc.time_pos_encoding, std=0.02)
        nn.init.normal_(enc.class_token, std=0.02)
    return enc.eval()


def normalise(series: torch.Tensor) -> torch.Tensor:
    """Reflectance x 1e4 (..., 10 bands) -> the encoder's [0, 1] input (NaN -> 0)."""
    off = torch.tensor(NORM_OFFSET, dtype=torch.float32, device=series.device)
    scale = torch.tensor(NORM_SCALE, dtype=torch.float32, device=series.device)
    x = (series.float() - off) / (scale + NORM_EPS)
    return torch.nan_to_num(x.clamp(0.0, 1.0), nan=0.0)


def temporal_median(series: np.ndarray | torch.Tensor, t: int) -> torch.Tensor:
    """Aggregate a monthly series (N, 12, C) to ``t`` steps: quarterly (4) or annual (1) medians.

    NaN-aware (``torch.nanmedian``; the lower middle value for even counts, as ``torch.median``).
    """
    x = torch.as_tensor(series)
    n, months, c = x.shape
    if t == months:
        return x
    if t < 1 or months % t:
        raise ValueError(f"cannot aggregate {months} months into {t} steps")
    return x.reshape(n, t, months // t, c).nanmedian(dim=2).values


def _infer_config(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Encoder constructor arguments read off the tensor shapes (heads from ``meta``, else 8)."""
    try:
        dim, bands = state["spectral_embedding.1.weight"].shape
        max_t = state["time_pos_encoding"].shape[1]
        depth = 1 + max(
            int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))
        )
        mlp_dim = state["transformer.layers.0.linear1.weight"].shape[0]
    except (KeyError, ValueError, IndexError):
        return {}  # let the strict key check report what is wrong
    cfg = {"bands": int(bands), "dim": int(dim), "depth": depth, "mlp_dim": int(mlp_dim)}
    cfg["max_t"] = int(max_t)
    cfg["heads"] = int(meta.get("heads", 8))
    return cfg


def encoder_from_checkpoint(ckpt: Checkpoint) -> TimeSenCLIPEncoder:
    """Build the encoder that ``ckpt`` holds (any reference key layout) and load it strictly."""
    prefix = find_prefix(ckpt.state_dict, ANCHOR, PREFERRED_PREFIXES)
    state = strip_prefix(ckpt.state_dict, prefix or "")
    if not prefix:
        state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    else:
        _log.debug("%s: TimeSenCLIP encoder found under prefix %r", ckpt.path, prefix)
    enc = build_encoder(**_infer_config(state, ckpt.meta))
    state = match_keys(state, enc.state_dict(), where=str(ckpt.path), what="TimeSenCLIP encoder")
    enc.load_state_dict(state, strict=True)
    return enc.eval()


def save_checkpoint(
    encoder: TimeSenCLIPEncoder,
    path: str | Path,
    *,
    clip: str | None = None,
    **meta: str | int | float | bool,
) -> Path:
    """Write an encoder checkpoint that :func:`model.load` reads back.

    Args:
        encoder: the trained encoder.
        path: output file (``.pt``).
        clip: the CLIP text encoder the embeddings are aligned with: a weights name
            (``senclip-vitb32-avgpool``), a checkpoint path, or ``untrained-seed<k>`` for the
            deterministic random CLIP of seed k. ``model.load`` uses it when no
            ``clip_checkpoint`` is passed.
        meta: extra plain values to record (epoch, data version, ...).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"format": FORMAT, **encoder.config(), **meta}
    if clip is not None:
        payload["clip"] = str(clip)
    payload["state_dict"] = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    torch.save(payload, out)
    return out


class TimeSenCLIP:
    """A loaded TimeSenCLIP: pixel encoder + CLIP text tower (see :func:`model.load`)."""

    name = "timesenclip"
    bands = BANDS
    inputs = "pixels"
    """What :mod:`model.engine` feeds it: (N, T, 10) pixel series (``embed_pixels``)."""

    def __init__(
        self,
        encoder: TimeSenCLIPEncoder,
        text: ClipText | None,
        *,
        device: torch.device,
        identity: str,
        checkpoint_sha256: str | None,
        untrained: bool,
        clip_identity: str,
        text_loader: Callable[[], ClipText] | None = None,
        missing_text: str = "",
    ) -> None:
        self.encoder = encoder.to(device).eval()
        self._text = text
        if text is not None:
            text.net.to(device)
        self._text_loader = text_loader
        self._text_lock = threading.Lock()
        self._missing_text = missing_text
        self.device = device
        self.identity = identity
        #: The embedding space alone (the encoder); the text tower is not part of it.
        self.embedding_identity = identity.split(":clip=")[0]
        self.checkpoint_sha256 = checkpoint_sha256
        self.untrained = untrained
        self.clip_identity = clip_identity
        self.embed_dim = encoder.dim
        self.arch = "TimeSenCLIP-P1"

    def __repr__(self) -> str:
        return f"TimeSenCLIP(identity={self.identity!r}, device={self.device})"

    @property
    def has_text(self) -> bool:
        """Whether prompts can be encoded (a text tower is loaded or known where to load)."""
        return self._text is not None or self._text_loader is not None

    @property
    def text(self) -> ClipText:
        """The CLIP ViT-B/32 text tower, loaded on first use (embeddings never need it).

        Raises:
            UserError: no text tower is known (an encoder-only checkpoint and none fetched); the
                message names the ``weights fetch`` command.
        """
        if self._text is None:
            with self._text_lock:
                if self._text is None:
                    if self._text_loader is None:
                        raise UserError(self._missing_text or "TimeSenCLIP has no text tower")
                    text = self._text_loader()
                    text.net.to(self.device)
                    self._text = text
        return self._text

    @property
    def logit_scale(self) -> float:
        return self.text.logit_scale

    def preprocess(self, series: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, T, 10) reflectance x 1e4 (offset removed; bands :data:`BANDS`) -> normalised."""
        x = torch.as_tensor(series)
        if x.dim() != 3 or x.shape[-1] != self.encoder.bands:
            raise UserError(
                f"TimeSenCLIP expects (N, T, {self.encoder.bands}) series, got {tuple(x.shape)}"
            )
        return normalise(x)

    @torch.inference_mode()
    def pixel_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, 10) normalised, T in {1, 4, 12} -> (N, 512) L2-normalised (float32)."""
        x = torch.as_tensor(x).to(self.device, dtype=torch.float32, non_blocking=True)
        if x.shape[1] not in SUPPORTED_T and self.encoder.max_t % x.shape[1]:
            raise UserError(f"TimeSenCLIP takes T in {SUPPORTED_T} time steps, got {x.shape[1]}")
        return F.normalize(self.encoder.inference(x).float(), dim=-1)

    def text_embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """list of prompts -> (P, 512) L2-normalised CLIP ViT-B/32 text embeddings."""
        return self.text.embed(prompts, self.device)


def load_encoder(path: str | Path) -> tuple[TimeSenCLIPEncoder, Checkpoint]:
    """Read an encoder checkpoint (any supported layout)."""
    ckpt = read_checkpoint(path)
    return encoder_from_checkpoint(ckpt), ckpt
