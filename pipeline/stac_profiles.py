"""Named STAC API profiles (where Sentinel-2 L2A lives) and Planetary Computer URL signing.

=======================  ==================================================  ================
profile                  API                                                 collection
=======================  ==================================================  ================
``earth-search``         https://earth-search.aws.element84.com/v1           sentinel-2-l2a
``planetary-computer``   https://planetarycomputer.microsoft.com/api/stac/v1  sentinel-2-l2a
``demo``                 the bundled sample, served on loopback on demand    sentinel-2-l2a
``custom``               any STAC API (``stac_url`` required)                sentinel-2-l2a
=======================  ==================================================  ================

Planetary Computer serves its blobs only with a SAS token: :func:`sign_planetary_computer` asks
the token endpoint (``/api/sas/v1/token/<collection>``) once per collection, caches the token
until shortly before it expires and appends it to every ``*.blob.core.windows.net`` asset href.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UserError

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StacProfile:
    """Where and how to search one provider."""

    name: str
    """Profile name (``--profile``)."""
    url: str | None
    """STAC API root; None for ``demo`` (started on demand) and ``custom`` (user-given)."""
    collection: str
    """Default Sentinel-2 L2A collection id."""
    sas_url: str | None = None
    """Token endpoint for signing asset URLs (Planetary Computer), or None."""
    description: str = ""


PROFILES: dict[str, StacProfile] = {
    p.name: p
    for p in (
        StacProfile(
            "earth-search",
            "https://earth-search.aws.element84.com/v1",
            "sentinel-2-l2a",
            description="Element 84 Earth Search v1 (AWS open data COGs)",
        ),
        StacProfile(
            "planetary-computer",
            "https://planetarycomputer.microsoft.com/api/stac/v1",
            "sentinel-2-l2a",
            sas_url="https://planetarycomputer.microsoft.com/api/sas/v1/token",
            description="Microsoft Planetary Computer (asset URLs signed with a SAS token)",
        ),
        StacProfile(
            "demo",
            None,
            "sentinel-2-l2a",
            description="the bundled synthetic sample, served by a local STAC API",
        ),
        StacProfile("custom", None, "sentinel-2-l2a", description="any STAC API (--stac-url)"),
    )
}


def get_profile(name: str) -> StacProfile:
    """The profile called ``name``; a UserError listing the valid names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(
            f"unknown STAC profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None


_tokens: dict[tuple[str, str], tuple[str, dt.datetime]] = {}
_tokens_lock = threading.Lock()


def sas_token(sas_url: str, collection: str, *, timeout: float = 30.0, session: Any = None) -> str:
    """A (cached) SAS token for ``collection`` from the token endpoint ``sas_url``."""
    import requests

    key = (sas_url, collection)
    now = dt.datetime.now(dt.UTC)
    with _tokens_lock:
        cached = _tokens.get(key)
        if cached and cached[1] - now > dt.timedelta(minutes=5):
            return cached[0]
    http = session or requests
    try:
        resp = http.get(f"{sas_url.rstrip('/')}/{collection}", timeout=timeout)
        resp.raise_for_status()
        doc = resp.json()
        token = str(doc["token"])
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise UserError(
            f"could not get a SAS token from {sas_url} for {collection}: {exc}"
        ) from None
    expiry = now + dt.timedelta(minutes=45)
    if doc.get("msft:expiry"):
        try:
            expiry = dt.datetime.fromisoformat(str(doc["msft:expiry"]).replace("Z", "+00:00"))
        except ValueError:
            pass
    with _tokens_lock:
        _tokens[key] = (token, expiry)
    return token


def _signable(href: str) -> bool:
    from urllib.parse import urlparse

    u = urlparse(href)
    return u.scheme in ("http", "https") and u.netloc.endswith(".blob.core.windows.net")


def sign_planetary_computer(items: list[Any], sas_url: str, **kwargs: Any) -> list[Any]:
    """Append the collection's SAS token to every blob-storage asset href (in place)."""
    for item in items:
        collection = item.collection_id or "sentinel-2-l2a"
        token = None
        for asset in item.assets.values():
            if not _signable(asset.href) or "sig=" in asset.href:
                continue
            token = token or sas_token(sas_url, collection, **kwargs)
            sep = "&" if "?" in asset.href else "?"
            asset.href = f"{asset.href}{sep}{token.lstrip('?')}"
    return items
