"""Real-world input faults (issue 11), below the run level: provider layouts, every offset signal,
duplicate acquisitions, search paging against numberMatched, signing at read time, AOI
normalisation and exact grid extents. Inputs of the filed cases are in tests/data/cases/."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pipeline.base.errors import UserError
from tests.paths import TEST_DATA

CASES = TEST_DATA / "cases"
SMALL = (600000.0, 5340000.0, 600640.0, 5340640.0)


def _doc(root: Path) -> dict:
    return json.loads((root / "items.json").read_text())


def _geobox():
    from odc.geo.geobox import GeoBox

    return GeoBox.from_bbox(SMALL, "EPSG:32632", resolution=10)


def _items(features):
    import pystac

    return [pystac.Item.from_dict(copy.deepcopy(f)) for f in features]


def _to_cdse(doc: dict) -> dict:
    """The case's rename: CDSE asset keys, CRS as asset-level proj:code, processing:version."""
    keys = json.loads((CASES / "cdse_asset_keys.json").read_text())
    keys.pop("_comment")
    doc = copy.deepcopy(doc)
    for f in doc["features"]:
        p = f["properties"]
        epsg = p.pop("proj:epsg")
        p["processing:version"] = p.pop("s2:processing_baseline")
        renamed = {}
        for k, a in f["assets"].items():
            a["proj:code"] = f"EPSG:{epsg}"
            renamed[keys[k]] = a
        f["assets"] = renamed
        f["stac_extensions"] = [
            e.replace("projection/v1.1.0", "projection/v2.0.0") for e in f["stac_extensions"]
        ]
    return doc


# --- provider layouts ----------------------------------------------------------------------------


def test_cdse_keys_with_asset_level_proj_code_load_like_planetary_computer(small_pc_catalog):
    """Case unrecognised-asset-keys-empty-map: CDSE-keyed scenes are read, not skipped."""
    from pipeline.reading.cube import load_cube
    from pipeline.stac.bands import CDSE_KEYS, asset_keys, asset_layout, item_crs

    pc = _doc(small_pc_catalog)["features"][:3]
    cdse = _to_cdse({"features": pc})["features"]
    assert asset_layout(cdse[0]) == "cdse" and asset_keys(cdse[0]) == CDSE_KEYS
    assert item_crs(cdse[0]) == "EPSG:32632"  # from the assets' proj:code
    got = load_cube(_items(cdse), _geobox()).values
    want = load_cube(_items(pc), _geobox()).values
    assert np.isfinite(got).any()
    np.testing.assert_allclose(got, want, atol=1e-6, equal_nan=True)


def test_crs_as_item_level_proj_code():
    from pipeline.stac.bands import item_crs

    assert item_crs({"properties": {"proj:code": "EPSG:32633"}, "assets": {}}) == "EPSG:32633"
    assert item_crs({"properties": {"proj:epsg": 32632}, "assets": {}}) == "EPSG:32632"
    assert item_crs({"properties": {}, "assets": {"a": {"proj:epsg": 3035}}}) == "EPSG:3035"
    assert item_crs({"properties": {}, "assets": {"a": {}}}) is None


def test_unknown_layout_is_a_clear_error_naming_the_keys():
    from pipeline.stac.bands import UnknownAssetLayout, asset_keys

    item = {"id": "x", "assets": {"band_red": {}, "band_nir": {}, "cloudmask": {}}}
    with pytest.raises(UnknownAssetLayout, match="band_nir, band_red, cloudmask"):
        asset_keys(item)


def test_earth_search_c1_layout_uses_its_raster_bands_offset():
    """sentinel-2-c1-l2a: common-name keys, no offset-applied flag, raster:bands offset -0.1."""
    from pipeline.stac.bands import EARTH_SEARCH_V1_KEYS, asset_keys, reflectance_scale_offset

    rb = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]
    assets = {
        k: {"href": f"s3://x/{k}.tif", "raster:bands": rb} for k in EARTH_SEARCH_V1_KEYS.values()
    }
    assets["scl"] = {"href": "s3://x/scl.tif"}
    item = {"id": "S2A_T32UPU_20240601T103021_L2A", "assets": assets,
            "properties": {"datetime": "2024-06-01T10:30:21Z", "proj:code": "EPSG:32632"}}  # fmt: skip
    assert asset_keys(item) == EARTH_SEARCH_V1_KEYS
    h = reflectance_scale_offset(item)
    assert (h.scale, h.offset) == (0.0001, -0.1) and "raster:bands" in h.reason
    # a declared offset of 0 (a catalogue that removed it) is honoured too
    for a in assets.values():
        if "raster:bands" in a:
            a["raster:bands"] = [{"scale": 0.0001, "offset": 0.0}]
    assert reflectance_scale_offset(item).offset == 0.0


# --- harmonisation -------------------------------------------------------------------------------


def _v0_scene(tmp_path):
    from pipeline.testing.demo import generate_catalog

    root = generate_catalog(tmp_path / "cat", seed=3, layout="planetary-computer", bounds=SMALL,
                            aoi=SMALL, dates=[dt.datetime(2022, 3, 13, 10, 30, tzinfo=dt.UTC)],
                            cloud_fractions=[0.0], partial_swath=None, baseline="02.14")  # fmt: skip
    feat = _doc(root)["features"][0]
    props = json.loads((CASES / "item_v0_properties.json").read_text())
    props.pop("_comment")
    feat["properties"] = props
    feat["id"] = "S2B_32UPU_20220313_0_L2A"
    return feat


def test_es_v0_sentinel_boa_offset_applied_is_honoured(tmp_path):
    """Case es-v0-boa-offset-applied: B4 = DN / 10000, the offset is not subtracted again."""
    import rasterio

    from pipeline.reading.cube import load_cube
    from pipeline.stac.bands import BANDS, reflectance_scale_offset

    feat = _v0_scene(tmp_path)
    assert reflectance_scale_offset(feat).offset == 0.0
    cube = load_cube(_items([feat]), _geobox())
    with rasterio.open(feat["assets"]["B04"]["href"]) as src:
        dn = src.read(1).astype(np.float64)
    red = cube.values[0, BANDS.index("B4")]
    ok = np.isfinite(red) & (dn > 0)
    assert ok.mean() > 0.5
    np.testing.assert_allclose(red[ok], dn[ok] / 1e4, atol=1e-4)
    assert cube.attrs["offset_warnings"] == {}  # plausible: no contradiction


def test_es_v0_flag_false_after_0400_subtracts_the_offset():
    from pipeline.stac.bands import reflectance_scale_offset

    props = {"datetime": "2022-03-13T10:30:00Z", "sentinel:processing_baseline": "04.00",
             "sentinel:boa_offset_applied": False}  # fmt: skip
    assert reflectance_scale_offset({"properties": props, "assets": {}}).offset == -0.1


def test_contradicting_offset_flags_warn_with_the_scene_ids(small_catalog, small_pc_catalog):
    """Metadata is not trusted blindly: decoded values contradicting the offset applied warn."""
    from pipeline.reading.cube import load_cube

    # DN carry +1000 (PC, baseline 05.00) but the item claims the offset was removed
    lying = _doc(small_pc_catalog)["features"][:2]
    for f in lying:
        f["properties"]["earthsearch:boa_offset_applied"] = True
    warned = load_cube(_items(lying), _geobox()).attrs["offset_warnings"]
    assert set(warned) == {f["id"] for f in lying}
    assert all("still carry" in w for w in warned.values())
    # DN are offset-free (ES v1) but the flag is gone, so baseline 05.00 subtracts the offset
    free = _doc(small_catalog)["features"][:2]
    for f in free:
        del f["properties"]["earthsearch:boa_offset_applied"]
        for a in f["assets"].values():
            a.pop("raster:bands", None)
    warned = load_cube(_items(free), _geobox()).attrs["offset_warnings"]
    assert set(warned) == {f["id"] for f in free}
    assert all("offset-free" in w for w in warned.values())
    # honest metadata: no warning
    assert (
        load_cube(_items(_doc(small_catalog)["features"][:2]), _geobox()).attrs["offset_warnings"]
        == {}
    )


# --- one acquisition, one observation ------------------------------------------------------------


def _two_baselines(tmp_path):
    """The duplicate-acquisition case: 4 acquisitions, each published with 02.14 and 05.00."""
    from pipeline.testing.demo import generate_catalog

    dates = [dt.datetime(2021, m, d, 10, 30, tzinfo=dt.UTC) for m, d in ((5, 10), (5, 20), (6, 9), (6, 19))]  # fmt: skip
    feats = []
    for baseline, made in (("02.14", "20210620T150000"), ("05.00", "20230315T120000")):
        root = generate_catalog(tmp_path / f"b{baseline}", seed=9, layout="planetary-computer",
                                bounds=SMALL, aoi=SMALL, dates=dates, cloud_fractions=[0.0] * 4,
                                partial_swath=None, baseline=baseline)  # fmt: skip
        for f in _doc(root)["features"]:
            f["id"] = f["id"].rsplit("_", 1)[0] + "_" + made
            uri = f["properties"]["s2:product_uri"]
            f["properties"]["s2:product_uri"] = uri.rsplit("_", 1)[0] + f"_{made}.SAFE"
            feats.append(f)
    return feats, tmp_path / "b05.00"


def test_duplicate_acquisitions_keep_the_newest_baseline(tmp_path):
    """Case duplicate-acquisition-two-baselines: 8 items, 4 acquisitions, 4 observations."""
    from pipeline.composite.median import composite
    from pipeline.reading.cube import load_cube
    from pipeline.stac.scenes import select_scenes

    feats, _ = _two_baselines(tmp_path)
    kept, ledger = select_scenes(feats, dt.date(2021, 5, 1), dt.date(2021, 6, 30), 100.0)
    assert len(kept) == 4
    assert all(f["properties"]["s2:processing_baseline"] == "05.00" for f in kept)
    counts = ledger.counts()
    assert counts == {"returned": 8, "used": 4, "duplicate": 4}
    dropped = [k for k, v in ledger.scenes.items() if v.get("reason") == "duplicate"]
    assert all(k.endswith("20210620T150000") for k in dropped)
    cube = load_cube(_items(kept), _geobox())
    comp = composite(cube.values, cube["time"].values, dt.date(2021, 5, 1), dt.date(2021, 6, 30), "annual")  # fmt: skip
    assert comp.counts.max() == 4  # valid_obs counts acquisitions, never copies


def test_ledger_accounts_for_every_item_with_its_reason(small_catalog):
    from pipeline.stac.scenes import REASONS, SceneLedger, select_scenes

    feats = _doc(small_catalog)["features"]
    for f in feats:
        f["properties"]["eo:cloud_cover"] = 10.0
    feats[0] = {**feats[0], "assets": {"band_red": {}, "cloudmask": {}}}  # unknown layout
    del feats[1]["assets"]["scl"]  # missing band
    feats[2]["properties"]["eo:cloud_cover"] = 99.0  # cloud filter
    feats[3]["properties"]["datetime"] = "2022-12-31T10:30:00Z"  # outside the period
    kept, ledger = select_scenes(feats, dt.date(2023, 1, 1), dt.date(2023, 12, 31), 60.0)
    reasons = {k: v.get("reason") for k, v in ledger.scenes.items()}
    assert reasons[feats[0]["id"]] == "unknown_layout"
    assert reasons[feats[1]["id"]] == "missing_band"
    assert reasons[feats[2]["id"]] == "cloud"
    assert reasons[feats[3]["id"]] == "outside_period"
    assert len(ledger.scenes) == len(feats) and len(kept) == len(feats) - 4
    lines = ledger.summary_lines()
    assert lines[0] == f"scene ledger: {len(feats)} returned, {len(feats) - 4} used"
    for r in ("unknown_layout", "missing_band", "cloud", "outside_period"):
        assert sum(REASONS[r] in line for line in lines) == 1  # one line per reason
    again = SceneLedger.from_dict(json.loads(json.dumps(ledger.to_dict())))
    assert again.scenes == ledger.scenes


# --- no silent caps ------------------------------------------------------------------------------


@contextmanager
def capped_api(features: list[dict], cap: int):
    """A STAC API on loopback that filters by datetime, pages with ``skip``, reports
    ``numberMatched`` and, like hosted APIs, stops paging after ``cap`` items."""
    state = {"searches": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, doc):
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            conf = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]  # fmt: skip
            links = [{"rel": "self", "href": f"{base}/"}, {"rel": "root", "href": f"{base}/"},
                     {"rel": "search", "href": f"{base}/search", "method": "POST"}]  # fmt: skip
            self._send({"type": "Catalog", "id": "capped", "stac_version": "1.0.0",
                        "description": "capped", "conformsTo": conf, "links": links})  # fmt: skip

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            a, b = body["datetime"].split("/")
            match = [f for f in features if a <= f["properties"]["datetime"] <= b]
            skip, limit = int(body.get("skip", 0)), int(body.get("limit", 10))
            state["searches"].append((body["datetime"], skip))
            page = match[skip : min(skip + limit, cap)]
            links = []
            if skip + limit < min(len(match), cap):
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                links.append({"rel": "next", "href": f"{base}/search", "method": "POST",
                              "body": {**body, "skip": skip + limit}})  # fmt: skip
            self._send({"type": "FeatureCollection", "features": page, "links": links,
                        "numberMatched": len(match), "numberReturned": len(page)})  # fmt: skip

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def _many(small_catalog, n: int) -> list[dict]:
    """``n`` copies of one real item spread through 2023 (as the truncation case builds them)."""
    base = _doc(small_catalog)["features"][0]
    t0 = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)
    out = []
    for i in range(n):
        f = copy.deepcopy(base)
        when = t0 + dt.timedelta(seconds=int(i * (365 * 86400 - 3600) / n))
        f["id"] = f"S2A_T{i:05d}_{when:%Y%m%d}_0_L2A"
        f["properties"]["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        f["properties"]["eo:cloud_cover"] = 5.0
        out.append(f)
    return out


def _inside(feats: list[dict]):
    """A small area inside the items' footprint (the search keeps footprints meeting the area)."""
    from shapely.geometry import shape

    return shape(feats[0]["geometry"]).representative_point().buffer(0.01)


def test_search_past_an_api_cap_is_split_per_month_and_returns_everything(small_catalog):
    """Case search-silently-truncated (scaled down): 240 scenes, an API that stops at 50."""

    from pipeline.stac.search import SearchConfig, search_scenes

    feats = _many(small_catalog, 240)
    with capped_api(feats, cap=50) as (url, state):
        cfg = SearchConfig(profile="custom", stac_url=url, split_above=40, page_size=15)
        res = search_scenes(_inside(feats), dt.date(2023, 1, 1), dt.date(2023, 12, 31), cfg)  # fmt: skip
    assert len(res.items) == 240 and res.matched == 240
    assert len({d for d, _ in state["searches"]}) == 13  # the whole year, then 12 months


def test_a_short_count_against_number_matched_is_an_error(small_catalog):

    from pipeline.stac.search import SearchConfig, search_items

    feats = _many(small_catalog, 120)
    with capped_api(feats, cap=50) as (url, _):
        cfg = SearchConfig(profile="custom", stac_url=url, split_above=10_000, page_size=20)
        with pytest.raises(UserError, match="matched 120 scenes .* returned only 50"):
            search_items(_inside(feats), dt.date(2023, 1, 1), dt.date(2023, 12, 31), cfg)  # fmt: skip


def test_max_items_cut_is_loud(small_catalog, caplog):

    from pipeline.stac.search import SearchConfig, search_items

    feats = _many(small_catalog, 60)
    with capped_api(feats, cap=1000) as (url, _):
        cfg = SearchConfig(profile="custom", stac_url=url, max_items=25, page_size=10)
        with caplog.at_level(logging.WARNING):
            got = search_items(_inside(feats), dt.date(2023, 1, 1), dt.date(2023, 12, 31), cfg)  # fmt: skip
    assert len(got) == 25
    assert "cut at max_items=25 of 60 matched" in caplog.text


# --- signed URLs ---------------------------------------------------------------------------------


def test_hrefs_are_signed_when_read_and_stored_unsigned(monkeypatch):
    from pipeline.stac import profiles as sp

    calls = []

    def fake_token(sas_url, key, **kw):
        calls.append(key)
        return f"se=2099-01-01T00:00:00Z&sig=fresh{len(calls)}"

    monkeypatch.setattr(sp, "sas_token", fake_token)
    expired = "https://acct.blob.core.windows.net/cont/a/B04.tif?se=2020-01-01T00:00:00Z&sig=old"
    assert sp.unsigned_href(expired) == "https://acct.blob.core.windows.net/cont/a/B04.tif"
    signed = sp.sign_href(expired, "https://sas.invalid/token")
    assert signed.endswith("B04.tif?se=2099-01-01T00:00:00Z&sig=fresh1")
    assert calls == ["acct/cont"]
    assert sp.sign_href(signed, "https://sas.invalid/token") == signed  # still valid: kept
    other = "https://example.org/B04.tif?x=1"
    assert sp.sign_href(other, "https://sas.invalid/token") == other


def test_http_errors_are_classified_as_read_failures():
    import rasterio.errors

    from pipeline.reading.cube import classify_read_error

    f = classify_read_error(rasterio.errors.RasterioIOError("HTTP response code: 403"), ["s1"])
    assert (f.kind, f.status, f.scenes) == ("http", 403, ("s1",))
    f = classify_read_error(rasterio.errors.RasterioIOError("HTTP response code: 503"))
    assert (f.kind, f.status) == ("http", 503)
    assert classify_read_error(ValueError("a bug")) is None  # bugs are not read failures


# --- AOI normalisation and exact grids -----------------------------------------------------------


@pytest.mark.parametrize("name", ["region-32UPU-bounds.yaml", "square-32632.geojson"])
def test_projected_square_grids_to_exactly_its_pixels(name):
    """Case projected-aoi-corners-only: 10980 x 10980 px, the top edge strip inside the AOI."""
    from aoi import load_region
    from pipeline.grid.tiling import aoi_mask, make_grid

    r = load_region(str(CASES / name))
    grid = make_grid(r.geometry, r.crs, r.resolution, 1024)
    assert grid.shape == (10980, 10980)
    assert tuple(grid.geobox.boundingbox) == (600000.0, 5300040.0, 709800.0, 5409840.0)
    strip = aoi_mask(grid.geobox[1:41, 4000:6560], r.geometry)
    assert strip.all()


def test_shipped_regions_grid_exactly():
    from aoi import load_region
    from pipeline.grid.tiling import make_grid

    for name, shape in (("mgrs-32UPU", (10980, 10980)), ("demo", (200, 200))):
        r = load_region(name)
        assert make_grid(r.geometry, r.crs, r.resolution, 256).shape == shape


def test_aoi_with_z_values_holes_and_parts_is_kept_2d(tmp_path):
    from shapely.geometry import shape

    from aoi import load_region
    from pipeline.grid.tiling import aoi_mask, make_grid

    outer = [[600000, 5340000, 12], [601000, 5340000, 12], [601000, 5341000, 15], [600000, 5341000, 15], [600000, 5340000, 12]]  # fmt: skip
    hole = [[600400, 5340400, 0], [600600, 5340400, 0], [600600, 5340600, 0], [600400, 5340600, 0], [600400, 5340400, 0]]  # fmt: skip
    second = [[[602000, 5340000, 1], [602500, 5340000, 1], [602500, 5340500, 1], [602000, 5340500, 1], [602000, 5340000, 1]]]  # fmt: skip
    doc = {"type": "FeatureCollection",
           "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}},
           "features": [{"type": "Feature", "properties": {},
                         "geometry": {"type": "MultiPolygon", "coordinates": [[outer, hole], second]}}]}  # fmt: skip
    path = tmp_path / "z.geojson"
    path.write_text(json.dumps(doc))
    r = load_region(str(path))
    assert not r.geometry.has_z
    assert r.geometry.geom_type == "MultiPolygon" and len(r.geometry.geoms) == 2
    assert any(len(g.interiors) == 1 for g in r.geometry.geoms)  # the hole is kept
    grid = make_grid(r.geometry, "EPSG:32632", 10, 64)
    assert tuple(grid.geobox.boundingbox) == (600000.0, 5340000.0, 602500.0, 5341000.0)
    mask = aoi_mask(grid.geobox, r.geometry)
    assert mask.sum() == 100 * 100 - 20 * 20 + 50 * 50  # outer - hole + second part, in pixels
    assert shape(r.geometry.__geo_interface__).is_valid


def test_bbox_alone_defines_a_region():
    from aoi import load_region

    r = load_region("bbox:11.5,48.3,11.53,48.32")
    assert r.crs == "EPSG:32632" and r.bbox == pytest.approx((11.5, 48.3, 11.53, 48.32))
    with pytest.raises(UserError, match="W < E"):
        load_region("bbox:11.6,48.3,11.5,48.32")
