"""SenCLIP (patch) and TimeSenCLIP (pixel) models for zero-shot Sentinel-2 land cover.

Public entry points::

    import model
    m = model.load("senclip", checkpoint=PATH_OR_NAME, arch="ViT-B-32")   # or arch="RN50"
    x = m.preprocess(rgb)        # (N, 3, h, w) reflectance B4, B3, B2 -> (N, 3, 224, 224)
    e = m.image_embed(x)         # -> (N, D) L2-normalised
    w = m.text_embed(prompts)    # list[str] -> (P, D) L2-normalised

    t = model.load("timesenclip", checkpoint=PATH, clip_checkpoint=CLIP_PATH_OR_NAME)
    x = t.preprocess(series)     # (N, T, 10) reflectance x 1e4 -> normalised (N, T, 10)
    e = t.pixel_embed(x)         # T in {1, 4, 12} -> (N, 512) L2-normalised

    model.get_model(...)         # load() memoised per process (Dask workers load once)

Zero-shot classification: :mod:`model.legends`, :mod:`model.zeroshot`; batched inference:
:mod:`model.engine`; released weights: :mod:`model.weights`.
"""

from typing import Any

__all__ = ["NAMES", "clear_cache", "get_model", "load", "pick_device"]


def __getattr__(name: str) -> Any:
    """The public API, imported on first use: ``import model`` (and ``model.legends``, the
    few-shot head reader) must not import torch, so a run's cheap checks fail in a second."""
    if name in __all__:
        import model._torchvision_compat  # noqa: F401, PLC0415 (before anything imports torchvision)
        from model import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
