"""The HTTP endpoints of the contract (DESIGN.md 2.1)."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from nanoid import generate as nanoid
from werkzeug.exceptions import RequestEntityTooLarge

from api import auth, hosts, limits, presentation, sessions, tokens
from api.backend import backend
from api.errors import error_response
from api.validation import parse_generate, parse_whole_number
from shared import keys, listing, logs, store
from shared.errors import InvalidRequest, SessionNotFound
from shared.jobs import GenerationRequest, enqueue

log = logging.getLogger(__name__)

bp = Blueprint("streams", __name__)

MAX_IDEMPOTENCY_KEY_LEN = 255
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


def _created(session_id: str, status: str, model: str | None, created_at: str | None) -> Response:
    body = {
        "sessionId": session_id,
        "status": status,
        "model": model,
        **urls(session_id),
        "createdAt": created_at,
    }
    settings = backend().settings
    if settings.api.has_api_keys:
        token, expires_ms = tokens.mint(
            settings.api.stream_token_secret,
            session_id,
            auth.caller().owner,
            settings.api.stream_token_ttl_s,
        )
        body["streamToken"] = token
        body["tokenExpiresAt"] = presentation.iso_ms(expires_ms)
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = f"/api/streams/{session_id}"
    return response


def _is_printable_ascii(value: str) -> bool:
    # An Idempotency-Key is a structured-field string (RFC 8941): printable ASCII only.
    return value.isascii() and value.isprintable()


def json_body() -> Any:
    """The request's JSON body; raises `InvalidRequest` (400) or `RequestEntityTooLarge` (413)."""
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


@bp.post("/api/streams/generate")
def create() -> Response:
    """Validate, store the request, enqueue generation."""
    b = backend()
    generation = parse_generate(json_body(), b.settings)
    started = start(generation, request.headers.get("Idempotency-Key"))
    return _created(started.session_id, started.status, started.model, started.created_at)


def start(generation: GenerationRequest, idem_key: str | None) -> sessions.Started:
    """Start `generation` for the current caller as every route that starts one does: a
    new session id, its Idempotency-Key checked, `sessions.start_session`."""
    b = backend()
    session_id = nanoid()
    logs.bind(session_id)
    if idem_key is not None and not (
        0 < len(idem_key) <= MAX_IDEMPOTENCY_KEY_LEN and _is_printable_ascii(idem_key)
    ):
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
        )
    return sessions.start_session(
        b.redis,
        b.settings,
        generation,
        session_id=session_id,
        caller=sessions.Caller(auth.caller().owner, limits.caller_bucket()),
        enqueue=lambda sid: enqueue(b.celery, sid, b.settings.worker.queue),
        idempotency_key=idem_key,
    )


@bp.get("/api/streams/generate")
def stream_info() -> Response:
    """Status, chunk count and result of a session."""
    session_id = request.args.get("sessionId")
    if not session_id:
        raise InvalidRequest("the sessionId query parameter is required")
    auth.check_owner(session_id_or_404(session_id))
    return jsonify(presentation.stream_info(store.read_meta(backend().redis, session_id)))


@bp.get("/api/streams")
def list_streams() -> Response:
    """The caller's sessions, newest first, a page at a time, optionally of one status."""
    if not backend().settings.api.has_api_keys:
        # Without keys a session's id is its only secret: listing them would give them away.
        return error_response(
            404, "not_found", "Listing sessions needs API keys (API_KEYS or API_KEYS_FILE)."
        )
    status = request.args.get("status")
    if status is not None and status not in {s.value for s in store.Status}:
        raise InvalidRequest(f"status must be one of {', '.join(s.value for s in store.Status)}")
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
    return jsonify(
        sessions=[presentation.stream_info(m) for m in page.sessions], nextCursor=page.next_cursor
    )


@bp.get("/api/streams/<session_id>/text")
def text(session_id: str) -> Response:
    """Everything generated so far as one string."""
    auth.check_owner(session_id_or_404(session_id))
    status, body, chunks = store.read_text(backend().redis, session_id)
    return jsonify(sessionId=session_id, status=status, text=body, chunks=chunks)


@bp.get("/api/streams/<session_id>/message")
def message(session_id: str) -> Response:
    """The assistant message generated so far: text, reasoning and tool calls."""
    auth.check_owner(session_id_or_404(session_id))
    return jsonify(presentation.message(store.read_answer(backend().redis, session_id)))


@bp.delete("/api/streams/<session_id>")
def stop(session_id: str) -> tuple[Response, int]:
    """Cancel generation: 202 if it was live, 200 with the final status if it had ended."""
    auth.check_owner(session_id_or_404(session_id))
    return stop_session(session_id)


def stop_session(session_id: str) -> tuple[Response, int]:
    """Cancel a session the caller may see: 202 if it was live, else 200 and its status."""
    b = backend()
    was_live, status = store.cancel(b.redis, session_id, ttl_s=b.settings.stream_ttl_s)
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
    if b.settings.redis.broker_url == b.settings.redis.url:
        return _check_redis(b)
    try:
        with b.celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as e:  # noqa: BLE001 - any failure means "down" here
        log.warning("readyz: broker down: %s", e)
        return "down"
