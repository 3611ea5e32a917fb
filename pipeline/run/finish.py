"""A run's last stage: publish what is complete (cell by cell on a continental grid, after the
post-processing when asked, or the whole map) and write ``run.json``; or write ``run.json`` and
raise why the map is not published (failed or dead-lettered tiles, too many unreadable scenes).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pipeline.run.config import RunConfig, too_many_unreadable
from pipeline.run.prepare import Prepared
from pipeline.run.publishing import publish
from pipeline.run.scheduling import TilesFailed, TooManyUnreadable, failure_summary
from pipeline.run.stages import run_stages
from pipeline.run.store import OpenStore
from pipeline.run.workspace import TileFailure
from pipeline.stac.scenes import SceneLedger

if TYPE_CHECKING:
    from pipeline.run.start import RunState

_log = logging.getLogger(__name__)


def publish_run(
    run: RunState,
    cfg: RunConfig,
    prep: Prepared,
    n_scenes: int,
    ledger: SceneLedger,
    store: OpenStore,
    stats: dict[str, dict],
    failures: dict[str, TileFailure],
    report: dict[str, Any],
) -> None:
    """Publish the map and write ``run.json``; raise TilesFailed (``run.json`` written, nothing
    published over the failed tiles) when tiles failed or are dead-lettered.

    :param run: what :func:`pipeline.run.start.start` resolved; ``store`` what
        :func:`pipeline.run.store.open_store` wrote and chose; ``stats`` and ``failures`` this
        run's tiles (:func:`pipeline.run.scheduling.run_todo`); ``report`` the ``run.json`` of
        :func:`pipeline.run.reporting.run_report`, completed here.
    :raises TooManyUnreadable: more scenes unreadable than ``--max-unreadable`` allows.
    """
    from pipeline.base.jsonio import write_json
    from pipeline.grid.cells import is_gridded

    ws = run.ws
    # the worker processes the tiles were spread over (an existing scheduler: not known), for
    # run.json's seconds per stage under pipeline.run.stages' names
    slots = run.cluster.planned_workers() or max(1, len(stats))
    per_tile = [stats[t] for t in sorted(stats)]
    labels = list(run.checked.labels)
    all_stats = {**store.done_before, **stats}
    gridded = is_gridded(prep.crs)
    if gridded:  # cells whose tiles are all done are published now, failed tiles or not
        from pipeline.run.continental import publish_cells

        t = time.perf_counter()
        # post-processing needs every cell: then no cell is published before it has run
        report["cells"] = publish_cells(
            cfg, prep, ws, report, labels, all_stats, hold=cfg.output.postprocess
        )
        report["seconds"]["publish_cells"] = time.perf_counter() - t
    dead = {
        **store.dead_before,
        **{t: f for t, f in failures.items() if f.attempts >= cfg.execution.max_attempts},
    }
    report["dead_letter"] = [dead[t].to_dict() for t in sorted(dead)]
    unreadable = ledger.unreadable()
    too_many = too_many_unreadable(cfg.execution.max_unreadable, len(unreadable), n_scenes)
    if failures or dead or too_many:
        report["status"] = "incomplete"
        report["seconds"]["total"] = time.perf_counter() - run.t0
        report["stages"] = run_stages(report["seconds"], per_tile, slots)
        write_json(ws.out / "run.json", report)
    if too_many and not (failures or dead):
        raise TooManyUnreadable(
            f"{len(unreadable)} of {n_scenes} scenes cannot be read (HTTP 404/410 or "
            f"corrupt: {', '.join(unreadable[:3])}{' ...' if len(unreadable) > 3 else ''}), more "
            f"than --max-unreadable {cfg.execution.max_unreadable}; the map is not published, "
            f"finished tiles are kept; see {ws.out / 'run.json'} (scene_ledger)"
        )
    if failures or dead:
        every = {**dead, **failures}
        msg = failure_summary(every, len(prep.grid.tiles), ws.out / "run.json")
        if dead:
            msg += (
                f"; {len(dead)} tile(s) failed {cfg.execution.max_attempts} times or more and are in the "
                "dead-letter list (run.json): plain reruns leave them, --retry-failed redoes them"
            )
        raise TilesFailed(msg)
    if cfg.output.postprocess:  # over the whole map, once every tile is done
        from pipeline.run.postprocess import postprocess_cells, postprocess_map

        if gridded:  # cell by cell, then the cells are published
            from pipeline.run.continental import publish_cells

            report["postprocess"] = postprocess_cells(cfg, prep, ws)
            t = time.perf_counter()
            report["cells"] = publish_cells(cfg, prep, ws, report, labels, all_stats)
            report["seconds"]["publish_cells"] = time.perf_counter() - t
        else:
            report["postprocess"] = postprocess_map(cfg, prep, ws)
    t = time.perf_counter()
    if gridded:
        from pipeline.run.continental import publish_gridded

        publish_gridded(cfg, prep, ws, report, labels)
    else:
        publish(cfg, prep, ws, report, labels)
    report["seconds"]["publish"] = time.perf_counter() - t
    report["seconds"]["total"] = time.perf_counter() - run.t0
    report["stages"] = run_stages(report["seconds"], per_tile, slots)
    write_json(ws.out / "run.json", report)
    _log.info("map written to %s (%.1f s)", ws.out, report["seconds"]["total"])
