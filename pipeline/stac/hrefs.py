"""Asset hrefs are URLs: resolved as STAC says, then turned into what GDAL opens.

Two rules, applied wherever an href leaves a STAC item for a file API:

* **Relative hrefs** (``./B04.tif``, ``../x/B04.tif``) are relative to the item's self link
  (STAC Item spec, "Asset Object"; RFC 3986 section 5 resolution). pystac's
  ``Asset.get_absolute_href()`` implements it; :func:`absolute_href` uses it as it is.
* **``file://`` hrefs** are URIs (RFC 8089): ``file:///home/Jane%20Doe/B04.tif`` names
  ``/home/Jane Doe/B04.tif`` (``%C3%BC`` is ``ü``). :func:`gdal_href` percent-decodes them into a
  local path, since GDAL and Python's file API open a path literally. Remote URLs (``http``,
  ``https``, ``s3`` ...) are left as they are, query string included: GDAL's curl sends them
  encoded as given, and signed URLs must stay byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from pipeline.base.errors import UserError

__all__ = ["absolute_href", "gdal_href", "local_path", "readable_href"]


def absolute_href(asset: Any) -> str:
    """The asset's href resolved against its item's self link (pystac's own resolution).

    :param asset: a ``pystac.Asset`` (owned by an item, for relative hrefs).
    :returns: an absolute URL or path; an href that is already absolute is returned as it is.
    :raises UserError: the href is relative and the item has no self link to resolve it against.
    """
    href = asset.href
    resolved = asset.get_absolute_href()
    if resolved is None:
        owner = getattr(getattr(asset, "owner", None), "id", "?")
        raise UserError(
            f"asset href {href!r} of item {owner} is relative and the item has no self link to "
            "resolve it against"
        )
    return resolved


def local_path(href: str) -> Path | None:
    """The local file an href names (a ``file://`` URI, percent-decoded, or a plain path).

    :returns: the path, or None for a remote URL (``http``, ``s3``, ``/vsi...`` and the like).
    """
    parts = urlsplit(href)
    if parts.scheme == "file":
        host = parts.netloc if parts.netloc not in ("", "localhost") else ""
        # url2pathname percent-decodes (UTF-8) and maps to the OS's separators.
        return Path(url2pathname(f"//{host}{parts.path}" if host else parts.path))
    if parts.scheme and len(parts.scheme) > 1:  # "C:\..." has a one-letter "scheme"
        return None
    if href.startswith("/vsi"):
        return None
    return Path(href)


def gdal_href(href: str) -> str:
    """What GDAL (rasterio, odc-stac) should open for ``href``: a ``file://`` URI as its decoded
    local path (query and fragment dropped: a file has none), anything else as it is."""
    if urlsplit(href).scheme == "file":
        return str(local_path(href))
    return href


def readable_href(asset: Any) -> str:
    """:func:`absolute_href` then :func:`gdal_href`: the href a reader opens for ``asset``.

    :raises UserError: as :func:`absolute_href`.
    """
    return gdal_href(absolute_href(asset))
