"""The run driver's former import path, kept so scripts written against it keep working.

The driver lives in :mod:`pipeline.run.driver` (issue 14 split ``runner.py`` into the
:mod:`pipeline.run` package); import from there in new code.
"""

from pipeline.run.driver import execute

__all__ = ["execute"]
