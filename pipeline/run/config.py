"""The resolved configuration of one mapping run, made of parts, and its identity hash.

``RunConfig`` is built from (in increasing priority) the model/region defaults, an optional YAML
file (``run --config FILE``, the flat keys below, spelt like the command-line options) and the
command-line options. It is made of frozen parts, each validating itself: the existing
:class:`~pipeline.stac.search.SearchConfig` and :class:`~pipeline.reading.cube.MaskConfig`, plus
:class:`CompositeConfig`, :class:`ChipConfig`, :class:`ModelConfig`, :class:`OutputConfig` and
:class:`ExecutionConfig`. Tile tasks (:class:`~pipeline.run.tile_task.TileJob`) carry the same parts.

Users and ``run.json`` see one flat mapping (``{"region": ..., "start": ..., "model":
"timesenclip", "max_cloud": 60.0, ...}``): :data:`FLAT_KEYS` says where each key lives,
:meth:`RunConfig.from_flat` and :meth:`RunConfig.flat` convert. ``output_hash`` covers every part
but :class:`ExecutionConfig` (where and how fast the run goes), so a rerun with the same hash
resumes and a different one refuses to mix outputs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import adapters
from pipeline.base.config import from_mapping, to_plain
from pipeline.base.errors import UserError
from pipeline.base.hashing import json_digest, sha256_file
from pipeline.composite.median import PERIODS
from pipeline.reading.cube import MaskConfig
from pipeline.stac.search import SearchConfig


def check_cluster(kind: str, workers: int | None) -> None:
    """Check ``--cluster`` and ``--workers`` (for runs and for ``classify``/``query --field``),
    without importing Dask.

    Raises:
        UserError: ``kind`` is not ``local``, ``slurm`` or a scheduler address, or ``workers``
            is below 1.
    """
    if kind not in ("local", "slurm") and "://" not in kind:
        raise UserError(
            f"--cluster {kind!r}: expected local, slurm or a scheduler address "
            "such as tcp://host:8786"
        )
    if workers is not None and workers < 1:
        raise UserError("--workers must be >= 1")


@dataclass(frozen=True)
class CompositeConfig:
    """Which composites the model sees."""

    start: dt.date
    """First day of the mapped period."""
    end: dt.date
    """Last day of the mapped period (inclusive)."""
    period: Literal["monthly", "quarterly", "annual"] = "monthly"
    """Composite period: one NaN-aware median per month, quarter or year."""

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise UserError(f"unknown period {self.period!r}; choose one of {', '.join(PERIODS)}")
        if self.end < self.start:
            raise UserError(f"--end {self.end} is before --start {self.start}")


@dataclass(frozen=True)
class ChipConfig:
    """How the output grid is cut into tiles, and a patch model's tiles into chips."""

    tile_size: int = 256
    """Tile edge in output pixels (one task per tile)."""
    window: int = 64
    """Patch models: chip edge in pixels (also the halo loaded around each tile)."""
    stride: int = 32
    """Patch models: pixels between neighbouring chips."""

    def __post_init__(self) -> None:
        if not 16 <= self.tile_size <= 8192:
            raise UserError(f"--tile-size must be between 16 and 8192 pixels, got {self.tile_size}")


@dataclass(frozen=True)
class ModelConfig:
    """Which model, with which weights, and how its embeddings become classes.

    The model is built by its adapter (:mod:`pipeline.adapters`), once per worker process.
    """

    name: str = adapters.DEFAULT
    """A registered model kind (:func:`pipeline.adapters.names`); flat key ``model``."""
    checkpoint: str | None = None
    """Weights: a file, or the name of a fetched release (``weights list``)."""
    clip_checkpoint: str | None = None
    """TimeSenCLIP: the CLIP whose text tower encodes the prompts."""
    arch: str | None = None
    """SenCLIP: the CLIP architecture (``ViT-B-32``, ``RN50``)."""
    untrained: bool = False
    """Random weights from ``seed`` (offline demo only; every output says so)."""
    seed: int = 0
    """Seed of untrained weights and of the calibration sample."""
    precision: str = "auto"
    """Inference backend (``--backend``, alias ``--precision``): ``auto`` or one of
    :data:`model.backends.BACKENDS`; ``auto`` is resolved per machine before the hash is taken."""
    cpu_batch: int | None = None
    """CPU items per inference batch (None: the engine's; ``--backend auto`` measures it)."""
    legend: str | None = None
    """Zero-shot: the classes and prompts (default lucas-lc8). With a head: only the colours
    (default: the legend the head was fitted with, ``probe --legend``)."""
    style: str = "aerial"
    """Prompt style (aerial, ground, generic)."""
    head: str | None = None
    """A few-shot head from ``probe`` instead of zero-shot prompts."""
    calibration: Literal["reference", "none"] = "none"
    """Class-mean calibration on a fixed reference sample of the region, or none."""

    def __post_init__(self) -> None:
        adapters.get(self.name)  # UserError naming the known models
        if self.checkpoint is None and not self.untrained and self.head is None:
            raise UserError(
                f"no weights for {self.name}: pass --checkpoint PATH|NAME (see 'python -m "
                "pipeline weights list'), or --untrained to run with random weights (demo only)"
            )
        if self.checkpoint is not None and self.untrained:
            raise UserError("--checkpoint and --untrained are mutually exclusive")
        from model.backend_names import BACKENDS

        if self.precision not in ("auto", *BACKENDS):
            raise UserError(
                f"--backend (--precision) {self.precision!r}: choose one of auto, "
                + ", ".join(BACKENDS)
            )
        if self.cpu_batch is not None and self.cpu_batch < 1:
            raise UserError(f"cpu_batch must be >= 1, got {self.cpu_batch}")

    @property
    def adapter(self) -> adapters.ModelAdapter:
        """What the pipeline knows about this model kind."""
        return adapters.get(self.name)

    def load(self) -> Any:
        """The model (once per process, by its adapter) on the resolved backend and batch."""
        m = self.adapter.load(self)
        if self.precision != "auto":
            from model.engine import set_precision

            set_precision(m, self.precision, batch=self.cpu_batch)
        return m


@dataclass(frozen=True)
class OutputConfig:
    """What the map stores besides classes and confidence."""

    top_k: int = 3
    """Class probabilities kept per pixel."""
    save_composite: bool = False
    """Add the composites to ``map.zarr``."""
    save_embeddings: bool = False
    """Store the compact embedding field (``classify --field``, ``query --field``)."""
    field_dims: int = 62
    """Components of the embedding field (62: 64 bytes per pixel)."""
    ood: bool = False
    """Add the out-of-distribution score layer ``ood`` (:mod:`pipeline.adapters.uncertainty`)."""
    majority: int = 0
    """Post-processing: majority filter radius in pixels (0: off; :mod:`pipeline.writers.postprocess`)."""
    mmu: int = 0
    """Post-processing: minimum mapping unit in pixels, gdal_sieve-style (0: off)."""

    @property
    def postprocess(self) -> bool:
        """Whether the classes are post-processed (majority filter or minimum mapping unit)."""
        return self.majority > 0 or self.mmu > 0

    def __post_init__(self) -> None:
        if not 0 <= self.majority <= 64:
            raise UserError(
                f"--majority must be a radius of 0 (off) to 64 pixels, got {self.majority}"
            )
        if self.mmu != 0 and not 2 <= self.mmu <= 1_000_000:
            raise UserError(f"--mmu must be 0 (off) or 2 to 1000000 pixels, got {self.mmu}")
        if not 1 <= self.field_dims <= 4096:
            raise UserError(f"--field-dims must be between 1 and 4096, got {self.field_dims}")
        if not 1 <= self.top_k <= 10:
            raise UserError(f"--top-k must be between 1 and 10, got {self.top_k}")


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how fast the run goes: nothing here changes an output pixel."""

    out: Path | None = None
    """Output folder (default ``outputs/<region>/<period>/<model>/``)."""
    overwrite: bool = False
    """Replace existing outputs made with other settings."""
    cluster: str = "local"
    """``local``, ``slurm``, or a scheduler address ``tcp://HOST:PORT``."""
    workers: int | None = None
    """Local worker processes, or Slurm jobs."""
    cluster_config: str | None = None
    """Slurm profile YAML."""
    allow_large: bool = False
    """Allow a local run over a large region (hours of CPU)."""
    retries: int = 2
    """Retries of a failing tile task within one run."""
    max_attempts: int = 6
    """Attempts (over all runs) after which a failing tile goes to the dead-letter list: plain
    reruns leave it alone, ``--retry-failed`` redoes it. The default is two runs' attempts with
    the default 2 retries, so one plain rerun still redoes a failed tile."""
    retry_failed: bool = False
    """Run only the tiles that failed earlier (dead-lettered or not)."""
    progress: bool = True
    """Show progress bars."""
    max_unreadable: str = "5%,2"
    """How many permanently unreadable scenes (HTTP 404/410, corrupt files: dropped, the map made
    from the others) a run tolerates: ``P%`` (a share of the run's scenes), ``N`` (scenes) or
    ``P%,N`` (the run fails only when both are exceeded). See :func:`unreadable_limit`."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise UserError(f"--max-attempts must be at least 1, got {self.max_attempts}")
        unreadable_limit(self.max_unreadable)


def unreadable_limit(spec: str | int | float) -> tuple[float | None, int | None]:
    """(share, count) of ``--max-unreadable``: ``"5%,2"`` -> (0.05, 2), ``"3"`` -> (None, 3).

    A run fails when its permanently unreadable scenes exceed every limit given (the default
    ``5%,2``: more than 5 % of the scenes and more than 2 scenes). Raises :class:`UserError`
    (one line) for anything else.
    """
    share: float | None = None
    count: int | None = None
    parts = [p.strip() for p in str(spec).split(",")]
    try:
        for part in parts:
            if part.endswith("%") and share is None:
                share = float(part[:-1]) / 100.0
                if not 0.0 <= share <= 1.0:
                    raise ValueError
            elif part.isdigit() and count is None:
                count = int(part)
            else:
                raise ValueError
    except ValueError:
        raise UserError(
            f"--max-unreadable {spec!r}: give a share of the scenes (5%), a number of scenes (2) "
            "or both (5%,2)"
        ) from None
    return share, count


def too_many_unreadable(spec: str, unreadable: int, scenes: int) -> bool:
    """Whether ``unreadable`` of ``scenes`` scenes exceed every limit of ``spec``
    (:func:`unreadable_limit`)."""
    share, count = unreadable_limit(spec)
    over_share = share is None or unreadable > share * scenes
    over_count = count is None or unreadable > count
    return unreadable > 0 and over_share and over_count


#: The fields of the existing search and mask configs that a run sets (the others keep their
#: defaults: request paging, timeouts and HTTP retries, SCL use and resampling).
_RUN_SEARCH_FIELDS = ("profile", "stac_url", "collection", "max_cloud")
_RUN_MASK_FIELDS = ("mask_snow", "scl_mask")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a map. See ``python -m pipeline run --help`` for each option."""

    region: str
    """A named region, a vector file, or ``bbox:W,S,E,N``."""
    composite: CompositeConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    chips: ChipConfig = field(default_factory=ChipConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    bbox: tuple[float, float, float, float] | None = None
    """Clip the region to this lon/lat box (W, S, E, N)."""

    def __post_init__(self) -> None:
        if self.model.adapter.input == "patch":
            window, stride = self.chips.window, self.chips.stride
            if not 8 <= window <= 512:
                raise UserError(f"--window must be between 8 and 512 pixels, got {window}")
            if not 1 <= stride <= window:
                raise UserError(f"--stride must be between 1 and --window ({window})")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise UserError(
                    f"--bbox must be W S E N in degrees with W < E and S < N, got {self.bbox}"
                )

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], where: str = "run") -> RunConfig:
        """The config of a flat mapping (:data:`FLAT_KEYS`; None values count as missing).

        Raises:
            UserError: an unknown key (one line listing the valid ones), a value of the wrong
                type, or a part's own validation.
        """
        unknown = sorted(set(flat) - set(FLAT_KEYS))
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(sorted(FLAT_KEYS))}"
            )
        parts: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            part, name = FLAT_KEYS[key]
            parts.setdefault(part, {})[name] = value
        top = parts.pop("", {})
        kwargs = {p: from_mapping(_PARTS[p], v, where=where) for p, v in parts.items()}
        if "composite" not in kwargs:
            raise UserError(f"{where}: start and end are required")
        return from_mapping(cls, {**top, **kwargs}, where=where)

    @classmethod
    def of(cls, **flat: Any) -> RunConfig:
        """``RunConfig.of(region="demo", start=..., end=..., untrained=True)``: :meth:`from_flat`."""
        return cls.from_flat(flat)

    def flat(self) -> dict[str, Any]:
        """The flat mapping of every key (what ``run.json`` records and ``--config`` takes)."""
        return {
            key: getattr(getattr(self, part), name) if part else getattr(self, name)
            for key, (part, name) in FLAT_KEYS.items()
        }

    def with_(self, **changes: Any) -> RunConfig:
        """A copy with some flat keys changed (validated again)."""
        return self.from_flat({**self.flat(), **changes})

    @property
    def halo(self) -> int:
        """Extra pixels loaded around each tile: a window for a patch model, none per pixel."""
        return self.model.adapter.halo(self.chips.window)

    def output_hash(self) -> str:
        """A short hash of every setting that changes output pixels: all parts but execution."""
        return self.identity()[0]

    def identity(self) -> tuple[str, dict[str, Any]]:
        """The output hash (:meth:`output_hash`) and the flat settings it covers
        (:func:`hashed_settings`, which a refused rerun names where they differ), in one step."""
        settings = hashed_settings(self)
        plain = dict(settings)
        if not self.output.save_embeddings:
            plain.pop("field_dims", None)  # no field, no effect on the outputs
        else:  # the field's basis: the model's, made from this sample and codec (issue 28)
            from pipeline.run.basis import recipe_digest

            plain["field_basis"] = recipe_digest()
        for key, off in (("ood", False), ("majority", 0), ("mmu", 0)):
            if plain.get(key) == off:  # off: the hash of the maps made before these options
                plain.pop(key, None)
        if self.model.cpu_batch is None:
            plain.pop("cpu_batch", None)  # the engine's default: hashes as before the key existed
        head, checkpoint = self.model.head, self.model.checkpoint
        if head and Path(head).expanduser().is_file():
            # the head's content, not only its path: a refitted head makes another map
            plain["head_sha256"] = sha256_file(Path(head).expanduser())
        if checkpoint and Path(checkpoint).expanduser().is_file():
            # weights replaced under the same path make another map (memoised: hashed once)
            plain["checkpoint_sha256"] = sha256_file(Path(checkpoint).expanduser())
        return json_digest(plain), settings


def hashed_settings(cfg: RunConfig) -> dict[str, Any]:
    """The flat settings (JSON-plain) that enter :meth:`RunConfig.output_hash`: all but the
    execution part (a refused rerun names those that differ)."""
    plain = to_plain(cfg.flat())
    return {k: v for k, v in plain.items() if FLAT_KEYS[k][0] != "execution"}


_PARTS: dict[str, type] = {
    "composite": CompositeConfig,
    "model": ModelConfig,
    "search": SearchConfig,
    "mask": MaskConfig,
    "chips": ChipConfig,
    "output": OutputConfig,
    "execution": ExecutionConfig,
}


def _flat_keys() -> dict[str, tuple[str, str]]:
    keys: dict[str, tuple[str, str]] = {"region": ("", "region"), "bbox": ("", "bbox")}
    for part, cls in _PARTS.items():
        only = {"search": _RUN_SEARCH_FIELDS, "mask": _RUN_MASK_FIELDS}.get(part)
        for f in dataclasses.fields(cls):
            if only is None or f.name in only:
                keys["model" if (part, f.name) == ("model", "name") else f.name] = (part, f.name)
    return keys


FLAT_KEYS: dict[str, tuple[str, str]] = _flat_keys()
"""Flat key -> (part of :class:`RunConfig`, field); ``""`` is the config itself."""


def default_output_dir(cfg: RunConfig, region_name: str) -> Path:
    """``outputs/<region>/<period>/<model>/`` relative to the working directory."""
    return Path("outputs") / region_name / cfg.composite.period / cfg.model.name
