"""``query --field``: free-text heat maps from stored embedding fields, reading no imagery.

For every query, one COG on the fields' (mosaicked) grid: band 1 the cosine similarity of each
pixel's embedding with the query's text embedding, stored as int16 with the band scale
``QUERY_SCALE`` = 1e-4 (GDAL, rasterio and QGIS read -1..1 cosines through it; steps of 1e-4)
and nodata -32768 wherever the maps have none; 2 bytes per pixel, about a twelfth of a two-band
float32 file. With ``probability`` (``--probability``), band 2 the query's probability against
the first map's legend classes (or the other queries; :func:`pipeline.field.api.query_probability`),
0..1 in the same int16 encoding: it costs a softmax over the classes per pixel and as many bytes
again, and the viewer computes it itself, so it is written only when asked for. The work is
streamed tile by tile (:mod:`pipeline.field.stream`): each tile's heat maps appear under
``OUT/tiles/<unit>/`` as soon as it is done, in parallel on ``--cluster``/``--workers``; the
COGs are mosaicked from them at the end. A quicklook PNG shows every query side by side.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import UserError
from pipeline.base.jsonio import write_json
from pipeline.field import stream
from pipeline.field.fieldset import FieldSet

_log = logging.getLogger(__name__)

QUICKLOOK_MAX_PX = 600
_SCALE_XML = f"    <Offset>0</Offset>\n    <Scale>{stream.QUERY_SCALE!r}</Scale>"


def slug(text: str) -> str:
    """A file-name-safe form of a query (``"a lake"`` -> ``a-lake``)."""
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s[:60] or "query"


def _legend_vectors(fs: FieldSet, checkpoint: str | None) -> np.ndarray | None:
    """(C, D) text classifier of the first map's own legend, or None (few-shot head maps)."""
    from model.legends import load_legend  # noqa: PLC0415 (torch-free)
    from pipeline.field.texts import legend_vectors  # noqa: PLC0415

    cfg = fs.first.run.get("config") or {}
    if cfg.get("head") or not cfg.get("legend"):
        return None
    legend = load_legend(cfg["legend"], style=cfg.get("style") or "aerial")
    return legend_vectors(fs.first, legend, checkpoint=checkpoint)


def query_field(
    fs: Any,
    texts: list[str],
    out: str | Path | None = None,
    *,
    checkpoint: str | None = None,
    progress: bool = False,
    cluster: Any = None,
    probability: bool = False,
) -> dict[str, Path]:
    """Write one heat-map COG per query (and a quicklook) into ``out``; returns query -> path.

    Args:
        fs: a :class:`~pipeline.field.fieldset.FieldSet` (or one :class:`Field`).
        cluster: a :class:`pipeline.field.stream.Where`, or None (this process only).
        probability: also write band 2, the probability against the legend (or the queries).

    Raises:
        UserError: no query, duplicate file names, the model is not the field's or has no text
            tower, a probability of one query on a map without a text legend.
    """
    from pipeline.field.texts import text_vectors  # noqa: PLC0415

    if not isinstance(fs, FieldSet):
        from pipeline.field.fieldset import open_fields  # noqa: PLC0415

        fs = open_fields([fs.map_dir])
    t0 = time.perf_counter()
    texts = [str(t).strip() for t in texts]
    names = [slug(t) for t in texts]
    if len(set(names)) != len(names):
        raise UserError(f"queries must differ in their letters and digits: {', '.join(texts)}")
    first = fs.first
    out = Path(out) if out else first.map_dir / "queries"
    q = text_vectors(first, texts, checkpoint=checkpoint)  # fails early (model, text tower)
    w_classes = _legend_vectors(fs, checkpoint) if probability else None
    with_prob = probability
    if with_prob and w_classes is None and len(texts) < 2:
        raise UserError(
            "--probability needs classes to compare with: the map has no text legend, so give "
            "two or more queries"
        )
    # The queries (and the legend's classes) projected once into the field's components: each
    # unit is then one small GEMM of its int8 codes, no 512-d decode (pipeline.writers.codec).
    pv = first.codec.project(q if w_classes is None else np.concatenate([q, w_classes]))
    out.mkdir(parents=True, exist_ok=True)
    job = stream.new_job(
        "query", fs, pv, out, nq=len(texts), names=tuple(names), with_prob=with_prob
    )
    tiles = stream.tiles_dir_of(out)
    units = fs.units()
    first_s: list[float] = []
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(units), unit="tile", desc="query")
    else:
        bar = None

    def done(_: dict[str, Any]) -> None:
        first_s or first_s.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)

    try:
        stream.execute(units, job, cluster, done)
    finally:
        if bar is not None:
            bar.close()
    against = "the legend classes" if w_classes is not None else "the other queries"
    finals = {}
    per_text = 2 if with_prob else 1
    for i, (text, name) in enumerate(zip(texts, names, strict=True)):
        descriptions = [f"cosine similarity to '{text}'"]
        if with_prob:
            descriptions.append(f"probability of '{text}' against {against}")
        finals[text] = stream.mosaic_cog(
            out / f"{name}.tif",
            units,
            tiles,
            "query",  # every text's bands in one file per unit (stream.run_unit)
            geobox=fs.geobox,
            source_bands=[i * per_text + b for b in range(1, per_text + 1)],
            dtype=stream.QUERY_DTYPE,
            bands=len(descriptions),
            nodata=stream.QUERY_NODATA,
            band_extra=[_SCALE_XML] * len(descriptions),
            descriptions=descriptions,
            metadata={
                "query": text,
                "encoding": f"int16: value = round(x / {stream.QUERY_SCALE:g}) (band scale), "
                f"nodata {stream.QUERY_NODATA}",
                "model": first.model_identity,
                "source_field": str(first.map_dir),
                "source_fields": ", ".join(str(f.map_dir) for f in fs.fields),
            },
            resampling="average",
        )
    stream.drop_tiles(tiles)
    write_quicklook(out / "quicklook.png", texts, finals, 2 if with_prob else 1)
    write_json(
        out / "queries.json",
        {
            "source_field": str(first.map_dir),
            "source_fields": [str(f.map_dir) for f in fs.fields],
            "basis_sha256": fs.basis_sha256,
            "model": first.model_identity,
            "queries": {t: finals[t].name for t in texts},
            "bands": ["cosine similarity"] + (["probability"] if with_prob else []),
            "dtype": stream.QUERY_DTYPE,
            "scale": stream.QUERY_SCALE,
            "offset": 0.0,
            "nodata": stream.QUERY_NODATA,
            "probability_against": None
            if not with_prob
            else ("legend" if w_classes is not None else "queries"),
            "legend_classes": list(first.class_names) if w_classes is not None else None,
            "seconds": {
                "first_tile": first_s[0] if first_s else None,
                "total": time.perf_counter() - t0,
            },
        },
    )
    return finals


def write_quicklook(path: Path, texts: list[str], files: dict[str, Path], bands: int) -> Path:
    """A PNG of every query's heat maps side by side: similarity (row 1, stretched to its 2-98 %
    range) and probability (row 2, 0-1) when written; read from the COGs' overviews."""

    import matplotlib  # noqa: PLC0415 (only for the quicklook)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import rasterio  # noqa: PLC0415
    from rasterio.enums import Resampling  # noqa: PLC0415

    from pipeline.base.atomic import atomic_path  # noqa: PLC0415

    n = len(texts)
    fig, axes = plt.subplots(bands, n, figsize=(4.2 * n, 4.0 * bands), dpi=90, squeeze=False)
    cmap = matplotlib.colormaps["magma"].copy()
    cmap.set_bad("white")
    try:
        for col, text in enumerate(texts):
            with rasterio.open(files[text]) as src:
                scale = max(1.0, max(src.height, src.width) / QUICKLOOK_MAX_PX)
                shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
                raw = src.read(
                    out_shape=(bands, *shape), resampling=Resampling.average, masked=True
                )
                data = (raw.astype(np.float32) * np.float32(src.scales[0])).filled(np.nan)
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
