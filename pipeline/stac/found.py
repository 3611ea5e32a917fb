"""A run's search result on disk: the usable items streamed page by page into a spool file.

A year of EU-27 is about 94,000 items, 790 MB of JSON and about 3 GB as Python objects, so a
run's search never holds them as one list. :func:`stream_run_scenes` writes every usable item of
every page as one JSON line into a spool file as the page arrives (the rules of
:class:`pipeline.stac.scenes.SceneSelector` applied on the way, each item normalised as
:func:`pipeline.stac.search.run_item` says), keeping only the byte span of each line; :class:`FoundScenes` then
yields the kept items in the run's order (datetime, id), one at a time, for the run's inputs
file (:meth:`pipeline.run.inputs.RunInputs.write`). The ledger of every returned scene stays in
memory (a few hundred bytes per scene).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import multiprocessing
import os
import resource
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import UserError
from pipeline.stac.scenes import SceneLedger, SceneSelector
from pipeline.stac.search import api_url, inside_demo, raise_none_usable, run_item, search_pages

__all__ = ["FoundScenes", "search_run", "stream_run_scenes"]

_log = logging.getLogger(__name__)


class FoundScenes:
    """The usable items of a run's search, in a spool file: ``len()``, :meth:`items`, :meth:`close`.

    ``spans`` is an (N, 2) int64 array of (byte offset, length) of each kept item's line, in the
    run's order. The spool file is deleted by :meth:`close` (or when the object is collected).
    """

    def __init__(self, path: Path, spans: np.ndarray, ledger: SceneLedger, counts: dict) -> None:
        self.path = Path(path)
        self.spans = spans
        self.ledger = ledger
        self.counts = counts
        """What the search did: ``pages``, ``returned``, ``matched``, ``kept`` (see
        :func:`pipeline.stac.search.search_pages`)."""

    def __len__(self) -> int:
        return len(self.spans)

    def items(self) -> Iterator[dict]:
        """The kept item dicts in the run's order, read one at a time."""
        with open(self.path, "rb") as fh:
            for off, n in self.spans:
                fh.seek(int(off))
                yield json.loads(fh.read(int(n)))

    def close(self) -> None:
        if self.path is None:  # handed over to another process
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __del__(self) -> None:
        self.close()


def stream_run_scenes(
    geometry: Any,
    start: dt.date,
    end: dt.date,
    cfg: Any,
    folder: str | Path | None = None,
    url: str | None = None,
) -> FoundScenes:
    """Search and spool the usable items (:class:`FoundScenes`), page by page.

    :param cfg: the :class:`pipeline.stac.search.SearchConfig`.
    :param folder: where the spool file goes (the system's temporary folder by default).
    :param url: the API root to search (default: ``cfg``'s, :func:`pipeline.stac.search.api_url`:
        the demo catalog served for the duration where the profile is ``demo``).
    :raises UserError: as :func:`pipeline.stac.search.search_scenes` (nothing usable, an API that
        cannot be reached or returns fewer items than it matched); nothing is left on disk.
    """
    sel = SceneSelector(start, end, cfg.max_cloud)
    counts: dict[str, Any] = {}
    fd, name = tempfile.mkstemp(prefix="s2lc-search-", suffix=".jsonl", dir=folder)
    path = Path(name)
    try:
        with (
            api_url(cfg) if url is None else contextlib.nullcontext(url) as url,
            os.fdopen(fd, "wb") as fh,
        ):
            pos = 0
            for page in search_pages(url, geometry, start, end, cfg, counts):
                for f in page:
                    sid = str(f["id"])
                    if sid in sel.ledger.scenes:  # every id seen is in the ledger
                        continue
                    line = json.dumps(run_item(f), separators=(",", ":")).encode() + b"\n"
                    if sel.add(f, (pos, len(line))):
                        fh.write(line)
                        pos += len(line)
        spans = np.asarray(sel.finish(), np.int64).reshape(-1, 2)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    ledger = sel.ledger
    for line in ledger.summary_lines():
        _log.info("%s", line)
    if not len(spans):
        path.unlink(missing_ok=True)
        raise_none_usable(ledger, ledger.counts()["returned"], url, start, end, cfg)
    _log.info(
        "%d scene(s) from %s (%s) for %s..%s, %d page(s)",
        len(spans),
        url,
        cfg.resolved_collection,
        start,
        end,
        counts["pages"],
    )
    return FoundScenes(path, spans, ledger, counts)


def search_run(
    geometry: Any,
    start: dt.date,
    end: dt.date,
    cfg: Any,
    folder: str | Path | None = None,
    *,
    isolated: bool = False,
) -> FoundScenes:
    """A run's search (:func:`stream_run_scenes`) on ``cfg``'s API (the demo catalog served for
    the duration where the profile is ``demo``).

    A search that finds nothing inside the bundled demo catalog's footprint under another
    profile says to add ``--profile demo``.

    ``isolated``: search in a process of its own and hand the spool file and the ledger back.
    Python does not give back to the system the memory that thousands of parsed pages leave
    fragmented, so a continental search (EU-27: about 1.4 GB) would stay in the driver's
    resident memory for the whole run; the process's peak is kept in ``counts["peak_mb"]``.

    :raises UserError: as :func:`stream_run_scenes` (:class:`NoScenesError` stays one).
    """
    if isolated:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            path, spans, scenes, counts = pool.submit(
                _search_in_child, geometry, start, end, cfg, folder
            ).result()
        found = FoundScenes(Path(path), spans, SceneLedger(scenes), counts)
        for line in found.ledger.summary_lines():
            _log.info("%s", line)
        return found
    try:
        return stream_run_scenes(geometry, start, end, cfg, folder)
    except UserError as exc:
        if cfg.profile != "demo" and inside_demo(geometry):
            raise type(exc)(
                f"{exc}; this area lies inside the offline demo catalog: add --profile demo"
            ) from None
        raise


def _search_in_child(geometry, start, end, cfg, folder) -> tuple[str, np.ndarray, dict, dict]:
    """:func:`search_run` in a child process: (spool path, spans, ledger scenes, counts)."""
    found = search_run(geometry, start, end, cfg, folder)
    counts = {**found.counts, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out = (str(found.path), found.spans, found.ledger.scenes, counts)
    found.path = None  # the parent owns the spool file now
    return out
