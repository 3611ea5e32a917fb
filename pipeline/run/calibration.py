"""Class-mean calibration (and the OOD reference), fitted once per run on a fixed reference
sample of the region (its own grid of :data:`CALIBRATION_TILE_SIZE` tiles), so neither depends on
``--tile-size``; the calibration vector is stored in the manifest so resumed and repeated runs use
the same one. The compact field's codec is the model's, not the run's (:func:`fit_field`).
"""

from __future__ import annotations

import logging
import zlib

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


def _calibration_tiles(tiles: tuple, n: int) -> list:
    """``n`` tiles spread evenly through the grid's order (deterministic)."""
    if len(tiles) <= n:
        return list(tiles)
    idx = np.linspace(0, len(tiles) - 1, n).round().astype(int)
    return [tiles[i] for i in sorted(set(idx))]


def calibrate(
    client, cfg: RunConfig, prep: Prepared, ws: Workspace, inputs: RunInputs
) -> np.ndarray:
    """Fit the class-mean calibration once on a fixed reference sample of the region.

    The sample comes from a reference grid of its own (``CALIBRATION_TILE_SIZE``), not the run's
    tiles, so the calibration, and therefore the map, does not depend on ``--tile-size``.
    """
    from model.zeroshot import fit_calibration

    emb = reference_sample(client, cfg, prep, ws, inputs)
    vec = np.asarray(fit_calibration(emb, prep.classifier), dtype=np.float64)
    _log.info("calibration fitted on %d samples", len(emb))
    return vec


def fit_field(client, cfg: RunConfig, prep: Prepared, ws: Workspace, inputs: RunInputs):
    """The compact field's codec: the model's basis (:mod:`pipeline.run.basis`), written into
    the store once; a resumed run reads back the one its store has.

    The basis is fitted once per model checkpoint on the reference sample of
    :mod:`pipeline.testing.reference` and cached beside the weights, not on this run's pixels,
    so every run's field with the same model is in the same space.
    """
    from pipeline.run.basis import model_basis
    from pipeline.run.publishing import field_dims
    from pipeline.writers.field import read_codec, write_codec

    codec = read_codec(ws.store)
    if codec is not None:
        return codec
    basis = model_basis(
        prep.model_info, int(field_dims(cfg, prep)), cfg.model.load, cfg.model.adapter
    )
    codec = basis.codec
    write_codec(ws.store, codec)
    _log.info(
        "embedding field: %d -> %d dims, %d bytes/pixel, the model's basis %s (%s)",
        codec.embed_dim,
        codec.dims,
        codec.bytes_per_pixel,
        basis.hash[:16],
        basis.path,
    )
    return codec


def fit_ood_reference(client, cfg: RunConfig, prep: Prepared, ws: Workspace, inputs: RunInputs):
    """The OOD reference (``--ood``): read back from the workspace (resume) or fitted once on
    the same fixed reference sample as the calibration and kept in ``.s2lc/ood.npz``, so every
    tile of a run, resumed or not, is scored against the same reference and threshold."""
    from pipeline.adapters.uncertainty import OodReference, fit_ood

    path = ws.work / "ood.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return OodReference(
                embeddings=z["embeddings"],
                k=int(z["k"]),
                threshold=float(z["threshold"]),
                quantile=float(z["quantile"]),
            )
    emb = reference_sample(client, cfg, prep, ws, inputs)
    ref = fit_ood(emb, seed=cfg.model.seed)
    from pipeline.base.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, embeddings=ref.embeddings, k=ref.k, threshold=ref.threshold,
                 quantile=ref.quantile)  # fmt: skip
    _log.info("OOD reference: %d embeddings, k=%d, threshold %.4g (%.0f %% of the sample under it)",
              len(ref.embeddings), ref.k, ref.threshold, 100 * ref.quantile)  # fmt: skip
    return ref


_SAMPLES: dict[str, np.ndarray] = {}


def clear_reference_sample() -> None:
    """Forget the reference sample kept for the run (once calibration and field are fitted)."""
    _SAMPLES.clear()


def reference_sample(client, cfg: RunConfig, prep: Prepared, ws: Workspace, inputs: RunInputs):
    """Embeddings of a fixed reference sample of the region (computed once per run)."""
    key = str(ws.out.resolve()) + cfg.output_hash()
    if key in _SAMPLES:
        return _SAMPLES[key]
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
    _SAMPLES.clear()
    _SAMPLES[key] = emb
    return emb
