"""The compact embedding field: the encoding's error bound, released-form TimeSenCLIP checkpoints
without a text tower, and end to end on the demo: run --save-embeddings, classify --field (the
run's legend reproduces the run's map exactly; another legend; a few-shot head), query --field
(heat maps on the map's grid, nodata where the map has none), and refusal of another model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import model
from pipeline.base.errors import UserError
from pipeline.writers.codec import QMAX, fit_codec, identity_codec
from tests.demo_map import suite_checkpoint
from tests.paths import REPO_ROOT


def _embeddings(n=3000, d=512, rank=24, noise=0.3, seed=0):
    """Unit vectors near one fixed low-rank subspace, plus isotropic noise (like a model's
    outputs): ``seed`` draws the pixels, the subspace and mean are always the same."""
    space = np.random.default_rng(1234)
    basis, mean = space.normal(size=(rank, d)), space.normal(size=d) * 2
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, rank)) @ basis + mean + noise * rng.normal(size=(n, d))
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


# --- the encoding ---------------------------------------------------------------------------------


def test_identity_codec_is_within_half_a_step():
    e = _embeddings(500)
    c = identity_codec(512)
    codes, scale = c.encode(e)
    assert codes.dtype == np.int8 and scale.dtype == np.float16 and c.bytes_per_pixel == 514
    assert np.abs(codes).max() <= QMAX
    approx = codes.astype(np.float32) * scale.astype(np.float32)[:, None]
    step = scale.astype(np.float32)[:, None]
    assert (np.abs(approx - e) <= step / 2 + 1e-6).all()  # the stated per-component bound
    cos = (c.decode(codes, scale) * e).sum(axis=1)
    assert cos.min() > 0.9995


def test_projected_codec_keeps_the_directions_and_marks_nodata():
    sample, e = _embeddings(2000, seed=1), _embeddings(1000, seed=2)
    c = fit_codec(sample, 62)
    assert c.dims == 62 and c.bytes_per_pixel == 64 and c.explained_variance > 0.99
    assert np.allclose(c.basis.T @ c.basis, np.eye(62), atol=1e-5)  # orthonormal
    e[7] = np.nan
    codes, scale = c.encode(e)
    d = c.decode(codes, scale)
    assert np.isnan(scale[7]) and np.isnan(d[7]).all() and (codes[7] == 0).all()
    ok = np.arange(len(e)) != 7
    cos = (d[ok] * e[ok]).sum(axis=1)
    assert cos.min() > 0.995 and np.allclose(np.linalg.norm(d[ok], axis=1), 1, atol=1e-5)
    # same sample, same basis (deterministic signs); a poorer fit with fewer dimensions
    assert np.array_equal(fit_codec(sample, 62).basis, c.basis)
    few = fit_codec(sample, 4)
    assert (few.roundtrip(e[ok]) * e[ok]).sum(axis=1).mean() < cos.mean()
    with pytest.raises(ValueError):
        fit_codec(np.zeros((0, 512)), 8)


# --- released TimeSenCLIP checkpoints ----------------------------------------------------------------


def _released_state(seed=3):
    """The authors' TimeSenCLIPEncoder(image_size=1, time_frames=12, dim=512, depth=6, heads=8,
    mlp_dim=256, spectral_bands=10, dim_head=64) state dict: their key names, random weights."""
    from model.timesenclip import build_encoder

    state = build_encoder(seed=seed).state_dict()
    names = set(state)
    assert {"spectral_embedding.1.weight", "time_pos_encoding", "class_token"} <= names
    assert {"transformer.layers.5.self_attn.in_proj_weight", "mlp_head.1.weight"} <= names
    assert state["spectral_embedding.1.weight"].shape == (512, 10)
    assert state["time_pos_encoding"].shape == (1, 12, 512)
    return state


@pytest.mark.parametrize("form", ["plain", "lightning"])
def test_released_checkpoint_embeds_without_a_text_tower(form, tmp_path, monkeypatch):
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path / "cache"))  # nothing fetched
    state = _released_state()
    if form == "plain":
        payload = state
    else:  # what their Lightning module saves: encoder twice, hyper-parameters, no text tower
        payload = {
            "epoch": 199,
            "global_step": 27000,
            "state_dict": {
                **{f"learner.ts_encoder.{k}": v for k, v in state.items()},
                **{f"TS_ViT.{k}": v.clone() for k, v in state.items()},
            },
        }
    # released under its registry name: load it by name after a (simulated) fetch
    from model.weights import REGISTRY

    spec = REGISTRY["timesenclip-1x1"]
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, spec.path)
    m = model.load("timesenclip", checkpoint="timesenclip-1x1", device="cpu")
    assert not m.has_text and m.embedding_identity == f"timesenclip:{m.checkpoint_sha256}"
    from model.engine import embed_pixels

    x = np.random.default_rng(0).uniform(0, 4000, (64, 12, 10)).astype(np.float32)
    e = embed_pixels(m, x)
    ref = model.load("timesenclip", untrained=True, seed=3, device="cpu")
    assert np.allclose(e, embed_pixels(ref, x), atol=1e-5)  # exactly these weights
    # a few-shot head works on those embeddings; prompts need the text tower
    from model.train.probe import fit_linear_head

    head = fit_linear_head(e, np.arange(64) % 2, ["a", "b"], max_iter=20)
    assert head.predict(e).shape == (64, 2)
    with pytest.raises(UserError, match="weights fetch openai-clip-vitb32"):
        m.text_embed(["a lake"])
    # with a text tower named, it is loaded on first use only
    m2 = model.load(
        "timesenclip", checkpoint=spec.path, clip_checkpoint="untrained-seed0", device="cpu"
    )
    assert m2._text is None and m2.text_embed(["a lake"]).shape == (1, 512)


@pytest.mark.parametrize("dims", [62, 512])
def test_code_space_cosines_and_classes_equal_the_decoded_path(dims):
    """Issue 28: cosines from the int8 codes (the class vectors projected once) equal today's
    decode-then-cosine path to 1e-5, and the classes agree except on exact ties (class index)."""
    from model.zeroshot import cosine, fit_calibration, probabilities
    from pipeline.field.classify import probabilities_from_cosines
    from pipeline.run.tile_task import predict

    c = fit_codec(_embeddings(2000, seed=1), dims)
    e = _embeddings(4000, seed=2)
    e[11] = np.nan
    codes, scale = c.encode(e)
    # class vectors near the data (close cosines, so the argmax is a real test), one random, one
    # exact duplicate (an exact tie: the lower class index wins), not normalised
    w = np.concatenate(
        [_embeddings(6, seed=7) * 3.0, np.random.default_rng(3).normal(size=(1, 512))]
    )
    w = np.concatenate([w, w[2:3]]).astype(np.float32)
    got = c.cosines(codes, scale, c.project(w))
    ok = np.arange(len(e)) != 11
    assert got.shape == (len(e), len(w)) and got.dtype == np.float32 and np.isnan(got[11]).all()
    dec = c.decode(codes[ok], scale[ok])
    ref = cosine(dec, w).numpy()
    assert np.abs(got[ok] - ref).max() < 1e-5
    # classes: the same calibration and softmax, then the run's own argmax (stable)
    calib = fit_calibration(dec[:500], w)
    p_ref = probabilities(dec, w, calib)
    p_got = probabilities_from_cosines(got[ok], calib)
    cls_ref, cls_got = predict(p_ref, 3)[0], predict(p_got, 3)[0]
    top2 = np.sort(ref[:, :-1], axis=1)[:, -2:]  # the near-ties, not counting the duplicate
    tie = (top2[:, 1] - top2[:, 0]) < 1e-5
    assert np.array_equal(cls_ref[~tie], cls_got[~tie]) and tie.mean() < 0.01
    assert not np.isin(cls_got, [len(w) - 1]).any()  # the duplicate of class 2 never wins
    assert np.abs(p_ref - p_got).max() < 1e-3
    with pytest.raises(ValueError):
        c.project(np.ones((2, 511), np.float32))


def test_synthetic_field_is_a_format_valid_field(tmp_path):
    """The bench's generator (pipeline.testing.field) writes a field the field API opens: Zarr
    v3 on its grid (GDAL puts it in place), codes that decode, code-space cosines that match."""
    import rasterio

    from pipeline.field import code_cosines, decode_window, open_field, project
    from pipeline.testing.field import write_synthetic_field

    out = write_synthetic_field(
        tmp_path / "synth", (300, 260), run={"config": {}},
        field_meta={"model": "m", "embed_dim": 512, "dims": 62}, class_names=["a", "b"],
        colors=["#ff0000", "#00ff00"], legend_info={"name": "x"}, period_labels=["2023-01"],
        tile_size=128, origin=(500_000.0, 5_000_000.0),
    )  # fmt: skip
    f = open_field(out)
    assert f.shape == (300, 260) and f.codec.dims == 62 and f.tile_size == 128
    emb = decode_window(f, f.full_window)
    assert np.isfinite(emb).all() and np.allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-5)
    w = _embeddings(3, seed=9)
    valid, cos = code_cosines(f, f.full_window, project(f, w))
    assert valid.all() and np.abs(cos - emb.reshape(-1, 512) @ w.T).max() < 1e-5
    with rasterio.open(f'ZARR:"{out / "map.zarr"}":/field_codes') as z:
        assert z.count == 62 and z.transform.c == 500_000.0 and z.transform.f == 5_000_000.0
        assert z.crs == "EPSG:32632"
    # same seed, same field
    again = write_synthetic_field(
        tmp_path / "again", (300, 260), run={"config": {}},
        field_meta={"model": "m", "embed_dim": 512, "dims": 62}, class_names=["a", "b"],
        colors=["#ff0000", "#00ff00"], legend_info={"name": "x"}, period_labels=["2023-01"],
        tile_size=128, origin=(500_000.0, 5_000_000.0),
    )  # fmt: skip
    assert np.array_equal(decode_window(open_field(again), f.full_window), emb)


def test_a_zarr_v2_field_of_older_s2lc_still_reads(tmp_path):
    """Stores written before issue 28 (Zarr v2, field_codes (component, y, x)) open in the field
    API with the same numbers; a run resuming into one is refused in one line."""
    import zarr

    from pipeline.field import code_cosines, decode_window, open_field, project
    from pipeline.grid.tiling import TileGrid
    from pipeline.writers import create_map_store

    c = fit_codec(_embeddings(500, seed=1), 62)
    e = _embeddings(12 * 10, seed=4)
    codes, scale = c.encode(e)
    store = tmp_path / "old" / "map.zarr"
    g = zarr.open_group(str(store), mode="w", zarr_format=2)
    layout = {"crs": "EPSG:32632", "transform": [10, 0, 5e5, 0, -10, 5e6], "shape": [12, 10],
              "tile_size": 8, "periods": ["2023-01"]}  # fmt: skip
    g.attrs.update({"s2lc:field": {"model": "m", "dims": 62}, "s2lc:layout": layout})
    for name, data in (
        ("field_codes", codes.T.reshape(62, 12, 10)),
        ("field_scale", scale.reshape(12, 10)),
        ("field_mean", c.mean),
        ("field_basis", c.basis),
    ):
        g.create_array(name, data=data, chunks=data.shape)
    f = open_field(store.parent)
    dec = decode_window(f, f.full_window).reshape(-1, 512)
    assert np.array_equal(dec, c.decode(codes, scale))
    _, cos = code_cosines(f, f.full_window, project(f, e[:2]))
    assert np.abs(cos - dec @ e[:2].T).max() < 1e-5
    from odc.geo.geobox import GeoBox

    grid = TileGrid(GeoBox((12, 10), f.geobox.affine, "EPSG:32632"), 8, ())
    with pytest.raises(UserError, match="Zarr v2 map store of an older s2lc"):
        create_map_store(store, grid, class_names=["a"], k=1, period_labels=["2023-01"])


# --- end to end on the demo ----------------------------------------------------------------------


def _cli(args, check=True) -> int:
    """``python -m pipeline ARGS`` in this process (:func:`pipeline.cli.main`: the same parser,
    logging and one-line errors; no second interpreter importing torch for each command)."""
    from pipeline.cli import main

    rc = main([str(a) for a in args])
    if check and rc != 0:
        raise AssertionError(f"{args[0]} failed ({rc})")
    return rc


#: The end-to-end tests make a map first (a few minutes on a busy 2-core machine).
e2e = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def field_map(demo_map):
    """The suite's shared demo map (tests/demo_map.py), made with ``--save-embeddings``."""
    return demo_map.out


@e2e
def test_run_writes_the_field(field_map):
    import rasterio
    import zarr

    from pipeline.field import open_field

    f = open_field(field_map)
    assert f.meta["dims"] == 62 and f.meta["bytes_per_pixel"] == 64
    assert f.meta["model"] == json.loads((field_map / "run.json").read_text())["model"]["identity"]
    g = zarr.open_group(str(field_map / "map.zarr"), mode="r")
    assert g["field_codes"].dtype == np.int8 and "embeddings" not in g
    # Zarr v3 in the geoembeddings conventions' order, the year as time (issue 28)
    assert g.metadata.zarr_format == 3
    assert g["field_codes"].metadata.dimension_names == ("time", "embedding", "y", "x")
    assert g["field_codes"].shape[:2] == (1, 62) and str(g["time"][0]) == "2023"
    # the STAC item carries the embeddings extension, the model card the basis hash
    from pipeline.run.publishing import EMBEDDINGS_EXTENSION, basis_sha256

    item = json.loads((field_map / "item.json").read_text())
    card = json.loads((field_map / "model_card.json").read_text())
    assert EMBEDDINGS_EXTENSION in item["stac_extensions"]
    props = item["properties"]
    assert props["s2lc:field_dims"] == 62 and props["emb:runtime_parameters"]["type"] == "pixel"
    assert (
        props["s2lc:field_basis_sha256"] == card["field"]["basis_sha256"] == basis_sha256(f.codec)
    )
    assert card["model"]["identity"] == f.meta["model"] and card["prompt_sets"]["legend"]
    assert item["assets"]["model_card"]["href"] == "./model_card.json"
    with rasterio.open(f'ZARR:"{field_map / "map.zarr"}":/field_scale') as z:
        with rasterio.open(field_map / "classes.tif") as c:
            assert (z.transform, z.crs) == (c.transform, c.crs)
    with rasterio.open(field_map / "classes.tif") as c, rasterio.open(field_map / "field.tif") as t:
        classes = c.read(1)
        assert (t.count, t.dtypes[0], t.transform, t.crs) == (62, "int8", c.transform, c.crs)
        assert json.loads(t.tags()["S2LC_FIELD"])["model"] == f.meta["model"]
    with rasterio.open(field_map / "field_scale.tif") as s:
        scale = s.read(1)
    assert np.array_equal(np.isfinite(scale), classes != 255)
    # the stored field against full-precision embeddings of the stored composite
    comp = np.asarray(g["composite"][...])  # (period, band, y, x) reflectance
    valid = classes != 255
    series = np.transpose(comp[:, :, valid], (2, 0, 1)) * np.float32(1e4)
    from model.engine import embed_pixels

    m = model.load("timesenclip", suite_checkpoint(), device="cpu")  # the map's model
    full = embed_pixels(m, series)
    from pipeline.field import decode_window

    dec = decode_window(f, f.full_window)[valid]
    cos = (full * dec).sum(axis=1)
    assert np.median(cos) > 0.99 and cos.min() > 0.9


@e2e
def test_classify_with_the_runs_legend_reproduces_the_map(field_map, tmp_path):
    import rasterio

    out = tmp_path / "same"
    _cli(["classify", "--no-progress", "--full", "--field", str(field_map), "--legend", "demo", "--out", str(out)])  # fmt: skip
    for name in ("classes.tif", "confidence.tif", "valid_obs.tif", "legend.json", "quicklook.png", "item.json", "run.json", "map.zarr"):  # fmt: skip
        assert (out / name).exists(), name
    for layer in ("classes.tif", "valid_obs.tif"):
        with rasterio.open(field_map / layer) as a, rasterio.open(out / layer) as b:
            assert a.transform == b.transform and np.array_equal(a.read(), b.read()), layer
    for layer in ("confidence.tif", "margin.tif", "entropy.tif"):
        with rasterio.open(field_map / layer) as a, rasterio.open(out / layer) as b:
            assert np.isfinite(a.read(1)).any(), layer
            assert np.allclose(a.read(1), b.read(1), equal_nan=True, atol=1e-6), layer
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["source_field"] == str(field_map)
    # the streamed default (classes.tif only) gives the same class map
    lean = tmp_path / "lean"
    _cli(["classify", "--no-progress", "--field", str(field_map), "--legend", "demo", "--out", str(lean)])  # fmt: skip
    with rasterio.open(field_map / "classes.tif") as a, rasterio.open(lean / "classes.tif") as b:
        assert a.transform == b.transform and np.array_equal(a.read(), b.read())
        assert a.colormap(1)[0] == b.colormap(1)[0]


@e2e
def test_classify_another_legend_and_a_head(field_map, tmp_path):
    import rasterio

    legend = tmp_path / "mine.yaml"
    legend.write_text(
        "name: mine\nclasses:\n"
        "  - {name: water, color: '#1f78b4', prompts: ['a lake', 'a river']}\n"
        "  - {name: houses, color: '#e31a1c', prompts: ['a village']}\n"
        "  - {name: trees, color: '#33a02c', prompts: ['a forest']}\n"
    )
    out = tmp_path / "mine"
    _cli(["classify", "--no-progress", "--field", str(field_map), "--legend", str(legend), "--out", str(out)])  # fmt: skip
    with rasterio.open(field_map / "classes.tif") as a, rasterio.open(out / "classes.tif") as b:
        src, new = a.read(1), b.read(1)
    assert np.array_equal(new == 255, src == 255) and set(np.unique(new)) <= {0, 1, 2, 255}
    names = [c["name"] for c in json.loads((out / "legend.json").read_text())["classes"]]
    assert names == ["water", "houses", "trees"]

    # a few-shot head fitted on the field's model: the map is its argmax of the decoded field
    from model.train.probe import fit_linear_head
    from pipeline.field import decode_window, open_field

    f = open_field(field_map)
    emb = decode_window(f, f.full_window)
    valid = np.isfinite(emb[..., 0])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, valid.sum())
    ident = {"name": "timesenclip", "dim": 512}
    head = fit_linear_head(emb[valid], labels, ["p", "q", "r"], max_iter=30, model_identity=ident)
    hp = head.save(tmp_path / "head.npz")
    out2 = tmp_path / "head"
    _cli(["classify", "--no-progress", "--field", str(field_map), "--head", str(hp), "--out", str(out2)])  # fmt: skip
    with rasterio.open(out2 / "classes.tif") as b:
        got = b.read(1)
    assert np.array_equal(got[valid], head.predict(emb[valid]).argmax(axis=1))
    assert (got[~valid] == 255).all()


EMBEDDINGS_SCHEMA = REPO_ROOT / "tests" / "data" / "stac-embeddings" / "schema.json"


def _check_item_by_the_schema(schema: dict, item: dict) -> list[str]:
    """What the embeddings extension's schema (v0.0.1) asks of an item, read from the schema
    itself: the extension's URL, an ``embeddings`` asset, on the item only the item-level
    ``emb:`` fields (each of its declared type and keys), no ``emb:`` field on an asset."""
    d = schema["definitions"]
    errors = []
    if d["stac_extensions"]["properties"]["stac_extensions"]["contains"]["const"] not in item.get(
        "stac_extensions", []
    ):
        errors.append("stac_extensions lacks the embeddings extension")
    branch = schema["oneOf"][0]["allOf"][2]
    errors += [f"no {k}" for k in branch["required"] if k not in item]
    errors += [f"no asset {k}" for k in branch["properties"]["assets"]["required"]]
    errors = [e for e in errors if not (e.startswith("no asset ") and e[9:] in item["assets"])]
    allowed = d["item_properties_fields"]["properties"]
    for key, value in item["properties"].items():
        if not key.startswith("emb:"):
            continue
        if key not in allowed:
            errors.append(f"{key} is not an item field")
            continue
        ref = allowed[key].get("$ref", "")
        if ref.startswith("#/definitions/"):
            sub = d[ref.rsplit("/", 1)[1]]
            errors += [f"{key} lacks {r}" for r in sub.get("required", []) if r not in value]
            if sub.get("additionalProperties") is False:
                errors += [f"{key}.{k} not allowed" for k in value if k not in sub["properties"]]
        elif allowed[key].get("type") == "object" and not isinstance(value, dict):
            errors.append(f"{key} is not an object")
    for name, asset in item["assets"].items():
        errors += [f"asset {name}: {k}" for k in asset if k.startswith("emb:")]
    return errors


@e2e
def test_the_item_validates_with_the_embeddings_extension(field_map):
    """The map's STAC item against the extension's published JSON schema (v0.0.1, copied into
    tests/data/stac-embeddings with its provenance) with jsonschema (the core STAC item's own
    schema, a remote $ref, is checked by stac-pydantic instead), and by the schema's item rules
    read from the file."""
    schema = json.loads(EMBEDDINGS_SCHEMA.read_text())
    item = json.loads((field_map / "item.json").read_text())
    assert _check_item_by_the_schema(schema, item) == []
    # the rules catch what the item used to carry (collection-level fields on the item)
    bad = {**item, "properties": {**item["properties"], "emb:dimensions": 62}}
    assert _check_item_by_the_schema(schema, bad) == ["emb:dimensions is not an item field"]
    bad = {**item, "assets": {k: v for k, v in item["assets"].items() if k != "embeddings"}}
    assert _check_item_by_the_schema(schema, bad) == ["no asset embeddings"]
    from stac_pydantic import Item

    Item.model_validate(item)  # the core STAC item
    import jsonschema
    from referencing import Registry, Resource

    # the remote core STAC schemas: the item is checked by stac-pydantic above; their link
    # definition (STAC 1.0.0: an object with string rel and href) is what the extension uses
    link = {
        "type": "object",
        "required": ["rel", "href"],
        "properties": {"rel": {"type": "string"}, "href": {"type": "string"}},
    }
    remote = Resource.from_contents(
        {"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"link": link}}
    )
    registry = Registry(retrieve=lambda uri: remote)
    jsonschema.Draft7Validator(schema, registry=registry).validate(item)


@e2e
def test_query_heat_maps_on_the_map_grid(field_map, tmp_path):
    """One int16 band per query whose GeoTIFF scale gives the cosines (GDAL/rasterio users read
    real cosines), nodata where the map has none; --probability adds band 2 (0..1)."""
    import rasterio

    out = tmp_path / "q"
    _cli(["query", "--no-progress", "--field", str(field_map), "a lake", "a village", "--out", str(out)])  # fmt: skip
    _cli(["query", "--no-progress", "--field", str(field_map), "a lake", "--probability", "--out", str(tmp_path / "p")])  # fmt: skip
    with rasterio.open(field_map / "classes.tif") as c:
        nodata = c.read(1) == 255
        grid = (c.transform, c.crs, c.shape)
    for name in ("a-lake.tif", "a-village.tif"):
        with rasterio.open(out / name) as q:
            assert (q.transform, q.crs, q.shape) == grid and q.count == 1
            assert q.dtypes == ("int16",) and q.scales == (1e-4,) and q.offsets == (0.0,)
            raw = q.read(1, masked=True)
            sim = raw.astype(np.float64) * q.scales[0]
        assert np.array_equal(raw.mask, nodata)
        assert (np.abs(sim[~nodata]) <= 1.0).all()
    with rasterio.open(tmp_path / "p" / "a-lake.tif") as q:
        assert q.count == 2 and q.scales == (1e-4, 1e-4)
        assert np.array_equal(q.read(1), rasterio.open(out / "a-lake.tif").read(1))
        prob = q.read(2, masked=True).astype(np.float64) * q.scales[1]
    assert np.array_equal(prob.mask, nodata) and ((prob >= 0) & (prob <= 1)).all()
    assert (out / "quicklook.png").stat().st_size > 1000
    # the API gives the same numbers for a window, to the product's step of 1e-4
    from pipeline.field import open_field, query_window

    f = open_field(field_map)
    win = (slice(5, 30), slice(10, 40))
    api = query_window(f, ["a lake"], win)[0]
    with rasterio.open(out / "a-lake.tif") as q:
        cog = (q.read(1, masked=True).astype(np.float64) * q.scales[0]).filled(np.nan)[win]
    assert np.allclose(api, cog, atol=0.5e-4 + 1e-6, equal_nan=True)


@e2e
def test_another_model_is_refused(field_map, tmp_path, capsys):
    from model.timesenclip import build_encoder, save_checkpoint

    other = save_checkpoint(build_encoder(seed=9), tmp_path / "other.pt", clip="untrained-seed0")
    for cmd in (
        ["classify", "--field", str(field_map), "--legend", "demo", "--out", str(tmp_path / "x")],
        ["query", "--field", str(field_map), "a lake", "--out", str(tmp_path / "y")],
    ):
        capsys.readouterr()
        rc = _cli([*cmd, "--checkpoint", str(other)], check=False)
        assert rc != 0 and "field was made by" in capsys.readouterr().err
        assert not (tmp_path / "x" / "classes.tif").exists() and not (tmp_path / "y").exists()
    rc = _cli(["query", "--field", str(tmp_path), "a lake"], check=False)
    assert rc != 0 and "no map store" in capsys.readouterr().err
