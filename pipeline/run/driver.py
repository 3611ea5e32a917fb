"""The driver of a mapping run: find scenes, prepare, calibrate once, fan tiles out to Dask, publish.

Stages (each timed into ``run.json``), each a module's, called in turn with what the one before
resolved: ``search`` (the cheap checks, STAC once on the driver, the model's classes and backend:
:mod:`pipeline.run.start`), ``prepare`` (tile grid, classifier: :mod:`pipeline.run.prepare`; the
manifest, inputs file and Zarr store: :mod:`pipeline.run.store`), ``calibrate`` (class-mean
calibration on a fixed reference sample of pixels, stored in the manifest so resumed and repeated
runs use the same vector: :mod:`pipeline.run.calibration`), ``tiles`` (one task per tile, bounded
in flight, retried by Dask: :mod:`pipeline.run.scheduling`), ``publish`` (COG mosaics, Zarr moved
into place, legend, quicklook, STAC item, provenance: :mod:`pipeline.run.finish`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.run.calibration import fit_references
from pipeline.run.config import RunConfig
from pipeline.run.finish import publish_run
from pipeline.run.prepare import prepare_map
from pipeline.run.reporting import run_report
from pipeline.run.scheduling import run_todo
from pipeline.run.start import start
from pipeline.run.store import open_store


def execute(
    cfg: RunConfig,
    tile_task: Callable | None = None,
    publish: bool = True,
    timings: dict[str, Any] | None = None,
) -> int:
    """Run (or resume) a map; returns the exit code (0 complete, 1 some tiles failed).

    ``tile_task`` replaces :func:`pipeline.run.tile_task.process_tile` and ``publish=False``
    stops once every tile has run (nothing published, no ``run.json``): the driver's scale
    benchmark (:func:`pipeline.bench.scale.run_standin`) runs this path with a task that reads
    nothing. ``timings`` (when given) receives the seconds per stage, ``scenes``, ``tiles``
    (the grid's), ``tiles_done`` and ``tiles_failed`` (this run's) and ``search_counts``
    (:attr:`pipeline.stac.found.FoundScenes.counts`).
    """
    from pipeline.run.cluster import open_client_on_demand

    run = start(cfg)
    if run is None:
        return 0
    seconds: dict[str, Any] = timings if timings is not None else {}
    seconds["backend"] = run.backend_s
    scenes, seconds["search"] = run.scenes, run.search_s
    try:
        with _timed(seconds, "prepare"):
            cfg, prep = prepare_map(
                run.cfg,
                run.checked,
                run.classes,
                run.cluster,
                run.previous if run.resumable else None,
            )
        store = open_store(run, cfg, prep, scenes)
    finally:
        scenes.close()  # the items are in the run's inputs file now
    n, ledger = scenes.count, scenes.ledger
    with open_client_on_demand(run.cluster) as client:  # none started if nothing runs
        with _timed(seconds, "calibrate"):
            refs = fit_references(client, cfg, prep, run.ws, store.inputs, store.manifest)
        with _timed(seconds, "tiles_wall"):
            stats, failures = run_todo(
                client, cfg, prep, run.ws, store.inputs, refs, store.todo, tile_task,
                store.failed_before,
            )  # fmt: skip
    if timings is not None:
        timings.update(
            scenes=n,
            tiles=len(prep.grid.tiles),
            tiles_done=len(stats),
            tiles_failed=len(failures),
            search_counts=scenes.counts,
        )
    if not publish:
        return 0
    seconds = {k: v for k, v in seconds.items() if isinstance(v, float)}
    report = run_report(
        cfg,
        prep,
        output_hash=run.output_hash,
        precision=run.precision_info,
        area_km2=run.checked.area_km2,
        labels=run.checked.labels,
        n_scenes=n,
        ledger=ledger,
        done_before=store.done_before,
        dead_before=store.dead_before,
        refs=refs,
        seconds=seconds,
        stats=stats,
        failures=failures,
    )
    publish_run(run, cfg, prep, n, ledger, store, stats, failures, report)
    return 0


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Time the ``with`` block into ``seconds[stage]`` (``run.json``'s ``seconds``)."""
    t = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - t
