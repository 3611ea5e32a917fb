"""Composite throughput: our NaN-aware monthly kernel against xarray's resample median."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np

from pipeline.bench.results import Entry
from pipeline.composite.median import composite


def synthetic_cube(
    n_time: int = 73, n_band: int = 10, size: int = 192, cloud: float = 0.45, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(time, band, y, x) float32 reflectance with cloud-shaped NaN gaps, and its dates (2023)."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.01, 0.5, size=(n_time, n_band, size, size)).astype(np.float32)
    gaps = rng.random((n_time, 1, size, size)) < cloud
    values[np.broadcast_to(gaps, values.shape)] = np.nan
    start = np.datetime64("2023-01-03T10:30")
    times = start + np.arange(n_time) * np.timedelta64(5, "D")
    return values, times.astype("datetime64[ns]")


def bench_composite(
    values: np.ndarray,
    times: np.ndarray,
    start: dt.date,
    end: dt.date,
    period: str = "monthly",
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds for :func:`composite` and for xarray's resample median on the same stack.

    The baseline is ``DataArray.resample(time=...).median(skipna=True)`` (what one would write
    with xarray; it computes medians only, no counts and no gap filling). Returns the best of
    ``repeats`` for each and ``speedup`` = baseline / ours.
    """
    import xarray as xr

    freq = {"monthly": "MS", "quarterly": "QS", "annual": "YS"}[period]
    composite(values[:, :, :4, :4], times, start, end, period)  # compile / load the cache
    ours = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        composite(values, times, start, end, period, gap_fill=True)
        ours.append(time.perf_counter() - t0)
    da = xr.DataArray(values, dims=("time", "band", "y", "x"), coords={"time": times})
    base = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        da.resample(time=freq).median(skipna=True).values  # noqa: B018 (forces the compute)
        base.append(time.perf_counter() - t0)
    return {"ours_s": min(ours), "xarray_s": min(base), "speedup": min(base) / min(ours)}


def composite_entries(size: int, threads: int) -> list[Entry]:
    values, times = synthetic_cube(size=size)
    r = bench_composite(values, times, dt.date(2023, 1, 1), dt.date(2023, 12, 31), "monthly")
    n = values.size
    return [
        Entry(
            "composite_values_per_s",
            n / r["ours_s"],
            "values/s",
            baseline=n / r["xarray_s"],
            threads=threads,
            notes={
                "cube": list(values.shape),
                "nan_fraction": float(np.isnan(values).mean()),
                "ours": "monthly NaN-median + counts + gap filling (numba)",
                "baseline": "xarray resample(time='MS').median(skipna=True)",
            },
        )
    ]
