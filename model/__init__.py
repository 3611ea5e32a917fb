"""SenCLIP (patch) and TimeSenCLIP (pixel) models for zero-shot Sentinel-2 land cover.

Public entry point: :func:`model.load` (see the README "Models" section).
"""

from model import _torchvision_compat  # noqa: F401  (must run before anything imports torchvision)
