"""Write the synthetic scenes as a Sentinel-2 L2A STAC catalog: COGs, items.json, collection.json.

Two layouts:

- ``earth-search-v1`` (the demo): asset keys ``blue`` ... ``swir22``, ``scl``; ``raster:bands`` with
  scale 0.0001, offset -0.1, nodata 0; ``earthsearch:boa_offset_applied: true`` and DN without the
  baseline-04.00 offset (DN = 10000 * reflectance), exactly like Earth Search v1.
- ``planetary-computer`` (tests): asset keys ``B02`` ... ``B12``, ``SCL``; no ``raster:bands``;
  DN still carry the offset (DN = 10000 * reflectance + 1000) when the baseline is >= 04.00.

Asset hrefs are absolute ``file://`` URLs. Alongside: ``truth.tif`` (COG, uint8 class index, class
names in its tags), ``truth.json`` (class names and the generation parameters).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer

from pipeline.base.atomic import atomic_path
from pipeline.base.jsonio import write_json
from pipeline.stac.bands import BANDS, EARTH_SEARCH_V1_KEYS, NATIVE_RESOLUTION, PC_KEYS, SCL
from pipeline.testing.demo.change import change_truth, landscape_in, plan_changes
from pipeline.testing.demo.landscape import CLASS_NAMES, Landscape, make_landscape
from pipeline.testing.demo.scenes import SceneSpec, block_mean, draw_specs, render

LAYOUTS = ("earth-search-v1", "planetary-computer")
COLLECTION = "sentinel-2-l2a"
DEMO_AOI = (600000.0, 5340000.0, 602000.0, 5342000.0)
"""The demo AOI (EPSG:32632), see aoi/regions/demo.yaml."""
DEMO_MARGIN = 640.0
"""Scenes extend this far beyond the AOI on every side (halo for the patch model)."""
DEMO_BOUNDS = (
    DEMO_AOI[0] - DEMO_MARGIN,
    DEMO_AOI[1] - DEMO_MARGIN,
    DEMO_AOI[2] + DEMO_MARGIN,
    DEMO_AOI[3] + DEMO_MARGIN,
)
DEMO_EPSG = 32632
MGRS_TILE = "32UPU"
BASELINE = "05.09"

_BAND_INFO: dict[str, tuple[str, str, float, float]] = {
    # canonical: (common name, description, centre um, fwhm um)
    "B2": ("blue", "Blue (band 2)", 0.49, 0.098),
    "B3": ("green", "Green (band 3)", 0.56, 0.045),
    "B4": ("red", "Red (band 4)", 0.665, 0.038),
    "B5": ("rededge", "Red edge 1 (band 5)", 0.704, 0.019),
    "B6": ("rededge", "Red edge 2 (band 6)", 0.74, 0.018),
    "B7": ("rededge", "Red edge 3 (band 7)", 0.783, 0.028),
    "B8": ("nir", "NIR 1 (band 8)", 0.842, 0.145),
    "B8A": ("nir08", "NIR 2 (band 8A)", 0.865, 0.033),
    "B11": ("swir16", "SWIR 1 (band 11)", 1.61, 0.143),
    "B12": ("swir22", "SWIR 2 (band 12)", 2.19, 0.242),
}


def default_dates(year: int = 2023, step_days: int = 5) -> list[dt.datetime]:
    """A 5-day revisit through a year (73 dates), at about 10:30 UTC."""
    start = dt.datetime(year, 1, 1, 10, 30, 0, tzinfo=dt.UTC)
    out = []
    t = start
    i = 0
    while t.year == year:
        out.append(t + dt.timedelta(seconds=(i * 37) % 60 - 20))
        i += 1
        t = start + dt.timedelta(days=step_days * i)
    return out


def build_landscape(
    seed: int, bounds: Sequence[float], resolution: float = 10.0, aoi: Sequence[float] | None = None
) -> Landscape:
    """The landscape for a seed and grid: what :func:`generate_catalog` draws, redrawn."""
    w, s, e, n = bounds
    shape = (round((n - s) / resolution), round((e - w) / resolution))
    core = None
    if aoi is not None:
        aw, as_, ae, an = aoi
        core = (
            max(0, round((n - an) / resolution)),
            max(0, round((aw - w) / resolution)),
            min(shape[0], round((n - as_) / resolution)),
            min(shape[1], round((ae - w) / resolution)),
        )
    return make_landscape(np.random.default_rng([seed, 1]), shape, core)


def landscape_of(catalog_dir: Path) -> Landscape:
    """Redraw the landscape of a generated catalog from its truth.json parameters."""
    meta = json.loads((Path(catalog_dir) / "truth.json").read_text())
    p = meta["params"]
    return build_landscape(p["seed"], p["bounds"], p["resolution"], p.get("aoi"))


def generate_catalog(
    root: Path,
    *,
    seed: int = 0,
    layout: str = "earth-search-v1",
    bounds: Sequence[float] = DEMO_BOUNDS,
    aoi: Sequence[float] | None = DEMO_AOI,
    epsg: int = DEMO_EPSG,
    resolution: float = 10.0,
    dates: Sequence[dt.datetime] | None = None,
    cloud_fractions: Sequence[float] | None = None,
    partial_swath: int | None = -1,
    baseline: str = BASELINE,
    mgrs_tile: str = MGRS_TILE,
    plant: str | None = None,
    plant_px: int = 14,
    years: Sequence[int] | None = None,
) -> Path:
    """Write a synthetic Sentinel-2 L2A catalog into ``root`` and return ``root``.

    Args:
        root: output folder (created). Existing files are overwritten.
        seed: everything random derives from it.
        layout: ``earth-search-v1`` or ``planetary-computer`` (see the module docstring).
        bounds: scene bounds (W, S, E, N) in ``epsg``; multiples of 20 m.
        aoi: the area of interest inside the bounds (all land-cover classes appear in it).
        epsg: UTM CRS of the grid.
        resolution: pixel size of the 10 m bands (20 m bands and SCL use twice that).
        dates: acquisition datetimes (UTC); default :func:`default_dates` (2023, 73 dates).
        cloud_fractions: per-date cloud fraction overriding the climatological draw.
        partial_swath: index of the date with a corner outside the swath (-1: pick one in
            spring; None: none).
        baseline: ``s2:processing_baseline`` of every item.
        mgrs_tile: the Sentinel-2 tile the items name (ids, ``s2:mgrs_tile``, ``grid:code``).
        plant: opt-in: a material no class describes (``glacier`` or ``solar``), planted as a
            ``plant_px`` square inside the AOI (at 30 % of its height and 60 % of its width);
            its truth is 255 and ``planted.tif`` (uint8 1/0) marks it. None (the demo): the
            catalog is byte for byte the unplanted one.
        plant_px: edge of the planted square in pixels.
        years: opt-in: several years of the same landscape with planted change
            (:mod:`pipeline.testing.demo.change`: a forest cleared, a field built on, a lake
            shrunk, in several sizes down to 1 px, inside the AOI). Every year gets ``dates``
            (default :func:`default_dates` of that year; given dates are moved to each year),
            with its own clouds, gaps and noise. Beside ``truth.tif`` (the first year) it writes
            ``truth_<year>.tif`` per year, ``change.tif`` (band 1 from-class in the first year,
            band 2 to-class in the last, 255 nodata) and the patches in ``truth.json``
            (``changes``). None (the demo): one year, byte for byte as before.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    w, s, e, n = (float(v) for v in bounds)
    if any(round(v / (2 * resolution)) * 2 * resolution != v for v in (w, s, e, n)):
        raise ValueError(f"bounds must be multiples of {2 * resolution:g} m, got {bounds}")
    land = build_landscape(seed, (w, s, e, n), resolution, aoi)
    if plant is not None:
        land.plant(plant, _plant_box(land.classes.shape, (w, s, e, n), aoi, resolution, plant_px))
    lands, changes = {}, []
    if years is not None:
        years = sorted({int(y) for y in years})
        dates = _dates_in_years(dates, years)
        changes = plan_changes(
            land,
            np.random.default_rng([seed, 5]),
            years,
            _core(land, (w, s, e, n), aoi, resolution),
        )
        lands = {y: landscape_in(land, changes, y, np.random.default_rng([seed, 6])) for y in years}
    dates = list(dates) if dates is not None else default_dates()
    rng = np.random.default_rng([seed, 2])
    specs = draw_specs(rng, [d.month for d in dates])
    if cloud_fractions is not None:
        if len(cloud_fractions) != len(dates):
            raise ValueError("cloud_fractions needs one value per date")
        specs = [
            SceneSpec(float(c), sp.cirrus, sp.snow, sp.partial_swath, sp.defects)
            for c, sp in zip(cloud_fractions, specs, strict=True)
        ]
    if partial_swath is not None and dates:
        i = partial_swath
        if i == -1:
            spring = [k for k, d in enumerate(dates) if d.month in (4, 5)]
            i = spring[len(spring) // 2] if spring else len(dates) // 2
        sp = specs[i]
        specs[i] = SceneSpec(sp.cloud_fraction, sp.cirrus, sp.snow, True, sp.defects)
    keys = EARTH_SEARCH_V1_KEYS if layout == "earth-search-v1" else PC_KEYS
    # DN carry BOA_ADD_OFFSET from baseline 04.00 on, unless the catalogue removed it (ES v1)
    new_baseline = tuple(int(v) for v in baseline.split(".")) >= (4, 0)
    dn_offset = 1000 if layout == "planetary-computer" and new_baseline else 0
    items = []
    for k, (when, spec) in enumerate(zip(dates, specs, strict=True)):
        doy = when.timetuple().tm_yday
        scene = render(
            lands.get(when.year, land), doy, spec, np.random.default_rng([seed, 3, k]), resolution
        )
        platform = "sentinel-2a" if k % 2 == 0 else "sentinel-2b"
        item_id = _item_id(layout, platform, when, k, mgrs_tile)
        folder = root / "items" / item_id
        folder.mkdir(parents=True, exist_ok=True)
        hrefs: dict[str, tuple[str, tuple[int, int], float]] = {}
        for bi, band in enumerate(BANDS):
            f = NATIVE_RESOLUTION[band] // 10
            refl = scene.reflectance[bi]
            data = block_mean(refl, f) if f > 1 else refl
            nod = block_mean(scene.nodata.astype(np.float32), f) > 0 if f > 1 else scene.nodata
            dn = np.clip(np.round(data * 10000.0) + dn_offset, 1, 65535).astype(np.uint16)
            dn[nod] = 0
            path = folder / f"{keys[band]}.tif"
            res = resolution * f
            write_provider_cog(path, dn, (w, n), res, epsg)
            hrefs[band] = (path.as_uri(), dn.shape, res)
        path = folder / f"{keys[SCL]}.tif"
        write_provider_cog(path, scene.scl, (w, n), 2 * resolution, epsg)
        hrefs[SCL] = (path.as_uri(), scene.scl.shape, 2 * resolution)
        items.append(
            _item(
                layout,
                item_id,
                platform,
                when,
                scene.scl,
                hrefs,
                keys,
                (w, s, e, n),
                epsg,
                baseline,
                mgrs_tile,
            )  # fmt: skip
        )
    write_json(root / "items.json", {"type": "FeatureCollection", "features": items})
    write_json(root / "collection.json", _collection(items, layout))
    extra = {"years": years, "changes": [c.to_dict() for c in changes]} if years else {}
    _write_truth(
        root, land, (w, n), resolution, epsg, seed, (w, s, e, n), aoi, layout, plant, extra
    )
    if years:
        _write_years_truth(root, lands, (w, n), resolution, epsg)
    if land.planted is not None:
        prof = {
            "driver": "COG", "height": land.classes.shape[0], "width": land.classes.shape[1],
            "count": 1, "dtype": "uint8", "crs": f"EPSG:{epsg}",
            "transform": Affine(resolution, 0, w, 0, -resolution, n), "compress": "DEFLATE",
        }  # fmt: skip
        with rasterio.open(root / "planted.tif", "w", **prof) as dst:
            dst.write(land.planted.astype(np.uint8), 1)
    return root


def _dates_in_years(dates: Sequence[dt.datetime] | None, years: list[int]) -> list[dt.datetime]:
    """The acquisition dates of every year: :func:`default_dates` of each year, or ``dates``
    moved to each year (29 February becomes 28 February in other years)."""
    if dates is None:
        return [d for y in years for d in default_dates(y)]
    out = []
    for y in years:
        for d in dates:
            day = min(d.day, 28) if (d.month, d.day) == (2, 29) else d.day
            out.append(d.replace(year=y, day=day))
    return out


def _core(land: Landscape, bounds, aoi, resolution) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of the AOI on the landscape grid (the whole grid without one)."""
    h, w_px = land.classes.shape
    if aoi is None:
        return 0, 0, h, w_px
    w, _, _, n = bounds
    aw, as_, ae, an = aoi
    return (
        max(0, round((n - an) / resolution)),
        max(0, round((aw - w) / resolution)),
        min(h, round((n - as_) / resolution)),
        min(w_px, round((ae - w) / resolution)),
    )


def _class_cog(path: Path, bands: list[np.ndarray], origin, resolution, epsg) -> None:
    """uint8 class COG(s) with nodata 255 and the demo class names in its tags."""
    profile = {
        "driver": "COG", "height": bands[0].shape[0], "width": bands[0].shape[1],
        "count": len(bands), "dtype": "uint8", "crs": f"EPSG:{epsg}",
        "transform": Affine(resolution, 0, origin[0], 0, -resolution, origin[1]),
        "nodata": 255, "compress": "DEFLATE", "blocksize": 256, "overview_resampling": "nearest",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for i, band in enumerate(bands, 1):
            dst.write(band, i)
        dst.update_tags(
            class_names=json.dumps(list(CLASS_NAMES)),
            **{f"class_{i}": name for i, name in enumerate(CLASS_NAMES)},
        )


def _write_years_truth(root: Path, lands: dict[int, Landscape], origin, resolution, epsg) -> None:
    """``truth_<year>.tif`` per year and ``change.tif`` (from first year, to last year)."""
    for year, land in lands.items():
        _class_cog(root / f"truth_{year}.tif", [land.classes], origin, resolution, epsg)
    first, last = lands[min(lands)].classes, lands[max(lands)].classes
    _class_cog(root / "change.tif", list(change_truth(first, last)), origin, resolution, epsg)


def _plant_box(shape, bounds, aoi, resolution, px) -> tuple[int, int, int, int]:
    """(row0, col0, row1, col1) of a ``px`` square at 30 % of the AOI's height, 60 % of its width."""
    w, _, _, n = bounds
    aw, as_, ae, an = aoi if aoi is not None else bounds
    r = round((n - an) / resolution + 0.3 * (an - as_) / resolution)
    c = round((aw - w) / resolution + 0.6 * (ae - aw) / resolution)
    r0, c0 = min(max(0, r - px // 2), shape[0] - px), min(max(0, c - px // 2), shape[1] - px)
    return r0, c0, r0 + px, c0 + px


def _item_id(
    layout: str, platform: str, when: dt.datetime, k: int, mgrs_tile: str = MGRS_TILE
) -> str:
    sat = "S2A" if platform.endswith("a") else "S2B"
    if layout == "earth-search-v1":
        return f"{sat}_{mgrs_tile}_{when:%Y%m%d}_0_L2A"
    return f"{sat}_MSIL2A_{when:%Y%m%dT%H%M%S}_R065_T{mgrs_tile}_{when:%Y%m%dT}150000"


def write_provider_cog(
    path: Path,
    data: np.ndarray,
    origin: tuple[float, float],
    res: float,
    epsg: int,
    blocksize: int = 256,
) -> None:
    """One band as a provider writes it (Earth Search's sentinel-cogs): a COG with DEFLATE,
    predictor 2, nodata 0 and nearest overviews; ``origin`` is the upper-left corner (x, y) in
    metres of EPSG:``epsg``, ``res`` the pixel size in metres, ``blocksize`` the internal tile
    edge (the providers use 1024 px). Written to a temporary name, then renamed into place."""

    profile = {
        "driver": "COG",
        "height": data.shape[0],
        "width": data.shape[1],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": Affine(res, 0, origin[0], 0, -res, origin[1]),
        "nodata": 0,
        "compress": "DEFLATE",
        "predictor": 2,
        "blocksize": blocksize,
        "overview_resampling": "nearest",
    }
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)


@functools.lru_cache(maxsize=64)
def _to_lonlat(epsg: int) -> Any:

    return Transformer.from_crs(epsg, 4326, always_xy=True)


def _footprint(bounds: Sequence[float], epsg: int) -> tuple[dict[str, Any], list[float]]:
    tr = _to_lonlat(epsg)
    w, s, e, n = bounds
    ring = [tr.transform(x, y) for x, y in [(w, s), (e, s), (e, n), (w, n), (w, s)]]
    ring = [[round(x, 7), round(y, 7)] for x, y in ring]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return {"type": "Polygon", "coordinates": [ring]}, [min(xs), min(ys), max(xs), max(ys)]


def _scl_stats(scl: np.ndarray) -> dict[str, float]:
    total = scl.size
    valid = max(int((scl != 0).sum()), 1)

    def pct(*codes: int) -> float:
        return round(100.0 * float(np.isin(scl, codes).sum()) / valid, 4)

    return {
        "nodata": round(100.0 * float((scl == 0).sum()) / total, 4),
        "cloud": pct(8, 9, 10),
        "high": pct(9),
        "medium": pct(8),
        "cirrus": pct(10),
        "shadow": pct(3),
        "snow": pct(11),
        "veg": pct(4),
        "notveg": pct(5),
        "water": pct(6),
        "unclassified": pct(7),
        "defective": pct(1),
    }


def _item(
    layout, item_id, platform, when, scl, hrefs, keys, bounds, epsg, baseline, mgrs_tile=MGRS_TILE
) -> dict:
    geometry, bbox = _footprint(bounds, epsg)
    st = _scl_stats(scl)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sat = "S2A" if platform.endswith("a") else "S2B"
    product = f"{sat}_MSIL2A_{when:%Y%m%dT%H%M%S}_N{baseline.replace('.', '')}_R065_T{mgrs_tile}_{when:%Y%m%dT}150000"
    props: dict[str, Any] = {
        "datetime": stamp,
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": st["cloud"],
        "proj:epsg": epsg,
        "s2:processing_baseline": baseline,
        "s2:product_type": "S2MSI2A",
        "s2:product_uri": f"{product}.SAFE",
        "s2:mgrs_tile": mgrs_tile,
        "s2:nodata_pixel_percentage": st["nodata"],
        "s2:high_proba_clouds_percentage": st["high"],
        "s2:medium_proba_clouds_percentage": st["medium"],
        "s2:thin_cirrus_percentage": st["cirrus"],
        "s2:cloud_shadow_percentage": st["shadow"],
        "s2:snow_ice_percentage": st["snow"],
        "s2:vegetation_percentage": st["veg"],
        "s2:not_vegetated_percentage": st["notveg"],
        "s2:water_percentage": st["water"],
        "s2:unclassified_percentage": st["unclassified"],
        "s2:saturated_defective_pixel_percentage": st["defective"],
        "sat:relative_orbit": 65,
        "sat:orbit_state": "descending",
    }
    ext = [
        "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
        "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    ]
    if layout == "earth-search-v1":
        props.update(
            {
                "mgrs:utm_zone": int(mgrs_tile[:2]),
                "mgrs:latitude_band": mgrs_tile[2],
                "mgrs:grid_square": mgrs_tile[3:],
                "grid:code": f"MGRS-{mgrs_tile}",
                "s2:sequence": "0",
                # Earth Search v1 removes the 04.00 offset from the DN and says so
                "earthsearch:boa_offset_applied": tuple(map(int, baseline.split("."))) >= (4, 0),
                "processing:software": {"s2lc-demo-generator": "1"},
            }
        )
        ext += [
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
        ]
    assets: dict[str, Any] = {}
    for band, (href, shape, res) in hrefs.items():
        transform = [res, 0.0, bounds[0], 0.0, -res, bounds[3]]
        asset: dict[str, Any] = {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"] if band == SCL else ["data", "reflectance"],
            "gsd": res,
            "proj:shape": list(shape),
            "proj:transform": transform,
        }
        if band == SCL:
            asset["title"] = "Scene classification map (SCL)"
            if layout == "earth-search-v1":
                asset["raster:bands"] = [
                    {"nodata": 0, "data_type": "uint8", "spatial_resolution": res}
                ]
        else:
            common, desc, centre, fwhm = _BAND_INFO[band]
            asset["title"] = f"{desc} - {res:g}m"
            asset["eo:bands"] = [
                {"name": keys[band], "common_name": common, "description": desc,
                 "center_wavelength": centre, "full_width_half_max": fwhm}
            ]  # fmt: skip
            if layout == "earth-search-v1":
                asset["raster:bands"] = [
                    {"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                     "spatial_resolution": res, "scale": 0.0001, "offset": -0.1}
                ]  # fmt: skip
        assets[keys[band]] = asset
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ext,
        "id": item_id,
        "collection": COLLECTION,
        "geometry": geometry,
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": assets,
    }


def _collection(items: list[dict], layout: str) -> dict:
    bboxes = np.array([it["bbox"] for it in items]) if items else np.zeros((1, 4))
    times = sorted(it["properties"]["datetime"] for it in items) or [None]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": COLLECTION,
        "title": f"Synthetic Sentinel-2 L2A ({layout} layout)",
        "description": "Seeded synthetic Sentinel-2 L2A scenes for the offline demo and tests "
        "(s2lc pipeline.demo); not real imagery.",  # old module name: the catalog stays the same
        "license": "CC0-1.0",
        "extent": {
            "spatial": {
                "bbox": [
                    [
                        float(bboxes[:, 0].min()),
                        float(bboxes[:, 1].min()),
                        float(bboxes[:, 2].max()),
                        float(bboxes[:, 3].max()),
                    ]
                ]
            },
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": [],
    }


def _write_truth(
    root, land, origin, resolution, epsg, seed, bounds, aoi, layout, plant=None, extra=None
):

    profile = {
        "driver": "COG",
        "height": land.classes.shape[0],
        "width": land.classes.shape[1],
        "count": 1,
        "dtype": "uint8",
        "crs": f"EPSG:{epsg}",
        "transform": Affine(resolution, 0, origin[0], 0, -resolution, origin[1]),
        "nodata": 255,
        "compress": "DEFLATE",
        "blocksize": 256,
        "overview_resampling": "nearest",
    }
    with rasterio.open(root / "truth.tif", "w", **profile) as dst:
        dst.write(land.classes, 1)
        dst.update_tags(
            class_names=json.dumps(list(CLASS_NAMES)),
            **{f"class_{i}": name for i, name in enumerate(CLASS_NAMES)},
        )
    write_json(
        root / "truth.json",
        {
            "classes": {str(i): name for i, name in enumerate(CLASS_NAMES)},
            "params": {
                "seed": seed,
                "bounds": list(bounds),
                "aoi": list(aoi) if aoi is not None else None,
                "resolution": resolution,
                "epsg": epsg,
                "layout": layout,
                **({"plant": plant} if plant is not None else {}),
                **({"years": extra["years"]} if extra else {}),
            },
            **({"changes": extra["changes"]} if extra else {}),
        },
    )
