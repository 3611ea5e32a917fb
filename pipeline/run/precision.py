"""The backend a run computes with: ``--backend auto`` resolved for this machine.

:func:`resolve_precision` resolves it for a map run, once on the driver and before the output
hash; :func:`use_backend` puts a model on it for commands that embed pixels outside a map run.
The measurement itself is :mod:`model.precision`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.run.config import RunConfig


def resolve_precision(
    cfg: RunConfig, classifier: np.ndarray | None, threads: int | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """``cfg`` with ``--backend auto`` resolved for this machine (:mod:`model.precision`).

    The driver runs this once, before the output hash, so the hash covers the backend and CPU
    batch the pixels are computed with, and every worker gets them in its config (mixed nodes or
    a resume elsewhere keep one hash). The measurement is timed with the driver's torch threads,
    which :mod:`pipeline.run.cluster` also gives each worker (cores // workers).

    Args:
        cfg: the run's settings.
        classifier: the (C, D) classifier of the run's model
            (:attr:`pipeline.run.classifier.ModelClasses.classifier`), which the measurement
            ranks the embeddings with; needed for ``auto`` only (None otherwise).
        threads: torch threads per worker (:func:`pipeline.run.cluster.worker_threads`); the
            measurement runs with that many (None: this process's).
    """
    if cfg.model.precision != "auto":
        return cfg, {
            "requested": cfg.model.precision,
            "resolved": cfg.model.precision,
            "batch": cfg.model.cpu_batch,
        }
    if classifier is None:
        raise ValueError("--backend auto is measured with the run's classifier: none given")
    import torch

    from model.precision import resolve

    m = cfg.model.load()
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        resolved, info = resolve(
            m, "auto", np.asarray(classifier, np.float32), batch=cfg.model.cpu_batch
        )
    finally:
        torch.set_num_threads(before)
    batch = info.get("batch") if m.device.type == "cpu" else None
    return cfg.with_(precision=resolved, cpu_batch=batch), info


def use_backend(m: Any, requested: str = "auto", legend: str | None = None) -> dict[str, Any]:
    """Put model ``m`` on the backend ``requested`` (``auto``: as a map run decides it).

    For commands that embed pixels outside a map run (``probe``): ``auto`` is resolved with the
    classifier of ``legend`` (default lucas-lc8, a map's default), the same cached per-machine
    decision a map run with that legend gets.

    Returns:
        the decision (``requested``, ``resolved``, ``batch``, ...), to record with the outputs.
    """
    from model.engine import set_precision
    from model.legends import load_legend
    from model.precision import resolve
    from model.zeroshot import build_classifier

    def exact(reason: str) -> dict[str, Any]:
        set_precision(m, "fp32")
        return {"requested": "auto", "resolved": "fp32", "reason": reason}

    if requested == "auto" and m.device.type == "cpu" and not getattr(m, "has_text", True):
        return exact("no text tower: no classifier")
    w = np.zeros((1, m.embed_dim), np.float32)
    if requested == "auto" and m.device.type == "cpu":
        w = build_classifier(m, load_legend(legend or "lucas-lc8", style="aerial"))
        w = w.detach().cpu().float().numpy() if hasattr(w, "detach") else np.asarray(w)
        if w.shape[-1] != m.embed_dim:  # a checkpoint trained for another embedding space
            return exact(f"the text tower's {w.shape[-1]}-d classes cannot rank its embeddings")
    backend, info = resolve(m, requested, np.asarray(w, np.float32))
    set_precision(m, backend, batch=info.get("batch"))
    return info
