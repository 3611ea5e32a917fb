"""Sentinel-2 L2A scene search: the only module that talks to a STAC API (pystac-client).

``search_items(geometry, start, end, cfg)`` searches a profile's API (see
:mod:`pipeline.stac_profiles`) by ``intersects`` and datetime, pages through all results, filters
cloud cover server-side where the API conforms to the filter (or query) extension and always
client-side as well (many servers, rustac among them, ignore filters), retries 5xx responses,
connection errors and timeouts with exponential backoff, signs Planetary Computer asset URLs, and
raises :class:`~pipeline.errors.UserError` when the API is unreachable or nothing matches.
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

from pipeline.errors import UserError
from pipeline.stac_profiles import PROFILES, StacProfile, get_profile, sign_planetary_computer

_log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class SearchConfig:
    """Where to search and what counts as a usable scene."""

    profile: str = "earth-search"
    """A name from :data:`pipeline.stac_profiles.PROFILES` (earth-search, planetary-computer, demo,
    custom)."""
    stac_url: str | None = None
    """STAC API root overriding the profile's (required for ``custom``)."""
    collection: str | None = None
    """Collection id overriding the profile's (``sentinel-2-l2a``)."""
    max_cloud: float = 60.0
    """Maximum scene cloud cover (``eo:cloud_cover``, percent)."""
    page_size: int = 100
    """Items per page requested from the API."""
    max_items: int | None = 10_000
    """Stop after this many items (None: no limit)."""
    retries: int = 5
    """Retries per request on 5xx/429, connection errors and timeouts."""
    backoff: float = 0.5
    """Exponential backoff factor in seconds (0.5, 1, 2, ... between retries)."""
    timeout: float = 60.0
    """Seconds to wait for a response."""
    sign: bool = True
    """Sign asset URLs where the profile needs it (Planetary Computer)."""

    def __post_init__(self) -> None:
        get_profile(self.profile)
        if self.profile == "custom" and not self.stac_url:
            raise UserError("STAC profile 'custom' needs a STAC API URL (--stac-url)")
        if not 0 <= self.max_cloud <= 100:
            raise UserError(f"max_cloud must be within 0..100 percent, got {self.max_cloud}")
        if self.page_size < 1 or (self.max_items is not None and self.max_items < 1):
            raise UserError("page_size and max_items must be >= 1")
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
        from pipeline.demo import ensure_demo_catalog
        from pipeline.stac_server import serve

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


def search_items(geometry: Any, start: dt.date, end: dt.date, cfg: SearchConfig) -> list[Any]:
    """Sentinel-2 L2A items intersecting ``geometry`` (shapely, EPSG:4326) from start to end.

    Items are sorted by datetime, unique by id, and have ``eo:cloud_cover <= cfg.max_cloud``
    (items without cloud cover are kept). Raises UserError when nothing matches or the API
    cannot be reached.
    """
    if end < start:
        raise UserError(f"the period ends ({end}) before it starts ({start})")
    with api_url(cfg) as url:
        items, before_cloud = _search(url, geometry, start, end, cfg)
    collection = cfg.resolved_collection
    if not items:
        raise UserError(
            f"no Sentinel-2 scenes in {collection} at {url} intersect the area between {start} "
            f"and {end} with cloud cover <= {cfg.max_cloud:g}% ({before_cloud} before the cloud "
            "filter); widen the period, raise --max-cloud or check the area"
        )
    profile = cfg.resolved_profile
    if cfg.sign and profile.sas_url and not cfg.stac_url:
        sign_planetary_computer(items, profile.sas_url, timeout=cfg.timeout)
    _log.info("%d scene(s) from %s (%s) for %s..%s", len(items), url, collection, start, end)
    return items


def _search(
    url: str, geometry: Any, start: dt.date, end: dt.date, cfg: SearchConfig
) -> tuple[list[Any], int]:
    import requests
    from pystac_client import Client
    from pystac_client.conformance import ConformanceClasses
    from pystac_client.exceptions import APIError

    collection = cfg.resolved_collection
    try:
        client = Client.open(url, stac_io=stac_io(cfg))
        if not client.conforms_to(ConformanceClasses.ITEM_SEARCH):
            raise UserError(f"{url} is not a STAC API with item search")
        kwargs: dict[str, Any] = {}
        if client.conforms_to(ConformanceClasses.FILTER):
            kwargs = {"filter": cloud_filter(cfg.max_cloud), "filter_lang": "cql2-json"}
        elif client.conforms_to(ConformanceClasses.QUERY):
            kwargs = {"query": {"eo:cloud_cover": {"lte": cfg.max_cloud}}}
        search = client.search(
            collections=[collection],
            intersects=geometry.__geo_interface__,
            datetime=_datetime_range(start, end),
            limit=cfg.page_size,
            max_items=cfg.max_items,
            **kwargs,
        )
        found = list(search.items())
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
    unique = {it.id: it for it in found}
    kept = [it for it in unique.values() if _cloud_ok(it, cfg.max_cloud)]
    kept.sort(key=lambda it: (it.datetime or dt.datetime.min.replace(tzinfo=dt.UTC), it.id))
    _log.debug("%d found, %d within %g%% cloud", len(unique), len(kept), cfg.max_cloud)
    return kept, len(unique)


def _cloud_ok(item: Any, max_cloud: float) -> bool:
    cc = item.properties.get("eo:cloud_cover")
    return cc is None or float(cc) <= max_cloud


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
