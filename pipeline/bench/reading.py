"""The read path against its decode floor, HTTP bytes against the blocks needed.

(The CPU inference backends are the ``models`` section: :mod:`pipeline.bench.models`.)

All times are process CPU time (``time.process_time``: every thread of this process, nothing
else), warm (files in the page cache, compiled kernels), because the machines running the bench
are shared and wall time would measure the neighbours. Data: :func:`pipeline.bench.cogs.
provider_scenes`, laid out like Earth Search's COGs (uint16 DEFLATE predictor 2, 1024 px blocks).

* ``decode_floor_core_s_per_mpx``: decoding every source block the region needs, once, through
  open datasets; nothing else (the least any reader can spend).
* ``load_core_s_per_mpx``: the product's :func:`pipeline.reading.load_reflectance` (open, decode,
  2x upsample, fuse, scale, harmonise, mask), one worker process reading the region tile by tile
  at the default tile size (256 px) in read-unit order, and per read unit (1024 px); ratio to
  the floor.
* ``http_bytes_per_needed``: bytes and range requests fetched from a loopback HTTP server for one
  1024 px read unit at 256 px tiles, against the compressed size of the blocks it needs.
* ``worker_peak_rss_mib`` (and ``_read_unit``): peak RSS of a fresh worker process that loads
  and composites one 2048 px read group at 256 px tiles (and at 1024 px tiles).
* ``mgrs_tile_year_cpu_min``: the CPU stages of one MGRS tile-year (load, mask, composite, tile
  writes) on a 16-core node, from these rates (the composite measured at the projected
  acquisition count), and ``mosaic_min``, the COG mosaic after them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np

from pipeline.bench.results import Entry
from pipeline.stac.hrefs import gdal_href

_log = logging.getLogger(__name__)

SIZE, ACQUISITIONS, BLOCK = 4096, 12, 1024
TILE, UNIT = 256, 1024
#: Acquisitions of one MGRS tile in a year (S2A + S2B, 5-day revisit, no cloud filter).
YEAR_ACQUISITIONS = 73
#: The same after the default cloud filter (--max-cloud 60), assumed to keep about half.
FILTERED_ACQUISITIONS = 37
MGRS_PIXELS = 10980 * 10980


def _geobox(row: int, col: int, h: int, w: int):
    from affine import Affine
    from odc.geo.geobox import GeoBox

    from pipeline.bench.cogs import EPSG, ORIGIN

    t = Affine(10, 0, ORIGIN[0] + col * 10, 0, -10, ORIGIN[1] - row * 10)
    return GeoBox((h, w), t, f"EPSG:{EPSG}")


def windows(size: int, tile: int, group: int) -> list[tuple[int, int]]:
    """Tile origins of a ``size`` square in read-unit order: ``group`` px squares, row-major."""
    out = []
    for gr in range(0, size, group):
        for gc in range(0, size, group):
            for r in range(gr, min(gr + group, size), tile):
                for c in range(gc, min(gc + group, size), tile):
                    out.append((r, c))
    return out


def _hrefs(items: list[dict]) -> list[str]:
    return [gdal_href(a["href"]) for it in items for a in it["assets"].values()]


def decode_floor(items: list[dict], region: tuple[int, int, int, int] | None = None) -> dict:
    """CPU seconds to decode each full-resolution block the region needs, once."""
    import rasterio
    from rasterio.windows import Window

    from pipeline.reading import gdal_options

    env = gdal_options(threads=1)
    blocks = 0
    with rasterio.Env(**env):
        dss = [rasterio.open(h) for h in _hrefs(items)]
        t = time.process_time()
        for ds in dss:
            bh, bw = ds.block_shapes[0]
            f = ds.transform.a / 10.0
            r0, c0, h, w = region or (0, 0, SIZE, SIZE)
            rows = range(int(r0 / f) // bh, (int((r0 + h) / f) - 1) // bh + 1)
            cols = range(int(c0 / f) // bw, (int((c0 + w) / f) - 1) // bw + 1)
            for br in rows:
                for bc in cols:
                    y, x = br * bh, bc * bw
                    ds.read(1, window=Window(x, y, min(bw, ds.width - x), min(bh, ds.height - y)))
                    blocks += 1
        cpu = time.process_time() - t
        for ds in dss:
            ds.close()
    return {"cpu_s": cpu, "blocks": blocks}


def product_load(
    items: list[dict],
    tile: int,
    group: int,
    composite: bool = False,
    size: int = SIZE,
    threads: int | None = None,
) -> dict:
    """CPU seconds of :func:`load_reflectance` over the whole ``size`` px scene, tile by tile,
    one process, a fresh reader (of ``threads`` reading threads; None: the default)."""
    from pipeline.composite.median import composite as make_composite
    from pipeline.reading import BlockReader, load_reflectance

    reader = BlockReader() if threads is None else BlockReader(threads=threads)
    load = comp = 0.0
    for r, c in windows(size, tile, group):
        t = time.process_time()
        # as composite_window loads (the values composited at once, in the reader's work array)
        refl = load_reflectance(items, _geobox(r, c, tile, tile), reader=reader, work_buffer=True)
        load += time.process_time() - t
        assert refl.native
        if composite:
            t = time.process_time()
            make_composite(
                refl.values, refl.times, dt.date(2023, 1, 1), dt.date(2023, 12, 31), "monthly"
            )
            comp += time.process_time() - t
    out = {"cpu_s": load, "decoded": reader.decoded, "hits": reader.hits, "opens": reader.opens}
    if composite:
        out["composite_cpu_s"] = comp
    return out


def _needed_bytes(paths: list[Path], region: tuple[int, int, int, int]) -> tuple[int, int]:
    """(compressed bytes, count) of the full-resolution blocks ``region`` needs (TIFF tags)."""
    import rasterio

    total = n = 0
    r0, c0, h, w = region
    for p in paths:
        with rasterio.open(p) as ds:
            bh, bw = ds.block_shapes[0]
            if ds.transform.a == 10:
                ya, yb, xa, xb = r0, r0 + h - 1, c0, c0 + w - 1
            else:  # bilinear 2x needs one 20 m pixel of margin, clipped to the raster
                ya, yb = max(r0 // 2 - 1, 0), min((r0 + h - 1) // 2 + 1, ds.height - 1)
                xa, xb = max(c0 // 2 - 1, 0), min((c0 + w - 1) // 2 + 1, ds.width - 1)
            for br in range(ya // bh, yb // bh + 1):
                for bc in range(xa // bw, xb // bw + 1):
                    total += int(ds.get_tag_item(f"BLOCK_SIZE_{bc}_{br}", "TIFF", bidx=1))
                    n += 1
    return total, n


def http_reads(items: list[dict], root: Path, tile: int, unit: int) -> dict:
    """Bytes and requests for one read unit (the scene's first) at ``tile`` px tiles, over HTTP."""
    import copy

    from pipeline.bench.http_range import serve_ranges
    from pipeline.reading import BlockReader, load_reflectance

    region = (0, 0, unit, unit)
    paths = [Path(h) for h in _hrefs(items)]
    needed, n_blocks = _needed_bytes(paths, region)
    with serve_ranges(root) as (url, counter):
        remote = copy.deepcopy(items)
        for it in remote:
            for a in it["assets"].values():
                rel = Path(gdal_href(a["href"])).relative_to(root)
                a["href"] = f"{url}/{rel.as_posix()}"
        reader = BlockReader()
        for r, c in windows(unit, tile, unit):
            refl = load_reflectance(remote, _geobox(r, c, tile, tile), reader=reader)
            assert refl.native
        reader.clear()
        return {
            "bytes": counter.bytes,
            "requests": counter.requests,
            "range_requests": counter.range_requests,
            "needed_bytes": needed,
            "needed_blocks": n_blocks,
            "mpx": unit * unit / 1e6,
        }


def _remote(items: list[dict], store) -> list[dict]:
    """``items`` with every asset's href on ``store`` (a :class:`StoreProcess`)."""
    import copy

    remote = copy.deepcopy(items)
    for it in remote:
        for a in it["assets"].values():
            a["href"] = store.href(Path(a["href"].removeprefix("file://")))
    return remote


def _store_load(store, items: list[dict], load, ttfb_s: float = 0.0) -> dict:
    """Run ``load(items on the store)`` from a cold GDAL cache; its wall and process CPU seconds,
    the store's counts of it, the mean requests in flight while it ran and what its request log
    says about the structure of the reads (:func:`request_structure`), which the machine's load
    does not change as much as wall times."""
    import rasterio.cache

    from pipeline.testing.object_store import in_flight_profile

    rasterio.cache.invalidate_all()
    remote = _remote(items, store)
    store.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    load(remote)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    c = store.counter()
    log = store.log()
    flight = in_flight_profile(log)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        **{k: c[k] for k in ("requests", "range_requests", "bytes", "max_in_flight")},
        "mean_in_flight": flight["mean"],
        **request_structure(log, ttfb_s),
    }


def request_structure(log: list[tuple], ttfb_s: float) -> dict:
    """What a store's request log (:attr:`pipeline.testing.object_store.StoreCounter.log`) says
    about how a load waited on the store:

    * ``requests_per_file``: requests per object (each one a round trip of the file's chain);
    * ``file_chain_rt``: mean time from a file's first request to the end of its last, in
      round trips (``ttfb_s``; None at 0): 3 for a HEAD, a header and a block range back to
      back, more when the reader leaves gaps between them;
    * ``span_rt``: first request to last answer, in round trips (None at 0);
    * ``idle_s``: seconds within that span with no request in flight.
    """
    from pipeline.testing.object_store import in_flight_profile

    if not log:
        return {"requests_per_file": 0.0, "file_chain_rt": None, "span_rt": None, "idle_s": 0.0}
    per: dict[str, list[tuple[float, float]]] = {}
    for start, end, _, path, *_ in log:
        per.setdefault(path, []).append((start, end))
    chain = sum(max(e for _, e in v) - min(s for s, _ in v) for v in per.values()) / len(per)
    flight = in_flight_profile(log)
    return {
        "requests_per_file": len(log) / len(per),
        "file_chain_rt": chain / ttfb_s if ttfb_s else None,
        "span_rt": flight["span_s"] / ttfb_s if ttfb_s else None,
        "idle_s": flight["span_s"] - flight["busy_s"],
    }


def _our_load(threads: int, tile: int, unit: int):
    """A load of one ``unit`` px read unit at ``tile`` px tiles with a fresh reader."""
    from pipeline.reading import BlockReader, load_reflectance

    def load(remote: list[dict]) -> None:
        reader = BlockReader(threads=threads)
        for r, c in windows(unit, tile, unit):
            refl = load_reflectance(remote, _geobox(r, c, tile, tile), reader=reader)
            assert refl.native
        reader.clear()

    return load


def _odc_load(unit: int):
    """odc-stac's load (:func:`pipeline.reading.cube.load_cube`) of the ``unit`` px read unit in
    one call: its fewest requests (tile by tile it would open every file again per tile)."""
    from pipeline.reading.cube import load_cube

    def load(remote: list[dict]) -> None:
        load_cube(remote, _geobox(0, 0, unit, unit))

    return load


def latency_reads(
    items: list[dict],
    root: Path,
    ttfb_s: float = 0.03,
    threads: tuple[int, ...] = (1,),
    tile: int = TILE,
    unit: int = UNIT,
    repeats: int = 3,
    odc: bool = True,
) -> dict:
    """One read unit (``unit`` px at ``tile`` px tiles, the scenes' first) loaded through two
    loopback object stores (:func:`pipeline.testing.object_store.serve_store_process`, processes
    of their own) with 0 and ``ttfb_s`` seconds to first byte per request.

    Every reader of ``threads`` (threads per reader) loads ``repeats`` times at each latency,
    interleaved (0 ms, 30 ms, 0 ms, ...), a fresh reader and a cold GDAL cache each time; the
    least wall time per latency is kept (the run least disturbed by other processes on a shared
    machine), with its CPU seconds. ``odc``: also odc-stac's load (:func:`_odc_load`) once at
    0 ms, for its request count.

    Returns ``{threads: {"0ms": ..., "30ms": ..., "runs": [...]}, "odc_stac": {...},
    "needed_bytes", "needed_blocks", "mpx"}``, per load wall and CPU seconds, requests, range
    requests, body bytes, the most and the mean requests in flight.
    """
    from pipeline.testing.object_store import StoreConfig, serve_store_process

    paths = [Path(h.removeprefix("file://")) for h in _hrefs(items)]
    needed, n_blocks = _needed_bytes(paths, (0, 0, unit, unit))
    out: dict = {
        "needed_bytes": needed,
        "needed_blocks": n_blocks,
        "mpx": unit * unit / 1e6,
        "files": len(paths),
    }
    delays = (0.0, ttfb_s)
    with (
        serve_store_process(root, StoreConfig(ttfb_s=delays[0])) as fast,
        serve_store_process(root, StoreConfig(ttfb_s=delays[1])) as slow,
    ):
        for n in threads:
            runs = []
            for _ in range(repeats):
                for delay, store in zip(delays, (fast, slow), strict=True):
                    res = _store_load(store, items, _our_load(n, tile, unit), delay)
                    runs.append({"ms": round(delay * 1000), **res})
            best = {}
            for delay in delays:
                ms = round(delay * 1000)
                best[f"{ms}ms"] = min((r for r in runs if r["ms"] == ms), key=lambda r: r["wall_s"])
            out[n] = {**best, "runs": runs}
        if odc:
            out["odc_stac"] = _store_load(fast, items, _odc_load(unit))
    return out


def latency_entries(ttfb_s: float = 0.03, size: int = UNIT, repeats: int = 3) -> list[Entry]:
    """The read path over the loopback object store (:func:`latency_reads`), one run:

    * ``read_latency_ratio_30ms``: load wall time at ``ttfb_s`` per request / at 0 ms, with the
      one-request-at-a-time reader (``threads=1``, the read path before issue 26) beside it;
    * ``http_bytes_per_needed`` of the same loads;
    * ``http_requests_per_mpx``: our requests per Mpx at 0 ms against odc-stac's load of the
      same read unit (the baseline);
    * ``load_core_s_per_mpx_0ms``: our load's process CPU per Mpx at 0 ms against the
      one-request-at-a-time reader's in the same run (more requests in flight must not cost
      CPU), and the same load from local files (:func:`product_load`) in the notes.
    """
    import os

    from pipeline.base.paths import cache_dir
    from pipeline.bench.cogs import provider_scenes
    from pipeline.reading import BlockReader, load_reflectance
    from pipeline.reading.blocks import READ_THREADS

    root = cache_dir("bench", "cogs")
    items = provider_scenes(root, size, ACQUISITIONS, BLOCK)
    folder = root / f"es-like-{size}-{ACQUISITIONS}-{BLOCK}-0"
    load_reflectance(items, _geobox(0, 0, 64, 64), reader=BlockReader())  # compiled kernels
    load_before = os.getloadavg()
    res = latency_reads(items, folder, ttfb_s, threads=(1, READ_THREADS), repeats=repeats)
    local = product_load(items, TILE, UNIT, size=size)
    local_serial = product_load(items, TILE, UNIT, size=size, threads=1)
    load_after = os.getloadavg()
    ms = f"{round(ttfb_s * 1000)}ms"
    mpx = res["mpx"]
    many, serial, odc = res[READ_THREADS], res[1], res["odc_stac"]
    notes = {
        "scenes": f"{ACQUISITIONS} acquisitions x 11 assets, {size} px at 10 m, {BLOCK} px "
        "blocks (pipeline.bench.cogs)",
        "work": f"one {UNIT} px read unit at {TILE} px tiles, a fresh reader and a cold GDAL "
        f"cache per load; {repeats} loads per latency, interleaved, the fastest kept",
        "server": "pipeline.testing.object_store on 127.0.0.1 (HTTP/1.1, single byte ranges, "
        f"{ms} time to first byte per request), one store process per latency",
        "reader_threads": READ_THREADS,
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in load_after],
        "machine": f"{os.cpu_count()} cores, shared with other engineers: wall times are noisy",
        "this_reader": many,
        "one_request_at_a_time": serial,
        "one_request_at_a_time_ratio": serial[ms]["wall_s"] / serial["0ms"]["wall_s"],
    }
    per = many[ms]
    return [
        Entry(
            f"read_latency_ratio_{ms}",
            per["wall_s"] / many["0ms"]["wall_s"],
            f"load wall time at {ms} per request / at 0 ms (same run)",
            threads=READ_THREADS,
            notes={
                **notes,
                "structure_at_" + ms: {
                    k: per[k] for k in ("requests_per_file", "file_chain_rt", "span_rt", "idle_s")
                },
                # files one read thread opens and reads one after the other
                "rounds_of_files": -(-res["files"] // READ_THREADS),
                "target": "<= 1.3 (goal 1.1)",
            },
        ),
        Entry(
            "http_bytes_per_needed",
            per["bytes"] / res["needed_bytes"],
            "bytes fetched / compressed bytes of the blocks needed",
            notes={
                **notes,
                "bytes_per_mpx": per["bytes"] / mpx,
                "requests_per_mpx": per["requests"] / mpx,
                "range_requests_per_mpx": per["range_requests"] / mpx,
                "target": "<= 1.2",
            },
        ),
        Entry(
            "http_requests_per_mpx",
            many["0ms"]["requests"] / mpx,
            "HTTP requests per Mpx of 10 m output (HEADs included), at 0 ms",
            baseline=odc["requests"] / mpx,
            threads=READ_THREADS,
            notes={
                **{k: notes[k] for k in ("scenes", "server", "load_average_1_5_15_before")},
                "ours": f"load_reflectance, {UNIT} px read unit at {TILE} px tiles",
                "baseline_is": "odc-stac's load (pipeline.reading.cube.load_cube) of the same "
                f"{UNIT} px read unit in one call, same store, cold GDAL cache",
                "odc_stac": odc,
                "one_request_at_a_time_requests_per_mpx": serial["0ms"]["requests"] / mpx,
                "acquisitions": ACQUISITIONS,
                "requests_per_mpx_scene": many["0ms"]["requests"] / mpx / ACQUISITIONS,
                f"mean_in_flight_{ms}": per["mean_in_flight"],
                "used_by": "plan --latency-ms (pipeline.run.plan)",
                "target": "<= odc-stac's",
            },
        ),
        Entry(
            "load_core_s_per_mpx_0ms",
            many["0ms"]["cpu_s"] / mpx,
            "core-seconds per Mpx of 10 m output (process CPU), over the store at 0 ms",
            baseline=serial["0ms"]["cpu_s"] / mpx,
            threads=READ_THREADS,
            notes={
                **{k: notes[k] for k in ("scenes", "work", "server")},
                "baseline_is": "the one-request-at-a-time reader (threads=1), same run",
                "local_files_core_s_per_mpx": local["cpu_s"] / mpx,
                "local_files_one_thread_core_s_per_mpx": local_serial["cpu_s"] / mpx,
                "local_files_is": f"product_load: the same {UNIT} px scene from local files at "
                f"{TILE} px tiles, this reader ({READ_THREADS} threads) and one that reads one "
                "block at a time, same run",
                "reading_section_load_core_s_per_mpx": "0.90 on 2026-11-29 (section reading: "
                "4096 px scene, local files, opens spread over 16x the pixels; not rerun here)",
                "load_average_1_5_15_after": notes["load_average_1_5_15_after"],
                "target": "no slower than the reader before issue 26",
            },
        ),
    ]


def _write_cpu_s_per_mpx() -> dict:
    """CPU seconds per Mpx of the per-tile raster writes and of the COG mosaic (in all and per
    layer, one GDAL thread per layer, so the CPU time is the work), synthetic 2048 px map."""
    from pipeline.bench.stages import _mosaic_seconds

    layers: dict[str, float] = {}
    t = time.process_time()
    mosaic, px = _mosaic_seconds(clock=time.process_time, threads=1, layers=layers)
    total = time.process_time() - t
    return {
        "write": (total - mosaic) / px * 1e6,
        "mosaic": mosaic / px * 1e6,
        "layers": {k: v / px * 1e6 for k, v in layers.items()},
    }


def composite_cpu_s_per_mpx(acquisitions: int, tile: int = TILE) -> float:
    """CPU seconds per Mpx of the monthly composite (with gap filling) of ``acquisitions``
    evenly spread over a year, one thread, on a tile of the synthetic cloudy stack
    (:func:`pipeline.bench.composite.synthetic_cube`, 45 % cloud)."""
    import numba

    from pipeline.bench.composite import synthetic_cube
    from pipeline.composite.median import composite

    values, _ = synthetic_cube(n_time=acquisitions, size=tile)
    step = np.timedelta64(365 * 24 // acquisitions, "h")
    times = (np.datetime64("2023-01-01T10:30") + np.arange(acquisitions) * step).astype(
        "datetime64[ns]"
    )
    y0, y1 = dt.date(2023, 1, 1), dt.date(2023, 12, 31)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # one single-core worker, as in the projection
    try:
        composite(values[:, :, :4, :4], times, y0, y1)
        best = float("inf")
        for _ in range(3):
            t = time.process_time()
            composite(values, times, y0, y1, "monthly")
            best = min(best, time.process_time() - t)
    finally:
        numba.set_num_threads(threads)
    return best / (tile * tile / 1e6)


def _peak_rss(tile: int, group: int) -> dict:
    """In this (fresh) process: load + composite one ``group`` px read unit at ``tile`` px tiles;
    peak RSS (MiB, ``VmHWM``: unlike ``ru_maxrss`` it does not carry the parent's peak over
    ``exec``) before and after, and the reader's block cache at the end."""
    from pipeline.base.paths import cache_dir
    from pipeline.bench.cogs import provider_scenes
    from pipeline.composite.median import composite as make_composite
    from pipeline.reading import BlockReader, load_reflectance

    items = provider_scenes(cache_dir("bench", "cogs"), SIZE, ACQUISITIONS, BLOCK)
    reader = BlockReader()
    load_reflectance(items, _geobox(0, 0, 64, 64), reader=BlockReader())
    before = _vm_hwm_mib()
    for r, c in windows(group, tile, group):
        refl = load_reflectance(items, _geobox(r, c, tile, tile), reader=reader, work_buffer=True)
        make_composite(
            refl.values, refl.times, dt.date(2023, 1, 1), dt.date(2023, 12, 31), "monthly"
        )
    peak = _vm_hwm_mib()
    return {"baseline_mib": before, "peak_mib": peak, "block_cache_mib": reader.cached_mb}


def _vm_hwm_mib() -> float:
    """This process's peak resident set (``VmHWM`` of ``/proc/self/status``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def peak_rss(tile: int, group: int = 2 * BLOCK) -> dict:
    """:func:`_peak_rss` in a fresh spawned process (the figure of one worker)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_peak_rss, tile, group).result()


def reading_entries(node_cores: int = 16) -> list[Entry]:
    """The read-path entries (see the module docstring); generates the scenes on first use."""
    from pipeline.base.paths import cache_dir
    from pipeline.bench.cogs import provider_scenes

    root = cache_dir("bench", "cogs")
    t = time.perf_counter()
    items = provider_scenes(root, SIZE, ACQUISITIONS, BLOCK)
    _log.info("scenes ready (%.0f s)", time.perf_counter() - t)
    mpx = SIZE * SIZE / 1e6
    from pipeline.reading import BlockReader, load_reflectance

    load_reflectance(items, _geobox(0, 0, 64, 64), reader=BlockReader())  # compiled kernels
    floor = decode_floor(items)
    at_tile = product_load(items, TILE, 2 * BLOCK, composite=True)
    at_unit = product_load(items, UNIT, 2 * BLOCK)
    floor_mpx = floor["cpu_s"] / mpx
    scene = {
        "scenes": f"{ACQUISITIONS} acquisitions x 11 assets, {SIZE} px at 10 m, uint16 DEFLATE "
        f"predictor 2, {BLOCK} px blocks (pipeline.bench.cogs)",
        "cpu_time": "process CPU time, warm (page cache, compiled kernels), one process",
    }
    entries = [
        Entry(
            "decode_floor_core_s_per_mpx",
            floor_mpx,
            "core-seconds per Mpx of 10 m output",
            threads=1,
            notes={**scene, "blocks": floor["blocks"]},
        )
    ]
    for name, tile, res in (("", TILE, at_tile), ("_read_unit", UNIT, at_unit)):
        entries.append(
            Entry(
                f"load_core_s_per_mpx{name}",
                res["cpu_s"] / mpx,
                "core-seconds per Mpx of 10 m output",
                baseline=floor_mpx,
                threads=1,
                notes={
                    **scene,
                    "tile_px": tile,
                    "order": f"{2 * BLOCK} px groups of tiles (one worker's read units)",
                    "blocks_decoded": res["decoded"],
                    "blocks_needed": floor["blocks"],
                    "block_cache_hits": res["hits"],
                    "datasets_opened": res["opens"],
                    "ratio_is": "load / decode floor (target <= 3, goal 2)",
                },
            )
        )
    http = http_reads(items, root / f"es-like-{SIZE}-{ACQUISITIONS}-{BLOCK}-0", TILE, UNIT)
    entries.append(
        Entry(
            "http_bytes_per_needed",
            http["bytes"] / http["needed_bytes"],
            "bytes fetched / compressed bytes of the blocks needed",
            notes={
                **http,
                "bytes_per_mpx": http["bytes"] / http["mpx"],
                "range_requests_per_mpx": http["range_requests"] / http["mpx"],
                "tile_px": TILE,
                "server": "pipeline.bench.http_range on 127.0.0.1 (single byte ranges, 206)",
                "target": "<= 1.2",
            },
        )
    )
    for tile in (TILE, UNIT):
        rss = peak_rss(tile)
        entries.append(
            Entry(
                "worker_peak_rss_mib" + ("" if tile == TILE else "_read_unit"),
                rss["peak_mib"],
                "MiB",
                threads=1,
                notes={
                    **scene,
                    **rss,
                    "tile_px": tile,
                    "work": f"load + monthly composite of one {2 * BLOCK} px read group "
                    f"({2 * BLOCK} px of 10 m output, in {tile} px tiles), in a fresh process",
                    "not_included": "the model and its inference batches (bounded by the "
                    "batch size, not the tile)",
                    "scales_with": "the block cache (S2LC_BLOCK_CACHE_MB, default 768) plus "
                    "per tile acquisitions x tile px^2 x 10 bands x 6 bytes (DN + reflectance)",
                },
            )
        )
    writes = _write_cpu_s_per_mpx()
    per_acq_load = at_tile["cpu_s"] / mpx / ACQUISITIONS
    comp_measured = at_tile["composite_cpu_s"] / mpx / ACQUISITIONS
    mgrs_mpx = MGRS_PIXELS / 1e6
    # The slowest layer bounds the mosaic: layers are written side by side, and no speed-up of
    # a layer's own GDAL threads is assumed (it cannot be measured on a 2-core machine).
    mosaic_wall_s = max(writes["layers"].values()) * mgrs_mpx
    projections = {}
    for n_acq in (YEAR_ACQUISITIONS, FILTERED_ACQUISITIONS):
        comp = composite_cpu_s_per_mpx(n_acq)
        core_s = per_acq_load * n_acq + comp + writes["write"]
        projections[n_acq] = {
            "core_s_per_mpx": core_s,
            "composite_core_s_per_mpx": comp,
            "cpu_min": core_s * mgrs_mpx / node_cores / 60,
        }
    main = projections[YEAR_ACQUISITIONS]
    entries.append(
        Entry(
            "mgrs_tile_year_cpu_min",
            main["cpu_min"],
            "minutes",
            device="projection",
            notes={
                "node_cores": node_cores,
                "acquisitions": YEAR_ACQUISITIONS,
                "core_s_per_mpx": main["core_s_per_mpx"],
                "load_core_s_per_mpx_per_acquisition": per_acq_load,
                "composite_core_s_per_mpx": main["composite_core_s_per_mpx"],
                "composite_core_s_per_mpx_per_acquisition_at_12": comp_measured,
                "write_core_s_per_mpx": writes["write"],
                "mosaic_core_s_per_mpx": writes["mosaic"],
                "mosaic_layers_core_s_per_mpx": writes["layers"],
                "mosaic_min": mosaic_wall_s / 60,
                "with_cloud_filter": {
                    "acquisitions": FILTERED_ACQUISITIONS,
                    **projections[FILTERED_ACQUISITIONS],
                },
                "target": "< 1 minute",
                "assumptions": [
                    f"{YEAR_ACQUISITIONS} acquisitions (S2A + S2B, 5-day revisit, no cloud "
                    "filter): an upper bound for a tile outside the orbit overlaps; "
                    f"with_cloud_filter assumes {FILTERED_ACQUISITIONS} (about half kept by "
                    "the default --max-cloud 60: an assumption, not measured here)",
                    "load scales linearly with acquisitions (measured at "
                    f"{ACQUISITIONS}, 256 px tiles); the composite is measured at the "
                    "projected acquisition count (its cost per acquisition falls as months "
                    "fill up, so scaling the 12-acquisition figure overstated it)",
                    "write = per-tile rasters of a synthetic 2048 px map, CPU time",
                    "mosaic_min: after the tiles, layers written side by side; the slowest "
                    "layer's single-thread CPU time (valid_obs, a band per month), no speed-up "
                    "from its own GDAL threads assumed; not included in the CPU stages",
                    f"{node_cores} single-core workers; object storage keeps up (in-region S3)",
                ],
            },
        )
    )
    entries += eopf_entries()
    return entries


def _tiles_cpu_s(items: list[dict], size: int, tile: int) -> float:
    """Process CPU seconds of :func:`load_reflectance` over a ``size`` px scene, tile by tile
    in read-unit order, one fresh reader (opens included), values in the work array."""
    from pipeline.reading import BlockReader, load_reflectance

    reader = BlockReader()
    cpu = 0.0
    for r, c in windows(size, tile, 2 * BLOCK):
        t = time.process_time()
        refl = load_reflectance(items, _geobox(r, c, tile, tile), reader=reader, work_buffer=True)
        cpu += time.process_time() - t
        assert refl.native
    return cpu


def eopf_entries(size: int = SIZE, acquisitions: int = ACQUISITIONS, tile: int = TILE) -> list:
    """``eopf_load_core_s_per_mpx``: the read path on ESA's EOPF Zarr products of the same
    scenes as the COG path (:func:`pipeline.bench.cogs.provider_scenes`, written as products by
    :func:`pipeline.testing.eopf.eopf_catalog`: real tile size and chunking), both measured in
    this run, tile by tile; the ratio is EOPF / COG. The load average (``os.getloadavg``, what
    ``uptime`` prints) before and after is recorded: the machine is shared."""
    import json
    import os

    from pipeline.base.paths import cache_dir
    from pipeline.bench.cogs import provider_scenes
    from pipeline.reading.eopf import EOPF_FORMAT, chunk_cache, clear_products
    from pipeline.testing.eopf import eopf_catalog

    root = cache_dir("bench", "cogs")
    items = provider_scenes(root, size, acquisitions, BLOCK)
    name = f"es-like-{size}-{acquisitions}-{BLOCK}-0"
    eroot = cache_dir("bench", "eopf") / name
    if not (eroot / "items.json").is_file():
        t = time.perf_counter()
        eopf_catalog(root / name, eroot)
        _log.info("EOPF products ready (%.0f s)", time.perf_counter() - t)
    eitems = json.loads((eroot / "items.json").read_text())["features"]
    _tiles_cpu_s(items, 2 * tile, tile)  # compiled kernels, page cache
    _tiles_cpu_s(eitems, 2 * tile, tile)
    clear_products()
    load_before = os.getloadavg()
    cog = _tiles_cpu_s(items, size, tile)
    eopf = _tiles_cpu_s(eitems, size, tile)
    load_after = os.getloadavg()
    decoded, hits = chunk_cache.decoded, chunk_cache.hits
    mpx = size * size / 1e6
    return [
        Entry(
            "eopf_load_core_s_per_mpx",
            eopf / mpx,
            "core-seconds per Mpx of 10 m output",
            baseline=cog / mpx,
            threads=1,
            notes={
                "format": EOPF_FORMAT,
                "scenes": f"{acquisitions} acquisitions, {size} px at 10 m (pipeline.bench.cogs), "
                "as COGs (1024 px DEFLATE blocks) and as EOPF Zarr v3 products (10980 px tile, "
                "1830/915 px zstd chunks, pipeline.testing.eopf)",
                "cog_load_core_s_per_mpx": cog / mpx,
                "ratio_is": "EOPF Zarr load / COG load, same scenes, same run",
                "tile_px": tile,
                "cpu_time": "process CPU time (zarr's I/O and decode threads included), product "
                "opens included, files in the page cache",
                "chunks_decoded": decoded,
                "chunk_cache_hits": hits,
                "chunk_cache_mib": chunk_cache.max_bytes / 2**20,
                "why_slower": "zarr decodes whole 1830² / 915² chunks (no sharding in the real "
                "products): a 256 px tile needs a fraction of each, so the chunks stay in the "
                "decoded-chunk cache for their neighbour tiles; when a read group's chunks of "
                "every acquisition exceed the cache, they are decoded again",
                "load_average_1_5_15_before": [round(v, 2) for v in load_before],
                "load_average_1_5_15_after": [round(v, 2) for v in load_after],
                "machine": "shared (other engineers' jobs run beside the bench)",
            },
        )
    ]
