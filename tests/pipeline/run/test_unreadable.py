"""Permanently unreadable scenes in the run's books: the ledger, the limit, resumed runs (issue 26)."""

from __future__ import annotations

import pytest

from pipeline.base.errors import UserError
from pipeline.run.config import ExecutionConfig, too_many_unreadable, unreadable_limit
from pipeline.run.reporting import ledger_from_tiles
from pipeline.run.workspace import TileFailure
from pipeline.stac.scenes import SceneLedger


def test_max_unreadable_default_tolerates_one_in_four_and_5_percent_of_a_continent():
    spec = ExecutionConfig().max_unreadable
    assert unreadable_limit(spec) == (0.05, 2)
    assert not too_many_unreadable(spec, 1, 4)  # the case: 1 of 4 scenes
    assert not too_many_unreadable(spec, 2, 4)  # more than 5 %, but not more than 2 scenes
    assert too_many_unreadable(spec, 3, 4)
    assert not too_many_unreadable(spec, 1, 30)  # a rehearsal
    assert not too_many_unreadable(spec, 4700, 94000)  # EU-27: 5 % exactly
    assert too_many_unreadable(spec, 4701, 94000)
    assert not too_many_unreadable(spec, 0, 0)
    assert too_many_unreadable("0", 1, 1000) and not too_many_unreadable("1", 1, 1000)
    assert too_many_unreadable("1%", 2, 100) and not too_many_unreadable("1%", 1, 100)


@pytest.mark.parametrize("bad", ["", "x", "5%%", "-1", "150%", "5%,2,3", "2,3"])
def test_max_unreadable_rejects_bad_values_in_one_line(bad):
    with pytest.raises(UserError) as info:
        ExecutionConfig(max_unreadable=bad)
    assert "--max-unreadable" in str(info.value) and "\n" not in str(info.value)


def _stats(tile: str, unreadable: dict) -> dict:
    return {"tile": tile, "unreadable": unreadable, "offset_warnings": {}}


def test_ledger_keeps_a_dropped_scene_with_status_asset_tiles_from_done_and_resumed_tiles():
    rec = {"kind": "http", "status": 404, "permanent": True, "asset": "http://h/s2/B04.tif",
           "message": "HTTP 404: gone (http://h/s2/B04.tif)", "scenes": ["s2"]}  # fmt: skip
    ledger = SceneLedger()
    for sid in ("s1", "s2", "s3"):
        ledger.use(sid)
    # one tile done in an earlier run, one in this run; another scene failed a tile transiently
    stats = {"r0_c0": _stats("r0_c0", {"s2": rec}), "r0_c1": _stats("r0_c1", {"s2": rec})}
    failed = {"r1_c0": TileFailure("r1_c0", "read_failure", "HTTP 503", 3, http_status=503,
                                   scenes=("s3",))}  # fmt: skip
    ledger_from_tiles(ledger, stats, failed)
    e = ledger.scenes["s2"]
    assert (e["status"], e["reason"], e["http_status"], e["permanent"]) == (
        "dropped", "read_failure", 404, True)  # fmt: skip
    assert e["asset"] == "http://h/s2/B04.tif" and e["tiles"] == ["r0_c0", "r0_c1"]
    t = ledger.scenes["s3"]
    assert (t["reason"], t["http_status"], t["permanent"]) == ("read_failure", 503, False)
    assert ledger.unreadable() == ["s2"]
    assert ledger.counts() == {"returned": 3, "used": 1, "read_failure": 2}
    (line,) = ledger.unreadable_lines()
    assert "s2" in line and "HTTP 404" in line and "B04.tif" in line and "2 tile(s)" in line
    # the ledger survives run.json/the manifest and a resumed run adds to it
    again = SceneLedger.from_dict(ledger.to_dict())
    ledger_from_tiles(again, {"r2_c0": _stats("r2_c0", {"s2": rec})}, {})
    assert again.scenes["s2"]["tiles"] == ["r0_c0", "r0_c1", "r2_c0"]
