"""A real pgstac STAC API (PostgreSQL + PostGIS + stac-fastapi-pgstac) serving the demo catalog.

The ``pgstac_server`` fixture (conftest.py) installs what is missing, loads the demo catalog with
pypgstac and serves it with uvicorn on loopback. These tests check server-side CQL2 cloud
filtering, the project's search through it, and a map run against it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from .pgstac import LocalPgstac

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_COMMAND = REPO / "pipeline" / "commands" / "run.py"
MAX_CLOUD = 20.0


def _catalog_items(catalog: Path) -> list[dict]:
    doc = json.loads((catalog / "items.json").read_text())
    return doc["features"] if isinstance(doc, dict) else doc


def _cloud_filter(max_cloud: float, op: str = "<") -> dict:
    return {"op": op, "args": [{"property": "eo:cloud_cover"}, max_cloud]}


def test_conformance_lists_filter_extension(pgstac_api: str) -> None:
    with urllib.request.urlopen(f"{pgstac_api}/conformance", timeout=30) as resp:
        conforms = json.load(resp)["conformsTo"]
    assert any(c.endswith("item-search#filter") for c in conforms), conforms
    assert any("cql2-json" in c for c in conforms), conforms
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses

    assert Client.open(pgstac_api).conforms_to(ConformanceClasses.FILTER)


def test_cql2_cloud_filter_is_applied_by_the_server(pgstac_server: LocalPgstac) -> None:
    from pystac_client import Client

    items = _catalog_items(pgstac_server.catalog)
    expected = {i["id"] for i in items if i["properties"]["eo:cloud_cover"] < MAX_CLOUD}
    assert 0 < len(expected) < len(items), "the demo catalog should have clear and cloudy scenes"

    client = Client.open(pgstac_server.url)
    coll = [pgstac_server.collection]
    unfiltered = client.search(collections=coll, limit=100)
    all_ids = {it.id for it in unfiltered.items()}
    assert all_ids == {i["id"] for i in items}

    # CQL2-JSON over POST, and CQL2-text over GET (what the filter extension offers).
    post = client.search(
        collections=coll, filter=_cloud_filter(MAX_CLOUD), filter_lang="cql2-json", limit=100
    )
    post_items = list(post.items())
    get = client.search(
        collections=coll,
        filter=f"eo:cloud_cover < {MAX_CLOUD:g}",
        filter_lang="cql2-text",
        method="GET",
        limit=100,
    )
    get_ids = {it.id for it in get.items()}

    assert {it.id for it in post_items} == expected == get_ids
    assert all(it.properties["eo:cloud_cover"] < MAX_CLOUD for it in post_items)
    # The server's own count (pgstac context): it filtered, not the client.
    assert post.matched() == len(expected) < unfiltered.matched() == len(items)


def test_search_items_filters_server_side(pgstac_server: LocalPgstac) -> None:
    """The project's search sends the cloud filter to the server (recorded by pgstac itself)."""
    from aoi import load_region
    from pipeline.stac.search import SearchConfig, search_items

    region = load_region("demo")
    cfg = SearchConfig(
        profile="custom",
        stac_url=pgstac_server.url,
        collection=pgstac_server.collection,
        max_cloud=MAX_CLOUD,
    )
    pgstac_server.clear_recorded_searches()
    found = search_items(region.geometry, region.start, region.end, cfg)

    items = _catalog_items(pgstac_server.catalog)
    start = dt.datetime.combine(region.start, dt.time.min, dt.UTC)
    end = dt.datetime.combine(region.end, dt.time.max, dt.UTC)
    expected = {
        i["id"]
        for i in items
        if i["properties"]["eo:cloud_cover"] <= MAX_CLOUD
        and start <= dt.datetime.fromisoformat(i["properties"]["datetime"]) <= end
    }
    assert expected and {it.id for it in found} == expected

    searches = pgstac_server.recorded_searches()
    assert searches, "pgstac recorded no search: the request did not reach the server"
    filters = [s.get("filter") for s in searches]
    assert any(
        f is not None and "eo:cloud_cover" in json.dumps(f) and f["args"][1] == MAX_CLOUD
        for f in filters
    ), f"no server-side cloud filter in the searches pgstac ran: {searches}"
    assert all(s.get("collections") == [pgstac_server.collection] for s in searches)


@pytest.mark.timeout(1500)
@pytest.mark.skipif(
    not RUN_COMMAND.exists(),
    reason="pipeline/commands/run.py ('python -m pipeline run') not present yet",
)
def test_map_run_through_pgstac(
    pgstac_server: LocalPgstac, demo_bbox: tuple[float, ...], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    pgstac_server.clear_recorded_searches()
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        "--region",
        "demo",
        "--untrained",
        "--stac-url",
        pgstac_server.url,
        "--collection",
        pgstac_server.collection,
        "--max-cloud",
        "40",
        "--bbox",
        *map(str, demo_bbox),
        "--workers",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1400, cwd=REPO, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    classes = list(out.rglob("classes.tif"))
    assert classes, sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    import rasterio

    with rasterio.open(classes[0]) as ds:
        assert ds.crs is not None and ds.width > 0 and ds.height > 0
    run_json = next(out.rglob("run.json"))
    assert pgstac_server.url in run_json.read_text()
    # The run's scene search went through pgstac, with the cloud filter applied server-side.
    searches = pgstac_server.recorded_searches()
    assert any(s.get("filter") and "eo:cloud_cover" in json.dumps(s["filter"]) for s in searches), (
        searches
    )
