"""Scale without pixels: the driver's scheduling of every tile of a region, with a stand-in task.

:func:`schedule_only` runs the real driver path of ``run`` (the prep, the run's inputs file,
one work order per tile referencing it, bounded submission, completion markers) on a LocalCluster, with a tile task that
reads nothing and returns at once, and reports tasks per second, the driver's peak memory and
the size of a work order. ``python -m pipeline.bench.scale REGION ITEMS_JSON`` runs it in a
process of its own, so the peak is that region's (``make bench-scale`` runs one country and
EU-27 and compares).

:func:`run_standin` goes through ``run`` itself instead (:func:`pipeline.run.driver.execute`),
from the STAC search to the last tile, with the same stand-in task: ``python -m
pipeline.bench.scale run REGION --stac-url URL``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["run_standin", "schedule_only", "standin_tile"]


def standin_tile(job: Any) -> dict[str, Any]:
    """A tile task that reads nothing: what scheduling alone costs (returns real-shaped stats)."""
    return {"tile": job.tile.id, "scenes": len(job.inputs), "seconds": {}, "standin": True}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scale_config(region: str, year: int, tile_size: int, workers: int, **more: Any) -> Any:
    """The scale benches' run: ``region`` for the calendar ``year``, untrained, LUCAS LC8 legend,
    no progress bar, any size allowed; ``more`` adds other :class:`RunConfig` fields."""
    import datetime as dt

    from pipeline.run.config import RunConfig

    return RunConfig.of(
        region=region,
        start=dt.date(year, 1, 1),
        end=dt.date(year, 12, 31),
        untrained=True,
        legend="lucas-lc8",
        tile_size=tile_size,
        workers=workers,
        progress=False,
        allow_large=True,
        **more,
    )


def schedule_only(
    region: str, items: Iterable[dict], *, year: int, tile_size: int, workers: int = 2
) -> dict[str, Any]:
    """Schedule every tile of ``region`` with :func:`standin_tile`; returns the measurements.

    ``items`` are streamed into the run's inputs file (:class:`pipeline.run.inputs.RunInputs`)
    as the run's driver writes it; the work orders reference it. The size of a work order is
    measured on a sample of tiles, with references (what is sent) and, for comparison, with the
    items and region outline inlined (what was sent before).
    """

    from pipeline.run.cluster import ClusterConfig, open_client
    from pipeline.run.inputs import RunInputs
    from pipeline.run.prepare import prepare_run
    from pipeline.run.scheduling import run_tiles, tile_job
    from pipeline.run.workspace import Workspace

    cfg = scale_config(region, year, tile_size, workers)
    t = time.perf_counter()
    prep = prepare_run(cfg)
    plan_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="s2lc-scale-") as tmp:
        ws = Workspace(Path(tmp))
        ws.prepare(cfg.output_hash(), False)
        t = time.perf_counter()
        inputs = RunInputs.write(ws.work, prep.geometry, items)
        inputs_s = time.perf_counter() - t
        tiles = list(prep.grid.tiles)
        sample = tiles[:: max(1, len(tiles) // 50)]
        jobs = [tile_job(cfg, prep, ws, inputs, tl, None) for tl in sample]
        orders = [len(pickle.dumps(j)) for j in jobs]
        # before: the same orders with the item dicts and the region's WKB in them
        inlined = [
            n + len(pickle.dumps(j.inputs.items())) + len(prep.geometry.wkb)
            - len(pickle.dumps(j.inputs))
            for n, j in zip(orders, jobs, strict=True)
        ]  # fmt: skip
        per_order = [len(j.inputs) for j in jobs]
        del jobs
        with open_client(ClusterConfig(kind="local", workers=workers)) as client:
            t = time.perf_counter()
            stats, errors = run_tiles(client, cfg, prep, ws, inputs, None, tiles, task=standin_tile)
            run_s = time.perf_counter() - t
        inputs_mb = inputs.path.stat().st_size / 1e6
    return {
        "region": region,
        "tiles": len(tiles),
        "tile_size": tile_size,
        "items": len(inputs),
        "done": len(stats),
        "failed": len(errors),
        "plan_s": plan_s,
        "inputs_s": inputs_s,
        "inputs_file_mb": inputs_mb,
        "schedule_s": run_s,
        "tasks_per_s": len(stats) / run_s if run_s else float("nan"),
        "driver_peak_mb": _peak_mb(),
        "work_order_bytes_mean": sum(orders) / len(orders),
        "work_order_bytes_max": max(orders),
        "inlined_work_order_bytes_mean": sum(inlined) / len(inlined),
        "inlined_work_order_bytes_max": max(inlined),
        "items_per_order_mean": sum(per_order) / len(per_order),
        "workers": workers,
    }


def run_standin(
    region: str,
    stac_url: str,
    *,
    year: int = 2023,
    tile_size: int = 2000,
    workers: int = 2,
    max_cloud: float = 60.0,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """``run`` itself (:func:`pipeline.run.driver.execute`) from the STAC search to the last tile
    scheduled, every tile run by :func:`standin_tile`; returns the measurements.

    The search streams into the run's inputs file, the manifest and the Zarr store are written
    and every tile's work order goes through Dask as in a real run; only the tile task reads
    nothing and nothing is published. Run it in a process of its own (``python -m
    pipeline.bench.scale run REGION --stac-url URL``): ``driver_peak_mb`` is that process's
    peak RSS, from the search to the last tile (the LocalCluster's workers are other
    processes). ``out``: the run's folder (a temporary one, removed after, by default).

    :returns: ``search_s``, ``tiles_wall_s``, ``tasks_per_s`` (tiles / tiles_wall_s), ``scenes``,
        ``tiles``, ``tiles_done``, ``tiles_failed``, ``driver_peak_mb``,
        ``search_process_peak_mb`` (None unless the search ran in a process of its own),
        ``search_pages``, ``inputs_file_mb``, ``seconds`` (every stage) and the settings.
    """

    from pipeline.run.driver import execute

    with tempfile.TemporaryDirectory(prefix="s2lc-standin-") as tmp:
        folder = Path(out) if out is not None else Path(tmp) / "run"
        cfg = scale_config(
            region,
            year,
            tile_size,
            workers,
            profile="custom",
            stac_url=stac_url,
            max_cloud=max_cloud,
            precision="fp32",
            out=str(folder),
            overwrite=True,
        )
        timings: dict[str, Any] = {}
        t = time.perf_counter()
        code = execute(cfg, tile_task=standin_tile, publish=False, timings=timings)
        total = time.perf_counter() - t
        inputs = sorted((folder / ".s2lc").glob("inputs-*.jsonl"))
        inputs_mb = inputs[0].stat().st_size / 1e6 if inputs else float("nan")
    wall = timings.get("tiles_wall", float("nan"))
    return {
        "region": region,
        "year": year,
        "exit_code": code,
        "search_s": timings.get("search"),
        "tiles_wall_s": wall,
        "tasks_per_s": timings.get("tiles_done", 0) / wall if wall else float("nan"),
        "scenes": timings.get("scenes"),
        "tiles": timings.get("tiles"),
        "tiles_done": timings.get("tiles_done"),
        "tiles_failed": timings.get("tiles_failed"),
        "total_s": total,
        "driver_peak_mb": _peak_mb(),
        # a continental search runs in a process of its own (pipeline.stac.found.search_run)
        "search_process_peak_mb": (timings.get("search_counts") or {}).get("peak_mb"),
        "search_pages": (timings.get("search_counts") or {}).get("pages"),
        "inputs_file_mb": inputs_mb,
        "seconds": {k: v for k, v in timings.items() if isinstance(v, float)},
        "tile_size": tile_size,
        "workers": workers,
        "max_cloud": max_cloud,
    }


def _lines(path: Path) -> Iterator[dict]:
    """Items of a JSON Lines file (one per line, streamed), or of a FeatureCollection / list."""
    with open(path) as fh:
        try:
            first = json.loads(fh.readline())
        except json.JSONDecodeError:
            first = None
        if isinstance(first, dict) and first.get("type") == "Feature":
            yield first
            yield from (json.loads(line) for line in fh if line.strip())
            return
    doc = json.loads(path.read_text())
    yield from doc["features"] if isinstance(doc, dict) else doc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        return _main_run(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("region")
    p.add_argument(
        "items", type=Path, help="the search's items: JSON Lines (or a FeatureCollection)"
    )
    p.add_argument("--year", type=int, default=2023)
    p.add_argument("--tile-size", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    out = schedule_only(
        a.region, _lines(a.items), year=a.year, tile_size=a.tile_size, workers=a.workers
    )
    json.dump(out, sys.stdout)
    return 0


def _main_run(argv: list[str]) -> int:
    """``python -m pipeline.bench.scale run REGION --stac-url URL``: :func:`run_standin`, the
    measurements as one JSON object on stdout."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.bench.scale run", description=run_standin.__doc__.splitlines()[0]
    )
    p.add_argument("region")
    p.add_argument("--stac-url", required=True, help="the STAC API holding the catalog")
    p.add_argument("--year", type=int, default=2023)
    p.add_argument("--tile-size", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-cloud", type=float, default=60.0)
    a = p.parse_args(argv)
    out = run_standin(
        a.region,
        a.stac_url,
        year=a.year,
        tile_size=a.tile_size,
        workers=a.workers,
        max_cloud=a.max_cloud,
    )
    json.dump(out, sys.stdout)
    return 0 if out["exit_code"] == 0 and not out["tiles_failed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
