"""gunicorn's gevent worker, answering requests its parser refuses with the contract's
JSON error, and logging them without what the client sent.

gunicorn answers a malformed request (400, 414, 431, ...) with an HTML page before the
app sees it, and logs the whole request line, `?token=` included
(`gunicorn/workers/base.py`, `handle_error`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker
from gunicorn.workers.gthread import ThreadWorker as _ThreadWorker

# (kind, status, reason, code, message); the first that matches; any other parser error
# is a 400. The application's own failures are 500s.
REFUSALS: list[tuple[type[BaseException], int, str, str, str]] = [
    (
        http_errors.LimitRequestLine,
        414,
        "URI Too Long",
        "uri_too_long",
        "The request line is too long.",
    ),
    (
        http_errors.LimitRequestHeaders,
        431,
        "Request Header Fields Too Large",
        "headers_too_large",
        "The request's headers are too many or too large.",
    ),
    (
        http_errors.UnsupportedTransferCoding,
        501,
        "Not Implemented",
        "not_implemented",
        "This Transfer-Encoding is not supported.",
    ),
    (
        http_errors.ExpectationFailed,
        417,
        "Expectation Failed",
        "expectation_failed",
        "Only Expect: 100-continue is supported.",
    ),
    (
        http_errors.ForbiddenProxyRequest,
        403,
        "Forbidden",
        "forbidden",
        "PROXY protocol from an address that is not allowed to send it.",
    ),
]
BAD_REQUEST = (400, "Bad Request", "bad_request", "The request is not valid HTTP/1.1.")
INTERNAL = (
    500,
    "Internal Server Error",
    "internal_error",
    "The server failed to handle this request.",
)
APP_FAULTS = (
    http_errors.InvalidResponseHeader,
    http_errors.InvalidResponseHeaderName,
    http_errors.ConfigurationProblem,
)


def refusal(exc: BaseException) -> tuple[int, str, str, str]:
    """Status, reason, error code and message for an error gunicorn hands `handle_error`."""
    if isinstance(exc, APP_FAULTS):
        return INTERNAL
    for kind, status, reason, code, message in REFUSALS:
        if isinstance(exc, kind):
            return status, reason, code, message
    if isinstance(exc, http_errors.ParseException):
        return BAD_REQUEST
    return INTERNAL


def write_json_error(sock: Any, status: int, reason: str, code: str, message: str) -> None:
    """Write the contract's JSON error as a whole HTTP response and close the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrors:
    """`handle_error` for a gunicorn worker class: a JSON answer, a log line naming the
    kind of error only (the request line may hold a token, a control character, anything)."""

    cfg: Any
    log: Any

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """Answer a request that failed before or outside the app, and log it safely."""
        started = datetime.now()
        addr = addr or ("", -1)  # a unix socket
        status, reason, code, message = refusal(exc)
        if status == 500:
            self.log.exception("Error handling request (%s)", type(exc).__name__)
        else:
            self.log.warning("Invalid request from ip=%s: %s", addr[0], type(exc).__name__)
        if req is None and isinstance(
            exc, http_errors.InvalidHeader | http_errors.InvalidHeaderName
        ):
            req = getattr(exc, "req", None)
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
            response = Response(req, client, self.cfg)
            response.status = f"{status} {reason}"
            self.log.access(response, req, environ, datetime.now() - started)
        try:
            write_json_error(client, status, reason, code, message)
        except Exception:  # noqa: BLE001 - the client may be gone; nothing more to do
            self.log.debug("Failed to send error message.")


class GeventWorker(JsonErrors, _GeventWorker):
    """The gevent worker (`api/gunicorn_conf.py`), with JSON errors."""


class ThreadWorker(JsonErrors, _ThreadWorker):
    """The gthread worker (`--worker-class api.gunicorn_worker.ThreadWorker`), with JSON errors."""
