"""The field API: open a map's embedding field, decode windows, encode text, score queries.

Pure Python on top of the map store; no Dask, no imagery. Used by ``classify --field``,
``query --field`` and the web viewer. Every array is (rows, cols) on the map's output grid;
windows are ``(row_slice, col_slice)`` in pixels of that grid (``Field.geobox`` converts to map
coordinates). Nodata (no valid observation, outside the region) is NaN.

Example::

    from pipeline.field import open_field, query_window
    f = open_field("outputs/demo/monthly/timesenclip")
    sim = query_window(f, ["a lake", "a village"], f.full_window)   # (2, h, w) cosine
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine
from odc.geo.geobox import GeoBox

from pipeline.base.errors import UserError
from pipeline.writers.codec import FieldCodec, ProjectedVectors
from pipeline.writers.field import FIELD_ATTR, read_codec
from pipeline.writers.zarr_map import read_store_attrs

_log = logging.getLogger(__name__)

Window = tuple[slice, slice]
#: Temperature of query probabilities (trained CLIP's logit scale, as zero-shot maps use).
LOGIT_SCALE = 100.0
KINDS = ("similarity", "probability")


@dataclass(frozen=True)
class Field:
    """A map's compact embedding field (opened by :func:`open_field`; cheap, reads no pixels)."""

    map_dir: Path
    """The map folder (holds ``map.zarr``, ``run.json``, ``legend.json``)."""
    store: Path
    """The Zarr map store with the ``field_*`` arrays."""
    codec: FieldCodec
    """The decoding recipe (mean, basis)."""
    meta: dict[str, Any]
    """The store's ``s2lc:field`` attribute: encoding, model identity, bytes per pixel."""
    run: dict[str, Any] = field(default_factory=dict, repr=False)
    """``run.json`` of the map (its ``config``, ``model``, ``legend``, ``calibration``)."""
    legend: dict[str, Any] = field(default_factory=dict, repr=False)
    """``legend.json`` of the map (class names, colours), empty if absent."""
    layout: dict[str, Any] = field(default_factory=dict, repr=False)
    """The store's grid layout (crs, transform, shape, tile_size)."""

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the map grid."""
        return tuple(self.layout["shape"])  # type: ignore[return-value]

    @property
    def full_window(self) -> Window:
        """The whole grid as a window."""
        return (slice(0, self.shape[0]), slice(0, self.shape[1]))

    @property
    def tile_size(self) -> int:
        """Edge of the store's chunks in pixels (read windows aligned to it for speed)."""
        return int(self.layout["tile_size"])

    @property
    def geobox(self) -> Any:
        """The map grid as an odc-geo GeoBox."""

        return GeoBox(self.shape, Affine(*self.layout["transform"][:6]), self.layout["crs"])

    @property
    def model_identity(self) -> str:
        """Identity of the model that made the field (embedding space + text tower)."""
        return str(self.meta.get("model"))

    @property
    def embedding_identity(self) -> str:
        """Identity of the embedding space (what must match to use the field)."""
        return str(self.meta.get("embedding_identity") or self.meta.get("model"))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Classes of the map the field came with."""
        return tuple(c["name"] for c in self.legend.get("classes", ()))

    @property
    def grid(self) -> Any:
        """The field's :class:`~pipeline.grid.tiling.TileGrid`: its own grid and every tile of the
        lattice (tiles outside the map's region read as nodata)."""

        from pipeline.grid.tiling import TileGrid  # noqa: PLC0415

        empty = TileGrid(self.geobox, self.tile_size, ())
        nr, nc = empty.lattice_shape
        return TileGrid(
            self.geobox,
            self.tile_size,
            tuple(empty.tile(r, c) for r in range(nr) for c in range(nc)),
        )

    def windows(self) -> list[Window]:
        """Chunk-aligned windows covering the grid, row by row (for tile-by-tile work)."""
        h, w = self.shape
        ts = self.tile_size
        return [
            (slice(r, min(r + ts, h)), slice(c, min(c + ts, w)))
            for r in range(0, h, ts)
            for c in range(0, w, ts)
        ]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


def open_field(map_dir: str | Path) -> Field:
    """Open the embedding field of a map folder (made by ``run --save-embeddings``).

    Args:
        map_dir: the map folder, or its ``map.zarr``.

    Raises:
        UserError: no map there, a map without a field, or a field whose recipe was never
            written (an unfinished run).
    """
    p = Path(map_dir).expanduser()
    store = p if p.name.endswith(".zarr") else p / "map.zarr"
    root = store.parent
    if not ((store / "zarr.json").is_file() or (store / ".zattrs").is_file()):
        raise UserError(f"{p}: no map store (expected {store}); is this a finished map folder?")
    try:
        attrs = read_store_attrs(store)  # Zarr v3, or v2 of older s2lc (read the same way)
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{store}: unreadable ({exc})") from None
    meta = attrs.get(FIELD_ATTR)
    if not meta:
        raise UserError(
            f"{p}: the map has no embedding field; make it with 'python -m pipeline run ... "
            "--save-embeddings'"
        )

    codec = read_codec(store)
    if codec is None:
        raise UserError(f"{p}: the embedding field is incomplete (its run did not finish)")
    return Field(
        map_dir=root,
        store=store,
        codec=codec,
        meta=dict(meta),
        run=_read_json(root / "run.json"),
        legend=_read_json(root / "legend.json"),
        layout=dict(attrs.get("s2lc:layout") or {}),
    )


_GROUPS: dict[str, Any] = {}
_GROUPS_LOCK = threading.Lock()


def _group(f: Field) -> Any:

    key = str(f.store.resolve())
    with _GROUPS_LOCK:
        if key not in _GROUPS:
            _GROUPS[key] = zarr.open_group(key, mode="r")  # v3, or v2 of older s2lc
        return _GROUPS[key]


def read_codes(f: Field, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """The raw field of a window: codes (d, h, w) int8 and scale (h, w) float32 (NaN = nodata)."""
    ys, xs = window
    g = _group(f)
    codes, scale = g["field_codes"], g["field_scale"]
    if codes.ndim == 4:  # Zarr v3: (time, embedding, y, x); one time step per map
        return (
            np.asarray(codes[0, :, ys, xs]),
            np.asarray(scale[0, ys, xs], dtype=np.float32),
        )
    # Zarr v2 of older s2lc: (component, y, x)
    return np.asarray(codes[:, ys, xs]), np.asarray(scale[ys, xs], dtype=np.float32)


def decode_window(f: Field, window: Window) -> np.ndarray:
    """Decoded embeddings of a window: (h, w, D) float32, L2-normalised; NaN where nodata.

    Memory: h * w * D * 4 bytes (a 256 x 256 window of 512-d embeddings is 134 MB); work tile by
    tile (:meth:`Field.windows`) for large maps.
    """
    codes, scale = read_codes(f, window)
    d, h, w = codes.shape
    emb = f.codec.decode(codes.reshape(d, -1).T, scale.ravel())
    return emb.reshape(h, w, -1)


def decode_valid(f: Field, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """(valid (h, w) bool, embeddings (N, D) float32 of the valid pixels in row-major order)."""
    codes, scale = read_codes(f, window)
    valid = np.isfinite(scale)
    emb = f.codec.decode(codes[:, valid].T, scale[valid])
    return valid, emb


def project(f: Field, vectors: np.ndarray) -> ProjectedVectors:
    """Project (K, D) class or text vectors once into the field's components (see
    :meth:`~pipeline.writers.codec.FieldCodec.project`); pass the result to :func:`code_cosines`."""
    return f.codec.project(np.asarray(vectors, dtype=np.float32))


def code_cosines(
    f: Field, window: Window, vectors: ProjectedVectors
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of a window's pixels with K projected vectors, computed from the int8 codes and
    scales (no 512-d decode; :meth:`~pipeline.writers.codec.FieldCodec.cosines`).

    Returns:
        (valid (h, w) bool, cosines (N, K) float32 of the valid pixels in row-major order), the
        same numbers as ``similarity(decode_valid(f, window)[1], normalise(vectors))`` to ~1e-6.
    """
    codes, scale = read_codes(f, window)
    d = codes.shape[0]
    valid = np.isfinite(scale)
    flat = valid.ravel()
    if not flat.any():
        return valid, np.zeros((0, vectors.count), np.float32)
    cos = f.codec.cosines(codes.reshape(d, -1).T, scale.ravel(), vectors)
    return valid, cos if flat.all() else cos[flat]


# --- the model behind a field --------------------------------------------------------------------


def model_spec(f: Field, checkpoint: str | None = None, clip_checkpoint: str | None = None) -> Any:
    """The :class:`~pipeline.run.config.ModelConfig` that made the field (from its ``run.json``)."""

    from pipeline.run.config import ModelConfig  # noqa: PLC0415 (imports the composite stack)

    cfg = f.run.get("config") or {}
    if not cfg:
        raise UserError(f"{f.map_dir}: run.json is missing; cannot tell which model made the field")
    untrained = bool(cfg.get("untrained")) and checkpoint is None
    return ModelConfig(
        name=str(cfg.get("model")),
        checkpoint=checkpoint or (None if untrained else cfg.get("checkpoint")),
        clip_checkpoint=clip_checkpoint or cfg.get("clip_checkpoint"),
        arch=cfg.get("arch"),
        untrained=untrained,
        seed=int(cfg.get("seed") or 0),
    )


def check_model(f: Field, m: Any) -> None:
    """Refuse a model whose embedding space is not the field's (one-line UserError)."""
    mine = getattr(m, "embedding_identity", m.identity)
    if mine != f.embedding_identity:
        raise UserError(
            f"{f.map_dir}: the field was made by {f.embedding_identity}, not by {mine}; "
            "use the model that made it (its checkpoint)"
        )


def load_model(f: Field, checkpoint: str | None = None, clip_checkpoint: str | None = None) -> Any:
    """The model that made the field (cached per process), checked against the field."""
    m = model_spec(f, checkpoint, clip_checkpoint).load()
    check_model(f, m)
    return m


def encode_text(
    f: Field,
    texts: list[str] | tuple[str, ...],
    *,
    checkpoint: str | None = None,
    clip_checkpoint: str | None = None,
) -> np.ndarray:
    """(Q, D) float32 L2-normalised text embeddings of ``texts`` with the field's model.

    Cached in memory and on disk (``cache_dir("classifiers")``, keyed by model identity and
    text), so a repeated query costs no text-tower pass.

    Raises:
        UserError: no text, the model is not the field's, or its text tower is unavailable.
    """
    from model.legends import Legend, LegendClass  # noqa: PLC0415 (lazy: model loads torch)
    from model.zeroshot import build_classifier  # noqa: PLC0415 (lazy: model loads torch)

    texts = [str(t).strip() for t in texts]
    if not texts or any(not t for t in texts):
        raise UserError("give at least one non-empty text query")
    m = load_model(f, checkpoint, clip_checkpoint)
    out = []
    for t in texts:  # one cache entry per text: any later combination reuses it
        lg = Legend(name="query", style="query", classes=(LegendClass(t, (t,), "#000000"),))
        out.append(np.asarray(build_classifier(m, lg).numpy(), dtype=np.float32)[0])
    return np.stack(out)


def legend_classifier(f: Field, m: Any) -> np.ndarray | None:
    """(C, D) text classifier of the map's own legend, or None (few-shot head maps)."""
    from model.legends import load_legend  # noqa: PLC0415 (lazy: model loads torch)
    from model.zeroshot import build_classifier  # noqa: PLC0415 (lazy: model loads torch)

    cfg = f.run.get("config") or {}
    if cfg.get("head") or not cfg.get("legend"):
        return None
    legend = load_legend(cfg["legend"], style=cfg.get("style") or "aerial")
    return np.asarray(build_classifier(m, legend).numpy(), dtype=np.float32)


def similarity(emb: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine similarity (..., D) x (Q, D) -> (..., Q) float32; NaN rows stay NaN."""
    return np.asarray(emb, np.float32) @ np.asarray(queries, np.float32).T


def query_probability(
    cos_queries: np.ndarray, cos_classes: np.ndarray | None, logit_scale: float = LOGIT_SCALE
) -> np.ndarray:
    """Probability of each query against the legend's classes, (..., Q) float32.

    For query q: ``softmax(logit_scale * [cos_q, cos_1 .. cos_C])[0]``, i.e. how much more the
    pixel looks like the query than like any class of the map's legend (CLIP's zero-shot
    probability, the query as one extra class). Without a legend (``cos_classes`` None), a
    softmax over the queries themselves.
    """
    cq = np.asarray(cos_queries, np.float64) * logit_scale
    if cos_classes is None:
        z = cq - np.nanmax(cq, axis=-1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    cc = np.asarray(cos_classes, np.float64) * logit_scale
    top = np.maximum(cq, cc.max(axis=-1, keepdims=True))
    num = np.exp(cq - top)
    den = num + np.exp(cc[..., None, :] - top[..., None]).sum(axis=-1)
    return (num / den).astype(np.float32)


def query_window(
    f: Field,
    texts: list[str] | tuple[str, ...],
    window: Window,
    *,
    kind: str = "similarity",
    checkpoint: str | None = None,
) -> np.ndarray:
    """Heat maps of text queries over a window: (Q, h, w) float32, NaN where nodata.

    Args:
        f: the field.
        texts: the queries, e.g. ``["a lake", "a village"]``.
        window: ``(row_slice, col_slice)`` on the map grid.
        kind: ``"similarity"`` (cosine, -1..1) or ``"probability"`` (:func:`query_probability`
            against the map's legend; without one, across the queries).

    Raises:
        UserError: an unknown kind, a probability of one query on a map without a text legend,
            or any error of :func:`encode_text`.
    """
    if kind not in KINDS:
        raise UserError(f"unknown query kind {kind!r}; choose one of {', '.join(KINDS)}")
    q = encode_text(f, texts, checkpoint=checkpoint)
    w_classes = None
    if kind == "probability":
        w_classes = legend_classifier(f, load_model(f, checkpoint))
        if w_classes is None and len(texts) < 2:
            raise UserError(
                "a probability needs classes to compare with: the map has no text legend, so "
                "give two or more queries (or use kind='similarity')"
            )
    vecs = q if w_classes is None else np.concatenate([q, w_classes])
    valid, cos_all = code_cosines(f, window, project(f, vecs))
    out = np.full((len(texts), *valid.shape), np.nan, np.float32)
    if cos_all.shape[0]:
        cos = cos_all[:, : len(texts)]
        if kind == "probability":
            cc = None if w_classes is None else cos_all[:, len(texts) :]
            cos = query_probability(cos, cc)
        out[:, valid] = cos.T
    return out
