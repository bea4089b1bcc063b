"""OpenAI's Responses API with background mode, over our sessions (DESIGN.md 2.7).

`POST /v1/responses` starts a session as `POST /api/streams/generate` does (the same
validation, limits, credentials, Idempotency-Key and metrics, `api.sessions`), and
answers:

- `stream: true` (with or without `background`): the event stream, live until the end;
- `background: true` alone: the Response object at once (`queued`);
- neither: the Response object once the generation has ended, as OpenAI does.

Closing a stream never stops the generation: every response is a resumable session, and
only `POST /v1/responses/{id}/cancel` stops it. `GET /v1/responses/{id}?stream=true&
starting_after=n` replays the stored events from the start through the projection of
`api/responses_format.py` and skips sequence numbers up to `n` (a sequence number is a
position in that projection, not in the Redis stream, so it cannot be looked up; the
replay costs one read of the stream, as a follower from the start does). Errors on these
routes are in OpenAI's shape so the SDKs raise their own exceptions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, jsonify, request
from nanoid import generate as nanoid

from api import auth, fanout, limits, sessions
from api.backend import Backend, backend
from api.follow import Following, event_stream
from api.responses_format import Projection, response_id, session_id_of, sse
from api.responses_request import ParamError, parse_responses
from api.routes import MAX_IDEMPOTENCY_KEY_LEN, _is_printable_ascii, json_body
from shared import fields, keys, logs, store
from shared.errors import SessionNotFound, TooManyRequests
from shared.jobs import enqueue
from shared.store.events import dumps

log = logging.getLogger(__name__)

bp = Blueprint("responses", __name__)

# A `starting_after` no event passes: the projection only builds the Response object.
NO_EVENTS = 2**63

# OpenAI's error `type` for each status (the SDKs pick their exception by status alone).
ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def _openai_error(status: int, message: str, code: str | None, param: str | None) -> Response:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    response = jsonify(error={"message": message, "type": kind, "code": code, "param": param})
    response.status_code = status
    return response


@bp.errorhandler(ParamError)
def _param_error(e: ParamError) -> Response:
    return _openai_error(400, e.message, e.code, e.param)


@bp.after_request
def _in_openai_shape(response: Response) -> Response:
    """Every other error of these routes (credentials, limits, not found, the app's own
    handlers) in OpenAI's error shape, headers kept (`Retry-After`, `WWW-Authenticate`)."""
    if response.status_code < 400 or not response.is_json:
        return response
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or "type" in error:
        return response
    shaped = _openai_error(
        response.status_code, str(error.get("message", "")), error.get("code"), None
    )
    response.set_data(shaped.get_data())
    return response


def _session_of(resp_id: str) -> str:
    """The session id in a Response id the caller may see; raises `SessionNotFound`."""
    logs.bind(None)
    session_id = session_id_of(resp_id)
    if session_id is None or not keys.is_session_id(session_id):
        raise SessionNotFound(f"No response found with id {resp_id[:64]!r}.")
    logs.bind(session_id)
    auth.check_owner(session_id)
    return session_id


def _stored(r: redis.Redis, session_id: str) -> Projection:
    """The projection of everything the session has stored."""
    meta = store.read_meta(r, session_id)
    projection = Projection(meta, starting_after=NO_EVENTS)
    cursor = "0-0"
    while True:
        entries = fanout.read_after(r, keys.events(session_id), cursor)
        for entry_id, values in entries:
            projection.feed(store.decode_event(entry_id, values))
        if len(entries) < fanout.READ_COUNT:
            return projection
        cursor = entries[-1][0]


@bp.post("/v1/responses")
def create() -> Response:
    """Start a response: the event stream, the queued Response, or the finished one."""
    b = backend()
    owner = auth.caller().owner
    asked = parse_responses(json_body(), b.settings)
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None and not (
        0 < len(idem_key) <= MAX_IDEMPOTENCY_KEY_LEN and _is_printable_ascii(idem_key)
    ):
        raise ParamError(
            None,
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters",
        )
    session_id = nanoid()
    logs.bind(session_id)
    started = sessions.start_session(
        b.redis,
        b.settings,
        asked.generation,
        session_id=session_id,
        caller=sessions.Caller(owner, limits.caller_bucket()),
        enqueue=lambda sid: enqueue(b.celery, sid, b.settings.worker.queue),
        idempotency_key=idem_key,
        extra_meta={fields.RESPONSE: dumps(asked.echo)},
    )
    if asked.background and not asked.stream:
        return jsonify(_stored(b.redis, started.session_id).response())
    try:
        if asked.stream:
            return _event_stream(b, started.session_id, starting_after=-1)
        return jsonify(_wait(b, started.session_id))
    except TooManyRequests:
        # Refused a follower place: the caller never learns this response's id, so it
        # must not go on generating (a retry would start another).
        if not started.is_replay:
            store.cancel(b.redis, started.session_id, ttl_s=b.settings.stream_ttl_s)
        raise


def _wait(b: Backend, session_id: str) -> dict[str, Any]:
    """The Response once the session has ended (as it stands if this process stops first)."""
    projection = Projection(store.read_meta(b.redis, session_id), starting_after=NO_EVENTS)
    following = Following(session_id, "sse")
    try:
        for batch in following.batches(b, None):
            for event in batch:
                projection.feed(event)
            if projection.is_terminal:
                break
    finally:
        following.leave()
    return projection.response()


@bp.get("/v1/responses/<resp_id>")
def retrieve(resp_id: str) -> Response:
    """The Response object, or with `?stream=true` its events after `starting_after`."""
    b = backend()
    session_id = _session_of(resp_id)
    stream = request.args.get("stream", "false")
    if stream not in ("true", "false"):
        raise ParamError("stream", "stream must be true or false")
    if stream == "false":
        return jsonify(_stored(b.redis, session_id).response())
    raw = request.args.get("starting_after")
    starting_after = -1
    if raw is not None:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise ParamError("starting_after", "starting_after must be a whole number")
        starting_after = int(raw)
    return _event_stream(b, session_id, starting_after)


@bp.post("/v1/responses/<resp_id>/cancel")
def cancel(resp_id: str) -> Response:
    """Stop the generation; the Response object with its final status."""
    b = backend()
    session_id = _session_of(resp_id)
    was_live, _status = store.cancel(b.redis, session_id, ttl_s=b.settings.stream_ttl_s)
    if was_live:
        log.info("session %s cancelled", session_id)
    return jsonify(_stored(b.redis, session_id).response())


def _event_stream(b: Backend, session_id: str, starting_after: int) -> Response:
    """The session's Responses events after `starting_after`, live until the end."""
    meta = store.read_meta(b.redis, session_id)  # 404 before any event
    following = Following(session_id, "sse")  # 429 before any event

    def pieces() -> Iterator[bytes]:
        projection = Projection(meta, starting_after)
        try:
            # The whole stream from its start: sequence numbers count from the first event.
            for batch in following.batches(b, None):
                yield b"".join(
                    [
                        sse(etype, data)
                        for event in batch
                        for _seq, etype, data in projection.feed(event)
                    ]
                )
                if projection.is_terminal:
                    return
        except SessionNotFound:
            log.info("response %s expired while followed", response_id(session_id))
        except redis.RedisError as e:
            # The stream ends; the client resumes with starting_after.
            log.warning("Responses follower of %s lost Redis: %s", session_id, e)

    return event_stream(b, following, pieces())
