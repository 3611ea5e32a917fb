"""What a tile task hands to the writers: one tile's layers as plain numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["CLASS_NODATA", "TCI_MAX_REFLECTANCE", "TileResult", "true_colour"]

#: Class value of pixels without a prediction (no valid observation, outside the AOI).
CLASS_NODATA = 255


@dataclass
class TileResult:
    """One tile's map layers, shapes checked on construction.

    Attributes:
        classes: (h, w) uint8 class index; 255 = nodata.
        confidence: (h, w) float32 probability of the predicted class; NaN = nodata.
        topk_classes: (k, h, w) uint8 class indices by decreasing probability; 255 = nodata.
        topk_probs: (k, h, w) float32 their probabilities; NaN = nodata.
        valid_obs: (P, h, w) uint16 valid (cloud-free) observations per composite period.
        composite: (P, B, h, w) float32 reflectance composite, or None.
        embeddings: (D, h, w) float16 per-pixel embeddings, or None.
        field_codes: (d, h, w) int8 codes of the compact embedding field, or None.
        field_scale: (h, w) float16 their per-pixel scale (NaN = nodata), or None.
        rgb: (3, h, w) uint8 true-colour composite (B4, B3, B2; see :func:`true_colour`); 0 =
            nodata. None: not written.
        margin: (h, w) float32 top-1 minus top-2 probability (0-1); NaN = nodata. None: not
            computed (written as nodata).
        entropy: (h, w) float32 Shannon entropy of the probabilities over ln(C) (0-1); NaN =
            nodata. None: not computed.
        ood: (h, w) float32 out-of-distribution score (> 1: flagged, see
            :mod:`pipeline.adapters.uncertainty`); NaN = nodata. None: not computed.
        classes_raw: (h, w) uint8 classes before post-processing (255 = nodata), or None.
        postprocessed: (h, w) uint8 1 where post-processing changed the class, 0 where not,
            255 = nodata; or None.
    """

    classes: np.ndarray
    confidence: np.ndarray
    topk_classes: np.ndarray
    topk_probs: np.ndarray
    valid_obs: np.ndarray
    composite: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    field_codes: np.ndarray | None = None
    field_scale: np.ndarray | None = None
    rgb: np.ndarray | None = None
    margin: np.ndarray | None = None
    entropy: np.ndarray | None = None
    ood: np.ndarray | None = None
    classes_raw: np.ndarray | None = None
    postprocessed: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.classes = _as(self.classes, np.uint8, 2, "classes")
        h, w = self.classes.shape
        self.confidence = _as(self.confidence, np.float32, 2, "confidence", (h, w))
        self.topk_classes = _as(self.topk_classes, np.uint8, 3, "topk_classes", (h, w))
        k = self.topk_classes.shape[0]
        self.topk_probs = _as(self.topk_probs, np.float32, 3, "topk_probs", (h, w))
        if self.topk_probs.shape[0] != k:
            raise ValueError(f"topk_probs has {self.topk_probs.shape[0]} ranks, topk_classes {k}")
        self.valid_obs = _as(self.valid_obs, np.uint16, 3, "valid_obs", (h, w))
        if self.composite is not None:
            self.composite = _as(self.composite, np.float32, 4, "composite", (h, w))
            if self.composite.shape[0] != self.valid_obs.shape[0]:
                raise ValueError(
                    f"composite has {self.composite.shape[0]} periods, "
                    f"valid_obs {self.valid_obs.shape[0]}"
                )
        if self.embeddings is not None:
            self.embeddings = _as(self.embeddings, np.float16, 3, "embeddings", (h, w))
        if self.field_codes is not None:
            self.field_codes = _as(self.field_codes, np.int8, 3, "field_codes", (h, w))
        if self.field_scale is not None:
            self.field_scale = _as(self.field_scale, np.float16, 2, "field_scale", (h, w))
        if self.rgb is not None:
            self.rgb = _as(self.rgb, np.uint8, 3, "rgb", (h, w))
            if self.rgb.shape[0] != 3:
                raise ValueError(f"rgb must have 3 bands, got {self.rgb.shape[0]}")
        for name in ("margin", "entropy", "ood"):
            if getattr(self, name) is not None:
                setattr(self, name, _as(getattr(self, name), np.float32, 2, name, (h, w)))
        for name in ("classes_raw", "postprocessed"):
            if getattr(self, name) is not None:
                setattr(self, name, _as(getattr(self, name), np.uint8, 2, name, (h, w)))

    @property
    def shape(self) -> tuple[int, int]:
        return self.classes.shape  # type: ignore[return-value]

    @property
    def k(self) -> int:
        return int(self.topk_classes.shape[0])

    @property
    def n_periods(self) -> int:
        return int(self.valid_obs.shape[0])

    def total_valid_obs(self) -> np.ndarray:
        """(h, w) uint16 valid observations summed over all periods (saturating at 65535)."""
        return np.minimum(self.valid_obs.sum(axis=0, dtype=np.uint64), 65535).astype(np.uint16)


#: Reflectance shown as full brightness (255) in the true-colour composite, as in Sentinel-2's
#: own true-colour image (TCI: B4, B3, B2 BOA reflectance 0..2000 DN -> 1..255, ESA Sentinel-2
#: Products Specification Document, S2-PDGS-TAS-DI-PSD, section on the TCI product).
TCI_MAX_REFLECTANCE = 0.2


def true_colour(rgb_reflectance: np.ndarray) -> np.ndarray:
    """(3, h, w) reflectance (0-1, NaN = no data; e.g. B4, B3, B2) -> (3, h, w) uint8, TCI-style.

    Reflectance 0..TCI_MAX_REFLECTANCE maps linearly to 1..255 (brighter saturates); a pixel
    with any band NaN is 0 (nodata) in every band.
    """
    x = np.asarray(rgb_reflectance, dtype=np.float32)
    missing = np.isnan(x).any(axis=0)
    scaled = np.clip(np.nan_to_num(x, nan=0.0) / TCI_MAX_REFLECTANCE, 0.0, 1.0) * 254.0 + 1.0
    out = np.rint(scaled).astype(np.uint8)
    out[:, missing] = 0
    return out


def _as(
    a: np.ndarray,
    dtype: type,
    ndim: int,
    name: str,
    hw: tuple[int, int] | None = None,
) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if hw is not None and tuple(a.shape[-2:]) != hw:
        raise ValueError(f"{name} covers {a.shape[-2:]} pixels, classes {hw}")
    if a.dtype != dtype:
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be {np.dtype(dtype).name}, got {a.dtype}")
        a = a.astype(dtype)
    return a
