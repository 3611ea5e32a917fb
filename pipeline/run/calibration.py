"""Class-mean calibration (and the OOD reference), fitted once per run on a fixed reference
sample of the region (its own grid of :data:`CALIBRATION_TILE_SIZE` tiles), so neither depends on
``--tile-size``; the calibration vector is stored in the manifest so resumed and repeated runs use
the same one. The compact field's codec is the model's, not the run's (:func:`fit_field`).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import UserError
from pipeline.run.config import RunConfig
from pipeline.run.inputs import RunInputs
from pipeline.run.prepare import Prepared
from pipeline.run.scheduling import task_resources, tile_job
from pipeline.run.workspace import Workspace
from pipeline.stac.search import NoScenesError

_log = logging.getLogger(__name__)

#: Reference sample for calibration: tiles spread over the region, pixels (or chips) per tile.
CALIBRATION_TILES = 4
CALIBRATION_TILE_SIZE = 128
CALIBRATION_SAMPLES_PER_TILE = 2048


@dataclass(frozen=True)
class References:
    """What a run fits once on its reference sample: the calibration vector (None: none), the
    compact field's codec (``--save-embeddings``) and the OOD reference (``--ood``)."""

    calibration: list[float] | None = None
    codec: Any = None
    ood: Any = None
    """:class:`pipeline.adapters.uncertainty.OodReference`, or None."""


def fit_references(
    client, cfg: RunConfig, prep: Prepared, ws: Workspace, inputs: RunInputs, manifest: dict
) -> References:
    """The calibration vector (from the manifest, or fitted and stored there), the field codec
    and the OOD reference, all fitted on one reference sample of the region
    (:func:`reference_sample`), computed on first need and only once."""
    cache: list[np.ndarray] = []

    def sample() -> np.ndarray:
        if not cache:
            cache.append(reference_sample(client, cfg, prep, ws, inputs))
        return cache[0]

    calibration = manifest.get("calibration")
    if cfg.model.calibration == "reference" and calibration is None and not cfg.model.head:
        calibration = calibrate(sample(), prep.classifier).tolist()
        manifest["calibration"] = calibration
        ws.save_manifest(manifest)
    codec = (
        fit_field(ws.store, prep.field_dims, prep.model_info, cfg.model)
        if cfg.output.save_embeddings
        else None
    )
    ood = fit_ood_reference(ws.work / "ood.npz", sample, cfg.model.seed) if cfg.output.ood else None
    return References(calibration, codec, ood)


def _calibration_tiles(tiles: tuple, n: int) -> list:
    """``n`` tiles spread evenly through the grid's order (deterministic)."""
    if len(tiles) <= n:
        return list(tiles)
    idx = np.linspace(0, len(tiles) - 1, n).round().astype(int)
    return [tiles[i] for i in sorted(set(idx))]


def calibrate(emb: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """The class-mean calibration (C,) of the (C, D) text ``classifier``, fitted on the (N, D)
    embeddings of the reference sample (:func:`model.zeroshot.fit_calibration`).

    The sample comes from a reference grid of its own (``CALIBRATION_TILE_SIZE``), not the run's
    tiles, so the calibration, and therefore the map, does not depend on ``--tile-size``.
    """
    from model.zeroshot import fit_calibration

    vec = np.asarray(fit_calibration(emb, classifier), dtype=np.float64)
    _log.info("calibration fitted on %d samples", len(emb))
    return vec


def fit_field(store: Any, dims: int, model_info: dict[str, Any], model: Any):
    """The compact field's codec of ``dims`` components: the model's basis
    (:mod:`pipeline.run.basis`), written into the map's ``store`` once; a resumed run reads back
    the one its store has.

    ``model_info`` is the loaded model's identity (``Prepared.model_info``) and ``model`` its
    :class:`~pipeline.run.config.ModelConfig` (how to load it, should the basis need fitting).

    The basis is fitted once per model checkpoint on the reference sample of
    :mod:`pipeline.testing.reference` and cached beside the weights, not on this run's pixels,
    so every run's field with the same model is in the same space.
    """
    from pipeline.run.basis import model_basis
    from pipeline.writers.field import read_codec, write_codec

    codec = read_codec(store)
    if codec is not None:
        return codec
    basis = model_basis(model_info, int(dims), model.load, model.adapter)
    codec = basis.codec
    write_codec(store, codec)
    _log.info(
        "embedding field: %d -> %d dims, %d bytes/pixel, the model's basis %s (%s)",
        codec.embed_dim,
        codec.dims,
        codec.bytes_per_pixel,
        basis.hash[:16],
        basis.path,
    )
    return codec


def fit_ood_reference(path: Path, sample: Callable[[], np.ndarray], seed: int):
    """The OOD reference (``--ood``): read back from ``path`` (``.s2lc/ood.npz``, resume) or
    fitted once on ``sample()`` (the reference sample's embeddings, as the calibration's) and
    kept there, so every tile of a run, resumed or not, is scored against the same reference and
    threshold."""
    from pipeline.adapters.uncertainty import OodReference, fit_ood

    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return OodReference(
                embeddings=z["embeddings"],
                k=int(z["k"]),
                threshold=float(z["threshold"]),
                quantile=float(z["quantile"]),
            )
    ref = fit_ood(sample(), seed=seed)
    from pipeline.base.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, embeddings=ref.embeddings, k=ref.k, threshold=ref.threshold,
                 quantile=ref.quantile)  # fmt: skip
    _log.info("OOD reference: %d embeddings, k=%d, threshold %.4g (%.0f %% of the sample under it)",
              len(ref.embeddings), ref.k, ref.threshold, 100 * ref.quantile)  # fmt: skip
    return ref


def reference_sample(client, cfg: RunConfig, prep: Prepared, ws: Workspace, inputs: RunInputs):
    """(N, D) embeddings of a fixed reference sample of the region: a few tiles of a reference
    grid of its own (:data:`CALIBRATION_TILE_SIZE`), a fixed number of pixels (or chips) each.

    Raises:
        UserError: the sample's scenes cannot be read.
        NoScenesError: the sample holds no valid observation.
    """
    from pipeline.grid.tiling import make_grid
    from pipeline.run.tile_task import sample_embeddings

    ref_grid = make_grid(prep.geometry, prep.crs, prep.resolution, CALIBRATION_TILE_SIZE)
    tiles = _calibration_tiles(ref_grid.tiles, CALIBRATION_TILES)
    futures = [
        client.submit(
            sample_embeddings,
            tile_job(cfg, prep, ws, inputs, t, None),
            CALIBRATION_SAMPLES_PER_TILE,
            zlib.crc32(t.id.encode()) + cfg.model.seed,
            pure=False,
            retries=cfg.execution.retries,
            resources=task_resources(client),
        )
        for t in tiles
    ]
    from distributed import as_completed
    from tqdm import tqdm

    from pipeline.reading.cube import ReadFailure

    with tqdm(
        total=len(futures),
        unit="tile",
        desc="calibration sample",
        disable=not cfg.execution.progress,
        mininterval=1.0,
        dynamic_ncols=True,
    ) as bar:
        for _ in as_completed(futures):
            bar.update(1)
    try:
        samples = [f.result() for f in futures]
    except ReadFailure as exc:
        raise UserError(
            f"calibration sample: reading scenes {', '.join(exc.scenes[:3])} failed ({exc}); "
            "nothing was mapped: rerun when the data is readable"
        ) from None
    emb = (
        np.concatenate([s for s in samples if len(s)], axis=0)
        if any(len(s) for s in samples)
        else None
    )
    if emb is None:
        raise NoScenesError(
            "no valid observation in the calibration sample: the region has no usable "
            "scenes (check --start/--end and --max-cloud)"
        )
    _log.info("reference sample: %d embeddings from %d tiles", len(emb), len(tiles))
    return emb
