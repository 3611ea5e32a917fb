"""SenCLIP: parity with open_clip on the released (OpenAI-CLIP) format, wrapped variants,
preprocessing against the reference's PIL pipeline, checkpoint errors, named weights."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model
from model.checkpoints import from_object, read_checkpoint
from model.clip import build_clip, clip_state_from_checkpoint
from model.senclip import BING_MEAN, BING_STD, preprocess_rgb
from pipeline.base.errors import UserError


def _open_clip():
    # ``model`` (imported above) must run its torchvision shim before open_clip is imported.
    import open_clip

    return open_clip


PROMPTS = ["a satellite photo of a lake", "dense coniferous forest", "wheat fields in summer"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A random-init ViT-B-32-quickgelu saved as a plain state dict: the OpenAI key layout."""
    open_clip = _open_clip()
    torch.manual_seed(1234)
    ref = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    state = ref.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "SenCLIP_random_ViTB32.ckpt"
    torch.save(state, path)
    return ref, state, path


@pytest.fixture(scope="module")
def plain(vit):
    return model.load("senclip", checkpoint=vit[2], arch="ViT-B-32", device="cpu")


def test_released_format_parity_with_open_clip(vit, plain):
    ref, state, path = vit
    assert len(state) == 302 and "visual.class_embedding" in state  # OpenAI layout, no prefix
    m = plain
    assert m.name == "senclip" and m.embed_dim == 512 and not m.untrained
    assert m.checkpoint_sha256 == read_checkpoint(path).sha256
    assert m.identity == f"senclip:ViT-B-32:{m.checkpoint_sha256}"
    # a fresh open_clip model with the same weights, loaded the documented way
    open_clip = _open_clip()
    oc = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    oc.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tok = open_clip.get_tokenizer("ViT-B-32-quickgelu")(PROMPTS)
    with torch.no_grad():
        img_ref = F.normalize(oc.encode_image(x), dim=-1)
        txt_ref = F.normalize(oc.encode_text(tok), dim=-1)
    img = m.image_embed(x)
    txt = m.text_embed(PROMPTS)
    assert img.shape == (2, 512) and txt.shape == (3, 512)
    assert (img - img_ref).abs().max() <= 1e-5
    assert (txt - txt_ref).abs().max() <= 1e-5


def test_wrapped_variants_unwrap_to_the_same_weights(vit, plain, tmp_path):
    _, state, _ = vit
    net = build_clip("ViT-B-32")
    head = {"projection.weight": torch.zeros(512, 512)}
    variants = {
        "lightning": {
            "state_dict": {
                **{f"model.encoder.model.{k}": v for k, v in state.items()},
                **{f"model.projection_head.{k}": v for k, v in head.items()},
                "model.queue": torch.randn(512, 8),
            },
            "epoch": 4,
            "hyper_parameters": argparse.Namespace(lr=1e-4),  # allowed: data, not code
        },
        "model.": {f"model.{k}": v for k, v in state.items()},
        "clip_model.": {"state_dict": {f"clip_model.{k}": v for k, v in state.items()}},
        "module.": {"model": {f"module.{k}": v for k, v in state.items()}},
        "fp16": {k: v.half() if v.is_floating_point() else v for k, v in state.items()},
    }
    for name, payload in variants.items():  # unwrapped in memory: saving 600 MB each is slow
        got = clip_state_from_checkpoint(from_object(payload, name), net, "ViT-B-32")
        assert set(got) == set(state), name
        if name == "fp16":  # widened back to float32
            assert all(got[k].dtype == v.dtype for k, v in state.items())
            assert torch.allclose(got["text_projection"], state["text_projection"], atol=1e-3)
        else:  # the very same tensors, only renamed
            assert all(got[k].data_ptr() == v.data_ptr() for k, v in state.items()), name
    # the Lightning file through model.load gives the same embeddings as the plain file
    torch.save(variants["lightning"], tmp_path / "lightning.ckpt")
    m = model.load("senclip", checkpoint=tmp_path / "lightning.ckpt")
    txt = m.text_embed(PROMPTS[:1])
    assert torch.equal(txt, plain.text_embed(PROMPTS[:1]))
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(m.image_embed(x), plain.image_embed(x))


def test_rn50_detected_and_wrong_architecture_is_one_line(tmp_path, vit):
    torch.manual_seed(0)
    rn = _open_clip().create_model("RN50-quickgelu", pretrained=None).eval()
    path = tmp_path / "rn50.pt"
    torch.save(rn.state_dict(), path)
    m = model.load("senclip", checkpoint=path)  # arch read off the keys
    assert m.arch == "RN50" and m.embed_dim == 1024
    assert m.image_embed(torch.randn(1, 3, 224, 224)).shape == (1, 1024)
    with pytest.raises(UserError) as err:
        model.load("senclip", checkpoint=path, arch="ViT-B-32")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "not a CLIP ViT-B-32 state dict" in msg
    assert "missing keys (visual." in msg and "unexpected keys (visual." in msg
    assert ", ...)" in msg  # first few only, with counts
    # a TimeSenCLIP encoder given to senclip: the same kind of message
    from model.timesenclip import TimeSenCLIPEncoder

    enc = tmp_path / "enc.pt"
    torch.save(TimeSenCLIPEncoder().state_dict(), enc)
    with pytest.raises(UserError, match=r"not a CLIP ViT-B-32 state dict: 302 missing keys"):
        model.load("senclip", checkpoint=enc)


def test_not_a_checkpoint(tmp_path):
    cases = {
        "text.ckpt": b"this is a README, not weights\n",
        "empty.ckpt": b"",
        "random.bin": bytes(range(256)) * 4,
    }
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(UserError, match="not a PyTorch checkpoint") as err:
            model.load("senclip", checkpoint=p)
        assert "\n" not in str(err.value)
    p = tmp_path / "list.pt"
    torch.save([1, 2, 3], p)
    with pytest.raises(UserError, match="not a model checkpoint"):
        model.load("senclip", checkpoint=p)
    with pytest.raises(UserError, match="checkpoint not found"):
        model.load("senclip", checkpoint=tmp_path / "nope.ckpt")


def test_code_in_pickle_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "obj": Image.new("L", (1, 1))}, p)
    with pytest.raises(UserError, match=r"refusing to unpickle .*PIL"):
        model.load("senclip", checkpoint=p)


def test_untrained_required_and_deterministic():
    with pytest.raises(UserError, match="untrained=True"):
        model.load("senclip")
    with pytest.raises(UserError, match="unknown model"):
        model.load("senclap", untrained=True)
    a = model.load("senclip", untrained=True, seed=3)
    assert a.untrained and a.checkpoint_sha256 is None
    assert a.identity == "senclip:ViT-B-32:untrained-seed3"
    b = model.load("senclip", untrained=True, seed=3)
    assert torch.equal(a.text_embed(PROMPTS), b.text_embed(PROMPTS))


def test_named_weights_found_in_cache(vit, tmp_path):
    from model.weights import REGISTRY

    with pytest.raises(UserError, match="weights fetch senclip-vitb32-avgpool"):
        model.load("senclip", checkpoint="senclip-vitb32-avgpool")
    spec = REGISTRY["senclip-vitb32-avgpool"]
    spec.path.symlink_to(vit[2])
    m = model.load("senclip", checkpoint="senclip-vitb32-avgpool")
    assert m.checkpoint_sha256 == read_checkpoint(vit[2]).sha256


def test_get_model_is_cached_per_process(vit):
    model.clear_cache()
    a = model.get_model("senclip", checkpoint=vit[2], device="cpu")
    b = model.get_model("senclip", checkpoint=str(vit[2]), device="cpu")
    assert a is b
    model.clear_cache()


def _reference_preprocess(chip: np.ndarray) -> np.ndarray:
    """The SenCLIP reference on one (3, h, w) chip: cv2 joint min-max -> uint8 -> PIL bicubic."""
    lo, hi = chip.min(), chip.max()
    u8 = np.uint8((chip - lo) / (hi - lo) * 255.0).transpose(1, 2, 0)
    im = Image.fromarray(u8, mode="RGB").resize((224, 224), Image.BICUBIC)
    t = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return (t - np.array(BING_MEAN)[:, None, None]) / np.array(BING_STD)[:, None, None]


def test_preprocessing_matches_reference_and_constants():
    assert BING_MEAN == (0.347, 0.376, 0.296) and BING_STD == (0.269, 0.261, 0.276)
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0.02, 0.4, (3, 3, 40, 40)).astype("float32")
    ours = preprocess_rgb(rgb).numpy()
    ref = np.stack([_reference_preprocess(c) for c in rgb])
    assert ours.shape == (3, 3, 224, 224)
    # within one 8-bit level (1/255/std ~ 0.015), almost everywhere exactly equal
    diff = np.abs(ours - ref)
    assert diff.max() <= 1.01 / 255 / min(BING_STD) and (diff > 1e-4).mean() < 0.01
    # invariant to gain and offset (e.g. the L2A BOA offset); NaN and constant chips are safe
    np.testing.assert_allclose(preprocess_rgb(rgb * 1e4 + 1000).numpy(), ours, atol=1e-5)
    odd = rgb[:2].copy()
    odd[0, :, :5, :5] = np.nan
    odd[1] = 0.3
    out = preprocess_rgb(odd).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(
        out[1], ((0 - np.array(BING_MEAN)) / BING_STD)[:, None, None] + 0 * out[1], atol=1e-6
    )
    # a 224 px chip is not resized; bilinear and unquantised variants exist
    assert preprocess_rgb(rng.uniform(0, 1, (1, 3, 224, 224))).shape == (1, 3, 224, 224)
    assert preprocess_rgb(rgb, interpolation="bilinear", quantize=False).shape == (3, 3, 224, 224)
    with pytest.raises(UserError):
        preprocess_rgb(rng.uniform(0, 1, (1, 4, 32, 32)))
