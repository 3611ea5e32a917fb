"""``classify --field --full`` (and ``--head``): the run's whole product set from one stored
embedding field, reading no imagery (the streamed default is :mod:`pipeline.field.classify_map`).

Tile by tile on the field's own grid (one tile's decoded embeddings in memory at a time), the
same per-tile products as ``run`` (:class:`~pipeline.writers.TileResult` into a map store and
per-tile GeoTIFFs), then the run's own publishing step (:func:`pipeline.run.publishing.publish`: COGs,
legend, quicklook, STAC item). Classification is the run's too: the zero-shot text classifier
with the optional class-mean calibration (:func:`model.zeroshot.probabilities`) or a few-shot
head, and :func:`pipeline.run.tile_task.predict`. Because a ``--save-embeddings`` run classifies the
decoded field, the run's own legend reproduces the run's class map exactly.

A text legend is computed in the code space: its class vectors are projected once into the
field's components and each tile's cosines come from the int8 codes and scales
(:func:`pipeline.field.api.code_cosines`), with no 512-d decode; they equal the decoded path's
to ~1e-6, so classes agree except on exact ties, which break by class index in both. A few-shot
head (a learned model on the full embedding) still decodes the tile.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from model.train.probe import check_head_matches, load_head
from model.zeroshot import LOGIT_SCALE, calibrated_cosine
from pipeline.adapters.base import cached_head
from pipeline.adapters.uncertainty import margin_entropy
from pipeline.base.config import to_plain
from pipeline.base.errors import UserError
from pipeline.base.hashing import json_digest
from pipeline.base.jsonio import write_json
from pipeline.field.api import (
    Field,
    _group,
    code_cosines,
    decode_valid,
    load_model,
    model_spec,
    project,
)
from pipeline.run.config import FLAT_KEYS, RunConfig
from pipeline.run.prepare import prepare_run
from pipeline.run.publishing import publish
from pipeline.run.reporting import up_to_date
from pipeline.run.tile_task import predict
from pipeline.run.workspace import Workspace
from pipeline.writers import TileResult, create_map_store, write_tile, write_tile_rasters

_log = logging.getLogger(__name__)

#: Pixels sampled from the field to fit the class-mean calibration of a new legend.
CALIBRATION_SAMPLES = 8192


@dataclass(frozen=True)
class ClassifyConfig:
    """What ``classify --field`` makes (all optional but one of ``legend`` / ``head``)."""

    legend: str | None = None
    style: str | None = None
    head: str | None = None
    calibration: str | None = None
    """``reference``, ``none``, or None: the run's setting."""
    top_k: int | None = None
    checkpoint: str | None = None
    clip_checkpoint: str | None = None
    out: Path | None = None
    overwrite: bool = False
    progress: bool = True


def run_config_of(f: Field) -> Any:
    """The :class:`~pipeline.run.config.RunConfig` of the run that made the field."""

    plain = dict(f.run.get("config") or {})
    if not plain:
        raise UserError(f"{f.map_dir}: run.json is missing; cannot tell how the field was made")
    return RunConfig.from_flat({k: v for k, v in plain.items() if k in FLAT_KEYS}, where="run.json")


def default_out(f: Field, c: ClassifyConfig) -> Path:
    """``MAP_DIR/maps/<legend or head name>``."""
    name = Path(c.head).stem if c.head else Path(str(c.legend)).stem
    return f.map_dir / "maps" / name


def _new_config(f: Field, c: ClassifyConfig) -> Any:
    if bool(c.legend) == bool(c.head):
        raise UserError("give exactly one of --legend FILE|NAME or --head FILE")
    base = run_config_of(f)
    spec = model_spec(f, c.checkpoint, c.clip_checkpoint)
    calibration = c.calibration or ("none" if c.head else base.model.calibration)
    return base.with_(
        legend=c.legend or base.model.legend,
        style=c.style or base.model.style,
        head=c.head,
        calibration=calibration,
        top_k=c.top_k or base.output.top_k,
        checkpoint=spec.checkpoint,
        clip_checkpoint=spec.clip_checkpoint,
        untrained=spec.untrained,
        save_embeddings=False,
        save_composite=False,
        out=Path(c.out) if c.out else default_out(f, c),
        overwrite=c.overwrite,
        progress=c.progress,
    )


def _calibration(f: Field, cfg: Any, prep: Any) -> list[float] | None:
    """The run's vector for its own legend; for another legend, fitted on a sample of the field."""
    if cfg.model.calibration != "reference" or cfg.model.head:
        return None
    if prep.legend_info.get("prompt_hash") == (f.run.get("legend") or {}).get("prompt_hash"):
        if f.run.get("calibration") is not None:
            return list(f.run["calibration"])

    # The per-class mean cosine (model.zeroshot.fit_calibration) of the same sample as before,
    # computed in the code space.
    rng = np.random.default_rng(cfg.model.seed)
    vectors = project(f, _classifier(prep))
    parts = []
    per_tile = max(1, CALIBRATION_SAMPLES // max(1, len(prep.grid.tiles)))
    for tile in prep.grid.tiles:
        _, cos = code_cosines(f, tile.window, vectors)
        if len(cos):
            parts.append(cos[np.sort(rng.permutation(len(cos))[:per_tile])])
    if not parts:
        raise UserError(f"{f.map_dir}: the field has no valid pixel to calibrate on")
    return np.concatenate(parts).astype(np.float64).mean(axis=0).tolist()


def _classifier(prep: Any) -> np.ndarray:
    """The (C, D) text classifier as float32 numpy (it may be a torch tensor)."""
    w = prep.classifier
    return np.asarray(w.detach().cpu().numpy() if hasattr(w, "detach") else w, np.float32)


def probabilities_from_cosines(cos: np.ndarray, calibration: Any) -> np.ndarray:
    """(N, C) float32 class probabilities from (N, C) cosines: the calibration and softmax of
    :func:`model.zeroshot.probabilities`, without its cosine step."""
    import torch  # noqa: PLC0415 (already loaded with the model)

    c = calibrated_cosine(torch.from_numpy(np.ascontiguousarray(cos, np.float32)), calibration)
    return torch.softmax(LOGIT_SCALE * c, dim=-1).numpy().astype(np.float32)


def _output_hash(f: Field, cfg: Any) -> str:
    key = {
        "field": f.meta,
        "field_config_hash": f.run.get("output_hash"),
        "legend": cfg.model.legend if not cfg.model.head else None,
        "style": cfg.model.style,
        "head": cfg.model.head,
        "calibration": cfg.model.calibration,
        "top_k": cfg.output.top_k,
    }
    return json_digest(key, default=str)


def classify_field(f: Field, c: ClassifyConfig) -> Path:
    """Write a new class map from the field ``f``; returns the output folder.

    Raises:
        UserError: neither or both of legend and head, a model or head that is not the field's,
            an output folder holding another map.
    """

    t0 = time.perf_counter()
    cfg = _new_config(f, c)
    m = load_model(f, cfg.model.checkpoint, cfg.model.clip_checkpoint)
    prep = prepare_run(cfg)
    if cfg.model.head:
        check_head_matches(
            load_head(cfg.model.head),
            {"name": m.name, "dim": m.embed_dim, "checkpoint_sha256": m.checkpoint_sha256},
            where=str(cfg.model.head),
        )
    # The field's own grid, not the region's re-derived one: no imagery and no region code.
    prep = dataclasses.replace(prep, grid=f.grid)
    ws = Workspace(Path(cfg.execution.out))
    ws.check_writable()
    output_hash = _output_hash(f, cfg)
    if not cfg.execution.overwrite and up_to_date(ws, output_hash):
        _log.info("%s is complete and up to date; nothing to do", ws.out)
        return ws.out
    ws.prepare(output_hash, cfg.execution.overwrite)
    calibration = _calibration(f, cfg, prep)
    calib = None if calibration is None else np.asarray(calibration, np.float32)
    vectors = None if cfg.model.head else project(f, _classifier(prep))
    ws.save_manifest({"output_hash": output_hash, "source_field": str(f.map_dir)})
    labels = [str(p) for p in f.layout.get("periods", [])]
    k = min(cfg.output.top_k, len(prep.class_names))
    create_map_store(
        ws.store,
        prep.grid,
        class_names=list(prep.class_names),
        k=k,
        period_labels=labels,
        attrs={
            "config_hash": output_hash,
            "region": prep.region_name,
            "model": cfg.model.name,
            "untrained": cfg.model.untrained,
            "source_field": str(f.map_dir),
        },
    )
    done = ws.done_tiles()
    todo = [t for t in prep.grid.tiles if t.id not in done]

    for tile in tqdm(todo, unit="tile", desc="classify", disable=not cfg.execution.progress):
        ws.mark_done(tile.id, _classify_tile(f, ws, tile, cfg, vectors, calib, k))
    report = {
        "status": "complete",
        "untrained": cfg.model.untrained,
        "output_hash": output_hash,
        "source_field": str(f.map_dir),
        "field": f.meta,
        "config": _plain(cfg),
        "region": f.run.get("region"),
        "model": prep.model_info,
        "legend": {**prep.legend_info, "classes": list(prep.class_names)},
        "calibration": calibration,
        "tiles": {"total": len(prep.grid.tiles), "done": len(prep.grid.tiles)},
        "seconds": {"tiles": time.perf_counter() - t0},
    }
    t = time.perf_counter()
    publish(cfg, prep, ws, report, labels)
    report["seconds"]["publish"] = time.perf_counter() - t
    report["seconds"]["total"] = time.perf_counter() - t0
    write_json(ws.out / "run.json", report)
    _log.info("map written to %s (%.1f s)", ws.out, report["seconds"]["total"])
    return ws.out


def _plain(cfg: Any) -> dict[str, Any]:

    return to_plain(cfg.flat())


def _valid_obs(f: Field, tile: Any) -> np.ndarray:
    """The source map's valid-observation counts of a tile (the field's input coverage)."""

    ys, xs = tile.window
    return np.asarray(_group(f)["valid_obs"][:, ys, xs])


def _classify_tile(f: Field, ws: Any, tile: Any, cfg: Any, vectors: Any, calib, k: int) -> dict:

    t = time.perf_counter()
    if cfg.model.head:
        valid, emb = decode_valid(f, tile.window)
    else:
        valid, emb = code_cosines(f, tile.window, vectors)  # emb: (N, C) cosines
    ny, nx = tile.shape
    classes = np.full((ny, nx), 255, np.uint8)
    conf = np.full((ny, nx), np.nan, np.float32)
    topk_c = np.full((k, ny, nx), 255, np.uint8)
    topk_p = np.full((k, ny, nx), np.nan, np.float32)
    margin = np.full((ny, nx), np.nan, np.float32)
    entropy = np.full((ny, nx), np.nan, np.float32)
    if len(emb):
        if cfg.model.head:
            probs = np.asarray(cached_head(cfg.model.head).predict(emb), dtype=np.float32)
        else:
            probs = probabilities_from_cosines(emb, calib)
        cls, cf, tc, tp = predict(probs, k)
        classes[valid] = cls.astype(np.uint8)
        conf[valid] = cf
        topk_c[:, valid] = tc.T.astype(np.uint8)
        topk_p[:, valid] = tp.T
        margin[valid], entropy[valid] = margin_entropy(probs)
    result = TileResult(
        classes=classes,
        confidence=conf,
        topk_classes=topk_c,
        topk_probs=topk_p,
        valid_obs=_valid_obs(f, tile),
        margin=margin,
        entropy=entropy,
    )
    write_tile(ws.store, tile, result)
    write_tile_rasters(ws.tile_dir(tile.id), tile, result)
    return {"tile": tile.id, "valid_pixels": int(valid.sum()), "seconds": time.perf_counter() - t}
