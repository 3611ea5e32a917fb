"""Fixtures for the slow integration tests: a real Slurm and a real pgstac API on loopback.

Both are session-scoped, bootstrap themselves on a fresh machine (Debian packages via apt-get,
the pgstac server's own venv) and stop every process they started at the end of the session.
Where the machine cannot provide them (no apt-get, not root, packages not installable), the tests
that need them are skipped with the exact reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .pgstac import LocalPgstac
from .services import Unavailable
from .slurm import LocalSlurm, SlurmInfo

REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)

TIMINGS: dict[str, dict[str, float]] = {}
"""Seconds per bootstrap step of each service, printed at the end of the session."""


def pytest_terminal_summary(terminalreporter) -> None:
    for name, steps in TIMINGS.items():
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in steps.items())
        terminalreporter.write_line(f"integration {name} bootstrap: {parts}")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def demo_bbox() -> tuple[float, float, float, float]:
    """The central quarter of the demo region (about 1 x 1 km, 100 x 100 pixels), in lon/lat."""
    from aoi import load_region

    w, s, e, n = load_region("demo").bbox
    dx, dy = (e - w) / 4, (n - s) / 4
    return (round(w + dx, 6), round(s + dy, 6), round(e - dx, 6), round(n - dy, 6))


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[SlurmInfo]:
    """A running single-node Slurm cluster; ``SLURM_CONF`` points at it while the session runs."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        info = cluster.start()
    except Unavailable as exc:
        pytest.skip(f"real Slurm unavailable: {exc}")
    TIMINGS["slurm"] = info.timings
    try:
        yield info
    finally:
        t0 = time.monotonic()
        cluster.stop()
        TIMINGS["slurm"]["teardown_s"] = time.monotonic() - t0


@pytest.fixture(scope="session")
def pgstac_server(demo_catalog: Path) -> Iterator[LocalPgstac]:
    """A running pgstac API with the demo catalog loaded (``.collection``, ``.catalog``, ``.url``).

    ``demo_catalog`` comes from tests/conftest.py (the generated demo catalog, file:// asset hrefs).
    """
    server = LocalPgstac()
    try:
        server.start()
    except Unavailable as exc:
        pytest.skip(f"real pgstac unavailable: {exc}")
    try:
        server.load_catalog(demo_catalog)
        TIMINGS["pgstac"] = server.timings
        yield server
    finally:
        t0 = time.monotonic()
        server.stop()
        server.timings["teardown_s"] = time.monotonic() - t0


@pytest.fixture(scope="session")
def pgstac_api(pgstac_server: LocalPgstac) -> str:
    """Base URL of the running pgstac STAC API (demo catalog loaded)."""
    return pgstac_server.url
