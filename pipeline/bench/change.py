"""Change detection on the multi-year demo with planted change: precision, recall, stable flips.

The workflow a user runs, each step a fresh ``python -m pipeline`` process against a real local
STAC API over a generated two-year catalog (``generate_catalog(years=...)``: a forest cleared,
a field built on, a lake shrunk, patches from 14 x 14 px down to 1 px, every year with the demo's
clouds, gaps and noise):

1. ``sample-points`` on the first year's truth, ``extract-points --year FIRST``, ``probe``: a
   few-shot head fitted on the first year only (untrained TimeSenCLIP encoder, as every offline
   figure here);
2. ``run --years FIRST,LAST --head``: both years on one grid;
3. ``change --map ... --from FIRST --to LAST``, with and without ``--consistency``.

:func:`change_entries` scores ``changed.tif`` against the generator's per-pixel truth
(``change.tif``): ``change_precision`` and ``change_recall`` of the planted changed pixels and
``stable_flip_rate`` (stable pixels mapped as changed), with ``--consistency``; the values without
it are in each entry's ``baseline``. :func:`change_workflow` is shared with the tests.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.bench.results import Entry

_log = logging.getLogger(__name__)

#: The mapped box (EPSG:32632, inside the demo AOI) and the catalog around it (+200 m).
BOX_UTM = (600700.0, 5340900.0, 601700.0, 5341900.0)
HALO_M = 200.0
YEARS = (2022, 2023)
#: Two acquisitions a month: the demo's cloud climatology keeps about half of them.
DAYS = (5, 20)


@dataclass(frozen=True)
class ChangeRun:
    """What :func:`change_workflow` made."""

    catalog: Path
    """The generated catalog (``change.tif``: per-pixel truth, band 1 from, band 2 to)."""
    head: Path
    """The few-shot head, fitted on ``years[0]``."""
    map: Path
    """The ``run --years`` folder."""
    years: tuple[int, int]
    seconds: dict[str, float]
    rerun_log: str
    """stderr of the same ``run --years`` again (every year and the stack are skipped)."""


def box_bbox(box: tuple[float, float, float, float] = BOX_UTM) -> list[str]:
    """``--bbox`` lon/lat strings of a UTM 32N box, a few metres inside (the grid snaps to it)."""
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    (w, s), (e, n) = tr.transform(*box[:2]), tr.transform(*box[2:])
    d = 2e-5
    return [f"{v:.7f}" for v in (w + d, s + d, e - d, n - d)]


def _cli(argv: list[str], env: dict) -> str:
    """One ``python -m pipeline`` step in a fresh process (logged as the command that reruns it)."""
    import shlex

    _log.info("python -m pipeline %s", shlex.join(argv))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"python -m pipeline {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
    return proc.stderr


def change_workflow(work: Path, years: tuple[int, int] = YEARS, seed: int = 0) -> ChangeRun:
    """Generate the two-year catalog in ``work``, serve it, fit the head on the first year, map
    both years with ``run --years``; returns the paths (the ``change`` runs are left to the
    caller). About 3-5 min on 2 loaded cores."""
    from pipeline.testing.demo import generate_catalog
    from pipeline.testing.stac_server import serve

    work = Path(work)
    t = time.perf_counter()
    w, s, e, n = BOX_UTM
    dates = [dt.datetime(years[0], m, d, 10, 30, tzinfo=dt.UTC) for m in range(1, 13) for d in DAYS]
    catalog = generate_catalog(
        work / "catalog",
        seed=seed,
        bounds=(w - HALO_M, s - HALO_M, e + HALO_M, n + HALO_M),
        aoi=BOX_UTM,
        dates=dates,
        partial_swath=None,
        years=years,
    )
    seconds = {"generate": time.perf_counter() - t}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "S2LC_BACKEND": "fp32"}
    first = catalog / f"truth_{years[0]}.tif"
    head, train = work / "head.npz", work / "train.gpkg"
    out = work / "map"
    with serve(catalog) as url:
        t = time.perf_counter()
        _cli(["sample-points", "--strata", str(first), "--labels", str(first),
              "--per-class", "40", "--seed", str(seed), "--out", str(train)], env)  # fmt: skip
        _cli(["extract-points", "--points", str(train), "--year", str(years[0]),
              "--stac-url", url, "--tile-size", "256", "--cluster-px", "256",
              "--out", str(work / "train.npz")], env)  # fmt: skip
        _cli(["probe", "--points", str(work / "train.npz"), "--label-column", "label",
              "--legend", "demo", "--untrained", "--seed", str(seed), "--test-fraction", "0",
              "--backend", "fp32", "--out", str(head)], env)  # fmt: skip
        seconds["head"] = time.perf_counter() - t
        argv = ["run", "--region", "demo", "--bbox", *box_bbox(), "--years",
                ",".join(map(str, years)), "--untrained", "--seed", str(seed), "--head", str(head),
                "--stac-url", url, "--tile-size", "128", "--workers", "1", "--no-progress",
                "--out", str(out)]  # fmt: skip
        t = time.perf_counter()
        # the local API's port is new each time and part of the output hash: an earlier
        # workflow's maps in ``work`` are replaced
        _cli(argv + (["--overwrite"] if (out / "run.json").exists() else []), env)
        seconds["run_years"] = time.perf_counter() - t
        t = time.perf_counter()
        rerun = _cli(argv, env)
        seconds["rerun_years"] = time.perf_counter() - t
    return ChangeRun(catalog, head, out, years, seconds, rerun)


def change_truth_on(catalog: Path, like: Path) -> tuple[np.ndarray, np.ndarray]:
    """The catalog's ``change.tif`` (from, to) on the grid of the raster ``like`` (nearest)."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    with rasterio.open(like) as ref, rasterio.open(catalog / "change.tif") as src:
        out = np.full((2, ref.height, ref.width), 255, np.uint8)
        for b in (0, 1):
            reproject(
                src.read(b + 1), out[b], src_transform=src.transform, src_crs=src.crs,
                dst_transform=ref.transform, dst_crs=ref.crs, resampling=Resampling.nearest,
                src_nodata=255, dst_nodata=255,
            )  # fmt: skip
    return out[0], out[1]


def write_truth_transitions(catalog: Path, like: Path, out: Path, n_classes: int) -> Path:
    """The true transition (``from * K + to``, 65535 nodata) on the grid of ``like`` as a COG:
    the reference a sample for ``change --reference`` is labelled from."""
    import rasterio

    from pipeline.base.atomic import atomic_path
    from pipeline.evaluate.change import TRANSITION_NODATA

    frm, to = change_truth_on(catalog, like)
    code = np.where(
        (frm == 255) | (to == 255), TRANSITION_NODATA, frm.astype(np.int64) * n_classes + to
    ).astype(np.uint16)
    with rasterio.open(like) as ref:
        prof = {
            "driver": "COG", "height": ref.height, "width": ref.width, "count": 1,
            "dtype": "uint16", "crs": ref.crs, "transform": ref.transform,
            "nodata": TRANSITION_NODATA, "compress": "DEFLATE",
        }  # fmt: skip
    from pipeline.testing.demo import CLASS_NAMES

    names = [f"{a} -> {b}" for a in CLASS_NAMES for b in CLASS_NAMES]  # transition_legend's
    with atomic_path(out) as tmp, rasterio.open(tmp, "w", **prof) as dst:
        dst.write(code, 1)
        dst.update_tags(class_names=json.dumps(names))
    return out


def score_run(run: ChangeRun, out: Path, consistency: bool) -> dict:
    """``python -m pipeline change`` on ``run`` into ``out``, scored against the truth."""
    import rasterio

    from pipeline.evaluate.change import score_change

    argv = ["change", "--map", str(run.map), "--from", str(run.years[0]),
            "--to", str(run.years[1]), "--out", str(out)]  # fmt: skip
    _cli(argv + (["--consistency"] if consistency else []), {**os.environ})
    with rasterio.open(out / "changed.tif") as src:
        changed = src.read(1)
    truth_from, truth_to = change_truth_on(run.catalog, out / "changed.tif")
    return score_change(changed, truth_from, truth_to)


def change_entries(work: Path | None = None) -> list[Entry]:
    """The bench section ``change``: three entries, value with ``--consistency``, baseline
    without (for ``stable_flip_rate`` lower is better)."""
    import tempfile

    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="s2lc-change-") as tmp:
        run = change_workflow(Path(work) if work else Path(tmp))
        plain = score_run(run, Path(tmp) / "change", consistency=False)
        cons = score_run(run, Path(tmp) / "change-consistency", consistency=True)
        meta = json.loads((run.catalog / "truth.json").read_text())
    notes = {
        "workflow": "multi-year demo with planted change (generate_catalog(years=(2022, 2023))), "
        "1 x 1 km box, 24 dates a year; head fitted on 2022 points only (40 per class, untrained "
        "TimeSenCLIP encoder); run --years 2022,2023; change --from 2022 --to 2023 "
        "[--consistency, --min-margin 0.1]",
        "planted": [f"{c['name']} {c['pixels']} px" for c in meta["changes"]],
        "with_consistency": cons,
        "without_consistency": plain,
        "seconds": {k: round(v, 1) for k, v in run.seconds.items()},
        "load_average_1_5_15": [round(v, 2) for v in load],
    }
    return [
        Entry(name, float(cons[name]), "1", baseline=float(plain[name]), notes=notes)
        for name in ("change_precision", "change_recall", "stable_flip_rate")
    ]
