"""What every model kind tells the pipeline: its inputs, defaults and how it maps a tile.

A :class:`ModelAdapter` is the one place that knows a model kind. The pipeline (run config,
tile tasks, calibration, planning, evaluation) asks the adapter instead of comparing model
names, so a new kind is one adapter module plus its entry in :mod:`pipeline.adapters.registry`.
Follows TorchGeo's weights ``meta`` (``bands``, ``in_chans``): what the model needs travels with
the model.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import numpy as np

from pipeline.base.errors import UserError
from pipeline.grid.tiling import ChipLayout, chip_layout


class ModelAdapter:
    """One model kind (subclass it; instances are stateless and picklable).

    Attributes are class-level facts about the kind; methods are what the tile task, the
    calibration sample and the driver call.
    """

    name: ClassVar[str]
    """The ``--model`` value and the output folder name, e.g. ``"timesenclip"``."""
    title: ClassVar[str]
    """The name in messages, e.g. ``"TimeSenCLIP"``."""
    bands: ClassVar[tuple[str, ...]]
    """Input bands in the model's order (:data:`pipeline.stac.bands.BANDS` names)."""
    scale: ClassVar[float]
    """Factor from reflectance (0-1) to the model's input units (1e4: L2A DN without offset)."""
    input: ClassVar[Literal["pixel", "patch"]]
    """``pixel``: one time series per pixel; ``patch``: sliding chips blended into pixels (the
    tile is loaded with a halo of one window)."""
    default_period: ClassVar[str]
    """Composite period when ``--period`` is not given."""
    period_counts: ClassVar[tuple[int, ...] | None] = None
    """Numbers of composites the model takes (None: any)."""
    throughput_key: ClassVar[str]
    """The ``bench/results.json`` entry of its inference rate (``plan``)."""
    point_series: ClassVar[bool] = False
    """Embeds ``extract-points`` series (10 bands x 1e4): ``probe`` and ``evaluate points``."""

    def default_calibration(self, head: str | None) -> Literal["reference", "none"]:
        """``--calibration`` when not given (``head``: a few-shot head classifies)."""
        return "none"

    def halo(self, window: int) -> int:
        """Extra pixels loaded around each tile (a patch model's chips reach past it)."""
        return window if self.input == "patch" else 0

    def chip_layout(self, geobox: Any, window: int, stride: int) -> ChipLayout | None:
        """The chips of a tile for a patch model (its ``geobox`` is the window to load), or None."""
        return chip_layout(geobox, window, stride) if self.input == "patch" else None

    def check_periods(self, n_periods: int, start: Any, end: Any, period: str) -> None:
        """Raise :class:`UserError` when the run's composites are not ones the model takes."""
        if self.period_counts is not None and n_periods not in self.period_counts:
            counts = ", ".join(str(c) for c in self.period_counts)
            raise UserError(
                f"{self.title} takes {counts} composite(s); {start} to {end} gives {n_periods} "
                f"{period} periods"
            )

    def inference_units(self, tile_pixels: float, stride: int) -> float:
        """What :attr:`throughput_key` counts for ``tile_pixels`` output pixels (``plan``)."""
        return tile_pixels if self.input == "pixel" else tile_pixels / stride**2

    def load(self, spec: Any) -> Any:
        """The model of a :class:`~pipeline.run.config.ModelConfig`, once per process.

        The default builds it with ``model.get_model`` (the loaders of :mod:`model.api`).
        """
        import model

        return model.get_model(
            spec.name,
            spec.checkpoint,
            arch=spec.arch,
            clip_checkpoint=spec.clip_checkpoint,
            untrained=spec.untrained,
            seed=spec.seed,
        )

    def embed(self, m: Any, x: np.ndarray) -> np.ndarray:
        """(N, D) L2-normalised embeddings of model inputs (:attr:`bands` x :attr:`scale`)."""
        raise NotImplementedError

    def infer(
        self, job: Any, m: Any, comp: Any, plan: ChipLayout | None, valid: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """A tile's composite -> class probabilities and embeddings of its valid pixels.

        Args:
            job: the :class:`~pipeline.run.tile_task.TileJob` (classifier, head, what to keep).
            m: the loaded model.
            comp: the composite of the loaded window (``values`` (P, B, y, x) reflectance with
                :data:`pipeline.stac.bands.BANDS`, ``counts`` (P, y, x)).
            plan: :meth:`chip_layout` of the tile (None for a pixel model).
            valid: (ny, nx) bool, the tile's pixels with observations inside the region.

        Returns:
            (N, C) probabilities or None (no pixel), (N, D) embeddings or None (not asked for),
            and the pixels they belong to (``valid`` narrowed to what the model covers); N is
            that mask's count.
        """
        raise NotImplementedError

    def sample(
        self, job: Any, m: Any, comp: Any, plan: ChipLayout | None, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """(<= n, D) embeddings of a tile's valid inputs: the calibration and field sample."""
        raise NotImplementedError


@functools.lru_cache(maxsize=4)
def cached_head(path: str) -> Any:
    """The few-shot head, read once per worker process (like the model)."""
    from model.train.probe import load_head

    return load_head(path)


def class_probabilities(job: Any, emb: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities from embeddings: the few-shot head or zero-shot text classifier."""
    if job.model.head:
        return np.asarray(cached_head(job.model.head).predict(emb), dtype=np.float32)
    from model.zeroshot import probabilities

    return np.asarray(probabilities(emb, job.classifier, job.calibration), dtype=np.float32)


def band_index(bands: tuple[str, ...]) -> list[int]:
    """Positions of ``bands`` in the composite's band axis (:data:`pipeline.stac.bands.BANDS`)."""
    from pipeline.stac.bands import BANDS

    return [BANDS.index(b) for b in bands]
