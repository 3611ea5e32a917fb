"""Where the suite finds the repository and its committed test data, wherever a test file sits."""

from __future__ import annotations

from pathlib import Path

#: The repository's root (where the Makefile is).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Committed test inputs with their provenance (tests/data/README.md).
TEST_DATA = REPO_ROOT / "tests" / "data"
