"""A run's output folder: staging area, per-tile completion markers, resume and publishing.

Layout of ``OUT/``::

    map.zarr  classes.tif  confidence.tif  valid_obs.tif      final products (published last)
    legend.json  quicklook.png  item.json  run.json
    .s2lc/manifest.json      output hash, resolved config, scene ledger, inputs file, calibration
    .s2lc/inputs-<sha>.jsonl the region and the items, that tiles' work orders reference
                             (pipeline.run.inputs)
    .s2lc/map.zarr           the store tiles write into, moved to OUT/map.zarr when complete
    .s2lc/tiles/<id>.json    written (atomically) only after a tile's results are fully written
    .s2lc/tiles/<id>/        per-tile GeoTIFFs, mosaicked into the COGs
    .s2lc/failed/<id>.json   a tile that failed (:class:`TileFailure`), removed once it is done

Nothing appears under a final name until it is complete: tiles write into the staging area and
the products are moved into place by :meth:`Workspace.publish`. A rerun with the same output hash
skips tiles that have a marker; a different hash refuses to mix, unless ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.base.errors import UserError
from pipeline.base.jsonio import write_json
from pipeline.run.inputs import RunInputs, Scenes
from pipeline.writers.layers import cog_layers, product_files

_log = logging.getLogger(__name__)

#: Products of every run: the store, a COG per layer (pipeline.writers.layers), the rest.
PRODUCTS = (
    "map.zarr",
    *product_files("map"),
    "legend.json",
    "quicklook.png",
    "item.json",
    "run.json",
)
#: Products of a gridded run (EPSG:3035, 100 km cells; see pipeline.writers.gridded).
GRIDDED_PRODUCTS = (
    "map.zarr",
    "cells",
    *product_files("map", suffix=".vrt"),
    "collection.json",
    "legend.json",
    "quicklook.png",
    "run.json",
)
#: Sidecars of the products (GDAL category names of class layers for QGIS), cleared with them.
SIDECARS = tuple(
    f"{s.cog}.tif.aux.xml" for s in cog_layers("map", "postprocess") if s.kind == "classes"
)
#: Products only some runs make (``--save-embeddings``; the true-colour composite and its
#: quicklook when the tiles wrote one), cleared with the others so ``--overwrite`` leaves none stale.
OPTIONAL_PRODUCTS = (
    *product_files("field", "ood", "postprocess", "tile"),
    *(f"{s.cog}.png" for s in cog_layers("tile") if s.kind == "rgb"),
    "model_card.json",  # beside the field (pipeline.run.publishing.write_model_card)
)


@dataclass(frozen=True)
class TileFailure:
    """Why a tile is not done: the record kept per failed tile (run.json, ``.s2lc/failed/``).

    A tile with a failure is never counted as done; a rerun redoes it (and only the tiles
    without a done marker).
    """

    tile: str
    """Tile id (``r0003_c0012``)."""
    error_kind: str
    """``read_failure`` (input pixels could not be read: HTTP error after retries, corrupt file;
    see :class:`pipeline.reading.cube.ReadFailure`) or ``error`` (anything else, e.g. a lost worker)."""
    message: str
    """One line: the exception's type and first line."""
    attempts: int
    """Attempts made so far, over all runs of this output (1 + retries per run)."""
    status: str = "failed"
    """Always ``failed`` here (a done tile has no failure record)."""
    http_status: int | None = None
    """HTTP status of a read failure, where there was one."""
    scenes: tuple[str, ...] = ()
    """Scenes whose read failed (read failures)."""
    time: str = ""
    """UTC time of the last attempt (ISO 8601)."""
    where: str = ""
    """Where the last attempt raised: the innermost frames of the worker's traceback
    (``file.py:LINE in function``, innermost first, joined by `` < ``), so an error with no
    message still says which code raised it."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scenes"] = list(self.scenes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TileFailure:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["scenes"] = tuple(known.get("scenes", ()))
        return cls(**known)


class Workspace:
    """Paths and state of one output folder."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.work = self.out / ".s2lc"
        self.manifest_path = self.work / "manifest.json"
        self.store = self.work / "map.zarr"
        self.tiles = self.work / "tiles"
        self.cells = self.out / "cells"
        self.failed = self.work / "failed"

    # -- checks that must happen before anything is written -------------------------------
    def check_writable(self) -> None:
        """Fail early, with nothing written, if the output folder cannot be created or written.

        Probes with a real temporary file in the nearest existing ancestor (permission bits do
        not stop root; read-only and full filesystems do), and removes it.
        """
        probe_dir = self.out
        while not probe_dir.exists():
            if probe_dir.parent == probe_dir:
                break
            probe_dir = probe_dir.parent
        if not probe_dir.is_dir():
            raise UserError(f"output path {self.out}: {probe_dir} is not a folder")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".s2lc-probe-", dir=probe_dir)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise UserError(f"output path {self.out} is not writable ({exc.strerror})") from None

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def resumed_scenes(self, manifest: dict[str, Any]) -> Scenes:
        """The scenes of the run being resumed, from its ``manifest``: streamed from the run's
        inputs file (or, for a folder of an older s2lc, listed in the manifest itself).

        :raises UserError: the inputs file the manifest names is missing.
        """
        from pipeline.stac.scenes import SceneLedger

        ledger = SceneLedger.from_dict(manifest.get("ledger"))
        if "items" in manifest:  # written by s2lc before the inputs file held the scenes
            items = manifest["items"]
            _log.info("resuming %s: %d scenes from the manifest", self.out, len(items))
            return Scenes(lambda: items, len(items), ledger)
        path = self.work / str(manifest.get("inputs"))
        if not path.is_file():
            raise UserError(
                f"cannot resume {self.out}: its scenes file {path.name} is missing; "
                "run again with --overwrite"
            )
        n = int(manifest["scenes"])
        _log.info("resuming %s: %d scenes from %s", self.out, n, path.name)
        return Scenes(lambda: RunInputs.read_items(path), n, ledger)

    def check_conflict(
        self, output_hash: str, overwrite: bool, settings: dict[str, Any] | None = None
    ) -> None:
        """Refuse (read-only, before any work) to mix outputs of different settings.

        ``settings``: the run's flat settings that enter the output hash (JSON-plain); the
        refusal then names each one that differs from the folder's manifest.
        """
        if overwrite:
            return
        existing = self.manifest()
        if existing is not None and existing.get("output_hash") != output_hash:
            changed = _changed_settings(existing.get("config") or {}, settings or {})
            raise UserError(
                f"{self.out} holds a map made with other settings ({changed}; hash "
                f"{existing.get('output_hash')} != {output_hash}); use --overwrite or another --out"
            )
        if existing is None and any((self.out / p).exists() for p in PRODUCTS + GRIDDED_PRODUCTS):
            raise UserError(
                f"{self.out} already holds map products; use --overwrite or another --out"
            )

    def prepare(
        self, output_hash: str, overwrite: bool, settings: dict[str, Any] | None = None
    ) -> bool:
        """Make the folder ready for a run with ``output_hash``; True if resuming earlier work.

        Existing outputs of another configuration are an error unless ``overwrite``, which
        removes the products and the staging area (nothing else in the folder).
        """
        self.check_writable()
        self.check_conflict(output_hash, overwrite, settings)
        resuming = self.manifest() is not None and not overwrite
        if overwrite:
            self.clear()
        self.tiles.mkdir(parents=True, exist_ok=True)
        return resuming

    def clear(self) -> None:
        for name in dict.fromkeys(PRODUCTS + GRIDDED_PRODUCTS + SIDECARS + OPTIONAL_PRODUCTS):
            p = self.out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if self.work.exists():
            shutil.rmtree(self.work)

    def save_manifest(self, data: dict[str, Any]) -> None:
        write_json(self.manifest_path, data)

    # -- tiles ------------------------------------------------------------------------------
    def tile_dir(self, tile_id: str) -> Path:
        return self.tiles / tile_id

    def marker(self, tile_id: str) -> Path:
        return self.tiles / f"{tile_id}.json"

    def done_tiles(self) -> dict[str, dict[str, Any]]:
        """Stats of every tile that finished, keyed by tile id."""
        done = {}
        for p in sorted(self.tiles.glob("*.json")):
            try:
                done[p.stem] = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # a marker is only ever complete (atomic); ignore strays
        return done

    def record_tile(self, tile_id: str, outcome: dict[str, Any] | TileFailure) -> None:
        """Keep how a tile's attempt ended: its stats as its done marker (:meth:`mark_done`), or
        why it failed (:meth:`record_failure`)."""
        if isinstance(outcome, TileFailure):
            self.record_failure(outcome)
        else:
            self.mark_done(tile_id, outcome)

    def mark_done(self, tile_id: str, stats: dict[str, Any]) -> None:
        write_json(self.marker(tile_id), stats)
        self.failure_path(tile_id).unlink(missing_ok=True)

    def failure_path(self, tile_id: str) -> Path:
        return self.failed / f"{tile_id}.json"

    def record_failure(self, failure: TileFailure) -> None:
        """Keep why a tile failed (atomically); the tile stays not done."""
        write_json(self.failure_path(failure.tile), failure.to_dict())

    def failed_tiles(self) -> dict[str, TileFailure]:
        """The failure record of every tile that failed and is not done since, by tile id."""
        out = {}
        for p in sorted(self.failed.glob("*.json")) if self.failed.exists() else ():
            if self.marker(p.stem).exists():
                continue
            try:
                out[p.stem] = TileFailure.from_dict(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError, TypeError):
                continue
        return out

    def drop_tile_rasters(self) -> None:
        """Remove the per-tile GeoTIFFs once the COG mosaics exist (markers are kept)."""
        for d in self.tiles.iterdir() if self.tiles.exists() else ():
            if d.is_dir():
                shutil.rmtree(d)

    # -- publishing -------------------------------------------------------------------------
    def reclaim_store(self) -> bool:
        """Move a published store back to staging when the run is being redone (resumed after
        its completion record was lost); True if it was moved. Tiles then add to it again."""
        final = self.out / "map.zarr"
        if final.exists() and not self.store.exists():
            os.replace(final, self.store)
            return True
        return False

    def publish_store(self) -> Path:
        """Move the staging Zarr store under its final name (atomic rename on one filesystem)."""
        final = self.out / "map.zarr"
        if final.exists():
            shutil.rmtree(final)
        os.replace(self.store, final)
        return final


def _changed_settings(before: dict[str, Any], now: dict[str, Any]) -> str:
    """``"period: annual -> quarterly, scl_mask: ..."`` for the keys of ``now`` whose value
    differs from ``before`` (a run's manifest config); a content change otherwise."""
    diffs = [
        f"{k}: {before.get(k, '(unset)')} -> {v}"
        for k, v in now.items()
        if before.get(k, "(unset)") != v
    ]
    if diffs:
        return ", ".join(diffs)
    return "same options: the checkpoint's or head's file content, or the s2lc version, differs"
