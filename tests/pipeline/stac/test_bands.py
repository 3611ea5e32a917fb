"""Band names and reflectance harmonisation on real provider item JSON (tests/data/stac)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from pipeline.base.errors import UserError
from pipeline.stac.bands import (
    BANDS,
    SCL,
    asset_keys,
    processing_baseline,
    reflectance_scale_offset,
    scl_masked_classes,
)
from tests.paths import TEST_DATA

DATA = TEST_DATA / "stac"


def _load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.fixture
def es_v0() -> dict:
    return _load("earth-search-v0_S2A_28QCH_20200714_0_L2A.json")


@pytest.fixture
def pc() -> dict:
    return _load("planetary-computer_S2B_MSIL2A_20190629T212529_R043_T06VVN.json")


def _es_v1(boa_offset_applied: bool | None, baseline: str = "05.09") -> dict:
    """An Earth Search v1 item as the catalogue publishes it (keys, raster:bands, flags)."""
    keys = ["blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08"]
    keys += ["swir16", "swir22", "coastal", "nir09", "scl", "aot", "wvp", "visual"]
    assets = {}
    for k in keys:
        assets[k] = {
            "href": f"https://example.invalid/{k}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}],
        }
        assets[f"{k}-jp2"] = {"href": f"s3://example/{k}.jp2"}
    props = {"datetime": "2023-06-01T10:30:00Z", "s2:processing_baseline": baseline}
    if boa_offset_applied is not None:
        props["earthsearch:boa_offset_applied"] = boa_offset_applied
    return {"type": "Feature", "id": "S2B_32TPT_20230601_0_L2A", "properties": props,
            "assets": assets}  # fmt: skip


def test_earth_search_v0_keys_and_no_offset(es_v0):
    keys = asset_keys(es_v0)
    assert keys == {**{b: b if len(b) == 3 else f"B0{b[1]}" for b in BANDS}, SCL: "SCL"}
    assert keys["B8A"] == "B8A" and keys["B11"] == "B11" and keys["B2"] == "B02"
    assert processing_baseline(es_v0) == (2, 14)  # from sentinel:product_id ..._N0214_...
    h = reflectance_scale_offset(es_v0)
    assert (h.scale, h.offset) == (1e-4, 0.0)


def test_planetary_computer_keys_and_offsets(pc):
    keys = asset_keys(pc)
    assert [keys[b] for b in BANDS] == [
        "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"
    ]  # fmt: skip
    assert keys[SCL] == "SCL"
    assert processing_baseline(pc) == (2, 12)
    assert reflectance_scale_offset(pc).offset == 0.0
    newer = copy.deepcopy(pc)
    newer["properties"]["s2:processing_baseline"] = "04.00"
    h = reflectance_scale_offset(newer)
    assert h.scale == 1e-4 and h.offset == pytest.approx(-0.1)


def test_earth_search_v1_keys_ignore_jp2_duplicates():
    keys = asset_keys(_es_v1(True))
    assert [keys[b] for b in (*BANDS, SCL)] == [
        "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08",
        "swir16", "swir22", "scl",
    ]  # fmt: skip


def test_boa_offset_applied_ignores_declared_raster_offset():
    item = _es_v1(True)
    assert item["assets"]["blue"]["raster:bands"][0]["offset"] == -0.1
    h = reflectance_scale_offset(item)
    assert (h.scale, h.offset) == (1e-4, 0.0)
    # not applied (or flag absent) with baseline >= 04.00: the DN still carry the offset
    for flag in (False, None):
        assert reflectance_scale_offset(_es_v1(flag)).offset == pytest.approx(-0.1)
    # pre-04.00 items are unchanged whatever the flag
    assert reflectance_scale_offset(_es_v1(False, "03.01")).offset == 0.0


def test_same_ground_same_reflectance_in_both_layouts(pc):
    """PC (DN carry +1000) and ES v1 (offset removed) give the same reflectance."""
    truth = np.array([0.0123, 0.25, 0.5, 1.2])
    dn_es = np.round(truth * 1e4).astype(np.uint16)  # offset already removed by the catalogue
    dn_pc = dn_es + 1000  # DN still carry BOA_ADD_OFFSET
    newer = copy.deepcopy(pc)
    newer["properties"]["s2:processing_baseline"] = "05.09"
    h_es, h_pc = reflectance_scale_offset(_es_v1(True)), reflectance_scale_offset(newer)
    r_es = dn_es * h_es.scale + h_es.offset
    r_pc = dn_pc * h_pc.scale + h_pc.offset
    np.testing.assert_allclose(r_es, truth, atol=1e-9)
    np.testing.assert_allclose(r_pc, truth, atol=1e-9)


def test_missing_band_is_a_user_error():
    item = _es_v1(True)
    del item["assets"]["nir08"]
    with pytest.raises(UserError, match="B8A"):
        asset_keys(item)


def test_unknown_baseline_falls_back_on_the_acquisition_date():
    old = {"properties": {"datetime": "2021-06-01T10:00:00Z"}, "assets": {}}
    new = {"properties": {"datetime": "2023-06-01T10:00:00Z"}, "assets": {}}
    assert reflectance_scale_offset(old).offset == 0.0
    assert reflectance_scale_offset(new).offset == pytest.approx(-0.1)


def test_scl_mask_classes():
    assert set(scl_masked_classes(True)) == {0, 1, 3, 8, 9, 10, 11}
    assert set(scl_masked_classes(False)) == {0, 1, 3, 8, 9, 10}
