"""Publishing a finished run: COG mosaics, the Zarr store moved into place, legend, quicklook,
STAC item, and the compact field's model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.run.config import RunConfig
from pipeline.run.prepare import Prepared
from pipeline.run.workspace import Workspace

#: The STAC embeddings extension (stac-extensions.github.io/embeddings; ``emb:`` fields).
EMBEDDINGS_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
MODEL_CARD = "model_card.json"


def basis_sha256(codec: Any) -> str:
    """SHA-256 of a field's decoding recipe (:attr:`pipeline.writers.codec.FieldCodec.sha256`)."""
    return codec.sha256


def _licence(cfg: RunConfig) -> str:
    """What is known of the weights' licence (model.weights), or why nothing is."""
    if cfg.model.untrained:
        return "untrained random weights (demo): no licence applies"
    from model.weights import get_spec

    names = [cfg.model.checkpoint, cfg.model.clip_checkpoint]
    for name in (str(n) for n in names if n):
        try:
            return f"{name}: {get_spec(name).licence}"
        except Exception:  # a local file, not a registered weights name
            continue
    return "unknown: a local checkpoint (see its source)"


def write_model_card(
    cfg: RunConfig, prep: Prepared, ws: Workspace, report: dict
) -> tuple[Path, dict[str, Any]]:
    """``model_card.json`` beside the field: model, checkpoint hash, basis hash, prompt set,
    calibration and licence (the geoembeddings conventions' model card); returns its path and
    the ``emb:`` / ``s2lc:field_*`` STAC properties of the item.

    Raises:
        UserError: the store has no complete field recipe (the run did not fit it).
    """
    from pipeline.base.errors import UserError
    from pipeline.base.jsonio import write_json
    from pipeline.writers.field import read_codec

    codec = read_codec(ws.store)
    if codec is None:
        raise UserError(f"{ws.store}: the embedding field has no decoding recipe")
    from pipeline.run.basis import basis_definition

    meta = prep.field_meta
    digest = basis_sha256(codec)
    definition = basis_definition(prep.model_info, meta["dims"])
    card = {
        "model": {
            "name": prep.model_info["name"],
            "identity": prep.model_info["identity"],
            "embedding_identity": prep.model_info.get("embedding_identity"),
            "arch": prep.model_info.get("arch"),
            "checkpoint": prep.model_info.get("checkpoint"),
            "checkpoint_sha256": prep.model_info.get("checkpoint_sha256"),
            "untrained": prep.model_info.get("untrained"),
            "embed_dim": prep.model_info["embed_dim"],
        },
        "field": {
            **{k: meta[k] for k in ("encoding", "version", "dims", "bytes_per_pixel", "decode")},
            "basis_hash": meta["basis_hash"],
            "basis_sha256": digest,
            "basis": "the model's: PCA of its embeddings of the reference sample, fitted once per "
            "checkpoint and cached beside the weights (pipeline.run.basis); fields with the same "
            "basis_hash are in the same space",
            "reference_sample": definition["sample"],
            "store": "map.zarr: field_codes (time, embedding, y, x) int8, field_scale (time, y, x)"
            " float16, field_mean, field_basis",
        },
        "prompt_sets": {"legend": dict(prep.legend_info)},
        "calibration": {"mode": cfg.model.calibration, "class_mean_cosine": report["calibration"]},
        "licence": _licence(cfg),
    }
    path = write_json(ws.out / MODEL_CARD, card)
    # The embeddings extension (v0.0.1, tests/data/stac-embeddings/schema.json) allows on an
    # item only the per-item emb: fields below; emb:type, emb:dimensions and emb:chip_layout
    # belong to a collection, so the item carries them as runtime parameters and s2lc: fields.
    props = {
        "emb:quantization": {
            "method": f"{meta['encoding']}: the 512-d unit embedding projected on the model's "
            f"basis (mean + {meta['dims']} principal axes), int8 codes with one float16 scale "
            "per pixel; decode: normalise(mean + basis @ (codes * scale))",
            "original_dtype": "float32",
            "quantized_dtype": "int8",
            "link": {
                "rel": "describedby",
                "href": f"./{MODEL_CARD}",
                "type": "application/json",
                "title": "model card: model, basis hash, reference sample, prompt sets",
            },
        },
        "emb:runtime_parameters": {
            "type": "pixel",
            "dimensions": meta["dims"],
            "embed_dim": prep.model_info["embed_dim"],
            "model": prep.model_info["name"],
            "period": cfg.composite.period,
        },
        "data_type": "int8",
        "s2lc:field_dims": meta["dims"],
        "s2lc:field_encoding": meta["encoding"],
        "s2lc:field_basis_hash": meta["basis_hash"],
        "s2lc:field_basis_sha256": digest,
        "s2lc:field_bytes_per_pixel": meta["bytes_per_pixel"],
    }
    return Path(path), props


def write_legend_and_quicklook(
    cfg: RunConfig, prep: Prepared, ws: Workspace, report: dict, classes: Path, bounds=None
) -> None:
    """``legend.json`` and ``quicklook.png`` (of the ``classes`` raster: a COG or a VRT), with
    what the map is made from in both (model identity, untrained weights, a few-shot head).

    ``bounds`` (in the raster's CRS): the part the quicklook shows (default: all of it)."""
    from pipeline.writers import write_legend_json, write_quicklook

    write_legend_json(
        ws.out / "legend.json",
        class_names=list(prep.class_names),
        colors=list(prep.colors),
        legend_name=prep.legend_info["name"],
        style=prep.legend_info["style"],
        prompt_hash=prep.legend_info["prompt_hash"],
        untrained=cfg.model.untrained,
        extra={
            "model": prep.model_info["identity"],
            "nodata": 255,
            "calibration": report["calibration"],
        },
    )
    title = f"{prep.region_name} {cfg.composite.start}..{cfg.composite.end} | {cfg.model.name} | {prep.legend_info['name']}"
    if cfg.model.untrained and cfg.model.head:
        title += "\nUNTRAINED encoder (demo), classes from a few-shot head"
    elif cfg.model.untrained:
        title += "\nUNTRAINED WEIGHTS (demo): not a land-cover map"
    write_quicklook(
        ws.out / "quicklook.png",
        classes,
        list(prep.class_names),
        list(prep.colors),
        title,
        bounds=bounds,
    )


def publish(cfg: RunConfig, prep: Prepared, ws: Workspace, report: dict, labels: list[str]) -> None:
    """Mosaic COGs, move the Zarr into place, write legend, quicklook and STAC item."""
    from pipeline.writers import build_cogs, write_stac_item

    cogs = build_cogs(
        ws.tiles, ws.out, prep.grid, list(prep.class_names), list(prep.colors), period_labels=labels
    )
    field_cogs: dict[str, Path] = {}
    field_props: dict[str, Any] = {}
    if cfg.output.save_embeddings:
        from pipeline.writers.field import build_field_cogs

        field_cogs = build_field_cogs(ws.store, ws.out, prep.field_meta)
        field_cogs["model_card"], field_props = write_model_card(cfg, prep, ws, report)
    zarr_path = ws.publish_store()
    ws.drop_tile_rasters()  # mosaicked into the COGs; the markers stay for the record
    write_legend_and_quicklook(cfg, prep, ws, report, cogs["classes"])
    if "composite_rgb" in cogs:  # the true-colour composite the map was made from
        from pipeline.writers import write_rgb_quicklook

        cogs["composite_quicklook"] = write_rgb_quicklook(
            ws.out / "composite_rgb.png", cogs["composite_rgb"]
        )
    assets = {
        **cogs,
        **field_cogs,
        "zarr": zarr_path,
        # the embeddings extension's required asset: the field in the store
        **({"embeddings": zarr_path} if field_props else {}),
        "legend": ws.out / "legend.json",
        "quicklook": ws.out / "quicklook.png",
        "run": ws.out / "run.json",
    }
    write_stac_item(
        ws.out / "item.json",
        grid=prep.grid,
        geometry_4326=prep.geometry,
        start=cfg.composite.start,
        end=cfg.composite.end,
        assets=assets,
        class_names=list(prep.class_names),
        colors=list(prep.colors),
        properties={
            "s2lc:model": prep.model_info["identity"],
            "s2lc:untrained": cfg.model.untrained,
            "s2lc:period": cfg.composite.period,
            "s2lc:periods": labels,
            "s2lc:output_hash": report["output_hash"],
            **({"s2lc:ood": report["ood"]} if "ood" in report else {}),
            **(
                {"s2lc:postprocess": {"majority": cfg.output.majority, "mmu": cfg.output.mmu}}
                if cfg.output.postprocess
                else {}
            ),
            **field_props,
        },
        extensions=[EMBEDDINGS_EXTENSION] if field_props else [],
        item_id=f"s2lc-{prep.region_name}-{cfg.composite.start}-{cfg.composite.end}-{cfg.composite.period}-{cfg.model.name}",
    )
