"""The cheap checks of a run: what fails in seconds, before the STAC search, before any model is
built and before anything is written.

The region (clipped to ``--bbox``), the periods the model takes, the checkpoints, the legend and
the few-shot head, Slurm's ``sbatch`` and the region's size for a local cluster
(:func:`pipeline.run.cluster.check_local_size`). :func:`check_inputs` makes them all, in that order, and returns the region it resolved
(:class:`CheckedInputs`), so that nothing after it resolves the region again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipeline.base.errors import UserError
from pipeline.run.config import CompositeConfig, ModelConfig, RunConfig

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedInputs:
    """What :func:`check_inputs` resolved: the region (:class:`aoi.Region`: name, CRS,
    resolution), the geometry to map (EPSG:4326, clipped to ``--bbox``, :func:`resolve_region`),
    its area in km² and the composite's period labels."""

    region: Any
    geometry: Any
    area_km2: float
    labels: tuple[str, ...]
    location: str = ""
    """Where the region is (:func:`aoi.location_text`): centre, description, CRS."""
    legend: Any = None
    """The legend the map's classes and colours come from (:func:`model.legends.load_legend`):
    ``--legend`` (default lucas-lc8), or with ``--head`` the head's (None: a generic palette)."""
    head: Any = None
    """The few-shot head (``--head``, :class:`model.train.probe.LinearHead`), or None."""

    @property
    def name(self) -> str:
        """The region's name (output paths, ``run.json``)."""
        return self.region.name


def check_inputs(cfg: RunConfig) -> CheckedInputs:
    """The cheap checks of a run, in seconds and before any model is built or anything written.

    Raises:
        UserError: an unknown region or a ``--bbox`` outside it, a local run too large without
            ``--allow-large``, periods the model cannot take, an unknown legend, an unreadable
            head or one fitted for another model, period or number of periods, or ``sbatch``
            missing for ``--cluster slurm``.
    """
    from aoi import location_text, to_crs
    from pipeline.composite.median import period_labels

    region, geometry = resolve_region(cfg.region, cfg.bbox)
    area_km2 = float(to_crs(geometry, region.crs).area) / 1e6
    # First: where the region is (a --bbox with its axes swapped maps another continent).
    where = location_text(geometry, region.crs, region.description)
    _log.info("region %s: %s, %.2f km2", region.name, where, area_km2)
    c = cfg.composite
    labels = tuple(period_labels(c.start, c.end, c.period))
    cfg.model.adapter.check_periods(len(labels), c.start, c.end, c.period)
    legend, head = preflight(cfg.model, c, len(labels))
    from pipeline.run.cluster import check_local_size, check_sbatch

    if cfg.execution.cluster == "slurm":
        check_sbatch()
    check_local_size(cfg.execution, area_km2)  # last: above the CPU limit it counts GPUs
    return CheckedInputs(region, geometry, area_km2, labels, where, legend, head)


def resolve_region(name_or_path: str, bbox: tuple[float, ...] | None) -> tuple[Any, Any]:
    """The region (:func:`aoi.load_region`) and the geometry to map: clipped to ``bbox``
    (``--bbox``, lon/lat) when given, and the pixels it touches when it holds no pixel centre
    (:func:`pipeline.grid.tiling.pixel_footprint`).

    Raises:
        UserError: an unknown region, or a ``bbox`` that does not overlap it.
    """
    from shapely.geometry import box

    from aoi import load_region
    from pipeline.grid.tiling import pixel_footprint

    region = load_region(name_or_path)
    geometry = region.geometry
    if bbox is not None:
        geometry = geometry.intersection(box(*bbox))
        if geometry.is_empty or geometry.area == 0:
            w, s, e, n = bbox
            swapped = region.geometry.intersection(box(s, w, n, e))
            hint = (
                " (with latitude and longitude swapped it would: --bbox is W S E N, longitude "
                "first)"
                if not swapped.is_empty and swapped.area > 0
                else ""
            )
            raise UserError(f"--bbox {list(bbox)} does not overlap region {region.name}{hint}")
    return region, pixel_footprint(geometry, region.crs, region.resolution)


def preflight(model: ModelConfig, composite: CompositeConfig, n_periods: int) -> tuple[Any, Any]:
    """Cheap checks of the checkpoints, the legend and the few-shot head, before any model is
    built and before torch is imported; returns the (legend, head) it loaded, so that the
    model's classes (:func:`pipeline.run.classifier.model_classes`) do not load them again.
    The head is None without ``--head``; the legend is None with a head that names none.

    Raises UserError for a checkpoint that is neither a file nor a weights name, an unknown
    legend, an unreadable head, or a head fitted on another model kind, composite period or
    number of periods T than this run makes.
    """
    from model import weights
    from model.legends import load_legend

    for checkpoint in (model.checkpoint, getattr(model, "clip_checkpoint", None)):
        if checkpoint:
            weights.check(checkpoint)
    if not model.head:
        return load_legend(model.legend or "lucas-lc8", style=model.style), None
    from model.train.probe import check_head_matches, head_legend, load_head

    head = load_head(model.head)
    check_head_matches(
        head,
        {"name": model.name, "period": composite.period, "periods": n_periods},
        where=model.head,
    )
    fitted = head.model_identity
    if fitted.get("start") and str(fitted["start"]) != str(composite.start):
        _log.warning(
            "the head was fitted on composites of %s..%s and maps %s..%s: a head transfers "
            "between years only as far as the land cover's seasonal signal does",
            fitted["start"],
            fitted.get("end"),
            composite.start,
            composite.end,
        )
    legend = head_legend(head, model.legend, model.style)
    if legend is not None and tuple(legend.names) != tuple(head.class_names):
        raise UserError(
            f"--legend {model.legend} has classes {', '.join(legend.names)}; the head "
            f"{model.head} predicts {', '.join(head.class_names)}"
        )
    return legend, head
