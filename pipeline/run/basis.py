"""One field basis per model checkpoint: fitted once on the reference sample, cached by its hash.

A field's projection and quantiser (:class:`~pipeline.writers.codec.FieldCodec`) do not depend on
the run: they are fitted (:func:`~pipeline.writers.codec.fit_codec`) on the embeddings of the
reference sample of :mod:`pipeline.testing.reference` and kept in
``cache_dir("weights", "field-basis")/<basis hash>.npz`` beside the weights. Every run with the
same model, field size and codec version loads the same file, so fields of different runs,
regions and years are in the same space.

The **basis hash** (:func:`basis_hash`) names it: SHA-256 of the embedding space's identity
(checkpoint SHA-256, or ``untrained-seed<k>``), the sample's definition, the codec's name and
version and the field's dimensions. It is written into every field's metadata (``s2lc:field``
``basis_hash``), ``run.json``, the STAC item (``s2lc:field_basis_hash``) and the model card.

The first run that needs a basis fits it (a few seconds on a CPU) under a file lock, so parallel
runs on one cache fit it once; the file is written atomically. Embeddings of the sample are
computed with the ``fp32`` backend whatever the run's, so the basis is the checkpoint's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.hashing import json_digest
from pipeline.base.paths import cache_dir

_log = logging.getLogger(__name__)

#: How a field basis is made (bump with a change in fitting that keeps sample and codec).
BASIS_VERSION = 1


@dataclass(frozen=True)
class ModelBasis:
    """A model's field basis and what names it."""

    codec: Any
    """The :class:`~pipeline.writers.codec.FieldCodec` (mean (D,), basis (D, d))."""
    hash: str
    """The basis hash (hex SHA-256, :func:`basis_hash`)."""
    definition: dict[str, Any]
    """What the hash covers: model, sample, codec, dims."""
    path: Path
    """The cache file it was read from or written to."""


def basis_definition(model_info: dict[str, Any], dims: int, sample: Any = None) -> dict[str, Any]:
    """What the basis hash covers, as plain JSON.

    Args:
        model_info: :attr:`pipeline.run.prepare.Prepared.model_info` (``name``,
            ``embedding_identity``, ``checkpoint_sha256``, ``embed_dim``).
        dims: the field's components (``min(--field-dims, D)``).
        sample: the :class:`~pipeline.testing.reference.ReferenceSample` (default: the product's).
    """
    from pipeline.testing.reference import DEFAULT_SAMPLE
    from pipeline.writers.codec import ENCODING, ENCODING_VERSION

    sample = sample or DEFAULT_SAMPLE
    return {
        "model": model_info["name"],
        "embedding_identity": model_info.get("embedding_identity") or model_info["identity"],
        "checkpoint_sha256": model_info.get("checkpoint_sha256"),
        "embed_dim": int(model_info["embed_dim"]),
        "dims": int(dims),
        "sample": sample.definition(),
        "encoding": ENCODING,
        "encoding_version": ENCODING_VERSION,
        "basis_version": BASIS_VERSION,
    }


def basis_hash(definition: dict[str, Any]) -> str:
    """The basis hash: SHA-256 (hex) of :func:`basis_definition`'s canonical JSON."""
    return json_digest(definition, length=64)


def field_metadata(model_info: dict[str, Any], dims: int) -> dict[str, Any]:
    """The compact field's metadata (the store's ``s2lc:field``, also in ``run.json``, the STAC
    item and the model card): the model's identity, the decoding recipe, ``dims`` components
    (``dims + 2`` bytes per pixel) and the basis hash of this model and ``dims``
    (:func:`basis_hash`: equal hashes, the same space).

    Args:
        model_info: :attr:`pipeline.run.prepare.Prepared.model_info`.
        dims: the field's components (``min(--field-dims, D)``).
    """
    from pipeline.writers.codec import ENCODING, ENCODING_VERSION

    definition = basis_definition(model_info, dims)
    return {
        "encoding": ENCODING,
        "version": ENCODING_VERSION,
        "model": model_info["identity"],
        "embedding_identity": model_info.get("embedding_identity"),
        "model_name": model_info["name"],
        "embed_dim": model_info["embed_dim"],
        "dims": dims,
        "bytes_per_pixel": dims + 2,
        "basis_hash": basis_hash(definition),
        "decode": "e = normalise(field_mean + field_basis @ (field_codes * field_scale)); "
        "field_scale NaN = nodata (pipeline.writers.codec)",
    }


def recipe_digest(sample: Any = None) -> str:
    """A short digest of how bases are made (sample, codec, fitting), for the run's output hash:
    with the model (already in that hash) it determines the basis."""
    from pipeline.testing.reference import DEFAULT_SAMPLE
    from pipeline.writers.codec import ENCODING, ENCODING_VERSION

    return json_digest(
        {
            "sample": (sample or DEFAULT_SAMPLE).definition(),
            "encoding": ENCODING,
            "encoding_version": ENCODING_VERSION,
            "basis_version": BASIS_VERSION,
        }
    )


def basis_dir() -> Path:
    """Where bases are cached: ``cache_dir("weights", "field-basis")`` (``$S2LC_CACHE_DIR``)."""
    return cache_dir("weights", "field-basis")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path, digest: str) -> Any | None:
    """The cached codec, or None if absent or not the basis of ``digest``."""
    from pipeline.writers.codec import FieldCodec

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["basis_hash"]) != digest:
                return None
            return FieldCodec(z["mean"], z["basis"], float(z["explained_variance"]))
    except (OSError, KeyError, ValueError) as exc:
        _log.warning("%s: unreadable field basis (%s); fitting it again", path, exc)
        return None


def reference_embeddings(m: Any, adapter: Any, sample: Any = None) -> np.ndarray:
    """(N, D) fp32 embeddings of the reference sample (:func:`reference_inputs`) by model ``m``.

    The model's backend is fp32 for the call (restored after), so the basis does not depend on the
    run's ``--backend``.
    """
    from pipeline.testing.reference import DEFAULT_SAMPLE, reference_inputs

    before = getattr(m, "precision", None)
    if before is not None:
        m.precision = "fp32"
    try:
        batches = reference_inputs(adapter, sample or DEFAULT_SAMPLE)
        return np.concatenate([adapter.embed(m, x) for x in batches], axis=0)
    finally:
        if before is not None:
            m.precision = before


def model_basis(
    model_info: dict[str, Any], dims: int, load_model: Any, adapter: Any, sample: Any = None
) -> ModelBasis:
    """The model's field basis: read from the cache, or fitted once (under a lock) and cached.

    Args:
        model_info: the run's model identity (:func:`basis_definition`).
        dims: the field's components.
        load_model: () -> the loaded model (called only when the basis must be fitted).
        adapter: the model kind's :class:`~pipeline.adapters.base.ModelAdapter`.
        sample: the reference sample (default: the product's).

    Raises:
        ValueError: the sample's embeddings are not finite (a broken model).
    """
    from pipeline.base.atomic import atomic_path
    from pipeline.writers.codec import fit_codec, identity_codec

    definition = basis_definition(model_info, dims, sample)
    digest = basis_hash(definition)
    path = basis_dir() / f"{digest}.npz"
    if dims >= int(model_info["embed_dim"]):  # every dimension kept: no projection to fit
        return ModelBasis(identity_codec(int(model_info["embed_dim"])), digest, definition, path)
    codec = _read(path, digest)
    if codec is None:
        with _locked(path.with_name(path.name + ".lock")):
            codec = _read(path, digest)  # another run may have fitted it meanwhile
            if codec is None:
                emb = reference_embeddings(load_model(), adapter, sample)
                codec = fit_codec(emb, dims)
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.savez(
                        fh,
                        mean=codec.mean,
                        basis=codec.basis,
                        explained_variance=codec.explained_variance,
                        basis_hash=digest,
                        definition=json.dumps(definition, sort_keys=True),
                    )
                _log.info(
                    "field basis of %s fitted on %d reference embeddings (%.2f%% of their "
                    "variance in %d dims): %s",
                    definition["embedding_identity"],
                    len(emb),
                    100 * codec.explained_variance,
                    codec.dims,
                    path,
                )
    return ModelBasis(codec, digest, definition, path)
