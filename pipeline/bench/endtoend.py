"""End to end on the demo region: km² per hour, seconds per stage, peak memory per worker."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from pipeline.bench.results import Entry


def demo_entries(model_name: str = "timesenclip", workers: int = 2) -> list[Entry]:
    import argparse

    from pipeline.commands.run import add_arguments, resolve
    from pipeline.run.driver import execute

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with tempfile.TemporaryDirectory(prefix="s2lc-bench-") as tmp:
        args = parser.parse_args(
            [
                "--region",
                "demo",
                "--untrained",
                "--model",
                model_name,
                "--out",
                tmp,
                "--workers",
                str(workers),
                "--no-progress",
                "--tile-size",
                "100",  # as `make map`: the demo's 200 x 200 px in 4 tiles for 2 workers
                "--calibration",
                "none",
            ]
        )
        cfg = resolve(args)
        t = time.perf_counter()
        execute(cfg)
        wall = time.perf_counter() - t
        report = json.loads((Path(tmp) / "run.json").read_text())
        peak = max((s.get("peak_rss_mb", 0) for s in _tile_stats(Path(tmp))), default=0)
    area = report["region"]["area_km2"]
    sec = report["seconds"]
    stages = {
        "search": sec.get("search"),
        "load": sec.get("load_worker_sum"),
        "composite": sec.get("composite_worker_sum"),
        "infer": sec.get("infer_worker_sum"),
        "write": sec.get("write_worker_sum"),
        "publish": sec.get("publish"),
        "prepare": sec.get("prepare"),
        "tiles_wall": sec.get("tiles_wall"),
    }
    return [
        Entry(
            "demo_km2_per_h",
            area / (wall / 3600),
            "km2/h",
            threads=workers,
            notes={
                "model": model_name,
                "area_km2": area,
                "wall_s": wall,
                "seconds_per_stage": stages,
                "peak_worker_rss_mb": peak,
                "tiles": report["tiles"]["total"],
                "scenes": report["scenes"],
                "pixels": int(area * 1e4),
            },
        )
    ]


def _tile_stats(out: Path) -> list[dict]:
    # Markers are removed when the products are published; the report keeps what we need.
    report = json.loads((out / "run.json").read_text())
    return report.get("tile_stats", [])
