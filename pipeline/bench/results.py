"""The benchmark entry schema, timing helper, table printer and JSON writer."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.base.hardware import describe


@dataclass
class Entry:
    """One measured figure; ``ratio`` = value / baseline (higher is better for rates)."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    device: str = "cpu"
    dtype: str = "float32"
    batch: int | None = None
    threads: int | None = None
    date: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    notes: dict[str, Any] = field(default_factory=dict)
    #: What it was measured on (:func:`pipeline.base.hardware.describe` of ``device`` unless given).
    hardware: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.baseline and self.ratio is None:
            self.ratio = self.value / self.baseline
        if not self.hardware:
            self.hardware = describe(self.device)


def best_rate(fn: Callable[[], int], repeats: int = 3, warmup: int = 1) -> float:
    """Items per second of ``fn`` (which returns the number of items it processed), best of runs."""
    for _ in range(warmup):
        fn()
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t))
    return best


def write_results(entries: list[Entry], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existing: list[dict] = []
    if path.exists():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = []
    new = [asdict(e) for e in entries]
    keys = {(e["name"], e["device"]) for e in new}
    kept = [e for e in existing if (e.get("name"), e.get("device")) not in keys]
    path.write_text(json.dumps(kept + new, indent=2) + "\n")


def table(entries: list[Entry]) -> str:
    rows = [("name", "device", "dtype", "value", "unit", "baseline", "ratio")]
    for e in entries:
        rows.append(
            (
                e.name,
                e.device,
                e.dtype,
                f"{e.value:,.4g}",
                e.unit,
                "" if e.baseline is None else f"{e.baseline:,.4g}",
                "" if e.ratio is None else f"{e.ratio:.2f}x",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)
