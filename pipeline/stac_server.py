"""The local STAC server's former import path, kept so scripts written against it keep working.

The server lives in :mod:`pipeline.testing.stac_server`; import from there in new code.
"""

from pipeline.testing.stac_server import free_port, rustac_binary, serve

__all__ = ["free_port", "rustac_binary", "serve"]
