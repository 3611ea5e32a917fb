"""Opening a run's store, between preparation and the tiles: the manifest, the inputs file the
tiles' work orders reference, the Zarr store (created, or reclaimed on resume) and the tiles to
run (:func:`pipeline.run.scheduling.select_tiles`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.run.config import RunConfig
from pipeline.run.inputs import RunInputs, Scenes
from pipeline.run.prepare import Prepared
from pipeline.run.scheduling import select_tiles
from pipeline.run.workspace import TileFailure

if TYPE_CHECKING:
    from pipeline.run.start import RunState

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenStore:
    """What :func:`open_store` wrote and chose: the manifest, the inputs file that the tiles' work
    orders reference, the tiles done earlier, the tiles to run, those left dead-lettered and the
    failure records of earlier runs."""

    manifest: dict[str, Any]
    inputs: RunInputs
    done_before: dict[str, dict]
    todo: list
    dead_before: dict[str, TileFailure]
    failed_before: dict[str, TileFailure]


def open_store(run: RunState, cfg: RunConfig, prep: Prepared, scenes: Scenes) -> OpenStore:
    """Write the manifest, create (or reclaim) the Zarr store, and choose the tiles to run.

    :param run: what :func:`pipeline.run.start.start` resolved (workspace, output hash, the
        manifest of the run being resumed).
    :param cfg: the run's settings with the tile size fitted (:func:`pipeline.run.prepare.prepare_map`).
    :param scenes: the run's scenes, streamed into the inputs file here.
    """
    from pipeline.base.config import to_plain
    from pipeline.stac.bands import BANDS
    from pipeline.writers import create_map_store
    from pipeline.writers.field import FIELD_ATTR

    ws = run.ws
    ws.prepare(run.output_hash, cfg.execution.overwrite, run.settings)
    # the scenes streamed into the inputs file first: the manifest names it
    inputs = RunInputs.write(ws.work, prep.geometry, scenes.items())
    if run.resumable:
        manifest = dict(run.previous)
        if "items" in manifest:  # an older s2lc's manifest: its scenes move to the inputs file
            del manifest["items"]
            manifest["scenes"] = len(inputs)
    else:
        manifest = {
            "output_hash": run.output_hash,
            "config": to_plain(cfg.flat()),
            "scenes": len(inputs),
            "ledger": scenes.ledger.to_dict(),
            "calibration": None,
        }
    manifest["inputs"] = inputs.path.name
    ws.save_manifest(manifest)
    if run.resumable:
        ws.reclaim_store()
    create_map_store(
        ws.store,
        prep.grid,
        class_names=list(prep.class_names),
        k=min(cfg.output.top_k, len(prep.class_names)),
        period_labels=list(run.checked.labels),
        band_names=list(BANDS) if cfg.output.save_composite else None,
        embed_dim=prep.model_info["embed_dim"] if cfg.output.save_embeddings else None,
        field_dims=prep.field_dims,
        ood=cfg.output.ood,
        postprocess=cfg.output.postprocess,
        attrs={
            "config_hash": run.output_hash,
            "region": prep.region_name,
            "model": cfg.model.name,
            "untrained": cfg.model.untrained,
            **({FIELD_ATTR: prep.field_meta} if prep.field_meta is not None else {}),
        },
    )
    done_before, failed_before = ws.done_tiles(), ws.failed_tiles()
    todo, dead_before = select_tiles(prep.grid.tiles, done_before, failed_before, cfg)
    _log.info(
        "%d tiles: %d done earlier, %d to run, %d left in the dead-letter list%s",
        len(prep.grid.tiles),
        len(done_before),
        len(todo),
        len(dead_before),
        " (--retry-failed redoes them)" if dead_before else "",
    )
    return OpenStore(manifest, inputs, done_before, todo, dead_before, failed_before)
