"""TimeSenCLIP inference written out as plain tensor operations, for ``torch.compile`` on CUDA.

``nn.TransformerEncoder``'s fast path runs each layer as one opaque kernel sequence, and its
attention over 13 tokens (12 months + CLS) per pixel is millions of tiny problems (issue 18:
0.62 M px/s on an H100, 13 % of the bf16 peak). The same computation spelled out (QKV
projection, scaled dot-product attention, output projection, post-norm residuals, ReLU
feed-forward, head) lets TorchInductor fuse the normalisation, residuals, activations and the
input scaling around the large GEMMs and, with ``mode="reduce-overhead"``, replay the fixed shapes
as a CUDA graph. Nothing here changes the model: :func:`explicit_inference` equals
``TimeSenCLIPEncoder.inference`` (fp32, eval) to rounding, which ``tests/model/test_fused.py``
checks on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from model.timesenclip import TimeSenCLIPEncoder, normalise

__all__ = ["explicit_inference", "pixel_embedder"]


def _layer(layer: torch.nn.TransformerEncoderLayer, x: torch.Tensor, heads: int) -> torch.Tensor:
    """One post-norm encoder layer (PyTorch's ``norm_first=False``), eval mode: (N, S, D)."""
    n, s, d = x.shape
    attn = layer.self_attn
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, s, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    o = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(d/heads), as nn.MultiheadAttention
    o = F.linear(o.transpose(1, 2).reshape(n, s, d), attn.out_proj.weight, attn.out_proj.bias)
    x = F.layer_norm(x + o, (d,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    f = layer.linear2(layer.activation(layer.linear1(x)))
    return F.layer_norm(x + f, (d,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


def explicit_inference(enc: TimeSenCLIPEncoder, x: torch.Tensor) -> torch.Tensor:
    """``enc.inference`` as plain operations: (N, T, bands) normalised -> (N, dim) unnormalised.

    Eval only (no dropout). Raises ValueError for layers this function does not describe
    (``norm_first=True``), rather than computing something else.
    """
    layers = enc.transformer.layers
    if any(layer.norm_first for layer in layers):
        raise ValueError("explicit_inference describes post-norm layers only")
    tokens = enc.spectral_embedding(x)
    h = tokens + enc.positions(tokens.shape[1]).to(tokens.dtype)
    cls = enc.class_token.expand(h.shape[0], -1, -1).to(h.dtype)
    h = torch.cat([cls, h], dim=1)
    for layer in layers:
        h = _layer(layer, h, enc.heads)
    return enc.mlp_head(h[:, 0])


def pixel_embedder(
    enc: TimeSenCLIPEncoder, dtype: torch.dtype, compile_mode: str | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """(N, T, 10) reflectance x 1e4 (float32) -> (N, dim) L2-normalised float32 embeddings.

    ``enc`` must already hold weights of ``dtype`` on its device. With ``compile_mode`` (a
    ``torch.compile`` mode such as ``"default"`` or ``"reduce-overhead"``), the whole function,
    input scaling included, is compiled; each new batch shape compiles once.
    """

    def fn(series: torch.Tensor) -> torch.Tensor:
        x = normalise(series).to(dtype)
        return F.normalize(explicit_inference(enc, x).float(), dim=-1)

    if compile_mode is None:
        return fn
    return torch.compile(fn, mode=compile_mode, dynamic=False, fullgraph=True)
