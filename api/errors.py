"""Every error the API answers, as `{"error": {"code", "message"}}` with a 4xx/5xx status,
and the WebSocket close code of each error a follower can end with (`Close`, `CLOSE_OF`)."""

from __future__ import annotations

import logging
from enum import IntEnum

import redis
from celery.exceptions import CeleryError
from flask import Flask, Response, jsonify
from gunicorn.http.errors import NoMoreData, ParseException
from kombu.exceptions import KombuError
from werkzeug.exceptions import HTTPException

from shared.errors import (
    BadCursor,
    ForbiddenOrigin,
    IdempotencyConflict,
    InvalidRequest,
    QueueUnavailable,
    RequestInProgress,
    SessionNotFound,
    StreamsError,
    TooManyRequests,
    Unauthorized,
)

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}

STATUS_OF: list[tuple[type[StreamsError], int]] = [
    (Unauthorized, 401),
    (TooManyRequests, 429),
    (SessionNotFound, 404),
    (BadCursor, 400),
    (IdempotencyConflict, 409),
    (RequestInProgress, 409),
    (InvalidRequest, 400),
    (QueueUnavailable, 503),
]


class Close(IntEnum):
    """Every code a follower's WebSocket closes with (DESIGN.md 2.2, docs/API.md)."""

    NORMAL = 1000  # after the terminal event
    PROTOCOL_ERROR = 1002  # a frame that breaks RFC 6455 (wsproto sends it)
    INVALID_DATA = 1007  # a text message that is not UTF-8 (wsproto sends it)
    POLICY_VIOLATION = 1008  # too many client messages; a missed pong (simple-websocket)
    MESSAGE_TOO_BIG = 1009  # a client message over api/websocket.py MAX_MESSAGE_BYTES
    SERVICE_RESTART = 1012  # this process is stopping: reconnect with the cursor (shutdown.py)
    TRY_AGAIN_LATER = 1013  # Redis is unavailable
    BAD_CURSOR = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN_ORIGIN = 4403
    NOT_FOUND = 4404
    TOO_MANY = 4429


# A refused or ended follow: the close code of its error, the first kind that matches.
CLOSE_OF: list[tuple[type[Exception], Close]] = [
    (Unauthorized, Close.UNAUTHORIZED),
    (ForbiddenOrigin, Close.FORBIDDEN_ORIGIN),
    (TooManyRequests, Close.TOO_MANY),
    (SessionNotFound, Close.NOT_FOUND),
    (BadCursor, Close.BAD_CURSOR),
    (redis.RedisError, Close.TRY_AGAIN_LATER),
]


def close_code_of(e: Exception) -> Close | None:
    """The WebSocket close code for a follower's error; None for one the table lacks."""
    for kind, code in CLOSE_OF:
        if isinstance(e, kind):
            return code
    return None


def error_response(status: int, code: str, message: str) -> Response:
    """The contract's JSON error."""
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


def register(app: Flask) -> None:
    """Turn every exception into a JSON error; never an HTML page."""

    @app.errorhandler(StreamsError)
    def _streams_error(e: StreamsError) -> Response:
        for kind, status in STATUS_OF:
            if isinstance(e, kind):
                response = error_response(status, e.code, e.message)
                if status == 401:
                    response.headers["WWW-Authenticate"] = "Bearer"
                if isinstance(e, TooManyRequests | RequestInProgress):
                    response.headers["Retry-After"] = str(e.retry_after_s)
                return response
        log.error("unmapped error %s: %s", type(e).__name__, e.message)
        return error_response(500, "internal_error", "The server failed to handle this request.")

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        status = e.code or 500
        message = {
            404: "No such endpoint.",
            405: "This method is not allowed on this endpoint.",
            413: "The request body is too large.",
        }.get(status, e.description or e.name)
        response = error_response(status, HTTP_CODES.get(status, "http_error"), message)
        # A 405 must name the methods the endpoint takes (RFC 9110 15.5.6).
        for name, value in e.get_headers():
            if name.lower() == "allow":
                response.headers["Allow"] = value
        return response

    # gunicorn parses a chunked body while the app reads it: a malformed one raises here.
    @app.errorhandler(ParseException)
    @app.errorhandler(NoMoreData)
    def _unreadable_body(e: Exception) -> Response:
        log.info("unreadable request body: %s", type(e).__name__)
        return error_response(400, "bad_request", "The request body is not valid HTTP/1.1.")

    @app.errorhandler(redis.RedisError)
    def _redis_down(e: redis.RedisError) -> Response:
        log.warning("Redis failed: %s", e)
        return error_response(503, "unavailable", "The stream store is unavailable; retry shortly.")

    @app.errorhandler(KombuError)
    @app.errorhandler(CeleryError)
    def _broker_down(e: Exception) -> Response:
        log.warning("broker failed: %s", e)
        return error_response(503, "unavailable", "The job queue is unavailable; retry shortly.")

    app.register_error_handler(Exception, unexpected)


def unexpected(e: Exception) -> Response:
    """A 500 for an error of ours, logged with its traceback."""
    log.exception("unexpected error")
    return error_response(500, "internal_error", "The server failed to handle this request.")
