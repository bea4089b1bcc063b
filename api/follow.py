"""Followers: WebSocket (DESIGN.md 2.2) and Server-Sent Events (2.3) relays of `streams.follow`."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from api import auth, fanout, limits, metrics, origins, shutdown
from api.backend import Backend, backend
from api.routes import session_id_or_404
from shared import keys, logs, store
from shared.errors import BadCursor, InvalidRequest, SessionNotFound, TooManyRequests

log = logging.getLogger(__name__)

bp = Blueprint("follow", __name__)
sock = Sock()

# WebSocket close codes of the contract.
CLOSE_NORMAL = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_BAD_CURSOR = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def _error_frame(code: str, message: str) -> str:
    return _dumps({"type": "error", "error": {"code": code, "message": message}})


class _FrameBudget:
    """Stands in for simple-websocket's wsproto connection (`ws.ws`), whose events its
    reader thread handles, to count what the client sends: each message, ping and pong.
    Past `per_min` in a minute it closes the connection with 1008.

    simple-websocket answers every ping with a pong and reads as fast as a client writes:
    uncounted, a ping flood costs the API a core. Raising `LocalProtocolError` is how its
    reader stops on its own; it then closes the socket, and the handler sees `connected`
    go false.
    """

    def __init__(self, ws: Any, per_min: int) -> None:
        self._ws = ws
        self._conn = ws.ws
        self.per_min = per_min
        self.count = 0
        self.window_end = time.monotonic() + 60

    def events(self) -> Iterator[Any]:
        """The connection's events, each client frame counted."""
        for event in self._conn.events():
            if isinstance(event, Ping | Pong) or (
                isinstance(event, Message) and event.message_finished
            ):
                self._count()
            yield event

    def _count(self) -> None:
        now = time.monotonic()
        if now >= self.window_end:
            self.count, self.window_end = 0, now + 60
        self.count += 1
        if self.count > self.per_min:
            log.info(
                "closing a WebSocket that sent more than %d messages, pings and pongs a minute",
                self.per_min,
            )
            close = CloseConnection(CLOSE_POLICY_VIOLATION, "too_many_messages")
            self._ws.sock.send(self._conn.send(close))
            _discard_input(self._ws.sock)
            raise LocalProtocolError("too many client frames")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _discard_input(sock: Any, max_reads: int = 16) -> None:
    """Read and drop what a client has sent already, before the socket is closed.

    Closing a socket with unread input sends a reset, which can overtake the close frame
    just sent: the client would see a reset instead of the reason. Bounded, since a
    flooding client may never stop.
    """
    sock.settimeout(0.05)
    try:
        for _ in range(max_reads):
            if not sock.recv(65536):
                return
    except OSError:
        return


def _events(b: Backend, session_id: str, after: str | None) -> Iterator[store.Batch]:
    """The session's events after `after` in batches, riding out Redis restarts."""
    return fanout.follow_reconnecting(
        b.fanout,
        b.redis,
        session_id,
        after,
        block_ms=b.settings.api.xread_block_ms,
        outage_max_s=b.settings.redis.outage_max_s,
    )


def _frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def _send_frames(ws: Any, batch: store.Batch, *, is_plain: bool) -> None:
    """Send a batch of events as text frames with one socket write.

    simple-websocket's `send` makes a system call per frame, which is most of the time a
    replay of thousands of events takes. Without an extension (`is_plain`) a frame is
    the event's shared UTF-8 text behind a 2 to 10 byte header; with permessage-deflate,
    which compresses with per-connection state, the connection's own wsproto makes the
    frames. Either way the batch goes out in one write through the app's
    `_SendAllSocket`, which also serialises it with simple-websocket's pings.
    """
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    if is_plain:
        data = b"".join([_frame(event.utf8()) for event in batch])
    else:
        data = b"".join([ws.ws.send(TextMessage(data=event.json())) for event in batch])
    ws.sock.send(data)


def _handshake_error() -> str | None:
    """Why simple-websocket's handshake would fail on this request (it raises: a 500), if it would.

    The same wsproto handshake on the same bytes simple-websocket builds from the environ.
    """
    head = b"GET / HTTP/1.1\r\n"
    for key, value in request.environ.items():
        if key.startswith("HTTP_"):
            header = "-".join([p.capitalize() for p in key[5:].split("_")])
            head += f"{header}: {value}\r\n".encode()
    conn = WSConnection(ConnectionType.SERVER)
    try:
        conn.receive_data(head + b"\r\n")
        for event in conn.events():
            if isinstance(event, Request):
                conn.send(AcceptConnection(extensions=[PerMessageDeflate()]))
    except (RemoteProtocolError, LocalProtocolError, ValueError) as e:
        return str(e)[:200] or type(e).__name__
    return None


@bp.before_request
def _refuse_bad_handshakes() -> None:
    if request.endpoint == "follow.follow_ws" and (why := _handshake_error()):
        raise InvalidRequest(f"not a valid WebSocket handshake: {why}", code="bad_handshake")


@sock.route("/api/streams/<session_id>/ws", bp=bp)
@auth.takes_stream_token
def follow_ws(ws: Any, session_id: str) -> None:
    """Send the events after `?after=`, then live ones, then close 1000."""
    b = backend()
    # simple-websocket's reader keeps every message a client sends for `receive`, which
    # nothing here calls: unbounded, a client could fill our memory. Drop them as they come,
    # and close on a client that floods.
    ws.input_buffer = deque(maxlen=0)
    if per_min := b.settings.api.ws_client_messages_per_min:
        ws.ws = _FrameBudget(ws, per_min)
    foreign = origins.failure()
    if foreign is not None:
        ws.send(_error_frame(origins.FORBIDDEN_ORIGIN, foreign))
        ws.close(CLOSE_FORBIDDEN_ORIGIN, origins.FORBIDDEN_ORIGIN)
        return
    refused = auth.failure()
    if refused is not None:
        ws.send(_error_frame(refused.code, refused.message))
        ws.close(CLOSE_UNAUTHORIZED, refused.code)
        return
    try:
        after = store.parse_cursor(request.args.get("after"))
    except BadCursor as e:
        ws.send(_error_frame(e.code, e.message))
        ws.close(CLOSE_BAD_CURSOR, e.code)
        return
    # wsproto (simple-websocket) accepts permessage-deflate only if the client offers it.
    is_plain = "permessage-deflate" not in request.headers.get("Sec-WebSocket-Extensions", "")
    shutdown.register(ws)
    place = None
    follower = None
    try:
        if not keys.is_session_id(session_id):
            raise SessionNotFound(f"no session {session_id[:64]}")
        auth.check_owner(session_id)
        place = limits.join_followers(session_id)
        follower = metrics.Follower("ws")
        for batch in _events(b, session_id, after):
            if shutdown.is_stopping() or not ws.connected:
                return
            place.keep()
            if batch:
                _send_frames(ws, batch, is_plain=is_plain)
                follower.sent(batch)
    except SessionNotFound as e:
        ws.send(_error_frame(e.code, e.message))
        ws.close(CLOSE_NOT_FOUND, e.code)
        return
    except TooManyRequests as e:
        ws.send(_error_frame(e.code, e.message))
        ws.close(CLOSE_TOO_MANY, e.code)
        return
    except redis.RedisError as e:
        log.warning("follower of %s lost Redis: %s", session_id, e)
        ws.close(CLOSE_TRY_AGAIN_LATER, "unavailable")
        return
    except ConnectionClosed:
        return
    except OSError as e:  # the send timed out or the socket broke: a dead client
        log.info("follower of %s dropped: %s", session_id, e)
        ws.connected = False
        ws.sock.close()
        return
    finally:
        shutdown.unregister(ws)
        if place is not None:
            place.leave()
        if follower is not None:
            follower.leave()
    ws.close(CLOSE_NORMAL)


# An SSE event named `error` also fires EventSource's own `error` handler, which is where
# transport failures (no data) arrive: every `error` event is followed by the same data
# under this name, which only the server sends.
SSE_STREAM_ERROR = b"stream_error"


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
    place = limits.join_followers(session_id)  # 429 before any event
    follower = metrics.Follower("sse")
    ping_s = b.settings.api.sse_ping_s

    def body() -> Iterator[bytes]:
        # The body runs after the request's teardown, in the same greenlet.
        logs.bind(session_id)
        last_write = time.monotonic()
        yield b": connected\n\n"
        try:
            for batch in _events(b, session_id, after):
                if shutdown.is_stopping():
                    return  # EventSource reconnects with Last-Event-ID, to another process
                place.keep()
                now = time.monotonic()
                if not batch:
                    if now - last_write >= ping_s:
                        last_write = now
                        yield b": ping\n\n"
                    continue
                last_write = now
                yield b"".join([_sse(event) for event in batch])
                follower.sent(batch)
        except SessionNotFound as e:
            yield _sse_error(_error_frame(e.code, e.message).encode())
        except redis.RedisError as e:
            # End the response; EventSource reconnects with Last-Event-ID by itself.
            log.warning("SSE follower of %s lost Redis: %s", session_id, e)

    response = Response(
        body(),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # WSGI closes the response however it ends, even if the body never started.
    response.call_on_close(place.leave)
    response.call_on_close(follower.leave)
    _time_out_sends(response, b.settings.api.ws_send_timeout_s)
    return response


def _time_out_sends(response: Response, timeout_s: float) -> None:
    """Fail the server's writes of this response after `timeout_s` without progress.

    gunicorn writes a streamed body with a blocking `sendall` and no timeout: a client
    that stops reading would hold its handler, its memory and (unrenewed) its follower
    place for ever. A timed-out write raises in gunicorn, which closes the connection and
    the response, and so gives the place up. The socket's own timeout comes back when
    the response is closed, for the connection's next request.
    """
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    if sock is None:
        return
    before = sock.gettimeout()
    sock.settimeout(timeout_s)
    response.call_on_close(lambda: sock.settimeout(before))
