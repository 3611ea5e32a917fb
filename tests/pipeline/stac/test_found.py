"""The run's search streamed page by page into a spool file, and the outline it sends."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pystac
import pytest
import shapely

from aoi import load_region
from pipeline.stac.found import search_run, stream_run_scenes
from pipeline.stac.outline import MAX_VERTICES, search_outline
from pipeline.stac.search import SearchConfig, run_item, search_scenes

YEAR = (dt.date(2023, 1, 1), dt.date(2023, 12, 31))


@pytest.mark.parametrize("name", ["germany", "jagged"])
def test_outline_covers_the_region_with_few_vertices(name):
    if name == "jagged":
        rng = np.random.default_rng(1)
        ang = np.linspace(0, 2 * np.pi, 5000, endpoint=False)
        r = 1 + 0.5 * rng.random(5000)
        geom = shapely.Polygon(np.c_[10 + r * np.cos(ang), 50 + r * np.sin(ang)])
    else:
        geom = load_region(name).geometry
    out = search_outline(geom)
    assert shapely.get_num_coordinates(geom) > MAX_VERTICES >= shapely.get_num_coordinates(out)
    assert out.covers(geom)
    assert out.area < 2 * geom.area  # not a box around everything
    small = shapely.box(10, 50, 10.1, 50.1)
    assert search_outline(small) is small  # few vertices: sent as it is


def test_streamed_run_search_equals_the_listed_one(demo_stac_url, tmp_path):
    geom = load_region("demo").geometry
    # split per month (numberMatched > split_above) and fetched 3 months at a time, 7 per page
    cfg = SearchConfig(
        profile="custom", stac_url=demo_stac_url, max_cloud=60, page_size=7, split_above=10,
        parallel=3,
    )  # fmt: skip
    listed = search_scenes(geom, *YEAR, cfg)  # the public search, held as one list
    items, ledger = [run_item(it.to_dict()) for it in listed.items], listed.ledger
    found = stream_run_scenes(geom, *YEAR, cfg, tmp_path, url=demo_stac_url)
    try:
        streamed = list(found.items())
        assert len(found) == len(items) > 10
        assert [d["id"] for d in streamed] == [d["id"] for d in items]
        for a, b in zip(streamed, items, strict=True):
            assert {k: v["href"] for k, v in a["assets"].items()} == {
                k: v["href"] for k, v in b["assets"].items()
            }
            # pystac's form on both sides (it updates old extension fields, e.g. proj:epsg)
            assert a["geometry"] == b["geometry"]
            assert pystac.Item.from_dict(a).properties == pystac.Item.from_dict(b).properties
        assert found.ledger.to_dict() == ledger.to_dict()
        assert found.counts["pages"] >= len(items) / 7
        assert list(tmp_path.glob("s2lc-search-*"))  # spooled on disk, not held
        # the same search in a process of its own hands back the same spool and ledger
        apart = search_run(geom, *YEAR, cfg, tmp_path, isolated=True)
        assert [d["id"] for d in apart.items()] == [d["id"] for d in streamed]
        assert apart.ledger.to_dict() == ledger.to_dict() and apart.counts["peak_mb"] > 0
        apart.close()
    finally:
        found.close()
    assert not list(tmp_path.glob("s2lc-search-*"))
