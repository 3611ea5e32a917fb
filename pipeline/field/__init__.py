"""The compact embedding field of a map: encoding (:mod:`.codec`) and the field API (:mod:`.api`).

Stable entry points (used by ``classify --field``, ``query --field`` and the web viewer):
:func:`open_field`, :func:`decode_window`, :func:`encode_text`, :func:`query_window`,
:func:`similarity`, :func:`query_probability`.
"""

import importlib

#: Public name -> the module that defines it (imported on first use, so that a worker process
#: running :mod:`pipeline.field.stream` does not import the whole field API).
_WHERE = {
    **{
        n: "pipeline.field.api"
        for n in (
            "KINDS",
            "Field",
            "Window",
            "check_model",
            "code_cosines",
            "decode_valid",
            "decode_window",
            "encode_text",
            "legend_classifier",
            "load_model",
            "open_field",
            "project",
            "query_probability",
            "query_window",
            "read_codes",
            "similarity",
        )
    },
    **{
        n: "pipeline.writers.codec"
        for n in ("ENCODING", "FieldCodec", "fit_codec", "identity_codec")
    },
}


def __getattr__(name: str):  # PEP 562: lazy re-exports
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'pipeline.field' has no attribute {name!r}")


__all__ = sorted(_WHERE)  # the lazy table is the one list of what this package exports
