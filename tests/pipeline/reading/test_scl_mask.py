"""The SCL mask is a documented, configurable choice (issue 25, point 5): ``--scl-mask`` presets
and class numbers, ``--keep-snow`` as the shorthand that removes class 11, the mask in the output
hash, and the classes it names become NaN on both read paths (real COGs)."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pytest
import rasterio

from pipeline.base.errors import UserError
from pipeline.reading.cube import MaskConfig
from pipeline.stac.bands import SCL_PRESETS, parse_scl_mask


def test_presets_and_class_numbers():
    assert parse_scl_mask("default") == (0, 1, 2, 3, 8, 9, 10, 11)
    assert parse_scl_mask("clouds") == (0, 1, 3, 8, 9, 10, 11)
    assert parse_scl_mask("clouds,2") == parse_scl_mask("default")
    assert parse_scl_mask("3, 9") == (0, 3, 9)  # no data (0) is always masked
    assert parse_scl_mask("none") == (0,)
    assert set(SCL_PRESETS) == {"default", "clouds", "none"}
    for bad in ("12", "-1", "shadows", "2.5"):
        with pytest.raises(UserError, match="--scl-mask"):
            parse_scl_mask(bad)


def test_keep_snow_removes_class_11_from_any_mask():
    assert MaskConfig().scl_classes == (0, 1, 2, 3, 8, 9, 10, 11)
    assert MaskConfig(mask_snow=False).scl_classes == (0, 1, 2, 3, 8, 9, 10)
    assert MaskConfig(scl_mask="clouds", mask_snow=False).scl_classes == (0, 1, 3, 8, 9, 10)
    assert MaskConfig(scl_mask="3,11", mask_snow=False).scl_classes == (0, 3)
    assert MaskConfig(scl_mask="clouds,2").scl_mask == "0,1,2,3,8,9,10,11"  # canonical


def test_the_mask_is_in_the_config_and_the_output_hash():
    from pipeline.run.config import RunConfig, hashed_settings

    base = dict(region="demo", start=dt.date(2023, 1, 1), end=dt.date(2023, 12, 31), untrained=True)
    default = RunConfig.of(**base)
    assert default.flat()["scl_mask"] == "0,1,2,3,8,9,10,11"
    assert hashed_settings(default)["scl_mask"] == "0,1,2,3,8,9,10,11"
    clouds = RunConfig.of(**base, scl_mask="clouds")
    same = RunConfig.of(**base, scl_mask="2,clouds")
    assert clouds.output_hash() != default.output_hash()
    assert same.output_hash() == default.output_hash()  # equal masks, equal maps
    assert RunConfig.of(**base, mask_snow=False).output_hash() != default.output_hash()
    with pytest.raises(UserError, match="--scl-mask"):
        RunConfig.of(**base, scl_mask="clouds,13")


def test_the_cli_takes_scl_mask_and_keep_snow(tmp_path):
    import argparse

    from pipeline.commands.run import add_arguments, resolve

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = ["--region", "demo", "--year", "2023", "--untrained"]
    cfg = resolve(p.parse_args([*args, "--scl-mask", "clouds", "--keep-snow"]))
    assert cfg.mask.scl_mask == "0,1,3,8,9,10,11" and cfg.mask.scl_classes == (0, 1, 3, 8, 9, 10)
    (tmp_path / "run.yaml").write_text("scl-mask: '3,8,9'\n")
    cfg = resolve(p.parse_args([*args, "--config", str(tmp_path / "run.yaml")]))
    assert cfg.mask.scl_classes == (0, 3, 8, 9)


@pytest.fixture(scope="module")
def dark_scene(small_catalog, tmp_path_factory):
    """The small catalog's clearest scene, its clear SCL pixels in the area's top-left 160 m set
    to class 2 (dark features)."""
    from pipeline.stac.hrefs import local_path

    root = tmp_path_factory.mktemp("dark")
    doc = json.loads((small_catalog / "items.json").read_text())
    feats = doc["features"] if isinstance(doc, dict) else doc
    feat = min(feats, key=lambda f: f["properties"].get("eo:cloud_cover", 100))
    for a in feat["assets"].values():
        src = local_path(a["href"])
        dst = root / src.name
        shutil.copy(src, dst)
        a["href"] = dst.as_uri()
    scl = local_path(feat["assets"]["scl"]["href"])
    from tests.conftest import SMALL_BOUNDS

    with rasterio.open(scl, "r+", IGNORE_COG_LAYOUT_BREAK="YES") as ds:
        data = ds.read(1)
        r, c = ds.index(SMALL_BOUNDS[0] + 1, SMALL_BOUNDS[3] - 1)  # the area's top-left 20 m px
        block = data[r : r + 8, c : c + 8]  # 160 m
        clear = np.isin(block, (4, 5, 6, 7))
        data[r : r + 8, c : c + 8] = np.where(clear, 2, block)
        ds.write(data, 1)
    return feat, clear


@pytest.mark.parametrize("native", [True, False], ids=["native", "odc-stac"])
def test_class_2_is_masked_by_default_and_kept_by_clouds(dark_scene, native):
    from odc.geo.geobox import GeoBox

    from pipeline.reading import BlockReader, load_reflectance
    from tests.conftest import SMALL_BOUNDS

    feat, was_clear = dark_scene
    assert was_clear.any()
    gbox = GeoBox.from_bbox(SMALL_BOUNDS, "EPSG:32632", resolution=10)
    out = {}
    for spec in ("default", "clouds"):
        refl = load_reflectance(
            [feat], gbox, mask=MaskConfig(scl_mask=spec), reader=BlockReader(), native=native
        )
        assert refl.native is native
        out[spec] = refl.values[0, 0]  # first time step, B02 (y, x) at 10 m
    dark10 = np.kron(was_clear, np.ones((2, 2), bool))  # the class-2 20 m pixels at 10 m
    assert np.isnan(out["default"][:16, :16][dark10]).all()
    assert np.isfinite(out["clouds"][:16, :16][dark10]).all()
    # Elsewhere the two masks agree.
    rest = np.ones_like(out["default"], bool)
    rest[:16, :16] = ~dark10
    np.testing.assert_array_equal(out["default"][rest], out["clouds"][rest])
