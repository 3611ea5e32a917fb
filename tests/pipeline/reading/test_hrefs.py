"""Asset hrefs are URLs, resolved as STAC says, and every provider format is read by both read
paths (issue 25, points 1 and 2).

Cases: ``percent-encoded-file-uri`` (a catalog under "Jane Doe/" was unreadable),
``relative-asset-hrefs`` ("./B04.tif" never resolved against the self link) and
``jp2-assets-over-http`` (JPEG2000 over HTTP refused by the native path). The right value in each:
the pixels equal those read from the same scenes as local COGs, on the native path and on
odc-stac's. Real files, a real range-serving HTTP server on 127.0.0.1; no mocks.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest

from pipeline.base.errors import UserError
from pipeline.stac.hrefs import absolute_href, gdal_href, local_path, readable_href

# A folder name with a space, an umlaut and a percent sign: each must survive the round trip.
ODD = "Jane Doe/Jürgen 100%"
N_ITEMS = 3


def _features(folder: Path) -> list[dict]:
    doc = json.loads((folder / "items.json").read_text())
    return (doc["features"] if isinstance(doc, dict) else doc)[:N_ITEMS]


def _geobox():
    from odc.geo.geobox import GeoBox

    from tests.conftest import SMALL_BOUNDS

    return GeoBox.from_bbox(SMALL_BOUNDS, "EPSG:32632", resolution=10)


def _read(feats: list[dict], native: bool):
    from pipeline.reading import BlockReader, load_reflectance

    refl = load_reflectance(feats, _geobox(), reader=BlockReader(), native=native)
    assert refl.native is native
    return refl.values


@pytest.fixture(scope="module")
def reference(small_pc_catalog) -> tuple[list[dict], np.ndarray]:
    """The first scenes of the small catalog, as the generator wrote them, and their pixels."""
    feats = _features(small_pc_catalog)
    values = _read(feats, native=True)
    assert np.isfinite(values).any()
    np.testing.assert_array_equal(_read(feats, native=False), values)
    return feats, values


def _copy_files(feats: list[dict], dest: Path) -> dict[str, Path]:
    """Copy every asset of ``feats`` under ``dest/<item id>/<file name>``; href -> new path."""
    out = {}
    for f in feats:
        for a in f["assets"].values():
            src = local_path(a["href"])
            new = dest / f["id"] / src.name
            new.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, new)
            out[a["href"]] = new
    return out


# -- the rules, without files -------------------------------------------------------------------


def test_file_uris_are_percent_decoded():
    assert local_path("file:///home/Jane%20Doe/J%C3%BCrgen/B04.tif") == Path(
        "/home/Jane Doe/Jürgen/B04.tif"
    )
    assert gdal_href("file:///a%20b/c%25d.tif?x=1#f") == "/a b/c%d.tif"
    assert gdal_href("file://localhost/a/B04.tif") == "/a/B04.tif"
    assert local_path("/plain/Jane Doe/B04.tif") == Path("/plain/Jane Doe/B04.tif")
    # Remote URLs are opened as given, query string and encoding included (signatures).
    url = "https://example.com/a%20b/B04.jp2?se=2030&sig=a%2Bb"
    assert gdal_href(url) == url and local_path(url) is None
    assert local_path("s3://bucket/B04.jp2") is None and local_path("/vsis3/b/k.tif") is None


def _item(self_href: str | None, href: str) -> pystac.Item:
    it = pystac.Item("s1", None, None, dt.datetime(2023, 5, 10), {})
    if self_href:
        it.set_self_href(self_href)
    it.add_asset("B04", pystac.Asset(href))
    return it


def test_relative_hrefs_resolve_against_the_self_link():
    base = "http://127.0.0.1:8000/items/s1/item.json"
    assert absolute_href(_item(base, "./B04.tif").assets["B04"]) == (
        "http://127.0.0.1:8000/items/s1/B04.tif"
    )
    assert absolute_href(_item(base, "../s0/B04.tif?sig=a&b=2").assets["B04"]) == (
        "http://127.0.0.1:8000/items/s0/B04.tif?sig=a&b=2"
    )
    # Relative to a file:// self link: the result is decoded for GDAL.
    asset = _item("file:///data/Jane%20Doe/s1/item.json", "../J%C3%BCrgen/B04.tif").assets["B04"]
    assert readable_href(asset) == "/data/Jane Doe/Jürgen/B04.tif"
    with pytest.raises(UserError, match="relative and the item has no self link"):
        absolute_href(_item(None, "./B04.tif").assets["B04"])


# -- both read paths, on real files -------------------------------------------------------------


@pytest.mark.parametrize("native", [True, False], ids=["native", "odc-stac"])
def test_percent_encoded_file_uris_are_read(reference, tmp_path, native):
    feats, values = reference
    moved = _copy_files(feats, tmp_path / ODD)
    uri_feats = json.loads(json.dumps(feats))
    for f in uri_feats:
        for a in f["assets"].values():
            a["href"] = moved[a["href"]].as_uri()  # what the demo generator writes
    href = uri_feats[0]["assets"]["B04"]["href"]
    assert "Jane%20Doe/J%C3%BCrgen%20100%25" in href
    np.testing.assert_array_equal(_read(uri_feats, native), values)


@pytest.mark.parametrize("native", [True, False], ids=["native", "odc-stac"])
def test_relative_hrefs_over_http_are_read(reference, tmp_path, native):
    """Self link in a folder with a space and an umlaut, hrefs with '..' and a query string."""
    from urllib.parse import quote

    from pipeline.bench.http_range import serve_ranges

    feats, values = reference
    root = tmp_path / "srv"
    moved = _copy_files(feats, root / ODD / "assets")
    rel_feats = json.loads(json.dumps(feats))
    with serve_ranges(root) as (url, counter):
        for f in rel_feats:
            folder = f"{url}/{quote(ODD)}/items/{f['id']}"
            f["links"] = [{"rel": "self", "href": f"{folder}/item.json"}]
            for a in f["assets"].values():
                name = quote(moved[a["href"]].name)
                a["href"] = f"../../assets/{quote(f['id'])}/{name}?token=a%2Bb&x=1"
        np.testing.assert_array_equal(_read(rel_feats, native), values)
        assert counter.requests > 0


def _to_jp2(feats: list[dict], root: Path) -> dict[str, Path]:
    import rasterio

    out = {}
    for f in feats:
        for a in f["assets"].values():
            src_path = local_path(a["href"])
            dst = root / f["id"] / (src_path.stem + ".jp2")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(src_path) as src:
                prof = dict(
                    driver="JP2OpenJPEG", width=src.width, height=src.height, count=1,
                    dtype=src.dtypes[0], crs=src.crs, transform=src.transform, nodata=src.nodata,
                    QUALITY=100, REVERSIBLE="YES",
                )  # fmt: skip
                with rasterio.open(dst, "w", **prof) as out_ds:
                    out_ds.write(src.read(1), 1)
            out[a["href"]] = dst
    return out


@pytest.mark.parametrize("native", [True, False], ids=["native", "odc-stac"])
def test_jpeg2000_assets_over_http_are_read(reference, tmp_path, native):
    """Lossless JPEG2000 over HTTP (as the Copernicus Data Space serves the SAFE bands) reads as
    the COGs do; one scene also as an extension-less download URL (OData ``.../$value``)."""
    from pipeline.bench.http_range import serve_ranges

    feats, values = reference
    root = tmp_path / "jp2"
    jp2 = _to_jp2(feats, root)
    for path in list(jp2.values()):
        if path.parent.name == feats[0]["id"]:
            plain = path.parent / (path.stem + "-value")  # no extension at all
            path.rename(plain)
            jp2 = {k: (plain if v == path else v) for k, v in jp2.items()}
    remote = json.loads(json.dumps(feats))
    with serve_ranges(root) as (url, _):
        for f in remote:
            for a in f["assets"].values():
                a["href"] = f"{url}/{jp2[a['href']].relative_to(root).as_posix()}"
                a["type"] = "image/jp2"
        np.testing.assert_array_equal(_read(remote, native), values)
