"""Scene search against real STAC APIs on loopback: the demo API, a flaky API, a SAS token API."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pystac
import pytest
from shapely.geometry import Point, box

from aoi import load_region
from pipeline.base.errors import UserError
from pipeline.stac.profiles import PROFILES, sign_planetary_computer
from pipeline.stac.search import NoScenesError, SearchConfig, search_items
from tests.paths import REPO_ROOT

YEAR = (dt.date(2023, 1, 1), dt.date(2023, 12, 31))


@pytest.fixture(scope="module")
def demo_geometry():
    return load_region("demo").geometry


def _all_items(catalog: Path) -> list[dict]:
    return json.loads((catalog / "items.json").read_text())["features"]


def test_search_by_datetime_and_cloud(demo_stac_url, demo_catalog, demo_geometry):
    cfg = SearchConfig(profile="custom", stac_url=demo_stac_url, max_cloud=100)
    march = search_items(demo_geometry, dt.date(2023, 3, 1), dt.date(2023, 3, 31), cfg)
    assert [it.datetime.date() for it in march] == [
        dt.date(2023, 3, d) for d in (2, 7, 12, 17, 22, 27)
    ]
    assert all(isinstance(it, pystac.Item) for it in march)
    clear = search_items(demo_geometry, *YEAR, SearchConfig(stac_url=demo_stac_url, max_cloud=20))
    expected = sorted(
        it["id"] for it in _all_items(demo_catalog) if it["properties"]["eo:cloud_cover"] <= 20
    )
    assert sorted(it.id for it in clear) == expected and 5 < len(expected) < 73
    assert [it.datetime for it in clear] == sorted(it.datetime for it in clear)
    # the end date is inclusive
    one = search_items(demo_geometry, dt.date(2023, 1, 1), dt.date(2023, 1, 1), cfg)
    assert [it.datetime.date() for it in one] == [dt.date(2023, 1, 1)]


def test_search_by_intersects(demo_stac_url, demo_geometry):
    cfg = SearchConfig(profile="custom", stac_url=demo_stac_url, max_cloud=100)
    c = demo_geometry.centroid
    inside = search_items(Point(c.x, c.y).buffer(0.001), *YEAR, cfg)
    assert len(inside) == 73
    far = box(c.x + 1.0, c.y, c.x + 1.1, c.y + 0.1)
    with pytest.raises(NoScenesError, match="no Sentinel-2 scenes"):
        search_items(far, *YEAR, cfg)


def test_paging_returns_every_item(demo_stac_url, demo_geometry):
    small = SearchConfig(stac_url=demo_stac_url, max_cloud=100, page_size=7)
    big = SearchConfig(stac_url=demo_stac_url, max_cloud=100, page_size=100)
    a = search_items(demo_geometry, *YEAR, small)
    b = search_items(demo_geometry, *YEAR, big)
    assert [it.id for it in a] == [it.id for it in b] and len(a) == 73
    capped = search_items(demo_geometry, *YEAR, SearchConfig(stac_url=demo_stac_url, max_cloud=100, page_size=7, max_items=10))  # fmt: skip
    assert len(capped) == 10


def test_demo_profile_starts_and_stops_its_own_server(demo_catalog, demo_geometry):
    items = search_items(
        demo_geometry,
        dt.date(2023, 6, 1),
        dt.date(2023, 6, 30),
        SearchConfig(profile="demo", max_cloud=100),
    )
    assert len(items) == 6
    assert items[0].assets["red"].href.startswith(demo_catalog.as_uri())


def test_nothing_matches_is_a_clear_user_error(demo_stac_url, demo_geometry):
    cfg = SearchConfig(stac_url=demo_stac_url, max_cloud=0.0)
    with pytest.raises(UserError, match=r"cloud cover <= 0% \(\d+ before the cloud filter\)"):
        search_items(demo_geometry, dt.date(2023, 7, 1), dt.date(2023, 7, 2), cfg)
    with pytest.raises(NoScenesError, match="no Sentinel-2 scenes"):
        search_items(demo_geometry, dt.date(2021, 1, 1), dt.date(2021, 12, 31), cfg)


def test_config_is_validated():
    with pytest.raises(UserError, match="unknown STAC profile"):
        SearchConfig(profile="nope")
    with pytest.raises(UserError, match="--stac-url"):
        SearchConfig(profile="custom")
    with pytest.raises(UserError, match="max_cloud"):
        SearchConfig(max_cloud=120)
    assert PROFILES["earth-search"].url == "https://earth-search.aws.element84.com/v1"
    assert SearchConfig().resolved_collection == "sentinel-2-l2a"


# --- a flaky STAC API: a real HTTP server on loopback that fails the first N requests ----------


@contextmanager
def _http_server(handle: Callable[[BaseHTTPRequestHandler, str], None]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            handle(self, "GET")

        def do_POST(self):  # noqa: N802
            handle(self, "POST")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _send(h: BaseHTTPRequestHandler, status: int, doc: dict | None = None) -> None:
    body = json.dumps(doc or {"code": "ServiceUnavailable"}).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@contextmanager
def flaky_api(
    features: list[dict], fail: int, stall_s: float = 0.0, method: str | None = None
) -> Iterator[dict]:
    """A minimal STAC API whose first ``fail`` requests (of ``method``) answer 503 or stall."""
    state = {"requests": 0, "url": "", "paths": []}

    def handle(h: BaseHTTPRequestHandler, verb: str) -> None:
        state["paths"].append(f"{verb} {h.path}")
        if method in (None, verb):
            state["requests"] += 1
        if method in (None, verb) and state["requests"] <= fail:
            if stall_s:
                time.sleep(stall_s)
            else:
                h.rfile.read(int(h.headers.get("Content-Length") or 0))
                return _send(h, 503)
        base = state["url"]
        if verb == "POST":
            h.rfile.read(int(h.headers.get("Content-Length") or 0))
            return _send(h, 200, {"type": "FeatureCollection", "features": features, "links": []})
        conf = [
            "https://api.stacspec.org/v1.0.0/core",
            "https://api.stacspec.org/v1.0.0/item-search",
        ]
        links = [
            {"rel": "self", "href": f"{base}/", "type": "application/json"},
            {"rel": "root", "href": f"{base}/", "type": "application/json"},
            {"rel": "search", "href": f"{base}/search", "type": "application/geo+json", "method": "POST"},
        ]  # fmt: skip
        _send(h, 200, {"type": "Catalog", "id": "flaky", "stac_version": "1.0.0",
                       "description": "flaky", "conformsTo": conf, "links": links})  # fmt: skip

    with _http_server(handle) as url:
        state["url"] = url
        yield state


def test_retries_on_5xx_then_succeeds(small_catalog, demo_geometry):
    features = _all_items(small_catalog)
    with flaky_api(features, fail=3) as state:
        cfg = SearchConfig(
            profile="custom", stac_url=state["url"], max_cloud=100, retries=4, backoff=0.01
        )
        items = search_items(demo_geometry, *YEAR, cfg)
        assert len(items) == len(features)
        # three 503s on the landing page, retried, then the client's own requests succeed
        assert state["paths"][:4] == ["GET /"] * 4 and state["paths"][-1] == "POST /search"


def test_search_requests_are_retried_too(small_catalog, demo_geometry):
    features = _all_items(small_catalog)
    with flaky_api(features, fail=2, method="POST") as state:
        cfg = SearchConfig(stac_url=state["url"], max_cloud=100, retries=3, backoff=0.01)
        assert len(search_items(demo_geometry, *YEAR, cfg)) == len(features)
        assert state["paths"].count("POST /search") == 3


def test_retries_give_up_with_a_user_error(small_catalog, demo_geometry):
    with flaky_api(_all_items(small_catalog), fail=100) as state:
        cfg = SearchConfig(profile="custom", stac_url=state["url"], retries=2, backoff=0.01)
        with pytest.raises(UserError, match="STAC API"):
            search_items(demo_geometry, *YEAR, cfg)
        assert state["requests"] == 3  # the first try and two retries


def test_retries_on_timeouts(small_catalog, demo_geometry):
    features = _all_items(small_catalog)
    with flaky_api(features, fail=1, stall_s=1.5) as state:
        cfg = SearchConfig(
            stac_url=state["url"], max_cloud=100, retries=2, backoff=0.01, timeout=0.5
        )
        assert len(search_items(demo_geometry, *YEAR, cfg)) == len(features)


def test_client_side_cloud_filter_when_the_server_ignores_it(small_catalog, demo_geometry):
    features = _all_items(small_catalog)
    with flaky_api(features, fail=0) as state:
        cfg = SearchConfig(stac_url=state["url"], max_cloud=30)
        items = search_items(demo_geometry, *YEAR, cfg)
    assert {it.id for it in items} == {
        f["id"] for f in features if f["properties"]["eo:cloud_cover"] <= 30
    }


def test_unreachable_api_is_a_user_error(demo_geometry):
    from pipeline.testing.stac_server import free_port

    cfg = SearchConfig(stac_url=f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(UserError, match="cannot reach the STAC API"):
        search_items(demo_geometry, *YEAR, cfg)


def test_planetary_computer_signing_with_a_token_api():
    calls = []

    def handle(h: BaseHTTPRequestHandler, method: str) -> None:
        calls.append(h.path)
        _send(h, 200, {"msft:expiry": "2099-01-01T00:00:00Z", "token": "st=1&se=2&sig=abc"})

    item = pystac.Item("x", None, None, dt.datetime(2023, 1, 1), {}, collection="sentinel-2-l2a")
    item.add_asset("B02", pystac.Asset("https://acct.blob.core.windows.net/c/B02.tif"))
    item.add_asset("other", pystac.Asset("https://example.org/B02.tif"))
    with _http_server(handle) as url:
        sign_planetary_computer([item], f"{url}/api/sas/v1/token")
        again = item.clone()
        again.assets["B02"].href = "https://acct.blob.core.windows.net/c/B03.tif"
        sign_planetary_computer([again], f"{url}/api/sas/v1/token")
    assert item.assets["B02"].href.endswith("B02.tif?st=1&se=2&sig=abc")
    assert item.assets["other"].href == "https://example.org/B02.tif"
    assert again.assets["B02"].href.endswith("B03.tif?st=1&se=2&sig=abc")
    assert calls == ["/api/sas/v1/token/sentinel-2-l2a"]  # the token is cached


# --- the command line --------------------------------------------------------------------------


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "S2LC_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "search", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_search_command_prints_count_dates_and_cloud(demo_catalog, session_cache_dir):
    out = _cli("--region", "demo", "--start", "2023-03-01", "--end", "2023-03-31",
               "--max-cloud", "100", cache=session_cache_dir)  # fmt: skip
    assert out.returncode == 0, out.stderr
    table, months, ledger = out.stdout.strip().split("\n\n")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["date", "time", "cloud"]
    assert [ln.split()[0] for ln in lines[1:-1]] == [
        f"2023-03-{d:02d}" for d in (2, 7, 12, 17, 22, 27)
    ]
    assert lines[-1].startswith("6 scene(s) from sentinel-2-l2a (demo), 2023-03-02 .. 2023-03-27")
    assert "cloud cover min" in lines[-1]
    assert months.splitlines()[1].split()[:3] == ["2023-03", "6", "scene(s)"]  # per month
    assert ledger.splitlines()[0] == "scene ledger: 6 returned, 6 used"


def test_search_command_with_an_api_url_and_bbox(demo_stac_url, demo_geometry, session_cache_dir):
    w, s, e, n = demo_geometry.bounds
    out = _cli("--stac-url", demo_stac_url, "--bbox", str(w), str(s), str(e), str(n),
               "--year", "2023", "--max-cloud", "10", cache=session_cache_dir)  # fmt: skip
    assert out.returncode == 0, out.stderr
    table, _, ledger = out.stdout.strip().split("\n\n")
    assert "(custom)" in table.splitlines()[-1]
    clouds = [float(ln.split()[2]) for ln in table.splitlines()[1:-1]]
    assert clouds and max(clouds) <= 10
    assert f"{len(clouds)} used" in ledger.splitlines()[0] and "cloud filter" in ledger


def test_search_command_nothing_found_is_one_line(demo_catalog, session_cache_dir):
    out = _cli("--region", "demo", "--year", "2021", cache=session_cache_dir)
    assert out.returncode == 2
    err = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "no Sentinel-2 scenes" in err[0] and "Traceback" not in out.stderr
