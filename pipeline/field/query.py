"""``query --field``: free-text heat maps from a stored embedding field, reading no imagery.

For every query, one COG on the map's grid: band 1 the cosine similarity of each pixel's
embedding with the query's text embedding (-1..1), band 2 (when there is something to compare
with) the query's probability against the map's legend classes
(:func:`pipeline.field.api.query_probability`). Nodata is NaN wherever the map has none. Work
goes window by window (the store's chunks), into tiled GeoTIFFs that GDAL then rewrites as COGs,
so memory stays bounded by one window. A quicklook PNG shows every query side by side.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from tqdm import tqdm

from pipeline.base.atomic import atomic_path, remove_path
from pipeline.base.errors import UserError
from pipeline.base.jsonio import write_json
from pipeline.field.api import (
    Field,
    code_cosines,
    encode_text,
    legend_classifier,
    load_model,
    project,
    query_probability,
)

_log = logging.getLogger(__name__)

QUICKLOOK_MAX_PX = 600


def slug(text: str) -> str:
    """A file-name-safe form of a query (``"a lake"`` -> ``a-lake``)."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s[:60] or "query"


def query_field(
    f: Field,
    texts: list[str],
    out: str | Path | None = None,
    *,
    checkpoint: str | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Write one heat-map COG per query (and a quicklook) into ``out``; returns query -> path.

    Raises:
        UserError: no query, duplicate file names, the model is not the field's or has no text
            tower.
    """
    t0 = time.perf_counter()
    texts = [str(t).strip() for t in texts]
    names = [slug(t) for t in texts]
    if len(set(names)) != len(names):
        raise UserError(f"queries must differ in their letters and digits: {', '.join(texts)}")
    out = Path(out) if out else f.map_dir / "queries"
    q = encode_text(f, texts, checkpoint=checkpoint)  # fails early (model, text tower)
    w_classes = legend_classifier(f, load_model(f, checkpoint))
    with_prob = w_classes is not None or len(texts) > 1
    # The queries (and the legend's classes) projected once into the field's components: each
    # window is then one small GEMM of its int8 codes, no 512-d decode (pipeline.writers.codec).
    vectors = project(f, q if w_classes is None else np.concatenate([q, w_classes]))
    nq = len(texts)
    out.mkdir(parents=True, exist_ok=True)
    geobox = f.geobox
    h, w = f.shape
    bands = 2 if with_prob else 1
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": bands,
        "dtype": "float32",
        "crs": str(geobox.crs),
        "transform": geobox.affine,
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "zstd",
    }
    tmps = [out / f".{n}.tmp.tif" for n in names]
    finals = {t: out / f"{n}.tif" for t, n in zip(texts, names, strict=True)}

    try:
        dsts = [rasterio.open(p, "w", **profile) for p in tmps]
        try:
            for window in tqdm(f.windows(), unit="window", desc="query", disable=not progress):
                valid, cos_all = code_cosines(f, window, vectors)
                ys, xs = window
                block = np.full((len(texts), bands, *valid.shape), np.nan, np.float32)
                if len(cos_all):
                    cos = cos_all[:, :nq]  # (N, Q)
                    block[:, 0, valid] = cos.T
                    if with_prob:
                        cc = None if w_classes is None else cos_all[:, nq:]
                        block[:, 1, valid] = query_probability(cos, cc).T
                win = rasterio.windows.Window(
                    xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start
                )
                for dst, data in zip(dsts, block, strict=True):
                    dst.write(data, window=win)
        finally:
            for dst in dsts:
                dst.close()
        for tmp, text in zip(tmps, texts, strict=True):
            with rasterio.open(tmp, "r+") as ds:
                ds.set_band_description(1, f"cosine similarity to '{text}'")
                if with_prob:
                    against = "the legend classes" if w_classes is not None else "the other queries"
                    ds.set_band_description(2, f"probability of '{text}' against {against}")
                ds.update_tags(query=text, model=f.model_identity, source_field=str(f.map_dir))
            with atomic_path(finals[text]) as final_tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
                rasterio.shutil.copy(
                    str(tmp), str(final_tmp), driver="COG", compress="deflate", predictor="yes",
                    blocksize=256, overview_resampling="average",
                )  # fmt: skip
    finally:
        for tmp in tmps:
            remove_path(tmp)
    write_quicklook(out / "quicklook.png", texts, finals, bands)
    write_json(
        out / "queries.json",
        {
            "source_field": str(f.map_dir),
            "model": f.model_identity,
            "queries": {t: finals[t].name for t in texts},
            "bands": ["cosine similarity"] + (["probability"] if with_prob else []),
            "probability_against": "legend" if w_classes is not None else "queries",
            "legend_classes": list(f.class_names) if w_classes is not None else None,
            "seconds": time.perf_counter() - t0,
        },
    )
    return finals


def write_quicklook(path: Path, texts: list[str], files: dict[str, Path], bands: int) -> Path:
    """A PNG of every query's heat maps side by side: similarity (row 1, stretched to its 2-98 %
    range) and probability (row 2, 0-1) when written; read from the COGs' overviews."""

    matplotlib.use("Agg", force=False)

    n = len(texts)
    fig, axes = plt.subplots(bands, n, figsize=(4.2 * n, 4.0 * bands), dpi=90, squeeze=False)
    cmap = matplotlib.colormaps["magma"].copy()
    cmap.set_bad("white")
    try:
        for col, text in enumerate(texts):
            with rasterio.open(files[text]) as src:
                scale = max(1.0, max(src.height, src.width) / QUICKLOOK_MAX_PX)
                shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
                data = src.read(out_shape=(bands, *shape), resampling=Resampling.average)
                b = src.bounds
            for row in range(bands):
                ax = axes[row][col]
                label = "probability" if row == 1 else "cosine similarity"
                vmin, vmax = (0.0, 1.0) if row == 1 else _limits(data[row])
                im = ax.imshow(
                    np.ma.masked_invalid(data[row]), cmap=cmap, vmin=vmin, vmax=vmax,
                    extent=(b.left, b.right, b.bottom, b.top), interpolation="nearest",
                )  # fmt: skip
                ax.set_title(f"'{text}': {label}", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.1)
    finally:
        plt.close(fig)
    return path


def _limits(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return -1.0, 1.0
    lo, hi = np.percentile(finite, [2, 98])
    return (float(lo), float(hi)) if hi > lo else (float(lo) - 1e-3, float(lo) + 1e-3)
