"""A local web viewer for a finished map: ``python -m pipeline view MAP_DIR``.

:mod:`.sources` finds a map folder's layers, :mod:`.reading` reads tiles and pixels (rio-tiler),
:mod:`.render` colours them (pure), :mod:`.field` answers free-text queries through the field
API, :mod:`.app` is the Starlette application and :mod:`.server` binds it to loopback. The page
(``static/``) uses a vendored, pinned Leaflet; nothing is fetched from the internet.
"""

from pipeline.view.server import serve
from pipeline.view.sources import ClassInfo, MapSources, find_sources

__all__ = ["ClassInfo", "MapSources", "find_sources", "serve"]
