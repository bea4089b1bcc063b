"""The HTTP endpoints of the contract (DESIGN.md 2.1)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from nanoid import generate as nanoid
from werkzeug.exceptions import RequestEntityTooLarge

from api import auth, hosts, limits, tokens
from api.backend import backend
from api.errors import error_response
from api.validation import parse_generate, parse_whole_number
from shared import keys, listing, logs, streams
from shared.errors import InvalidRequest, RequestInProgress, SessionNotFound, TooManyRequests
from shared.jobs import enqueue

log = logging.getLogger(__name__)

bp = Blueprint("streams", __name__)

MAX_IDEMPOTENCY_KEY_LEN = 255
# How long a retry waits for a concurrent first request with its Idempotency-Key to store
# the session (that takes a few ms), before it answers 409 with Retry-After.
IDEMPOTENCY_WAIT_S = 2.0
IDEMPOTENCY_POLL_S = 0.02
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100


def session_id_or_404(session_id: str) -> str:
    """Reject ids that cannot be session ids before they reach Redis."""
    if not keys.is_session_id(session_id):
        raise SessionNotFound(f"no session {session_id[:64]!r}")
    return session_id


def urls(session_id: str) -> dict[str, str]:
    """Absolute SSE and WebSocket URLs of a session: at PUBLIC_URL, or at the allowed host
    this request named."""
    root = hosts.request_root()
    ws_root = (
        "wss" + root[len("https") :] if root.startswith("https") else "ws" + root[len("http") :]
    )
    path = f"/api/streams/{session_id}"
    return {"streamUrl": root + path, "wsUrl": ws_root + path + "/ws"}


def _created(session_id: str, status: str, model: str, created_at: str | None) -> Response:
    body = {
        "sessionId": session_id,
        "status": status,
        "model": model,
        **urls(session_id),
        "createdAt": created_at,
    }
    settings = backend().settings
    if settings.has_api_keys:
        token, expires_ms = tokens.mint(
            settings.stream_token_secret,
            session_id,
            auth.caller().owner,
            settings.stream_token_ttl_s,
        )
        body["streamToken"] = token
        body["tokenExpiresAt"] = streams.iso_ms(expires_ms)
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = f"/api/streams/{session_id}"
    return response


def _is_printable_ascii(value: str) -> bool:
    # An Idempotency-Key is a structured-field string (RFC 8941): printable ASCII only.
    return value.isascii() and value.isprintable()


def _json_body() -> Any:
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    # Werkzeug cuts a body without Content-Length (chunked) at the limit instead of refusing it.
    if request.content_length is None and limit is not None and len(raw) >= limit:
        raise RequestEntityTooLarge()
    if not raw:
        raise InvalidRequest("the body must be a JSON object", code="invalid_json")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequest("the body is not valid JSON", code="invalid_json") from None


def _idempotency_client(owner: str) -> str:
    # In open mode a key is the client address's own: another client that guesses it
    # must not get this client's session.
    return "" if owner else limits.caller_bucket()


def _claim_or_replay(
    idem_key: str, session_id: str, fingerprint: str, owner: str
) -> Response | None:
    """None when this request now holds `idem_key`; else the answer of the request that
    holds it, once its session is stored (409 `request_in_progress` if not in time)."""
    b = backend()
    deadline = time.monotonic() + IDEMPOTENCY_WAIT_S
    while True:
        earlier = streams.claim_idempotency_key(
            b.redis,
            idem_key,
            session_id,
            fingerprint,
            b.settings.stream_ttl_s,
            owner,
            _idempotency_client(owner),
        )
        if earlier is None:
            return None
        try:
            info = streams.info(b.redis, earlier)
        except SessionNotFound:
            # A concurrent retry: the first request claimed the key and is storing the
            # session now (or failed, released the key, and our next claim takes it).
            if time.monotonic() >= deadline:
                raise RequestInProgress(
                    "a request with this Idempotency-Key is still being handled; retry",
                    retry_after_s=1,
                ) from None
            time.sleep(IDEMPOTENCY_POLL_S)
            continue
        return _created(earlier, info["status"], info["model"], info["createdAt"])


@bp.post("/api/streams/generate")
def create() -> Response:
    """Validate, store the request, enqueue generation."""
    b = backend()
    owner = auth.caller().owner
    body = _json_body()
    generation = parse_generate(body, b.settings)
    session_id = nanoid()
    logs.bind(session_id)
    idem_key = request.headers.get("Idempotency-Key")
    if idem_key is not None:
        if not (0 < len(idem_key) <= MAX_IDEMPOTENCY_KEY_LEN and _is_printable_ascii(idem_key)):
            raise InvalidRequest(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
            )
        # The validated request: `1` and `1.0` tokens, or a prompt and its one user message,
        # are the same request.
        fingerprint = hashlib.sha256(generation.to_json().encode()).hexdigest()[:32]
        replay = _claim_or_replay(idem_key, session_id, fingerprint, owner)
        if replay is not None:
            return replay
    try:
        limits.admit_creation(session_id)  # after the replay: a retry is never refused
    except TooManyRequests:
        if idem_key:
            streams.release_idempotency_key(b.redis, idem_key, owner, _idempotency_client(owner))
        raise
    try:
        streams.create_session(
            b.redis, session_id, generation, queue=b.settings.celery_queue, owner=owner
        )
    except Exception:
        limits.forget_creation(session_id)
        if idem_key:
            streams.release_idempotency_key(b.redis, idem_key, owner, _idempotency_client(owner))
        raise
    try:
        enqueue(b.celery, session_id, b.settings.celery_queue)
    except Exception as e:  # noqa: BLE001 - kombu raises many kinds; all mean "not queued"
        log.warning("could not enqueue %s: %s", session_id, e)
        streams.append_error(
            b.redis,
            session_id,
            "enqueue_failed",
            "The job queue was unavailable; nothing was generated.",
            token="",
            ttl_s=b.settings.stream_ttl_s,
        )
        if idem_key:
            streams.release_idempotency_key(b.redis, idem_key, owner, _idempotency_client(owner))
        return error_response(503, "unavailable", "The job queue is unavailable; retry shortly.")
    meta = streams.read_meta(b.redis, session_id)
    log.info("session %s queued (model %s)", session_id, generation.model)
    return _created(
        session_id,
        streams.Status.QUEUED.value,
        generation.model,
        streams.iso_ms(meta["created_ms"]),
    )


@bp.get("/api/streams/generate")
def stream_info() -> Response:
    """Status, chunk count and result of a session."""
    session_id = request.args.get("sessionId")
    if not session_id:
        raise InvalidRequest("the sessionId query parameter is required")
    auth.check_owner(session_id_or_404(session_id))
    return jsonify(streams.info(backend().redis, session_id))


@bp.get("/api/streams")
def list_streams() -> Response:
    """The caller's sessions, newest first, a page at a time, optionally of one status."""
    if not backend().settings.has_api_keys:
        # Without keys a session's id is its only secret: listing them would give them away.
        return error_response(
            404, "not_found", "Listing sessions needs API keys (API_KEYS or API_KEYS_FILE)."
        )
    status = request.args.get("status")
    if status is not None and status not in {s.value for s in streams.Status}:
        raise InvalidRequest(f"status must be one of {', '.join(s.value for s in streams.Status)}")
    limit = parse_whole_number(
        request.args.get("limit", str(LIST_LIMIT_DEFAULT)), "limit", 1, LIST_LIMIT_MAX
    )
    page = listing.list_sessions(
        backend().redis,
        auth.caller().owner,
        limit=limit,
        status=status,
        cursor=request.args.get("cursor") or None,
    )
    return jsonify(sessions=page.sessions, nextCursor=page.next_cursor)


@bp.get("/api/streams/<session_id>/text")
def text(session_id: str) -> Response:
    """Everything generated so far as one string."""
    auth.check_owner(session_id_or_404(session_id))
    status, body, chunks = streams.read_text(backend().redis, session_id)
    return jsonify(sessionId=session_id, status=status, text=body, chunks=chunks)


@bp.delete("/api/streams/<session_id>")
def stop(session_id: str) -> tuple[Response, int]:
    """Cancel generation: 202 if it was live, 200 with the final status if it had ended."""
    b = backend()
    auth.check_owner(session_id_or_404(session_id))
    was_live, status = streams.cancel(b.redis, session_id, ttl_s=b.settings.stream_ttl_s)
    if was_live:
        log.info("session %s cancelled", session_id)
    return jsonify(sessionId=session_id, status=status), 202 if was_live else 200


# The browser client and its types: the same text whatever the platform's mime.types says.
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".ts": "text/plain; charset=utf-8"}


@bp.after_app_request
def _static_headers(response: Response) -> Response:
    """Exact types for the static files, and revalidation on every use (ETag) so a deploy
    reaches pages and bundlers at once."""
    if request.endpoint == "static" and response.status_code in (200, 304):
        name = (request.view_args or {}).get("filename", "")
        for suffix, content_type in STATIC_TYPES.items():
            if name.endswith(suffix):
                response.headers["Content-Type"] = content_type
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/")
@auth.public
def page() -> Response:
    """The demo page."""
    return current_app.send_static_file("index.html")


@bp.get("/healthz")
@auth.public
def healthz() -> Response:
    """The process is alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
@auth.public
def readyz() -> tuple[Response, int]:
    """Redis and the broker answer."""
    b = backend()
    checks = {"redis": _check_redis(b), "broker": _check_broker(b)}
    down = [name for name, state in checks.items() if state != "ok"]
    if down:
        body = {
            "error": {"code": "not_ready", "message": f"{' and '.join(down)} not reachable"},
            "checks": checks,
        }
        return jsonify(body), 503
    return jsonify(status="ok", checks=checks), 200


def _check_redis(b: Any) -> str:
    try:
        b.redis.ping()
        return "ok"
    except Exception as e:  # noqa: BLE001 - any failure means "down" here
        log.warning("readyz: Redis down: %s", e)
        return "down"


def _check_broker(b: Any) -> str:
    if b.settings.celery_broker_url == b.settings.redis_url:
        return _check_redis(b)
    try:
        with b.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as e:  # noqa: BLE001 - any failure means "down" here
        log.warning("readyz: broker down: %s", e)
        return "down"
