"""Small model checkpoints that tests write themselves (no weights from hubs).

A map test exercises the pipeline, not the encoder's depth: the reference TimeSenCLIP encoder
(6 transformer layers of width 512) costs about 10 ms of one CPU core per pixel series, so the
suite's dozens of end-to-end runs spent minutes in it. :func:`small_timesenclip` writes the same
architecture with one layer (about 6x faster), in the project's checkpoint format
(:func:`model.timesenclip.save_checkpoint`), aligned with the untrained CLIP text tower of the
same seed, so ``run --checkpoint FILE`` maps zero-shot with it offline. The reference depth stays
covered where it matters: the model tests and the ``--untrained`` demo runs.
"""

from __future__ import annotations

from pathlib import Path

from model.timesenclip import build_encoder, save_checkpoint
from pipeline.base.atomic import atomic_path

__all__ = ["small_timesenclip"]


def small_timesenclip(folder: str | Path, *, seed: int = 0, depth: int = 1) -> Path:
    """A TimeSenCLIP checkpoint of ``depth`` layers (random init of ``seed``) under ``folder``.

    Written once (atomically, so parallel test workers may race; the bytes are deterministic) and
    reused: ``folder/timesenclip-depth{depth}-seed{seed}.pt``. Its text tower is the untrained
    CLIP of ``seed`` (``untrained-seed{seed}``, recorded in the checkpoint).

    Returns:
        The checkpoint's path.
    """
    path = Path(folder) / f"timesenclip-depth{depth}-seed{seed}.pt"
    if not path.exists():
        with atomic_path(path) as tmp:
            save_checkpoint(
                build_encoder(seed=seed, depth=depth), tmp, clip=f"untrained-seed{seed}"
            )
    return path
