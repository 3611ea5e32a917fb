"""What one Dask task does for one tile: load its window, composite, infer, write.

Runs inside a worker process. Everything it needs travels in a small, picklable
:class:`TileJob` (the tile's grid, the STAC items that touch it, the text classifier and
calibration computed once by the driver), so the scheduler's graph has one node per tile and
never sees chunks or dates. The model is loaded once per worker process (``model.get_model``).
Memory is bounded by the tile size: one tile's cube, composite and predictions at a time.
"""

from __future__ import annotations

import functools
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bands import BANDS
from pipeline.read_failure import detached_read_failures
from pipeline.tiling import Tile

#: Bands the patch model sees, in its order (red, green, blue).
RGB = ("B4", "B3", "B2")


@dataclass(frozen=True)
class ModelSpec:
    """How a worker builds (and caches) its model."""

    name: str
    checkpoint: str | None
    clip_checkpoint: str | None
    arch: str | None
    untrained: bool
    seed: int
    precision: str = "auto"
    """``fp32`` or ``bf16`` once resolved (:func:`pipeline.run.plan.resolve_precision`)."""

    @classmethod
    def of(cls, cfg: Any) -> ModelSpec:
        """The spec of a :class:`~pipeline.run_config.RunConfig`."""
        return cls(
            cfg.model,
            cfg.checkpoint,
            cfg.clip_checkpoint,
            cfg.arch,
            cfg.untrained,
            cfg.seed,
            getattr(cfg, "precision", "auto"),
        )

    def load(self) -> Any:

        m = self._get()
        if self.precision != "auto":
            from model.engine import set_precision

            set_precision(m, self.precision)
        return m

    def _get(self) -> Any:
        import model

        return model.get_model(
            self.name,
            self.checkpoint,
            arch=self.arch,
            clip_checkpoint=self.clip_checkpoint,
            untrained=self.untrained,
            seed=self.seed,
        )


@dataclass(frozen=True)
class TileJob:
    """One tile's work order (small and picklable)."""

    tile: Tile
    items: tuple[dict, ...]
    geometry_wkb: bytes
    model: ModelSpec
    classifier: np.ndarray  # (C, D) L2-normalised class embeddings (ignored with a head)
    calibration: np.ndarray | None
    head: str | None
    start: Any
    end: Any
    period: str
    mask_snow: bool
    window: int
    stride: int
    top_k: int
    save_composite: bool
    save_embeddings: bool
    store: str
    tile_dir: str
    field: Any = None
    """The compact field's :class:`~pipeline.field.codec.FieldCodec` (with ``save_embeddings``)."""


def load_composite(job: TileJob, geobox) -> tuple[Any, int, float, dict[str, str]]:
    """The window's composite (eager, inside the task), its observation count (acquisition days),
    the load seconds and the scenes whose DN contradict their offset (id -> reason).

    The shared window path (:func:`pipeline.window.composite_window`): reads through
    :func:`pipeline.reading.load_reflectance` (the native-grid fast path on the scenes' own
    lattice, odc-stac's warp elsewhere). Raises :class:`pipeline.cube.ReadFailure`
    when a scene cannot be read: lost input fails the tile, it is never composited as "no
    observation".
    """

    from pipeline.window import composite_window

    # the item dicts themselves: the reader converts a worker's scenes once, not per tile
    w = composite_window(
        job.items, geobox, start=job.start, end=job.end, period=job.period, mask_snow=job.mask_snow
    )
    return w.composite, w.acquisitions, w.load_seconds, w.offset_warnings


@functools.lru_cache(maxsize=4)
def _head(path: str) -> Any:
    """The few-shot head, read once per worker process (like the model)."""
    from model.train.probe import load_head

    return load_head(path)


def _probabilities(job: TileJob, emb: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities from embeddings: the few-shot head or zero-shot text classifier."""
    if job.head:
        return np.asarray(_head(job.head).predict(emb), dtype=np.float32)
    from model.zeroshot import probabilities

    return np.asarray(probabilities(emb, job.classifier, job.calibration), dtype=np.float32)


def predict(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class, confidence and top-k from (N, C) probabilities (pure)."""
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    topk_p = np.take_along_axis(probs, order, axis=1)
    return order[:, 0], topk_p[:, 0], order, topk_p


def _pixel_model(job: TileJob, m: Any, comp: Any, valid: np.ndarray):
    """TimeSenCLIP: every valid pixel's (T, 10) composite series -> probabilities, embeddings."""
    from model.engine import embed_pixels

    series = comp.values[:, :, valid]  # (P, B, N)
    series = np.ascontiguousarray(np.transpose(series, (2, 0, 1))) * np.float32(1e4)
    if not job.head and not job.save_embeddings:
        # Classify on the device: only (N, C) probabilities come back, not 512-wide embeddings.
        from model.engine import pixel_probabilities

        return pixel_probabilities(m, series, job.classifier, job.calibration), None
    emb = embed_pixels(m, series) if series.shape[0] else np.zeros((0, m.embed_dim), np.float32)
    return _probabilities(job, emb), emb


def usable_chips(chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chips the patch model sees, for the map and for its calibration sample alike.

    Args:
        chips: (n, 3, win, win) reflectance, NaN where unobserved.

    Returns:
        ok: (n,) bool, the chip has at least one observed pixel;
        filled: (ok.sum(), 3, win, win) float32, those chips with their gaps set to the chip's
        per-band mean.
    """
    ok = ~np.all(np.isnan(chips), axis=(1, 2, 3))
    sel = np.ascontiguousarray(chips[ok], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        fill = np.nanmean(sel, axis=(2, 3), keepdims=True)
    return ok, np.where(np.isnan(sel), fill, sel)


def _patch_model(job: TileJob, m: Any, comp: Any, plan: Any, valid: np.ndarray):
    """SenCLIP: sliding RGB chips per period -> chip probabilities -> smooth blend per pixel.

    Each period's composite gives every chip a probability vector; a chip's probabilities are
    averaged over the periods where it has data (a temporal ensemble) and the chips are blended
    into pixels with :func:`pipeline.tiling.blend`. Chips with no data at all stay NaN and do not
    count; gaps inside a chip take the chip's per-band mean before the min-max stretch.
    """
    from model.engine import chip_probabilities, embed_chips
    from pipeline.tiling import blend

    rgb_idx = [BANDS.index(b) for b in RGB]
    n_chips = plan.n_chips
    probs_sum = emb_sum = None
    used = np.zeros(n_chips, np.float32)
    for p in range(comp.values.shape[0]):
        chips = plan.extract(comp.values[p, rgb_idx])  # (n, 3, win, win) view
        ok, sel = usable_chips(chips)
        if not ok.any():
            continue
        if job.head or job.save_embeddings:
            emb = embed_chips(m, sel)
            probs = _probabilities(job, emb)
        else:  # classify on the device; embeddings are not needed
            emb = None
            probs = chip_probabilities(m, sel, job.classifier, job.calibration)
        if probs_sum is None:
            probs_sum = np.zeros((n_chips, probs.shape[1]), np.float64)
            emb_sum = np.zeros((n_chips, m.embed_dim), np.float64)
        probs_sum[ok] += probs
        if emb is not None:
            emb_sum[ok] += emb
        used[ok] += 1
    if probs_sum is None:
        return None, None, np.zeros_like(valid)
    has = used > 0
    chip_probs = np.where(has[:, None], probs_sum / np.maximum(used, 1)[:, None], np.nan)
    pix_probs = blend(chip_probs, plan)  # (C, ny, nx), NaN where no chip has data
    covered = np.isfinite(pix_probs).all(axis=0)
    pix_emb = None
    if job.save_embeddings:
        chip_emb = np.where(has[:, None], emb_sum / np.maximum(used, 1)[:, None], np.nan)
        pix_emb = blend(chip_emb, plan)
        pix_emb /= np.maximum(np.linalg.norm(pix_emb, axis=0, keepdims=True), 1e-12)
    return pix_probs, pix_emb, covered


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
    from shapely import wkb

    from pipeline.tiling import aoi_mask, chip_plan
    from pipeline.writers import TileResult, write_tile, write_tile_rasters

    t = {"start": time.perf_counter()}
    tile = job.tile
    m = job.model.load()
    t["model"] = time.perf_counter()
    geom = wkb.loads(job.geometry_wkb)
    plan = chip_plan(tile.geobox, job.window, job.stride) if job.model.name == "senclip" else None
    comp_full, n_scenes, t_load, offset_warnings = load_composite(
        job, plan.geobox if plan else tile.geobox
    )
    t["composite"] = time.perf_counter()

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

    if plan is None:
        probs, emb = _pixel_model(job, m, comp_full, valid)
    else:
        pix_probs, pix_emb, covered = _patch_model(job, m, comp_full, plan, valid)
        valid &= covered
        probs = pix_probs[:, valid].T if pix_probs is not None else None
        emb = pix_emb[:, valid].T if pix_emb is not None else None
    t["infer"] = time.perf_counter()

    field_codes = field_scale = None
    if job.save_embeddings and job.field is not None and emb is not None:
        # The map is made from the stored field, so 'classify --field' reproduces it exactly.
        codes, scale = job.field.encode(emb)
        emb = job.field.decode(codes, scale)
        probs = _probabilities(job, emb) if emb.shape[0] else probs
        field_codes = np.zeros((job.field.dims, ny, nx), np.int8)
        field_scale = np.full((ny, nx), np.nan, np.float16)
        field_codes[:, valid] = codes.T
        field_scale[valid] = scale
    k = job.top_k
    n_classes = job.classifier.shape[0] if probs is None else probs.shape[1]
    k = min(k, n_classes)
    classes = np.full((ny, nx), 255, np.uint8)
    conf = np.full((ny, nx), np.nan, np.float32)
    topk_c = np.full((k, ny, nx), 255, np.uint8)
    topk_p = np.full((k, ny, nx), np.nan, np.float32)
    if valid.any():
        cls, cf, tc, tp = predict(probs, k)
        classes[valid] = cls.astype(np.uint8)
        conf[valid] = cf
        topk_c[:, valid] = tc.T.astype(np.uint8)
        topk_p[:, valid] = tp.T
    embeddings = None
    if job.save_embeddings and job.field is None and emb is not None:
        embeddings = np.full((emb.shape[1] if emb.size else 0, ny, nx), np.nan, np.float16)
        if valid.any():
            embeddings[:, valid] = emb.T.astype(np.float16)
    result = TileResult(
        classes=classes,
        confidence=conf,
        topk_classes=topk_c,
        topk_probs=topk_p,
        valid_obs=counts.astype(np.uint16),
        composite=comp_values.astype(np.float32) if job.save_composite else None,
        embeddings=embeddings,
        field_codes=field_codes,
        field_scale=field_scale,
        rgb=_true_colour(comp_values, valid),
    )
    write_tile(job.store, tile, result)
    write_tile_rasters(Path(job.tile_dir), tile, result)
    t["write"] = time.perf_counter()
    import resource

    return {
        "tile": tile.id,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "scenes": int(n_scenes),
        "pixels": int(ny * nx),
        "valid_pixels": int(valid.sum()),
        "coverage": coverage_counts(counts, inside),
        "offset_warnings": offset_warnings,
        "seconds": {
            "model": t["model"] - t["start"],
            "load": t_load,
            "composite": t["composite"] - t["model"] - t_load,
            "infer": t["infer"] - t["composite"],
            "write": t["write"] - t["infer"],
        },
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
    from shapely import wkb

    from model.engine import embed_chips, embed_pixels
    from pipeline.tiling import aoi_mask, chip_plan

    m = job.model.load()
    geom = wkb.loads(job.geometry_wkb)
    rng = np.random.default_rng(seed)
    if job.model.name == "senclip":
        plan = chip_plan(job.tile.geobox, job.window, job.stride)
        comp, _, _, _ = load_composite(job, plan.geobox)
        rgb_idx = [BANDS.index(b) for b in RGB]
        chips = np.concatenate(
            [plan.extract(comp.values[p, rgb_idx]) for p in range(comp.values.shape[0])]
        )
        # the chips the map classifies: any observed pixel, gaps filled (a sample of gap-free
        # chips only was empty wherever every chip reaches past the data, e.g. a small region)
        ok, filled = usable_chips(chips)
        if not ok.any():
            return np.zeros((0, m.embed_dim), np.float32)
        pick = np.sort(rng.permutation(int(ok.sum()))[:n])
        return embed_chips(m, np.ascontiguousarray(filled[pick]))
    comp, _, _, _ = load_composite(job, job.tile.geobox)
    valid = (comp.counts.sum(axis=0) > 0) & aoi_mask(job.tile.geobox, geom)
    idx = np.flatnonzero(valid.ravel())
    if idx.size == 0:
        return np.zeros((0, m.embed_dim), np.float32)
    idx = np.sort(rng.permutation(idx)[:n])
    p, b = comp.values.shape[:2]
    series = comp.values.reshape(p, b, -1)[:, :, idx].transpose(2, 0, 1) * np.float32(1e4)
    return embed_pixels(m, np.ascontiguousarray(series))
