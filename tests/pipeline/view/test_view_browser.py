"""The map viewer in a real browser: headless Debian Chromium, driven by Playwright.

``make test-browser`` installs Chromium (Debian's package) and the Playwright client, then runs
this file. Over the planted 3-class map of ``test_view.py``: the classes are drawn in exactly
the legend's colours in their planted proportions, a class switched off or made transparent
disappears and the others stay. Over a small demo run (600 m x 600 m, untrained weights, with
the embedding field), served by ``python -m pipeline view``: the class layer renders in legend
colours, a toggled class disappears, a click shows the pixel's top-k, a free-text query draws
its heat map (and the heat map holds the field API's scores), and the page fetches nothing from
outside the viewer. Over a synthetic 2048 x 2048 px field zoomed in on its middle, a query
computes only the tiles on screen. Screenshots are saved under ``$S2LC_TEST_ARTEFACTS`` (default
``outputs/test-artefacts/browser``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.paths import REPO_ROOT

pytestmark = pytest.mark.browser

ROOT = REPO_ROOT
CHROMIUM = os.environ.get("S2LC_CHROMIUM", "/usr/bin/chromium")
# How Chromium must start on these machines (no sandbox as root, no background network calls).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1200, "height": 760}


def _artefacts() -> Path:
    d = Path(os.environ.get("S2LC_TEST_ARTEFACTS", ROOT / "outputs" / "test-artefacts" / "browser"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("S2LC_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (make test-browser installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is not installed; run 'make test-browser'")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"s2lc-chromium-{os.getpid()}"
    shutil.rmtree(profile, ignore_errors=True)
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
        )
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def _serve(map_dir: Path) -> Iterator[str]:
    """``python -m pipeline view MAP_DIR --port 0`` in a subprocess; yields its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "view", str(map_dir), "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), proc.stderr.read()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def viewer(demo_map) -> Iterator[str]:
    """The viewer over the suite's shared demo map (tests/demo_map.py)."""
    with _serve(demo_map.out) as url:
        yield url


@pytest.fixture(scope="module")
def planted_viewer(tmp_path_factory) -> Iterator[tuple[str, dict]]:
    """The viewer over the 3-class planted map of test_view.py (written by the project's writers)."""
    from tests.pipeline.view.test_view import write_view_map

    m = write_view_map(tmp_path_factory.mktemp("planted"))
    with _serve(m["root"]) as url:
        yield url, m


def _hex_to_rgb(c: str) -> np.ndarray:
    return np.array([int(c[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)


def _map_pixels(page, name: str) -> np.ndarray:
    """Screenshot of the map element (saved as an artefact) -> (h, w, 3) int16."""
    import io

    from PIL import Image

    path = _artefacts() / f"{name}.png"
    page.locator("#map").screenshot(path=str(path))
    page.screenshot(path=str(_artefacts() / f"{name}-page.png"))
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB")).astype(np.int16)


def _count(px: np.ndarray, color: str, tol: int = 3) -> int:
    return int((np.abs(px - _hex_to_rgb(color)).max(axis=-1) <= tol).sum())


def _wait_idle(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_function("window.s2lcView && window.s2lcView.idle()", timeout=timeout_ms)
    page.wait_for_timeout(300)  # one more frame for the last tile's fade-in


def _open(browser, url: str) -> tuple:
    """A page on ``url`` with its errors and any request outside the viewer recorded."""
    page = browser.new_page()
    errors: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: None if r.url.startswith(url) else outside.append(r.url))
    page.goto(url)
    _wait_idle(page)
    # Opaque classes over nothing else, so the screenshot shows the legend's exact colours.
    page.fill("#opacity-classes", "100")
    page.dispatch_event("#opacity-classes", "input")
    if page.locator("#layer-rgb").count():
        page.uncheck("#layer-rgb")
    _wait_idle(page)
    return page, errors, outside


def test_planted_classes_render_in_legend_colours_and_toggle(browser, planted_viewer):
    from tests.pipeline.view.test_view import COLORS

    url, m = planted_viewer
    page, errors, outside = _open(browser, url)
    px = _map_pixels(page, "0-planted")
    counts = [_count(px, c) for c in COLORS]
    drawn = px.shape[0] * px.shape[1] - _count(px, "#3a3a3a", tol=0)
    assert min(counts) > 1000 and sum(counts) > 0.9 * drawn, counts
    # Thirds of the map, so about equal areas on screen too.
    assert max(counts) < 1.3 * min(counts), counts
    page.uncheck('input[data-class="1"]')
    _wait_idle(page)
    px = _map_pixels(page, "0-planted-class-1-off")
    assert (
        _count(px, COLORS[1]) == 0 and _count(px, COLORS[0]) > 1000 and _count(px, COLORS[2]) > 1000
    )
    page.fill('input[data-class-opacity="2"]', "0")
    page.dispatch_event('input[data-class-opacity="2"]', "change")
    _wait_idle(page)
    px = _map_pixels(page, "0-planted-class-2-transparent")
    assert _count(px, COLORS[2]) == 0 and _count(px, COLORS[0]) > 1000
    page.click("#all-on")
    _wait_idle(page)
    px = _map_pixels(page, "0-planted-all-on")
    assert _count(px, COLORS[1]) > 1000 and _count(px, COLORS[2]) == 0  # class 2 still at opacity 0
    assert not errors and not outside, (errors, outside)


def test_demo_run_in_chromium(browser, viewer):
    page, errors, outside = _open(browser, viewer)
    meta = page.evaluate("window.s2lcView.state.meta")
    classes = {c["value"]: c for c in meta["classes"]}
    px = _map_pixels(page, "1-classes")
    counts = {v: _count(px, c["color"]) for v, c in classes.items()}
    background = _count(px, "#3a3a3a", tol=0)
    drawn = px.shape[0] * px.shape[1] - background
    assert drawn > 0.2 * px.shape[0] * px.shape[1], "the class layer did not render"
    # Nearly every drawn pixel is a legend colour (the rest: scale bar, zoom buttons, edges).
    assert sum(counts.values()) > 0.9 * drawn, counts
    for v, c in classes.items():
        if c["share"] > 0.02:
            assert counts[v] > 0, f"class {c['name']} ({c['share']:.1%}) not drawn"

    # Toggle the largest class off: its colour disappears, the others stay.
    big = max(classes, key=lambda v: counts[v])
    page.uncheck(f'input[data-class="{big}"]')
    _wait_idle(page)
    px2 = _map_pixels(page, "2-class-off")
    assert _count(px2, classes[big]["color"]) == 0
    others = [v for v in classes if v != big and counts[v] > 100]
    assert all(_count(px2, classes[v]["color"]) > 0 for v in others)
    page.check(f'input[data-class="{big}"]')
    _wait_idle(page)

    # A pixel's top-k at a click in the middle of the map.
    page.locator("#map").click()
    page.wait_for_selector("#topk tr")
    assert page.locator("#topk tr").count() >= 1
    page.evaluate("window.s2lcView.state.map.closePopup()")

    # A free-text query draws its heat map.
    assert meta["query"]["available"], meta["query"]["reason"]
    t0 = time.perf_counter()
    page.fill("#query-text", "a lake")
    page.click("#query-run")
    page.wait_for_function(
        "(s => s.dataset.seconds !== undefined || s.textContent.startsWith('query failed'))"
        "(document.getElementById('query-status'))",
        timeout=300_000,  # the first query waits for the model, loaded in the background
    )
    seconds = time.perf_counter() - t0
    assert page.get_attribute("#query-status", "data-seconds"), page.inner_text("#query-status")
    _wait_idle(page)
    page.uncheck("#layer-classes")
    _wait_idle(page)
    px3 = _map_pixels(page, "3-query")
    heat = px.shape[0] * px.shape[1] - _count(px3, "#3a3a3a", tol=0)
    assert heat > 0.2 * px.shape[0] * px.shape[1], "the query heat map did not render"
    status = page.inner_text("#query-status")
    assert "a lake" in status
    (_artefacts() / "query-seconds.txt").write_text(f"{seconds:.3f} (page: {status})\n")

    assert not errors, errors
    assert not outside, f"the page fetched from outside the viewer: {outside}"


def test_query_heat_map_is_the_fields_answer(demo_map, viewer):
    """The served heat map holds the field API's scores (full resolution and strided)."""
    import requests
    from pyproj import Transformer

    from pipeline.field import open_field, query_window

    f = open_field(demo_map.out)
    expected = query_window(f, ["a river"], f.full_window)[0]
    res = requests.post(viewer + "api/query", json={"text": "a river"}, timeout=300).json()
    gb = f.geobox
    rows, cols = np.nonzero(np.isfinite(expected))
    for i in np.linspace(0, len(rows) - 1, 5).astype(int):
        r, c = int(rows[i]), int(cols[i])
        x, y = gb.affine * (c + 0.5, r + 0.5)
        lon, lat = Transformer.from_crs(gb.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(
            x, y
        )
        px = requests.get(
            viewer + "api/pixel", params={"lon": lon, "lat": lat, "query": res["id"]}, timeout=60
        ).json()
        assert px["query"]["score"] == pytest.approx(float(expected[r, c]), abs=1e-4)


@pytest.fixture(scope="module")
def large_viewer(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The viewer over a synthetic 2048 x 2048 px field (20 km x 20 km at 10 m, chunks of 256 px),
    written by the product's writers (pipeline.testing.field), with its class map."""
    from pipeline.bench.ask import _demo_run_metadata
    from pipeline.testing.field import write_classes_cog, write_synthetic_field

    meta = _demo_run_metadata(256)
    out = write_synthetic_field(
        tmp_path_factory.mktemp("large") / "map", (2048, 2048), run=meta["run"],
        field_meta=meta["field_meta"], class_names=meta["class_names"], colors=meta["colors"],
        legend_info=meta["legend_info"], period_labels=["2023-01"], crs=meta["crs"],
        tile_size=256,
    )  # fmt: skip
    write_classes_cog(out)
    with _serve(out) as url:
        yield url, out


def test_a_query_over_a_large_field_computes_only_the_visible_tiles(browser, large_viewer):
    """Zoomed in on the middle of a 2048 x 2048 px field, a query draws its heat map and the
    server computes only the tiles on screen: a small part of the field's tiles at that zoom."""
    import morecantile
    import requests

    url, _ = large_viewer
    page, errors, outside = _open(browser, url)
    meta = page.evaluate("window.s2lcView.state.meta")
    w, s, e, n = meta["bounds"]
    z = meta["maxzoom"] + 2  # about 3 m per screen pixel: some 600 tiles over the field
    page.evaluate(
        f"window.s2lcView.state.map.setView([{(s + n) / 2}, {(w + e) / 2}], {z}, {{animate: false}})"
    )
    page.uncheck("#layer-classes")
    _wait_idle(page)
    page.fill("#query-text", "a lake")
    page.click("#query-run")
    page.wait_for_function(
        "(s => s.dataset.seconds !== undefined || s.textContent.startsWith('query failed'))"
        "(document.getElementById('query-status'))",
        timeout=300_000,
    )
    assert page.get_attribute("#query-status", "data-seconds"), page.inner_text("#query-status")
    _wait_idle(page)
    px = _map_pixels(page, "4-large-query")
    heat = px.shape[0] * px.shape[1] - _count(px, "#3a3a3a", tol=0)
    assert heat > 0.5 * px.shape[0] * px.shape[1], "the query heat map did not render"
    qid = page.evaluate("window.s2lcView.state.query.id")
    stats = requests.get(url + f"api/query/{qid}", timeout=30).json()
    # the tiles Leaflet shows at this zoom: those under the map's pixel bounds
    on_screen = page.evaluate(
        "(() => { const m = window.s2lcView.state.map, b = m.getPixelBounds();"
        " return (Math.floor((b.max.x - 1) / 256) - Math.floor(b.min.x / 256) + 1) *"
        " (Math.floor((b.max.y - 1) / 256) - Math.floor(b.min.y / 256) + 1); })()"
    )
    field_tiles = len(list(morecantile.tms.get("WebMercatorQuad").tiles(w, s, e, n, [z])))
    (_artefacts() / "large-query-tiles.txt").write_text(
        f"zoom {z}: computed {stats['tiles_computed']}, on screen {on_screen}, "
        f"field {field_tiles}\n"
    )
    assert 0 < stats["tiles_computed"] <= on_screen, (stats, on_screen)
    assert field_tiles >= 10 * stats["tiles_computed"], (stats, field_tiles)
    assert not errors and not outside, (errors, outside)
