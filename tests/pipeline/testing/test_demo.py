"""The bundled sample: catalog layout, truth, clouds consistent with SCL, the local STAC API."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests

from pipeline.base.errors import UserError
from pipeline.stac.bands import BANDS, EARTH_SEARCH_V1_KEYS, PC_KEYS, SCL, asset_keys
from pipeline.testing.demo import (
    CLASS_NAMES,
    DEMO_AOI,
    DEMO_BOUNDS,
    generate_catalog,
    landscape_of,
    load_truth,
)
from pipeline.testing.stac_server import serve


def _items(catalog: Path) -> list[dict]:
    return json.loads((catalog / "items.json").read_text())["features"]


def _read(href: str) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(1)


def test_demo_catalog_is_a_year_in_earth_search_v1_layout(demo_catalog):
    items = _items(demo_catalog)
    assert len(items) == 73
    days = [
        dt.datetime.fromisoformat(it["properties"]["datetime"].replace("Z", "+00:00"))
        for it in items
    ]
    assert days[0].date() == dt.date(2023, 1, 1) and days[-1].year == 2023
    assert all(
        round((b - a).total_seconds() / 86400) == 5
        for a, b in zip(days[:-1], days[1:], strict=True)
    )
    assert all(d.hour == 10 and 29 <= d.minute <= 31 for d in days)
    for it in items:
        p = it["properties"]
        assert p["earthsearch:boa_offset_applied"] is True
        assert p["s2:processing_baseline"] == "05.09" and p["grid:code"] == "MGRS-32UPU"
        assert 0 <= p["eo:cloud_cover"] <= 100 and p["platform"] in ("sentinel-2a", "sentinel-2b")
        assert asset_keys(it) == EARTH_SEARCH_V1_KEYS
        for band, key in EARTH_SEARCH_V1_KEYS.items():
            a = it["assets"][key]
            assert a["href"].startswith("file:///") and Path(a["href"][7:]).is_file()
            res = 10 if band in ("B2", "B3", "B4", "B8") else 20
            assert a["proj:transform"][:3] == [res, 0.0, DEMO_BOUNDS[0]]
            assert a["proj:shape"] == [3280 // res, 3280 // res]
            rb = a["raster:bands"][0]
            assert rb["nodata"] == 0
            if band != SCL:
                assert (rb["scale"], rb["offset"], rb["data_type"]) == (0.0001, -0.1, "uint16")
    # the climatology is cloudy (central Europe, ~60 %) and U-shaped
    cc = np.array([it["properties"]["eo:cloud_cover"] for it in items])
    assert 40 < cc.mean() < 80
    assert (cc < 15).sum() >= 8 and (cc > 90).sum() >= 8


def test_scenes_cover_the_aoi_plus_halo_as_cogs(demo_catalog):
    from rio_cogeo.cogeo import cog_validate

    it = _items(demo_catalog)[0]
    for key in ("blue", "rededge1", "scl"):
        path = it["assets"][key]["href"][7:]
        valid, errors, _ = cog_validate(path, quiet=True)
        assert valid, errors
        with rasterio.open(path) as src:
            assert src.crs.to_epsg() == 32632 and src.nodata == 0
            assert tuple(src.bounds) == DEMO_BOUNDS
            assert src.dtypes[0] == ("uint8" if key == "scl" else "uint16")
    assert DEMO_BOUNDS == (599360.0, 5339360.0, 602640.0, 5342640.0)


def test_truth_has_all_classes_in_the_aoi(demo_catalog):
    classes, names, geobox = load_truth(demo_catalog)
    assert (
        names
        == list(CLASS_NAMES)
        == ["water", "forest", "cropland", "grassland", "built-up", "bare"]
    )
    assert classes.dtype == np.uint8 and classes.shape == (328, 328)
    assert geobox.crs.epsg == 32632 and geobox.resolution.x == 10
    r0 = int((DEMO_BOUNDS[3] - DEMO_AOI[3]) / 10)
    c0 = int((DEMO_AOI[0] - DEMO_BOUNDS[0]) / 10)
    core = classes[r0 : r0 + 200, c0 : c0 + 200]
    share = np.bincount(core.ravel(), minlength=6) / core.size
    assert (share > 0.01).all(), share
    with rasterio.open(demo_catalog / "truth.tif") as src:
        assert json.loads(src.tags()["class_names"]) == names
    meta = json.loads((demo_catalog / "truth.json").read_text())
    assert meta["classes"] == {str(i): n for i, n in enumerate(names)}


def test_scl_is_consistent_with_the_pixels(demo_catalog):
    items = _items(demo_catalog)
    seen = set()
    for it in items:
        scl = _read(it["assets"]["scl"]["href"])
        blue = _read(it["assets"]["blue"]["href"]).astype(float) / 1e4
        nir = _read(it["assets"]["nir"]["href"]).astype(float) / 1e4
        blue20 = blue.reshape(164, 2, 164, 2).mean(axis=(1, 3))
        nir20 = nir.reshape(164, 2, 164, 2).mean(axis=(1, 3))
        seen |= set(np.unique(scl).tolist())
        if (scl == 9).sum() > 100:
            assert blue20[scl == 9].mean() > 0.35  # opaque cloud cores are bright
        if (scl == 4).sum() > 100:
            assert blue20[scl == 4].mean() < 0.08
            if (scl == 3).sum() > 100 and not (scl == 11).any():  # shadows are dark in NIR
                assert nir20[scl == 3].mean() < 0.6 * nir20[scl == 4].mean()
        if (scl == 0).any():
            assert (blue20[scl == 0] == 0).all()  # outside the swath: DN 0 everywhere
    assert {0, 1, 3, 4, 5, 6, 8, 9, 10, 11} <= seen


def test_clear_pixels_match_the_landscape(small_catalog):
    """The stored DN are the truth spectra (plus small noise) wherever SCL is clear."""
    land = landscape_of(small_catalog)
    for it in _items(small_catalog)[:4]:
        when = dt.datetime.fromisoformat(it["properties"]["datetime"].replace("Z", "+00:00"))
        expected = land.reflectance(when.timetuple().tm_yday)
        scl = np.repeat(np.repeat(_read(it["assets"]["scl"]["href"]), 2, 0), 2, 1)
        clear = np.isin(scl, (4, 5, 6))
        if clear.sum() < 50:
            continue
        for b in ("B2", "B4", "B8"):
            got = _read(it["assets"][EARTH_SEARCH_V1_KEYS[b]]["href"]) / 1e4
            exp = expected[BANDS.index(b)]
            rel = np.median(np.abs(got[clear] - exp[clear]) / exp[clear])
            assert rel < 0.04, (b, rel)


def test_planetary_computer_layout_carries_the_dn_offset(small_catalog, small_pc_catalog):
    es, pc = _items(small_catalog), _items(small_pc_catalog)
    assert len(es) == len(pc) == 12
    for a, b in zip(es[:3], pc[:3], strict=True):
        assert asset_keys(b) == PC_KEYS and "earthsearch:boa_offset_applied" not in b["properties"]
        assert "raster:bands" not in b["assets"]["B02"]
        dn_es = _read(a["assets"]["blue"]["href"]).astype(int)
        dn_pc = _read(b["assets"]["B02"]["href"]).astype(int)
        valid = dn_es > 0
        np.testing.assert_array_equal(dn_pc[valid], np.minimum(dn_es[valid] + 1000, 65535))
        np.testing.assert_array_equal(
            _read(a["assets"]["scl"]["href"]), _read(b["assets"]["SCL"]["href"])
        )


def test_generator_is_deterministic_and_parametric(tmp_path, small_catalog, small_params):
    again = generate_catalog(
        tmp_path / "again", **{**small_params, "dates": small_params["dates"][:2]}
    )
    a, b = _items(small_catalog)[1], _items(again)[1]
    assert a["id"] == b["id"] and a["properties"] == b["properties"]
    np.testing.assert_array_equal(
        _read(a["assets"]["red"]["href"]), _read(b["assets"]["red"]["href"])
    )
    with pytest.raises(ValueError, match="multiples"):
        generate_catalog(tmp_path / "bad", bounds=(0, 0, 15, 15), dates=small_params["dates"][:1])


def test_local_stac_api_serves_and_stops(small_catalog):
    with serve(small_catalog) as url:
        assert url.startswith("http://127.0.0.1:")
        conf = requests.get(f"{url}/conformance", timeout=5).json()["conformsTo"]
        assert any("item-search" in c for c in conf)
        body = {"collections": ["sentinel-2-l2a"], "limit": 5}
        page = requests.post(f"{url}/search", json=body, timeout=5).json()
        assert len(page["features"]) == 5 and any(lk["rel"] == "next" for lk in page["links"])
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/", timeout=2)


def test_serving_a_folder_without_a_catalog_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="missing"):
        with serve(tmp_path):
            pass


@pytest.mark.parametrize("material", ["glacier", "solar"])
def test_planted_material_is_opt_in_and_marked(tmp_path, small_catalog, small_params, material):
    """``plant=``: a square of a spectrum no class has, marked in planted.tif (truth 255 there);
    everything else is the unplanted catalog's, pixel for pixel."""
    from pipeline.testing.demo import spectra

    dates = small_params["dates"][:2]
    cat = generate_catalog(tmp_path / material, **{**small_params, "dates": dates},
                           plant=material, plant_px=5)  # fmt: skip
    planted = _read(str(cat / "planted.tif")) == 1
    truth = _read(str(cat / "truth.tif"))
    assert planted.sum() == 25 and (truth[planted] == 255).all() and (truth[~planted] != 255).all()
    assert json.loads((cat / "truth.json").read_text())["params"]["plant"] == material
    a, b = _items(small_catalog)[1], _items(cat)[1]
    red_a, red_b = _read(a["assets"]["red"]["href"]), _read(b["assets"]["red"]["href"])
    np.testing.assert_array_equal(red_a[~planted], red_b[~planted])
    scl = np.repeat(np.repeat(_read(b["assets"]["scl"]["href"]), 2, 0), 2, 1)
    clear = planted & np.isin(scl, (4, 5, 6, 7))
    if clear.any():  # the planted spectrum's red, within texture and noise
        red = spectra.R[material][BANDS.index("B4")]
        assert np.median(np.abs(red_b[clear] / 1e4 - red) / red) < 0.08
    assert not (small_catalog / "planted.tif").exists()


def test_years_plant_change_with_per_pixel_truth(tmp_path, small_catalog, small_params):
    """Opt-in years: the same landscape each year, planted changes from 1 px up, their truth."""
    import json

    import rasterio

    from pipeline.testing.demo import generate_catalog

    params = {**small_params, "dates": small_params["dates"][:3]}
    root = generate_catalog(tmp_path / "years", **params, years=(2021, 2023))
    items = json.loads((root / "items.json").read_text())["features"]
    assert sorted({it["properties"]["datetime"][:4] for it in items}) == ["2021", "2023"]
    assert len(items) == 6
    meta = json.loads((root / "truth.json").read_text())
    changes = meta["changes"]
    assert meta["params"]["years"] == [2021, 2023]
    assert {c["name"] for c in changes} == {"forest cleared", "field built on", "lake shrunk"}
    assert min(c["pixels"] for c in changes) <= 9 and max(c["pixels"] for c in changes) >= 100
    with rasterio.open(root / "truth_2021.tif") as a, rasterio.open(root / "truth_2023.tif") as b:
        first, last = a.read(1), b.read(1)
    with rasterio.open(root / "change.tif") as src:
        frm, to = src.read(1), src.read(2)
    np.testing.assert_array_equal(frm, first)
    np.testing.assert_array_equal(to, last)
    assert (first != last).sum() == sum(c["pixels"] for c in changes)
    for c in changes:  # each patch goes from its source class to its target class
        r0, c0, r1, c1 = c["box"]
        hit = first[r0:r1, c0:c1] != last[r0:r1, c0:c1]
        assert hit.sum() == c["pixels"]
        assert (first[r0:r1, c0:c1][hit] == c["from_class"]).all()
        assert (last[r0:r1, c0:c1][hit] == c["to_class"]).all()
    with rasterio.open(root / "truth.tif") as src:  # the first year, as load_truth reads it
        np.testing.assert_array_equal(src.read(1), first)
    # the one-year catalog is untouched by the option: same truth as the small catalog's
    with rasterio.open(small_catalog / "truth.tif") as src:
        np.testing.assert_array_equal(src.read(1), first)
