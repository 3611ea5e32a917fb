"""*Ask the map* at scale: ``classify --field`` and ``query --field`` on a 16 Mpx field.

A synthetic field of 4000 x 4000 px (1,600 km² at 10 m) is written with the product's own
writers and codec (:func:`pipeline.testing.field.write_synthetic_field`), with the metadata of a
demo run (untrained TimeSenCLIP, so every figure is offline), and a 512 x 512 px one (0.26 Mpx)
alike. Each command runs as a new ``python -m pipeline`` process, as a user runs it, after one
warm-up call that fills the text cache. Entries (CPU = user + system seconds of the process):

- ``ask_fixed_s``: wall seconds of a classify call on the small field (warm text cache): imports,
  model, texts from the cache, publishing; what every call pays.
- ``classify_cpu_s_per_mpx`` / ``query_cpu_s_per_mpx``: (CPU of the 16 Mpx call - CPU of the
  small call) / the Mpx between them: the per-pixel cost without the fixed one.
- ``ask_first_output_s``: seconds from the process start to the first output file a user can
  open (a published ``*.tif`` anywhere in the output folder: a unit's file under ``tiles/``, as
  :mod:`pipeline.field.stream` publishes them), on the 16 Mpx field.
- ``ask_lower_bound_cpu_s_per_mpx``: measured in the same run, on the same cores: read the codes
  and scales, one float32 GEMM of the codes against the K class vectors (BLAS), an argmax, and
  one uint8 COG write; process CPU seconds per Mpx. ``classify`` and ``query`` carry it as
  their baseline (``ratio`` = value / lower bound; the issue's goal: <= 2, ideally <= 1.2).

The development machine is shared: each entry records the 1-minute load average (``uptime``)
before and after, and the cores; figures are measured, never extrapolated.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench.field import ASK_LEGEND, QUERIES  # the README's own legend and queries
from pipeline.bench.results import Entry

#: Edge of the large field (16 Mpx) and of the small one (fixed cost), in pixels.
LARGE = 4000
SMALL = 512
TILE = 512


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _demo_run_metadata(tile_size: int) -> dict[str, Any]:
    """The run.json parts, field attribute and legend of a demo ``--save-embeddings`` run."""
    from pipeline.base.config import to_plain
    from pipeline.run.config import RunConfig
    from pipeline.run.prepare import prepare_run

    cfg = RunConfig.from_flat(
        {
            "region": "demo",
            "model": "timesenclip",
            "untrained": True,
            "tile_size": tile_size,
            "save_embeddings": True,
            "start": "2023-01-01",
            "end": "2023-12-31",
        },
        where="bench",
    )
    prep = prepare_run(cfg)
    return {
        "run": {
            "config": to_plain(cfg.flat()),
            "model": prep.model_info,
            "legend": {**prep.legend_info, "classes": list(prep.class_names)},
            "calibration": None,
            "region": {"name": "synthetic"},
        },
        "field_meta": prep.field_meta,
        "class_names": list(prep.class_names),
        "colors": list(prep.colors),
        "legend_info": dict(prep.legend_info),
        "crs": str(prep.grid.geobox.crs),
    }


def _process(args: list[str], env: dict[str, str], watch: Path | None = None) -> dict[str, Any]:
    """Wall and CPU seconds of ``python -m pipeline ARGS``; with ``watch``, the seconds until the
    first published ``*.tif`` appears in that folder."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    first: list[float] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def poll() -> None:
        while proc.poll() is None and not first:
            if watch is not None and watch.is_dir():
                # a unit's file under OUT/tiles/ or a final COG; names starting with "." are
                # files being written (pipeline.base.atomic)
                if any(not p.name.startswith(".") for p in watch.rglob("*.tif")):
                    first.append(time.perf_counter() - t0)
                    return
            time.sleep(0.05)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {err[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_1min": os.getloadavg()[0]}
    if watch is not None:
        out["first_output_s"] = round(first[0], 2) if first else round(wall, 2)
    return out


def lower_bound(map_dir: Path, vectors: np.ndarray, out: Path) -> dict[str, float]:
    """The floor of a classify: read codes and scales, one float32 GEMM of the codes against
    the K (d-dim, projected) class vectors, argmax, one uint8 COG; process CPU and wall seconds.
    """
    import rasterio
    import rasterio.shutil
    import zarr

    g = zarr.open_group(str(map_dir / "map.zarr"), mode="r")
    codes_a, scale_a = g["field_codes"], g["field_scale"]
    _, d, h, w = codes_a.shape
    ts = codes_a.chunks[-1]
    v = np.ascontiguousarray(vectors, np.float32)  # (K, d)
    classes = np.empty((h, w), np.uint8)
    c0, t0 = time.process_time(), time.perf_counter()
    for r in range(0, h, ts):
        for c in range(0, w, ts):
            q = np.asarray(codes_a[0, :, r : r + ts, c : c + ts])
            s = np.asarray(scale_a[0, r : r + ts, c : c + ts], np.float32)
            score = v @ q.reshape(d, -1).astype(np.float32)  # (K, N): one GEMM
            cls = score.argmax(axis=0).astype(np.uint8)
            cls[~np.isfinite(s.ravel())] = 255
            classes[r : r + ts, c : c + ts] = cls.reshape(s.shape)
    tmp = out.with_suffix(".tmp.tif")
    profile = {
        "driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8",
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(classes, 1)
    rasterio.shutil.copy(str(tmp), str(out), driver="COG", compress="deflate", blocksize=512)
    tmp.unlink()
    return {
        "cpu_s": round(time.process_time() - c0, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
    }


def ask_scale_entries() -> list[Entry]:
    """The entries above (see the module doc)."""
    from pipeline.field import open_field
    from pipeline.field.api import project
    from pipeline.testing.field import write_synthetic_field

    load_before = _uptime()
    meta = _demo_run_metadata(TILE)
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="s2lc-bench-ask-") as tmp:
        root = Path(tmp)
        fields: dict[str, Path] = {}
        gen_s: dict[str, float] = {}
        for name, edge in (("small", SMALL), ("large", LARGE)):
            t = time.perf_counter()
            fields[name] = write_synthetic_field(
                root / name,
                (edge, edge),
                run=meta["run"],
                field_meta=meta["field_meta"],
                class_names=meta["class_names"],
                colors=meta["colors"],
                legend_info=meta["legend_info"],
                period_labels=[f"2023-{m:02d}" for m in range(1, 13)],
                crs=meta["crs"],
                tile_size=TILE,
            )
            gen_s[name] = round(time.perf_counter() - t, 1)
        legend = root / "my-legend.yaml"
        legend.write_text(ASK_LEGEND)
        env = dict(os.environ)

        def classify(name: str, tag: str, watch: bool = False) -> dict[str, Any]:
            o = root / "out" / f"c-{name}-{tag}"
            args = ["classify", "--field", str(fields[name]), "--legend", str(legend)]
            return _process([*args, "--no-progress", "--out", str(o)], env, o if watch else None)

        def query(name: str, tag: str, watch: bool = False) -> dict[str, Any]:
            o = root / "out" / f"q-{name}-{tag}"
            args = ["query", "--field", str(fields[name]), *QUERIES, "--no-progress"]
            return _process([*args, "--out", str(o)], env, o if watch else None)

        times = {
            "classify warm-up": classify("small", "warm"),
            "query warm-up": query("small", "warm"),
        }
        times["classify small"] = classify("small", "1")
        times["query small"] = query("small", "1")
        times["classify large"] = classify("large", "1", watch=True)
        times["query large"] = query("large", "1", watch=True)
        # the same classify in one process (no Dask workers), for the notes: what the local
        # cluster's worker processes cost on these cores
        times["classify large --workers 1"] = _process(
            ["classify", "--field", str(fields["large"]), "--legend", str(legend),
             "--no-progress", "--workers", "1", "--out", str(root / "out" / "c-large-w1")],
            env,
        )  # fmt: skip

        # the lower bound, on the same field and cores: K class vectors of the same legend
        from model.legends import load_legend
        from model.zeroshot import build_classifier
        from pipeline.field.api import load_model

        f = open_field(fields["large"])
        w = np.asarray(build_classifier(load_model(f), load_legend(str(legend))).numpy())
        pv = project(f, w)
        bound = lower_bound(fields["large"], pv.proj[:, : pv.count].T, root / "bound.tif")
    load_after = _uptime()
    mpx = (LARGE * LARGE - SMALL * SMALL) / 1e6
    per_mpx = {
        c: (times[f"{c} large"]["cpu_s"] - times[f"{c} small"]["cpu_s"]) / mpx
        for c in ("classify", "query")
    }
    lb = bound["cpu_s"] / (LARGE * LARGE / 1e6)
    one = (times["classify large --workers 1"]["cpu_s"] - times["classify small"]["cpu_s"]) / mpx
    notes = {
        "field": f"synthetic {LARGE}x{LARGE} px (16 Mpx, 1,600 km2 at 10 m), 62 int8 codes + "
        f"float16 scale, tiles of {TILE} px; small field {SMALL}x{SMALL} px; untrained TimeSenCLIP "
        "metadata (demo)",
        "legend": "README 'Ask the map' legend (4 classes, 7 prompts); query: 3 texts",
        "how": "classify: the streamed default (classes.tif); query: one single-band int16 COG "
        "per text (the cosine as round(cos / 1e-4), the band scale 1e-4; 2 bytes per pixel, no "
        "--probability); the 16 Mpx calls on a local Dask cluster of 2 worker processes (the default), "
        "the small ones in the calling process (1 unit); units published under OUT/tiles",
        "seconds": times,
        "lower_bound": bound,
        "classify_cpu_s_per_mpx_one_process": round(one, 3),
        "ratios_to_lower_bound": {
            "classify": round(per_mpx["classify"] / lb, 2),
            "query": round(per_mpx["query"] / lb, 2),
            "classify_one_process": round(one / lb, 2),
        },
        "generate_s": gen_s,
        "cores": cores,
        "uptime_before": load_before,
        "uptime_after": load_after,
        "machine": "shared development machine (other engineers' jobs run at the same time)",
    }
    return [
        Entry("ask_fixed_s", times["classify small"]["wall_s"], "s", threads=cores, notes=notes),
        Entry("classify_cpu_s_per_mpx", per_mpx["classify"], "cpu-s/Mpx", baseline=lb,
              threads=cores, notes=notes),
        Entry("query_cpu_s_per_mpx", per_mpx["query"], "cpu-s/Mpx", baseline=lb, threads=cores,
              notes=notes),
        Entry("ask_first_output_s", min(times["classify large"]["first_output_s"],
              times["query large"]["first_output_s"]), "s", threads=cores, notes=notes),
        Entry("ask_lower_bound_cpu_s_per_mpx", lb, "cpu-s/Mpx", threads=cores, notes=notes),
    ]  # fmt: skip
