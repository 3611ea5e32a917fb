"""Point extraction: reading points, planning windows on the output lattice, the points table, and
extraction against the map run's own cube/composite code on a real local STAC API."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.base.errors import UserError
from pipeline.points import (
    ExtractConfig,
    Points,
    PointTable,
    extract_points,
    group_windows,
    read_points,
    utm_epsg,
)
from pipeline.run.config import CompositeConfig
from pipeline.stac.search import SearchConfig

# --- reading points ----------------------------------------------------------------------------


def test_read_points_csv_column_spellings(tmp_path):
    p = tmp_path / "lucas.csv"
    p.write_text(
        "POINT_ID,TH_LAT,TH_LONG,NUTS0,LC1\n45061526,48.1,11.5,DE,B11\n45281654,48.2,11.6,DE,C21\n"
    )
    pts = read_points(p)
    assert pts.ids.tolist() == ["45061526", "45281654"]
    np.testing.assert_allclose(pts.lon, [11.5, 11.6])
    np.testing.assert_allclose(pts.lat, [48.1, 48.2])
    assert pts.attrs["NUTS0"].tolist() == ["DE", "DE"]
    assert pts.attrs["LC1"].tolist() == ["B11", "C21"]


def test_read_points_csv_projected_and_explicit_columns(tmp_path):
    p = tmp_path / "pts.csv"
    p.write_text("name,E,N,cls\na,600005,5340005,forest\n")
    pts = read_points(p, id_column="name", lon_column="E", lat_column="N", crs="EPSG:32632")
    assert 10.3 < pts.lon[0] < 10.4 and 48.2 < pts.lat[0] < 48.3
    assert pts.attrs == {"cls": np.array(["forest"])}


def test_read_points_vector_file(tmp_path):
    import geopandas as gpd
    from shapely.geometry import Point

    gdf = gpd.GeoDataFrame(
        {"id": [7, 8], "label": ["water", "forest"]},
        geometry=[Point(600005, 5340005), Point(600105, 5340105)],
        crs="EPSG:32632",
    )
    path = tmp_path / "pts.gpkg"
    gdf.to_file(path)
    pts = read_points(path)
    assert pts.ids.tolist() == ["7", "8"]
    assert pts.attrs["label"].tolist() == ["water", "forest"]
    assert 10.3 < pts.lon[0] < 10.4


def test_read_points_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_points(tmp_path / "none.csv")
    (tmp_path / "a.csv").write_text("id,x_coord,lat\n1,2,3\n")
    with pytest.raises(UserError, match="lon column"):
        read_points(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("id,lon,lat\n1,2,3\n1,2,3\n")
    with pytest.raises(UserError, match="not unique"):
        read_points(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("id,lon,lat\n1,200,3\n")
    with pytest.raises(UserError, match="valid lon/lat"):
        read_points(tmp_path / "c.csv")


# --- planning ----------------------------------------------------------------------------------


def _pts(lon, lat) -> Points:
    lon, lat = np.asarray(lon, float), np.asarray(lat, float)
    return Points(ids=np.array([f"p{i}" for i in range(len(lon))]), lon=lon, lat=lat)


def test_utm_zones():
    assert utm_epsg(np.array([11.5, 5.0, -3.7]), np.array([48.0, 52.0, -40.0])).tolist() == [
        32632, 32631, 32730,
    ]  # fmt: skip


def test_plan_windows_groups_by_zone_tile_and_cluster():
    from pyproj import Transformer

    # Three points near each other (one cluster), one 5 km away (another tile), one in zone 31.
    to_ll = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    xs = np.array([600005.0, 600155.0, 600305.0, 605005.0])
    ys = np.array([5340005.0, 5340105.0, 5339905.0, 5345005.0])
    lon, lat = to_ll.transform(xs, ys)
    pts = _pts([*lon, 5.0], [*lat, 52.0])
    wins = group_windows(pts, tile_size=256, cluster_px=64, block_tiles=1)
    assert sorted(w.crs for w in wins) == ["EPSG:32631", "EPSG:32632", "EPSG:32632"]
    covered = np.sort(np.concatenate([w.points for w in wins]))
    assert covered.tolist() == [0, 1, 2, 3, 4]
    for w in wins:
        a = w.geobox.affine
        # every window is on the 10 m lattice anchored at the CRS origin
        assert a.c % 10 == 0 and a.f % 10 == 0
        # each point lies inside its pixel
        if w.crs == "EPSG:32632":
            for k, i in enumerate(w.points):
                x0 = a.c + w.cols[k] * 10
                y0 = a.f - w.rows[k] * 10
                assert x0 <= xs[i] < x0 + 10 and y0 - 10 < ys[i] <= y0
    big = [w for w in wins if len(w.points) == 3][0]
    assert big.geobox.shape == (21, 31)  # spans only the cluster's pixels
    assert len({w.block for w in wins}) == 3


def test_plan_windows_one_crs():
    pts = _pts([10.35, 10.36], [48.2, 48.2])
    wins = group_windows(pts, crs="EPSG:3035", cluster_px=1024, tile_size=1024)
    assert len(wins) == 1 and wins[0].crs == "EPSG:3035"


# --- the table -------------------------------------------------------------------------------


def _table(n=3) -> PointTable:
    rng = np.random.default_rng(0)
    vals = rng.uniform(0, 0.3, (n, 12, 10)).astype(np.float32)
    vals[0, 3] = np.nan
    return PointTable(
        ids=np.array([f"DE_{i}" for i in range(n)]),
        lon=np.linspace(10, 11, n),
        lat=np.linspace(48, 49, n),
        values=vals,
        counts=rng.integers(0, 5, (n, 12)).astype(np.int16),
        period_starts=np.array([f"2023-{m:02d}-01" for m in range(1, 13)], dtype="datetime64[D]"),
        bands=("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"),
        attrs={"label": np.array(["a", "b", "c"][:n])},
        crs=np.array(["EPSG:32632"] * n),
        x=np.arange(n, dtype=float),
        y=np.arange(n, dtype=float),
        meta={"period": "monthly"},
    )


def test_table_roundtrip(tmp_path):
    t = _table()
    p = t.save(tmp_path / "pts")
    assert p.name == "pts.npz"
    back = PointTable.load(p)
    np.testing.assert_array_equal(back.values, t.values)
    assert back.ids.tolist() == t.ids.tolist()
    assert back.bands == t.bands and back.n_periods == 12
    assert back.attrs["label"].tolist() == ["a", "b", "c"]
    assert back.meta["period"] == "monthly"
    assert back.series_x1e4()[1, 0, 0] == pytest.approx(t.values[1, 0, 0] * 1e4)
    sub = back.subset(np.array([2, 0]))
    assert sub.ids.tolist() == ["DE_2", "DE_0"] and sub.attrs["label"].tolist() == ["c", "a"]
    with pytest.raises(UserError, match="no column"):
        back.column("nope")
    np.savez(tmp_path / "other.npz", x=np.zeros(1))
    with pytest.raises(UserError):
        PointTable.load(tmp_path / "other.npz")


# --- extraction against the run's code -------------------------------------------------------


@pytest.fixture(scope="module")
def small_api(small_catalog):
    from pipeline.testing.stac_server import serve

    with serve(small_catalog) as url:
        yield url


def _small_points(small_catalog: Path, n: int = 40, seed: int = 0) -> tuple[Points, np.ndarray]:
    from pyproj import Transformer

    rng = np.random.default_rng(seed)
    # the small catalog covers 600000..600640 E, 5340000..5340640 N (EPSG:32632)
    xs = rng.uniform(600000, 600640, n)
    ys = rng.uniform(5340000, 5340640, n)
    lon, lat = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True).transform(xs, ys)
    pts = Points(
        ids=np.array([f"P{i:03d}" for i in range(n)]),
        lon=np.asarray(lon),
        lat=np.asarray(lat),
        attrs={"k": np.array([str(i % 3) for i in range(n)])},
    )
    return pts, np.stack([xs, ys], 1)


def test_extract_matches_direct_composite(tmp_path, small_catalog, small_api):
    """Per-point values equal the map run's composite of the whole area at the point's pixel."""
    import pystac
    from odc.geo.geobox import GeoBox

    from pipeline.composite.median import composite
    from pipeline.reading.cube import MaskConfig, load_cube
    from pipeline.stac.search import search_items

    pts, xy = _small_points(small_catalog)
    cfg = ExtractConfig(
        composite=CompositeConfig(dt.date(2023, 5, 1), dt.date(2023, 6, 30)),
        search=SearchConfig(profile="custom", stac_url=small_api),
        tile_size=16, cluster_px=8, block_tiles=2, workers=2,
    )  # fmt: skip
    table = extract_points(pts, cfg, tmp_path / "out.npz")
    assert (tmp_path / "out.npz").is_file()
    assert not (tmp_path / "out.npz.parts").exists()
    assert table.ids.tolist() == pts.ids.tolist()  # input order kept
    assert table.values.shape == (40, 2, 10) and table.counts.shape == (40, 2)
    assert table.attrs["k"].tolist() == pts.attrs["k"].tolist()

    # the whole 640 m area in one cube, composited by the same code
    items = search_items(pts_geometry(pts), cfg.composite.start, cfg.composite.end, cfg.search)
    gbox = GeoBox.from_bbox((600000, 5340000, 600640, 5340640), "EPSG:32632", resolution=10)
    cube = load_cube([pystac.Item.from_dict(i.to_dict()) for i in items], gbox, mask=MaskConfig())
    c = cfg.composite
    comp = composite(np.asarray(cube.values), cube["time"].values, c.start, c.end, "monthly")
    col = np.floor((xy[:, 0] - 600000) / 10).astype(int)
    row = np.floor((5340640 - xy[:, 1]) / 10).astype(int)
    expect = np.transpose(comp.values[:, :, row, col], (2, 0, 1))
    np.testing.assert_array_equal(table.values, expect)
    np.testing.assert_array_equal(table.counts, comp.counts[:, row, col].T)
    assert (table.counts > 0).any()
    # pixel centres recorded
    np.testing.assert_allclose(table.x, 600000 + (col + 0.5) * 10)
    assert json.loads(json.dumps(table.meta))["period"] == "monthly"


def pts_geometry(pts: Points):
    from shapely.geometry import box

    return box(
        pts.lon.min() - 1e-3, pts.lat.min() - 1e-3, pts.lon.max() + 1e-3, pts.lat.max() + 1e-3
    )


def test_extract_resumes_finished_blocks(tmp_path, small_catalog, small_api, monkeypatch):
    import pipeline.points.extraction as P

    pts, _ = _small_points(small_catalog, n=12, seed=1)
    cfg = ExtractConfig(
        composite=CompositeConfig(dt.date(2023, 5, 1), dt.date(2023, 5, 31)),
        search=SearchConfig(profile="custom", stac_url=small_api),
        tile_size=16, cluster_px=16, block_tiles=1, workers=1,
    )  # fmt: skip
    real = P._extract_block
    calls = []

    def flaky(cfg_, points, windows, pool):
        calls.append(windows[0].block)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real(cfg_, points, windows, pool)

    monkeypatch.setattr(P, "_extract_block", flaky)
    with pytest.raises(RuntimeError):
        extract_points(pts, cfg, tmp_path / "t.npz")
    assert len(list((tmp_path / "t.npz.parts").glob("block_*.npz"))) == 2
    calls.clear()
    monkeypatch.setattr(P, "_extract_block", real)
    seen = []
    monkeypatch.setattr(P, "_extract_block", lambda *a: seen.append(a[2][0].block) or real(*a))
    table = extract_points(pts, cfg, tmp_path / "t.npz")
    n_blocks = len(
        {w.block for w in group_windows(pts, tile_size=16, cluster_px=16, block_tiles=1)}
    )
    assert len(seen) == n_blocks - 2  # the two finished blocks were not redone
    assert len(table) == 12


def test_extract_points_cli(tmp_path, small_catalog, small_api, capsys):
    from pipeline.cli import main

    pts, _ = _small_points(small_catalog, n=5, seed=2)
    csv = tmp_path / "pts.csv"
    csv.write_text(
        "id,lon,lat,label\n"
        + "".join(
            f"{i},{x},{y},c{j % 2}\n" for j, (i, x, y) in enumerate(zip(pts.ids, pts.lon, pts.lat))
        )
    )
    out = tmp_path / "x.npz"
    rc = main([
        "extract-points", "--points", str(csv), "--start", "2023-05-01", "--end", "2023-06-30",
        "--stac-url", small_api, "--out", str(out), "--workers", "1",
    ])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["points"] == 5 and summary["periods"] == 2 and summary["columns"] == ["label"]
    assert PointTable.load(out).attrs["label"].tolist() == ["c0", "c1", "c0", "c1", "c0"]
    # the same table as GeoParquet beside the .npz: one row per point, lon/lat points
    import geopandas as gpd

    table = PointTable.load(out)
    gdf = gpd.read_parquet(tmp_path / "x.parquet")
    assert summary["geoparquet"] == str(tmp_path / "x.parquet") and gdf.crs.to_epsg() == 4326
    assert list(gdf["point_id"]) == table.ids.astype(str).tolist()
    assert list(gdf["label"]) == ["c0", "c1", "c0", "c1", "c0"]
    np.testing.assert_allclose(gdf.geometry.x, table.lon)
    np.testing.assert_allclose(gdf.geometry.y, table.lat)
    start = str(table.period_starts[1].astype("datetime64[D]"))
    np.testing.assert_array_equal(gdf[f"B4_{start}"], table.values[:, 1, table.bands.index("B4")])
    np.testing.assert_array_equal(gdf[f"n_obs_{start}"], table.counts[:, 1])
    assert main(["extract-points", "--points", str(csv), "--out", str(out)]) == 2  # no dates
