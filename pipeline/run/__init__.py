"""A mapping run, one module per concept: :mod:`~pipeline.run.checks` (the cheap checks:
region, size, periods, legend, head), :mod:`~pipeline.run.precision` (the backend),
:mod:`~pipeline.run.classifier` (the model's classes and text classifier),
:mod:`~pipeline.run.prepare` (tile size, grid, model and classifier, as one frozen
:class:`~pipeline.run.prepare.Prepared`), :mod:`~pipeline.run.calibration`,
:mod:`~pipeline.run.scheduling` (Dask tasks, retries, dead-letter list),
:mod:`~pipeline.run.reporting` (``run.json``, ledger, coverage), :mod:`~pipeline.run.publishing`
(COGs, Zarr, legend, quicklook, STAC item), and :mod:`~pipeline.run.driver`, which runs them in
order.
"""
