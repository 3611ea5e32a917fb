"""Real-world input faults (issue 11) end to end: `python -m pipeline run` against a real STAC API
(rustac) on loopback, COGs over HTTP where reads must fail. Losing input never looks like success:
the scene ledger and the failed-tile records say what happened, a rerun redoes only what failed."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from tests.demo_map import model_args, run_here
from tests.paths import REPO_ROOT, TEST_DATA

ROOT = REPO_ROOT
CASES = TEST_DATA / "cases"


def _args(region: Path, url: str, out: Path, start: str, end: str, *extra: str) -> list[str]:
    return ["--region", str(region), "--start", start, "--end", end, "--period", "annual",
            *model_args(), "--stac-url", url, "--max-cloud", "100", "--workers", "1",
            "--no-progress", "--out", str(out), *extra]  # fmt: skip


def _run(region: Path, url: str, out: Path, start: str, end: str, *extra: str):
    """``python -m pipeline run`` (its exit code and stderr are the test's subject)."""
    cmd = [sys.executable, "-m", "pipeline", "run", *_args(region, url, out, start, end, *extra)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _run_here(region: Path, url: str, out: Path, start: str, end: str, *extra: str):
    """The same run in the test process (a map the test reads, :func:`tests.demo_map.run_here`)."""
    return run_here(_args(region, url, out, start, end, *extra), check=False)


def _write_catalog(folder: Path, features: list[dict], collection: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.json").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    (folder / "collection.json").write_text(json.dumps(collection))
    return folder


def _region(tmp_path: Path, bounds, name="faults") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nbounds: {list(bounds)}\nbounds_crs: EPSG:32632\ncrs: EPSG:32632\n"
        "resolution: 10\nstac: custom\n"
    )
    return path


def test_cdse_catalogue_with_two_baselines_maps_each_acquisition_once(tmp_path, session_cache_dir):
    """Cases unrecognised-asset-keys-empty-map + duplicate-acquisition-two-baselines, together:
    CDSE asset keys with asset-level proj:code, every acquisition published twice."""
    import rasterio

    from pipeline.testing.stac_server import serve
    from tests.pipeline.stac.test_input_faults import _to_cdse, _two_baselines

    feats, b05 = _two_baselines(tmp_path)
    doc = _to_cdse({"features": feats})
    collection = json.loads((b05 / "collection.json").read_text())
    cat = _write_catalog(tmp_path / "catalog", doc["features"], collection)
    out = tmp_path / "out"
    with serve(cat) as url:
        proc = _run_here(CASES / "region-small.yaml", url, out, "2021-05-01", "2021-06-30")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((out / "run.json").read_text())
    assert rep["status"] == "complete"
    assert sum(s["valid_pixels"] for s in rep["tile_stats"]) == 64 * 64  # the bands were read
    assert rep["scene_ledger"]["counts"] == {"returned": 8, "used": 4, "duplicate": 4}
    with rasterio.open(out / "valid_obs.tif") as src:
        assert int(src.read(1).max()) == 4  # 4 acquisitions, never 8 copies
    assert rep["coverage"]["no_data_fraction"] == 0.0 and rep["coverage"]["warnings"] == []
    assert "superseded duplicate: 4" in proc.stderr


def test_unusable_scenes_only_is_an_error_before_any_tile(tmp_path, small_pc_catalog):
    from pipeline.testing.stac_server import serve

    doc = json.loads((small_pc_catalog / "items.json").read_text())
    for f in doc["features"]:
        f["assets"] = {f"band_{k.lower()}": a for k, a in f["assets"].items()}
    collection = json.loads((small_pc_catalog / "collection.json").read_text())
    cat = _write_catalog(tmp_path / "cat", doc["features"], collection)
    out = tmp_path / "out"
    with serve(cat) as url:
        proc = _run(CASES / "region-small.yaml", url, out, "2023-05-01", "2023-06-30")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "none of the 12 scenes" in last and "unknown asset layout: 12" in last
    assert "band_b04" in last  # names the keys it found
    assert not (out / "run.json").exists() and not (out / ".s2lc" / "tiles").exists()


class _Blobs(BaseHTTPRequestHandler):
    """Files under ``root`` with Range support; 403 for paths under a refused prefix."""

    root: Path = Path("/")
    refused: list[str] = []
    log: list[str] = []

    def log_message(self, *args):
        pass

    def _reply(self, body: bool):
        path = unquote(urlparse(self.path).path).lstrip("/")
        if any(path.startswith(p) for p in self.refused):
            self.log.append(path)
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        f = self.root / path
        if not f.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = f.stat().st_size
        start, end = 0, size - 1
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            with open(f, "rb") as fh:
                fh.seek(start)
                self.wfile.write(fh.read(end - start + 1))

    def do_GET(self):  # noqa: N802
        self._reply(True)

    def do_HEAD(self):  # noqa: N802
        self._reply(False)


@pytest.fixture()
def blob_server(tmp_path):
    handler = type("Blobs", (_Blobs,), {"root": tmp_path, "refused": [], "log": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.timeout(1500)  # two runs; each takes minutes on a loaded 2-core machine
def test_refused_reads_fail_their_tiles_and_a_rerun_redoes_only_those(tmp_path, blob_server):
    """Case expired-sas-token-empty-map, as a 403 mid-run: scenes west of a gap read, scenes east
    of it are refused. The run must not end complete; a rerun redoes only the failed tiles.
    One row of five 32 px tiles: two west, one in the gap, two east."""
    import rasterio

    from pipeline.testing.demo import generate_catalog
    from pipeline.testing.stac_server import serve

    base_url, handler = blob_server
    dates = [dt.datetime(2023, 6, d, 10, 30, tzinfo=dt.UTC) for d in (1, 6, 11)]
    west, east = (
        (600000.0, 5340000.0, 600640.0, 5340320.0),
        (600960.0, 5340000.0, 601600.0, 5340320.0),
    )
    feats = []
    for name, bounds, seed in (("west", west, 6), ("east", east, 7)):
        root = generate_catalog(tmp_path / name, seed=seed, layout="planetary-computer",
                                bounds=bounds, aoi=bounds, dates=dates,
                                cloud_fractions=[0.0] * 3, partial_swath=None)  # fmt: skip
        for f in json.loads((root / "items.json").read_text())["features"]:
            f = copy.deepcopy(f)
            f["id"] = f"{f['id']}_{name}"
            f["properties"]["s2:mgrs_tile"] = "32UPU" if name == "west" else "32UQU"
            for a in f["assets"].values():
                rel = Path(a["href"].removeprefix("file://")).relative_to(tmp_path)
                a["href"] = f"{base_url}/{rel.as_posix()}"
            feats.append(f)
    collection = json.loads((tmp_path / "west" / "collection.json").read_text())
    cat = _write_catalog(tmp_path / "catalog", feats, collection)
    region = _region(tmp_path, (600000, 5340000, 601600, 5340320))
    out = tmp_path / "out"
    handler.refused.append("east/")
    with serve(cat) as url:
        first = _run(region, url, out, "2023-05-01", "2023-06-30", "--tile-size", "32")
        rep1 = json.loads((out / "run.json").read_text())
        published = [p.name for p in out.glob("*.tif")]
        markers = {p.name: p.stat().st_mtime_ns for p in (out / ".s2lc" / "tiles").glob("*.json")}
        handler.refused.clear()  # the storage answers again
        second = _run(region, url, out, "2023-05-01", "2023-06-30", "--tile-size", "32")

    # run 1: not complete, exit 3 (failed tiles), one line naming the failed tiles and why
    assert first.returncode == 3, first.stderr[-2000:]
    last = first.stderr.strip().splitlines()[-1]
    assert "tiles failed" in last and "read_failure" in last and "HTTP 403" in last
    assert rep1["status"] == "incomplete" and handler.log
    failures = rep1["tiles"]["failures"]
    east_tiles = {"r0000_c0003", "r0000_c0004"}
    assert east_tiles <= set(failures)
    for tid in east_tiles:
        f = failures[tid]
        assert (f["status"], f["error_kind"], f["http_status"]) == ("failed", "read_failure", 403)
        assert f["attempts"] == 3  # 1 + 2 retries
        assert f["scenes"] and all(s.endswith("_east") for s in f["scenes"])
    assert rep1["tiles"]["done"] >= 2  # the west tiles are done and kept
    read_failed = {k for k, v in rep1["scene_ledger"]["scenes"].items() if v.get("reason") == "read_failure"}  # fmt: skip
    assert read_failed == {f["id"] for f in feats if f["id"].endswith("_east")}
    assert published == []  # nothing published

    # run 2: only the failed tiles run, the map is complete
    assert second.returncode == 0, second.stderr[-2000:]
    rep2 = json.loads((out / "run.json").read_text())
    assert rep2["status"] == "complete" and rep2["tiles"]["failures"] == {}
    assert rep2["tiles"]["resumed"] == rep1["tiles"]["done"] == len(markers)
    # the tiles done in run 1 were not run again (their done markers are untouched)
    assert {n: (out / ".s2lc" / "tiles" / n).stat().st_mtime_ns for n in markers} == markers
    assert rep2["tiles"]["done"] == rep2["tiles"]["total"]
    assert not list((out / ".s2lc" / "failed").glob("*.json"))
    with rasterio.open(out / "valid_obs.tif") as src:
        obs = src.read(1)
    # both sides observed (west: 3 clear scenes; east: 3 partly cloudy ones), at most 3 times
    assert (obs[:, :64] == 3).all() and (obs[:, 96:] >= 1).all() and obs.max() <= 3
    # the 320 m gap between the footprints has no data: reported, not hidden
    cov = rep2["coverage"]
    assert cov["no_data_fraction"] == pytest.approx(32 / 160, abs=0.01)
    assert any("no clear observation in any period" in w for w in cov["warnings"])
    assert "no clear observation in any period" in second.stderr
    assert np.isfinite(cov["periods"]["2023"]["gap_filled_fraction"])


@pytest.mark.integration
@pytest.mark.timeout(1800)  # three runs of minutes each on a loaded 2-core machine
def test_one_missing_object_drops_its_scene_and_the_map_is_made_from_the_others(tmp_path):
    """Case one-missing-object-blocks-map (issue 26): one scene's B04 answers 404 forever. The
    run publishes at once, the same map as a run without that scene, and the ledger and a
    warning name it; with --max-unreadable 0 the run fails in one line and publishes nothing."""
    import rasterio

    from pipeline.testing.demo import generate_catalog
    from pipeline.testing.object_store import serve_store
    from pipeline.testing.stac_server import serve

    bounds = (600000.0, 5340000.0, 600640.0, 5340640.0)
    dates = [dt.datetime(2023, m, d, 10, 30, tzinfo=dt.UTC)
             for m, d in ((5, 10), (5, 20), (6, 9), (6, 19))]  # fmt: skip
    data = generate_catalog(tmp_path / "data", seed=9, layout="planetary-computer", bounds=bounds,
                            aoi=bounds, dates=dates, cloud_fractions=[0.0] * 4,
                            partial_swath=None)  # fmt: skip
    collection = json.loads((data / "collection.json").read_text())
    region = _region(tmp_path, bounds, "missing")
    with serve_store(data) as store:
        feats = json.loads((data / "items.json").read_text())["features"]
        for f in feats:
            for a in f["assets"].values():
                a["href"] = a["href"].replace(data.as_uri(), store.url)
        broken = feats[1]
        b04 = broken["assets"]["B04"]["href"]
        store.config.missing.add(b04.removeprefix(store.url + "/"))
        cat = _write_catalog(tmp_path / "catalog", feats, collection)
        without = _write_catalog(
            tmp_path / "without", [f for f in feats if f["id"] != broken["id"]], collection
        )
        out, ref, strict = tmp_path / "out", tmp_path / "ref", tmp_path / "strict"
        with serve(cat) as url:
            first = _run(region, url, out, "2023-05-01", "2023-06-30")
            again = _run(region, url, out, "2023-05-01", "2023-06-30")
            refused = _run(region, url, strict, "2023-05-01", "2023-06-30",
                           "--max-unreadable", "0")  # fmt: skip
        with serve(without) as url:
            plain = _run_here(region, url, ref, "2023-05-01", "2023-06-30")  # the reference
        assert store.counter.not_found >= 1

    assert first.returncode == 0, first.stderr[-2000:]
    assert plain.returncode == 0, plain.stderr[-2000:]
    rep = json.loads((out / "run.json").read_text())
    assert rep["status"] == "complete" and rep["tiles"]["failures"] == {}
    assert rep["scene_ledger"]["counts"] == {"returned": 4, "used": 3, "read_failure": 1}
    entry = rep["scene_ledger"]["scenes"][broken["id"]]
    assert (entry["reason"], entry["http_status"], entry["permanent"]) == (
        "read_failure",
        404,
        True,
    )
    assert entry["asset"] == b04 and entry["tiles"]  # the tiles it was dropped from
    warned = [ln for ln in first.stderr.splitlines() if "WARNING" in ln and broken["id"] in ln]
    assert warned and "HTTP 404" in warned[0]
    for name in ("valid_obs.tif", "classes.tif", "confidence.tif"):
        with rasterio.open(out / name) as a, rasterio.open(ref / name) as b:
            np.testing.assert_array_equal(a.read(), b.read())  # the map of the other 3 scenes
    with rasterio.open(out / "valid_obs.tif") as src:
        assert src.read(1).max() == 3
    # a rerun finds the map complete; the ledger still names the scene
    assert again.returncode == 0 and "up to date" in again.stderr
    assert json.loads((out / "run.json").read_text())["scene_ledger"] == rep["scene_ledger"]
    # --max-unreadable 0: one line, exit 3, nothing published, the ledger written
    assert refused.returncode == 3, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert "1 of 4 scenes cannot be read" in last and "--max-unreadable 0" in last
    assert not list(strict.glob("*.tif")) and not (strict / "map.zarr").exists()
    rep3 = json.loads((strict / "run.json").read_text())
    assert rep3["status"] == "incomplete" and broken["id"] in rep3["scene_ledger"]["scenes"]
