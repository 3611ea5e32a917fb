"""``python -m pipeline.testing.standin_run run|plan ARGS``: the real command with the stand-in encoder.

The rehearsal (:mod:`pipeline.bench.rehearsal`) exercises the continental path (search, Dask
scheduling, reading, compositing, cell publishing) under real faults; GPU inference is measured on
its own (``bench --only models``), so the model is replaced by the deterministic
:class:`pipeline.testing.encoder.FakeEncoder`. This launcher makes that swap and nothing else:

* in this (the driver's) process, ``model.get_model`` returns one ``FakeEncoder`` per model kind
  (``plan --stage-rates plan_stage_rates_standin`` then predicts with the stand-in's own stage
  rates, which ``make bench ARGS="--only plan"`` measures as it measures the model's);
* every Dask worker process imports this module as a worker preload (``distributed.worker.preload``
  through ``DASK_DISTRIBUTED__WORKER__PRELOAD``, set before Dask is imported, so the nanny hands it
  to the workers it spawns and to those it restarts after a kill) and makes the same swap in
  :func:`dask_setup`;
* then ``python -m pipeline ARGS`` runs as it does from a shell (the same parser, checks, driver
  and exit codes).
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import threading

import model
from pipeline.testing.encoder import FakeEncoder

__all__ = ["PRELOAD_ENV", "dask_setup", "install", "main"]

#: Environment variable that makes Dask workers import a preload module (Dask's config from env).
PRELOAD_ENV = "DASK_DISTRIBUTED__WORKER__PRELOAD"

_LOCK = threading.Lock()
_MODELS: dict[tuple[str, int], object] = {}


def install() -> None:
    """Make ``model.get_model(name, ...)`` return a memoised ``FakeEncoder(name, seed)`` here."""

    def get_model(name: str, checkpoint=None, **kwargs):  # noqa: ANN001, ARG001
        key = (str(name).lower(), int(kwargs.get("seed") or 0))
        with _LOCK:
            if key not in _MODELS:
                _MODELS[key] = FakeEncoder(*key)
            return _MODELS[key]

    model.get_model = get_model


def dask_setup(worker) -> None:  # noqa: ANN001, ARG001  (Dask's preload hook)
    """Worker preload: the same swap in each worker process."""
    install()


def main(argv: list[str] | None = None) -> None:
    """Run ``python -m pipeline`` with ``argv`` and the stand-in encoder; exits with its code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "dask" in sys.modules:  # the workers' config comes from this process's, read at import
        raise RuntimeError("standin_run must set the worker preload before Dask is imported")
    os.environ[PRELOAD_ENV] = json.dumps([__spec__.name if __spec__ else __name__])
    install()
    sys.argv = ["pipeline", *argv]
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
