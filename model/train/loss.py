"""InfoNCE with in-batch negatives plus a MoCo-style queue, and a learnable temperature.

For a batch of satellite embeddings ``s`` (B, D) and pooled ground embeddings ``g`` (B, D), both
L2-normalised, the satellite-anchored logits of sample i are

    scale * [ s_i . g_1, ..., s_i . g_B,  s_i . q_1, ..., s_i . q_K ]

with the positive at column i: the other samples of the batch **and** the K queued ground
embeddings of earlier batches are negatives (TimeSenCLIP paper Eq. 7). The reference code used
queue negatives only and a queue filled with random vectors at the start (REFERENCE_MODELS.md 1.2
and 2.2); here the queue starts empty and only filled slots are used. With ``symmetric=True`` the
ground-anchored direction (in-batch only) is added and the two are averaged, as in CLIP.

``scale = exp(logit_scale)``, ``logit_scale`` learnable, initialised to ln(1/0.07) and clamped to
[0, ln 100] after every optimiser step (:meth:`ContrastiveLoss.clamp_`), as the reference does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


class ContrastiveLoss(nn.Module):
    """InfoNCE over [in-batch | queue] negatives; owns the queue and the temperature."""

    def __init__(
        self,
        dim: int,
        queue_size: int = 2048,
        *,
        learn_temperature: bool = True,
        init_logit_scale: float = INIT_LOGIT_SCALE,
        symmetric: bool = True,
    ) -> None:
        super().__init__()
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        scale = torch.tensor(float(init_logit_scale))
        if learn_temperature:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.symmetric = symmetric
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return int(self.queue.shape[0])

    def queued(self) -> torch.Tensor:
        """The filled part of the queue (K_filled, D)."""
        return self.queue[: int(self.queue_filled)]

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep the logit scale in [0, ln 100] (call after each optimiser step)."""
        self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    @torch.no_grad()
    def enqueue(self, ground: torch.Tensor) -> None:
        """Push (B, D) normalised ground embeddings into the ring buffer (oldest overwritten)."""
        k = self.queue_size
        if k == 0:
            return
        g = ground.detach().to(self.queue.dtype)
        if g.shape[0] >= k:
            self.queue.copy_(g[-k:])
            self.queue_ptr.zero_()
            self.queue_filled.fill_(k)
            return
        ptr = int(self.queue_ptr)
        end = ptr + g.shape[0]
        if end <= k:
            self.queue[ptr:end] = g
        else:
            first = k - ptr
            self.queue[ptr:] = g[:first]
            self.queue[: end - k] = g[first:]
        self.queue_ptr.fill_(end % k)
        self.queue_filled.fill_(min(k, int(self.queue_filled) + g.shape[0]))

    def forward(
        self, sat: torch.Tensor, ground: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (scalar, float32) and diagnostics for one batch; does not touch the queue."""
        s = F.normalize(sat.float(), dim=-1)
        g = F.normalize(ground.float(), dim=-1)
        scale = self.logit_scale.float().exp()
        in_batch = s @ g.T  # (B, B)
        q = self.queued().float()
        logits = torch.cat([in_batch, s @ q.T], dim=1) if q.shape[0] else in_batch
        target = torch.arange(s.shape[0], device=s.device)
        loss = F.cross_entropy(scale * logits, target)
        if self.symmetric:
            loss = 0.5 * (loss + F.cross_entropy(scale * in_batch.T, target))
        with torch.no_grad():
            acc = float((in_batch.argmax(dim=1) == target).float().mean())
            pos = float(in_batch.diagonal().mean())
        return loss, {
            "batch_top1": acc,
            "positive_cosine": pos,
            "temperature": float(1.0 / scale.detach()),
            "queue": int(self.queue_filled),
        }
