"""Every command README.md shows works as written, or is marked as needing the network.

Each command of every ``bash`` block is classified and exercised offline:

- ``make TARGET ...``: ``make -n`` expands it (the target and its variables exist); each
  ``python -m pipeline`` line it expands to parses with the real CLI parser. Plain ``make map``
  runs for real in ``test_make_map_is_the_few_shot_demo`` (the README's first promise; in
  ``make test-integration``, for its 3 minutes).
- ``.venv/bin/python -m pipeline ...``: parses with the real parser; offline commands (no comment
  saying what they *need*: the network, a cluster, your data) run for real in a scratch folder;
  marked ``run`` commands resolve to a valid configuration and pass the local size check (no
  network: nothing is searched).
- anything else (``cp``) runs in a scratch copy of the repository's files it names.

A README command that fits none of these fails the test, so a new command needs a test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: A comment saying a command "needs" something (the network, a Slurm cluster, your own data):
#: inline, it marks its command; on a line of its own, every later command of the block.
NEEDS = re.compile(r"\bneeds?\b", re.I)


def readme_commands() -> list[tuple[str, bool]]:
    """(command, marked as needing the network) for every command in README bash blocks."""
    text = README.read_text()
    out: list[tuple[str, bool]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        marked_block = False
        pending = ""
        heredoc = None
        for raw in block.splitlines():
            line = raw.rstrip()
            if heredoc is not None:  # the body of `cat > f <<'EOF'`: file content, no commands
                heredoc = None if line.strip() == heredoc else heredoc
                continue
            if not line.strip():
                continue
            m = re.search(r"<<-?\s*'?\"?(\w+)", line)
            if m:
                heredoc = m.group(1)
            if line.lstrip().startswith("#"):
                if NEEDS.search(line):
                    marked_block = True
                continue
            pending += line[:-1] + " " if line.endswith("\\") else line
            if line.endswith("\\"):
                continue
            cmd, _, comment = pending.partition("  #")
            out.append((" ".join(cmd.split()), marked_block or bool(NEEDS.search(comment))))
            pending = ""
    return out


def _pipeline_argv(cmd: str) -> list[str] | None:
    words = shlex.split(cmd)
    for i in range(len(words) - 2):
        if words[i].endswith("python") and words[i + 1 : i + 3] == ["-m", "pipeline"]:
            return words[i + 3 :]
    return None


def _parse(argv: list[str]):
    from pipeline.cli import build_parser

    return build_parser().parse_args(argv)


def _check_network_command(argv: list[str]) -> None:
    """A command that needs the network: valid options, and a run resolves and fits the cap."""
    args = _parse(argv)
    if args.command != "run":
        return
    from aoi import to_crs
    from pipeline.commands.run import resolve
    from pipeline.run.checks import resolve_region
    from pipeline.run.cluster import check_local_size

    cfg = resolve(args)
    if cfg.execution.cluster == "local":
        region, geometry = resolve_region(cfg.region, cfg.bbox)
        check_local_size(cfg.execution, float(to_crs(geometry, region.crs).area) / 1e6)


def _runs_quickly(argv: list[str]) -> bool:
    """Offline commands this test runs as written (seconds each, nothing interactive)."""
    return (
        argv[0] in ("regions", "legends")
        or argv[:2] == ["weights", "list"]
        or "--help" in argv
        or (argv[0] == "search" and "demo" in argv)
    )


def test_readme_has_commands_and_every_one_is_classified():
    cmds = readme_commands()
    assert len(cmds) >= 15, cmds
    for cmd, marked in cmds:
        words = shlex.split(cmd)
        ok = words[0] in ("make", "cp", "cat") or _pipeline_argv(cmd) is not None
        assert ok, f"README command with no test: {cmd}"
        argv = _pipeline_argv(cmd)
        if argv and not marked and argv[0] in ("run", "extract-points"):
            # reading Sentinel-2 offline is only possible from the demo catalog
            assert (
                "demo" in argv
                or "--profile" in argv
                or "--offline" in argv
                or any(a.startswith(("--cluster", "tcp://")) for a in argv)
                or "--checkpoint" in argv
            ), f"unmarked README command reads Sentinel-2: {cmd}"


@pytest.mark.parametrize(
    "cmd", [c for c, _ in readme_commands() if shlex.split(c)[0] == "make"], ids=str
)
def test_readme_make_commands_expand(cmd, tmp_path):
    words = shlex.split(cmd)
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", *words[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "MAKEFLAGS": ""},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        argv = _pipeline_argv(line)
        if argv is not None:
            args = _parse(argv)
            if words[1:2] == ["map"] and any("REGION=" in w for w in words):
                _check_network_command(argv)  # a real region: resolves, fits the local cap
            assert args.command


@pytest.mark.parametrize(
    "cmd", [c for c, _ in readme_commands() if _pipeline_argv(c) is not None], ids=str
)
def test_readme_pipeline_commands(cmd, tmp_path, demo_catalog, capsys):
    from pipeline.cli import main

    marked = dict(readme_commands())[cmd]
    argv = _pipeline_argv(cmd)
    if marked:
        _check_network_command(argv)
        return
    if not _runs_quickly(argv):
        # offline but long or interactive (a map, a web viewer, a cluster plan): parsed here;
        # the map workflow itself runs in test_make_map_is_the_few_shot_demo
        _parse(argv)
        return
    # Offline as written: run it for real, in a scratch folder.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        try:
            code = main(argv)
        except SystemExit as exc:  # --help
            code = exc.code or 0
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 0, err


def test_readme_shell_commands(tmp_path):
    for cmd, _ in readme_commands():
        words = shlex.split(cmd)
        if words[0] != "cp":
            continue
        src = ROOT / words[1]
        assert src.is_file(), f"README copies {words[1]}, which does not exist"
        shutil.copy(src, tmp_path / Path(words[2]).name)


# About 3 min on 2 free cores: in `make test-integration` (CI runs it), so `make test` stays
# near 10 minutes.
@pytest.mark.integration
@pytest.mark.timeout(1800)
def test_make_map_is_the_few_shot_demo(tmp_path, demo_catalog):
    """``make map`` as the README shows it: the few-shot workflow, accuracy >= 0.85 on held-out
    points, every output it lists. The Makefile is expanded with ``make -n`` (so the test runs
    exactly its command) and run in a subprocess with the test session's cache."""
    import geopandas as gpd
    import rasterio

    out = tmp_path / "demo"
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "map", f"OUT={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if _pipeline_argv(ln)]
    assert len(lines) == 1 and _pipeline_argv(lines[0])[:2] == ["demo", "map"], proc.stdout
    argv = [sys.executable, "-m", "pipeline", *_pipeline_argv(lines[0]), "--no-progress"]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stderr[-4000:]
    m = re.search(r"Overall accuracy on (\d+) held-out validation points: ([0-9.]+)", run.stdout)
    assert m, run.stdout
    assert float(m.group(2)) >= 0.85, run.stdout
    assert "UNTRAINED" in run.stdout and "synthetic" in run.stdout
    # the log shows each step as a command to rerun
    assert run.stderr.count("python -m pipeline ") >= 7
    map_dir = out / "monthly" / "timesenclip"
    assert f"{map_dir}/" in run.stdout
    for f in ("classes.tif", "confidence.tif", "valid_obs.tif", "quicklook.png", "item.json",
              "legend.json", "run.json", "map.zarr", "composite_rgb.tif", "composite_rgb.png"):  # fmt: skip
        assert (map_dir / f).exists(), f
    ref = out / "reference"
    for f in ("truth.tif", "training_points.gpkg", "validation_points.gpkg", "head.npz"):
        assert (ref / f).is_file() and str(ref / f) in run.stdout, f
    assert (out / "evaluation" / "metrics.json").is_file()
    val = gpd.read_file(ref / "validation_points.gpkg")
    assert int(m.group(1)) == len(val)
    # the head's map keeps the demo legend's names and colours
    from model.legends import load_legend
    from pipeline.base.colours import parse_color

    legend = load_legend("demo")
    with rasterio.open(map_dir / "classes.tif") as src:
        cmap = src.colormap(1)
        assert json.loads(src.tags()["class_names"]) == list(legend.names)
    assert [cmap[i][:3] for i in range(len(legend))] == [parse_color(c) for c in legend.colors]
    # the Zarr store: classes as uint8 in xarray, equal to the COG
    import xarray as xr

    ds = xr.open_zarr(map_dir / "map.zarr")
    assert ds["classes"].dtype == np.uint8
    with rasterio.open(map_dir / "classes.tif") as src:
        np.testing.assert_array_equal(ds["classes"].values, src.read(1))
