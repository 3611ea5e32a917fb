"""Cloud-free composites: per-period medians of masked reflectance, and one window's composite.

:mod:`~pipeline.composite.median` is the compiled NaN-aware median kernel with valid-observation
counts and gap filling; :mod:`~pipeline.composite.window` reads one window's scenes
(:mod:`pipeline.reading`) and composites them, the same code for map tiles and point windows.
"""
