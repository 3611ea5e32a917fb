"""Temporal augmentation for TimeSenCLIP training, and a forward pass with explicit positions.

The reference (``TimeSenCLIPEncoder._tsmixaug``, REFERENCE_MODELS.md 2.2) applies, with p = 0.5
per batch, either a **median** over all 12 months (one token) or a **quarter drop** (3 consecutive
months removed, start uniform in 0..9), and then adds position embeddings in a quirky way:

- after a drop it adds ``time_pos[:, :n]``, the *first n* positions, not those of the months
  kept: with months 4-6 dropped, July's token gets April's position;
- a single (median) token gets the *mean* of all 12 position vectors.

``position_mode="reference"`` reproduces that; ``"kept"`` (the default) gives every kept month
its own position, which is what inference on a complete year sees. Both use the mean position
for the median token, which is also what the project's ``inference`` uses for T = 1.

One deliberate difference: the reference takes the median over the *embedded tokens* (after the
band Linear), we take it over the *input* months, so that a median-augmented sample is exactly
what the annual-composite (T = 1) inference path feeds the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

AUGMENTATIONS = ("none", "tsmix", "median", "quarter")
POSITION_MODES = ("kept", "reference")


@dataclass(frozen=True)
class TemporalAugment:
    """Per-batch temporal augmentation (see the module docstring).

    Attributes:
        mode: ``tsmix`` (reference TSMixAug: with probability ``p`` median or quarter drop, 50/50),
            ``median`` / ``quarter`` (always that one, with probability ``p``), ``none``.
        p: probability that a batch is augmented at all.
        position_mode: ``kept`` or ``reference`` (the first-n-positions quirk).
        drop: months removed by a quarter drop.
    """

    mode: str = "tsmix"
    p: float = 0.5
    position_mode: str = "kept"
    drop: int = 3

    def __post_init__(self) -> None:
        if self.mode not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {self.mode!r}")
        if self.position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p}")

    def choose(self, t: int, generator: torch.Generator) -> tuple[str, int]:
        """Draw the batch's operation: ("none"|"median"|"quarter", drop start)."""
        if self.mode == "none" or t <= 1:
            return "none", 0
        r = torch.rand(3, generator=generator)
        if float(r[0]) >= self.p:
            return "none", 0
        op = self.mode
        if op == "tsmix":
            op = "median" if float(r[1]) < 0.5 else "quarter"
        if op == "quarter" and t <= self.drop:
            op = "median"
        start = int(float(r[2]) * (t - self.drop + 1)) if op == "quarter" else 0
        return op, min(start, max(t - self.drop, 0))

    def apply(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """Augment a batch (B, T, C).

        Returns the new batch (B, T', C), the month index (T',) of every kept token (None for a
        median token: it gets the mean position) and the operation's name.
        """
        t = x.shape[1]
        op, start = self.choose(t, generator)
        if op == "median":
            return x.median(dim=1, keepdim=True).values, None, op
        keep = torch.arange(t, device=x.device)
        if op == "quarter":
            keep = torch.cat([keep[:start], keep[start + self.drop :]])
            x = x[:, keep]
        if self.position_mode == "reference":
            keep = torch.arange(x.shape[1], device=x.device)
        return x, keep, op


def positions_for(encoder: nn.Module, months: torch.Tensor | None, n: int) -> torch.Tensor:
    """Position embeddings (n, D) for tokens at ``months`` (None: one token, mean position)."""
    pos = encoder.time_pos_encoding.reshape(-1, encoder.time_pos_encoding.shape[-1])
    if months is None:
        return pos.mean(dim=0, keepdim=True).expand(n, -1)
    return pos[months]


def _token_linear(encoder: nn.Module) -> nn.Module:
    emb = encoder.spectral_embedding
    if isinstance(emb, nn.Sequential):
        return next(m for m in reversed(emb) if isinstance(m, nn.Linear))
    return emb


def forward_with_positions(
    encoder: nn.Module, x: torch.Tensor, months: torch.Tensor | None
) -> torch.Tensor:
    """TimeSenCLIP encoder forward for any number of months with explicit positions.

    ``x`` (B, T', C) normalised inputs; ``months`` (T',) the month index of each token, or None
    for a single median token. Uses the encoder's parameters (``spectral_embedding``,
    ``time_pos_encoding``, ``class_token``, ``transformer``, ``mlp_head``: the reference names,
    which the project's encoder keeps for checkpoint compatibility). The encoder's own ``forward``
    is used when the batch is the full, in-order year.
    """
    b, t = x.shape[0], x.shape[1]
    tokens = _token_linear(encoder)(x.reshape(b, t, -1))
    pos = positions_for(encoder, months, t).to(tokens.dtype).unsqueeze(0)
    if hasattr(encoder, "encode"):  # model.timesenclip.TimeSenCLIPEncoder
        return encoder.encode(tokens, pos)
    tokens = tokens + pos
    cls = encoder.class_token.reshape(1, 1, -1).expand(b, -1, -1).to(tokens.dtype)
    h = encoder.transformer(torch.cat([cls, tokens], dim=1))
    latent = h[:, 0]
    to_latent = getattr(encoder, "to_latent", None)
    if to_latent is not None:
        latent = to_latent(latent)
    return encoder.mlp_head(latent)
