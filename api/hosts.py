"""Which host names the API answers: a refusal for every other `Host`, before anything else.

A page of another site can point its own DNS name at the API's address (DNS rebinding):
its requests then carry its own name in `Host` and `Origin` alike, and would pass for
same-origin. So a request whose `Host` (or X-Forwarded-Host from a trusted proxy, through
ProxyFix) is not one of the service's own (the loopback names, PUBLIC_URL's host and
ALLOWED_HOSTS) gets 400 `invalid_host`. Health checks are answered for any host: platform
probes ask by address.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request

from api.backend import backend
from api.errors import error_response
from shared import origins
from shared.logs import printable

log = logging.getLogger(__name__)

INVALID_HOST = "invalid_host"
ANY_HOST = frozenset({"streams.healthz", "streams.readyz"})


def register(app: Flask) -> None:
    """Check `Host` before every request, before origins and credentials."""
    app.before_request(_check)


def request_root() -> str:
    """`scheme://host[:port]` of the current request, whose host `_check` allowed."""
    public_url = backend().settings.api.public_url
    if public_url:
        return public_url
    return origins.normalize(f"{request.scheme}://{request.host}") or public_url


def _check() -> Response | None:
    if request.endpoint in ANY_HOST:
        return None
    parsed = origins.split_host(request.host)
    if parsed is not None and backend().settings.api.is_host_allowed(parsed[0]):
        return None
    log.info("refused a request for host %s", printable(request.host[:100]))
    return error_response(
        400,
        INVALID_HOST,
        "This service does not answer for that host name (PUBLIC_URL, ALLOWED_HOSTS).",
    )
