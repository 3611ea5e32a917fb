"""Map accuracy and area estimates from a stratified reference sample (Olofsson et al. 2014).

Olofsson, P., Foody, G. M., Herold, M., Stehman, S. V., Woodcock, C. E., Wulder, M. A. (2014).
Good practices for estimating area and assessing accuracy of land change. Remote Sensing of
Environment 148, 42-57.

The map's classes are the strata: ``W_i = A_i / A`` is the mapped share of class i, ``n_ij`` the
number of reference samples mapped as i and labelled j (rows map, columns reference, as in
:mod:`pipeline.evaluate.metrics`). With ``p_ij = W_i n_ij / n_i.`` (the estimated area proportion
of cell ij) the estimators are

- overall accuracy ``O = sum_j p_jj``, ``V(O) = sum_i W_i^2 U_i (1 - U_i) / (n_i. - 1)``;
- user's accuracy ``U_i = p_ii / p_i.``, ``V(U_i) = U_i (1 - U_i) / (n_i. - 1)``;
- producer's accuracy ``P_j = p_jj / p_.j`` with Olofsson's eq. 7 variance;
- area of class k ``A_k = A p_.k``, ``S(p_.k) = sqrt(sum_i (W_i p_ik - p_ik^2) / (n_i. - 1))``.

Confidence intervals are ``estimate +- z * SE`` (z = 1.96 for 95 %). The estimators are valid for
any allocation of the sample to the strata, including a simple random sample (then the strata
are post-strata), as long as every mapped class with area has at least two samples; classes that
do not are reported with NaN uncertainties and a warning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054


def _safe(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def stratified_estimates(
    cm: np.ndarray,
    map_areas: Sequence[float] | np.ndarray,
    *,
    z: float = Z95,
    census: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Olofsson et al. (2014) stratified estimators from sample counts and mapped areas.

    Args:
        cm: (C, C) sample counts, rows = map class (stratum), columns = reference class.
        map_areas: (C,) mapped area of each class (pixels, m2, ha: the area outputs share the
            unit).
        z: the normal quantile of the confidence intervals (1.96: 95 %).
        census: (C,) True for a stratum whose every pixel is in the sample (a class of a few
            pixels): its terms have no sampling variance (the finite-population factor
            1 - n_i/N_i is 0), and it needs no second sample. None: no stratum is.

    Returns:
        numpy arrays: ``proportions`` (C, C) estimated area proportions p_ij; ``weights`` W_i;
        ``overall_accuracy`` and ``overall_accuracy_se``; ``users_accuracy``/``_se`` (C,);
        ``producers_accuracy``/``_se`` (C,); ``area``/``area_se`` (C,) in the unit of
        ``map_areas``; ``area_ci`` (C, 2) lower/upper; ``mapped_area`` (C,); ``warnings``.
    """
    n = np.asarray(cm, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] != n.shape[1]:
        raise ValueError(f"cm must be square, got shape {n.shape}")
    a = np.asarray(map_areas, dtype=np.float64).ravel()
    if a.shape[0] != n.shape[0]:
        raise ValueError(f"{a.shape[0]} map areas for {n.shape[0]} classes")
    if (a < 0).any() or not a.sum() > 0:
        raise ValueError("map areas must be non-negative with a positive total")
    total = a.sum()
    w = a / total
    n_i = n.sum(axis=1)
    full = np.zeros(n.shape[0], bool) if census is None else np.asarray(census, bool).ravel()
    if full.shape[0] != n.shape[0]:
        raise ValueError(f"{full.shape[0]} census flags for {n.shape[0]} classes")
    warnings: list[str] = []
    for i in np.flatnonzero((a > 0) & (n_i < 2) & ~full):
        warnings.append(
            f"map class {i} has area but {int(n_i[i])} reference sample(s); its stratum "
            "needs at least 2 for a variance (estimates treat its missing samples as zero)"
        )

    frac = _safe(n, n_i[:, None])  # n_ij / n_i.
    frac = np.nan_to_num(frac)
    p = w[:, None] * frac
    p_row = p.sum(axis=1)
    p_col = p.sum(axis=0)
    diag = np.diag(p)
    dof = n_i - 1  # n_i. - 1 (variance denominators)

    oa = float(diag.sum())
    ua = _safe(diag, p_row)
    ua_var = np.where(full, 0.0, _safe(ua * (1 - ua), dof))
    # V(O): strata without a variance make it undefined only if they carry weight.
    terms = np.where(w > 0, w**2 * ua_var, 0.0)
    oa_se = float(np.sqrt(terms.sum())) if not np.isnan(terms).any() else float("nan")

    pa = _safe(diag, p_col)
    big_n = a  # N_i. : mapped area of class i (the variance is scale-free in its unit)
    n_hat_col = (np.nan_to_num(_safe(big_n, n_i))[:, None] * n).sum(axis=0)  # N_.j estimate
    c = n.shape[0]
    pa_var = np.full(c, np.nan)
    cell_var = _safe(frac * (1 - frac), dof[:, None])  # (n_ij/n_i.)(1 - n_ij/n_i.)/(n_i. - 1)
    cell_var = np.where(full[:, None], 0.0, cell_var)
    for j in range(c):
        if not n_hat_col[j] > 0:
            continue
        first = big_n[j] ** 2 * (1 - pa[j]) ** 2 * ua_var[j] if big_n[j] > 0 else 0.0
        others = [big_n[i] ** 2 * cell_var[i, j] for i in range(c) if i != j and big_n[i] > 0]
        pa_var[j] = (first + pa[j] ** 2 * float(np.sum(others))) / n_hat_col[j] ** 2

    cell = _safe(w[:, None] * p - p**2, dof[:, None])
    cell = np.where((w[:, None] > 0) & ~full[:, None], cell, 0.0)
    prop_se = np.sqrt(cell.sum(axis=0))
    area = total * p_col
    area_se = total * prop_se
    return {
        "weights": w,
        "proportions": p,
        "overall_accuracy": oa,
        "overall_accuracy_se": oa_se,
        "users_accuracy": ua,
        "users_accuracy_se": np.sqrt(ua_var),
        "producers_accuracy": pa,
        "producers_accuracy_se": np.sqrt(pa_var),
        "mapped_area": a,
        "area": area,
        "area_se": area_se,
        "area_ci": np.stack([area - z * area_se, area + z * area_se], axis=1),
        "z": z,
        "warnings": warnings,
    }


def accuracy_assessment(
    cm: np.ndarray,
    map_areas: Sequence[float] | np.ndarray,
    class_names: Sequence[str],
    *,
    area_unit: str = "ha",
    z: float = Z95,
    census: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`stratified_estimates` as a JSON-ready report (NaN -> null) with 95 % CIs."""
    est = stratified_estimates(cm, map_areas, z=z, census=census)

    def num(x: Any) -> float | None:
        x = float(x)
        return None if np.isnan(x) else x

    def ci(v: float, se: float) -> list[float | None]:
        """Normal-approximation interval of a proportion, clipped to [0, 1]."""
        return [num(max(0.0, v - z * se)), num(min(1.0, v + z * se))]

    cm = np.asarray(cm)
    classes = {}
    for i, name in enumerate(class_names):
        classes[name] = {
            "samples_mapped": int(cm[i].sum()),
            "samples_reference": int(cm[:, i].sum()),
            "mapped_area": num(est["mapped_area"][i]),
            "estimated_area": num(est["area"][i]),
            "estimated_area_se": num(est["area_se"][i]),
            "estimated_area_ci": [num(max(0.0, est["area_ci"][i][0])), num(est["area_ci"][i][1])],
            "users_accuracy": num(est["users_accuracy"][i]),
            "users_accuracy_se": num(est["users_accuracy_se"][i]),
            "users_accuracy_ci": ci(est["users_accuracy"][i], est["users_accuracy_se"][i]),
            "producers_accuracy": num(est["producers_accuracy"][i]),
            "producers_accuracy_se": num(est["producers_accuracy_se"][i]),
            "producers_accuracy_ci": ci(
                est["producers_accuracy"][i], est["producers_accuracy_se"][i]
            ),
        }
    oa, oa_se = est["overall_accuracy"], est["overall_accuracy_se"]
    return {
        "method": "Olofsson et al. 2014 stratified estimators (strata = map classes)",
        "confidence_level": round(math.erf(z / math.sqrt(2)), 6),
        "z": z,
        "area_unit": area_unit,
        "n_samples": int(cm.sum()),
        "overall_accuracy": num(oa),
        "overall_accuracy_se": num(oa_se),
        "overall_accuracy_ci": ci(oa, oa_se),
        "classes": classes,
        "class_names": list(class_names),
        "sample_confusion_matrix": cm.tolist(),
        "estimated_area_proportions": [[num(v) for v in row] for row in est["proportions"]],
        "warnings": est["warnings"],
    }
