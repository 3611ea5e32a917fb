"""Bad input: one clear line on stderr, a non-zero exit, nothing written under the output path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.cli import main


def _fails(capsys, out: Path, *args: str, expect: str) -> None:
    code = main(["run", "--no-progress", "--out", str(out), *args])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code != 0, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert expect.lower() in errors[0].lower(), errors[0]
    assert not out.exists(), f"{out} was created"


DEMO = ["--region", "demo", "--untrained"]


def _vector(tmp_path: Path, name: str, geoms, crs="EPSG:4326") -> Path:
    import geopandas as gpd

    p = tmp_path / name
    gpd.GeoDataFrame(geometry=list(geoms), crs=crs).to_file(p)
    return p


def test_invalid_empty_and_self_intersecting_regions(capsys, tmp_path):
    from shapely.geometry import Polygon

    out = tmp_path / "out"
    bowtie = _vector(
        tmp_path, "bowtie.geojson", [Polygon([(10, 48), (10.1, 48.1), (10.1, 48), (10, 48.1)])]
    )
    _fails(capsys, out, "--region", str(bowtie), "--untrained", expect="invalid geometry")
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    _fails(capsys, out, "--region", str(empty), "--untrained", expect="no features")
    _fails(capsys, out, "--region", "atlantis", "--untrained", expect="unknown region")


def test_antimeridian_and_too_many_utm_zones(capsys, tmp_path):
    out = tmp_path / "out"
    across = tmp_path / "fiji.yaml"
    across.write_text("name: fiji\nbbox: [-179.9, -18, 179.9, -16]\n")
    _fails(capsys, out, "--region", str(across), "--untrained", expect="antimeridian")
    wide = tmp_path / "wide.yaml"
    # Outside Europe there is no continental grid to fall back on (Europe maps in EPSG:3035).
    wide.write_text("name: wide\nbbox: [-120, 35, -85, 40]\n")
    _fails(capsys, out, "--region", str(wide), "--untrained", expect="UTM zone")


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--start", "2023-06-01", "--end", "2023-01-01"], "before"),
        (["--start", "2023-13-01", "--end", "2023-12-31"], "not a date"),
        (["--year", "1999"], "sentinel-2 era"),
        (["--start", "2022-01-01", "--end", "2023-12-31"], "one year at a time"),
        (["--legend", "no-such-legend"], "legend"),
        (["--tile-size", "4"], "tile-size"),
        (["--bbox", "11", "40", "10", "41"], "bbox"),
    ],
)
def test_bad_dates_and_options(capsys, tmp_path, args, expect):
    _fails(capsys, tmp_path / "out", *DEMO, *args, expect=expect)


def test_unknown_model_is_rejected_by_the_parser(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["run", *DEMO, "--model", "resnet", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_empty_prompt_list(capsys, tmp_path):
    legend = tmp_path / "legend.yaml"
    legend.write_text("classes:\n  water: []\n  forest: [a forest]\n")
    _fails(capsys, tmp_path / "out", *DEMO, "--legend", str(legend), expect="prompt")


def test_checkpoint_of_wrong_architecture_or_not_a_checkpoint(capsys, tmp_path):
    import torch

    from model.timesenclip import build_encoder

    ts = tmp_path / "timesenclip.pt"
    torch.save(build_encoder(seed=0, dim=32, depth=1, heads=2, mlp_dim=16).state_dict(), ts)
    _fails(
        capsys,
        tmp_path / "out",
        "--region",
        "demo",
        "--model",
        "senclip",
        "--checkpoint",
        str(ts),
        expect="missing",
    )
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    _fails(
        capsys, tmp_path / "out", "--region", "demo", "--checkpoint", str(text), expect="checkpoint"
    )
    _fails(capsys, tmp_path / "out", "--region", "demo", expect="--untrained")


def test_output_path_not_writable(capsys, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    _fails(capsys, target / "out", *DEMO, expect="not a folder")
    # A read-only filesystem stops root too (permission bits would not).
    code = main(["run", *DEMO, "--no-progress", "--out", "/proc/s2lc-out"])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err and not Path("/proc/s2lc-out").exists()


def test_large_region_needs_confirmation_on_a_local_cluster(capsys, tmp_path):
    _fails(
        capsys,
        tmp_path / "out",
        "--region",
        "netherlands",
        "--year",
        "2023",
        "--untrained",
        expect="--allow-large",
    )
