"""Training: cross-view contrastive alignment (TimeSenCLIP, SenCLIP) and few-shot linear heads.

- :mod:`model.train.ground`: the published LUCAS ground-photo embeddings, matched to points and
  pooled over the N/E/S/W directions (average or attention).
- :mod:`model.train.loss`: InfoNCE with in-batch negatives plus a MoCo-style queue, learnable
  temperature.
- :mod:`model.train.temporal`: TimeSenCLIP's temporal augmentation (median / quarter drop) and
  the position-embedding handling (the reference's quirk available as an option).
- :mod:`model.train.loop`: the training loop (AdamW, warm-up + cosine, bf16 on GPU, a checkpoint
  every epoch that ``model.load`` reads, resume, per-epoch validation).
- :mod:`model.train.timesenclip`, :mod:`model.train.senclip`: the two models' tasks and data.
- :mod:`model.train.probe`: few-shot logistic-regression heads (``load_head(path).predict``).

Commands: ``python -m pipeline train timesenclip|senclip``, ``python -m pipeline probe``.
"""

from model.train.probe import LinearHead, fit_linear_head, load_head

__all__ = ["LinearHead", "fit_linear_head", "load_head"]
