"""The training loop's mechanics on small synthetic data: checkpoints that model.load reads,
resuming, the encoder forward with explicit positions, SenCLIP fine-tuning on a toy CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import model
from model.timesenclip import build_encoder as build_ts
from model.train.loop import PairedData, TrainConfig, ZeroShotEval, fit
from model.train.senclip import ChipArray, SenCLIPTask, open_chips, tiny_clip
from model.train.temporal import TemporalAugment, forward_with_positions
from model.train.timesenclip import TimeSenCLIPTask
from pipeline.base.errors import UserError

SMALL = {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 32}


def _synthetic(n=96, d=32, c=3, seed=0):
    rng = np.random.default_rng(seed)
    prof = rng.uniform(0, 1, (c, 12, 10)).astype(np.float32)
    y = rng.integers(0, c, n)
    x = prof[y] + rng.normal(0, 0.05, (n, 12, 10)).astype(np.float32)
    cls = np.linalg.qr(rng.normal(size=(d, c)))[0].T.astype(np.float32)
    g = cls[y][:, None, :] + rng.normal(0, 0.05, (n, 4, d)).astype(np.float32)
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    data = PairedData(
        inputs=torch.from_numpy(x),
        ground=torch.from_numpy(g),
        ground_mask=torch.ones(n, 4, dtype=torch.bool),
        ids=[f"P{i}" for i in range(n)],
        labels=y,
    )
    return data, cls


def _cfg(**kw):
    base = dict(epochs=2, batch_size=16, lr=1e-3, warmup_epochs=0.5, queue_size=32,
                val_fraction=0.25, device="cpu")  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_forward_with_positions_matches_inference():
    enc = build_ts(seed=0, **SMALL)
    x = torch.rand(5, 12, 10)
    torch.testing.assert_close(forward_with_positions(enc, x, torch.arange(12)), enc.inference(x))
    # one median token with the mean position = the T=1 inference path on the median input
    med = x.median(dim=1, keepdim=True).values
    torch.testing.assert_close(forward_with_positions(enc, med, None), enc.inference(med))
    # the reference quirk: 9 kept months at positions 0..8 differ from their own positions
    keep = torch.tensor([0, 1, 2, 6, 7, 8, 9, 10, 11])
    a = forward_with_positions(enc, x[:, keep], keep)
    b = forward_with_positions(enc, x[:, keep], torch.arange(9))
    assert not torch.allclose(a, b)


def test_fit_writes_loadable_checkpoints(tmp_path):
    data, cls = _synthetic()
    enc = build_ts(seed=0, **SMALL)
    task = TimeSenCLIPTask(enc, TemporalAugment("tsmix", p=0.5))
    res = fit(
        task, data, _cfg(), tmp_path, zeroshot=ZeroShotEval(cls, ("a", "b", "c")),
        extra_meta={**task.export_meta("untrained-seed0"), "note": {"a": 1}},
    )  # fmt: skip
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "epoch_002.pt", "last.pt"]
    assert len(res.history) == 2
    row = res.history[-1]
    for k in ("train_loss", "val_loss", "val_s2g_r1", "val_zeroshot_acc", "temperature", "lr"):
        assert k in row and np.isfinite(row[k])
    assert json.loads((tmp_path / "history.json").read_text())[0]["epoch"] == 1
    raw = torch.load(ck / "last.pt", weights_only=True)
    assert (
        raw["train_format"] == "s2lc-train-v1"
        and raw["format"] == "s2lc-timesenclip-1"
        and raw["epoch"] == 2
        and raw["model_name"] == "timesenclip"
    )
    assert raw["dim"] == 32 and raw["clip"] == "untrained-seed0"
    assert json.loads(raw["note"]) == {"a": 1}
    assert "train_state" in raw and "train_state" not in torch.load(
        ck / "best.pt", weights_only=True
    )
    # every checkpoint is a model: model.load rebuilds the small architecture from it
    assert model.load("timesenclip", checkpoint=ck / "best.pt", device="cpu").embed_dim == 32
    m = model.load("timesenclip", checkpoint=ck / "last.pt", device="cpu")
    assert m.embed_dim == 32 and m.encoder.depth == 1 and m.encoder.heads == 2
    x = data.inputs[:4]
    torch.testing.assert_close(
        m.pixel_embed(x), torch.nn.functional.normalize(enc.eval().inference(x), dim=-1)
    )


def test_resume_continues_exactly(tmp_path):
    data, _ = _synthetic(seed=1)

    def task():
        return TimeSenCLIPTask(build_ts(seed=0, **SMALL), TemporalAugment("tsmix", p=0.5))

    class Crash(Exception):
        pass

    def crash_after_2(row):
        if row["epoch"] == 2:
            raise Crash

    straight = fit(task(), data, _cfg(epochs=3), tmp_path / "a")
    with pytest.raises(Crash):  # killed after epoch 2's checkpoint
        fit(task(), data, _cfg(epochs=3), tmp_path / "b", progress=crash_after_2)
    resumed = fit(task(), data, _cfg(epochs=3), tmp_path / "b")
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    a = torch.load(straight.last, weights_only=True)["state_dict"]
    b = torch.load(resumed.last, weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert straight.history[-1]["train_loss"] == pytest.approx(resumed.history[-1]["train_loss"])
    # a different config does not resume silently
    with pytest.raises(UserError, match="cannot resume"):
        fit(task(), data, _cfg(epochs=4, lr=5e-3), tmp_path / "b")
    # keep_every keeps periodic epoch files
    fit(task(), data, _cfg(epochs=3, keep_every=2), tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "c" / "checkpoints").glob("epoch_*.pt"))
    assert names == ["epoch_002.pt", "epoch_003.pt"]


def test_training_aligns_embeddings_with_ground_vectors(tmp_path):
    data, cls = _synthetic(n=192, seed=2)
    task = TimeSenCLIPTask(build_ts(seed=0, **SMALL), TemporalAugment("tsmix"))
    res = fit(task, data, _cfg(epochs=5, batch_size=32, lr=5e-3), tmp_path,
              zeroshot=ZeroShotEval(cls, ("a", "b", "c")))  # fmt: skip
    assert res.history[-1]["val_zeroshot_acc"] >= 0.9
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_attention_pooling_trains_and_is_saved(tmp_path):
    data, _ = _synthetic(seed=3)
    task = TimeSenCLIPTask(build_ts(seed=0, **SMALL))
    fit(task, data, _cfg(epochs=1, pooling="attention"), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["train_state"]
    assert "score.weight" in state["pool"]


def test_config_validation():
    with pytest.raises(UserError, match="batch_size"):
        TrainConfig(batch_size=1)
    with pytest.raises(UserError, match="pooling"):
        TrainConfig(pooling="max")


# --- SenCLIP on a toy CLIP ---------------------------------------------------------------------


def _chips(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return ChipArray([f"DE_{i}" for i in range(n)], rng.uniform(0, 0.3, (n, 3, 40, 40)))


def test_senclip_task_freezes_text_and_trains_visual(tmp_path):
    net = tiny_clip(seed=0)
    text_before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("visual.")}
    vis_before = {k: v.clone() for k, v in net.visual.state_dict().items()}
    task = SenCLIPTask(net, trainable="visual", crop=32)
    chips = _chips()
    rng = np.random.default_rng(1)
    g = torch.nn.functional.normalize(
        torch.from_numpy(rng.normal(size=(24, 4, 32)).astype(np.float32)), dim=-1
    )
    data = PairedData(inputs=chips, ground=g, ground_mask=torch.ones(24, 4, dtype=torch.bool),
                      ids=chips.ids)  # fmt: skip
    res = fit(task, data, _cfg(epochs=2, batch_size=8, queue_size=8), tmp_path)
    assert np.isfinite(res.history[-1]["train_loss"])
    after = torch.load(res.last, weights_only=True)["state_dict"]
    for k, v in text_before.items():
        torch.testing.assert_close(after[k], v)  # the text tower is untouched
    assert any(not torch.equal(after[f"visual.{k}"], v) for k, v in vis_before.items())
    assert set(after) == set(net.state_dict())  # a plain CLIP state dict


def test_senclip_last_block_only():
    net = tiny_clip(seed=0)
    SenCLIPTask(net, trainable="last")
    trainable = sorted(n for n, p in net.named_parameters() if p.requires_grad)
    assert trainable and all(
        n.startswith(("visual.transformer.resblocks.1.", "visual.ln_post.", "visual.proj"))
        for n in trainable
    )


def test_open_chips_npz_and_folder(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    np.savez(tmp_path / "c.npz", ids=np.array(["a", "b"]), chips=np.zeros((2, 3, 8, 8), np.float32))
    arr = open_chips(tmp_path / "c.npz")
    assert arr.ids == ["a", "b"] and arr[torch.tensor([1])].shape == (1, 3, 8, 8)
    d = tmp_path / "chips"
    d.mkdir()
    for name in ("DE_1", "DE_2"):
        data = np.stack([np.full((20, 20), v, np.uint16) for v in (200, 300, 400, 500)])
        with rasterio.open(d / f"{name}.tif", "w", driver="GTiff", height=20, width=20, count=4,
                           dtype="uint16", crs="EPSG:32632",
                           transform=from_origin(0, 0, 10, 10)) as dst:  # fmt: skip
            dst.write(data)
            dst.descriptions = ("B2", "B3", "B4", "B8")
    folder = open_chips(d, size=16)
    assert folder.ids == ["DE_1", "DE_2"] and folder.bands == [3, 2, 1]  # from descriptions
    x = folder[torch.tensor([0])]
    assert x.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [0.04, 0.03, 0.02])
    sub = folder.take_rows(np.array([1]))
    assert sub.ids == ["DE_2"]


def test_train_senclip_cli_tiny(tmp_path, capsys):
    from model.train.ground import save_ground_embeddings
    from pipeline.cli import main

    chips = _chips(n=16)
    np.savez(tmp_path / "chips.npz", ids=np.array(chips.ids), chips=chips.chips.numpy())
    rng = np.random.default_rng(0)
    save_ground_embeddings(tmp_path / "g.pt", chips.ids[:12], rng.normal(size=(12, 4, 32)))
    rc = main([
        "train", "senclip", "--chips", str(tmp_path / "chips.npz"), "--ground-embeddings",
        str(tmp_path / "g.pt"), "--arch", "tiny", "--epochs", "1", "--batch-size", "4",
        "--queue-size", "8", "--out", str(tmp_path / "out"), "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 12 and summary["epochs"] == 1
    assert (tmp_path / "out" / "checkpoints" / "best.pt").is_file()


@pytest.mark.integration
def test_senclip_vitb32_checkpoint_loads_with_model_load(tmp_path):
    """A fine-tuned ViT-B/32 (one step) exports a checkpoint model.load reads strictly."""
    from model.clip import build_clip

    net = build_clip("ViT-B-32", 0)
    task = SenCLIPTask(net, trainable="last")
    chips = _chips(n=4)
    g = torch.nn.functional.normalize(torch.randn(4, 4, 512), dim=-1)
    data = PairedData(inputs=chips, ground=g, ground_mask=torch.ones(4, 4, dtype=torch.bool))
    res = fit(task, data, _cfg(epochs=1, batch_size=4, val_fraction=0.0), tmp_path)
    m = model.load("senclip", checkpoint=res.best, device="cpu")
    assert m.embed_dim == 512 and not m.untrained
