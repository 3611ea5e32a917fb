"""Test support: a real WorldCereal Flanders site as a provider serves it (COGs + STAC items).

The ``worldcereal-flanders`` samples (``$S2LC_REAL_DATA/worldcereal-flanders``, see its README) are
real Sentinel-2 L2A time series in netCDF: 10 m bands (64 x 64 px), 20 m bands and SCL (32 x 32
px), EPSG:32631, DN = reflectance x 1e4 without the baseline-04.00 offset, 0 = no data.
:func:`write_catalog` turns them into what Earth Search v1 serves, so that the unmodified
pipeline (search -> odc-stac -> composite -> model -> writers) reads them:

- one COG per band and acquisition on the band's native grid (10 m: B02 B03 B04 B08; 20 m: B05
  B06 B07 B8A B11 B12 SCL), uint16 (SCL uint8), nodata 0, DEFLATE + horizontal predictor in
  1024 px blocks (sentinel-cogs' layout);
- one STAC item per acquisition with the Earth Search v1 asset keys (``blue`` ... ``scl``),
  ``raster:bands`` (scale 1e-4, offset -0.1 as Earth Search v1 declares it), ``proj:epsg`` /
  ``proj:shape`` / ``proj:transform`` per asset, the real acquisition time, and
  ``eo:cloud_cover`` and the ``s2:*_percentage`` fields computed from the site's SCL;
- ``collection.json`` + ``items.json`` that :func:`pipeline.testing.stac_server.serve` serves.

What the netCDF files do not record is reconstructed, and said so in ``s2lc:reconstructed``:
the platform and relative orbit come from the acquisition time (S2A's 10-day, 143-orbit repeat
anchored at a real product, S2B half a cycle later), the processing baseline is given as
``02.99`` ("before 04.00": the samples carry no offset, as their README says; the exact 02.xx
baseline is not in the files). Everything is pure file writing; nothing here is product code.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FOLDER = "worldcereal-flanders"
EPSG = 32631
BASELINE = "02.99"
SITES: dict[str, str] = {"31UDS": "00002806639B424A", "31UES": "0000280849BAC91C"}
"""MGRS tile -> WorldCereal location id of the two sites."""
YEARS: dict[str, int] = {"31UDS": 2018, "31UES": 2019}
"""The calendar year mapped per site: the one its series covers (31UES's ends in November 2019,
so December is gap-filled) and its LPIS labels describe."""

NC_BANDS_10M = ("B02", "B03", "B04", "B08")
NC_BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
NC_TO_CANONICAL = {
    "B02": "B2", "B03": "B3", "B04": "B4", "B05": "B5", "B06": "B6", "B07": "B7",
    "B08": "B8", "B8A": "B8A", "B11": "B11", "B12": "B12", "SCL": "SCL",
}  # fmt: skip

# S2A sensed T29UPU (relative orbit 80) at 2017-06-17T11:33:21 (BigEarthNet patch
# S2A_MSIL2A_20170617T113321, product S2A_MSIL1C_20170617T113321_N0205_R080_T29UPU). Both
# satellites repeat their ground track every 10 days = 143 orbits, S2B half a cycle after S2A.
_ORBIT_ANCHOR = dt.datetime(2017, 6, 17, 11, 33, 21, tzinfo=dt.UTC)
_ORBIT_ANCHOR_RELATIVE = 80
_ORBIT_MINUTES = 10 * 24 * 60 / 143


def platform_and_orbit(when: dt.datetime) -> tuple[str, int]:
    """(``sentinel-2a``|``sentinel-2b``, relative orbit) of an acquisition over mid-latitude
    Europe, from its sensing time (see the anchor above)."""
    n = (when - _ORBIT_ANCHOR).total_seconds() / 60.0 / _ORBIT_MINUTES
    if abs(n - round(n)) < 0.25:
        return "sentinel-2a", (_ORBIT_ANCHOR_RELATIVE - 1 + round(n)) % 143 + 1
    return "sentinel-2b", (_ORBIT_ANCHOR_RELATIVE - 1 + round(n - 71.5)) % 143 + 1


@dataclass(frozen=True)
class Site:
    """The three netCDF files of one site."""

    tile: str
    location_id: str
    s2_10m: Path
    s2_20m: Path
    labels: Path

    @classmethod
    def find(cls, real_root: Path, tile: str) -> Site:
        folder = Path(real_root) / FOLDER
        lid = SITES[tile]

        def one(prefix: str) -> Path:
            found = sorted(folder.glob(f"{prefix}_{lid}_*.nc"))
            if len(found) != 1:
                raise FileNotFoundError(f"{folder}: expected one {prefix}_{lid}_*.nc")
            return found[0]

        return cls(tile, lid, one("S2_L2A_10m"), one("S2_L2A_20m"), one("OUTPUT_POLY-110_10m"))

    def open(self) -> tuple[Any, Any, Any]:
        """(10 m, 20 m, labels) xarray Datasets, raw integers (``mask_and_scale=False``: SCL's
        fill value is declared as NaN on an integer variable)."""
        import xarray as xr

        return tuple(
            xr.open_dataset(p, engine="h5netcdf", mask_and_scale=False).load()
            for p in (self.s2_10m, self.s2_20m, self.labels)
        )

    def bounds(self) -> tuple[float, float, float, float]:
        """(W, S, E, N) in EPSG:32631, from the file's ``bounds`` attribute."""
        import xarray as xr

        with xr.open_dataset(self.s2_10m, engine="h5netcdf", mask_and_scale=False) as ds:
            b = ds.attrs["bounds"]
        vals = [
            float(v)
            for v in (b.strip("()[] ").replace(",", " ").split() if isinstance(b, str) else b)
        ]
        return vals[0], vals[1], vals[2], vals[3]


def check_grid(ds: Any, bounds: tuple[float, float, float, float], res: float) -> None:
    """The dataset's x/y are pixel centres of the ``res`` lattice spanning ``bounds``."""
    w, s, e, n = bounds
    x = np.asarray(ds["x"].values, float)
    y = np.asarray(ds["y"].values, float)
    np.testing.assert_allclose(x, w + res / 2 + res * np.arange(round((e - w) / res)))
    np.testing.assert_allclose(y, n - res / 2 - res * np.arange(round((n - s) / res)))


def write_cog(path: Path, data: np.ndarray, bounds: tuple[float, float, float, float], res: float):
    """A single-band COG the way sentinel-cogs writes them: 1024 px blocks (the project's
    provider-shaped writer, :func:`pipeline.testing.demo.catalog.write_provider_cog`)."""
    from pipeline.testing.demo.catalog import write_provider_cog

    write_provider_cog(path, data, (bounds[0], bounds[3]), res, EPSG, blocksize=1024)


def write_catalog(site: Site, root: Path) -> list[dict]:
    """Write ``site``'s acquisitions as COGs under ``root/items/`` and return their STAC items.

    The items are Earth Search v1 items (see the module docstring); the caller writes
    ``items.json`` / ``collection.json`` (one catalog may hold several sites).
    """
    from pipeline.stac.bands import EARTH_SEARCH_V1_KEYS
    from pipeline.testing.demo.catalog import _item

    ds10, ds20, _ = site.open()
    bounds = site.bounds()
    check_grid(ds10, bounds, 10.0)
    check_grid(ds20, bounds, 20.0)
    times = ds10["timestamp"].values
    if not np.array_equal(times, ds20["timestamp"].values):
        raise ValueError(f"{site.tile}: the 10 m and 20 m files have different acquisitions")
    items = []
    for k, t64 in enumerate(times):
        when = dt.datetime.fromtimestamp(
            t64.astype("datetime64[ms]").astype(np.int64) / 1e3, dt.UTC
        )
        platform, orbit = platform_and_orbit(when)
        sat = "S2A" if platform.endswith("a") else "S2B"
        item_id = f"{sat}_{site.tile}_{when:%Y%m%d}_0_L2A"
        folder = Path(root) / "items" / item_id
        folder.mkdir(parents=True, exist_ok=True)
        hrefs: dict[str, tuple[str, tuple[int, int], float]] = {}
        for nc_band in (*NC_BANDS_10M, *NC_BANDS_20M, "SCL"):
            ds, res = (ds10, 10.0) if nc_band in NC_BANDS_10M else (ds20, 20.0)
            data = np.asarray(ds[nc_band].values[k])
            data = data.astype(np.uint8 if nc_band == "SCL" else np.uint16)
            band = NC_TO_CANONICAL[nc_band]
            path = folder / f"{EARTH_SEARCH_V1_KEYS[band]}.tif"
            write_cog(path, data, bounds, res)
            hrefs[band] = (path.as_uri(), data.shape, res)
        scl = np.asarray(ds20["SCL"].values[k]).astype(np.uint8)
        item = _item(
            "earth-search-v1", item_id, platform, when, scl, hrefs, EARTH_SEARCH_V1_KEYS,
            bounds, EPSG, BASELINE,
        )  # fmt: skip
        _as_site(item, site, when, sat, orbit)
        items.append(item)
    return items


def _as_site(item: dict, site: Site, when: dt.datetime, sat: str, orbit: int) -> None:
    """Replace the demo generator's tile, orbit and provenance fields by this site's."""
    p = item["properties"]
    tile = site.tile
    p["s2:product_uri"] = (
        f"{sat}_MSIL2A_{when:%Y%m%dT%H%M%S}_N{BASELINE.replace('.', '')}_R{orbit:03d}_T{tile}_"
        f"{when:%Y%m%dT%H%M%S}.SAFE"
    )
    p["s2:mgrs_tile"] = tile
    p["mgrs:utm_zone"] = int(tile[:2])
    p["mgrs:latitude_band"] = tile[2]
    p["mgrs:grid_square"] = tile[3:]
    p["grid:code"] = f"MGRS-{tile}"
    p["sat:relative_orbit"] = orbit
    p["processing:software"] = {"s2lc-tests-real-flanders": "1"}
    p["s2lc:source"] = f"WorldCereal {site.location_id} ({site.s2_10m.name}, {site.s2_20m.name})"
    p["s2lc:reconstructed"] = ["platform", "sat:relative_orbit", "s2:processing_baseline"]
    for asset in item["assets"].values():
        asset["proj:epsg"] = EPSG


def write_site_catalog(real_root: Path, out: Path, tiles: tuple[str, ...] = tuple(SITES)) -> Path:
    """Convert the sites into one catalog folder (COGs, items.json, collection.json); return it."""
    from pipeline.base.jsonio import write_json
    from pipeline.testing.demo.catalog import _collection

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict] = []
    for tile in tiles:
        items += write_catalog(Site.find(real_root, tile), out)
    items.sort(key=lambda it: it["properties"]["datetime"])
    coll = _collection(items, "earth-search-v1")
    coll["description"] = (
        "Real Sentinel-2 L2A acquisitions of the WorldCereal Flanders test sites, converted to "
        "the Earth Search v1 layout for s2lc's real-data tests (tests/real/flanders.py)."
    )
    coll["license"] = "proprietary"  # Copernicus Sentinel data terms
    write_json(out / "items.json", {"type": "FeatureCollection", "features": items})
    write_json(out / "collection.json", coll)
    return out


def write_region(site: Site, path: Path, year: int) -> Path:
    """A region YAML for ``run --region``: the site's bounds in its UTM CRS, 10 m, ``year``.

    The bounds are drawn 1 m inside the site: the region's polygon travels through EPSG:4326,
    and the output grid snaps it outward to the 10 m lattice, which gives exactly the site's
    64 x 64 pixels (the exact edges could snap one pixel further out after the round trip).
    """
    w, s, e, n = site.bounds()
    w, s, e, n = w + 1.0, s + 1.0, e - 1.0, n - 1.0
    doc = {
        "name": f"flanders-{site.tile.lower()}",
        "description": f"WorldCereal site {site.location_id} (real S2 L2A, tile {site.tile})",
        "bounds": [w, s, e, n],
        "bounds_crs": f"EPSG:{EPSG}",
        "crs": f"EPSG:{EPSG}",
        "resolution": 10,
        "period": {"start": f"{year}-01-01", "end": f"{year}-12-31"},
        "stac": "custom",
    }
    path = Path(path)
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    return path
