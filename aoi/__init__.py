"""The region catalogue: named areas of interest, or any vector file geopandas reads.

A named region is a YAML file in ``aoi/regions/`` with its geometry (EPSG:4326, either a GeoJSON
``geometry``, a lon/lat ``bbox``, or ``bounds`` in a given ``bounds_crs``), a default period, the
output CRS (``auto``: the UTM zone of a region inside one zone, EPSG:3035 for a European region
across several zones, see :func:`auto_crs_for`) and resolution, and the STAC profile it is
usually mapped from. ``load_region`` accepts a name, a path or ``bbox:W,S,E,N`` (a lon/lat box);
``list_regions`` lists the catalogue.

Every geometry is normalised once, here (:func:`normalise_geometry`): Z/M values are dropped,
multi-part geometries and holes are kept, and an outline given in a projected CRS (region
``bounds`` in ``bounds_crs``, a vector file in UTM) is densified before it is reprojected to
EPSG:4326 (odc-geo's resolution-aware ``to_crs``), so a UTM square stays that square when the
output grid projects it back: the shipped ``mgrs-32UPU`` grids to exactly 10980 x 10980 px.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.base.dates import parse_date
from pipeline.base.errors import UserError

_log = logging.getLogger(__name__)

REGIONS_DIR = Path(__file__).parent / "regions"
#: Segment length (CRS units, metres) at which projected outlines are densified before they are
#: reprojected to EPSG:4326; with it a 110 km UTM edge comes back straight to within 1e-8 m.
DENSIFY_M = 100.0
BBOX_PREFIX = "bbox:"
VECTOR_SUFFIXES = {".geojson", ".json", ".gpkg", ".shp", ".parquet", ".fgb", ".kml", ".gml"}


@dataclass(frozen=True)
class Region:
    """An area of interest and how to map it.

    Attributes:
        name: short identifier, used in output paths.
        geometry: shapely (Multi)Polygon in EPSG:4326 (lon, lat).
        start, end: default period (inclusive dates).
        crs: output CRS as "EPSG:nnnn".
        resolution: output pixel size in CRS units (metres).
        stac: STAC profile name the region is mapped from by default ("demo" for the bundled sample).
        description: one line for ``pipeline regions``.
    """

    name: str
    geometry: Any
    start: dt.date
    end: dt.date
    crs: str
    resolution: float = 10.0
    stac: str = "earth-search"
    description: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        validate_geometry(self.geometry, self.name)
        if self.end < self.start:
            raise UserError(f"region {self.name}: end {self.end} is before start {self.start}")
        if not self.resolution > 0:
            raise UserError(f"region {self.name}: resolution must be > 0, got {self.resolution}")

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) in EPSG:4326."""
        return tuple(self.geometry.bounds)  # type: ignore[return-value]

    def area_km2(self) -> float:
        """Area in km² measured in the region's output CRS."""
        return float(to_crs(self.geometry, self.crs).area) / 1e6


def validate_geometry(geom: Any, name: str) -> None:
    """Reject empty, invalid (e.g. self-intersecting) and non-areal geometries in one line."""
    from shapely.validation import explain_validity

    if geom is None or geom.is_empty:
        raise UserError(f"region {name}: the geometry is empty")
    if geom.geom_type not in ("Polygon", "MultiPolygon"):
        raise UserError(f"region {name}: expected a polygon, got a {geom.geom_type}")
    if not geom.is_valid:
        raise UserError(f"region {name}: invalid geometry ({explain_validity(geom)})")
    w, s, e, n = geom.bounds
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise UserError(
            f"region {name}: coordinates are not lon/lat degrees (bounds {geom.bounds})"
        )
    if e - w > 180:
        raise UserError(
            f"region {name}: the geometry crosses the antimeridian; split it into two regions "
            "east and west of 180°"
        )


def normalise_geometry(geom: Any, src_crs: Any = "EPSG:4326") -> Any:
    """A shapely geometry in EPSG:4326 (lon, lat), 2D, from one in ``src_crs``.

    Z/M values are dropped; parts and holes are kept. A projected source is densified every
    :data:`DENSIFY_M` metres before reprojection (odc-geo ``to_crs(resolution=...)``) so its
    straight edges stay straight when projected back.
    """
    import shapely
    from odc.geo.geom import Geometry
    from pyproj import CRS

    geom = shapely.force_2d(geom)
    crs = CRS.from_user_input(src_crs)
    if crs.equals(CRS.from_epsg(4326)):
        return geom
    resolution = DENSIFY_M if crs.is_projected else "auto"
    return Geometry(geom, crs).to_crs("EPSG:4326", resolution=resolution).geom


def location_text(geometry: Any, crs: str, description: str = "") -> str:
    """Where a region is, in one phrase for the first log line and ``plan``: its centre in
    lon/lat, what the region's file says it is (a named region's ``description``: the country),
    and the output CRS, e.g. ``centre 11.70°E 48.37°N (Freising, Bavaria), CRS EPSG:32632``.

    A lon/lat box given with its axes swapped lands elsewhere on Earth; this line shows where.
    """
    c = geometry.centroid
    lon = f"{abs(c.x):.2f}°{'E' if c.x >= 0 else 'W'}"
    lat = f"{abs(c.y):.2f}°{'N' if c.y >= 0 else 'S'}"
    about = f" ({description})" if description else ""
    return f"centre {lon} {lat}{about}, CRS {crs}"


def bbox_number(value: float) -> str:
    """``value`` as text that reads back as the same float: ``%g`` when that is exact (``11``,
    ``48.3``), else the shortest exact form (``repr``: ``50.81874``, which ``%g`` rounds to
    ``50.8187``, about 4 m). Used for ``bbox:W,S,E,N`` region names, so a box keeps its edges."""
    short = f"{float(value):g}"
    return short if float(short) == float(value) else repr(float(value))


def bbox_region(w: float, s: float, e: float, n: float) -> Region:
    """A region that is just a lon/lat box (``--bbox W S E N`` without ``--region``)."""
    if not (w < e and s < n):
        raise UserError(f"--bbox must be W S E N with W < E and S < N, got {[w, s, e, n]}")
    name = "bbox_" + "_".join(bbox_number(v) for v in (w, s, e, n))
    return _region_from_doc({"name": name, "bbox": [w, s, e, n]}, name, BBOX_PREFIX)


def to_crs(geom: Any, crs: str, src: str = "EPSG:4326") -> Any:
    """Reproject a shapely geometry vertex by vertex (odc-geo ``Geometry.to_crs``, no densifying).

    Use :func:`normalise_geometry` for outlines whose straight edges must stay straight.
    """
    from odc.geo.geom import Geometry

    return Geometry(geom, src).to_crs(crs).geom


#: Widest longitude span (degrees) mapped in one UTM zone: the centroid's zone +- one zone.
MAX_UTM_SPAN_DEG = 18.0


def utm_crs_for(geom: Any) -> str:
    """The WGS84 UTM zone CRS of a lon/lat geometry's centroid (see :func:`utm_epsg`).

    A region reaching into neighbouring zones is mapped in its centroid's zone (UTM stays usable
    a few degrees beyond its zone); one wider than three zones needs an explicit equal-area CRS.
    """
    w, _, e, _ = geom.bounds
    if e - w > MAX_UTM_SPAN_DEG:
        raise UserError(
            f"the region spans {e - w:.0f} degrees of longitude, too wide for one UTM zone; set "
            "crs: EPSG:3035 (Europe, LAEA) or another equal-area CRS in a region YAML file"
        )
    c = geom.centroid
    return f"EPSG:{int(utm_epsg(c.x, c.y))}"


#: LAEA Europe, the CRS of the EEA reference grid; regions spanning several UTM zones inside its
#: area of use are mapped in it, on 100 km grid cells (see :mod:`pipeline.grid.cells`).
LAEA_EUROPE = "EPSG:3035"
#: lon/lat box inside the area of use of EPSG:3035 (Europe, Macaronesia included).
LAEA_EUROPE_BOX = (-35.0, 24.0, 45.0, 84.0)


def utm_zone_of(lon: float) -> int:
    """The UTM zone number (1-60) of a longitude (the plain 6-degree zones)."""
    return int(_utm_zones(lon))


def _utm_zones(lon: Any) -> np.ndarray:
    return np.clip(np.floor((np.asarray(lon) + 180.0) / 6.0).astype(int) + 1, 1, 60)


def utm_epsg(lon: Any, lat: Any) -> np.ndarray:
    """EPSG code of the WGS84 UTM zone of each lon/lat point (326zz north, 327zz south).

    Plain arithmetic on the 6-degree zones: odc-geo's ``CRS.utm`` gives the same zones but asks
    the PROJ database each time (~0.2 s a call), too slow for many points. A point exactly on a
    zone boundary gets the eastern zone; the equator counts as north.
    """
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + _utm_zones(lon)


def auto_crs_for(geom: Any) -> str:
    """The output CRS for ``crs: auto``: the UTM zone of a region inside one zone; EPSG:3035
    (LAEA Europe) for a European region spanning several zones; else the centroid's zone.
    """
    w, s, e, n = geom.bounds
    if utm_zone_of(w) == utm_zone_of(e):
        return utm_crs_for(geom)
    bw, bs, be, bn = LAEA_EUROPE_BOX
    if bw <= w and e <= be and bs <= s and n <= bn:
        return LAEA_EUROPE
    return utm_crs_for(geom)


def _geometry_from(doc: dict[str, Any], name: str) -> Any:
    from shapely.geometry import box, shape

    if "union_of" in doc:  # a region made of named regions (eu27: the member states)
        import shapely

        members = doc["union_of"]
        if not isinstance(members, list) or not members:
            raise UserError(f"region {name}: union_of must be a non-empty list of region names")
        return shapely.union_all([load_region(str(m)).geometry for m in members])

    if "geometry" in doc:
        try:
            geom = shape(doc["geometry"])
        except Exception as exc:  # shapely raises several types for bad GeoJSON
            raise UserError(f"region {name}: bad geometry ({exc})") from None
        return normalise_geometry(geom, doc.get("geometry_crs", "EPSG:4326"))
    if "bbox" in doc:
        w, s, e, n = (float(v) for v in doc["bbox"])
        if not (w < e and s < n):
            raise UserError(
                f"region {name}: bbox must be [west, south, east, north], got {doc['bbox']}"
            )
        return box(w, s, e, n)
    if "bounds" in doc:
        x0, y0, x1, y1 = (float(v) for v in doc["bounds"])
        if not (x0 < x1 and y0 < y1):
            raise UserError(f"region {name}: bounds must be [xmin, ymin, xmax, ymax]")
        return normalise_geometry(box(x0, y0, x1, y1), doc.get("bounds_crs", "EPSG:4326"))
    raise UserError(f"region {name}: needs one of geometry, bbox or bounds")


def _region_from_doc(doc: dict[str, Any], name: str, source: str) -> Region:
    geom = _geometry_from(doc, name)
    validate_geometry(geom, name)
    period = doc.get("period") or {}
    year = dt.date.today().year - 1
    crs = str(doc.get("crs", "auto"))
    return Region(
        name=str(doc.get("name", name)),
        geometry=geom,
        start=parse_date(period.get("start", f"{year}-01-01"), f"region {name} period.start"),
        end=parse_date(period.get("end", f"{year}-12-31"), f"region {name} period.end"),
        crs=auto_crs_for(geom) if crs == "auto" else crs,
        resolution=float(doc.get("resolution", 10.0)),
        stac=str(doc.get("stac", "earth-search")),
        description=str(doc.get("description", "")),
        source=source,
    )


def _yaml_load(text: str) -> Any:
    """YAML through libyaml when available (country outlines are large)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506


def list_regions() -> list[Region]:
    """All named regions in the catalogue, sorted by name."""
    return [load_region(p.stem) for p in sorted(REGIONS_DIR.glob("*.yaml"))]


def region_names() -> list[str]:
    return sorted(p.stem for p in REGIONS_DIR.glob("*.yaml"))


def load_region(name_or_path: str | Path) -> Region:
    """A named region from the catalogue, or a region read from a vector file or region YAML.

    A vector file (anything geopandas reads) becomes a region named after the file, with all its
    features dissolved, normalised to EPSG:4326 (:func:`normalise_geometry`; a file without a CRS
    is assumed EPSG:4326, with a warning), the UTM zone of its centroid and the last full
    calendar year as the default period.
    """
    text = str(name_or_path)
    if text.startswith(BBOX_PREFIX):
        try:
            w, s, e, n = (float(v) for v in text[len(BBOX_PREFIX) :].split(","))
        except ValueError:
            raise UserError(f"region {text!r}: expected bbox:W,S,E,N in degrees") from None
        return bbox_region(w, s, e, n)
    named = REGIONS_DIR / f"{text}.yaml"
    if named.is_file():
        return _region_from_doc(_yaml_load(named.read_text()), text, str(named))
    path = Path(text).expanduser()
    if not path.exists():
        import difflib

        close = difflib.get_close_matches(text, region_names(), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(
            f"unknown region {text!r}: not a named region ({', '.join(region_names())}) "
            f"nor an existing vector file{hint}"
        )
    if path.suffix.lower() in (".yaml", ".yml"):
        doc = _yaml_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise UserError(f"region file {path}: expected a mapping")
        return _region_from_doc(doc, doc.get("name", path.stem), str(path))
    return _region_from_vector(path)


def _region_from_vector(path: Path) -> Region:
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise UserError(f"cannot read region file {path}: {str(exc).splitlines()[0]}") from None
    if gdf.empty:
        raise UserError(f"region file {path}: it has no features")
    if gdf.crs is None:
        _log.warning("region file %s has no CRS: assuming EPSG:4326 (lon/lat)", path)
        gdf = gdf.set_crs("EPSG:4326")
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        from shapely.validation import explain_validity

        bad = gdf.geometry[invalid].iloc[0]
        raise UserError(f"region file {path}: invalid geometry ({explain_validity(bad)})")
    geom = normalise_geometry(gdf.geometry.union_all(), gdf.crs)
    return _region_from_doc({"geometry": geom.__geo_interface__}, path.stem, str(path))
