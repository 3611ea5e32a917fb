"""Fixtures for the slow integration tests: a real Slurm and a real pgstac API on loopback.

Both are session-scoped, bootstrap themselves on a fresh machine (Debian packages via apt-get,
the pgstac server's own venv) and stop every process they started at the end of the session.
Where the machine cannot provide them (no apt-get, not root, packages not installable), the tests
that need them are skipped with the exact reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from .services import Unavailable
from .slurm import LocalSlurm, SlurmInfo

REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Iterator[SlurmInfo]:
    """A running single-node Slurm cluster; ``SLURM_CONF`` points at it while the session runs."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        info = cluster.start()
    except Unavailable as exc:
        pytest.skip(f"real Slurm unavailable: {exc}")
    try:
        yield info
    finally:
        cluster.stop()
