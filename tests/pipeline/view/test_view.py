"""The map viewer (``python -m pipeline view``): a real server on loopback over a real map folder.

The map folder is written by the project's own writers (Zarr store, COGs, legend) from a seeded,
planted class pattern, so every answer the server gives can be checked against known pixels.
The browser tests (headless Chromium) are in ``test_view_browser.py`` (``make test-browser``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from shapely.geometry import box

from aoi import to_crs
from pipeline.grid.tiling import make_grid
from pipeline.view import render
from pipeline.view.sources import find_sources
from pipeline.writers import (
    TileResult,
    build_cogs,
    create_map_store,
    write_legend_json,
    write_tile,
)
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
STATIC = ROOT / "pipeline" / "view" / "static"
UTM = "EPSG:32632"
NAMES = ["water", "tree cover", "crop land"]
COLORS = ["#1f78b4", "#33a02c", "#ffc800"]
PERIODS = ["2023-01", "2023-02"]
# 96 x 64 px at 10 m, inside UTM zone 32 near Munich.
AOI = to_crs(box(690_000, 5_330_000, 690_960, 5_330_640), "EPSG:4326", src=UTM)


def _planted(shape: tuple[int, int]) -> np.ndarray:
    """Class 0 in the left third, 1 in the middle, 2 on the right; a nodata strip on top."""
    h, w = shape
    cls = np.zeros(shape, np.uint8)
    cls[:, w // 3 :] = 1
    cls[:, 2 * w // 3 :] = 2
    cls[:4] = 255
    return cls


def write_view_map(root: Path) -> dict:
    """A finished 3-class map in ``root`` (store, COGs, legend); returns the grid and its arrays."""
    grid = make_grid(AOI, UTM, 10, 32)
    store = root / "map.zarr"
    create_map_store(store, grid, class_names=NAMES, k=2, period_labels=PERIODS)
    planted = _planted(grid.shape)
    rng = np.random.default_rng(19)
    conf_all = rng.uniform(0.4, 1.0, grid.shape).astype(np.float32)
    # Only the tiles that touch the AOI are written; the rest of the grid stays nodata.
    full = np.full(grid.shape, 255, np.uint8)
    conf_full = np.full(grid.shape, np.nan, np.float32)
    for tile in grid.tiles:
        full[tile.window] = planted[tile.window]
        conf_full[tile.window] = np.where(full[tile.window] != 255, conf_all[tile.window], np.nan)
        cls = full[tile.window]
        conf = conf_full[tile.window]
        second = np.where(cls != 255, (cls + 1) % len(NAMES), 255).astype(np.uint8)
        write_tile(
            store,
            tile,
            TileResult(
                classes=cls,
                confidence=conf,
                topk_classes=np.stack([cls, second]),
                topk_probs=np.stack([conf, (1 - conf) / 2]),
                valid_obs=np.where(cls != 255, 3, 0)[None].repeat(len(PERIODS), 0),
                margin=conf - (1 - conf) / 2,
                entropy=np.where(cls != 255, 0.5, np.nan).astype(np.float32),
            ),
        )
    build_cogs(store, root, grid, NAMES, COLORS, period_labels=PERIODS)
    write_legend_json(
        root / "legend.json",
        class_names=NAMES,
        colors=COLORS,
        legend_name="test",
        style="aerial",
        prompt_hash=None,
        untrained=True,
    )
    return {"root": root, "grid": grid, "classes": full, "confidence": conf_full}


@pytest.fixture(scope="module")
def map_dir(tmp_path_factory) -> dict:
    return write_view_map(tmp_path_factory.mktemp("viewmap"))


@pytest.fixture(scope="module")
def server(map_dir) -> str:
    """``python -m pipeline view MAP_DIR --port 0`` in a subprocess; yields its URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "view", str(map_dir["root"]), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", line), (line, proc.stderr.read())
        yield line
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _lonlat_of_pixel(grid, row: int, col: int) -> tuple[float, float]:
    from rasterio.warp import transform

    x, y = grid.geobox.affine * (col + 0.5, row + 0.5)
    lon, lat = transform(UTM, "EPSG:4326", [x], [y])
    return lon[0], lat[0]


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


def _opaque_colours(png: bytes) -> set[str]:
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
    px = a[a[..., 3] > 0][:, :3]
    return {"#{:02x}{:02x}{:02x}".format(*p) for p in np.unique(px, axis=0)}


# --- pure colouring ----------------------------------------------------------------------------


def test_class_lut_colours_classes_hides_by_alpha_and_nodata_is_transparent():
    lut = render.class_lut(COLORS, {1: 0.0, 2: 0.5})
    cls = np.array([[0, 1], [2, 255]], np.uint8)
    rgba = render.colorize_classes(cls, cls != 255, lut)
    assert tuple(rgba[0, 0]) == (0x1F, 0x78, 0xB4, 255)
    assert rgba[0, 1, 3] == 0  # hidden class
    assert tuple(rgba[1, 0]) == (0xFF, 0xC8, 0x00, 128)
    assert rgba[1, 1, 3] == 0  # nodata


def test_ramp_and_rgb_stretch_map_ranges_and_mask_gaps():
    lut = render.ramp_lut("viridis")
    v = np.array([[0.0, 0.5, 1.0, np.nan]])
    rgba = render.colorize_ramp(v, np.ones(v.shape, bool), 0.0, 1.0, lut)
    assert (rgba[0, 0] == lut[0]).all() and (rgba[0, 2] == lut[255]).all()
    assert rgba[0, 3, 3] == 0
    rgb = np.array([[[0.0, 255.0]], [[0.0, 255.0]], [[0.0, np.nan]]])
    out = render.stretch_rgb(rgb, np.ones((1, 2), bool), 0.0, 255.0)
    assert tuple(out[0, 0]) == (0, 0, 0, 255) and out[0, 1, 3] == 0
    with pytest.raises(ValueError):
        render.ramp_lut("jet")


# --- finding a map's files ---------------------------------------------------------------------


def test_find_sources_reads_layers_and_legend(map_dir):
    s = find_sources(map_dir["root"])
    assert s.classes.name == "classes.tif" and s.confidence and s.valid_obs and s.store
    assert [(c.value, c.name, c.color) for c in s.classes_legend] == list(
        zip(range(3), NAMES, COLORS, strict=True)
    )
    assert s.untrained and "UNTRAINED" in s.warning
    assert s.rgb_source is None  # no composite COG, no saved composite


def test_find_sources_reads_the_vrt_of_gridded_outputs(map_dir, tmp_path):
    import shutil

    from rasterio.shutil import copy as rio_copy

    from pipeline.view.reading import class_shares

    d = tmp_path / "gridded"
    shutil.copytree(map_dir["root"], d)
    # A continental run publishes one VRT per layer over its cell COGs.
    (d / "cells").mkdir()
    (d / "classes.tif").rename(d / "cells" / "classes_c0.tif")
    rio_copy(d / "cells" / "classes_c0.tif", d / "classes.vrt", driver="VRT")
    s = find_sources(d)
    assert s.classes.name == "classes.vrt"
    shares, exact = class_shares(s.classes, 3)
    cls = map_dir["classes"]
    assert exact and np.allclose(
        shares, np.bincount(cls[cls != 255], minlength=3) / (cls != 255).sum()
    )


def test_find_sources_refuses_what_is_not_a_finished_map(tmp_path):
    from pipeline.base.errors import UserError

    with pytest.raises(UserError, match="not a folder"):
        find_sources(tmp_path / "missing")
    (tmp_path / ".s2lc").mkdir()
    with pytest.raises(UserError, match="has not finished"):
        find_sources(tmp_path)


def test_view_command_reports_a_bad_folder_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "view", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "not a folder" in out.stderr


def test_view_command_reports_a_taken_port_in_one_line(map_dir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "pipeline", "view", str(map_dir["root"]), "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and f"127.0.0.1:{port}" in out.stderr


# --- the server --------------------------------------------------------------------------------


def test_meta_gives_the_legend_with_exact_class_shares(server, map_dir):
    meta = requests.get(server + "api/meta", timeout=30).json()
    cls = map_dir["classes"]
    counts = np.bincount(cls[cls != 255], minlength=3)
    shares = counts / counts.sum()
    assert [c["name"] for c in meta["classes"]] == NAMES
    assert [c["color"] for c in meta["classes"]] == COLORS
    assert np.allclose([c["share"] for c in meta["classes"]], shares)
    assert meta["shares_exact"] is True
    assert meta["layers"] == {"classes": True, "confidence": True, "valid_obs": True,
                              "rgb": False, "margin": True, "entropy": True}  # fmt: skip
    assert [r["name"] for r in meta["ramps"]] == ["margin", "entropy"]
    assert meta["query"]["available"] is False and meta["query"]["reason"]
    w, s, e, n = meta["bounds"]
    assert w < AOI.centroid.x < e and s < AOI.centroid.y < n


def test_class_tiles_show_legend_colours_and_hide_a_toggled_class(server, map_dir):
    grid = map_dir["grid"]
    h, w = grid.shape
    lon, lat = _lonlat_of_pixel(grid, h // 2, w // 2)
    z = 16
    x, y = _tile_of(lon, lat, z)
    png = requests.get(f"{server}tiles/classes/{z}/{x}/{y}.png", timeout=30)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    seen = _opaque_colours(png.content)
    assert seen and seen <= set(COLORS)
    assert "#33a02c" in seen  # the middle class is at the centre
    hidden = requests.get(f"{server}tiles/classes/{z}/{x}/{y}.png?alpha=1,0,1", timeout=30)
    seen_hidden = _opaque_colours(hidden.content)
    assert "#33a02c" not in seen_hidden and seen_hidden <= set(COLORS)
    # A tile far away is empty, an unknown layer is a 404.
    far = requests.get(f"{server}tiles/classes/{z}/0/0.png", timeout=30)
    assert far.status_code == 200 and not _opaque_colours(far.content)
    assert requests.get(f"{server}tiles/nope/{z}/{x}/{y}.png", timeout=30).status_code == 404
    assert requests.get(f"{server}tiles/rgb/{z}/{x}/{y}.png", timeout=30).status_code == 404
    assert requests.get(f"{server}tiles/ood/{z}/{x}/{y}.png", timeout=30).status_code == 404
    for layer in ("confidence", "valid_obs", "margin", "entropy"):
        r = requests.get(f"{server}tiles/{layer}/{z}/{x}/{y}.png", timeout=30)
        assert r.status_code == 200 and _opaque_colours(r.content)


def test_pixel_gives_the_stored_top_k(server, map_dir):
    grid = map_dir["grid"]
    h, w = grid.shape
    row, col = h // 2, 2 * w // 3 + 5  # class 2, second choice class 0
    lon, lat = _lonlat_of_pixel(grid, row, col)
    res = requests.get(f"{server}api/pixel", params={"lon": lon, "lat": lat}, timeout=30).json()
    conf = float(map_dir["confidence"][row, col])
    assert [k["name"] for k in res["topk"]] == ["crop land", "water"]
    assert res["topk"][0]["prob"] == pytest.approx(conf, abs=1e-4)
    assert res["topk"][1]["prob"] == pytest.approx((1 - conf) / 2, abs=1e-4)
    assert res["confidence"] == pytest.approx(conf, abs=1e-4) and res["valid_obs"] == 6
    assert res["margin"] == pytest.approx(conf - (1 - conf) / 2, abs=1e-4)
    assert res["entropy"] == pytest.approx(0.5)
    lon, lat = _lonlat_of_pixel(grid, 1, col)  # the nodata strip
    res = requests.get(f"{server}api/pixel", params={"lon": lon, "lat": lat}, timeout=30).json()
    assert res["topk"] == []
    bad = requests.get(f"{server}api/pixel", params={"lon": "x"}, timeout=30)
    assert bad.status_code == 400


def test_query_without_a_field_is_refused_with_the_reason(server):
    r = requests.post(f"{server}api/query", json={"text": "a lake"}, timeout=30)
    assert r.status_code == 409 and "field" in r.json()["error"]
    assert requests.post(f"{server}api/query", json={"text": " "}, timeout=30).status_code == 400


def test_page_and_its_scripts_come_from_the_package(server):
    page = requests.get(server, timeout=30).text
    refs = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert refs and all(r.startswith("/static/") for r in refs)
    for ref in refs:
        r = requests.get(server + ref.lstrip("/"), timeout=30)
        assert r.status_code == 200 and r.content == (STATIC / ref[len("/static/") :]).read_bytes()
    js = (STATIC / "view.js").read_text() + (STATIC / "view.css").read_text()
    assert "http://" not in js and "https://" not in js


def test_vendored_leaflet_is_the_pinned_release_with_its_licence():
    d = STATIC / "vendor" / "leaflet-1.9.4"
    src = json.loads((d / "SOURCE.json").read_text())
    assert src["package"] == "leaflet" and src["version"] == "1.9.4"
    for name, digest in src["sha256"].items():
        assert hashlib.sha256((d / name).read_bytes()).hexdigest() == digest, name
    assert "BSD 2-Clause" in (d / "LICENSE").read_text()
