"""The region catalogue's CRS choice and reprojection."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Point

from aoi import load_region, to_crs, utm_crs_for, utm_epsg, utm_zone_of


def test_utm_epsg_picks_the_six_degree_zone_and_hemisphere():
    lon = [11.5, 12.0, -0.5, 180.0, -180.0, 5.9, 6.0]
    lat = [48.3, 48.0, -33.0, 0.0, 10.0, 60.0, -0.0]
    expected = [32632, 32633, 32730, 32660, 32601, 32631, 32632]
    assert utm_epsg(lon, lat).tolist() == expected
    assert [utm_zone_of(x) for x in lon] == [e % 100 for e in expected]


def test_utm_epsg_agrees_with_odc_geo_inside_zones():
    from odc.geo.crs import CRS

    for lon, lat in ((11.5, 48.3), (-70.2, -33.4)):
        assert int(utm_epsg(lon, lat)) == CRS.utm(lon, lat).epsg


@pytest.mark.parametrize(
    "name, crs",
    [("demo", "EPSG:32632"), ("freising", "EPSG:32632"), ("malta", "EPSG:32633"),
     ("cyprus", "EPSG:32636"), ("luxembourg", "EPSG:3035"), ("belgium", "EPSG:3035")],
)  # fmt: skip
def test_catalogue_regions_keep_their_output_crs(name, crs):
    assert load_region(name).crs == crs


def test_utm_crs_for_uses_the_centroid_and_rejects_very_wide_regions():
    from shapely.geometry import box

    from pipeline.base.errors import UserError

    assert utm_crs_for(box(10.0, 47.0, 13.9, 49.0)) == "EPSG:32632"  # centroid 11.95 E
    assert utm_crs_for(box(10.0, -49.0, 14.1, -47.0)) == "EPSG:32733"
    with pytest.raises(UserError, match="too wide"):
        utm_crs_for(box(0.0, 40.0, 20.0, 41.0))


def test_to_crs_reprojects_vertices_exactly():
    p = to_crs(Point(9.0, 0.0), "EPSG:32632")  # zone 32's central meridian on the equator
    assert p.x == pytest.approx(500_000.0, abs=1e-6) and p.y == pytest.approx(0.0, abs=1e-6)
    back = to_crs(p, "EPSG:4326", src="EPSG:32632")
    assert np.allclose((back.x, back.y), (9.0, 0.0), atol=1e-9)


def test_a_misspelt_region_gets_a_suggestion():
    import pytest

    from aoi import load_region
    from pipeline.base.errors import UserError

    with pytest.raises(UserError, match=r"did you mean 'freising'\?$"):
        load_region("freisng")
    with pytest.raises(UserError) as err:
        load_region("atlantis")
    assert "did you mean" not in str(err.value)
