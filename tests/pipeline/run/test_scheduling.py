"""Faults at scale: a tile that keeps failing is dead-lettered, the rest of the run finishes, the
exit code says so, plain reruns leave it, and ``run --retry-failed`` redoes only it.

A real run (local STAC API, LocalCluster of one worker process: the retries and the dead-letter
list are the scheduler's, whatever the number of workers) over the small catalog plus one extra
scene whose footprint touches only the top-left tile and whose red band the loopback object
store refuses (HTTP 503, a transient failure that lasts: a permanently lost object would be
dropped from the tile instead, see tests/pipeline/run/test_unreadable.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.demo_map import model_args
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT


def test_select_tiles_dead_letter_and_retry_failed():
    from pipeline.run.config import RunConfig
    from pipeline.run.scheduling import select_tiles
    from pipeline.run.workspace import TileFailure

    class T:
        def __init__(self, i):
            self.id = i

    tiles = [T(i) for i in ("a", "b", "c", "d")]
    done = {"a": {}}
    failed = {"b": TileFailure("b", "error", "x", 3), "c": TileFailure("c", "error", "y", 1)}
    cfg = RunConfig.of(region="demo", start=__import__("datetime").date(2023, 1, 1),
                    end=__import__("datetime").date(2023, 12, 31), untrained=True)  # fmt: skip
    todo, dead = select_tiles(tiles, done, failed, cfg)  # default: 6 attempts
    assert [t.id for t in todo] == ["b", "c", "d"] and dead == {}
    todo, dead = select_tiles(tiles, done, failed, cfg.with_(max_attempts=3))
    assert [t.id for t in todo] == ["c", "d"] and set(dead) == {"b"}
    todo, dead = select_tiles(tiles, done, failed, cfg.with_(retry_failed=True, max_attempts=3))
    assert [t.id for t in todo] == ["b", "c"] and dead == {}


def _check_shapes(a, b):
    if a.shape != b.shape:  # a library's bare ``assert`` (pytest would rewrite one written here)
        raise AssertionError


def test_failure_record_says_where_an_error_without_message_was_raised():
    """An ``AssertionError`` with no text (CI once recorded only "AssertionError: ") still names the
    file, line and function that raised it, in the record and in the one-line summary."""
    import numpy as np

    from pipeline.run.scheduling import failure_summary, tile_failure
    from pipeline.run.workspace import TileFailure

    try:
        _check_shapes(np.zeros(2), np.zeros(3))
    except AssertionError as exc:
        rec = tile_failure("r0_c0", exc, 3)
    assert rec.message == "AssertionError: " and rec.error_kind == "error"
    inner = rec.where.split(" < ")[0]
    assert inner.startswith("test_scheduling.py:") and inner.endswith(" in _check_shapes"), (
        rec.where
    )
    assert "in test_failure_record_says_where" in rec.where
    assert TileFailure.from_dict(rec.to_dict()) == rec  # kept in run.json and .s2lc/failed/
    line = failure_summary({"r0_c0": rec}, 4, Path("run.json"))
    assert f"AssertionError:  at {inner}" in line, line


@pytest.fixture()
def one_bad_tile_catalog(small_catalog, tmp_path):
    """The small catalog plus a scene covering only the top-left tile (its first 28 px), whose red COG the
    loopback object store answers with 503 (until ``store.config.fail_paths`` is cleared)."""
    from pyproj import Transformer

    from pipeline.testing.object_store import StoreConfig, serve_store
    from tests.conftest import SMALL_BOUNDS

    root = tmp_path / "cat"
    shutil.copytree(small_catalog, root)
    doc = json.loads((root / "items.json").read_text())
    feats = doc["features"]
    for f in feats:
        for a in f["assets"].values():
            a["href"] = a["href"].replace(str(small_catalog), str(root))
    bad = json.loads(json.dumps(feats[3]))
    bad["id"] = bad["id"] + "-damaged"
    w, _, _, n = SMALL_BOUNDS
    tr = Transformer.from_crs(32632, 4326, always_xy=True)
    ring = [tr.transform(x, y) for x, y in [(w + 40, n - 280), (w + 280, n - 280),
                                             (w + 280, n - 40), (w + 40, n - 40), (w + 40, n - 280)]]  # fmt: skip
    bad["geometry"] = {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    bad["bbox"] = [min(xs), min(ys), max(xs), max(ys)]
    refused = root / "refused-red.tif"
    shutil.copyfile(Path(bad["assets"]["red"]["href"].removeprefix("file://")), refused)
    with serve_store(root, StoreConfig(fail_paths={refused.name})) as store:
        bad["assets"]["red"]["href"] = store.href(refused)
        feats.append(bad)
        (root / "items.json").write_text(json.dumps(doc))
        yield root, store


def _bbox():
    from pyproj import Transformer

    from tests.conftest import SMALL_BOUNDS

    tr = Transformer.from_crs(32632, 4326, always_xy=True)
    w, s, e, n = SMALL_BOUNDS
    (x0, y0), (x1, y1) = tr.transform(w + 0.5, s + 0.5), tr.transform(e - 0.5, n - 0.5)
    return [f"{v:.7f}" for v in (x0, y0, x1, y1)]


def test_dead_letter_then_retry_failed(one_bad_tile_catalog, tmp_path):
    from pipeline.testing.stac_server import serve

    root, store = one_bad_tile_catalog
    out = tmp_path / "out"
    # fail in seconds: one read attempt per request (GDAL's own 503 retries remain)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "S2LC_READ_ATTEMPTS": "1"}
    with serve(root) as url:
        base = [
            sys.executable, "-m", "pipeline", "run", "--bbox", *_bbox(), "--start", "2023-05-01",
            "--end", "2023-06-30", "--period", "annual", *model_args(), "--stac-url", url,
            "--tile-size", "64", "--workers", "1", "--no-progress", "--out", str(out),
            "--max-attempts", "3",
        ]  # fmt: skip

        def run(*extra):
            return subprocess.run(
                [*base, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
            )

        first = run()
        assert first.returncode == 3, first.stderr[-2000:]
        report = json.loads((out / "run.json").read_text())
        total = report["tiles"]["total"]
        assert total >= 2
        last = first.stderr.strip().splitlines()[-1]  # one line (workers log their own errors)
        assert last.startswith(f"error: 1 of {total} tiles failed") and "dead-letter" in last
        assert report["status"] == "incomplete"
        dead = report["dead_letter"]
        assert [d["tile"] for d in dead] == ["r0000_c0000"]
        assert dead[0]["attempts"] == 3 and dead[0]["error_kind"] == "read_failure"
        assert report["tiles"]["done"] == report["tiles"]["total"] - 1  # the rest finished
        assert not (out / "classes.tif").exists()  # nothing published over a lost tile

        again = run()  # a plain rerun leaves the dead-lettered tile alone
        assert again.returncode == 3 and "--retry-failed" in again.stderr
        # with no tile to run and nothing to fit, it starts no cluster at all
        assert "local cluster:" in first.stderr and "local cluster:" not in again.stderr
        assert (
            "0 to run" in again.stderr or json.loads((out / "run.json").read_text())["dead_letter"]
        )

        store.config.fail_paths.clear()  # the storage answers again
        retried = run("--retry-failed")
        assert retried.returncode == 0, retried.stderr[-2000:]
        report = json.loads((out / "run.json").read_text())
        assert report["status"] == "complete" and report["dead_letter"] == []
        assert report["tiles"]["resumed"] == report["tiles"]["total"] - 1
        assert (out / "classes.tif").is_file()
