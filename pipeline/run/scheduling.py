"""Tile tasks on Dask: which tiles run (:func:`select_tiles`), the work order of each
(:func:`tile_job`), a bounded number in flight, read groups kept on one worker, retries counted
here, and failures recorded (the dead-letter list) instead of stopping the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.base.errors import UserError
from pipeline.run.config import RunConfig
from pipeline.run.inputs import RunInputs
from pipeline.run.prepare import Prepared
from pipeline.run.tile_task import TileJob
from pipeline.run.workspace import TileFailure, Workspace

_log = logging.getLogger(__name__)


def tile_job(
    cfg: RunConfig,
    prep: Prepared,
    ws: Workspace,
    inputs: RunInputs,
    tile,
    calibration,
    field=None,
    ood=None,
):
    """The work order of ``tile``: references into the run's ``inputs`` file (the items touching
    its window, halo included, and the region), not the items themselves."""
    chips = cfg.model.adapter.chip_layout(tile.geobox, cfg.chips.window, cfg.chips.stride)
    window_box = chips.geobox if chips else tile.geobox
    return TileJob(
        tile=tile,
        inputs=inputs.for_window(window_box),
        model=cfg.model,
        classifier=prep.classifier,
        calibration=calibration,
        composite=cfg.composite,
        mask=cfg.mask,
        chips=cfg.chips,
        output=cfg.output,
        store=str(ws.store),
        tile_dir=str(ws.tile_dir(tile.id)),
        field=field,
        ood=ood,
    )


def select_tiles(tiles, done: dict, failed: dict[str, TileFailure], cfg: RunConfig):
    """(tiles to run, dead-lettered failures left alone) for this run.

    A plain run (or rerun) runs every tile not done except those that failed ``max_attempts``
    times or more (the dead-letter list); ``--retry-failed`` runs only the tiles that failed.
    """
    dead = {t: f for t, f in failed.items() if f.attempts >= cfg.execution.max_attempts}
    if cfg.execution.retry_failed:
        return [tl for tl in tiles if tl.id in failed and tl.id not in done], {}
    todo = [tl for tl in tiles if tl.id not in done and tl.id not in dead]
    return todo, {t: f for t, f in dead.items() if t not in done}


def task_resources(client) -> dict[str, int] | None:
    """Request a GPU per task where the workers advertise GPUs."""
    workers = client.scheduler_info().get("workers", {})
    if any("GPU" in (w.get("resources") or {}) for w in workers.values()):
        return {"GPU": 1}
    return None


def tile_failure(tile_id: str, exc: BaseException, attempts: int, tb: Any = None) -> TileFailure:
    """The failure record of a tile whose last attempt raised ``exc``.

    ``tb``: the attempt's traceback (``Future.traceback()``; defaults to ``exc.__traceback__``),
    whose innermost frames become the record's ``where``.
    """
    import datetime as dt

    from pipeline.reading.cube import ReadFailure

    text = str(exc).splitlines()[0] if str(exc) else ""
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    where = raised_at(tb if tb is not None else exc.__traceback__)
    if isinstance(exc, ReadFailure):
        return TileFailure(
            tile_id, "read_failure", text, attempts, http_status=exc.status,
            scenes=exc.scenes, time=when, where=where,
        )  # fmt: skip
    return TileFailure(
        tile_id, "error", f"{type(exc).__name__}: {text}", attempts, time=when, where=where
    )


def raised_at(tb: Any, frames: int = 3) -> str:
    """The innermost ``frames`` frames of traceback ``tb`` as ``file.py:LINE in function``, joined
    by `` < `` (innermost first); "" without a traceback."""
    import traceback

    if tb is None:
        return ""
    try:
        stack = traceback.extract_tb(tb)[-frames:]
    except Exception:  # noqa: BLE001 - a traceback that cannot be read says nothing
        return ""
    return " < ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(stack))


def run_todo(
    client, cfg, prep, ws, inputs, refs, todo, task=None, earlier=None
) -> tuple[dict, dict[str, TileFailure]]:
    """Run the tiles still to do (:func:`run_tiles`) with a progress bar in pixels; returns
    (stats, failures) by tile id. ``task`` and ``earlier`` as :func:`run_tiles`.

    :param refs: the run's :class:`~pipeline.run.calibration.References` (calibration vector,
        field codec, OOD reference).
    """
    if not todo:
        return {}, {}
    import numpy as np
    from tqdm import tqdm

    calib = None if refs.calibration is None else np.asarray(refs.calibration, np.float32)
    # Pixels, not tiles: a few large tiles still move the bar and give an ETA.
    with tqdm(
        total=sum(tl.shape[0] * tl.shape[1] for tl in todo),
        unit="px",
        unit_scale=True,
        desc=f"{len(todo)} tiles",
        disable=not cfg.execution.progress,
        mininterval=1.0,
        dynamic_ncols=True,
    ) as bar:
        return run_tiles(
            client, cfg, prep, ws, inputs, calib, todo, bar, task, refs.codec, refs.ood, earlier
        )


def run_tiles(
    client, cfg, prep, ws, inputs, calibration, todo, progress=None, task=None, field=None, ood=None,
    earlier=None,
) -> tuple[dict, dict[str, TileFailure]]:  # fmt: skip
    """Run ``todo`` tiles, a bounded number in flight; returns (stats, failures) by tile id.

    ``inputs`` is the run's :class:`~pipeline.run.inputs.RunInputs` (each work order references
    it).
    ``task`` replaces :func:`pipeline.run.tile_task.process_tile` (the scale benchmark's stand-in).

    A tile that raises is resubmitted up to ``cfg.execution.retries`` times; one that still fails gets a
    :class:`~pipeline.run.workspace.TileFailure` (kept in the workspace, attempts counted over reruns)
    and no done marker, so the next run redoes it. ``earlier``: the failure records of earlier
    runs by tile id (:meth:`~pipeline.run.workspace.Workspace.failed_tiles`, read once by the
    driver), whose attempts a failure adds to (None: none).
    """
    from distributed import as_completed

    from pipeline.reading import read_order
    from pipeline.run.tile_task import process_tile

    task = task or process_tile

    workers = sorted(client.scheduler_info().get("workers", {}))
    if len(workers) > 1:  # tiles are pinned below: free them if all their workers die
        from pipeline.run.cluster import OrphanedPins

        try:
            client.register_plugin(OrphanedPins())
        except Exception as exc:  # noqa: BLE001 - a scheduler that refuses plugins still runs
            _log.warning("scheduler plugin not registered (%s): a run can wait on tiles pinned "
                         "to dead workers", exc)  # fmt: skip
    n_workers = max(1, len(workers))
    max_in_flight = max(4, 3 * n_workers)
    resources = task_resources(client)
    earlier = earlier or {}
    # Tiles of one read group run on one worker (others may still steal them), so the worker's
    # block cache decodes each source block once (pipeline.reading.read_order).
    order = read_order(todo, n_workers)
    home = {t.id: w for t, w in order}
    pending = [t for t, _ in order]
    stats: dict[str, dict] = {}
    failures: dict[str, TileFailure] = {}
    tile_of: dict[str, tuple[Any, int]] = {}

    output_hash = cfg.output_hash()

    def submit(tile, attempt: int = 1):
        fut = client.submit(
            task,
            tile_job(cfg, prep, ws, inputs, tile, calibration, field, ood),
            key=f"tile-{tile.id}-{output_hash}-{attempt}",
            retries=0,  # retried here, so attempts are counted and recorded
            resources=resources,
            pure=False,
            **(
                {"workers": [workers[home[tile.id]]], "allow_other_workers": True}
                if len(workers) > 1
                else {}
            ),
        )
        tile_of[fut.key] = (tile, attempt)
        return fut

    # Results are gathered as tasks finish (with_results), not by one round trip each here.
    ac = as_completed(
        [submit(pending.pop(0)) for _ in range(min(max_in_flight, len(pending)))],
        with_results=True,
        raise_errors=False,
    )
    for fut, result in ac:
        tile, attempt = tile_of.pop(fut.key)
        tid = tile.id
        if fut.status == "finished":
            stats[tid] = result
        else:
            exc = fut.exception()
            if attempt <= cfg.execution.retries:
                _log.warning("tile %s attempt %d failed (%s: %s at %s); retrying", tid, attempt,
                             type(exc).__name__, exc, raised_at(fut.traceback(), 1) or "?")  # fmt: skip
                fut.release()
                ac.add(submit(tile, attempt + 1))
                continue
            before = earlier[tid].attempts if tid in earlier else 0
            failures[tid] = tile_failure(tid, exc, before + attempt, fut.traceback())
            _log.error(
                "tile %s failed after %d attempt(s): %s: %s (at %s)",
                tid,
                attempt,
                failures[tid].error_kind,
                failures[tid].message,
                failures[tid].where or "?",
            )
        ws.record_tile(tid, stats[tid] if tid in stats else failures[tid])
        fut.release()
        if progress is not None:  # counts pixels (tiles done: in the postfix)
            progress.update(prep.grid[tid].shape[0] * prep.grid[tid].shape[1])
            progress.set_postfix_str(
                f"{len(stats) + len(failures)}/{len(todo)} tiles", refresh=False
            )
        if pending:
            ac.add(submit(pending.pop(0)))
    return stats, failures


class TilesFailed(UserError):
    """Some tiles failed (or are dead-lettered): the rest of the run finished, nothing published
    over them. Exit code 3, so scripts tell it from bad input (2)."""

    exit_code = 3


class TooManyUnreadable(UserError):
    """More scenes than ``--max-unreadable`` allows cannot be read ever (HTTP 404/410, corrupt):
    the tiles finished without them, nothing is published. Exit code 3, like
    :class:`TilesFailed`."""

    exit_code = 3


def failure_summary(failures: dict[str, TileFailure], total: int, where: Path) -> str:
    """One line: how many tiles failed, the first few with their reason, where the list is."""
    shown = []
    for tid in sorted(failures)[:3]:
        f = failures[tid]
        scenes = f" (scenes {', '.join(f.scenes[:3])})" if f.scenes else ""
        at = f" at {f.where.split(' < ')[0]}" if f.where and f.error_kind == "error" else ""
        shown.append(f"{tid}: {f.error_kind}, {f.message[:160]}{at}{scenes}")
    more = f"; +{len(failures) - 3} more" if len(failures) > 3 else ""
    return (
        f"{len(failures)} of {total} tiles failed: {'; '.join(shown)}{more}. The map is not "
        f"published; all failures are listed in {where}; finished tiles are kept: rerun to redo "
        "only the failed ones"
    )
