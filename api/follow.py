"""Followers: WebSocket (DESIGN.md 2.2) and Server-Sent Events (2.3) relays of `fanout.follow`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from api import auth, fanout, limits, metrics, origins, shutdown, sockets, websocket
from api.backend import Backend, backend
from api.errors import Close, close_code_of
from api.routes import session_id_or_404
from shared import keys, logs, store
from shared.errors import ForbiddenOrigin, SessionNotFound, StreamsError

log = logging.getLogger(__name__)

bp = Blueprint("follow", __name__)
sock = Sock()


def _events(
    b: Backend,
    session_id: str,
    after: str | None,
    direct: fanout.Direct | None = None,
    status: str | None = None,
    wake_with: Callable[[Callable[[], None]], None] | None = None,
) -> Iterator[store.Batch]:
    """The session's events after `after` in batches, riding out Redis restarts
    (`status`: as read when the follower joined, if it was; `wake_with`: as
    `fanout.follow`'s)."""
    return fanout.follow_reconnecting(
        b.fanout,
        b.redis,
        session_id,
        after,
        block_ms=b.settings.api.xread_block_ms,
        outage_max_s=b.settings.redis.outage_max_s,
        direct=direct,
        status=status,
        wake_with=wake_with,
    )


class _DirectWs:
    """A plain WebSocket follower as the fan-out's reader writes to it (`fanout.Direct`):
    the batch's shared frames, one non-blocking write, the follower's metrics."""

    frames = staticmethod(websocket.text_frames)

    def __init__(self, conn: websocket.Socket, following: Following) -> None:
        self.last_id: str | None = None
        self._conn = conn
        self._metrics = following.metrics

    def write(self, data: bytes) -> int:
        if shutdown.is_stopping():
            return 0  # the follower ends and the connection closes with 1012
        return self._conn.write_now(data)

    def wrote(self, batch: store.Batch) -> None:
        self._metrics.sent(batch)


class Following:
    """One follower of a session, WebSocket or SSE: its place among the session's and the
    caller's followers (`limits`, 429 or close 4429 when full) and its metrics."""

    def __init__(self, session_id: str, kind: str) -> None:
        self.session_id = session_id
        self.place = limits.join_followers(session_id)
        self.metrics = metrics.Follower(kind)

    def batches(
        self,
        b: Backend,
        after: str | None,
        is_open: Callable[[], bool] = lambda: True,
        direct: fanout.Direct | None = None,
        wake_with: Callable[[Callable[[], None]], None] | None = None,
    ) -> Iterator[store.Batch]:
        """The batches to relay, until the process stops or `is_open()` turns false
        (`wake_with`: registers what makes a wait for live events end when it does).

        The caller sends each batch before it asks for the next: that is when it counts
        as delivered. With `direct`, live batches may reach the client through it instead
        (counted there), and an empty batch may ask the caller to flush it.
        """
        events = _events(b, self.session_id, after, direct, self.place.status, wake_with)
        for batch in events:
            if shutdown.is_stopping() or not is_open():
                return
            self.place.keep()
            yield batch
            if batch:
                self.metrics.sent(batch)

    def leave(self) -> None:
        """Give the place up and leave the metrics' gauge."""
        self.place.leave()
        self.metrics.leave()


websocket.refuse_bad_handshakes(bp, "follow.follow_ws")


@sock.route("/api/streams/<session_id>/ws", bp=bp)
@auth.takes_stream_token
def follow_ws(ws: Any, session_id: str) -> None:
    """Send the events after `?after=`, then live ones, then close 1000."""
    b = backend()
    conn = websocket.Socket(ws, request.environ, b.settings.api.ws_client_messages_per_min)
    shutdown.register(conn)
    try:
        after = _admit_ws(session_id)
        _relay_ws(conn, b, session_id, after)
    except Exception as e:
        if not _end_ws(conn, session_id, e):
            raise
        return
    finally:
        shutdown.unregister(conn)
    if conn.is_open and not shutdown.is_stopping():
        conn.close(Close.NORMAL)


def _admit_ws(session_id: str) -> str | None:
    """The cursor of a follow this upgrade may make; raises the error that refuses it.

    A WebSocket's refusals come after the upgrade, as a frame and a close code: a browser
    cannot read a refused handshake's status (`origins.failure`, `auth.failure`).
    """
    foreign = origins.failure()
    if foreign is not None:
        raise ForbiddenOrigin(foreign)
    refused = auth.failure()
    if refused is not None:
        raise refused
    after = store.parse_cursor(request.args.get("after"))
    if not keys.is_session_id(session_id):
        raise SessionNotFound(f"no session {session_id[:64]}")
    auth.check_owner(session_id)
    return after


def _relay_ws(conn: websocket.Socket, b: Backend, session_id: str, after: str | None) -> None:
    """Send the session's events until the terminal one, the client leaves or we stop.

    A plain client under gevent is written to by the fan-out's reader while it keeps up
    (`_DirectWs`); this greenlet sends the backlog, what the reader queued for it, and
    the rest of the reader's partial writes. A permessage-deflate client compresses with
    its own connection's state, so its frames cannot be shared: it stays on this path.
    """
    following = Following(session_id, "ws")
    direct = _DirectWs(conn, following) if conn.can_write_now else None
    try:
        # A client that leaves wakes its follower: its place is given up at once, not
        # at the next XREAD_BLOCK_MS.
        for batch in following.batches(b, after, lambda: conn.is_open, direct, conn.when_gone):
            if batch:
                conn.send_batch(batch, following.place.keep)
            elif direct is not None:
                conn.flush(following.place.keep)
    finally:
        following.leave()


def _end_ws(conn: websocket.Socket, session_id: str, e: Exception) -> bool:
    """Close a follow that failed with `e` as the contract says; False if it says nothing."""
    if isinstance(e, ConnectionClosed):
        return True  # the client went first
    if isinstance(e, redis.RedisError):
        log.warning("follower of %s lost Redis: %s", session_id, e)
        conn.close(Close.TRY_AGAIN_LATER, "unavailable")
        return True
    if isinstance(e, OSError):  # the send timed out or the socket broke: a dead client
        log.info("follower of %s dropped: %s", session_id, e)
        conn.drop()
        return True
    code = close_code_of(e)
    if code is None or not isinstance(e, StreamsError):
        return False
    conn.refuse(code, e.code, e.message)
    return True


# An SSE event named `error` also fires EventSource's own `error` handler, which is where
# transport failures (no data) arrive: every `error` event is followed by the same data
# under this name, which only the server sends.
SSE_STREAM_ERROR = b"stream_error"
# The most one write of an SSE response holds, and how much of what was written may wait
# unacknowledged before the next write (see `event_stream`).
SSE_WRITE_MAX = 64 * 1024
SSE_QUEUE_MAX = 4 * SSE_WRITE_MAX


def _sse(event: store.Event) -> bytes:
    if event["type"] == store.EventType.ERROR:
        return _sse_error(event.utf8(), event["id"].encode())
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event["id"].encode(),
        event["type"].encode(),
        event.utf8(),
    )


def _sse_error(data: bytes, event_id: bytes | None = None) -> bytes:
    """An `error` event and its `stream_error` twin (with the event's id, when it has one)."""
    head = b"id: %s\n" % event_id if event_id is not None else b""
    return b"".join(
        head + b"event: %s\ndata: %s\n\n" % (name, data) for name in (b"error", SSE_STREAM_ERROR)
    )


@bp.get("/api/streams/<session_id>")
@auth.takes_stream_token
def follow_sse(session_id: str) -> Response:
    """Server-Sent Events from `Last-Event-ID` (or `?after=`), live until the terminal event."""
    b = backend()
    auth.check_owner(session_id_or_404(session_id))
    # A browser's EventSource sends Last-Event-ID by itself on reconnect: it is the newest.
    after = store.parse_cursor(request.headers.get("Last-Event-ID") or request.args.get("after"))
    meta = store.read_meta(b.redis, session_id)  # 404 before any event
    if store.has_nothing_after(b.redis, session_id, meta.status, after):
        # An ended follow: 204 is what tells an EventSource to stop reconnecting.
        return Response(status=204)
    following = Following(session_id, "sse")  # 429 before any event

    def events() -> Iterator[bytes]:
        yield b": connected\n\n"
        try:
            # On a shutdown the response ends: EventSource reconnects with Last-Event-ID,
            # to another process.
            for batch in following.batches(b, after):
                yield b"".join([_sse(event) for event in batch])
        except SessionNotFound as e:
            yield _sse_error(websocket.error_frame(e.code, e.message).encode())
        except redis.RedisError as e:
            # End the response; EventSource reconnects with Last-Event-ID by itself.
            log.warning("SSE follower of %s lost Redis: %s", session_id, e)

    return event_stream(b, following, events())


def event_stream(
    b: Backend,
    following: Following,
    pieces: Iterator[bytes],
    headers: dict[str, str] | None = None,
) -> Response:
    """A `text/event-stream` response of `pieces`, for every route that streams a session
    over SSE (ours, the AI SDK's, the Responses API's).

    An empty piece means nothing new: a `: ping` comment goes out once nothing was written
    for `SSE_PING_S`. `pieces` runs after the request's teardown, in the same greenlet,
    with the session bound to its log lines. However the response ends, `pieces` is
    closed and the follower's place given up; a client that stops reading is dropped
    after `WS_SEND_TIMEOUT_S` (`time_out_sends`), at most `SSE_WRITE_MAX` bytes a write.
    """
    ping_s = b.settings.api.sse_ping_s
    send_timeout_s = b.settings.api.ws_send_timeout_s
    session_id = following.session_id
    sock = _client_socket()

    def body() -> Iterator[bytes]:
        logs.bind(session_id)
        last_write = time.monotonic()
        try:
            for piece in pieces:
                now = time.monotonic()
                if piece:
                    last_write = now
                    # gunicorn writes each piece with one `sendall`, whose timeout bounds
                    # the whole write: small pieces, each once the client has room for
                    # it, drop a client that stops reading but not one that reads slowly.
                    for start in range(0, len(piece), SSE_WRITE_MAX):
                        if sock is not None:
                            sockets.wait_for_room(
                                sock, SSE_QUEUE_MAX, send_timeout_s, following.place.keep
                            )
                        yield piece[start : start + SSE_WRITE_MAX]
                elif now - last_write >= ping_s:
                    last_write = now
                    yield b": ping\n\n"
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()

    response = Response(
        body(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
    # WSGI closes the response however it ends, even if the body never started.
    response.call_on_close(following.leave)
    time_out_sends(response, send_timeout_s)
    return response


def _client_socket() -> Any:
    """The request's connection, under gunicorn or werkzeug; None under another server."""
    return request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")


def time_out_sends(response: Response, timeout_s: float) -> None:
    """Fail the server's writes of this response after `timeout_s` without progress.

    gunicorn writes a streamed body with a blocking `sendall` and no timeout: a client
    that stops reading would hold its handler, its memory and (unrenewed) its follower
    place for ever. A timed-out write raises in gunicorn, which closes the connection and
    the response, and so gives the place up. The socket's own timeout comes back when
    the response is closed, for the connection's next request.
    """
    sock = _client_socket()
    if sock is None:
        return
    before = sock.gettimeout()
    sock.settimeout(timeout_s)
    response.call_on_close(lambda: sock.settimeout(before))
