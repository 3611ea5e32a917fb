"""The compact embedding field of a map: encoding (:mod:`.codec`) and the field API (:mod:`.api`).

Stable entry points (used by ``classify --field``, ``query --field`` and the web viewer):
:func:`open_field`, :func:`decode_window`, :func:`encode_text`, :func:`query_window`,
:func:`similarity`, :func:`query_probability`.
"""

from pipeline.field.api import (
    KINDS,
    Field,
    Window,
    check_model,
    code_cosines,
    decode_valid,
    decode_window,
    encode_text,
    legend_classifier,
    load_model,
    open_field,
    project,
    query_probability,
    query_window,
    read_codes,
    similarity,
)
from pipeline.writers.codec import ENCODING, FieldCodec, fit_codec, identity_codec

__all__ = [
    "ENCODING",
    "KINDS",
    "Field",
    "FieldCodec",
    "Window",
    "check_model",
    "code_cosines",
    "decode_valid",
    "decode_window",
    "encode_text",
    "fit_codec",
    "identity_codec",
    "legend_classifier",
    "load_model",
    "open_field",
    "query_probability",
    "query_window",
    "read_codes",
    "project",
    "similarity",
]
