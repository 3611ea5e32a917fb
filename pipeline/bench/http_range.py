"""The bench's loopback HTTP range server: :mod:`pipeline.testing.object_store` with no latency.

Serves files under ``root`` on 127.0.0.1 with ``Range: bytes=a-b`` (single ranges, 206 Partial
Content) as S3 and other object stores do, and counts requests and body bytes, so a benchmark can
compare what the read path fetched with the compressed size of the blocks it needed. For latency,
bandwidth and faults use :func:`pipeline.testing.object_store.serve_store` directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.testing.object_store import StoreConfig, StoreCounter, serve_store

Counter = StoreCounter


@contextmanager
def serve_ranges(
    root: Path, config: StoreConfig | None = None
) -> Iterator[tuple[str, StoreCounter]]:
    """(base URL, counter) of a range-serving HTTP server on 127.0.0.1 for the files in ``root``."""
    with serve_store(root, config) as store:
        yield store.url, store.counter
