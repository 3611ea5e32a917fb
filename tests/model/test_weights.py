"""Released-weights registry and the ``weights`` / ``legends`` commands (offline)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model import weights
from pipeline.base.errors import UserError
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT


def _cli(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "S2LC_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
    )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("S2LC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_weights_list_and_offline_fetch(tmp_path):
    out = _cli(tmp_path, "weights", "list")
    assert out.returncode == 0, out.stderr
    for name in weights.REGISTRY:
        assert name in out.stdout
    assert "pallavijainpj/SenCLIP" in out.stdout
    out = _cli(tmp_path, "weights", "fetch", "senclip-vitb32-avgpool")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "offline (HF_HUB_OFFLINE=1)" in out.stderr
    assert "Traceback" not in out.stderr
    out = _cli(tmp_path, "weights", "fetch", "no-such-weights")
    assert out.returncode == 2 and out.stderr.startswith("error: unknown weights")


def test_fetch_uses_the_hub_and_caches(tmp_path, monkeypatch):
    spec = weights.REGISTRY["senclip-vitb32-avgpool"]
    calls = []

    def fake_download(repo_id, filename, local_dir, force_download=False):
        calls.append((repo_id, filename))
        target = Path(local_dir) / filename
        target.write_bytes(b"weights")
        return str(target)

    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(weights, "_reachable", lambda timeout=5.0: None)
    path = weights.fetch("senclip-vitb32-avgpool")
    assert calls == [("pallavijainpj/SenCLIP", "SenCLIP_AvgPool_ViTB32.ckpt")]
    assert path == spec.path and spec.cached
    assert weights.resolve("senclip-vitb32-avgpool") == spec.path
    weights.fetch("senclip-vitb32-avgpool")  # cached: no second download
    assert len(calls) == 1

    def failing(**kwargs):
        raise OSError("connection reset\nmore detail")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: failing(**k))
    with pytest.raises(UserError, match="cannot download .* OSError: connection reset") as err:
        weights.fetch("senclip-rn50-avgpool")
    assert "\n" not in str(err.value) and "unconfirmed" in str(err.value)
    monkeypatch.setattr(weights, "_reachable", lambda timeout=5.0: "cannot reach huggingface.co")
    with pytest.raises(UserError, match="offline, cannot reach"):
        weights.fetch("senclip-rn50-attpool")


def test_legends_command(tmp_path):
    out = _cli(tmp_path, "legends")
    assert out.returncode == 0, out.stderr
    assert "lucas-lc8" in out.stdout and "demo" in out.stdout
    out = _cli(tmp_path, "legends", "demo", "--style", "ground")
    assert out.returncode == 0 and "built-up" in out.stdout and "#" in out.stdout
    out = _cli(tmp_path, "legends", "nope")
    assert out.returncode == 2 and out.stderr.startswith("error: unknown legend")
