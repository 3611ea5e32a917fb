"""Fixtures for the real-data suite (``make test-real``): real Sentinel-2 samples from the folder
named by ``S2LC_REAL_DATA`` (never committed; every test here skips cleanly without it).

- ``real_root``: the samples' folder (skips when unset or missing).
- ``flanders_catalog`` / ``flanders_stac``: both WorldCereal Flanders sites converted into an
  Earth Search v1 catalog (:mod:`flanders`) and served by the project's local STAC API.
- ``regions``: a region YAML per site (its exact 64 x 64 px extent, the mapped year).
- ``tsc_maps``: ``run --model timesenclip --untrained --save-composite`` on each site, through
  the real CLI, STAC API and a 2-worker LocalCluster; shared by the composite, map and few-shot
  tests so each site is mapped once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .flanders import YEARS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def real_root() -> Path:
    value = os.environ.get("S2LC_REAL_DATA")
    if not value:
        pytest.skip("S2LC_REAL_DATA is not set (real Sentinel-2 samples; see make test-real)")
    root = Path(value).expanduser().resolve()
    if not (root / "worldcereal-flanders").is_dir():
        pytest.skip(f"S2LC_REAL_DATA={value} has no worldcereal-flanders folder")
    return root


@pytest.fixture(scope="session")
def flanders_catalog(real_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from . import flanders

    return flanders.write_site_catalog(real_root, tmp_path_factory.mktemp("flanders-catalog"))


@pytest.fixture(scope="session")
def flanders_stac(flanders_catalog: Path) -> Iterator[str]:
    from pipeline.testing.stac_server import serve

    with serve(flanders_catalog) as url:
        yield url


@pytest.fixture(scope="session")
def regions(real_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from . import flanders

    folder = tmp_path_factory.mktemp("regions")
    return {
        tile: flanders.write_region(
            flanders.Site.find(real_root, tile), folder / f"{tile}.yaml", YEARS[tile]
        )
        for tile in flanders.SITES
    }


def run_cli(*args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` from the repository root; fails the test on a non-zero exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pipeline", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:2])} failed ({out.returncode}):\n{out.stderr[-3000:]}"
        )
    return out


def run_args(tile: str, regions: dict[str, Path], stac_url: str, out: Path) -> list[str]:
    """The ``run`` options shared by every map of a site (every scene, 2 workers, one tile)."""
    return [
        "run", "--region", str(regions[tile]), "--year", str(YEARS[tile]),
        "--stac-url", stac_url, "--max-cloud", "100", "--untrained", "--tile-size", "64",
        "--workers", "2", "--no-progress", "--out", str(out),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def cli():
    """:func:`run_cli`."""
    return run_cli


@pytest.fixture(scope="session")
def map_args(regions: dict[str, Path], flanders_stac: str):
    """``map_args(tile, out)``: :func:`run_args` for this session's regions and STAC API."""
    return lambda tile, out: run_args(tile, regions, flanders_stac, out)


@pytest.fixture(scope="session")
def tsc_maps(
    regions: dict[str, Path],
    flanders_stac: str,
    session_cache_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """TimeSenCLIP (untrained) maps of both sites with their composites in map.zarr."""
    outs = {}
    for tile in YEARS:
        out = tmp_path_factory.mktemp(f"tsc-{tile}") / "map"
        run_cli(*run_args(tile, regions, flanders_stac, out), "--save-composite")
        outs[tile] = out
    return outs
