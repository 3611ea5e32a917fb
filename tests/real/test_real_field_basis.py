"""The model's field basis (issue 28) on real pixels: the basis fitted once on the demo reference
sample keeps zero-shot classes of real monthly L2A series (``worldcereal-pixels``: 500 pixels x 12
months x 10 bands, Uganda and South Sudan) as the full-precision embeddings give them, and a random
orthonormal basis does not. Untrained TimeSenCLIP (seed 0), as every offline figure here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .test_real_pixels import _COLUMN, _canonical

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def series(real_root):
    import pandas as pd

    from model.timesenclip import BANDS

    path = real_root / "worldcereal-pixels" / "test_public_extractions.parquet"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    px = pd.read_parquet(path)
    cols: dict[str, dict[int, str]] = {}
    for col in px.columns:
        m = _COLUMN.fullmatch(col)
        if m:
            cols.setdefault(_canonical(m.group(1)), {})[int(m.group(2))] = col
    dn = np.stack(
        [np.stack([px[cols[b][t]].to_numpy() for b in BANDS], axis=-1) for t in range(12)],
        axis=1,
    ).astype(np.float32)
    dn = np.where(dn == 65535, np.nan, dn)  # no data: the model's normalisation zeroes it,
    keep = np.isfinite(dn).any(axis=(1, 2))  # as it does a run's composite gaps
    return np.ascontiguousarray(dn[keep])


def test_model_basis_keeps_zero_shot_classes_of_real_pixels(
    series, session_cache_dir, record_property
):
    import model
    from model.engine import embed_pixels
    from model.legends import load_legend
    from model.zeroshot import build_classifier, probabilities
    from pipeline.adapters.registry import get
    from pipeline.run.basis import model_basis
    from tests.pipeline.field.test_basis import (
        _model_info,
        _random_orthonormal,
        legend_classifiers,
        zero_shot_agreement,
    )

    m = model.load("timesenclip", untrained=True, seed=0, device="cpu")
    full = embed_pixels(m, series)
    basis = model_basis(_model_info(), 62, lambda: m, get("timesenclip"))  # the product's sample
    dec = basis.codec.roundtrip(full)
    cos = (full * dec).sum(axis=1)
    classifiers = legend_classifiers(m)
    agree = zero_shot_agreement(classifiers, full, dec)
    classes = {
        name: int(
            len(np.unique(probabilities(full, build_classifier(m, load_legend(name))).argmax(1)))
        )
        for name in agree
    }
    rnd = zero_shot_agreement(classifiers, full, _random_orthonormal(basis.codec).roundtrip(full))
    report = {
        "pixels": len(full),
        "basis_hash": basis.hash,
        "zero_shot_agreement": agree,
        "random_basis_agreement": rnd,
        "classes_in_full_precision_map": classes,
        "cosine_median": float(np.median(cos)),
        "cosine_min": float(cos.min()),
    }
    record_property("field_basis_real", json.dumps(report))
    print(json.dumps(report, indent=1))
    assert len(full) >= 400
    assert min(agree.values()) >= 0.99, report
    assert min(rnd.values()) < 0.99, report
