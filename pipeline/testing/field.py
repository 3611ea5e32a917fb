"""A synthetic, format-valid embedding field of any size, for benchmarks and tests.

:func:`write_synthetic_field` writes a map folder that ``classify --field`` and ``query --field``
open like a ``run --save-embeddings`` map: ``map.zarr`` (made by the product's own
:func:`~pipeline.writers.create_map_store` and :func:`~pipeline.writers.write_tile`, the field
fitted by :func:`~pipeline.writers.codec.fit_codec` and encoded by
:meth:`~pipeline.writers.codec.FieldCodec.encode`), ``run.json`` and ``legend.json``. Only the
pixels are synthetic: seeded unit vectors near a low-rank subspace, drawn around a few
prototypes that change in blocks of 64 px, so that classes form patches as on a map. To write
16 Mpx in seconds rather than an hour, a palette of ``PALETTE`` such vectors per prototype is
encoded once (by the codec) and each pixel takes a seeded random entry of its prototype's
palette: every stored code is a real encoding, only repeated. The run's
metadata (its flat config, model identity, legend facts, the field's ``s2lc:field`` attribute)
comes from the caller, who gets it from the same model (``pipeline.bench.field``), so the field
is accepted by the model check.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox

from pipeline.base.jsonio import write_json
from pipeline.grid.tiling import TileGrid
from pipeline.writers import TileResult, create_map_store, write_tile
from pipeline.writers.codec import fit_codec
from pipeline.writers.field import FIELD_ATTR, write_codec
from pipeline.writers.products import write_legend_json

__all__ = ["write_synthetic_field"]

#: Rank of the subspace the synthetic embeddings lie near, prototypes, block edge (px).
RANK = 32
PROTOTYPES = 8
BLOCK = 64
PALETTE = 4096


def _space(embed_dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(RANK, embed_dim)).astype(np.float32) / np.sqrt(RANK)
    mean = rng.normal(size=embed_dim).astype(np.float32)
    mean *= 1.5 / np.linalg.norm(mean)
    protos = rng.normal(size=(PROTOTYPES, RANK)).astype(np.float32)
    return a, mean, protos


def _embeddings(cls: np.ndarray, space: tuple, rng: np.random.Generator) -> np.ndarray:
    """(N, D) unit embeddings around the prototypes ``cls`` (N,)."""
    a, mean, protos = space
    latent = protos[cls] + 0.6 * rng.normal(size=(len(cls), RANK)).astype(np.float32)
    e = latent @ a + mean
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return e


def _prototype(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The prototype of each pixel: constant over blocks of ``BLOCK`` px (patches)."""
    block = (rows // BLOCK).astype(np.int64) * 7919 + (cols // BLOCK).astype(np.int64) * 104729
    return (((block * 2654435761) >> 7) % PROTOTYPES).astype(np.int64)


def write_synthetic_field(
    out: str | os.PathLike[str],
    shape: tuple[int, int],
    *,
    run: Mapping[str, Any],
    field_meta: Mapping[str, Any],
    class_names: Sequence[str],
    colors: Sequence[Any],
    legend_info: Mapping[str, Any],
    period_labels: Sequence[str],
    crs: str = "EPSG:32632",
    origin: tuple[float, float] = (600_000.0, 5_400_000.0),
    resolution: float = 10.0,
    tile_size: int = 512,
    seed: int = 0,
    basis_seed: int | None = None,
) -> Path:
    """Write a synthetic map folder with an embedding field of ``shape`` (rows, cols) pixels.

    Args:
        out: the map folder to create (must not hold a map).
        shape: (rows, cols) of the map grid; 4000 x 4000 at 10 m is 16 Mpx (1,600 km²).
        run: ``run.json`` content: at least ``config`` (the flat run config), ``model`` and
            ``legend`` as a run writes them; ``calibration`` None fits a new one per legend.
        field_meta: the store's ``s2lc:field`` attribute (model identity, dims, embed_dim).
        class_names, colors, legend_info: the map's legend (``legend.json``).
        period_labels: the map's composite periods (its ``valid_obs`` bands).
        crs, origin, resolution: the grid (origin = top-left corner, metres).
        tile_size: the store's chunk and tile edge in pixels.
        seed: the pixels' seed (same seed, same field).
        basis_seed: the seed of the embedding space and of the codec fitted on it (default
            ``seed``): fields with one ``basis_seed`` share a basis (one model's, as fields of
            several runs, regions or years are), whatever their pixels' seeds.

    Returns:
        ``out``.

    Raises:
        UserError: a store already at ``out`` with another grid (from create_map_store).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    embed_dim, dims = int(field_meta["embed_dim"]), int(field_meta["dims"])
    h, w = (int(v) for v in shape)
    geobox = GeoBox((h, w), Affine(resolution, 0, origin[0], 0, -resolution, origin[1]), crs)
    empty = TileGrid(geobox, tile_size, ())
    nr, nc = empty.lattice_shape
    grid = TileGrid(
        geobox, tile_size, tuple(empty.tile(r, c) for r in range(nr) for c in range(nc))
    )

    bseed = seed if basis_seed is None else basis_seed
    space = _space(embed_dim, bseed)
    rng = np.random.default_rng(bseed + 1)
    codec = fit_codec(_embeddings(rng.integers(0, PROTOTYPES, 4096), space, rng), dims)
    rng = np.random.default_rng((bseed, seed, 2))
    # the palette: PALETTE encoded vectors per prototype, codes (P, PALETTE, d), scales (P, PALETTE)
    pal = _embeddings(np.repeat(np.arange(PROTOTYPES), PALETTE), space, rng)
    pal_codes, pal_scale = codec.encode(pal)
    pal_codes = pal_codes.reshape(PROTOTYPES, PALETTE, dims)
    pal_scale = pal_scale.reshape(PROTOTYPES, PALETTE)

    k = min(3, len(class_names))
    store = out / "map.zarr"
    create_map_store(
        store,
        grid,
        class_names=list(class_names),
        k=k,
        period_labels=list(period_labels),
        embed_dim=embed_dim,
        field_dims=dims,
        attrs={
            "config_hash": f"synthetic-{h}x{w}-{seed}",
            "synthetic": True,
            FIELD_ATTR: dict(field_meta),
        },
    )
    write_codec(store, codec)
    n_periods = len(period_labels)
    for tile in grid.tiles:
        ty, tx = tile.window
        th, tw = tile.shape
        rng = np.random.default_rng((seed, ty.start, tx.start))
        rr, cc = np.meshgrid(
            np.arange(ty.start, ty.stop), np.arange(tx.start, tx.stop), indexing="ij"
        )
        proto = _prototype(rr.ravel(), cc.ravel())
        pick = rng.integers(0, PALETTE, proto.size)
        codes = np.ascontiguousarray(pal_codes[proto, pick].T).reshape(dims, th, tw)
        scale = pal_scale[proto, pick].reshape(th, tw)
        classes = (proto % len(class_names)).astype(np.uint8).reshape(th, tw)
        result = TileResult(
            classes=classes,
            confidence=np.ones((th, tw), np.float32),
            topk_classes=np.broadcast_to(classes, (k, th, tw)).copy(),
            topk_probs=np.ones((k, th, tw), np.float32),
            valid_obs=np.ones((n_periods, th, tw), np.uint16),
            field_codes=codes,
            field_scale=scale,
        )
        write_tile(store, tile, result)
    write_legend_json(
        out / "legend.json",
        class_names=list(class_names),
        colors=list(colors),
        legend_name=str(legend_info.get("name")),
        style=legend_info.get("style"),
        prompt_hash=legend_info.get("prompt_hash"),
        untrained=bool((run.get("config") or {}).get("untrained")),
        extra={"synthetic": True},
    )
    write_json(
        out / "run.json",
        {
            "status": "complete",
            "synthetic": {"shape": [h, w], "seed": seed, "tile_size": tile_size},
            "output_hash": f"synthetic-{h}x{w}-{seed}",
            **dict(run),
        },
    )
    return out


def write_classes_cog(out: str | os.PathLike[str]) -> Path:
    """The class map of a synthetic map folder's store as ``classes.tif`` (a COG with
    overviews), so that ``pipeline view`` opens the folder; returns its path."""
    import rasterio.shutil  # noqa: PLC0415

    out = Path(out)
    path = out / "classes.tif"
    src = f'ZARR:"{out / "map.zarr"}":/classes'
    with rasterio.Env(GDAL_PAM_ENABLED="NO"):
        rasterio.shutil.copy(src, str(path), driver="COG", compress="deflate", resampling="nearest")
    return path
