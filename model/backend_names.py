"""The names of the CPU inference backends (:mod:`model.backends`), without importing torch.

The command line and the run's config validate ``--backend`` against these before any model is
built: a wrong name must fail in a second, not after torch is imported.
"""

from __future__ import annotations

#: Every backend name, in the order ``auto`` lists them (fp32 first: the reference).
BACKENDS = ("fp32", "bf16", "int8", "openvino-fp32", "openvino-bf16")
