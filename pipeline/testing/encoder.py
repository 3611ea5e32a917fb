"""A small deterministic encoder with the models' interface, for fast in-process tests.

:class:`FakeEncoder` is a real object that :mod:`model.engine`, :mod:`model.zeroshot` and the tile
task drive exactly as they drive SenCLIP and TimeSenCLIP: ``preprocess``, ``pixel_embed`` (pixel
kind), ``image_embed`` (patch kind), ``text_embed``, ``embed_dim``, ``device``, ``identity``, ``inputs``. Its
embeddings are a fixed linear map of the mean input over time (pixels) or space (chips), so a test
can compute what the map must be from the composite alone; text embeddings are seeded by the
prompt, so a legend gives the same classifier in every process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FakeEncoder"]

#: Embedding width (small: the tests compare every pixel).
DIM = 8


class FakeEncoder:
    """A deterministic stand-in for a loaded model of kind ``name`` (``timesenclip`` or ``senclip``).

    Pixel kind: ``(N, T, 10)`` reflectance x 1e4 -> the mean over T, divided by 1e4, times a fixed
    ``(10, DIM)`` matrix, L2-normalised. Patch kind: ``(N, 3, h, w)`` chips -> the mean over the
    chip times a fixed ``(3, DIM)`` matrix, L2-normalised.
    """

    untrained = True
    checkpoint_sha256 = None
    arch = "fake"

    def __init__(self, name: str = "timesenclip", seed: int = 0) -> None:
        if name not in ("timesenclip", "senclip"):
            raise ValueError(f"no fake for model kind {name!r}")
        self.name = name
        self.inputs = "pixels" if name == "timesenclip" else "chips"  # what model.engine checks
        self.identity = f"fake-{name}:{seed}"
        self.embedding_identity = self.identity
        self.embed_dim = DIM
        self.device = torch.device("cpu")
        rng = np.random.default_rng(seed)
        n_in = 10 if name == "timesenclip" else 3
        self.projection = torch.as_tensor(rng.standard_normal((n_in, DIM)), dtype=torch.float32)
        self.encoder = None  # the engine's bf16 fast path is never taken on CPU in fp32

    # -- the model interface ----------------------------------------------------------------
    def preprocess(self, x) -> torch.Tensor:
        """Model input from raw input (a float32 tensor; nothing to normalise)."""
        return torch.as_tensor(x, dtype=torch.float32)

    def pixel_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, T, 10)`` reflectance x 1e4 -> ``(N, DIM)`` unit vectors."""
        return F.normalize((x.float() / 1e4).mean(dim=1) @ self.projection, dim=-1)

    def image_embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, h, w)`` chips -> ``(N, DIM)`` unit vectors."""
        return F.normalize(x.float().mean(dim=(2, 3)) @ self.projection, dim=-1)

    def text_embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(P, DIM)`` unit vectors, each seeded by its prompt's text."""
        rows = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(DIM))
        return F.normalize(torch.as_tensor(np.array(rows), dtype=torch.float32), dim=-1)

    # -- what a test computes independently -------------------------------------------------
    def expected_embeddings(self, series_x1e4: np.ndarray) -> np.ndarray:
        """The ``(N, DIM)`` pixel embeddings in numpy, for comparing with the pipeline's."""
        with torch.no_grad():
            return self.pixel_embed(torch.as_tensor(series_x1e4)).numpy()
