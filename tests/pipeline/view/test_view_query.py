"""The viewer's free-text query (issue 28, point 2): tiles computed from the field when asked for.

A synthetic field (:func:`pipeline.testing.field.write_synthetic_field`, the metadata of an
untrained demo run) of 768 x 768 px with its class map, served by ``python -m pipeline view`` on
loopback. A query computes nothing until its tiles are asked for; each tile is computed once,
then served from the cache; a tile holds the field API's scores at the field pixels under it
(full resolution, and every n-th pixel at lower zooms); a click gives the pixel's score.
The browser check over a larger field is in ``test_view_browser.py``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import requests
from PIL import Image

from tests.pipeline.view.test_view_browser import _serve

SHAPE = (768, 768)
TILE = 128


@pytest.fixture(scope="module")
def field_map(tmp_path_factory):
    from pipeline.bench.ask import _demo_run_metadata
    from pipeline.testing.field import write_classes_cog, write_synthetic_field

    meta = _demo_run_metadata(TILE)
    # the run's own text legend named in its config, so the probability has classes
    cfg = {**meta["run"]["config"], "legend": meta["legend_info"]["name"]}
    out = write_synthetic_field(
        tmp_path_factory.mktemp("viewq") / "map", SHAPE, run={**meta["run"], "config": cfg},
        field_meta=meta["field_meta"], class_names=meta["class_names"], colors=meta["colors"],
        legend_info=meta["legend_info"], period_labels=["2023-01"], crs=meta["crs"],
        tile_size=TILE,
    )  # fmt: skip
    write_classes_cog(out)
    return out


@pytest.fixture(scope="module")
def viewer(field_map):
    with _serve(field_map) as url:
        yield url


@pytest.fixture(scope="module")
def expected(field_map):
    """The field API's cosines with 'a lake' over the whole grid, (h, w) float32."""
    from pipeline.field import open_field, query_window

    f = open_field(field_map)
    return f, query_window(f, ["a lake"], f.full_window)[0]


def _tiles_over(bounds, z):
    import morecantile

    return list(morecantile.tms.get("WebMercatorQuad").tiles(*bounds, [z]))


def _field_pixel(f, tile, i, j):
    """(row, col) of the field pixel under the centre of pixel (i, j) of a 256-px tile."""
    import morecantile
    from rasterio.warp import transform

    b = morecantile.tms.get("WebMercatorQuad").xy_bounds(tile)
    x = b.left + (j + 0.5) * (b.right - b.left) / 256
    y = b.top - (i + 0.5) * (b.top - b.bottom) / 256
    xs, ys = transform("EPSG:3857", f.geobox.crs.to_wkt(), [x], [y])
    col, row = ~f.geobox.affine * (xs[0], ys[0])
    return math.floor(row), math.floor(col)


def test_a_query_computes_only_the_tiles_asked_for_once_each(viewer, expected):
    f, exp = expected
    meta = requests.get(viewer + "api/meta", timeout=60).json()
    res = requests.post(viewer + "api/query", json={"text": "a lake"}, timeout=300).json()
    assert res["vmin"] < res["vmax"]
    stats = requests.get(viewer + f"api/query/{res['id']}", timeout=30).json()
    assert stats["tiles_computed"] == 0  # preparing a query reads a sample, computes no tile
    import morecantile

    z = meta["maxzoom"] + 1  # about 6 m per tile pixel: 35 or more tiles over the field
    assert len(_tiles_over(meta["bounds"], z)) >= 30
    w, s, e, n = meta["bounds"]
    c = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, z)
    mid = [morecantile.Tile(c.x + dx, c.y, z) for dx in (-1, 0, 1)]  # inside the field
    for _ in range(2):  # the second round is served from the cache
        for t in mid:
            r = requests.get(viewer + f"tiles/query/{res['id']}/{z}/{t.x}/{t.y}.png", timeout=120)
            assert r.status_code == 200 and r.headers["content-type"] == "image/png"
            a = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
            assert (a[..., 3] > 0).mean() > 0.5  # drawn where the field has data
    stats = requests.get(viewer + f"api/query/{res['id']}", timeout=30).json()
    assert stats["tiles_computed"] == len(mid) and stats["tiles_cached"] == len(mid)
    # the same text again is the same query, its tiles kept
    again = requests.post(viewer + "api/query", json={"text": "a lake"}, timeout=300).json()
    assert again["id"] == res["id"]
    assert requests.get(viewer + "api/query/nope", timeout=30).status_code == 404
    assert requests.get(viewer + f"tiles/query/nope/{z}/0/0.png", timeout=30).status_code == 404
    # a click gives the field's score at that pixel (4 decimals)
    from rasterio.warp import transform

    r, c = 300, 411
    x, y = f.geobox.affine * (c + 0.5, r + 0.5)
    lon, lat = transform(f.geobox.crs.to_wkt(), "EPSG:4326", [x], [y])
    px = requests.get(
        viewer + "api/pixel", params={"lon": lon[0], "lat": lat[0], "query": res["id"]}, timeout=60
    ).json()
    assert px["query"]["score"] == pytest.approx(float(exp[r, c]), abs=1e-4)


def test_a_tile_holds_the_fields_scores_at_the_pixels_under_it(field_map, expected):
    import morecantile

    from pipeline.field import query_window
    from pipeline.view.field import FieldQuery

    f, exp = expected
    fq = FieldQuery(f)
    q = fq.prepare("a lake")
    gb = f.geobox
    from rasterio.warp import transform_bounds

    bounds = transform_bounds(gb.crs.to_wkt(), "EPSG:4326", *gb.boundingbox, densify_pts=21)
    checked, exact = 0, 0
    h, w = exp.shape
    for z in (16, 12):  # about 1.6 m per tile pixel (every pixel), and 25 m (every 2nd)
        t = morecantile.tms.get("WebMercatorQuad").tile(
            (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, z
        )  # the tile at the field's centre
        (ys, xs), _ = fq.tile_window(z, t.x, t.y)
        values, valid = fq.tile(q, z, t.x, t.y)
        assert valid.mean() > 0.1 and (ys.step == 1) == (z == 16)
        for i, j in zip(*np.nonzero(valid), strict=True):
            if (i * 256 + j) % 97:
                continue
            r, c = _field_pixel(f, t, i, j)
            # the strided grid's pixel whose cell holds the tile pixel's centre
            k = ys.step
            r = ys.start + (r - ys.start) // k * k
            c = xs.start + (c - xs.start) // k * k
            # GDAL's warper places pixels to within 1/8 pixel (its approximate transformer), so
            # near a cell's edge the neighbouring cell's value is as right
            near = [
                float(exp[r + dr, c + dc])
                for dr in (-k, 0, k)
                for dc in (-k, 0, k)
                if 0 <= r + dr < h and 0 <= c + dc < w
            ]
            assert min(abs(values[i, j] - v) for v in near) <= 1e-6
            exact += abs(values[i, j] - float(exp[r, c])) <= 1e-6
            checked += 1
    assert checked > 100 and exact >= 0.9 * checked, (checked, exact)
    # the probability against the legend, as the field API computes it
    win = (slice(100, 140), slice(200, 260, 3))
    p = fq.prepare("a lake", "probability")
    assert np.allclose(
        fq.scores(p, win), query_window(f, ["a lake"], win, kind="probability")[0],
        atol=1e-6, equal_nan=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="kind"):
        fq.prepare("a lake", "nope")
