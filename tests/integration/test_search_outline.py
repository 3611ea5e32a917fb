"""The search's simplified outline returns exactly the exact search's items, on the real pgstac.

A run's search sends a few-vertex outline containing the region (:mod:`pipeline.stac.outline`)
and keeps the footprints that meet the region itself. Here footprints are placed inside the
region, between the region and its outline (the server returns them, the client must drop them)
and outside both, loaded into the session's pgstac as a collection of their own, and the items
of the list search and of the streamed run search are compared with pgstac's own ``intersects``
search over the detailed region.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from .pgstac import LocalPgstac

pytestmark = pytest.mark.integration

COLLECTION = "s2lc-outline-test"
YEAR = (dt.date(2023, 1, 1), dt.date(2023, 12, 31))


def _jagged_region():
    """A seeded jagged polygon near Luxembourg with more vertices than an outline keeps."""
    from shapely.geometry import Polygon

    from pipeline.stac.outline import MAX_VERTICES

    rng = np.random.default_rng(26)
    n = 3 * MAX_VERTICES
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 0.3 + 0.12 * rng.random(n)
    return Polygon(np.c_[6.1 + r * np.cos(ang), 49.6 + 0.7 * r * np.sin(ang)])


def _footprints(region, outline) -> list:
    """Small squares: inside the region, in the outline but off the region, and outside both."""
    import shapely
    from shapely.geometry import box

    rng = np.random.default_rng(4)
    west, south, east, north = outline.bounds
    feet, kinds = [], {"in": 0, "margin": 0, "out": 0}
    while min(kinds.values()) < 8 or len(feet) < 120:
        x, y = rng.uniform(west - 0.05, east + 0.05), rng.uniform(south - 0.05, north + 0.05)
        f = box(x, y, x + 0.003, y + 0.003)
        kind = "in" if f.intersects(region) else "margin" if f.intersects(outline) else "out"
        if kinds[kind] >= 60:
            continue
        kinds[kind] += 1
        feet.append(f)
    assert shapely.get_num_coordinates(outline) < shapely.get_num_coordinates(region)
    return feet


def _catalog(folder: Path, feet: list) -> Path:
    from shapely.geometry import box, mapping

    from pipeline.testing.demo.metadata import metadata_collection, metadata_items

    template = next(metadata_items(box(6.0, 49.5, 6.2, 49.7), 2023))
    items = []
    for k, f in enumerate(feet):
        it = copy.deepcopy(template)
        when = dt.datetime(2023, 1, 1, 10, tzinfo=dt.UTC) + dt.timedelta(days=2 * k)
        it["id"] = f"S2A_T{k:04d}_{when:%Y%m%d}_0_L2A"
        it["collection"] = COLLECTION
        it["geometry"], it["bbox"] = mapping(f), list(f.bounds)
        it["properties"].update(
            {"datetime": when.isoformat().replace("+00:00", "Z"), "eo:cloud_cover": 10.0}
        )
        items.append(it)
    folder.mkdir(parents=True, exist_ok=True)
    coll = metadata_collection(items)
    coll["id"] = COLLECTION
    (folder / "collection.json").write_text(json.dumps(coll))
    (folder / "items.ndjson").write_text("".join(json.dumps(i) + "\n" for i in items))
    return folder


def test_outline_search_returns_the_exact_search_items(
    pgstac_server: LocalPgstac, tmp_path: Path
) -> None:
    from pystac_client import Client

    from pipeline.stac.found import stream_run_scenes
    from pipeline.stac.outline import search_outline
    from pipeline.stac.search import SearchConfig, search_items

    region = _jagged_region()
    outline = search_outline(region)
    assert outline.covers(region)
    feet = _footprints(region, outline)
    before = (pgstac_server.collection, pgstac_server.catalog)
    try:
        pgstac_server.load_catalog(_catalog(tmp_path / "cat", feet))
    finally:  # the session's other tests search the demo collection
        pgstac_server.collection, pgstac_server.catalog = before
    # pgstac's own intersects search over the detailed region: the exact result
    exact = {
        it.id
        for it in Client.open(pgstac_server.url)
        .search(collections=[COLLECTION], intersects=region.__geo_interface__, limit=200)
        .items()
    }
    margin = {
        it.id
        for it in Client.open(pgstac_server.url)
        .search(collections=[COLLECTION], intersects=outline.__geo_interface__, limit=200)
        .items()
    } - exact
    assert len(exact) >= 8 and len(margin) >= 8  # the outline does return more: filtered here

    cfg = SearchConfig(
        profile="custom", stac_url=pgstac_server.url, collection=COLLECTION, page_size=25
    )
    listed = {it.id for it in search_items(region, *YEAR, cfg)}
    found = stream_run_scenes(region, *YEAR, cfg, tmp_path, url=pgstac_server.url)
    try:
        streamed = [d["id"] for d in found.items()]
    finally:
        found.close()
    assert listed == exact
    assert set(streamed) == exact and len(streamed) == len(exact)
    assert streamed == sorted(streamed, key=lambda i: i.split("_")[2])  # in time order
    assert found.counts["returned"] == len(exact) + len(margin) > found.counts["kept"]
    assert not list(tmp_path.glob("s2lc-search-*"))  # the spool is gone once closed
