"""Yearly maps on one grid (``run --years 2019-2024``): one run per year, then one store with time.

Each year is an ordinary one-year run (:func:`pipeline.run.driver.execute`) into
``<out>/<year>/`` with the same settings but the dates: its own workspace, output hash, COG set,
STAC item and ``run.json``, so a year already complete and up to date is skipped on rerun and an
interrupted year resumes. Once every year is done, :func:`stack_years` writes ``<out>/map.zarr``:
the per-year stores' variables stacked along a ``time`` dimension (the year, int), on the one
grid (a composite's own ``period`` dimension stays, labelled per year in ``period_label``); it is
rebuilt only when a year's output hash changed. ``<out>/run.json`` and ``<out>/item.json`` list the
years, their folders and hashes. A few-shot head (``--head``) is the same file for every year:
it is fitted on one year's points (``probe``), and the maps of the other years reuse it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from pipeline.base.errors import UserError
from pipeline.run.config import RunConfig, default_output_dir

_log = logging.getLogger(__name__)

#: The store's name and format of the stacked yearly maps.
STACK = "map.zarr"
_SPEC = re.compile(r"^\s*(\d{4})\s*(?:-\s*(\d{4})\s*)?$")


def parse_years(spec: str) -> list[int]:
    """``2019-2024`` (a range, inclusive), ``2021,2023`` (a list) or both (``2017-2019,2023``):
    the sorted distinct years.

    Raises:
        UserError: anything else, a range that runs backwards, or years before 2015 (Sentinel-2).
    """
    years: set[int] = set()
    for part in str(spec).split(","):
        m = _SPEC.match(part)
        if not m:
            raise UserError(f"--years {spec!r}: give a range (2019-2024) or a list (2021,2023)")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise UserError(f"--years {spec!r}: the range {a}-{b} runs backwards")
        years.update(range(a, b + 1))
    if min(years) < 2015:
        raise UserError(f"--years {spec!r}: Sentinel-2 L2A starts in 2015")
    return sorted(years)


def year_config(cfg: RunConfig, year: int, root: Path) -> RunConfig:
    """``cfg`` for one calendar year, written to ``root/<year>``."""
    return cfg.with_(
        start=dt.date(year, 1, 1), end=dt.date(year, 12, 31), out=str(root / str(year))
    )


def output_root(cfg: RunConfig) -> Path:
    """``--out``, else ``outputs/<region>/<period>/<model>/`` (the years go in subfolders)."""
    if cfg.execution.out:
        return Path(cfg.execution.out)
    from aoi import load_region

    return default_output_dir(cfg, load_region(cfg.region).name)


def execute_years(cfg: RunConfig, years: list[int]) -> int:
    """Map every year (skipping those already done), then stack them; returns the exit code
    (0 done; non-zero from the first year that did not finish, nothing stacked).

    Raises:
        UserError: a gridded (EPSG:3035) region (its 100 km cells are published as they finish;
            yearly maps are for regional runs), or fewer than one year.
    """
    from aoi import load_region
    from pipeline.grid.cells import is_gridded
    from pipeline.run.driver import execute

    if not years:
        raise UserError("--years: no year given")
    if is_gridded(load_region(cfg.region).crs):
        raise UserError("--years works on regional runs only, not on a gridded (EPSG:3035) region")
    root = output_root(cfg)
    for year in years:
        _log.info("year %d of %s: %s", year, ", ".join(map(str, years)), root / str(year))
        rc = execute(year_config(cfg, year, root))
        if rc != 0:
            return rc
    reports = {y: json.loads((root / str(y) / "run.json").read_text()) for y in years}
    hashes = {str(y): reports[y]["output_hash"] for y in years}
    previous = _read_json(root / "run.json")
    if not cfg.execution.overwrite and previous.get("years") == hashes and (root / STACK).is_dir():
        _log.info("%s is up to date for %s; nothing to stack", root / STACK, ", ".join(hashes))
        return 0
    stack_years(root, years)
    _write_summary(root, years, reports, hashes, cfg)
    _log.info("yearly maps %s stacked into %s", ", ".join(hashes), root / STACK)
    return 0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def stack_years(root: Path, years: list[int]) -> Path:
    """Write ``root/map.zarr``: every ``root/<year>/map.zarr`` stacked on a new ``time``
    dimension (coordinate: the year, int32). Variables on ``period`` keep it, the period labels
    move to ``period_label`` (time, period). Written beside, then moved into place.

    Raises:
        UserError: the years' stores are not on one grid, or have other variables.
    """
    import numpy as np
    import xarray as xr

    dsets = []
    for year in years:
        ds = xr.open_zarr(root / str(year) / STACK, decode_coords="all", consolidated=False)
        if "time" in ds.dims:  # the embedding field's own time (size 1: this year)
            ds = ds.isel(time=0, drop=True)
        if "period" in ds.dims:
            labels = ds["period"].values
            ds = ds.drop_vars("period").assign_coords(
                period=np.arange(ds.sizes["period"]), period_label=("period", labels)
            )
        dsets.append(ds)
    first = dsets[0]
    for year, ds in zip(years[1:], dsets[1:], strict=True):
        same = (
            ds.sizes == first.sizes
            and set(ds.data_vars) == set(first.data_vars)
            and all(np.array_equal(ds[c].values, first[c].values) for c in ("x", "y") if c in ds)
        )
        if not same:
            raise UserError(
                f"the {year} map is not on the grid of the {years[0]} map (or has other layers); "
                "rerun the years with the same settings"
            )
    stacked = xr.concat(
        dsets,
        dim=xr.DataArray(np.asarray(years, np.int32), dims="time", name="time"),
        data_vars="all",
        coords="minimal",
        compat="override",
        combine_attrs="override",
    )
    stacked["time"].attrs.update(long_name="year of the map", units="year")
    stacked.attrs["s2lc:years"] = [int(y) for y in years]
    for name in stacked.variables:
        stacked[name].encoding = {}
    chunks = {d: c for d, c in first.chunks.items() if d in stacked.dims}  # the years' own chunking
    stacked = stacked.chunk({**chunks, "time": 1})
    tmp = root / f".{STACK}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    stacked.to_zarr(tmp, mode="w", consolidated=False)
    final = root / STACK
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _write_summary(root: Path, years, reports, hashes, cfg: RunConfig) -> None:
    """``root/run.json`` (years, folders, hashes, head) and a STAC item listing the years."""
    from pipeline.base.jsonio import write_json

    head = cfg.model.head
    write_json(
        root / "run.json",
        {
            "status": "complete",
            "years": hashes,
            "folders": {str(y): f"{y}/" for y in years},
            "store": STACK,
            "head": head,
            "head_note": (
                "one few-shot head for every year (fitted on one year's points by 'probe')"
                if head
                else None
            ),
            "config": {
                k: v for k, v in reports[years[0]]["config"].items() if k not in ("start", "end")
            },
        },
    )
    first = _read_json(root / str(years[0]) / "item.json")
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"{first.get('id', root.name)}-years-{years[0]}-{years[-1]}",
        "geometry": first.get("geometry"),
        "bbox": first.get("bbox"),
        "properties": {
            "datetime": None,
            "start_datetime": f"{years[0]}-01-01T00:00:00Z",
            "end_datetime": f"{years[-1]}-12-31T23:59:59Z",
            "s2lc:years": [int(y) for y in years],
        },
        "links": [
            {
                "rel": "item",
                "href": f"./{y}/item.json",
                "type": "application/json",
                "title": f"the {y} map",
            }
            for y in years
        ],  # fmt: skip
        "assets": {
            "map": {
                "href": f"./{STACK}",
                "type": "application/vnd+zarr",
                "title": "the yearly maps stacked on a time dimension (the year)",
                "roles": ["data"],
            }
        },
    }
    write_json(root / "item.json", item)
