"""The Flask application factory: `gunicorn 'api.app:create_app()'`."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from api import auth, errors, examples, follow, hosts, metrics, openapi, origins, routes
from api.backend import EXTENSION, Backend
from shared import logs
from shared.settings import Settings

log = logging.getLogger(__name__)


class _SendAllSocket:
    """A socket whose `send` writes everything, one frame at a time.

    simple-websocket 1.1 writes frames with `socket.send`, which may write only part of a
    large frame, and sends pings from its own thread (simple-websocket#45). `sendall`
    under a lock keeps every frame whole and frames from interleaving.
    """

    def __init__(self, sock: Any, send_timeout_s: float) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        # A client that stops reading fails our send after this long, instead of holding
        # its handler (and a Redis connection) forever.
        sock.settimeout(send_timeout_s)

    def send(self, data: bytes) -> int:
        with self._lock:
            # One plain send takes a batch of frames whole nearly always; gevent's sendall
            # costs an extra system call (getsockopt) and more on every call.
            sent = self._sock.send(data)
            if sent < len(data):
                self._sock.sendall(memoryview(data)[sent:])
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _WholeFrames:
    """WSGI middleware that hands flask-sock a `_SendAllSocket`."""

    def __init__(self, app: Any, send_timeout_s: float) -> None:
        self.app = app
        self.send_timeout_s = send_timeout_s

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        for key in ("gunicorn.socket", "werkzeug.socket"):
            if key in environ and environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                environ[key] = _SendAllSocket(environ[key], self.send_timeout_s)
        return self.app(environ, start_response)


def _bind_session() -> None:
    """Lines logged while handling /api/streams/<id>... carry the session id."""
    session_id = (request.view_args or {}).get("session_id") or (
        request.args.get("sessionId") if request.path == "/api/streams/generate" else None
    )
    logs.bind(session_id if isinstance(session_id, str) else None)


def _unbind_session(_error: BaseException | None = None) -> None:
    # A keep-alive connection serves its next request in the same greenlet.
    logs.bind(None)


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for `settings` (default: from the environment)."""
    settings = settings or Settings.from_env()
    logs.configure(settings.log_format)
    logging.getLogger("gunicorn.error").addFilter(logs.SEND_TIMEOUTS)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.config["SOCK_SERVER_OPTIONS"] = {
        "ping_interval": settings.api.ws_ping_s,
        "max_message_size": 64 * 1024,
    }
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = Backend.build(settings)
    errors.register(app)
    hosts.register(app)  # first: a request for a foreign host gets nothing else
    app.before_request(_bind_session)
    app.teardown_request(_unbind_session)
    origins.register(app)  # before credentials: a CORS preflight carries none
    auth.register(app, settings)
    app.register_blueprint(routes.bp)
    app.register_blueprint(follow.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(examples.bp)
    app.register_blueprint(metrics.bp)
    follow.sock.init_app(app)
    wsgi: Any = _WholeFrames(app.wsgi_app, settings.api.ws_send_timeout_s)
    if settings.api.trust_proxy_headers:
        wsgi = ProxyFix(wsgi, x_for=1, x_proto=1, x_host=1, x_port=1)
    app.wsgi_app = wsgi  # type: ignore[method-assign]
    return app
