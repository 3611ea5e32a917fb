"""A run's search result on disk: the usable items streamed page by page into a spool file.

A year of EU-27 is about 94,000 items, 790 MB of JSON and about 3 GB as Python objects, so a
run's search never holds them as one list. :func:`stream_run_scenes` writes every usable item of
every page as one JSON line into a spool file as the page arrives (the rules of
:class:`pipeline.stac.scenes.SceneSelector` applied on the way, each item normalised as
:func:`run_item` says), keeping only the byte span of each line; :class:`FoundScenes` then
yields the kept items in the run's order (datetime, id), one at a time, for the run's inputs
file (:meth:`pipeline.run.inputs.RunInputs.write`). The ledger of every returned scene stays in
memory (a few hundred bytes per scene).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pystac

from pipeline.base.errors import UserError
from pipeline.stac.hrefs import absolute_href
from pipeline.stac.profiles import unsigned_href
from pipeline.stac.scenes import REASONS, SceneLedger, SceneSelector
from pipeline.stac.search import NoScenesError, api_url, inside_demo, search_pages

__all__ = ["FoundScenes", "run_item", "search_run", "stream_run_scenes"]

_log = logging.getLogger(__name__)

_API_LINKS = ("root", "parent")


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
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __del__(self) -> None:
        self.close()


def run_item(d: dict) -> dict:
    """A search's item dict as a run keeps it: the API's root/parent links dropped (they would be
    resolved over HTTP whenever the item is serialised), asset hrefs made absolute against the
    self link (pystac's rule, :func:`pipeline.stac.hrefs.absolute_href`, only for relative ones)
    and unsigned (signatures expire: signed when read). An href that cannot be resolved is left
    as it is (the reader skips the scene and says why)."""
    d = {**d, "links": [lk for lk in d.get("links", []) if lk.get("rel") not in _API_LINKS]}
    assets = {k: dict(a) for k, a in (d.get("assets") or {}).items()}
    relative = [
        k
        for k, a in assets.items()
        if not (urlsplit(str(a.get("href", ""))).scheme or str(a.get("href", "")).startswith("/"))
    ]
    if relative:
        item = pystac.Item.from_dict(d)
        for k in relative:
            try:
                assets[k]["href"] = absolute_href(item.assets[k])
            except UserError:
                pass
    for a in assets.values():
        if "href" in a:
            a["href"] = unsigned_href(a["href"])
    d["assets"] = assets
    return d


def stream_run_scenes(
    url: str,
    geometry: Any,
    start: dt.date,
    end: dt.date,
    cfg: Any,
    folder: str | Path | None = None,
) -> FoundScenes:
    """Search ``url`` and spool the usable items (:class:`FoundScenes`), page by page.

    :param cfg: the :class:`pipeline.stac.search.SearchConfig`.
    :param folder: where the spool file goes (the system's temporary folder by default).
    :raises UserError: as :func:`pipeline.stac.search.search_scenes` (nothing usable, an API that
        cannot be reached or returns fewer items than it matched); nothing is left on disk.
    """
    sel = SceneSelector(start, end, cfg.max_cloud)
    seen: set[str] = set()
    counts: dict[str, Any] = {}
    fd, name = tempfile.mkstemp(prefix="s2lc-search-", suffix=".jsonl", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            pos = 0
            for page in search_pages(url, geometry, start, end, cfg, counts):
                for f in page:
                    sid = str(f["id"])
                    if sid in seen:
                        continue
                    seen.add(sid)
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
        lc = ledger.counts()
        returned = lc["returned"]
        if not returned or lc.get("cloud", 0) == returned:
            raise NoScenesError(
                f"no Sentinel-2 scenes in {cfg.resolved_collection} at {url} intersect the area "
                f"between {start} and {end} with cloud cover <= {cfg.max_cloud:g}% ({returned} "
                "before the cloud filter); widen the period, raise --max-cloud or check the area"
            )
        reasons = ", ".join(f"{REASONS[r]}: {n}" for r, n in lc.items() if r in REASONS)
        first = next(v.get("detail") for v in ledger.scenes.values() if v.get("detail"))
        raise UserError(
            f"none of the {returned} scenes {url} returned is usable ({reasons}); e.g. {first}"
        )
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
    geometry: Any, start: dt.date, end: dt.date, cfg: Any, folder: str | Path | None = None
) -> FoundScenes:
    """A run's search (:func:`stream_run_scenes`) on ``cfg``'s API (the demo catalog served for
    the duration where the profile is ``demo``).

    A search that finds nothing inside the bundled demo catalog's footprint under another
    profile says to add ``--profile demo``.

    :raises UserError: as :func:`stream_run_scenes` (:class:`NoScenesError` stays one).
    """
    try:
        with api_url(cfg) as url:
            return stream_run_scenes(url, geometry, start, end, cfg, folder)
    except UserError as exc:
        if cfg.profile != "demo" and inside_demo(geometry):
            raise type(exc)(
                f"{exc}; this area lies inside the offline demo catalog: add --profile demo"
            ) from None
        raise
