"""What a run will cost before it starts: inputs, core-hours, GPU-hours, wall time and price.

Pure arithmetic over three things: what the run reads (scenes per output pixel, from the STAC
search or from the Sentinel-2 revisit, :mod:`pipeline.grid.mgrs`), the output grid (tiles, pixels,
cells) and per-stage rates measured by ``make bench`` (``bench/results.json``: each rate is named
with the machine it was measured on, and the plan repeats it). :func:`load_rates` reads the
rates; :func:`estimate` turns them into the plan's figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import adapters
from pipeline.base.errors import UserError
from pipeline.base.hardware import label
from pipeline.run.stages import StageRates

__all__ = [
    "BYTES_PER_SCENE_PIXEL",
    "STAGE_RATES_ENTRY",
    "STANDIN_STAGE_RATES_ENTRY",
    "Network",
    "Rates",
    "Workers",
    "estimate",
    "load_rates",
    "load_stage_rates",
]

#: Decoded bytes read per 10 m output pixel and scene: B02/B03/B04/B08 at 10 m (4 x 2 B), six
#: 20 m bands (6 x 2 B / 4) and the 20 m SCL (1 B / 4).
BYTES_PER_SCENE_PIXEL = 4 * 2 + 6 * 2 / 4 + 1 / 4
#: Decoded / compressed size of Sentinel-2 L2A COGs (assumption: deflate-compressed uint16
#: reflectances shrink by about a fifth; JPEG2000 archives are similar).
COMPRESSION_RATIO = 1.25


@dataclass(frozen=True)
class Rates:
    """Per-stage rates, each with the machine it was measured on.

    Attributes:
        load_core_s_per_mpx_scene: read + decode + reproject, core-seconds per Mpx per scene.
        composite_core_s_per_mpx_scene: NaN-aware compositing, core-seconds per Mpx per scene.
        publish_core_s_per_mpx: COG mosaic, core-seconds per output Mpx.
        infer_gpu_px_per_s: model pixels (TimeSenCLIP) or chips (SenCLIP) per second per GPU.
        infer_cpu_px_per_core_s: the same per CPU core.
        sources: for each rate, the ``bench/results.json`` entry and machine it came from.
        requests_per_mpx_scene: HTTP requests of the read path per Mpx of output per scene
            (HEADs included; ``http_requests_per_mpx``, section ``latency``), None if not measured.
        read_in_flight: mean requests in flight of one worker's reader at 30 ms per request
            (same entry), None if not measured.
    """

    load_core_s_per_mpx_scene: float
    composite_core_s_per_mpx_scene: float
    publish_core_s_per_mpx: float
    infer_gpu_px_per_s: float | None
    infer_cpu_px_per_core_s: float
    sources: dict[str, str]
    requests_per_mpx_scene: float | None = None
    read_in_flight: float | None = None


@dataclass(frozen=True)
class Network:
    """The object store the run reads from: ``latency_ms`` to the first byte of each request
    (0: as fast as the bench's loopback store; about 30 in the same cloud region) and the
    bandwidth of each worker (node) in megabits per second (None: not a limit)."""

    latency_ms: float = 0.0
    bandwidth_mbps: float | None = None

    def __post_init__(self) -> None:
        if not self.latency_ms >= 0:
            raise UserError(f"--latency-ms must be >= 0, got {self.latency_ms}")
        if self.bandwidth_mbps is not None and not self.bandwidth_mbps > 0:
            raise UserError(f"--bandwidth-mbps must be > 0, got {self.bandwidth_mbps}")


@dataclass(frozen=True)
class Workers:
    """The cluster the wall time and price are for: ``count`` workers (nodes) of one kind."""

    count: int = 1
    kind: str = "gpu"
    cores: int = 16
    gpus: int = 1
    price_core_hour: float = 0.0
    price_gpu_hour: float = 0.0

    def __post_init__(self) -> None:
        if self.count < 1 or self.cores < 1:
            raise UserError("--workers and --worker-cores must be at least 1")
        if self.kind not in ("cpu", "gpu"):
            raise UserError(f"--worker-kind must be cpu or gpu, got {self.kind!r}")
        if self.price_core_hour < 0 or self.price_gpu_hour < 0:
            raise UserError("prices must be >= 0")

    @property
    def gpus_each(self) -> int:
        return self.gpus if self.kind == "gpu" else 0


def _machine(entry: dict[str, Any]) -> str:
    notes = entry.get("notes") or {}
    if entry.get("hardware"):
        where = label(entry["hardware"])
    elif notes.get("cpu_model"):
        where = f"{notes['cpu_model']}, {entry.get('threads')} threads"
    else:
        where = (
            notes.get("machine") or f"{entry.get('device', 'cpu')}, {entry.get('threads')} threads"
        )
    if notes.get("backend"):  # CPU entries name the backend ``auto`` picked there
        where += f", backend {notes['backend']} (batch {entry.get('batch')})"
    return (
        f"{entry['name']} ({entry.get('device')}) measured {entry.get('date', '?')[:10]} on {where}"
    )


_Stages = tuple[float, float, float, dict[str, str]]


def _read_path_rates(entry: dict[str, Any] | None) -> _Stages | None:
    """Load, composite and publish rates of the product's read path at scale.

    From ``mgrs_tile_year_cpu_min`` (``make bench``, section ``projection``): load per
    acquisition on generated provider-shaped COGs, the composite measured at the projected
    acquisition count, and the COG mosaic per Mpx. None when the entry or a figure is missing.
    """
    notes = (entry or {}).get("notes") or {}
    try:
        load = float(notes["load_core_s_per_mpx_per_acquisition"])
        composite = float(notes["composite_core_s_per_mpx"]) / float(notes["acquisitions"])
        publish = float(notes["mosaic_core_s_per_mpx"]) + float(notes["write_core_s_per_mpx"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    where = (
        f"mgrs_tile_year_cpu_min measured {str(entry.get('date', '?'))[:10]}, per-core CPU rates"
    )
    sources = {
        "load": f"{where}, read path on provider-shaped COGs",
        "composite": f"{where}, at {notes['acquisitions']:g} acquisitions",
        "publish": f"{where}, tile writes + COG mosaic",
    }
    return load, composite, publish, sources


def _demo_window_rates(entry: dict[str, Any] | None, path: Path) -> _Stages:
    if entry is None:
        raise UserError(f"{path} has no mgrs_tile_year_cpu_min entry; run 'make bench'")
    notes = entry["notes"]
    scenes = float(notes["scenes"])
    sources = {
        "load": _machine(entry) + f", {notes['scenes']:g} scenes",
        "composite": _machine(entry),
        "publish": _machine(entry),
    }
    return (
        float(notes["load_s_per_mpx"]) / scenes,
        float(notes["composite_s_per_mpx"]) / scenes,
        float(notes["mosaic_s_per_mpx"]),
        sources,
    )


def load_rates(path: Path, model: str) -> Rates:
    """Rates for ``model`` from a ``bench/results.json``; UserError names what is missing."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"cannot read benchmark rates from {path}: {exc}; run 'make bench'"
        ) from None

    def find(name: str, device: str | None = None) -> dict[str, Any] | None:
        for e in entries:
            if e.get("name") == name and (
                device is None or str(e.get("device")).startswith(device)
            ):
                return e
        return None

    stages = _read_path_rates(find("mgrs_tile_year_cpu_min"))
    if stages is None:  # an older results file: the demo window's first-call stage times
        stages = _demo_window_rates(find("data_path_cpu_s_per_mpx"), path)
    load, composite, publish, sources = stages
    infer_name = adapters.get(model).throughput_key
    gpu, cpu = find(infer_name, "cuda"), find(infer_name, "cpu")
    if cpu is None and gpu is None:
        raise UserError(f"{path} has no {infer_name} entry; run 'make bench'")
    if gpu is not None:
        sources["infer_gpu"] = _machine(gpu)
    if cpu is not None:
        sources["infer_cpu"] = _machine(cpu)
    cpu_rate = float(cpu["value"]) / max(1, int(cpu.get("threads") or 1)) if cpu else float("nan")
    backend = ((cpu or {}).get("notes") or {}).get("backend")
    per_cpu_s = find(f"{infer_name.removesuffix('_pixels_per_s')}_cpu_backend_{backend}", "cpu")
    if backend and per_cpu_s and float(per_cpu_s.get("value") or 0) > 0:
        # the backend ``auto`` picked, in pixels per CPU-second (timed in process CPU time, so a
        # shared machine's load does not lower it as it lowers the wall-clock rate)
        cpu_rate = float(per_cpu_s["value"])
        sources["infer_cpu"] = _machine(per_cpu_s) + f", the backend auto picked ({backend})"
    reads = find("http_requests_per_mpx")
    notes = (reads or {}).get("notes") or {}
    per_scene, in_flight = notes.get("requests_per_mpx_scene"), notes.get("mean_in_flight_30ms")
    if reads is not None and per_scene and in_flight:
        sources["reads"] = _machine(reads) + ", requests per Mpx and scene, mean in flight at 30 ms"
    else:
        per_scene = in_flight = None
    return Rates(
        requests_per_mpx_scene=float(per_scene) if per_scene else None,
        read_in_flight=float(in_flight) if in_flight else None,
        load_core_s_per_mpx_scene=load,
        composite_core_s_per_mpx_scene=composite,
        publish_core_s_per_mpx=publish,
        infer_gpu_px_per_s=float(gpu["value"]) if gpu else None,
        infer_cpu_px_per_core_s=cpu_rate,
        sources=sources,
    )


#: The ``bench/results.json`` entry with the stage rates (``make bench ARGS="--only plan"``).
STAGE_RATES_ENTRY = "plan_stage_rates"
#: The same for the deterministic stand-in encoder in place of the model (the rehearsal's runs).
STANDIN_STAGE_RATES_ENTRY = "plan_stage_rates_standin"


def load_stage_rates(path: Path, model: str, entry: str = STAGE_RATES_ENTRY) -> StageRates | None:
    """The per-stage rates (fixed and per-pixel apart) measured for ``model`` by the bench's
    ``plan`` section, or None when ``path`` has no such entry (an older results file).

    :param entry: the entry's name: the model's own rates (default), or
        :data:`STANDIN_STAGE_RATES_ENTRY` for a run whose model the deterministic stand-in
        encoder replaces (the rehearsal, ``plan --stage-rates``).
    """
    name = entry
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    for e in entries:
        notes = e.get("notes") or {}
        r = notes.get("rates") or {}
        if e.get("name") == name and notes.get("model") == model:
            if "worker_fixed_s" not in r:  # an entry of an earlier model of the stages
                return None
            where = f"{name} measured {str(e.get('date', '?'))[:10]}"
            if e.get("hardware"):
                where += f" on {label(e['hardware'])}"
            return StageRates(
                fixed_s={k: float(v) for k, v in r["fixed_s"].items()},
                publish_s_per_mpx=float(r["publish_s_per_mpx"]),
                model_s_per_worker=float(r["model_s_per_worker"]),
                worker_fixed_s={k: float(v) for k, v in r["worker_fixed_s"].items()},
                tile_s_per_unit={k: float(v) for k, v in r["tile_s_per_unit"].items()},
                tile_s_per_tile={k: float(v) for k, v in (r.get("tile_s_per_tile") or {}).items()},
                backend=r.get("backend"),
                batch=r.get("batch"),
                tile_size=r.get("tile_size"),
                task_gap_s=float(r.get("task_gap_s") or 0.0),
                sources={
                    "stages": where + f", backend {r.get('backend')}, tile {r.get('tile_size')} px"
                },
            )
    return None


def estimate(
    *,
    tiles: int,
    tile_pixels: float,
    area_km2: float,
    scenes_per_pixel: float,
    items: int,
    cells: int,
    model: str,
    stride: int,
    rates: Rates,
    workers: Workers,
    network: Network = Network(),
) -> dict[str, Any]:
    """The plan's figures.

    :param tile_pixels: output pixels in all tiles (what the tile tasks load and classify).
    :param scenes_per_pixel: scenes read per output pixel (after the cloud filter).
    :param items: scenes (STAC items) the search finds or is expected to find.
    :param cells: published grid cells (0 for a single-file map).
    :param network: latency and bandwidth of the object store (:class:`Network`).
    :returns: a JSON-ready dict: inputs, core-/GPU-hours per stage, network waits, wall time
        and cost.
    :raises UserError: a latency is given but the rates have no measured request count.

    Network: each core runs one worker whose reader keeps ``rates.read_in_flight`` requests in
    flight on average, so its requests (``rates.requests_per_mpx_scene`` x scene Mpx) wait
    ``requests x latency / in flight``; reading threads overlap that wait with the CPU stages
    (measured: ``read_latency_ratio_30ms``), so the tile stage takes the longer of the two, not
    their sum. The compressed input through ``workers.count`` x ``bandwidth_mbps`` bounds it too.
    """
    mpx = tile_pixels / 1e6
    scene_mpx = mpx * scenes_per_pixel
    decoded = tile_pixels * scenes_per_pixel * BYTES_PER_SCENE_PIXEL
    units = adapters.get(model).inference_units(tile_pixels, stride)
    core_h = {
        "load": scene_mpx * rates.load_core_s_per_mpx_scene / 3600,
        "composite": scene_mpx * rates.composite_core_s_per_mpx_scene / 3600,
        "publish": mpx * rates.publish_core_s_per_mpx / 3600,
    }
    gpu_h = 0.0
    if workers.kind == "gpu":
        if rates.infer_gpu_px_per_s is None:
            raise UserError("bench/results.json has no GPU inference rate; use --worker-kind cpu")
        gpu_h = units / rates.infer_gpu_px_per_s / 3600
    else:
        core_h["infer"] = units / rates.infer_cpu_px_per_core_s / 3600
    cores = workers.count * workers.cores
    gpus = workers.count * workers.gpus_each
    # Tiles: CPU stages on all cores, GPU inference of one tile overlapping the CPU stages of
    # others, so the slower of the two; publishing runs afterwards, one cell (or map) per core.
    tiles_h = sum(v for k, v in core_h.items() if k != "publish") / cores
    compressed = decoded / COMPRESSION_RATIO
    net = _network_hours(scene_mpx, compressed, rates, workers, network)
    tiles_h = max(tiles_h, net["read_wait_hours"], net["transfer_hours"])
    if gpus:
        tiles_h = max(tiles_h, gpu_h / gpus)
    publish_h = core_h["publish"] / max(1, min(cores, cells or 1))
    wall_h = tiles_h + publish_h
    node_price = (
        workers.cores * workers.price_core_hour + workers.gpus_each * workers.price_gpu_hour
    )
    cost = wall_h * workers.count * node_price
    return {
        "area_km2": area_km2,
        "output": {"tiles": tiles, "pixels": tile_pixels, "cells": cells},
        "input": {
            "scenes": items,
            "scenes_per_pixel": scenes_per_pixel,
            "decoded_bytes": decoded,
            "compressed_bytes": compressed,
        },
        "network": net,
        "core_hours": {**core_h, "total": sum(core_h.values())},
        "gpu_hours": gpu_h,
        "workers": asdict(workers),
        "wall_hours": wall_h,
        "cost": {
            "total": cost,
            "per_km2": cost / area_km2 if area_km2 else math.nan,
            "node_hours": wall_h * workers.count,
        },
        "rates": {**asdict(rates)},
        "assumptions": [
            f"decoded input {BYTES_PER_SCENE_PIXEL:g} B per output pixel and scene; compressed "
            f"= decoded / {COMPRESSION_RATIO:g}",
            "load/decode and composite cost scale with scenes x pixels as measured (the rates' "
            "machine)",
            "waits on object storage (--latency-ms) overlap the CPU stages; the longer of the "
            "two, or the transfer at --bandwidth-mbps per worker, bounds the tile stage",
            "GPU inference of one tile overlaps the CPU stages of others; publishing follows",
            "cost = workers x wall hours x (cores x --price-core-hour + GPUs x --price-gpu-hour)",
        ],
    }


def _network_hours(
    scene_mpx: float, compressed_bytes: float, rates: Rates, workers: Workers, network: Network
) -> dict[str, Any]:
    """Requests, hours every core waits on them, and transfer hours (see :func:`estimate`)."""
    per_scene, in_flight = rates.requests_per_mpx_scene, rates.read_in_flight
    if network.latency_ms > 0 and (per_scene is None or in_flight is None):
        raise UserError(
            "--latency-ms needs the measured requests per Mpx (http_requests_per_mpx); "
            "run 'make bench ARGS=\"--only latency\"'"
        )
    requests = scene_mpx * per_scene if per_scene is not None else None
    cores = workers.count * workers.cores
    wait_h = 0.0
    if network.latency_ms > 0 and requests is not None and in_flight:
        wait_h = requests * network.latency_ms / 1000 / in_flight / cores / 3600
    transfer_h = 0.0
    if network.bandwidth_mbps:
        transfer_h = compressed_bytes * 8 / (network.bandwidth_mbps * 1e6 * workers.count) / 3600
    return {
        "latency_ms": network.latency_ms,
        "bandwidth_mbps": network.bandwidth_mbps,
        "requests": requests,
        "in_flight_per_worker": in_flight,
        "read_wait_hours": wait_h,
        "transfer_hours": transfer_h,
    }
