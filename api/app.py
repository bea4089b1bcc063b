"""The Flask application factory: `gunicorn 'api.app:create_app()'`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from api import (
    auth,
    chat,
    chatws,
    errors,
    examples,
    follow,
    hosts,
    metrics,
    openapi,
    origins,
    responses,
    routes,
    websocket,
)
from api.backend import EXTENSION, Backend
from shared import logs
from shared.settings import Settings

log = logging.getLogger(__name__)


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
    app.config["SOCK_SERVER_OPTIONS"] = websocket.server_options(settings)
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
    app.register_blueprint(chat.bp)
    app.register_blueprint(chatws.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(examples.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(responses.bp)
    follow.sock.init_app(app)
    wsgi: Any = websocket.WholeFrames(app.wsgi_app, settings.api.ws_send_timeout_s)
    if settings.api.trust_proxy_headers:
        wsgi = ProxyFix(wsgi, x_for=1, x_proto=1, x_host=1, x_port=1)
    app.wsgi_app = wsgi  # type: ignore[method-assign]
    return app
