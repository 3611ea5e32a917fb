"""``classify --field`` (by default): the class map of one or several fields with a text legend,
streamed tile by tile (:mod:`pipeline.field.stream`), reading no imagery and importing no torch
when the legend's vectors are in the text cache (:mod:`pipeline.field.texts`).

Products in ``OUT``: ``classes.tif`` (the COG: uint8, 255 = nodata, colour table and class names,
as ``run`` writes it), ``legend.json``, ``quicklook.png``, ``item.json`` (STAC) and ``run.json``;
while it runs, ``tiles/<unit>/classes.tif`` as each unit is done (removed once mosaicked).
``--full`` gives instead the run's whole product set for one field
(:func:`pipeline.field.classify.classify_field`: top-k, confidence, margin, entropy, map.zarr).

**Calibration** (``--calibration reference``, or the first run's setting):

- the legend is every run's own (same prompt hash) and every run stored the same class-mean
  vector: that vector (the maps reproduce the runs' own classes);
- otherwise (a new legend, or runs whose calibrations differ): one vector fitted on a sample of
  all the fields together, so the mosaic has one calibration and no seam between runs: the mean
  cosine per class (:func:`model.zeroshot.fit_calibration`) of ``CALIBRATION_SAMPLES`` pixels
  drawn (seeded) from up to ``CALIBRATION_UNITS`` units spread over every field.

``run.json`` records which applied (``calibration_source``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import UserError
from pipeline.base.jsonio import write_json
from pipeline.field import stream
from pipeline.field.fieldset import FieldSet

_log = logging.getLogger(__name__)

#: Pixels and units (chunks) sampled from the fields to fit a new calibration.
CALIBRATION_SAMPLES = 8192
CALIBRATION_UNITS = 16
#: The shifted calibration's offset (:func:`model.zeroshot.calibrated_cosine`, mode ``shifted``).
SHIFT = 2.0


@dataclass(frozen=True)
class MapConfig:
    """What the streamed ``classify --field`` makes."""

    legend: str
    style: str | None = None
    calibration: str | None = None
    """``reference``, ``none``, or None: the first run's setting."""
    checkpoint: str | None = None
    clip_checkpoint: str | None = None
    out: Path | None = None
    overwrite: bool = False
    progress: bool = True
    seed: int = 0


def shifted_affine(calibration: Any) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) (C,) float32 with ``alpha * cos + beta`` = the shifted class-mean
    calibration of :func:`model.zeroshot.calibrated_cosine`:
    ``(cos + a) / (m + a) * (mean(m) + a) - a`` with ``a`` = 2."""
    m = np.asarray(calibration, np.float64)
    alpha = (m.mean() + SHIFT) / (m + SHIFT)
    return alpha.astype(np.float32), (SHIFT * alpha - SHIFT).astype(np.float32)


def sample_calibration(fs: FieldSet, pv: Any, seed: int) -> list[float]:
    """The mean cosine per class of a seeded sample of the fields' pixels (code space).

    Raises:
        UserError: no valid pixel in the sampled units.
    """
    units = fs.units()
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(units))[:CALIBRATION_UNITS])
    per_unit = max(1, CALIBRATION_SAMPLES // len(pick))
    parts = []
    for i in pick:
        u = units[i]
        codes, scale = stream.read_chunk(str(fs.fields[u.index].store), u.window)
        d = codes.shape[0]
        valid, cos = stream.code_cosines32(
            codes.reshape(d, -1), scale.ravel(), pv.proj, pv.t_mean, pv.mean_sq
        )
        cos = cos[:, valid]
        if cos.shape[1]:
            parts.append(cos[:, np.sort(rng.permutation(cos.shape[1])[:per_unit])])
    if not parts:
        raise UserError(f"{fs.first.map_dir}: the field has no valid pixel to calibrate on")
    return np.concatenate(parts, axis=1).astype(np.float64).mean(axis=1).tolist()


def choose_calibration(
    fs: FieldSet, mode: str, prompt_hash: str, pv: Any, seed: int
) -> tuple[list[float] | None, str]:
    """(the calibration vector or None, which applied: ``none``, ``runs``, ``fitted``)."""
    if mode == "none":
        return None, "none"
    stored = [f.run.get("calibration") for f in fs.fields]
    own = all((f.run.get("legend") or {}).get("prompt_hash") == prompt_hash for f in fs.fields)
    if own and stored[0] is not None and all(s == stored[0] for s in stored):
        return list(stored[0]), "runs"
    return sample_calibration(fs, pv, seed), "fitted"


def _check_out(out: Path, overwrite: bool) -> None:
    if (out / "classes.tif").exists() and not overwrite:
        raise UserError(f"{out} already holds a class map; use --overwrite or another --out")


def classify_fields(fs: FieldSet, c: MapConfig, cluster: Any = None) -> Path:
    """Write the class map of ``fs`` with legend ``c.legend`` into ``c.out``; returns ``c.out``.

    Args:
        cluster: a :class:`pipeline.run.cluster.ClusterConfig`, or None (this process only).

    Raises:
        UserError: an unknown legend or style, the model is not the fields', an existing map at
            ``out`` without ``overwrite``, a cluster that cannot start.
    """
    from model.legends import load_legend  # noqa: PLC0415 (torch-free)
    from pipeline.field.texts import legend_vectors  # noqa: PLC0415

    t0 = time.perf_counter()
    first = fs.first
    cfg = first.run.get("config") or {}
    style = c.style or cfg.get("style") or "aerial"
    legend = load_legend(c.legend, style=style)
    out = Path(c.out) if c.out else first.map_dir / "maps" / Path(str(c.legend)).stem
    _check_out(out, c.overwrite)
    w = legend_vectors(first, legend, checkpoint=c.checkpoint, clip_checkpoint=c.clip_checkpoint)
    pv = first.codec.project(w)
    mode = c.calibration or cfg.get("calibration") or "reference"
    calibration, source = choose_calibration(fs, mode, legend.prompt_hash, pv, c.seed)
    alpha, beta = shifted_affine(calibration) if calibration is not None else (None, None)
    job = stream.new_job("classify", fs, pv, out, alpha=alpha, beta=beta)
    tiles = stream.tiles_dir_of(out)
    units = fs.units()
    t_setup = time.perf_counter() - t0
    first_s: list[float] = []
    bar = _progress(len(units), c.progress, "classify")

    def done(stats: dict[str, Any]) -> None:
        first_s or first_s.append(time.perf_counter() - t0)
        bar.update(1)

    try:
        stats = stream.execute(units, job, cluster, done)
    finally:
        bar.close()
    t_tiles = time.perf_counter()
    classes = publish_map(fs, legend, out, units, tiles, calibration, source, cfg)
    report = {
        "status": "complete",
        "untrained": bool(cfg.get("untrained")),
        "source_fields": [str(f.map_dir) for f in fs.fields],
        "source_field": str(first.map_dir),
        "basis_sha256": fs.basis_sha256,
        "field": first.meta,
        "model": first.run.get("model"),
        "legend": {
            "name": legend.name,
            "style": legend.style,
            "prompt_hash": legend.prompt_hash,
            "classes": list(legend.names),
        },
        "calibration": calibration,
        "calibration_mode": mode,
        "calibration_source": source,
        "units": {"total": len(units), "valid_pixels": int(sum(s["valid_pixels"] for s in stats))},
        "seconds": {
            "setup": t_setup,
            "first_tile": first_s[0] if first_s else None,
            "tiles": t_tiles - t0 - t_setup,
            "publish": time.perf_counter() - t_tiles,
            "total": time.perf_counter() - t0,
        },
    }
    write_json(out / "run.json", report)
    _log.info("class map written to %s (%.1f s)", classes, report["seconds"]["total"])
    return out


def publish_map(
    fs: FieldSet,
    legend: Any,
    out: Path,
    units: list[Any],
    tiles: Path,
    calibration: Any,
    source: str,
    cfg: dict[str, Any],
) -> Path:
    """The final ``classes.tif`` (mosaic of the units), legend, quicklook and STAC item."""
    import json  # noqa: PLC0415

    from pipeline.writers.cog import _classes_band_extra  # noqa: PLC0415
    from pipeline.writers.products import (  # noqa: PLC0415
        write_legend_json,
        write_quicklook,
        write_stac_item,
    )

    names, colors = list(legend.names), list(legend.colors)
    classes = stream.mosaic_cog(
        out / "classes.tif",
        units,
        tiles,
        "classes",
        geobox=fs.geobox,
        dtype="uint8",
        bands=1,
        nodata=255,
        band_extra=[_classes_band_extra(names, colors)],
        descriptions=["class"],
        metadata={"class_names": json.dumps(names), "nodata_class": "255"},
    )
    stream.drop_tiles(tiles)
    untrained = bool(cfg.get("untrained"))
    write_legend_json(
        out / "legend.json",
        class_names=names,
        colors=colors,
        legend_name=legend.name,
        style=legend.style,
        prompt_hash=legend.prompt_hash,
        untrained=untrained,
        extra={
            "model": fs.first.model_identity,
            "nodata": 255,
            "calibration": calibration,
            "calibration_source": source,
        },
    )
    title = f"{len(fs.fields)} field(s) | {cfg.get('model')} | {legend.name}"
    if untrained:
        title += "\nUNTRAINED WEIGHTS (demo): not a land-cover map"
    write_quicklook(out / "quicklook.png", classes, names, colors, title)
    from pipeline.grid.tiling import TileGrid  # noqa: PLC0415

    write_stac_item(
        out / "item.json",
        grid=TileGrid(fs.geobox, stream.BLOCK, ()),
        geometry_4326=fs.geobox.extent.to_crs("EPSG:4326").geom,
        start=cfg.get("start") or "1970-01-01",
        end=cfg.get("end") or cfg.get("start") or "1970-01-01",
        assets={
            "classes": classes,
            "legend": out / "legend.json",
            "quicklook": out / "quicklook.png",
            "run": out / "run.json",
        },
        class_names=names,
        colors=colors,
        properties={
            "s2lc:model": fs.first.model_identity,
            "s2lc:untrained": untrained,
            "s2lc:source_fields": [str(f.map_dir) for f in fs.fields],
            "s2lc:field_basis_sha256": fs.basis_sha256,
        },
        item_id=f"s2lc-ask-{legend.name}-{fs.basis_sha256[:12]}",
    )
    return classes


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, on: bool, desc: str) -> Any:
    if not on:
        return _NoBar()
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, unit="tile", desc=desc)
