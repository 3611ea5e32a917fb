"""Sentinel-2 L2A scene search: the only module that talks to a STAC API (pystac-client).

``search_scenes(geometry, start, end, cfg)`` searches a profile's API (see
:mod:`pipeline.stac.profiles`) by ``intersects`` and datetime and pages through *everything* the
API matched: the count is checked against ``numberMatched`` (or ``context.matched``) where the API
gives it, and a short count is an error; a search matching more than ``split_above`` items is split
per calendar month (then by halves of the period), the months fetched ``parallel`` at a time, so
large and continental searches stay within API limits. The API is sent a few-vertex outline
containing the region (:mod:`pipeline.stac.outline`) and the footprints are filtered exactly
against the region here, so the items are those of an ``intersects`` search with the region
itself. A run streams the pages into a spool file instead of a list (:mod:`pipeline.stac.found`). Cloud cover is filtered server-side where the API conforms to the filter (or query)
extension and always client-side as well (many servers, rustac among them, ignore filters). 5xx
responses, connection errors and timeouts are retried with exponential backoff.

Every returned item lands in a :class:`~pipeline.stac.scenes.SceneLedger`: used, or dropped with its
reason (outside the period, cloud filter, unknown asset layout, missing band, superseded
duplicate). No URL is signed here: signing happens when pixels are read (:mod:`pipeline.reading.cube`).
:func:`search_items` returns the usable items only. A :class:`~pipeline.base.errors.UserError` says
when the API is unreachable, nothing matches, or no returned scene is usable.
The ``demo`` profile generates the bundled catalog if needed and serves it on loopback for the
duration of the search.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.base.errors import UserError
from pipeline.stac.hrefs import absolute_href
from pipeline.stac.outline import exact_filter, search_outline
from pipeline.stac.profiles import PROFILES, StacProfile, get_profile, unsigned_href
from pipeline.stac.scenes import REASONS, SceneLedger, select_scenes

_log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class SearchConfig:
    """Where to search and what counts as a usable scene."""

    profile: str = "earth-search"
    """A name from :data:`pipeline.stac.profiles.PROFILES` (earth-search, planetary-computer, demo,
    custom)."""
    stac_url: str | None = None
    """STAC API root overriding the profile's (required for ``custom``)."""
    collection: str | None = None
    """Collection id overriding the profile's (``sentinel-2-l2a``)."""
    max_cloud: float = 60.0
    """Maximum scene cloud cover (``eo:cloud_cover``, percent)."""
    page_size: int = 1000
    """Items per page requested from the API (1,000: Planetary Computer's maximum; an API that
    allows fewer sends fewer, and paging goes on). Each page costs a STAC API a query of its
    own: on pgstac, pages of 1,000 took 30 % less time per item than pages of 100."""
    max_items: int | None = None
    """Stop after this many items (None: everything the API matched). A search stopped by it
    logs a WARNING saying the result was cut."""
    split_above: int = 5_000
    """A search the API says matches more items than this is split per month (then in halves)."""
    parallel: int = 4
    """Parts of a split search (months) fetched at once, each in a thread of its own (1: one
    after the other). Pages arrive in no fixed order; the run orders its scenes afterwards."""
    retries: int = 5
    """Retries per request on 5xx/429, connection errors and timeouts."""
    backoff: float = 0.5
    """Exponential backoff factor in seconds (0.5, 1, 2, ... between retries)."""
    timeout: float = 60.0
    """Seconds to wait for a response."""

    def __post_init__(self) -> None:
        get_profile(self.profile)
        if self.profile == "custom" and not self.stac_url:
            raise UserError("STAC profile 'custom' needs a STAC API URL (--stac-url)")
        if not 0 <= self.max_cloud <= 100:
            raise UserError(f"max_cloud must be within 0..100 percent, got {self.max_cloud}")
        if self.page_size < 1 or (self.max_items is not None and self.max_items < 1):
            raise UserError("page_size and max_items must be >= 1")
        if self.split_above < 1 or self.parallel < 1:
            raise UserError("split_above and parallel must be >= 1")
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise UserError("retries and backoff must be >= 0 and timeout > 0")
        if self.stac_url and not self.stac_url.startswith(("http://", "https://")):
            raise UserError(f"STAC API URL must start with http:// or https://: {self.stac_url}")

    @property
    def resolved_profile(self) -> StacProfile:
        return PROFILES[self.profile]

    @property
    def resolved_collection(self) -> str:
        return self.collection or self.resolved_profile.collection


def stac_io(cfg: SearchConfig) -> Any:
    """A pystac-client StacApiIO with urllib3 retries (backoff, 5xx/429, all methods incl. POST)."""
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(
        total=cfg.retries,
        connect=cfg.retries,
        read=cfg.retries,
        status=cfg.retries,
        backoff_factor=cfg.backoff,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,  # POST /search is idempotent
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    return StacApiIO(timeout=cfg.timeout, max_retries=retry)


@contextlib.contextmanager
def api_url(cfg: SearchConfig) -> Iterator[str]:
    """The API root to search; for ``demo`` without a URL, a local server for the duration."""
    if cfg.stac_url:
        yield cfg.stac_url.rstrip("/")
        return
    profile = cfg.resolved_profile
    if profile.name == "demo":
        from pipeline.testing.demo import ensure_demo_catalog
        from pipeline.testing.stac_server import serve

        with serve(ensure_demo_catalog()) as url:
            yield url
        return
    assert profile.url is not None  # custom without URL is rejected by SearchConfig
    yield profile.url


def cloud_filter(max_cloud: float) -> dict[str, Any]:
    """The CQL2-JSON filter ``eo:cloud_cover <= max_cloud``."""
    return {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}


def _datetime_range(start: dt.date, end: dt.date) -> str:
    return f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59.999Z"


@dataclass(frozen=True)
class SearchResult:
    """A search's usable items and the ledger of everything it returned."""

    items: list[Any]
    """Usable pystac Items, sorted by datetime and id (one per acquisition)."""
    ledger: SceneLedger
    """Every returned item: used, or dropped with its reason."""
    url: str
    """The API searched."""
    matched: int | None
    """What the API said it matched (summed over split searches), None where it does not say."""


class NoScenesError(UserError):
    """No Sentinel-2 scene intersects the area in the period under the cloud filter.

    A :class:`~pipeline.base.errors.UserError` (one line, exit code 2) that callers can tell apart by
    type: point extraction takes it as an empty series (points at sea), a map run reports it.
    """


def search_items(geometry: Any, start: dt.date, end: dt.date, cfg: SearchConfig) -> list[Any]:
    """The usable Sentinel-2 L2A items of :func:`search_scenes` (pystac Items)."""
    return search_scenes(geometry, start, end, cfg).items


def search_scenes(geometry: Any, start: dt.date, end: dt.date, cfg: SearchConfig) -> SearchResult:
    """Sentinel-2 L2A items intersecting ``geometry`` (shapely, EPSG:4326) from start to end.

    Items are sorted by datetime, unique by id and by acquisition (the newest processing baseline
    of each), inside the period, with ``eo:cloud_cover <= cfg.max_cloud`` (items without cloud
    cover are kept) and a known asset layout. Raises UserError when nothing matches, no returned
    scene is usable (naming the reasons and, for unknown layouts, the keys found), or the API
    cannot be reached or returns fewer items than it matched.
    """
    import pystac

    kept, ledger, url, matched = _kept(geometry, start, end, cfg)
    # Links to the API's root would be resolved (over HTTP) whenever an item is serialised.
    items = [
        pystac.Item.from_dict(
            {**d, "links": [lk for lk in d.get("links", []) if lk.get("rel") not in _API_LINKS]}
        )
        for d in kept
    ]
    return SearchResult(items, ledger, url, matched)


def raise_none_usable(
    ledger: SceneLedger, returned: int, url: str, start: dt.date, end: dt.date, cfg: SearchConfig
) -> None:
    """Why a search kept no scene, as one line: none found (or all over the cloud limit), or
    every scene dropped for a reason of the ``ledger`` (the counts and the first detail).

    Raises:
        NoScenesError: nothing matched, or every scene was over ``cfg.max_cloud``.
        UserError: scenes were returned but none is usable.
    """
    counts = ledger.counts()
    if not returned or counts.get("cloud", 0) == returned:
        raise NoScenesError(
            f"no Sentinel-2 scenes in {cfg.resolved_collection} at {url} intersect the area "
            f"between {start} and {end} with cloud cover <= {cfg.max_cloud:g}% ({returned} "
            "before the cloud filter); widen the period, raise --max-cloud or check the area"
        )
    reasons = ", ".join(f"{REASONS[r]}: {n}" for r, n in counts.items() if r in REASONS)
    first = next(v.get("detail") for v in ledger.scenes.values() if v.get("detail"))
    raise UserError(
        f"none of the {returned} scenes {url} returned is usable ({reasons}); e.g. {first}"
    )


def _kept(
    geometry: Any, start: dt.date, end: dt.date, cfg: SearchConfig
) -> tuple[list[dict], SceneLedger, str, int | None]:
    """:func:`search_scenes`' usable item dicts, ledger, API URL and matched count."""
    if end < start:
        raise UserError(f"the period ends ({end}) before it starts ({start})")
    with api_url(cfg) as url:
        found, matched = _search(url, geometry, start, end, cfg)
    collection = cfg.resolved_collection
    kept, ledger = select_scenes(found, start, end, cfg.max_cloud)
    for line in ledger.summary_lines():
        _log.info("%s", line)
    if not kept:
        raise_none_usable(ledger, len(found), url, start, end, cfg)
    _log.info("%d scene(s) from %s (%s) for %s..%s", len(kept), url, collection, start, end)
    return kept, ledger, url, matched


_API_LINKS = ("root", "parent")


def run_item(d: dict) -> dict:
    """A search's item dict as a run keeps it (the API's dict otherwise as it is): the API's
    root/parent links dropped (they would be resolved over HTTP whenever the item is
    serialised), relative asset hrefs resolved against the self link now (pystac's rule,
    :func:`pipeline.stac.hrefs.absolute_href`), so the inputs file a resumed run reads them from
    needs no link, and every href unsigned (signatures expire: signed when read). An href that
    cannot be resolved is left as it is (the reader skips the scene and says why)."""
    import pystac

    d = {**d, "links": [lk for lk in d.get("links", []) if lk.get("rel") not in _API_LINKS]}
    assets = {k: dict(a) for k, a in (d.get("assets") or {}).items()}
    relative = [k for k, a in assets.items() if not _is_absolute(str(a.get("href", "")))]
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


def _is_absolute(href: str) -> bool:
    from urllib.parse import urlsplit

    return bool(urlsplit(href).scheme) or href.startswith("/")


def inside_demo(geometry) -> bool:
    """True when ``geometry`` (EPSG:4326) lies inside the bundled demo catalog's footprint."""
    from shapely.geometry import box

    from aoi import to_crs
    from pipeline.testing.demo import DEMO_BOUNDS, DEMO_EPSG

    return box(*DEMO_BOUNDS).contains(to_crs(geometry, f"EPSG:{DEMO_EPSG}"))


def _search(
    url: str, geometry: Any, start: dt.date, end: dt.date, cfg: SearchConfig
) -> tuple[list[dict[str, Any]], int | None]:
    """Every item dict the API matched (unique by id) and what it said it matched."""
    unique: dict[str, dict] = {}
    counts: dict[str, Any] = {}
    for page in search_pages(url, geometry, start, end, cfg, counts):
        for f in page:
            unique.setdefault(str(f["id"]), f)
    _log.debug(
        "%d found (%d unique), %s matched", counts["returned"], len(unique), counts["matched"]
    )
    return list(unique.values()), counts["matched"]


def search_pages(
    url: str,
    geometry: Any,
    start: dt.date,
    end: dt.date,
    cfg: SearchConfig,
    counts: dict[str, Any] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """The API's pages of item dicts, one list at a time, footprints meeting ``geometry`` only.

    The API is asked with :func:`pipeline.stac.outline.search_outline` (few vertices, containing
    the region: a detailed outline costs the server on every page) and the footprints are then
    filtered exactly against ``geometry`` here (:func:`pipeline.stac.outline.exact_filter`), so
    the items are those an ``intersects`` search with ``geometry`` itself returns. ``counts``
    (when given) receives ``returned`` (items the API sent), ``matched`` (what it said it
    matched, None where it does not say), ``kept`` (after the exact filter) and ``pages``.
    Items may repeat across pages (callers keep each id once).

    Raises:
        UserError: as :func:`search_scenes` (unreachable API, a truncated result).
    """
    import requests
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.exceptions import APIError

    counts = counts if counts is not None else {}
    counts.update(returned=0, matched=None, kept=0, pages=0, parts=[])
    keep = exact_filter(geometry)
    outline = search_outline(geometry)
    try:
        client = Client.open(url, stac_io=stac_io(cfg))
        if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
            raise UserError(f"{url} is not a STAC API with item search")
        kwargs: dict[str, Any] = {}
        if client.conforms_to(ConformanceClasses.FILTER):
            kwargs = {"filter": cloud_filter(cfg.max_cloud), "filter_lang": "cql2-json"}
        elif client.conforms_to(ConformanceClasses.QUERY):
            kwargs = {"query": {"eo:cloud_cover": {"lte": cfg.max_cloud}}}
        state = {"left": cfg.max_items}
        for page in _fetch(client, outline, start, end, cfg, kwargs, url, counts, state):
            counts["returned"] += len(page)
            counts["pages"] += 1
            page = [f for f in page if keep(f)]
            counts["kept"] += len(page)
            yield page
        parts = counts["parts"]
        counts["matched"] = None if not parts or None in parts else sum(parts)
    except UserError:
        raise
    except APIError as exc:
        if getattr(exc, "status_code", None) is not None:
            raise UserError(f"the STAC API at {url} failed: {_first_line(exc)}") from None
        raise UserError(
            f"cannot reach the STAC API at {url} after {cfg.retries} retries: {_first_line(exc)}"
        ) from None
    except (requests.RequestException, OSError) as exc:
        raise UserError(
            f"cannot reach the STAC API at {url} after {cfg.retries} retries: {_first_line(exc)}"
        ) from None


def _matched(page: dict[str, Any]) -> int | None:
    """``numberMatched`` (STAC API 1.0) or ``context.matched`` (the context extension)."""
    value = page.get("numberMatched")
    if value is None:
        value = (page.get("context") or {}).get("matched")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def split_period(start: dt.date, end: dt.date) -> list[tuple[dt.date, dt.date]]:
    """Calendar months of ``[start, end]``; a period within one month: its two halves."""
    parts = []
    cur = start
    while cur <= end:
        nxt = (cur.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        parts.append((cur, min(end, nxt - dt.timedelta(days=1))))
        cur = nxt
    if len(parts) > 1:
        return parts
    mid = start + (end - start) // 2
    return [(start, mid), (mid + dt.timedelta(days=1), end)] if mid < end else [(start, end)]


def _fetch(client, geometry, start, end, cfg, kwargs, url, counts, state) -> Iterator[list[dict]]:
    """Pages (lists of item dicts) of one search, split per month when it matches too many.

    ``counts["parts"]`` receives what the API said each searched part matched (None where it
    does not say); ``state["left"]`` is what ``max_items`` still allows (None: no limit).
    """
    if state["left"] == 0:
        return
    search = client.search(
        collections=[cfg.resolved_collection],
        intersects=geometry.__geo_interface__,
        datetime=_datetime_range(start, end),
        limit=cfg.page_size,
        max_items=None,
        **kwargs,
    )
    pages = search.pages_as_dicts()
    first = next(pages, None) or {}
    matched = _matched(first)
    if matched is not None and matched > cfg.split_above and start < end:
        parts = split_period(start, end)
        if len(parts) > 1:
            _log.info(
                "%d scenes matched %s..%s: searching in %d parts", matched, start, end, len(parts)
            )
            if cfg.parallel > 1 and state["left"] is None:
                yield from _in_threads(
                    [
                        lambda a=a, b=b: _fetch(
                            client, geometry, a, b, cfg, kwargs, url, counts, state
                        )
                        for a, b in parts
                    ],
                    cfg.parallel,
                )
            else:
                for a, b in parts:
                    yield from _fetch(client, geometry, a, b, cfg, kwargs, url, counts, state)
            return
    counts["parts"].append(matched)
    found = 0
    limit = state["left"]
    page: list[dict] | None = list(first.get("features", []))
    while page is not None:
        if limit is not None and found + len(page) >= limit:
            page = page[: limit - found]
            found += len(page)
            state["left"] = 0
            if page:
                yield page
            if matched is None or matched > limit:
                _log.warning(
                    "search result cut at max_items=%d of %s matched scenes (%s..%s): the map "
                    "would miss scenes; raise or remove the limit",
                    cfg.max_items,
                    matched if matched is not None else "more",
                    start,
                    end,
                )
            return
        found += len(page)
        if page:
            yield page
        nxt = next(pages, None)
        page = None if nxt is None else list(nxt.get("features") or [])
    if limit is not None:
        state["left"] = limit - found
    if matched is not None and found < matched:
        raise UserError(
            f"the STAC API at {url} matched {matched} scenes for {start}..{end} but paging returned "
            f"only {found}: the result is truncated (an API cap?); retry, or search a shorter "
            "period or a smaller area"
        )


def _in_threads(parts: list, n: int) -> Iterator[list[dict]]:
    """The pages of the generators ``parts()`` (factories), ``n`` of them run at once in threads.

    Pages are yielded as they arrive, at most ``n`` waiting (the memory stays bounded); the
    first error of any part is raised here. Closing this generator stops the threads after
    their current page.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=n)
    stop = threading.Event()
    todo = list(enumerate(parts))
    lock = threading.Lock()
    done = object()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            while not stop.is_set():
                with lock:
                    if not todo:
                        break
                    _, factory = todo.pop(0)
                for page in factory():
                    if not put(page):
                        return
        except BaseException as exc:  # re-raised in the consumer
            put(exc)
        finally:
            put(done)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(n, len(parts)))]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            x = q.get()
            if x is done:
                running -= 1
            elif isinstance(x, BaseException):
                raise x
            else:
                yield x
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
