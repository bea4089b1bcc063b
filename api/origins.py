"""Which browser origins may use the API: CORS answers, and a refusal for everyone else.

Allowed are the API's own origin (as the request reached us, through ProxyFix when
TRUST_PROXY_HEADERS is on, at a host `api/hosts.py` allowed; and PUBLIC_URL) and those of
ALLOWED_ORIGINS (`*`: any). From any other origin
a browser gets no CORS headers (so it cannot read an answer), a state-changing request
(POST, DELETE) or an SSE request is refused with 403 `forbidden_origin` before the view
runs, and a WebSocket gets an error frame and close 4403 (`failure()`). A request without
`Origin` is no cross-origin browser request (browsers send it on every cross-origin
request and every WebSocket handshake): curl, backends and CLIs pass, credentials still apply.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request

from api.backend import backend
from api.errors import error_response
from shared import origins
from shared.logs import printable

log = logging.getLogger(__name__)

ALLOW_METHODS = "GET, POST, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
EXPOSE_HEADERS = "Location, Retry-After, X-Session-Id, X-Message-Id, x-vercel-ai-ui-message-stream"
MAX_AGE_S = 600
# Requests that change nothing; a foreign page may send them, but reads no answer.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORBIDDEN_ORIGIN = "forbidden_origin"
# Followers whose events would reach a foreign page: refused even though they are GETs.
FOLLOWERS_SSE = frozenset({"follow.follow_sse", "chat.follow_chat"})
# WebSockets: refused after the upgrade, by their handler.
FOLLOWERS_WS = frozenset({"follow.follow_ws", "chatws.chat_ws"})


def register(app: Flask) -> None:
    """Check `Origin` before every request (before credentials) and add CORS headers after."""
    app.before_request(_check)
    app.after_request(_add_cors_headers)


def own_origin() -> str | None:
    """The origin this request was addressed to."""
    return origins.normalize(f"{request.scheme}://{request.host}")


def is_allowed(origin: str) -> bool:
    """Whether a page of `origin` may use the API."""
    allowed = backend().settings.api.allowed_origins
    if origins.ANY in allowed:
        return True
    normal = origins.normalize(origin)
    own = (own_origin(), backend().settings.api.public_url or None)
    return normal is not None and (normal in allowed or normal in own)


def failure() -> str | None:
    """Why a WebSocket handler must refuse this upgrade's origin, if it must."""
    found: str | None = g.get("origin_failure")
    return found


def _is_preflight() -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _check() -> Response | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if is_allowed(origin):
        return _preflight() if _is_preflight() else None
    message = f"pages of the origin {origin[:100]!r} may not use this API (ALLOWED_ORIGINS)"
    if request.endpoint in FOLLOWERS_WS and not _is_preflight():
        g.origin_failure = message  # the handler sends it after the upgrade
        return None
    if _is_preflight() or request.method not in SAFE_METHODS or request.endpoint in FOLLOWERS_SSE:
        log.info(
            "refused %s %s from origin %r",
            request.method,
            printable(request.path[:200]),
            origin[:100],
        )
        return error_response(403, FORBIDDEN_ORIGIN, message)
    return None


def _preflight() -> Response:
    response = Response(status=204)
    del response.headers["Content-Type"]  # no body
    response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
    response.headers["Access-Control-Max-Age"] = str(MAX_AGE_S)
    response.vary.update(["Access-Control-Request-Method", "Access-Control-Request-Headers"])
    return response


def _add_cors_headers(response: Response) -> Response:
    if request.endpoint in FOLLOWERS_WS and not _is_preflight():
        return response  # a WebSocket has no CORS; its handshake answer is already sent
    response.vary.add("Origin")
    origin = request.headers.get("Origin")
    if origin is not None and is_allowed(origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response
