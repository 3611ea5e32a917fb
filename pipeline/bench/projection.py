"""Projected time for one MGRS tile-year on one GPU node, from this run's measured rates."""

from __future__ import annotations

from pipeline.bench.results import Entry

MGRS_PIXELS = 10980 * 10980  # 109.8 km at 10 m


def projection_entry(
    entries: list[Entry],
    node_cores: int = 16,
) -> Entry | None:
    """Combine the measured per-pixel CPU costs and the TimeSenCLIP rate into a tile-year estimate.

    CPU stages (load/decode + composite, per-core cost measured alone by
    :mod:`pipeline.bench.stages`) run on all the node's cores in parallel tile tasks; GPU
    inference of one tile overlaps the CPU stages of others, so the tiles take the larger of the
    two; the final COG mosaic runs once, after them, in one process.
    """
    data = next((e for e in entries if e.name == "data_path_cpu_s_per_mpx"), None)
    if data is None:
        return None
    mpx = MGRS_PIXELS / 1e6
    cpu_s = data.value * mpx / node_cores
    mosaic_s = data.notes["mosaic_s_per_mpx"] * mpx
    read = next((e for e in entries if e.name == "mgrs_tile_year_cpu_min"), None)
    if read is not None:  # the read path measured at scale (pipeline.bench.reading) wins
        cpu_s = read.value * 60 * read.notes["node_cores"] / node_cores
        mosaic_s = read.notes["mosaic_min"] * 60
    px = next(
        (
            e
            for e in entries
            if e.name == "timesenclip_pixels_per_s" and e.device.startswith("cuda")
        ),
        None,
    )
    rate = px.value if px else None
    source = "measured on " + (px.notes.get("machine", "cuda") if px else "cpu")
    if rate is None:
        cpu = next((e for e in entries if e.name == "timesenclip_pixels_per_s"), None)
        if cpu is None:
            return None
        rate = cpu.value * node_cores / max(1, cpu.threads or 1)
        source = "no GPU figure: this machine's CPU rate scaled to the node's cores"
    gpu_s = MGRS_PIXELS / rate
    total_s = max(cpu_s, gpu_s) + mosaic_s
    return Entry(
        "tile_projection_min",
        total_s / 60,
        "minutes",
        device="projection",
        notes={
            "pixels": MGRS_PIXELS,
            "T": 12,
            "node_cores": node_cores,
            "cpu_stages_min": cpu_s / 60,
            "inference_min": gpu_s / 60,
            "mosaic_min": mosaic_s / 60,
            "inference_rate_px_s": rate,
            "inference_rate_source": source,
            "cpu_stages_source": "mgrs_tile_year_cpu_min (read path at scale, generated COGs)"
            if read is not None
            else "data_path_cpu_s_per_mpx (demo window)",
            "assumptions": [
                f"one node with {node_cores} cores and one GPU, one Dask worker per core",
                "load/decode + composite cost per pixel as measured on one core of this machine "
                f"for the demo ({data.notes['scenes']} scenes after --max-cloud 60), scaling "
                "linearly with cores",
                "object-store reads keep up (in-region S3, >= 1 GB/s aggregate)",
                "GPU inference of one tile overlaps the CPU stages of others",
                "COG mosaic after the tiles: mosaic_min of mgrs_tile_year_cpu_min (layers side "
                "by side, the slowest layer's CPU time) when measured, else the demo's "
                "single-process mosaic cost per pixel",
            ],
        },
    )
