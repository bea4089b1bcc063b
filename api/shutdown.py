"""Graceful stop of the web process: followers are told to reconnect elsewhere.

On SIGTERM (a deploy, a scale-down) every WebSocket follower gets close code 1012
("service restart"), so a client reconnects at once with its cursor, and SSE responses
end, so `EventSource` reconnects with `Last-Event-ID`. gunicorn then waits for the
handlers to return, at most its graceful timeout.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from api.errors import Close

log = logging.getLogger(__name__)

_stopping = threading.Event()
_sockets: set[Any] = set()
_lock = threading.Lock()


def is_stopping() -> bool:
    """Whether this process is shutting down."""
    return _stopping.is_set()


def register(ws: Any) -> None:
    """Track a WebSocket so a shutdown can close it."""
    with _lock:
        _sockets.add(ws)


def unregister(ws: Any) -> None:
    """Stop tracking a WebSocket."""
    with _lock:
        _sockets.discard(ws)


def begin() -> None:
    """Close every WebSocket with 1012 and make the followers stop."""
    _stopping.set()
    with _lock:
        sockets = list(_sockets)
    log.warning("shutting down: closing %d WebSocket followers with 1012", len(sockets))
    for ws in sockets:
        try:
            ws.close(Close.SERVICE_RESTART, "server restarting")
        except Exception as e:  # noqa: BLE001 - already closed or broken: nothing to tell
            log.debug("close on shutdown failed: %s", e)
