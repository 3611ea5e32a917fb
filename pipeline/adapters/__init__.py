"""Model adapters: everything the pipeline needs to know about one model kind, by name.

A new model kind is one module with a :class:`~pipeline.adapters.base.ModelAdapter` subclass and
its entry in :mod:`pipeline.adapters.registry` (or :func:`register` at run time).

>>> from pipeline import adapters
>>> adapters.get("senclip").input, adapters.get("timesenclip").bands[:2]
('patch', ('B2', 'B3'))
"""

from pipeline.adapters.registry import DEFAULT, all_adapters, get, names, register, unregister

__all__ = ["DEFAULT", "all_adapters", "get", "names", "register", "unregister"]
