"""The demo catalog's former import path, kept so scripts written against it keep working.

The generator lives in :mod:`pipeline.testing.demo` (issue 14 moved it under the testing
package); import from there in new code.
"""

from pipeline.testing.demo import *  # noqa: F403 (the public names, re-exported)
from pipeline.testing.demo import __all__  # noqa: F401
