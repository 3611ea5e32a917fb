"""Bind the viewer to a loopback port and serve it until interrupted."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn

from pipeline.base.errors import UserError
from pipeline.view.app import ViewerState, create_app
from pipeline.view.sources import find_sources

__all__ = ["HOST", "bind", "serve"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def bind(port: int, host: str = HOST) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    :raises UserError: the port is taken or not allowed.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror}); try another --port"
        ) from None
    sock.listen(128)
    return sock


def serve(
    map_dir: str | Path,
    port: int = 0,
    *,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the map in ``map_dir`` on ``http://127.0.0.1:port/`` until interrupted.

    The URL is passed to ``announce`` (default: printed on stdout) once the port listens.

    :raises UserError: not a map folder (see :func:`~pipeline.view.sources.find_sources`), or
        the port cannot be bound.
    """

    sources = find_sources(map_dir)
    sock = bind(port)  # before the slower set-up: a taken port fails at once
    try:
        state = ViewerState(sources)
    except BaseException:
        sock.close()
        raise
    url = f"http://{HOST}:{sock.getsockname()[1]}/"
    config = uvicorn.Config(
        create_app(state), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)

    # The socket already listens: connections made after the URL is announced wait in its
    # backlog until the server's loop accepts them.
    (announce or (lambda u: print(u, flush=True)))(url)
    log.info("serving %s on %s (Ctrl-C stops)", sources.root, url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        sys.stdout.flush()
