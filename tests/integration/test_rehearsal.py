"""The rehearsal at a small size (integration): two real runs, faults and kills, the same map.

:mod:`pipeline.bench.rehearsal` with :data:`~pipeline.bench.rehearsal.SMALL` (1.2 x 1.2 km across
UTM 32 | 33 and two EEA cells, 30 acquisitions, 4 tiles): the faulty run reads through the
loopback object store (30 ms per request, 5 % transient faults, one object gone for good) with two
workers SIGKILLed; the clean run reads local files without the lost scene. ``make rehearsal`` is
the same at 400 km^2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bench.rehearsal import SMALL, rehearse

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> dict:
    return rehearse(SMALL, tmp_path_factory.mktemp("rehearsal") / "r")


def test_faulty_run_gives_the_clean_runs_map(rehearsal):
    r = rehearsal
    assert r["differences"] == [], r["differences"]
    assert r["identical"] is True
    # the conditions really happened: two kills, transient faults of each kind, the 404
    assert len(r["kills"]) == 2 and len({k["pid"] for k in r["kills"]}) == 2
    faults = r["store"]["faults"]
    assert {k for k, n in faults.items() if n > 0} >= {"429", "503", "reset"}, faults
    assert r["store"]["not_found"] > 0
    # the region: crosses zones 32 | 33 and two EEA cells, 30 acquisitions
    assert r["utm_epsg"] == [32632, 32633] and len(r["cells"]) == 2
    assert r["acquisitions"] >= 30


def test_ledger_records_the_lost_scene_as_permanent_read_failure(rehearsal):
    entry = rehearsal["lost_scene"]["ledger"]
    assert entry["reason"] == "read_failure" and entry["permanent"] is True
    assert entry["http_status"] == 404 and entry["tiles"]
    assert rehearsal["lost_scene"]["object"].endswith("red.tif")


def test_plan_json_lies_next_to_run_json(rehearsal):
    plan, run = Path(rehearsal["plan_json"]), Path(rehearsal["run_json"])
    assert plan.parent == run.parent
    assert json.loads(plan.read_text())["output"]["tiles"] >= 3  # room for two kills mid-run
    assert json.loads(run.read_text())["status"] == "complete"
