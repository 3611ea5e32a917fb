"""The base every layer may import: errors, paths, atomic writes, JSON, hashing, colours, dates.

It sits below ``model``, ``aoi`` and the rest of ``pipeline`` (the layer contract in
``pyproject.toml``, checked by ``lint-imports`` in ``make lint``) and imports nothing from them,
so ``model`` and ``aoi`` can use it without pulling in the pipeline. One module per concept:

- :mod:`pipeline.base.errors`: :class:`UserError`, the one-line error users see;
- :mod:`pipeline.base.paths`: :func:`cache_dir`, the cache root;
- :mod:`pipeline.base.atomic`: :func:`atomic_path`, results that appear complete or not at all;
- :mod:`pipeline.base.jsonio`: :func:`to_json_safe` and :func:`write_json`;
- :mod:`pipeline.base.hashing`: :func:`sha256_file` and :func:`json_digest`;
- :mod:`pipeline.base.colours`: :func:`parse_color`, :func:`to_hex`, :func:`palette`;
- :mod:`pipeline.base.dates`: :func:`parse_date`, the one date parser for user input.
"""
