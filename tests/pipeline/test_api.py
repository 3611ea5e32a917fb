"""The public Python API (``pipeline/__init__.py``): one import path per name, loaded lazily.

Scripts outside the project (``../shared/cases``) import these names from ``pipeline``; the
stages' own module paths may move, these may not. ``import pipeline`` and the base and the command
line must not import the stages: that would undo the layers at run time and slow every command.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import pipeline
from tests.paths import REPO_ROOT

PUBLIC = {
    "BANDS": "pipeline.stac.bands",
    "SearchConfig": "pipeline.stac.search",
    "search_items": "pipeline.stac.search",
    "search_scenes": "pipeline.stac.search",
    "load_cube": "pipeline.reading.cube",
    "make_grid": "pipeline.grid.tiling",
    "aoi_mask": "pipeline.grid.tiling",
    "UserError": "pipeline.base.errors",
}
STAGES = ("stac", "grid", "reading", "composite", "adapters", "writers", "run", "field")


def test_every_public_name_is_the_object_its_stage_defines():
    assert sorted(pipeline.__all__) == sorted(PUBLIC)
    for name, module in PUBLIC.items():
        assert getattr(pipeline, name) is getattr(importlib.import_module(module), name), name
    assert set(PUBLIC) <= set(dir(pipeline))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pipeline.nope  # noqa: B018


def test_search_items_is_the_search_not_a_run_helper():
    import inspect

    params = list(inspect.signature(pipeline.search_items).parameters)
    assert params == ["geometry", "start", "end", "cfg"]


@pytest.mark.parametrize("imports", ["pipeline", "pipeline.base", "pipeline.cli"])
def test_importing_the_package_base_or_command_line_loads_no_stage(imports):
    code = (
        f"import sys, {imports}\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('pipeline') or m == 'torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    assert imports in loaded
    assert not [m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in STAGES], loaded
    assert "torch" not in loaded


@pytest.mark.parametrize("old", ["pipeline.runner", "pipeline.stac_server", "pipeline.demo"])
def test_the_former_aliases_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


def test_the_case_scripts_entry_points_stay_where_they_are():
    from aoi import load_region, to_crs  # noqa: F401
    from pipeline.testing.demo import generate_catalog
    from pipeline.testing.stac_server import serve

    assert callable(generate_catalog) and callable(serve)
