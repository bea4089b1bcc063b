"""`GET /api/chat/ws`: the AI SDK's `WebSocketChatTransport` protocol (DESIGN.md 2.6).

Several requests share one socket, each named by the client's `requestId`. Client frames:
`send` (a chat request, as `POST /api/chat` takes it: `id`, `messages`, `trigger`,
`messageId`, the extra `body` fields, credentials in `headers`), `resume` (the chat's
active stream, after `lastSequence`) and `abort` (stop relaying that request; the
generation goes on). Server frames: `start`, `chunk` (`sequence`: the chunk's position in
the session's chunk list, the same on every connection and API instance), `end`,
`no-active` and `error`. Each request is relayed by its own thread through the same
follower as the SSE route (`follow.Following`) and the process's fan-out.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import redis
from celery.exceptions import CeleryError
from flask import Blueprint, request
from kombu.exceptions import KombuError
from simple_websocket import ConnectionClosed

from api import auth, origins, routes, shutdown, uimessages, websocket
from api.backend import Backend, backend
from api.chat import ChatScope, stopped_if_unfollowed
from api.errors import Close
from api.follow import Following, sock
from shared import store
from shared.errors import InvalidRequest, SessionNotFound, StreamsError, Unauthorized

log = logging.getLogger(__name__)

bp = Blueprint("chatws", __name__)

# Requests one socket may relay at once (a page has a chat or a few).
MAX_REQUESTS = 16
MAX_REQUEST_ID_LEN = 200
RECEIVE_WAIT_S = 1.0
UNAVAILABLE = "The service is unavailable; retry shortly."


def _frame(**fields: Any) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


websocket.refuse_bad_handshakes(bp, "chatws.chat_ws")


class Relay:
    """One request's stream: the session's chunks after `after_sequence`, then `end`."""

    def __init__(
        self,
        conn: websocket.Socket,
        b: Backend,
        request_id: str,
        scope: ChatScope,
        active: store.ActiveChat,
        after_sequence: int,
    ) -> None:
        self.conn = conn
        self.b = b
        self.request_id = request_id
        self.scope = scope
        self.active = active
        self.after_sequence = after_sequence
        self.is_stopped = False
        self.following = Following(active.session_id, "ws")  # 429 before the thread starts
        self.thread = threading.Thread(target=self._run, name="chat-relay", daemon=True)

    def start(self) -> None:
        """Relay in a thread of its own."""
        self.thread.start()

    def stop(self) -> None:
        """Send nothing more for this request (its `abort`, or the socket is gone)."""
        self.is_stopped = True

    @property
    def is_done(self) -> bool:
        """Whether the relay has finished."""
        return not self.thread.is_alive()

    def _send(self, frames: list[str]) -> None:
        if frames and not self.is_stopped:
            self.conn.send_texts(frames, self.following.place.keep)

    def _run(self) -> None:
        try:
            self._relay()
        except ConnectionClosed:
            return  # the client went
        except OSError as e:  # the send timed out or the socket broke: a dead client
            log.info("chat relay of %s dropped: %s", self.active.session_id, e)
            self.conn.drop()
        except SessionNotFound as e:
            self._send([_frame(type="error", requestId=self.request_id, errorText=e.message)])
        except redis.RedisError as e:
            log.warning("chat relay of %s lost Redis: %s", self.active.session_id, e)
            self._send([_frame(type="error", requestId=self.request_id, errorText=UNAVAILABLE)])
        except Exception:  # a relay thread must not die silently
            log.exception("chat relay of %s failed", self.active.session_id)
        finally:
            self.following.leave()

    def _relay(self) -> None:
        mapper = uimessages.ChunkMapper(self.active.message_id)
        sequence = -1
        frames = [_frame(type="start", requestId=self.request_id)]
        pending = mapper.start()
        is_open = lambda: self.conn.is_open and not self.is_stopped  # noqa: E731
        for batch in self.following.batches(self.b, None, is_open):
            for event in batch:
                pending += mapper.push(event)
            for chunk in pending:
                sequence += 1
                if sequence > self.after_sequence:
                    frames.append(
                        _frame(
                            type="chunk", requestId=self.request_id, sequence=sequence, chunk=chunk
                        )
                    )
            pending = []
            self._send(frames)
            frames = []
            if mapper.is_ended:
                self.scope.clear(self.b.redis, self.active)
                self._send([_frame(type="end", requestId=self.request_id)])
                return


class ChatSocket:
    """One client's connection: its frames, handled in order, and its running relays."""

    def __init__(self, conn: websocket.Socket, b: Backend) -> None:
        self.conn = conn
        self.b = b
        self.relays: dict[str, Relay] = {}
        # The upgrade's credentials; a frame's own `headers` take precedence.
        self.authorization = request.headers.get("Authorization", "")

    def serve(self) -> None:
        """Handle frames until the client leaves or the process stops."""
        while self.conn.is_open and not shutdown.is_stopping():
            message = self.conn.receive(RECEIVE_WAIT_S)
            self.relays = {k: r for k, r in self.relays.items() if not r.is_done}
            if message is not None:
                self.handle(message)

    def stop(self) -> None:
        """Stop every relay (the socket is closing)."""
        for relay in self.relays.values():
            relay.stop()

    def error(self, request_id: str, text: str) -> None:
        """Fail one request with `text`."""
        self.conn.send_texts([_frame(type="error", requestId=request_id, errorText=text)])

    def handle(self, message: str | bytes) -> None:
        """Handle one client frame."""
        try:
            frame = json.loads(message)
        except (ValueError, RecursionError):
            frame = None
        request_id = frame.get("requestId") if isinstance(frame, dict) else None
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID_LEN:
            # No request to answer: the protocol's answer to a malformed frame.
            log.info("closing a chat WebSocket that sent a malformed frame")
            self.conn.close(Close.POLICY_VIOLATION, "invalid_frame")
            return
        assert isinstance(frame, dict)
        kind = frame.get("type")
        if kind == "abort":
            relay = self.relays.pop(request_id, None)
            if relay is not None:
                relay.stop()
            return
        if kind not in ("send", "resume"):
            self.error(request_id, f"unknown frame type {str(kind)[:64]!r} (send, resume, abort)")
            return
        if request_id in self.relays:
            self.error(request_id, "this requestId is already in use on this connection")
            return
        if len(self.relays) >= MAX_REQUESTS:
            self.error(request_id, f"at most {MAX_REQUESTS} requests at once per connection")
            return
        try:
            auth.act_as(self._caller(frame.get("headers")))
            if kind == "send":
                self._send(request_id, frame)
            else:
                self._resume(request_id, frame)
        except StreamsError as e:
            self.error(request_id, e.message)
        except redis.RedisError as e:
            log.warning("chat WebSocket: Redis failed: %s", e)
            self.error(request_id, UNAVAILABLE)
        except (KombuError, CeleryError) as e:
            log.warning("chat WebSocket: broker failed: %s", e)
            self.error(request_id, UNAVAILABLE)
        except (ConnectionClosed, OSError):
            raise  # the client went: `serve` ends
        except Exception:  # one request's failure must not end the others on the socket
            log.exception("chat WebSocket: a %s frame failed", kind)
            self.error(request_id, "The server failed to handle this request.")

    def _caller(self, headers: Any) -> auth.Caller:
        """Who sends this frame: the frame's `Authorization`, else the upgrade's."""
        if not self.b.settings.api.has_api_keys:
            return auth.OPEN
        header = _header(headers, "authorization") or self.authorization
        if not header:
            raise Unauthorized(
                "this endpoint needs `Authorization: Bearer <API key>` in the frame's headers "
                "(the transport's `headers` option) or the upgrade request"
            )
        return auth.from_authorization(self.b.settings, header)

    def _send(self, request_id: str, frame: dict[str, Any]) -> None:
        body = frame.get("body")
        if body is not None and not isinstance(body, dict):
            raise InvalidRequest("body must be an object")
        chat = uimessages.parse_chat(
            {
                **(body or {}),
                **{k: frame[k] for k in uimessages.CHAT_FIELDS if frame.get(k) is not None},
            },
            self.b.settings,
        )
        started = routes.start(chat.generation, _header(frame.get("headers"), "idempotency-key"))
        active = store.ActiveChat(started.session_id, chat.message_id_for(started.session_id))
        scope = ChatScope(chat.chat_id)
        scope.record(self.b.redis, active, self.b.settings.stream_ttl_s)
        log.info("chat session %s started over WebSocket (%s)", started.session_id, chat.trigger)
        with stopped_if_unfollowed(self.b, started):
            self._relay(request_id, scope, active, -1)

    def _resume(self, request_id: str, frame: dict[str, Any]) -> None:
        last = frame.get("lastSequence")
        if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 0):
            raise InvalidRequest("lastSequence must be a whole number from 0")
        scope = ChatScope(uimessages.check_chat_id(frame.get("id")))
        active = scope.active(self.b.redis)
        if active is None:
            self.conn.send_texts([_frame(type="no-active", requestId=request_id)])
            return
        self._relay(request_id, scope, active, -1 if last is None else last)

    def _relay(
        self, request_id: str, scope: ChatScope, active: store.ActiveChat, after: int
    ) -> None:
        relay = Relay(self.conn, self.b, request_id, scope, active, after)
        self.relays[request_id] = relay
        relay.start()


def _header(headers: Any, name: str) -> str | None:
    """A header of a frame's `headers` object, by its lower-case name."""
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


@sock.route("/api/chat/ws", bp=bp)
@auth.public  # credentials come with each frame (browsers cannot set upgrade headers)
def chat_ws(ws: Any) -> None:
    """Serve the chat protocol until the client closes."""
    b = backend()
    conn = websocket.Socket(
        ws,
        request.environ,
        b.settings.api.ws_client_messages_per_min,
        reads_up_to=b.settings.limits.max_body_bytes,
    )
    foreign = origins.failure()
    if foreign is not None:
        conn.close(Close.FORBIDDEN_ORIGIN, "forbidden_origin")
        return
    shutdown.register(conn)
    chat = ChatSocket(conn, b)
    try:
        chat.serve()
    except ConnectionClosed:
        pass  # the client went
    except OSError as e:  # the send timed out or the socket broke: a dead client
        log.info("chat WebSocket dropped: %s", e)
        conn.drop()
    finally:
        chat.stop()
        shutdown.unregister(conn)
