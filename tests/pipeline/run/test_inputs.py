"""The run's inputs file and the tiles' references to it: small work orders, same items."""

from __future__ import annotations

import json
import pickle

import pytest
from affine import Affine
from odc.geo.geobox import GeoBox
from shapely.geometry import box, mapping

from pipeline.composite.window import ItemIndex
from pipeline.run.inputs import RunInputs, TileInputs

REGION = box(6.0, 50.0, 8.0, 52.0)


def _item(i: int, west: float, south: float) -> dict:
    """A STAC-item-shaped dict with eleven assets (what makes real items weigh ~9 KB)."""
    assets = {
        f"B{k:02d}": {"href": f"https://example.org/{i}/B{k:02d}.tif", "type": "image/tiff",
                      "roles": ["data"], "raster:bands": [{"scale": 1e-4, "offset": -0.1}]}
        for k in range(11)
    }  # fmt: skip
    return {
        "type": "Feature",
        "id": f"S2_{i:04d}",
        "geometry": mapping(box(west, south, west + 1.0, south + 1.0)),
        "properties": {"datetime": f"2023-01-{1 + i % 28:02d}T10:30:00Z", "eo:cloud_cover": 1.5},
        "assets": assets,
    }


def _items() -> list[dict]:
    """Plain JSON values, as a STAC API returns them (lists, not tuples)."""
    items = [_item(i, 6.0 + (i % 4) * 0.5, 50.0 + (i // 4 % 4) * 0.5) for i in range(64)]
    return json.loads(json.dumps(items))


def _geobox() -> GeoBox:
    """A 2 x 2 km window near 7.1 E, 51.1 N (EPSG:4326 degrees, 0.001 deg pixels)."""
    return GeoBox((20, 20), Affine(0.001, 0, 7.1, 0, -0.001, 51.12), "EPSG:4326")


def test_a_reference_reads_back_the_items_touching_the_window_and_the_region(tmp_path):
    items = _items()
    inputs = RunInputs.write(tmp_path, REGION, items)
    assert inputs.path.parent == tmp_path and inputs.path.name.startswith("inputs-")
    assert len(inputs) == len(items)
    ref = inputs.for_window(_geobox())
    expect = ItemIndex(items).for_window(_geobox())
    assert 0 < len(ref) == len(expect) < len(items)
    assert ref.items() == expect  # equal dicts, in the same order
    assert ref.region().equals_exact(REGION, 0) and ref.region().wkb == REGION.wkb
    # the reference weighs a few bytes per item, the items themselves hundreds
    ref_bytes, items_bytes = len(pickle.dumps(ref)), len(pickle.dumps(expect))
    assert ref_bytes < 200 + 16 * len(ref) and items_bytes > 20 * ref_bytes
    # a worker parses each line once: the same objects tile after tile
    again = inputs.for_window(_geobox()).items()
    assert all(a is b for a, b in zip(again, ref.items(), strict=True))


def test_new_inputs_get_a_new_file_and_the_cache_never_mixes_runs(tmp_path):
    first = RunInputs.write(tmp_path, REGION, _items())
    old = first.for_window(_geobox())
    assert old.items()[0]["properties"]["eo:cloud_cover"] == 1.5
    changed = _items()
    for d in changed:
        d["properties"]["eo:cloud_cover"] = 2.5
    second = RunInputs.write(tmp_path, REGION, changed)
    assert second.path != first.path and second.digest != first.digest
    assert sorted(tmp_path.iterdir()) == [second.path]  # the earlier run's file is gone
    new = second.for_window(_geobox())
    assert new.offsets == old.offsets  # same layout, other content: only the digest tells
    assert {d["properties"]["eo:cloud_cover"] for d in new.items()} == {2.5}
    # the same inputs again (a resumed run) keep their file and name
    assert RunInputs.write(tmp_path, REGION, changed).path == second.path
    assert sorted(tmp_path.iterdir()) == [second.path]


def test_a_worker_that_cannot_see_the_workspace_says_so(tmp_path):
    ref = RunInputs.write(tmp_path, REGION, _items()).for_window(_geobox())
    gone = TileInputs(str(tmp_path / "elsewhere.jsonl"), "0" * 64, ref.header, ref.offsets,
                      ref.lengths)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="shared filesystem"):
        gone.items()


def _ids_in_worker(ref: TileInputs) -> tuple[list[str], int]:
    import os

    return [d["id"] for d in ref.items()], os.getpid()


def test_references_resolve_in_the_worker_processes_of_a_local_cluster(tmp_path):
    import os

    from distributed import Client, LocalCluster

    items = _items()
    inputs = RunInputs.write(tmp_path, REGION, items)
    ref = inputs.for_window(_geobox())
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        ids, pid = client.submit(_ids_in_worker, ref, pure=False).result()
    assert pid != os.getpid()
    assert ids == [d["id"] for d in ItemIndex(items).for_window(_geobox())]
