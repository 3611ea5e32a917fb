"""What every tile of a run shares, written once: the region's outline and the run's STAC items.

A tile's work order (:class:`pipeline.run.tile_task.TileJob`) carries neither item dictionaries (a
Sentinel-2 L2A item is ~9 KB of JSON, ~7 KB pickled, ~33 KB as Python objects, and a 20 km tile
touches hundreds of them, most shared with its neighbours) nor the region's outline (hundreds of
KB for a continent). The driver writes both once into the workspace (:meth:`RunInputs.write`: a
JSON Lines file named by its SHA-256), and each work order carries a :class:`TileInputs`
reference: that file, its digest and the byte spans of the lines of the items touching the tile.
A worker process reads each line once and keeps it in a bounded cache keyed by the digest and
the offset, so a file rewritten for another run is never mistaken for this one.

Workers of every cluster kind already share the workspace folder (tiles are written there), so
this works on a LocalCluster, on Slurm and on a remote scheduler alike: nothing is held by the
scheduler, and a lost worker loses only its cache.

File layout (UTF-8 JSON Lines)::

    {"s2lc:run_inputs": 1, "region_wkb": "<hex WKB, EPSG:4326>"}
    <item 0 as JSON>
    ...
    <item N-1 as JSON>
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

from pipeline.base.atomic import remove_path
from pipeline.composite.window import FootprintIndex

__all__ = ["RunInputs", "TileInputs"]

FORMAT = 1
#: Name pattern of the file in the workspace's staging folder (the digest's first 16 hex digits).
FILE_GLOB = "inputs-*.jsonl"
#: Item lines a worker process keeps parsed (about 33 KB each, so ~130 MB at most): enough for
#: the tiles of a read group, which share their scenes (pipeline.reading.read_order).
CACHE_ITEMS = 4096


class RunInputs:
    """The run's inputs file on the driver: where it is, its digest, the byte span of every item
    and an R-tree of their footprints (no item dictionaries are kept).

    :meth:`for_window` gives a tile's reference (:class:`TileInputs`).
    """

    def __init__(
        self,
        path: Path,
        digest: str,
        header: int,
        spans: np.ndarray,
        footprints: list[Any],
    ) -> None:
        self.path = Path(path)
        self.digest = digest
        self.header = header
        self.spans = spans
        """(N, 2) int64: byte offset and length of each item's line."""
        self.index = FootprintIndex(footprints)

    def __len__(self) -> int:
        return len(self.spans)

    @classmethod
    def write(cls, folder: str | Path, geometry: Any, items: Iterable[dict]) -> RunInputs:
        """Write the region (shapely, EPSG:4326) and ``items`` (dicts, streamed, in the run's
        order) into ``folder``; returns the driver's handle.

        The file appears complete under ``inputs-<digest>.jsonl`` or not at all (written to a
        temporary name, then renamed);
        earlier runs' inputs files in ``folder`` are removed. Raises :class:`TypeError` for an
        item that is not JSON (items are STAC dicts), :class:`OSError` if the folder is not
        writable.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        header = (
            json.dumps(
                {"s2lc:run_inputs": FORMAT, "region_wkb": geometry.wkb_hex}, separators=(",", ":")
            ).encode()
            + b"\n"
        )
        spans: list[tuple[int, int]] = []
        footprints: list[Any] = []
        empty = shapely.Polygon()
        tmp = folder / f".inputs-{uuid.uuid4().hex[:12]}.partial"
        try:
            with open(tmp, "wb") as fh:
                fh.write(header)
                h.update(header)
                pos = len(header)
                for item in items:
                    line = json.dumps(item, separators=(",", ":")).encode() + b"\n"
                    fh.write(line)
                    h.update(line)
                    spans.append((pos, len(line)))
                    pos += len(line)
                    geom = item.get("geometry")
                    footprints.append(shape(geom) if geom else empty)
            digest = h.hexdigest()
            final = folder / f"inputs-{digest[:16]}.jsonl"
            os.replace(tmp, final)  # same content, same name: a resumed run's file is unchanged
        finally:
            remove_path(tmp)
        for old in folder.glob(FILE_GLOB):
            if old != final:
                remove_path(old)
        arr = np.asarray(spans, np.int64).reshape(-1, 2)
        return cls(final, digest, len(header), arr, footprints)

    @staticmethod
    def read_items(path: str | Path) -> Iterator[dict]:
        """The item dicts of an inputs file, in order, one at a time (a resumed run's scenes).

        :raises ValueError: the file is not an s2lc run inputs file.
        """
        with open(path, "rb") as fh:
            head = json.loads(fh.readline())
            if not isinstance(head, dict) or head.get("s2lc:run_inputs") != FORMAT:
                raise ValueError(f"{path} is not an s2lc run inputs file (format {FORMAT})")
            for line in fh:
                yield json.loads(line)

    def refs(self, indices: Iterable[int]) -> TileInputs:
        """The reference to the items at ``indices`` (in that order) and the region."""
        idx = np.asarray(list(indices), np.int64)
        return TileInputs(
            path=str(self.path),
            digest=self.digest,
            header=self.header,
            offsets=tuple(int(v) for v in self.spans[idx, 0]),
            lengths=tuple(int(v) for v in self.spans[idx, 1]),
        )

    def for_window(self, geobox: Any) -> TileInputs:
        """The reference a work order carries: the items whose footprint touches ``geobox``."""
        return self.refs(self.index.hits(geobox))


@dataclass(frozen=True)
class TileInputs:
    """A tile's reference to the run's inputs file: a few bytes per item, not the item.

    :meth:`items` and :meth:`region` read the file (in the worker) once per process.
    """

    path: str
    digest: str
    """SHA-256 of the file (hex): the cache key, so another run's file is never confused."""
    header: int
    """Length in bytes of the header line (the region)."""
    offsets: tuple[int, ...]
    """Byte offset of each item's line, in the order the tile reads them."""
    lengths: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.offsets)

    def items(self) -> tuple[dict, ...]:
        """The item dictionaries (cached per worker process; the same objects tile after tile).

        Raises :class:`FileNotFoundError` naming the file when this worker cannot see the
        workspace (every worker must share the run's output folder).
        """
        out: list[dict | None] = []
        missing = []
        with _LOCK:
            for k, off in enumerate(self.offsets):
                hit = _ITEMS.get((self.digest, off))
                if hit is not None:
                    _ITEMS.move_to_end((self.digest, off))
                else:
                    missing.append(k)
                out.append(hit)
        if missing:
            with _open(self.path) as fh:
                for k in missing:
                    fh.seek(self.offsets[k])
                    out[k] = json.loads(fh.read(self.lengths[k]))
            with _LOCK:
                for k in missing:
                    _ITEMS[(self.digest, self.offsets[k])] = out[k]
                while len(_ITEMS) > CACHE_ITEMS:
                    _ITEMS.popitem(last=False)
        return tuple(out)  # type: ignore[arg-type]

    def region(self) -> Any:
        """The region's outline (shapely, EPSG:4326), read once per worker process."""
        with _LOCK:
            geom = _REGIONS.get(self.digest)
        if geom is None:
            with _open(self.path) as fh:
                head = json.loads(fh.read(self.header))
            if head.get("s2lc:run_inputs") != FORMAT:
                raise ValueError(f"{self.path} is not an s2lc run inputs file (format {FORMAT})")
            geom = shapely.from_wkb(bytes.fromhex(head["region_wkb"]))
            with _LOCK:
                _REGIONS[self.digest] = geom
                while len(_REGIONS) > 4:
                    _REGIONS.popitem(last=False)
        return geom


_LOCK = threading.Lock()  # a worker runs tasks in threads
_ITEMS: OrderedDict[tuple[str, int], dict] = OrderedDict()
_REGIONS: OrderedDict[str, Any] = OrderedDict()


def _open(path: str):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the run's inputs file {path} is not visible on this worker: every worker must "
            "see the run's output folder (a shared filesystem)"
        ) from None


@dataclass(frozen=True)
class Scenes:
    """A run's scenes before they are written into its inputs file, without holding them: where
    to stream them from, how many, their ledger (the search's spool file for a fresh run,
    :class:`pipeline.stac.found.FoundScenes`; the inputs file when it resumes,
    :meth:`pipeline.run.workspace.Workspace.resumed_scenes`)."""

    items: Callable[[], Iterable[dict]]
    """A fresh iterator over the item dicts, in the run's order."""
    count: int
    ledger: Any
    """The :class:`pipeline.stac.scenes.SceneLedger` of every scene the search returned."""
    close: Callable[[], None] = lambda: None
    """Frees what holds them (the search's spool file)."""
    counts: dict[str, Any] | None = None
    """What the search did (:attr:`pipeline.stac.found.FoundScenes.counts`), None when resumed."""
