"""A mapping run, one module per concept: :mod:`~pipeline.run.prepare` (region, classifier, scenes,
tile work orders), :mod:`~pipeline.run.calibration`, :mod:`~pipeline.run.scheduling` (Dask tasks,
retries, dead-letter list), :mod:`~pipeline.run.reporting` (``run.json``, ledger, coverage),
:mod:`~pipeline.run.publishing` (COGs, Zarr, legend, quicklook, STAC item), and
:mod:`~pipeline.run.driver`, which runs them in order.
"""
