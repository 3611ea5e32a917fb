"""The resolved configuration of one mapping run, and its identity hash.

``RunConfig`` is built from (in increasing priority) the model/region defaults, an optional YAML
file (``run --config FILE``, same keys as the fields below) and the command-line options. It is
frozen and validated; ``output_hash`` covers exactly the settings that change map pixels, so a
rerun with the same hash resumes and a different one refuses to mix outputs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pipeline.base.errors import UserError
from pipeline.base.hashing import json_digest, sha256_file
from pipeline.config import to_plain

MODELS = ("timesenclip", "senclip")
PERIODS = ("monthly", "quarterly", "annual")
#: Settings that do not change any output pixel (where and how fast it runs).
_NOT_IN_HASH = {
    "out",
    "overwrite",
    "cluster",
    "workers",
    "cluster_config",
    "allow_large",
    "retries",
    "max_attempts",
    "retry_failed",
    "progress",
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a map. See ``python -m pipeline run --help`` for each option."""

    region: str
    start: dt.date
    end: dt.date
    model: Literal["timesenclip", "senclip"] = "timesenclip"
    bbox: tuple[float, float, float, float] | None = None
    checkpoint: str | None = None
    clip_checkpoint: str | None = None
    arch: str | None = None
    untrained: bool = False
    seed: int = 0
    legend: str | None = None
    """Zero-shot: the classes and prompts (default lucas-lc8). With a head: only the colours
    (default: the legend the head was fitted with, ``probe --legend``)."""
    style: str = "aerial"
    head: str | None = None
    period: Literal["monthly", "quarterly", "annual"] = "monthly"
    calibration: Literal["reference", "none"] = "none"
    profile: str = "earth-search"
    stac_url: str | None = None
    collection: str | None = None
    max_cloud: float = 60.0
    mask_snow: bool = True
    tile_size: int = 256
    window: int = 64
    stride: int = 32
    top_k: int = 3
    save_composite: bool = False
    save_embeddings: bool = False
    field_dims: int = 62
    out: Path | None = None
    overwrite: bool = False
    cluster: str = "local"
    workers: int | None = None
    cluster_config: str | None = None
    allow_large: bool = False
    retries: int = 2
    max_attempts: int = 6
    """Attempts (over all runs) after which a failing tile goes to the dead-letter list: plain
    reruns leave it alone, ``--retry-failed`` redoes it. The default is two runs' attempts with
    the default 2 retries, so one plain rerun still redoes a failed tile."""
    retry_failed: bool = False
    """Run only the tiles that failed earlier (dead-lettered or not)."""
    progress: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.period not in PERIODS:
            raise UserError(f"unknown period {self.period!r}; choose one of {', '.join(PERIODS)}")
        if self.end < self.start:
            raise UserError(f"--end {self.end} is before --start {self.start}")
        if self.checkpoint is None and not self.untrained and self.head is None:
            raise UserError(
                f"no weights for {self.model}: pass --checkpoint PATH|NAME (see 'python -m pipeline "
                "weights list'), or --untrained to run with random weights (demo only)"
            )
        if self.checkpoint is not None and self.untrained:
            raise UserError("--checkpoint and --untrained are mutually exclusive")
        if not 16 <= self.tile_size <= 8192:
            raise UserError(f"--tile-size must be between 16 and 8192 pixels, got {self.tile_size}")
        if self.model == "senclip":
            if not 8 <= self.window <= 512:
                raise UserError(f"--window must be between 8 and 512 pixels, got {self.window}")
            if not 1 <= self.stride <= self.window:
                raise UserError(f"--stride must be between 1 and --window ({self.window})")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UserError(f"--precision {self.precision!r}: choose one of auto, fp32, bf16")
        if not 1 <= self.field_dims <= 4096:
            raise UserError(f"--field-dims must be between 1 and 4096, got {self.field_dims}")
        if self.max_attempts < 1:
            raise UserError(f"--max-attempts must be at least 1, got {self.max_attempts}")
        if not 1 <= self.top_k <= 10:
            raise UserError(f"--top-k must be between 1 and 10, got {self.top_k}")
        if not 0 <= self.max_cloud <= 100:
            raise UserError(f"--max-cloud must be between 0 and 100, got {self.max_cloud}")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise UserError(
                    f"--bbox must be W S E N in degrees with W < E and S < N, got {self.bbox}"
                )

    @property
    def halo(self) -> int:
        """Extra pixels loaded around each tile: half a window for the patch model, none per pixel."""
        return self.window if self.model == "senclip" else 0

    def output_hash(self) -> str:
        """A short hash of every setting that changes output pixels."""
        plain = {k: v for k, v in to_plain(self).items() if k not in _NOT_IN_HASH}
        if not self.save_embeddings:
            plain.pop("field_dims", None)  # no field, no effect on the outputs
        if self.head and Path(self.head).expanduser().is_file():
            # the head's content, not only its path: a refitted head makes another map
            plain["head_sha256"] = sha256_file(Path(self.head).expanduser())
        if self.checkpoint and Path(self.checkpoint).expanduser().is_file():
            # weights replaced under the same path make another map (memoised: hashed once)
            plain["checkpoint_sha256"] = sha256_file(Path(self.checkpoint).expanduser())
        return json_digest(plain)

    def with_(self, **changes: object) -> RunConfig:
        return replace(self, **changes)


def default_output_dir(cfg: RunConfig, region_name: str) -> Path:
    """``outputs/<region>/<period>/<model>/`` relative to the working directory."""
    return Path("outputs") / region_name / cfg.period / cfg.model
