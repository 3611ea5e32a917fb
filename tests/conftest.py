"""Shared fixtures: the demo catalog behind a real STAC API, small catalogs, an offline session.

- ``demo_catalog`` (session): the full demo catalog (2023, 73 dates), generated once per test run
  into a temporary cache (``S2LC_CACHE_DIR`` points there for the whole session, so
  ``ensure_demo_catalog()`` and the ``demo`` STAC profile find it). The cache is one folder for
  all xdist workers of the run (:func:`shared_root`): the demo catalog, the untrained text
  towers and the classifiers are built once, under the file locks and atomic writes their
  builders already use.
- ``demo_stac_url`` (session): a running local STAC API (rustac) over it.
- ``change_demo`` (session): the two-year demo with planted change mapped with ``run --years``
  (:func:`pipeline.bench.change.change_workflow`: head fitted on the first year, 1 km box).
- ``demo_map`` (session): the shared end-to-end demo map with its embedding field
  (tests/demo_map.py), made once per test run and shared by all workers; read-only for the tests
  that use it.
- ``small_catalog`` / ``small_pc_catalog`` (session): the same small scene (640 m, 12 dates,
  seed 7) in the Earth Search v1 and the Planetary Computer layout, for quick tests.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SMALL_BOUNDS = (600000.0, 5340000.0, 600640.0, 5340640.0)
SMALL_DATES = [
    dt.datetime(2023, m, d, 10, 30, tzinfo=dt.UTC) for m in (5, 6) for d in range(1, 31, 5)
]


def pytest_configure(config: pytest.Config) -> None:
    # Nothing is downloaded in tests: Hugging Face and torch hubs stay offline.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Map runs use fp32 unless a test asks for --backend: `auto` times every backend (OpenVINO
    # compiles included) once per model and classifier, which tests/model/test_backends.py and
    # tests/model/test_precision.py cover; paid again in every map test it cost minutes.
    os.environ.setdefault("S2LC_BACKEND", "fp32")
    # affine 3 deprecates `*` for matrix products; odc-geo still uses it (thousands of lines)
    config.addinivalue_line("filterwarnings", "ignore:Use `@` matmul:PendingDeprecationWarning")
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary folder of this test run that all its xdist workers share (each worker's own
    base folder is ``<run>/popen-gwN``); the run's base folder without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temporary cache root for the test run (``S2LC_CACHE_DIR``), shared by its workers."""
    path = shared_root(tmp_path_factory) / "s2lc-cache"
    path.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("S2LC_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def demo_catalog(session_cache_dir: Path) -> Path:
    """The full demo catalog folder (collection.json, items.json, COGs, truth.tif/json)."""
    from pipeline.testing.demo import demo_catalog_dir, ensure_demo_catalog

    root = ensure_demo_catalog()
    assert root == demo_catalog_dir().resolve()
    return root


@pytest.fixture(scope="session")
def demo_stac_url(demo_catalog: Path) -> Iterator[str]:
    """Base URL of a real STAC API on 127.0.0.1 serving the demo catalog."""
    from pipeline.testing.stac_server import serve

    with serve(demo_catalog) as url:
        yield url


@pytest.fixture(scope="session")
def demo_map(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory):
    """The suite's shared end-to-end demo map (:class:`tests.demo_map.DemoMap`), made once per
    test run by whichever worker asks first. Read it only: a test that writes makes its own map."""
    from tests.demo_map import make_demo_map

    return make_demo_map(shared_root(tmp_path_factory) / "demo-map")


def _small(tmp_path_factory: pytest.TempPathFactory, layout: str) -> Path:
    from pipeline.testing.demo import generate_catalog

    root = tmp_path_factory.mktemp(f"small-{layout}")
    return generate_catalog(
        root,
        seed=7,
        layout=layout,
        bounds=SMALL_BOUNDS,
        aoi=SMALL_BOUNDS,
        dates=SMALL_DATES,
        partial_swath=None,
    )


@pytest.fixture(scope="session")
def small_params() -> dict:
    """The generator parameters of ``small_catalog`` (layout aside)."""
    return {"seed": 7, "bounds": SMALL_BOUNDS, "aoi": SMALL_BOUNDS, "dates": SMALL_DATES,
            "partial_swath": None}  # fmt: skip


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640 m x 640 m, 12-date catalog in the Earth Search v1 layout (seed 7)."""
    return _small(tmp_path_factory, "earth-search-v1")


@pytest.fixture(scope="session")
def small_pc_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same scenes as ``small_catalog`` in the Planetary Computer layout (DN + 1000)."""
    return _small(tmp_path_factory, "planetary-computer")


@pytest.fixture(scope="session")
def small_eopf_catalog(small_pc_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``small_pc_catalog``'s scenes as ESA EOPF Zarr products (real tile size and chunking)."""
    from pipeline.testing.eopf import eopf_catalog

    return eopf_catalog(small_pc_catalog, tmp_path_factory.mktemp("small-eopf"))


@pytest.fixture(scope="session")
def change_demo(tmp_path_factory: pytest.TempPathFactory, session_cache_dir: Path):
    """The two-year planted-change demo, mapped once per session (a few minutes)."""
    from pipeline.bench.change import change_workflow

    return change_workflow(tmp_path_factory.mktemp("change-demo"))
