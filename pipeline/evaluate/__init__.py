"""Evaluation: classification metrics, map accuracy with area estimates, benchmark datasets.

- :mod:`pipeline.evaluate.metrics`: confusion matrix, OA, per-class P/R/F1, macro F1, kappa, mAP,
  the SenCLIP reference's recall@|y|.
- :mod:`pipeline.evaluate.area`: Olofsson et al. (2014) stratified estimators of accuracy and
  area with confidence intervals.
- :mod:`pipeline.evaluate.datasets`: EuroSAT (RGB, MS) and BigEarthNet-19 readers for the
  released on-disk layouts.
- :mod:`pipeline.evaluate.classify`: zero-/few-shot evaluation of datasets and labelled points.
- :mod:`pipeline.evaluate.mapacc`: a finished map against reference points.
- :mod:`pipeline.evaluate.labels`, :mod:`pipeline.evaluate.plots`: label matching, figures.

Command: ``python -m pipeline evaluate eurosat|eurosat-ms|bigearthnet|points|map``.
"""
