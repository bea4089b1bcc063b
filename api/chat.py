"""The AI SDK's chat protocol over HTTP (DESIGN.md 2.6): what `DefaultChatTransport` and
`useChat({ resume: true })` call.

`POST /api/chat` starts a session from UI messages as `POST /api/streams/generate` does
(`routes.start`) and records it as the chat's active stream; the answer, and
`GET /api/chat/<chatId>/stream`, are the session as UI message chunks, relayed by the same
follower as the SSE route (`follow.Following`). `DELETE /api/chat/<chatId>/stream` is
`DELETE /api/streams/<id>` on the chat's active session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from flask import Blueprint, Response, request

from api import auth, limits, routes, sessions, uimessages
from api.backend import Backend, backend
from api.follow import Following, event_stream
from shared import logs, store
from shared.errors import SessionNotFound, TooManyRequests

log = logging.getLogger(__name__)

bp = Blueprint("chat", __name__)

DONE = b"data: [DONE]\n\n"


def _data(chunks: list[uimessages.Chunk]) -> bytes:
    return b"".join([b"data: %s\n\n" % uimessages.encode(c).encode() for c in chunks])


class ChatScope:
    """Whose chat ids these are: the caller's key id, or in open mode its client (as for
    Idempotency-Keys), so one tenant's chat id never reaches another's stream."""

    def __init__(self, chat_id: str) -> None:
        caller = sessions.Caller(auth.caller().owner, limits.caller_bucket())
        self.chat_id = chat_id
        self.owner = caller.owner
        self.client = caller.idempotency_client

    def record(self, r: redis.Redis, active: store.ActiveChat, ttl_s: int) -> None:
        """Make `active` this chat's active session."""
        store.record_chat(
            r, self.chat_id, active, ttl_s=ttl_s, owner=self.owner, client=self.client
        )

    def clear(self, r: redis.Redis, active: store.ActiveChat) -> None:
        """Forget `active` as this chat's session (unless a newer one replaced it)."""
        store.clear_chat(r, self.chat_id, active, owner=self.owner, client=self.client)

    def recorded(self, r: redis.Redis) -> store.ActiveChat | None:
        """The chat's recorded session, ended or not."""
        return store.read_chat(r, self.chat_id, owner=self.owner, client=self.client)

    def active(self, r: redis.Redis) -> store.ActiveChat | None:
        """The chat's session if it is still queued or running; an ended or vanished one
        is cleared and never served as active."""
        active = self.recorded(r)
        if active is None:
            return None
        try:
            meta = store.read_meta(r, active.session_id)
        except SessionNotFound:
            meta = None
        if meta is None or meta.owner != self.owner or meta.status in store.TERMINAL_STATUSES:
            self.clear(r, active)
            return None
        return active


@bp.post("/api/chat")
def post_chat() -> Response:
    """Start a session from the chat request and answer it as UI message chunks."""
    b = backend()
    chat = uimessages.parse_chat(routes.json_body(), b.settings)
    started = routes.start(chat.generation, request.headers.get("Idempotency-Key"))
    active = store.ActiveChat(started.session_id, chat.message_id_for(started.session_id))
    scope = ChatScope(chat.chat_id)
    scope.record(b.redis, active, b.settings.stream_ttl_s)
    log.info("chat session %s started (%s)", started.session_id, chat.trigger)
    with stopped_if_unfollowed(b, started):
        return ui_message_stream(b, scope, active)


@contextmanager
def stopped_if_unfollowed(b: Backend, started: sessions.Started) -> Iterator[None]:
    """Cancel a session just started when its caller is refused a follower place (429):
    the caller never reads it, and a retry would start another."""
    try:
        yield
    except TooManyRequests:
        if not started.is_replay:
            store.cancel(b.redis, started.session_id, ttl_s=b.settings.stream_ttl_s)
        raise


@bp.get("/api/chat/<chat_id>/stream")
def follow_chat(chat_id: str) -> Response:
    """The chat's active stream from its first chunk, then live; 204 when there is none."""
    b = backend()
    scope = ChatScope(uimessages.check_chat_id(chat_id, "chatId"))
    active = scope.active(b.redis)
    if active is None:
        return Response(status=204)
    logs.bind(active.session_id)
    return ui_message_stream(b, scope, active)


@bp.delete("/api/chat/<chat_id>/stream")
def stop_chat(chat_id: str) -> tuple[Response, int]:
    """Stop the chat's active generation: `DELETE /api/streams/<id>` on it; 404 when the
    chat has no recorded session."""
    b = backend()
    scope = ChatScope(uimessages.check_chat_id(chat_id, "chatId"))
    active = scope.recorded(b.redis)
    if active is None:
        raise SessionNotFound(f"chat {chat_id!r} has no active stream")
    auth.check_owner(active.session_id)
    answer = routes.stop_session(active.session_id)
    scope.clear(b.redis, active)
    return answer


def ui_message_stream(b: Backend, scope: ChatScope, active: store.ActiveChat) -> Response:
    """The session as the UI message stream protocol (v1): its chunks from the first one,
    `: ping` comments while nothing comes, `data: [DONE]` after the last."""
    session_id = active.session_id
    following = Following(session_id, "sse")  # 429 before any chunk

    def pieces() -> Iterator[bytes]:
        mapper = uimessages.ChunkMapper(active.message_id)
        yield _data(mapper.start())
        try:
            for batch in following.batches(b, None):
                yield _data([chunk for event in batch for chunk in mapper.push(event)])
                if mapper.is_ended:
                    break
        except SessionNotFound as e:
            yield _data([*mapper.push({"type": "error", "error": {"message": e.message}})])
        except redis.RedisError as e:
            # End the response without [DONE]: the client reconnects (GET .../stream).
            log.warning("chat follower of %s lost Redis: %s", session_id, e)
            return
        if mapper.is_ended:
            scope.clear(b.redis, active)
            yield DONE

    return event_stream(
        b,
        following,
        pieces(),
        {
            uimessages.STREAM_HEADER: uimessages.STREAM_VERSION,
            "X-Session-Id": session_id,
            "X-Message-Id": active.message_id,
        },
    )
