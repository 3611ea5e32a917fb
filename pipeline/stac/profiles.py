"""Named STAC API profiles (where Sentinel-2 L2A lives) and Planetary Computer URL signing.

=======================  ==================================================  ================
profile                  API                                                 collection
=======================  ==================================================  ================
``earth-search``         https://earth-search.aws.element84.com/v1           sentinel-2-l2a
``planetary-computer``   https://planetarycomputer.microsoft.com/api/stac/v1  sentinel-2-l2a
``cdse-zarr``            https://stac.core.eopf.eodc.eu                      sentinel-2-l2a
``demo``                 the bundled sample, served on loopback on demand    sentinel-2-l2a
``custom``               any STAC API (``stac_url`` required)                sentinel-2-l2a
=======================  ==================================================  ================

``cdse-zarr`` items are EOPF Zarr products (asset ``product`` and ``B02_10m`` ... ``SCL_20m``
arrays inside it, :mod:`pipeline.stac.eopf`), read with zarr-python 3, not GDAL.

Planetary Computer serves its blobs only with a SAS token (valid about 45-60 minutes). Hrefs are
signed when pixels are read (:func:`sign_href`, called by :mod:`pipeline.reading.cube`), never at search
time, so manifests hold unsigned hrefs (:func:`unsigned_href`) and long or resumed runs keep
reading: tokens come from the token endpoint (``/api/sas/v1/token/<account>/<container>``), are
cached until 5 minutes before they expire, and are dropped (:func:`forget_tokens`) on an HTTP 403.
:func:`sign_planetary_computer` signs whole items with the per-collection token
(``/api/sas/v1/token/<collection>``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import requests

from pipeline.base.errors import UserError

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
            "cdse-zarr",
            "https://stac.core.eopf.eodc.eu",
            "sentinel-2-l2a",
            description="ESA's EOPF Zarr Sample Service for the Copernicus Data Space: one EOPF "
            "Zarr v3 product per scene (read by pipeline.reading.eopf)",
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


def signable(href: str) -> bool:
    """True for an Azure blob-storage URL (``https://<account>.blob.core.windows.net/...``)."""

    u = urlparse(href)
    return u.scheme in ("http", "https") and u.netloc.endswith(".blob.core.windows.net")


_signable = signable


def forget_tokens() -> None:
    """Drop every cached SAS token (after a 403: the next signature asks for a fresh one)."""
    with _tokens_lock:
        _tokens.clear()


def unsigned_href(href: str) -> str:
    """A blob-storage href without its SAS query (what a manifest stores); others unchanged."""
    if not signable(href) or "?" not in href:
        return href
    return href.split("?", 1)[0]


def _valid_signature(href: str) -> bool:
    """True when the href carries a SAS signature whose ``se=`` expiry is > 5 minutes away."""

    q = parse_qs(urlparse(href).query)
    if "sig" not in q or "se" not in q:
        return False
    try:
        se = dt.datetime.fromisoformat(q["se"][0].replace("Z", "+00:00"))
    except ValueError:
        return False
    if se.tzinfo is None:
        se = se.replace(tzinfo=dt.UTC)
    return se - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=5)


def sign_href(href: str, sas_url: str, **kwargs: Any) -> str:
    """``href`` with a fresh SAS token for its storage account/container (blob URLs only).

    An href that already carries a signature valid for more than 5 minutes is kept; an expired or
    missing one is replaced by a (cached) token from ``<sas_url>/<account>/<container>``.
    """

    if not signable(href) or _valid_signature(href):
        return href
    base = unsigned_href(href)
    u = urlparse(base)
    account = u.netloc.split(".", 1)[0]
    container = u.path.lstrip("/").split("/", 1)[0]
    token = sas_token(sas_url, f"{account}/{container}", **kwargs)
    return f"{base}?{token.lstrip('?')}"


def sign_planetary_computer(items: list[Any], sas_url: str, **kwargs: Any) -> list[Any]:
    """Append the collection's SAS token to every blob-storage asset href (in place)."""
    for item in items:
        collection = item.collection_id or "sentinel-2-l2a"
        token = None
        for asset in item.assets.values():
            if not signable(asset.href) or "sig=" in asset.href:
                continue
            token = token or sas_token(sas_url, collection, **kwargs)
            sep = "&" if "?" in asset.href else "?"
            asset.href = f"{asset.href}{sep}{token.lstrip('?')}"
    return items


def stac_profile(profile: str | None, stac_url: str | None, default: str) -> str:
    """``--profile``, else ``custom`` for a bare ``--stac-url``, else ``default``."""
    return profile or ("custom" if stac_url else default)
