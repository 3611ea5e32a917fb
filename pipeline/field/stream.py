"""Ask the map in parallel, tile by tile, publishing each tile as soon as it is done.

The work of ``classify --field`` and ``query --field`` is split into units (each field's store
chunks, :meth:`pipeline.field.fieldset.FieldSet.units`). A unit reads its int8 codes and scales,
computes the cosines with the projected vectors in the code space (:func:`code_cosines32`), and
writes its output GeoTIFF under ``OUT/tiles/<unit id>/`` (each file appears complete, by a
rename): the first file a user can open appears after the first unit, not at the end. When every
unit is done, :func:`mosaic_cog` describes the whole output as a VRT over the unit files and
GDAL's COG driver writes the final COG; the unit files are then removed.

Where units run (:func:`execute`): the calling process starts on the units at once, while a
Dask cluster (:func:`pipeline.run.cluster.open_client`: ``--cluster``/``--workers``, as ``run``;
a local cluster of worker processes by default) starts in a background thread; once it is up,
the remaining units go to it. A job of fewer than two units per planned worker stays in the
process (starting workers would cost more than they save).

Every per-pixel step is float32 and runs once: one GEMM of the codes with the (K + 1) projected
vectors, the integer ``|z|^2`` (exact in float32: at most 62 x 127^2 < 2^24), the cosine, and the
classify or query arithmetic. Formulas: :meth:`pipeline.writers.codec.FieldCodec.cosines`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from pipeline.base.atomic import atomic_path, remove_path

_log = logging.getLogger(__name__)

#: Units per planned worker below which a job stays in the calling process.
MIN_UNITS_PER_WORKER = 2
#: Block edge of the output COGs and of the unit files (px); the COGs' compression (that of the
#: lower bound, ``pipeline.bench.ask``). The unit files are uncompressed: they live only until
#: the mosaic, and deflating float32 heat maps twice cost about 1 CPU-s per 16 Mpx band.
BLOCK = 512
COMPRESS = "deflate"
#: The query product (:func:`query_bands`): int16 values ``round(x / QUERY_SCALE)``, read back
#: as ``x = value * QUERY_SCALE`` (the GeoTIFF's band scale, applied by GDAL/rasterio/QGIS);
#: cosines -1..1 are -10000..10000, steps of 1e-4 (float32 cosines from int8 codes are good to
#: about 1e-6, so the step is the product's precision). ``QUERY_NODATA`` where the map has none.
QUERY_SCALE = 1e-4
QUERY_NODATA = -32768
QUERY_DTYPE = "int16"


@dataclass(frozen=True)
class Unit:
    """One unit of work: a window of one field, and where it lands on the mosaic's grid."""

    index: int
    """Which field (position in :attr:`FieldSet.fields`)."""
    window: tuple[slice, slice]
    """(rows, cols) in the field's own grid (one of its store chunks)."""
    out: tuple[slice, slice]
    """(rows, cols) in the mosaic's grid."""

    @property
    def id(self) -> str:
        """Stable name, e.g. ``f00_r000512_c001024`` (the mosaic's row and column offset)."""
        return f"f{self.index:02d}_r{self.out[0].start:06d}_c{self.out[1].start:06d}"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return (self.out[0].stop - self.out[0].start, self.out[1].stop - self.out[1].start)


@dataclass(frozen=True)
class Job:
    """What every unit of one call computes (small; sent once to each worker with its units).

    ``proj`` (d, K + 1), ``t_mean`` (K,), ``mean_sq``: the projected vectors
    (:class:`pipeline.writers.codec.ProjectedVectors`). ``kind``: ``classify`` (``alpha``,
    ``beta`` (K,): the calibration as ``alpha * cos + beta``) or ``query`` (the first ``nq``
    vectors are the texts, the rest the legend's classes; ``with_prob``: write band 2,
    the probability, which ``query --probability`` asks for).
    """

    kind: str
    stores: tuple[str, ...]
    tiles_dir: str
    crs_wkt: str
    transform: tuple[float, ...]
    proj: np.ndarray
    t_mean: np.ndarray
    mean_sq: float
    alpha: np.ndarray | None = None
    beta: np.ndarray | None = None
    nq: int = 0
    names: tuple[str, ...] = ()
    with_prob: bool = False
    logit_scale: float = 100.0


def new_job(kind: str, fs: Any, pv: Any, out: Path, **options: Any) -> Job:
    """The :class:`Job` of one ``classify``/``query`` call over field set ``fs`` with projected
    vectors ``pv``, its unit files in a fresh ``OUT/tiles`` (an earlier call's are removed);
    ``options`` are the kind's own fields (``alpha``/``beta``, or ``nq``/``names``/``with_prob``)."""
    tiles = tiles_dir_of(out)
    drop_tiles(tiles)
    tiles.mkdir(parents=True, exist_ok=True)
    return Job(
        kind=kind,
        stores=tuple(str(f.store.resolve()) for f in fs.fields),
        tiles_dir=str(tiles.resolve()),
        crs_wkt=fs.geobox.crs.to_wkt(),
        transform=tuple(fs.geobox.affine)[:6],
        proj=pv.proj,
        t_mean=pv.t_mean,
        mean_sq=pv.mean_sq,
        **options,
    )


@dataclass(frozen=True)
class Where:
    """Where units run: ``run``'s ``--cluster``/``--cluster-config``/``--workers``, checked here
    without importing Dask (a small job never needs it).

    Raises:
        UserError: an unknown cluster kind, or workers < 1 (as
            :class:`pipeline.run.cluster.ClusterConfig`).
    """

    kind: str = "local"
    workers: int | None = None
    cluster_config: str | None = None

    def __post_init__(self) -> None:
        from pipeline.run.config import check_cluster  # noqa: PLC0415

        check_cluster(self.kind, self.workers)

    def local_workers(self) -> int:
        """Worker processes of a local cluster: ``--workers``, else ``run``'s default without
        GPUs (:func:`pipeline.run.cluster.local_layout`: two, never more than the cores)."""
        return self.workers or max(1, min(2, os.cpu_count() or 1))

    def config(self) -> Any:
        """The :class:`pipeline.run.cluster.ClusterConfig` (torch-free workers)."""
        from pipeline.run.cluster import ClusterConfig, load_slurm_profile  # noqa: PLC0415

        slurm = (
            load_slurm_profile(self.cluster_config, self.workers)
            if self.kind == "slurm"
            else ClusterConfig().slurm
        )
        return ClusterConfig(kind=self.kind, workers=self.workers, slurm=slurm, torch=False)


_GROUPS: dict[str, Any] = {}
_LOCK = threading.Lock()


def read_chunk(store: str, window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Codes (d, h, w) int8 and scales (h, w) float32 of a window (Zarr v3 or v2 layouts)."""
    with _LOCK:
        g = _GROUPS.get(store)
        if g is None:
            import zarr  # noqa: PLC0415

            g = _GROUPS[store] = zarr.open_group(store, mode="r")
    codes, scale = g["field_codes"], g["field_scale"]
    ys, xs = window
    if codes.ndim == 4:  # (time, embedding, y, x)
        return np.asarray(codes[0, :, ys, xs]), np.asarray(scale[0, ys, xs], np.float32)
    return np.asarray(codes[:, ys, xs]), np.asarray(scale[ys, xs], np.float32)


def code_cosines32(
    codes: np.ndarray, scale: np.ndarray, proj: np.ndarray, t_mean: np.ndarray, mean_sq: float
) -> tuple[np.ndarray, np.ndarray]:
    """(valid (N,) bool, cosines (K, N) float32) of N pixels' codes (d, N) int8, scales (N,).

    ``cos_k = (s B^T t_k . q + t_k . mu) / sqrt(|mu|^2 + 2 s (B^T mu) . q + s^2 |q|^2)``, the
    decoded embedding ``mu + s B q`` against the unit vector ``t_k`` (:class:`FieldCodec`);
    cosines of nodata pixels (scale NaN) are left as computed with scale 0 (mask them).
    """
    q = codes.astype(np.float32)
    g = proj.T @ q  # (K + 1, N): the one GEMM
    qq = np.einsum("dn,dn->n", q, q)  # integers, exact in float32
    valid = np.isfinite(scale)
    s = np.where(valid, scale, np.float32(0.0))
    k = t_mean.shape[0]
    den2 = np.float32(mean_sq) + s * (2.0 * g[k] + s * qq)
    inv = 1.0 / np.sqrt(np.maximum(den2, np.float32(1e-24)))
    cos = g[:k]
    cos *= s
    cos += t_mean[:, None]
    cos *= inv
    return valid, cos


def classify_cosines(cos: np.ndarray, valid: np.ndarray, alpha, beta) -> np.ndarray:
    """(N,) uint8 classes: the argmax of the calibrated cosines ``alpha * cos + beta`` (ties to
    the lower class index, as :func:`numpy.argmax`); 255 where not valid."""
    c = cos if alpha is None else cos * alpha[:, None].astype(np.float32) + beta[:, None]
    # K passes over contiguous rows (np.argmax over axis 0 strides across them); a later class
    # takes the pixel only when strictly greater, so ties go to the lower index as in argmax
    best = c[0].copy()
    out = np.zeros(c.shape[1], np.uint8)
    for k in range(1, c.shape[0]):
        more = c[k] > best
        out[more] = k
        np.maximum(best, c[k], out=best)
    out[~valid] = 255
    return out


def query_bands(cos: np.ndarray, valid: np.ndarray, job: Job) -> np.ndarray:
    """(Q, bands, N) int16: each text's cosine, and with ``with_prob`` its probability against
    the legend's classes (or the other texts), both quantised as ``round(x / QUERY_SCALE)``
    (:data:`QUERY_NODATA` where not valid). The probability is
    :func:`pipeline.field.api.query_probability` in float32 (max-shifted softmax)."""
    nq = job.nq
    cq = cos[:nq]
    out = np.empty((nq, 2 if job.with_prob else 1, cos.shape[1]), np.int16)
    inv = np.float32(1.0 / QUERY_SCALE)
    _quantise(cq, inv, out[:, 0])
    if job.with_prob:
        ls = np.float32(job.logit_scale)
        if cos.shape[0] > nq:  # the text as one extra class among the legend's
            cc = cos[nq:] * ls
            top_c = cc.max(axis=0)
            ec = np.exp(cc - top_c)  # (C, N)
            for i in range(nq):
                x = cq[i] * ls
                top = np.maximum(x, top_c)
                num = np.exp(x - top)
                _quantise(num / (num + ec.sum(axis=0) * np.exp(top_c - top)), inv, out[i, 1])
        else:  # a softmax over the texts
            x = cq * ls
            e = np.exp(x - x.max(axis=0))
            _quantise(e / e.sum(axis=0), inv, out[:, 1])
    out[:, :, ~valid] = QUERY_NODATA
    return out


def _quantise(x: np.ndarray, inv: np.float32, out: np.ndarray) -> None:
    """``out = round(x * inv)`` as int16 (x in -1..1, so no overflow)."""
    y = x * inv
    np.rint(y, out=y)
    out[...] = y


def _write_tif(path: Path, data: np.ndarray, job: Job, out: tuple[slice, slice], nodata) -> None:
    import rasterio  # noqa: PLC0415
    from affine import Affine  # noqa: PLC0415

    ys, xs = out
    h, w = data.shape[-2:]
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": data.shape[0],
        "dtype": str(data.dtype), "crs": job.crs_wkt,
        "transform": Affine(*job.transform) * Affine.translation(xs.start, ys.start),
        "nodata": nodata,
    }  # fmt: skip
    if h >= 16 and w >= 16:
        profile.update(
            tiled=True, blockxsize=min(BLOCK, _pow16(w)), blockysize=min(BLOCK, _pow16(h))
        )
    with atomic_path(path) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"):
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)


def _pow16(n: int) -> int:
    return max(16, (n + 15) // 16 * 16)


def run_unit(unit: Any, job: Job) -> dict[str, Any]:
    """Compute one unit and publish its file(s) under ``tiles_dir/<unit id>/``; its stats."""
    t0 = time.perf_counter()
    codes, scale = read_chunk(job.stores[unit.index], unit.window)
    d, h, w = codes.shape
    valid, cos = code_cosines32(
        codes.reshape(d, -1), scale.ravel(), job.proj, job.t_mean, job.mean_sq
    )
    folder = Path(job.tiles_dir) / unit.id
    if job.kind == "classify":
        classes = classify_cosines(cos, valid, job.alpha, job.beta).reshape(1, h, w)
        _write_tif(folder / "classes.tif", classes, job, unit.out, 255)
    else:
        # one file for all the texts (band i * bands + b: text i's band b): one GeoTIFF per unit
        bands = query_bands(cos, valid, job)
        _write_tif(folder / "query.tif", bands.reshape(-1, h, w), job, unit.out, QUERY_NODATA)
    return {"unit": unit.id, "valid_pixels": int(valid.sum()), "seconds": time.perf_counter() - t0}


def execute(
    units: Sequence[Any],
    job: Job,
    cluster: Any,
    on_done: Callable[[dict[str, Any]], None] = lambda s: None,
) -> list[dict[str, Any]]:
    """Run every unit: in this process from the start, on ``cluster`` (a :class:`Where`, or
    None: this process only) once it is up.

    Raises:
        UserError: the cluster cannot start; whatever a unit raises.
    """
    todo = list(units)
    done: list[dict[str, Any]] = []

    def finish(stats: dict[str, Any]) -> None:
        done.append(stats)
        on_done(stats)

    if cluster is None or not _worth_a_cluster(len(todo), cluster):
        for u in todo:
            finish(run_unit(u, job))
        return done
    state: dict[str, Any] = {}
    ready = threading.Event()

    # imported here, in the calling thread: dask-jobqueue sets a signal handler on import
    from pipeline.run.cluster import open_client  # noqa: PLC0415 (imports distributed)

    config = cluster.config()

    def start() -> None:
        try:
            cm = open_client(config)
            state["client"] = cm.__enter__()
            state["cm"] = cm
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            state["error"] = exc
        finally:
            ready.set()

    threading.Thread(target=start, name="s2lc-cluster", daemon=True).start()
    try:
        while todo and not ready.is_set():
            finish(run_unit(todo.pop(0), job))
        if todo:
            ready.wait()
            if "error" in state:
                raise state["error"]
            from distributed import as_completed  # noqa: PLC0415

            client = state["client"]
            job_f = client.scatter(job, broadcast=True)
            futures = [
                client.submit(run_unit, u, job_f, key=f"ask-{u.id}-{id(job)}", pure=False)
                for u in todo
            ]
            for fut in as_completed(futures):
                finish(fut.result())
    finally:
        ready.wait()
        if "cm" in state:
            state["cm"].__exit__(None, None, None)
    return done


def _worth_a_cluster(n_units: int, where: Where) -> bool:
    if where.kind != "local":
        return True
    workers = where.local_workers()
    return workers > 1 and n_units >= MIN_UNITS_PER_WORKER * workers


def mosaic_cog(
    final: Path,
    units: Sequence[Any],
    tiles_dir: Path,
    name: str,
    *,
    geobox: Any,
    dtype: str,
    bands: int,
    nodata: float,
    band_extra: Sequence[str] = (),
    descriptions: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
    resampling: str = "nearest",
    threads: int | None = None,
    source_bands: Sequence[int] = (),
) -> Path:
    """The units' ``<name>.tif`` files as one COG on ``geobox``: a VRT (units of earlier fields
    drawn last, each skipping its own nodata, so the first field wins where it has data) that
    GDAL's COG driver streams block by block (bounded memory). ``source_bands``: the unit
    files' band (1-based) of each output band (default: 1, 2, ...)."""
    import rasterio  # noqa: PLC0415
    import rasterio.shutil  # noqa: PLC0415

    from pipeline.reading.blocks import worker_cores  # noqa: PLC0415
    from pipeline.writers.cog import _metadata_xml, _overview_count  # noqa: PLC0415

    h, w = geobox.shape
    gdt = {"uint8": "Byte", "int16": "Int16", "float32": "Float32"}[dtype]
    nd = "nan" if isinstance(nodata, float) and math.isnan(nodata) else str(int(nodata))
    ordered = sorted(units, key=lambda u: -u.index)  # the first field last: it paints on top
    xml = []
    for b in range(1, bands + 1):
        src_band = source_bands[b - 1] if source_bands else b
        parts = [f'  <VRTRasterBand dataType="{gdt}" band="{b}">']
        if b <= len(descriptions):
            parts.append(f"    <Description>{escape(descriptions[b - 1])}</Description>")
        parts.append(f"    <NoDataValue>{nd}</NoDataValue>")
        if b <= len(band_extra) and band_extra[b - 1]:
            parts.append(band_extra[b - 1])
        for u in ordered:
            f = tiles_dir / u.id / f"{name}.tif"
            uh, uw = u.shape
            parts.append(
                f'    <ComplexSource><SourceFilename relativeToVRT="0">{escape(str(f.resolve()))}'
                f"</SourceFilename><SourceBand>{src_band}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{uw}" ySize="{uh}"/>'
                f'<DstRect xOff="{u.out[1].start}" yOff="{u.out[0].start}" xSize="{uw}" '
                f'ySize="{uh}"/><NODATA>{nd}</NODATA></ComplexSource>'
            )
        parts.append("  </VRTRasterBand>")
        xml.append("\n".join(parts))
    a = geobox.affine
    vrt = "\n".join(
        [
            f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">',
            f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(geobox.crs.to_wkt())}</SRS>',
            f"  <GeoTransform>{a.c!r}, {a.a!r}, {a.b!r}, {a.f!r}, {a.d!r}, {a.e!r}</GeoTransform>",
            _metadata_xml(metadata or {}),
            *xml,
            "</VRTDataset>",
        ]
    )
    threads = threads or worker_cores()

    class _G:  # what _overview_count reads of a grid
        shape = (h, w)

    with atomic_path(final) as tmp:
        vrt_path = tmp.with_name(tmp.name + ".vrt")
        try:
            vrt_path.write_text(vrt)
            with rasterio.Env(GDAL_PAM_ENABLED="NO", GDAL_NUM_THREADS=str(threads)):
                rasterio.shutil.copy(
                    str(vrt_path), str(tmp), driver="COG", compress=COMPRESS,
                    predictor="no" if dtype == "uint8" else "yes", blocksize=BLOCK,
                    overview_resampling=resampling, overview_count=_overview_count(_G),
                    bigtiff="if_safer", num_threads=str(threads),
                )  # fmt: skip
        finally:
            remove_path(vrt_path)
    return final


def drop_tiles(tiles_dir: Path) -> None:
    """Remove the unit files once mosaicked (the final COGs hold the same pixels)."""
    remove_path(tiles_dir)


def tiles_dir_of(out: Path) -> Path:
    """Where units publish their files: ``OUT/tiles``."""
    return Path(out) / "tiles"


def env_threads() -> int:
    """Cores this process may use (for GDAL's COG writing threads)."""
    from pipeline.reading.blocks import worker_cores  # noqa: PLC0415

    return worker_cores() or os.cpu_count() or 1
