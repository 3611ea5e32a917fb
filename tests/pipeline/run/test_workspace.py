"""The output folder in-process: prepare, resume, conflicts, tile markers, failures, publishing.

No run is needed: every state a run leaves in ``.s2lc/`` is made here directly.
"""

from __future__ import annotations

import json

import pytest

from pipeline.base.errors import UserError
from pipeline.run.workspace import TileFailure, Workspace


def _failure(tile: str = "r0000_c0001", attempts: int = 2) -> TileFailure:
    return TileFailure(
        tile=tile,
        error_kind="read_failure",
        message="ReadFailure: HTTP 503",
        attempts=attempts,
        http_status=503,
        scenes=("S2A_1", "S2B_2"),
        time="2026-01-01T00:00:00Z",
    )


def test_a_fresh_folder_is_prepared_and_a_manifest_makes_the_next_run_resume(tmp_path):
    ws = Workspace(tmp_path / "out")
    assert ws.prepare("h1", overwrite=False) is False
    assert ws.tiles.is_dir() and ws.manifest() is None
    ws.save_manifest({"output_hash": "h1"})
    assert Workspace(tmp_path / "out").prepare("h1", overwrite=False) is True


def test_other_settings_are_refused_before_anything_is_written(tmp_path):
    ws = Workspace(tmp_path)
    ws.prepare("h1", overwrite=False)
    ws.save_manifest({"output_hash": "h1"})
    ws.mark_done("r0000_c0000", {"pixels": 4})
    with pytest.raises(UserError, match="other settings .*h1 != h2"):
        ws.prepare("h2", overwrite=False)
    assert ws.done_tiles() == {"r0000_c0000": {"pixels": 4}}  # untouched

    loose = Workspace(tmp_path / "loose")
    (loose.out).mkdir()
    (loose.out / "classes.tif").write_bytes(b"not ours")
    with pytest.raises(UserError, match="already holds map products"):
        loose.check_conflict("h1", overwrite=False)


def test_overwrite_clears_products_and_staging_but_nothing_else(tmp_path):
    ws = Workspace(tmp_path)
    ws.prepare("h1", overwrite=False)
    ws.save_manifest({"output_hash": "h1"})
    ws.mark_done("r0000_c0000", {})
    for name in (
        "classes.tif",
        "classes.tif.aux.xml",
        "field.tif",
        "composite_rgb.tif",
        "composite_rgb.png",
    ):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "cells").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    assert ws.prepare("h2", overwrite=True) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s2lc", "notes.txt"]
    assert ws.done_tiles() == {} and ws.manifest() is None


def test_done_markers_round_trip_and_strays_are_ignored(tmp_path):
    ws = Workspace(tmp_path)
    ws.prepare("h", overwrite=False)
    ws.mark_done("r0001_c0002", {"valid_pixels": 10, "seconds": {"infer": 0.5}})
    (ws.tiles / "r0009_c0009.json").write_text("{not json")  # a torn stray: never complete
    assert ws.done_tiles() == {"r0001_c0002": {"valid_pixels": 10, "seconds": {"infer": 0.5}}}
    assert [p.name for p in ws.tiles.iterdir() if p.name.startswith(".")] == []


def test_a_failure_is_kept_until_the_tile_is_done(tmp_path):
    ws = Workspace(tmp_path)
    ws.prepare("h", overwrite=False)
    fail = _failure()
    ws.record_failure(fail)
    assert ws.failed_tiles() == {fail.tile: fail}
    assert json.loads(ws.failure_path(fail.tile).read_text())["scenes"] == ["S2A_1", "S2B_2"]
    ws.mark_done(fail.tile, {})
    assert ws.failed_tiles() == {} and not ws.failure_path(fail.tile).exists()


def test_failure_records_read_back_from_older_or_newer_runs(tmp_path):
    d = _failure().to_dict()
    d["added_later"] = "ignored"
    del d["http_status"]
    back = TileFailure.from_dict(d)
    assert back.http_status is None and back.scenes == ("S2A_1", "S2B_2")


def test_the_store_is_published_and_can_be_reclaimed_for_a_redo(tmp_path):
    ws = Workspace(tmp_path)
    ws.prepare("h", overwrite=False)
    ws.store.mkdir()
    (ws.store / ".zgroup").write_text("{}")
    assert ws.reclaim_store() is False  # nothing published yet
    final = ws.publish_store()
    assert (final / ".zgroup").is_file() and not ws.store.exists()
    assert ws.reclaim_store() is True
    assert (ws.store / ".zgroup").is_file() and not final.exists()


def test_an_output_path_under_a_file_fails_early(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="is not a folder"):
        Workspace(tmp_path / "a_file" / "out").check_writable()
    assert not (tmp_path / "a_file" / "out").exists()
