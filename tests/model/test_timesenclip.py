"""TimeSenCLIP: reference architecture, checkpoint layouts, T = 1/4/12, preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model
from model.timesenclip import (
    NORM_OFFSET,
    NORM_SCALE,
    TimeSenCLIPEncoder,
    build_encoder,
    encoder_from_checkpoint,
    load_encoder,
    normalise,
    save_checkpoint,
    temporal_median,
)
from pipeline.base.errors import UserError
from tests.paths import REPO_ROOT


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def trained_like() -> TimeSenCLIPEncoder:
    """A seeded encoder with non-zero position/CLS parameters (like trained weights)."""
    return build_encoder(seed=123)


def _reference_inference(enc: TimeSenCLIPEncoder, x: torch.Tensor) -> torch.Tensor:
    """The reference ``inference()`` written out (REFERENCE_MODELS.md 2.2), input (B,T,S,1,1)."""
    x = x.flatten(2)
    x = x @ enc.spectral_embedding[1].weight.T + enc.spectral_embedding[1].bias
    b, n, d = x.shape
    time_pos = enc.time_pos_encoding.expand(b, -1, -1)
    if n == 1:
        time_pos = time_pos.mean(dim=1, keepdim=True)
    elif n == 4:
        time_pos = time_pos.reshape(b, 4, 3, d).median(dim=2).values
    x = x + time_pos
    x = torch.cat([enc.class_token.expand(b, -1, -1), x], dim=1)
    for layer in enc.transformer.layers:  # post-norm, ReLU
        a = layer.self_attn(x, x, x, need_weights=False)[0]
        x = layer.norm1(x + a)
        x = layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))
    return enc.mlp_head(x[:, 0])


def test_architecture_matches_reference_names_and_size():
    enc = TimeSenCLIPEncoder()
    keys = set(enc.state_dict())
    assert {"spectral_embedding.1.weight", "spectral_embedding.1.bias"} <= keys
    assert {"time_pos_encoding", "class_token"} <= keys
    assert {"mlp_head.0.weight", "mlp_head.0.bias", "mlp_head.1.weight", "mlp_head.1.bias"} <= keys
    layer_keys = {k for k in keys if k.startswith("transformer.layers.")}
    assert {int(k.split(".")[2]) for k in layer_keys} == set(range(6))
    assert "transformer.layers.5.self_attn.in_proj_weight" in keys
    assert "transformer.layers.0.linear1.weight" in keys
    assert keys - layer_keys == {
        "spectral_embedding.1.weight",
        "spectral_embedding.1.bias",
        "time_pos_encoding",
        "class_token",
        "mlp_head.0.weight",
        "mlp_head.0.bias",
        "mlp_head.1.weight",
        "mlp_head.1.bias",
    }
    # 8.17 M parameters: the paper's Table 8 figure for the 1x1 model.
    assert sum(p.numel() for p in enc.parameters()) == 8_169_472
    layer = enc.transformer.layers[0]
    assert layer.linear1.out_features == 256 and not layer.norm_first
    assert layer.activation_relu_or_gelu == 1  # ReLU
    assert enc.time_pos_encoding.shape == (1, 12, 512)


@pytest.mark.parametrize("t", [1, 4, 12])
def test_inference_matches_reference_position_handling(trained_like, t):
    torch.manual_seed(0)
    x = torch.rand(6, t, 10)
    with torch.no_grad():
        ours = trained_like.inference(x)
        ref = _reference_inference(trained_like, x.view(6, t, 10, 1, 1))
    assert ours.shape == (6, 512)
    assert torch.allclose(ours, ref, atol=1e-5)
    with torch.no_grad():  # the (B, T, S, 1, 1) input layout of the reference works too
        assert torch.allclose(trained_like.inference(x.view(6, t, 10, 1, 1)), ours, atol=1e-6)


def test_position_embeddings_for_t():
    enc = build_encoder(seed=1)
    pos = enc.time_pos_encoding
    assert torch.equal(enc.positions(12), pos)
    assert torch.allclose(enc.positions(1), pos.mean(dim=1, keepdim=True))
    assert torch.equal(enc.positions(4)[0, 1], pos[0, 3:6].median(dim=0).values)
    with pytest.raises(ValueError):
        enc.positions(5)


def test_forward_training_path_and_augmentation():
    enc = build_encoder(seed=2).train()
    x = torch.rand(4, 12, 10)
    torch.manual_seed(0)
    out = enc(x, augment=True)
    assert out.shape == (4, 512) and out.requires_grad
    out.sum().backward()
    with pytest.raises(ValueError):
        enc(torch.rand(4, 4, 10))
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(x), enc.inference(x), atol=1e-5)


def test_normalisation_constants():
    assert NORM_OFFSET == (67.0, 122.0, 93.27, 158.5, 160.77, 174.27, 162.27, 149.0, 84.5, 66.27)
    assert NORM_SCALE == (
        2089.0, 2598.45, 3214.5, 3620.45, 4033.61, 4613.0, 4825.45, 4945.72, 5140.84, 4414.45,
    )  # fmt: skip
    raw = torch.tensor([[[1000.0] * 10, [0.0] * 10, [60000.0] * 10]])
    raw[0, 0, 0] = float("nan")
    out = normalise(raw)
    off, scale = np.array(NORM_OFFSET), np.array(NORM_SCALE)
    expect = (1000.0 - off) / (scale + 1e-6)
    np.testing.assert_allclose(out[0, 0, 1:].numpy(), expect[1:], rtol=1e-6)
    assert out[0, 0, 0] == 0.0  # NaN -> 0
    assert torch.all(out[0, 1] == 0.0) and torch.all(out[0, 2] == 1.0)  # clamp to [0, 1]


def test_temporal_median():
    x = torch.arange(12, dtype=torch.float32).view(1, 12, 1).expand(2, 12, 3).clone()
    x[0, 0, 0] = float("nan")
    q = temporal_median(x, 4)
    assert q.shape == (2, 4, 3)
    assert q[1, :, 0].tolist() == [1.0, 4.0, 7.0, 10.0]
    assert q[0, 0, 0] == 1.0  # NaN ignored: median of {1, 2} is the lower value
    assert temporal_median(x, 1)[1, 0, 0] == 5.0  # lower middle of 0..11


def _layouts(state: dict) -> dict[str, object]:
    stale = {k: torch.zeros_like(v) for k, v in state.items()}
    clip_junk = {
        "clip_model.text_projection": torch.ones(3, 3),
        "clip_model.logit_scale": torch.ones(()),
    }
    return {
        "plain": dict(state),
        "plain+clip_model": {**state, **clip_junk},
        "lightning-learner.TS_ViT": {
            "state_dict": {f"learner.TS_ViT.{k}": v for k, v in state.items()},
            "epoch": 3,
        },
        "lightning-TS_ViT+clip": {
            "state_dict": {**{f"TS_ViT.{k}": v for k, v in state.items()}, **clip_junk}
        },
        "ts_encoder": {f"ts_encoder.{k}": v for k, v in state.items()},
        # both copies, the top-level one stale: the learner's copy must win
        "lightning-both": {
            "state_dict": {
                **{f"TS_ViT.{k}": v for k, v in stale.items()},
                **{f"learner.ts_encoder.{k}": v for k, v in state.items()},
                "queue": torch.randn(512, 16),
                "logit_scale": torch.ones(()),
            }
        },
    }


def test_reference_checkpoint_layouts_load_identically(trained_like, tmp_path):
    state = trained_like.state_dict()
    x = torch.rand(5, 12, 10)
    with torch.no_grad():
        expect = trained_like.inference(x)
    for name, payload in _layouts(state).items():
        path = tmp_path / f"{name}.ckpt"
        torch.save(payload, path)
        enc, ckpt = load_encoder(path)
        with torch.no_grad():
            got = enc.inference(x)
        assert torch.equal(got, expect), name
        assert len(ckpt.sha256) == 64


def test_half_precision_checkpoint_loads(trained_like, tmp_path):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in trained_like.state_dict().items()}, path)
    enc, _ = load_encoder(path)
    assert enc.spectral_embedding[1].weight.dtype == torch.float32
    from safetensors.torch import save_file

    st = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in trained_like.state_dict().items()}, str(st))
    enc, ckpt = load_encoder(st)
    assert torch.equal(enc.class_token, trained_like.class_token) and len(ckpt.sha256) == 64


def test_smaller_variant_is_read_off_the_shapes(tmp_path):
    small = TimeSenCLIPEncoder(dim=64, depth=2, heads=4, mlp_dim=32)
    path = save_checkpoint(small, tmp_path / "small.pt", clip="untrained-seed0", epoch=7)
    enc, ckpt = load_encoder(path)
    assert (enc.dim, enc.depth, enc.heads, enc.mlp_dim) == (64, 2, 4, 32)
    assert ckpt.meta["clip"] == "untrained-seed0" and ckpt.meta["epoch"] == 7


def test_wrong_architecture_is_one_line_error(tmp_path):
    bad = {"spectral_embedding.1.weight": torch.zeros(512, 10), "foo.bar": torch.zeros(2)}
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    with pytest.raises(UserError) as err:
        load_encoder(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "missing keys" in msg and "unexpected keys (foo.bar)" in msg
    assert "time_pos_encoding" in msg or "class_token" in msg
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        load_encoder(text)


def test_model_load_end_to_end(trained_like, tmp_path):
    path = save_checkpoint(trained_like, tmp_path / "enc.pt", clip="untrained-seed0")
    t = model.load("timesenclip", checkpoint=path, device="cpu")
    assert t.name == "timesenclip" and t.embed_dim == 512 and not t.untrained
    assert t.checkpoint_sha256 and t.checkpoint_sha256 in t.identity
    assert t.identity.endswith("clip=untrained-seed0")
    series = np.random.default_rng(0).uniform(0, 4000, (7, 12, 10)).astype("float32")
    x = t.preprocess(series)
    for steps in (1, 4, 12):
        e = t.pixel_embed(temporal_median(x, steps))
        assert e.shape == (7, 512)
        assert torch.allclose(e.norm(dim=1), torch.ones(7), atol=1e-5)
    with torch.no_grad():
        ref = F.normalize(trained_like.inference(x), dim=-1)
    assert torch.allclose(t.pixel_embed(x), ref, atol=1e-5)
    w = t.text_embed(["a lake", "a forest", "a wheat field"])
    assert w.shape == (3, 512)
    # same text tower as an untrained TimeSenCLIP of seed 0
    u = model.load("timesenclip", untrained=True, seed=0)
    assert torch.allclose(u.text_embed(["a lake"]), w[:1], atol=1e-6)
    assert u.untrained and u.checkpoint_sha256 is None
    assert u.identity == "timesenclip:untrained-seed0:clip=untrained-seed0"


def test_untrained_is_deterministic_and_required():
    with pytest.raises(UserError, match="untrained=True"):
        model.load("timesenclip")
    a = build_encoder(seed=5)
    b = build_encoder(seed=5)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not torch.equal(build_encoder(seed=6).mlp_head[1].weight, a.mlp_head[1].weight)


def test_missing_text_encoder_is_explained(trained_like, tmp_path, monkeypatch):
    """An encoder-only checkpoint loads and embeds; only encoding prompts needs the text tower,
    and then the error names the fetch command."""
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path / "cache"))  # no fetched text tower
    path = tmp_path / "bare.pt"
    torch.save(trained_like.state_dict(), path)
    t = model.load("timesenclip", checkpoint=path, device="cpu")
    assert not t.has_text and t.identity.endswith(":clip=none")
    assert t.pixel_embed(torch.rand(3, 12, 10)).shape == (3, 512)
    with pytest.raises(UserError, match="weights fetch openai-clip-vitb32"):
        t.text_embed(["a lake"])


_FINGERPRINT = """
import hashlib, model
m = model.load("timesenclip", untrained=True, seed=4, device="cpu")
h = hashlib.sha256()
for name, t in list(m.encoder.state_dict().items()) + list(m.text.net.state_dict().items()):
    h.update(name.encode()); h.update(t.contiguous().numpy().tobytes())
print(h.hexdigest())
"""


def test_untrained_is_identical_across_processes():
    """Two Dask workers must build the same random model (and so the same map): this process and
    a fresh interpreter with another hash seed (set and dict orders differ) build the same one."""
    import contextlib
    import io
    import os
    import subprocess
    import sys

    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    proc = subprocess.Popen(  # runs while this process builds its own
        [sys.executable, "-c", _FINGERPRINT],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": seed},
    )
    here = io.StringIO()
    with contextlib.redirect_stdout(here):
        exec(_FINGERPRINT, {})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == here.getvalue().strip() != ""


def test_reference_checkpoint_with_frozen_clip_gives_the_text_tower(trained_like):
    """A reference Lightning checkpoint carries the frozen CLIP under clip_model.*: the encoder
    ignores it, and with no clip_checkpoint its text tower encodes the prompts."""
    from model.api import _clip_text_from_embedded
    from model.checkpoints import from_object
    from model.clip import ClipText, build_clip

    clip = build_clip("ViT-B-32", seed=7)
    payload = {
        "state_dict": {
            **{f"TS_ViT.{k}": v for k, v in trained_like.state_dict().items()},
            **{f"clip_model.{k}": v for k, v in clip.state_dict().items()},
        }
    }
    ckpt = from_object(payload, "ref.ckpt", "0" * 64)
    enc = encoder_from_checkpoint(ckpt)
    assert torch.equal(enc.time_pos_encoding, trained_like.time_pos_encoding)
    text, ident = _clip_text_from_embedded(ckpt)
    assert ident.startswith("ViT-B-32:embedded:")
    prompts = ["a pine forest", "a harbour"]
    expect = ClipText(clip, "ViT-B-32").embed(prompts, torch.device("cpu"))
    assert torch.allclose(text.embed(prompts, torch.device("cpu")), expect, atol=1e-6)
