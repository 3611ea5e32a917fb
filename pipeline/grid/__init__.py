"""The output grid: tiles and their GeoBoxes, chips of patch models, EEA cells, MGRS tiles.

:mod:`~pipeline.grid.tiling` lays a region's pixel lattice out in tiles (and chips, with the
blending of overlapping chip predictions), :mod:`~pipeline.grid.cells` the 100 km EEA cells of a
continental run, and :mod:`~pipeline.grid.mgrs` the Sentinel-2 MGRS tiles and revisit that the
cost plan counts scenes with.
"""
