"""``bench``: throughput figures, each beside a baseline measured in the same run."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "benchmarks vs same-run baselines (models, composite, demo end to end) -> bench/results.json"

SECTIONS = (
    "models",
    "composite",
    "demo",
    "stages",
    "reading",
    "latency",
    "projection",
    "field",
    "field-agreement",
    "view",
    "ask",
    "change",
    "plan",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--device", default="auto", help="auto (cuda if present, and cpu), cpu or cuda")
    p.add_argument("--out", default="bench/results.json", help="results file (entries are merged)")
    p.add_argument(
        "--model",
        choices=("timesenclip", "senclip"),
        help="models section: only this model (default both)",
    )
    p.add_argument("--pixels", type=int, help="TimeSenCLIP pixels per timing (default by device)")
    p.add_argument("--chips", type=int, help="SenCLIP chips per timing (default by device)")
    p.add_argument("--cube-size", type=int, default=192, help="composite cube edge in pixels")
    p.add_argument("--node-cores", type=int, default=16, help="cores of the projected GPU node")
    p.add_argument(
        "--field-map", help="field and view sections: an existing --save-embeddings demo map"
    )


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    import torch

    import model  # noqa: F401 (torchvision shim before torch users)
    from pipeline.bench.composite import composite_entries
    from pipeline.bench.endtoend import demo_entries
    from pipeline.bench.models import senclip_entries, timesenclip_entries
    from pipeline.bench.projection import projection_entry
    from pipeline.bench.results import table, write_results

    log = logging.getLogger("pipeline.bench")
    sections = args.only or SECTIONS
    devices = ["cpu"]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices = ["cuda", "cpu"] if args.device == "auto" else ["cuda"]
    threads = torch.get_num_threads()
    entries = []
    if "models" in sections:
        for dev in devices:
            gpu = dev == "cuda"
            if args.model in (None, "timesenclip"):
                log.info("TimeSenCLIP on %s", dev)
                entries += timesenclip_entries(
                    dev, args.pixels or (2_000_000 if gpu else 8192), threads
                )
            if args.model in (None, "senclip"):
                log.info("SenCLIP on %s", dev)
                entries += senclip_entries(dev, args.chips or (4096 if gpu else 64), threads)
    if "composite" in sections:
        log.info("composite")
        entries += composite_entries(args.cube_size, threads)
    if "demo" in sections:
        log.info("demo end to end")
        entries += demo_entries()
    if "stages" in sections:
        from pipeline.bench.stages import data_path_entry

        log.info("data path per-pixel CPU cost")
        entries.append(data_path_entry())
    if "reading" in sections:
        from pipeline.bench.reading import reading_entries

        log.info("read path vs decode floor, HTTP bytes (generated COGs)")
        entries += reading_entries(node_cores=args.node_cores)
    if "latency" in sections:
        from pipeline.bench.reading import latency_entries

        log.info("reads through the loopback object store at 0 and 30 ms per request")
        entries += latency_entries()
    if "field" in sections:
        from pipeline.bench.field import field_entries

        log.info("embedding field")
        entries += field_entries(args.field_map)
    elif "field-agreement" in sections:
        from pipeline.bench.field import field_entries

        log.info("embedding field: bytes per pixel and agreement")
        entries += field_entries(args.field_map, ask=False)
    if "ask" in sections:
        from pipeline.bench.ask import ask_scale_entries

        log.info("ask the map on a 16 Mpx field: fixed and per-pixel costs, lower bound")
        entries += ask_scale_entries()
    if "view" in sections:
        from pipeline.bench.view import view_entries

        log.info("map viewer: query to heat map")
        entries += view_entries(args.field_map)
    if "change" in sections:
        from pipeline.bench.change import change_entries

        log.info("change detection on the two-year demo with planted change")
        entries += change_entries()
    if "plan" in sections:
        from pipeline.bench.plan_accuracy import plan_entries

        log.info("plan against make map's mapping step: stage rates, plan, run")
        entries += plan_entries(Path(args.out))
    if "projection" in sections:
        import json

        previous = []
        out = Path(args.out)
        if out.exists():  # a GPU figure from an earlier run on a GPU machine counts too
            from pipeline.bench.results import Entry

            previous = [
                Entry(**{k: v for k, v in e.items() if k != "ratio"} | {"ratio": e.get("ratio")})
                for e in json.loads(out.read_text())
            ]
        merged = entries + [
            e for e in previous if (e.name, e.device) not in {(x.name, x.device) for x in entries}
        ]
        proj = projection_entry(merged, node_cores=args.node_cores)
        if proj:
            entries.append(proj)
    write_results(entries, Path(args.out))
    print(table(entries))
    print(f"\nwritten to {args.out}")
    return 0
