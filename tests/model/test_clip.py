"""The CLIP parts shared by both models: the untrained text tower's disk cache."""

from __future__ import annotations

import torch

from model.clip import build_clip, untrained_text_tower
from pipeline.base.paths import cache_dir


def _text_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if not k.startswith("visual.")}


def test_untrained_text_tower_is_build_clip_text_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path))
    reference = _text_state(build_clip("ViT-B-32", seed=3))

    first = untrained_text_tower("ViT-B-32", seed=3)  # builds and stores
    files = list(cache_dir("untrained").glob("*seed3*.text.pt"))
    assert len(files) == 1
    second = untrained_text_tower("ViT-B-32", seed=3)  # loads the stored copy

    for net in (first, second):
        assert net.visual is None
        state = _text_state(net)
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert not second.training
    tokens = torch.tensor([[49406, 320, 2151, 49407] + [0] * 73])
    with torch.inference_mode():
        assert torch.equal(first.encode_text(tokens), second.encode_text(tokens))

    # Another seed is another entry, with other values.
    other = _text_state(untrained_text_tower("ViT-B-32", seed=4))
    assert not torch.equal(other["text_projection"], reference["text_projection"])


def test_unreadable_text_tower_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path))
    untrained_text_tower("ViT-B-32", seed=0)
    (path,) = cache_dir("untrained").glob("*seed0*.text.pt")
    path.write_bytes(b"not a state dict")

    net = untrained_text_tower("ViT-B-32", seed=0)

    assert "ignoring unreadable text-tower cache" in caplog.text
    reference = _text_state(build_clip("ViT-B-32", seed=0))
    assert torch.equal(net.text_projection, reference["text_projection"])
    assert path.stat().st_size > 1_000_000  # rewritten with the real weights
