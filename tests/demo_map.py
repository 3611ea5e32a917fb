"""The suite's shared end-to-end demo map, made once per test run and read by the tests that only
need a finished map with its embedding field: the field's and the viewer's (``demo_map`` in
tests/conftest.py). The driver's tests make their own (a map without the field, which a killed
and resumed run must reproduce).

The ``run`` command, in the test process (:func:`run_here`), through the demo STAC profile with a
LocalCluster of one worker process (the tests that read it read the map, not how it was
scheduled; the driver's and the cluster's tests run two): TimeSenCLIP (the suite's one-layer checkpoint), a 600 m x 600 m window
of the demo region (60 x 62 px at 10 m, 4 tiles of 32 px), 12 monthly composites, composites
and the embedding field stored.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.paths import REPO_ROOT

# A 600 m x 600 m window inside the demo AOI (EPSG:32632), as lon/lat for --bbox.
WINDOW_UTM = (600500.0, 5340500.0, 601100.0, 5341100.0)


def lonlat_box(box, crs="EPSG:32632") -> list[float]:
    """``box`` (west, south, east, north in ``crs``) as a lon/lat box."""
    from pyproj import Transformer

    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    (w, s), (e, n) = tr.transform(box[0], box[1]), tr.transform(box[2], box[3])
    return [w, s, e, n]


def inner_bbox(box=WINDOW_UTM) -> list[float]:
    """``box`` (default :data:`WINDOW_UTM`) as --bbox, shrunk by a few metres so the snapped
    output grid has exactly its rows (60 for the window; the lon/lat box is slightly rotated on
    the UTM grid, so its envelope may have two columns more)."""
    w, s, e, n = lonlat_box(box)
    d = 2e-5
    return [w + d, s + d, e - d, n - d]


def model_args(model: str = "timesenclip") -> list[str]:
    """``run`` options for the suite's ``model``: TimeSenCLIP from the one-layer checkpoint the
    suite writes into its cache (:func:`pipeline.testing.models.small_timesenclip`; the
    reference depth is the model tests' and the ``--untrained`` demo runs'), SenCLIP untrained.
    The checkpoint goes into the cache of ``S2LC_CACHE_DIR`` (the suite's, with the
    ``session_cache_dir`` fixture)."""
    if model != "timesenclip":
        return ["--untrained", "--model", model]
    return ["--checkpoint", str(suite_checkpoint()), "--model", model]


def suite_checkpoint() -> Path:
    """The suite's one-layer TimeSenCLIP checkpoint (written on first use into the cache)."""
    from pipeline.base.paths import cache_dir
    from pipeline.testing.models import small_timesenclip

    return small_timesenclip(cache_dir("test-models"))


def base_args(model: str = "timesenclip", tile: int = 32, box=WINDOW_UTM) -> list[str]:
    """``run`` options for ``box`` (default: the window): region, --bbox, the suite's ``model``,
    ``tile`` px tiles."""
    bbox = [f"{v:.7f}" for v in inner_bbox(box)]
    return ["--region", "demo", "--bbox", *bbox, *model_args(model), "--tile-size", str(tile)]


def map_args() -> list[str]:
    """The options of the shared map (``--out`` aside): a rerun with these is a no-op."""
    return [*base_args(), "--save-composite", "--save-embeddings"]


def run(args, env, timeout=600, check=True) -> subprocess.CompletedProcess:
    """``python -m pipeline run --no-progress --workers 2 ARGS`` in the repository."""
    cmd = [sys.executable, "-m", "pipeline", "run", "--no-progress", "--workers", "2", *args]
    out = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and out.returncode != 0:
        raise AssertionError(f"run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out


@dataclass(frozen=True)
class Ran:
    """What :func:`run_here` returns: the exit code and what the run logged and wrote on stderr
    (the names of :class:`subprocess.CompletedProcess`)."""

    returncode: int
    stderr: str


def run_here(args, check=True) -> Ran:
    """``run --no-progress --workers 2 ARGS`` in this process (:func:`pipeline.cli.main`): the map
    of ``python -m pipeline run`` without a second interpreter importing torch, dask and odc (about
    8 CPU-seconds a run). The tile workers are still a LocalCluster's processes. For fixtures whose
    tests read the map; a test of the command line itself (exit codes, a kill) runs :func:`run`.

    Raises:
        AssertionError: ``check`` and the run failed (its last log lines in the message).
    """
    import contextlib
    import io
    import logging

    from pipeline.cli import main

    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    # a handler on the root first: the command's logging.basicConfig then adds none of its own
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stderr(buf):
            code = main(["run", "--no-progress", "--workers", "2", *(str(a) for a in args)])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    out = Ran(code, buf.getvalue())
    if check and code != 0:
        raise AssertionError(f"run failed ({code}):\n{out.stderr[-3000:]}")
    return out


@dataclass(frozen=True)
class DemoMap:
    """The shared map's folder and what its run wrote on stderr (the log)."""

    out: Path
    stderr: str


def make_demo_map(root: Path) -> DemoMap:
    """The shared map under ``root`` (``root/map``), made by the first process that asks for it;
    the others wait for it under a file lock and read it.

    Raises:
        AssertionError: the run failed (a later caller tries again).
    """
    from filelock import FileLock

    out, log, done = root / "map", root / "stderr.txt", root / "done"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "lock")):
        if not done.is_file():
            proc = run_here([*map_args(), "--workers", "1", "--out", str(out)])
            log.write_text(proc.stderr)
            done.write_text("ok")
    return DemoMap(out, log.read_text())
