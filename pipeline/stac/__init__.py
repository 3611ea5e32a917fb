"""Finding scenes: STAC search, provider profiles, band layouts and harmonisation, the scene ledger.

:mod:`~pipeline.stac.search` pages through a STAC API (:mod:`~pipeline.stac.profiles` knows each
provider's collection, asset keys, signing and offsets), :mod:`~pipeline.stac.bands` maps every
provider's asset layout and processing baseline onto one set of bands in surface reflectance, and
:mod:`~pipeline.stac.scenes` keeps the ledger of every scene found, used or dropped with its reason.
"""
