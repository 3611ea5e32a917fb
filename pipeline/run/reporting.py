"""What a run says about itself: ``run.json`` (config, region, model, tiles, timings, coverage),
the scene ledger's tile-level entries, and whether a finished map is already up to date.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.run.workspace import TileFailure, Workspace
from pipeline.stac.scenes import SceneLedger

_log = logging.getLogger(__name__)


def ledger_from_tiles(ledger: SceneLedger, stats: dict, failures: dict[str, TileFailure]) -> None:
    """Add the tiles' read failures and offset warnings to the scene ledger.

    ``stats`` (tile id -> stats) should hold every done tile, earlier runs' included, and
    ``failures`` every failed tile, dead-lettered ones included: the scenes tiles dropped as
    permanently unreadable (``stats[tid]["unreadable"]``) and those that failed tiles then stay
    in the ledger of a resumed run.
    """
    for tid, f in failures.items():
        if f.error_kind == "read_failure":
            for sid in f.scenes:
                ledger.read_failure(sid, f.message, tid, status=f.http_status)
    for tid, s in stats.items():
        for sid, rec in (s.get("unreadable") or {}).items():
            ledger.read_failure(
                sid,
                rec.get("message", ""),
                s.get("tile", tid),
                status=rec.get("status"),
                permanent=True,
                asset=rec.get("asset"),
            )
        for sid, text in (s.get("offset_warnings") or {}).items():
            ledger.warn(sid, text)


#: A period gap-filled (no clear observation) over more than this share of the region warns.
GAP_FILLED_WARN_FRACTION = 0.10


def scl_mask_info(mask: Any) -> dict[str, Any]:
    """The SCL mask a run applied, for ``run.json``: the classes masked (after ``--keep-snow``),
    their Sen2Cor names, and the ``--scl-mask`` / ``mask_snow`` settings they came from."""
    from pipeline.stac.bands import SCL_NAMES

    classes = list(mask.scl_classes)
    return {
        "masked_classes": classes,
        "masked_names": [SCL_NAMES[c] for c in classes],
        "scl_mask": mask.scl_mask,
        "mask_snow": mask.mask_snow,
    }


def coverage_report(all_stats: dict[str, dict], labels: list[str]) -> dict[str, Any]:
    """Per period, the share of the region's pixels without a clear observation in it (gap-filled
    from other periods), the share with no observation in any period (nodata), and warnings.

    Tiles from before coverage was recorded are left out (``pixels_counted`` says how many count).
    """
    inside = 0
    no_data = 0
    gap = np.zeros(len(labels), np.int64)
    for s in all_stats.values():
        cov = s.get("coverage")
        if not cov or len(cov.get("gap_filled", [])) != len(labels):
            continue
        inside += int(cov["inside"])
        no_data += int(cov["no_data"])
        gap += np.asarray(cov["gap_filled"], np.int64)
    periods = {
        lab: {"gap_filled_fraction": float(g / inside) if inside else 0.0}
        for lab, g in zip(labels, gap, strict=True)
    }
    warnings = []
    # No pixel counted is no map, not a fully mapped one (a region must hold a pixel; see
    # pipeline.grid.tiling.pixel_footprint).
    frac_none = no_data / inside if inside else 1.0
    if not inside:
        warnings.append("no pixel of the region was counted: the map holds no class")
    gappy = [
        f"{lab} {v['gap_filled_fraction']:.0%}"
        for lab, v in periods.items()
        if v["gap_filled_fraction"] > GAP_FILLED_WARN_FRACTION
    ]
    if gappy:  # one line for all periods: a cloudy winter is not six warnings
        warnings.append(
            f"{len(gappy)} of {len(periods)} periods had no clear observation over more than "
            f"{GAP_FILLED_WARN_FRACTION:.0%} of the region ({', '.join(gappy)}); those pixels "
            "were gap-filled from neighbouring periods"
        )
    if no_data:
        warnings.append(
            f"{frac_none:.1%} of the region ({no_data} px) has no clear observation in any "
            "period: nodata in the map"
        )
    return {
        "pixels_counted": inside,
        "no_data_fraction": frac_none,
        "gap_filled_warn_fraction": GAP_FILLED_WARN_FRACTION,
        "periods": periods,
        "warnings": warnings,
    }


def up_to_date(ws: Workspace, output_hash: str) -> bool:
    """True when ``ws`` holds a complete, published map made with the same settings."""
    import json

    run_json = ws.out / "run.json"
    if not run_json.is_file():
        return False
    try:
        report = json.loads(run_json.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    from pipeline.run.workspace import GRIDDED_PRODUCTS, PRODUCTS

    products = GRIDDED_PRODUCTS if "cells" in report else PRODUCTS
    return (
        report.get("status") == "complete"
        and report.get("output_hash") == output_hash
        and all((ws.out / p).exists() for p in products)
    )


def run_report(
    cfg: Any,
    prep: Any,
    *,
    output_hash: str,
    precision: dict[str, Any],
    area_km2: float,
    labels: tuple[str, ...],
    n_scenes: int,
    ledger: SceneLedger,
    done_before: dict[str, dict],
    dead_before: dict[str, TileFailure],
    refs: Any,
    seconds: dict[str, float],
    stats: dict[str, dict],
    failures: dict[str, TileFailure],
) -> dict[str, Any]:
    """``run.json``'s content: settings, region, model, legend, tiles and timings, plus the
    backend (``precision``), the field, the OOD reference, the scene ledger and the coverage.

    :param cfg: the run's :class:`~pipeline.run.config.RunConfig` (tile size fitted) and ``prep``
        its :class:`~pipeline.run.prepare.Prepared`.
    :param labels: the composite's period labels; ``area_km2`` the region's area.
    :param ledger: the search's scene ledger; the tiles' read failures and warnings, earlier
        runs' included (``done_before``, ``dead_before``), are added to it here.
    :param refs: the run's :class:`~pipeline.run.calibration.References`.
    :param seconds: seconds per stage; the tiles' worker seconds are added to it here.
    :param stats: this run's tile stats and ``failures`` its failed tiles, by tile id.
    """
    all_stats = {**done_before, **stats}
    coverage = coverage_report(all_stats, list(labels))
    scl_mask = scl_mask_info(cfg.mask)
    # earlier runs' tiles too: a resumed run keeps their dropped scenes and failures
    ledger_from_tiles(ledger, all_stats, {**dead_before, **failures})
    for line in ledger.summary_lines():
        _log.info("%s", line)
    for line in ledger.unreadable_lines():
        _log.warning("%s", line)
    for stage in ("model", "load", "composite", "infer", "write"):
        seconds[f"{stage}_worker_sum"] = float(
            sum(s["seconds"].get(stage, 0.0) for s in stats.values())
        )
    from pipeline.base.config import to_plain
    from pipeline.run.provenance import host_info, package_versions

    report = {
        "status": "complete",
        "untrained": cfg.model.untrained,
        "output_hash": output_hash,
        "config": to_plain(cfg.flat()),
        "region": {
            "name": prep.region_name,
            "crs": prep.crs,
            "resolution": prep.resolution,
            "area_km2": area_km2,
            "bbox_4326": list(prep.geometry.bounds),
        },
        "scl_mask": scl_mask,
        "model": prep.model_info,
        "legend": {**prep.legend_info, "classes": list(prep.class_names)},
        "calibration": refs.calibration,
        "scenes": n_scenes,
        "tiles": {
            "total": len(prep.grid.tiles),
            "done": len(all_stats),
            "resumed": len(done_before),
            "failed": sorted(failures),
            "errors": {k: f"{f.error_kind}: {f.message}" for k, f in failures.items()},
            "failures": {k: failures[k].to_dict() for k in sorted(failures)},
            "tile_size": cfg.chips.tile_size,
        },
        "seconds": dict(seconds),
        "tile_stats": [all_stats[k] for k in sorted(all_stats)],
        "versions": package_versions(),
        "host": host_info(),
        "precision": precision,
    }
    if refs.codec is not None:
        report["field"] = {
            **prep.field_meta,
            "explained_variance": refs.codec.explained_variance,
            "basis_sha256": refs.codec.sha256,
        }
    if refs.ood is not None:
        report["ood"] = refs.ood.describe()
    report["scene_ledger"] = ledger.to_dict()
    report["coverage"] = coverage
    for line in coverage["warnings"]:
        _log.warning("%s", line)
    return report
