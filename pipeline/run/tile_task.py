"""What one Dask task does for one tile: load its window, composite, infer, write.

Runs inside a worker process. Everything it needs travels in a small, picklable
:class:`TileJob` (the tile's grid, a reference to the STAC items that touch it and the region in
the run's inputs file, the text classifier and calibration computed once by the driver), so the scheduler's graph has one node per tile and
never sees chunks or dates. The model is loaded once per worker process (``model.get_model``).
Memory is bounded by the tile size: one tile's cube, composite and predictions at a time.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.adapters.base import class_probabilities
from pipeline.adapters.uncertainty import margin_entropy
from pipeline.grid.tiling import Tile
from pipeline.reading.cube import MaskConfig
from pipeline.reading.failure import detached_read_failures
from pipeline.run.config import ChipConfig, CompositeConfig, ModelConfig, OutputConfig
from pipeline.run.inputs import TileInputs
from pipeline.stac.bands import BANDS

#: True-colour bands of the quicklook, in display order (red, green, blue).
RGB = ("B4", "B3", "B2")


@dataclass(frozen=True)
class TileJob:
    """One tile's work order (small and picklable): the run's parts plus what the driver made."""

    tile: Tile
    inputs: TileInputs
    """References to the STAC items whose footprint touches the tile's window and to the region
    (EPSG:4326), in the run's inputs file (:mod:`pipeline.run.inputs`): a few bytes per item."""
    model: ModelConfig
    classifier: np.ndarray
    """(C, D) L2-normalised class embeddings (ignored with a head)."""
    calibration: np.ndarray | None
    composite: CompositeConfig
    mask: MaskConfig
    chips: ChipConfig
    output: OutputConfig
    store: str
    tile_dir: str
    field: Any = None
    """The compact field's :class:`~pipeline.writers.codec.FieldCodec` (with ``save_embeddings``)."""
    ood: Any = None
    """The :class:`~pipeline.adapters.uncertainty.OodReference` (with ``--ood``): the adapters
    then return embeddings, and the tile scores them."""


def load_composite(
    job: TileJob, geobox
) -> tuple[Any, int, float, dict[str, str], dict[str, dict[str, Any]]]:
    """The window's composite (eager, inside the task), its observation count (acquisition days),
    the load seconds, the scenes whose DN contradict their offset (id -> reason) and the scenes
    dropped because they cannot be read, ever (id -> failure record, see below).

    The shared window path (:func:`pipeline.composite.window.composite_window`): reads through
    :func:`pipeline.reading.load_reflectance` (the native-grid fast path on the scenes' own
    lattice, odc-stac's warp elsewhere).

    A scene whose read fails permanently (HTTP 404/410, a corrupt file:
    :attr:`pipeline.reading.failure.ReadFailure.permanent`), twice in a row, is dropped from this
    window and the window is read again without it: one lost object never blocks a map. Its
    record (``kind``, ``status``, ``permanent``, ``asset``, ``message``) is returned so the run's
    scene ledger and warnings name it. Any other read failure raises
    :class:`pipeline.reading.cube.ReadFailure` and fails the tile: lost input is never
    composited as "no observation".
    """

    from pipeline.composite.window import composite_window
    from pipeline.reading import block_reader
    from pipeline.reading.cube import ReadFailure

    c = job.composite
    # the worker's cached item dicts: the reader converts a worker's scenes once, not per tile
    items = job.inputs.items()
    reader = block_reader()
    # scenes this worker already found gone are not asked for again
    dropped = {it["id"]: reader.gone[it["id"]] for it in items if it["id"] in reader.gone}
    suspect: set[str] = set()  # failed permanently once: dropped if it fails so again
    load_seconds = 0.0
    while True:
        t0 = time.perf_counter()
        try:
            w = composite_window(
                [it for it in items if it["id"] not in dropped],
                geobox,
                start=c.start,
                end=c.end,
                period=c.period,
                mask_snow=job.mask.mask_snow,
                scl_mask=job.mask.scl_mask,
            )
        except ReadFailure as exc:
            load_seconds += time.perf_counter() - t0
            gone = exc.permanent_scenes()
            if not gone or set(gone) & set(dropped):
                raise
            if not set(gone) <= suspect:  # read once more (cold): a truncated body is no proof
                suspect |= set(gone)
                for rec in gone.values():
                    if rec.get("asset"):
                        reader.forget(rec["asset"])
                continue
            dropped.update(gone)
            reader.gone.update(gone)
            continue
        return (
            w.composite,
            w.acquisitions,
            load_seconds + w.load_seconds,
            w.offset_warnings,
            dropped,
        )


def predict(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class, confidence and top-k from (N, C) probabilities (pure)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    topk_p = np.take_along_axis(probs, order, axis=1)
    return order[:, 0], topk_p[:, 0], order, topk_p


def _true_colour(comp_values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(3, h, w) uint8 true-colour image of the tile: the median over the composite periods of
    B4, B3, B2 (TCI scaling), nodata where the map has no class."""
    from pipeline.writers.tile_result import true_colour

    rgb_idx = [BANDS.index(b) for b in RGB]
    rgb = comp_values[:, rgb_idx]  # (P, 3, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: no observation
        med = rgb[0] if rgb.shape[0] == 1 else np.nanmedian(rgb, axis=0)
    med = np.where(valid, med, np.nan)
    return true_colour(med)


@detached_read_failures
def process_tile(job: TileJob) -> dict[str, Any]:
    """Load, composite, infer and write one tile; returns its stats (seconds per stage, counts)."""
    from pipeline.grid.tiling import aoi_mask
    from pipeline.writers import TileResult, write_tile, write_tile_rasters

    t = {"start": time.perf_counter()}
    c = {"start": time.process_time()}  # the worker process's CPU time (all its threads)
    started = time.time()
    tile = job.tile
    m = job.model.load()
    t["model"], c["model"] = time.perf_counter(), time.process_time()
    geom = job.inputs.region()
    adapter = job.model.adapter
    plan = adapter.chip_layout(tile.geobox, job.chips.window, job.chips.stride)
    comp_full, n_scenes, t_load, offset_warnings, unreadable = load_composite(
        job, plan.geobox if plan else tile.geobox
    )
    t["composite"], c["composite"] = time.perf_counter(), time.process_time()

    # The tile's own pixels inside the (possibly halo'd) composite.
    ny, nx = tile.geobox.shape
    if plan is not None:
        ys, xs = plan.tile_window
        counts = comp_full.counts[:, ys, xs]
        comp_values = comp_full.values[:, :, ys, xs]
    else:
        counts, comp_values = comp_full.counts, comp_full.values
    inside = aoi_mask(tile.geobox, geom)
    counts = np.where(inside, counts, 0)  # outside the region everything is nodata
    valid = (counts.sum(axis=0) > 0) & inside

    probs, emb, valid = adapter.infer(job, m, comp_full, plan, valid)
    t["infer"], c["infer"] = time.perf_counter(), time.process_time()

    field_codes = field_scale = None
    if job.output.save_embeddings and job.field is not None and emb is not None:
        # The map is made from the stored field, so 'classify --field' reproduces it exactly.
        codes, scale = job.field.encode(emb)
        emb = job.field.decode(codes, scale)
        probs = class_probabilities(job, emb) if emb.shape[0] else probs
        field_codes = np.zeros((job.field.dims, ny, nx), np.int8)
        field_scale = np.full((ny, nx), np.nan, np.float16)
        field_codes[:, valid] = codes.T
        field_scale[valid] = scale
    k = job.output.top_k
    n_classes = job.classifier.shape[0] if probs is None else probs.shape[1]
    k = min(k, n_classes)
    classes = np.full((ny, nx), 255, np.uint8)
    conf = np.full((ny, nx), np.nan, np.float32)
    topk_c = np.full((k, ny, nx), 255, np.uint8)
    topk_p = np.full((k, ny, nx), np.nan, np.float32)
    margin = np.full((ny, nx), np.nan, np.float32)
    entropy = np.full((ny, nx), np.nan, np.float32)
    ood = np.full((ny, nx), np.nan, np.float32) if job.ood is not None else None
    if valid.any():
        cls, cf, tc, tp = predict(probs, k)
        classes[valid] = cls.astype(np.uint8)
        conf[valid] = cf
        topk_c[:, valid] = tc.T.astype(np.uint8)
        topk_p[:, valid] = tp.T
        margin[valid], entropy[valid] = margin_entropy(probs)
        if ood is not None and emb is not None:
            ood[valid] = job.ood.score(emb)
    embeddings = None
    if job.output.save_embeddings and job.field is None and emb is not None:
        embeddings = np.full((emb.shape[1] if emb.size else 0, ny, nx), np.nan, np.float16)
        if valid.any():
            embeddings[:, valid] = emb.T.astype(np.float16)
    result = TileResult(
        classes=classes,
        confidence=conf,
        topk_classes=topk_c,
        topk_probs=topk_p,
        valid_obs=counts.astype(np.uint16),
        composite=comp_values.astype(np.float32) if job.output.save_composite else None,
        embeddings=embeddings,
        field_codes=field_codes,
        field_scale=field_scale,
        rgb=_true_colour(comp_values, valid),
        margin=margin,
        entropy=entropy,
        ood=ood,
        # post-processing runs over the whole map once the tiles are done
        # (pipeline.run.postprocess); until then the raw classes are the classes
        classes_raw=classes if job.output.postprocess else None,
        postprocessed=np.where(valid, 0, 255).astype(np.uint8) if job.output.postprocess else None,
    )
    write_tile(job.store, tile, result)
    write_tile_rasters(Path(job.tile_dir), tile, result)
    t["write"], c["write"] = time.perf_counter(), time.process_time()
    import os
    import resource

    return {
        "tile": tile.id,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "scenes": int(n_scenes),
        "pixels": int(ny * nx),
        "valid_pixels": int(valid.sum()),
        "coverage": coverage_counts(counts, inside),
        "offset_warnings": offset_warnings,
        "unreadable": unreadable,
        "seconds": {
            "model": t["model"] - t["start"],
            "load": t_load,
            "composite": t["composite"] - t["model"] - t_load,
            "infer": t["infer"] - t["composite"],
            "write": t["write"] - t["infer"],
        },
        # CPU seconds of the worker process per stage (load and composite together: the
        # reader's threads interleave them); what the stage really occupies of a core, apart
        # from other processes that share the machine (wall seconds above include their share)
        "cpu_seconds": {
            "model": c["model"] - c["start"],
            "read": c["composite"] - c["model"],
            "infer": c["infer"] - c["composite"],
            "write": c["write"] - c["infer"],
        },
        "worker": os.getpid(),
        "wall_span": [started, time.time()],
    }


def coverage_counts(counts: np.ndarray, inside: np.ndarray) -> dict[str, Any]:
    """Pixels of the region in a tile, those without any clear observation, and per period those
    gap-filled (no clear observation in that period, some in another). Pure.

    Args:
        counts: (P, y, x) clear observations per period and pixel.
        inside: (y, x) bool, the pixel centre lies in the region.
    """
    any_obs = counts.sum(axis=0) > 0
    return {
        "inside": int(inside.sum()),
        "no_data": int((inside & ~any_obs).sum()),
        "gap_filled": [int(((c == 0) & any_obs & inside).sum()) for c in counts],
    }


@detached_read_failures
def sample_embeddings(job: TileJob, n: int, seed: int) -> np.ndarray:
    """Embeddings of up to ``n`` valid pixels (or chips) of a tile: the calibration sample."""
    adapter = job.model.adapter
    m = job.model.load()
    rng = np.random.default_rng(seed)
    plan = adapter.chip_layout(job.tile.geobox, job.chips.window, job.chips.stride)
    comp, _, _, _, _ = load_composite(job, plan.geobox if plan else job.tile.geobox)
    return adapter.sample(job, m, comp, plan, n, rng)
