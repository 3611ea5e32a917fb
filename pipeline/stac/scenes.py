"""The scene ledger: every item a search returned, used or dropped with its reason. Pure, no I/O.

A mapping run must account for every scene. :class:`SceneLedger` records, per item id, whether the
scene is used or why it was dropped (:data:`REASONS`), plus warnings that do not drop it (an
offset flag its pixels contradict). :func:`select_scenes` applies the driver's rules in order:

1. outside the period (a server that ignores the datetime filter),
2. cloud filter (``eo:cloud_cover`` above the limit, for servers that ignore the filter),
3. unknown asset layout / missing band (:func:`pipeline.stac.bands.asset_keys`),
4. superseded duplicate: one acquisition (platform, sensing second, MGRS tile) published more
   than once (two processing baselines, or a reprocessing) counts once; the newest baseline, then
   the newest generation, is kept (:func:`acquisition_key`, :func:`publication_rank`).

Read failures are added by the run when tiles report them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.stac.bands import MissingBand, UnknownAssetLayout, asset_keys, processing_baseline

REASONS: dict[str, str] = {
    "outside_period": "outside the period",
    "cloud": "cloud filter",
    "unknown_layout": "unknown asset layout",
    "missing_band": "missing band",
    "duplicate": "superseded duplicate",
    "read_failure": "read failure",
}
"""Drop reasons (keys stored in run.json) and how the log names them."""


@dataclass
class SceneLedger:
    """Per scene id: ``{"status": "used"|"dropped", "reason", "detail", "datetime", "warnings"}``.

    Ordered by acquisition time, then id, once :meth:`sort` ran (a search's pages may arrive
    in any order); serialises with :meth:`to_dict` / :meth:`from_dict`.
    """

    scenes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def sort(self) -> None:
        """Order the scenes by acquisition time (those without one first), then id."""
        self.scenes = dict(
            sorted(self.scenes.items(), key=lambda kv: (kv[1].get("datetime") or "", kv[0]))
        )

    def use(self, scene_id: str, when: str | None = None) -> None:
        self.scenes[scene_id] = {"status": "used", "datetime": when}

    def drop(self, scene_id: str, reason: str, detail: str = "", when: str | None = None) -> None:
        """Mark a scene dropped; ``reason`` is a key of :data:`REASONS`."""
        if reason not in REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        entry = self.scenes.setdefault(scene_id, {"datetime": when})
        entry.update({"status": "dropped", "reason": reason, "detail": detail})
        if when is not None:
            entry["datetime"] = when

    def warn(self, scene_id: str, text: str) -> None:
        """Attach a warning to a scene (it stays used)."""
        entry = self.scenes.setdefault(scene_id, {"status": "used", "datetime": None})
        warnings = entry.setdefault("warnings", [])
        if text not in warnings:
            warnings.append(text)

    def read_failure(
        self,
        scene_id: str,
        detail: str,
        tile: str | None = None,
        *,
        status: int | None = None,
        permanent: bool = False,
        asset: str | None = None,
    ) -> None:
        """A scene whose pixels could not be read (in ``tile``): dropped, with the reason.

        ``status`` (HTTP status or None), ``permanent`` (True: the object is gone or corrupt, the
        map was made without the scene; False: its tiles failed) and ``asset`` (the href) are
        kept in the entry; tiles accumulate over calls (and over resumed runs).
        """
        entry = self.scenes.get(scene_id, {})
        tiles = list(entry.get("tiles", []))
        if tile and tile not in tiles:
            tiles.append(tile)
        self.drop(scene_id, "read_failure", detail)
        entry = self.scenes[scene_id]
        if tiles:
            entry["tiles"] = tiles
        entry["permanent"] = bool(permanent or entry.get("permanent"))
        if status is not None:
            entry["http_status"] = status
        if asset:
            entry["asset"] = asset

    def unreadable(self) -> list[str]:
        """Ids of the scenes dropped because they cannot be read ever (``permanent``)."""
        return [
            k
            for k, v in self.scenes.items()
            if v.get("reason") == "read_failure" and v.get("permanent")
        ]

    def unreadable_lines(self) -> list[str]:
        """One line per scene the map was made without because it cannot be read (for the
        log's warnings): its id, the HTTP status (or corrupt), the asset and its tiles' count."""
        out = []
        for sid in self.unreadable():
            e = self.scenes[sid]
            what = f"HTTP {e['http_status']}" if e.get("http_status") else "corrupt or unreadable"
            out.append(
                f"scene {sid} cannot be read ({what}, {e.get('asset') or 'asset unknown'}): the "
                f"map of {len(e.get('tiles', []))} tile(s) was made from the other scenes; see "
                "run.json's scene_ledger"
            )
        return out

    @property
    def used(self) -> list[str]:
        return [k for k, v in self.scenes.items() if v.get("status") == "used"]

    def counts(self) -> dict[str, int]:
        """``{"returned": n, "used": n, <reason>: n, "warned": n}`` (reasons with n > 0 only)."""
        c = Counter(v.get("reason") for v in self.scenes.values() if v.get("status") == "dropped")
        out = {"returned": len(self.scenes), "used": len(self.used)}
        out.update({r: c[r] for r in REASONS if c.get(r)})
        warned = sum(1 for v in self.scenes.values() if v.get("warnings"))
        if warned:
            out["warned"] = warned
        return out

    def summary_lines(self) -> list[str]:
        """One line per reason, for the log (first few scene ids and one detail each)."""
        counts = self.counts()
        lines = [f"scene ledger: {counts['returned']} returned, {counts['used']} used"]
        for reason, label in REASONS.items():
            ids = [k for k, v in self.scenes.items() if v.get("reason") == reason]
            if ids:
                detail = self.scenes[ids[0]].get("detail") or ""
                more = f" (+{len(ids) - 3} more)" if len(ids) > 3 else ""
                lines.append(
                    f"  dropped, {label}: {len(ids)}: {', '.join(ids[:3])}{more}"
                    + (f"; e.g. {detail}" if detail else "")
                )
        warned = [k for k, v in self.scenes.items() if v.get("warnings")]
        if warned:
            more = f" (+{len(warned) - 3} more)" if len(warned) > 3 else ""
            lines.append(
                f"  used with a warning: {len(warned)}: {', '.join(warned[:3])}{more}; e.g. "
                f"{self.scenes[warned[0]]['warnings'][0]}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "scenes": self.scenes}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> SceneLedger:
        return cls({k: dict(v) for k, v in ((doc or {}).get("scenes") or {}).items()})


_TILE_IN_NAME = re.compile(r"_T(\d{2}[C-X][A-Z]{2})_")
_TILE_IN_ID = re.compile(r"^S2[A-D]_(\d{2}[C-X][A-Z]{2})_")
_GENERATION_IN_NAME = re.compile(r"_(\d{8}T\d{6})(?:\.SAFE)?$")


def mgrs_tile(props: Mapping[str, Any], item_id: str = "") -> str | None:
    """The item's MGRS tile (``32UPU``) from any provider's properties, or None."""
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"]).lstrip("T")
    for prefix in ("mgrs", "sentinel"):
        zone = props.get(f"{prefix}:utm_zone")
        band = props.get(f"{prefix}:latitude_band")
        square = props.get(f"{prefix}:grid_square")
        if zone is not None and band and square:
            return f"{int(zone):02d}{band}{square}"
    code = str(props.get("grid:code", ""))
    if code.startswith("MGRS-"):
        return code[5:]
    for key in ("s2:product_uri", "sentinel:product_id", "s2:granule_id"):
        m = _TILE_IN_NAME.search(str(props.get(key, "")) + "_")
        if m:
            return m.group(1)
    m = _TILE_IN_ID.search(item_id)
    return m.group(1) if m else None


def _platform(props: Mapping[str, Any], item_id: str) -> str:
    p = str(props.get("platform", "")).lower().replace(" ", "-")
    if p:
        return p[-1] if p.startswith("sentinel-2") else p
    return item_id[2:3].lower() if item_id.startswith("S2") else "?"


def _datetime(props: Mapping[str, Any]) -> dt.datetime | None:
    text = props.get("datetime") or props.get("start_datetime")
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def acquisition_key(item: Mapping[str, Any]) -> tuple[str, ...]:
    """What identifies one acquisition across publications: (platform, sensing second, tile).

    Items without a known tile or datetime get a key of their own (never merged).
    """
    props = item.get("properties", {})
    when, tile = _datetime(props), mgrs_tile(props, str(item.get("id", "")))
    if when is None or tile is None:
        return ("id", str(item.get("id")))
    return (_platform(props, str(item.get("id", ""))), f"{when:%Y%m%dT%H%M%S}", tile)


def publication_rank(item: Mapping[str, Any], baseline: tuple[int, int] | None) -> tuple[Any, ...]:
    """Sort key of publications of one acquisition: higher is newer (baseline, generation, id).

    ``baseline``: the item's :func:`~pipeline.stac.bands.processing_baseline` (None: unknown,
    ranked below every known one), read with its asset layout."""
    props = item.get("properties", {})
    baseline = baseline or (-1, -1)
    generated = str(props.get("s2:generation_time") or "")
    if not generated:
        for key in ("s2:product_uri", "sentinel:product_id"):
            m = _GENERATION_IN_NAME.search(str(props.get(key, "")))
            if m:
                generated = m.group(1)
                break
    return (baseline, generated.replace("-", "").replace(":", ""), str(item.get("id")))


def select_scenes(
    items: Iterable[Mapping[str, Any]],
    start: dt.date,
    end: dt.date,
    max_cloud: float,
    ledger: SceneLedger | None = None,
) -> tuple[list[Mapping[str, Any]], SceneLedger]:
    """The usable items (sorted by datetime, id) and the ledger accounting for all of them.

    Args:
        items: STAC item dicts as returned by the search (unique ids).
        start, end: the period, inclusive dates (UTC).
        max_cloud: maximum ``eo:cloud_cover`` in percent; items without it are kept.
        ledger: a ledger to add to (a new one by default).
    """
    sel = SceneSelector(start, end, max_cloud, ledger)
    for it in items:
        sel.add(it, it)
    return sel.finish(), sel.ledger


class SceneSelector:
    """:func:`select_scenes` one item at a time, keeping only a small reference per usable item.

    :meth:`add` applies rules 1-3 and records the item in the ledger; :meth:`finish` drops the
    superseded duplicates (rule 4) and returns the references of the kept items sorted by
    (datetime, id). A streamed search keeps each item's byte span in a spool file as its
    reference, so no item dictionary is held (:mod:`pipeline.stac.found`).
    """

    def __init__(
        self, start: dt.date, end: dt.date, max_cloud: float, ledger: SceneLedger | None = None
    ) -> None:
        self.start, self.end, self.max_cloud = start, end, max_cloud
        self.ledger = ledger if ledger is not None else SceneLedger()
        self._candidates: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}

    def add(self, it: Mapping[str, Any], ref: Any) -> bool:
        """Record item ``it`` (a STAC dict); True when usable so far (``ref`` kept for it)."""
        ledger = self.ledger
        sid, props = str(it["id"]), it.get("properties", {})
        when = _datetime(props)
        stamp = when.isoformat() if when else None
        if when is not None and not self.start <= when.date() <= self.end:
            ledger.drop(sid, "outside_period", f"acquired {when:%Y-%m-%d}", stamp)
            return False
        cc = props.get("eo:cloud_cover")
        if cc is not None and float(cc) > self.max_cloud:
            ledger.drop(sid, "cloud", f"eo:cloud_cover {float(cc):g} > {self.max_cloud:g}", stamp)
            return False
        try:
            asset_keys(it)
        except UnknownAssetLayout as exc:
            ledger.drop(sid, "unknown_layout", str(exc), stamp)
            return False
        except MissingBand as exc:
            ledger.drop(sid, "missing_band", str(exc), stamp)
            return False
        baseline = processing_baseline(it)
        ledger.use(sid, stamp)
        self._candidates.setdefault(acquisition_key(it), []).append(
            (publication_rank(it, baseline), when or _EPOCH, sid, ref)
        )
        return True

    def finish(self) -> list[Any]:
        """The kept items' references, sorted by (datetime, id); duplicates dropped in the
        ledger."""
        kept = []
        for group in self._candidates.values():
            group = sorted(group, key=lambda g: g[0], reverse=True)
            kept.append(group[0])
            for older in group[1:]:
                self.ledger.drop(
                    older[2],
                    "duplicate",
                    f"same acquisition as {group[0][2]} (newer baseline or generation)",
                )
        self._candidates = {}
        self.ledger.sort()
        kept.sort(key=lambda g: (g[1], g[2]))
        return [g[3] for g in kept]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def monthly_coverage(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per calendar month (``YYYY-MM``): used scenes and clear-sky equivalents.

    A scene's clear-sky equivalent is ``1 - eo:cloud_cover / 100`` (1 when unknown): a month with
    4 scenes at 75 % cloud has 1.0 clear-sky equivalent.
    """
    out: dict[str, dict[str, float]] = {}
    for it in items:
        props = it.get("properties", {})
        when = _datetime(props)
        if when is None:
            continue
        m = out.setdefault(f"{when:%Y-%m}", {"scenes": 0, "clear_equivalent": 0.0})
        cc = props.get("eo:cloud_cover")
        m["scenes"] += 1
        m["clear_equivalent"] += 1.0 - (float(cc) / 100.0 if cc is not None else 0.0)
    return dict(sorted(out.items()))
