"""Every workaround for flask-sock, simple-websocket 1.1 and wsproto, in one place.

The follower handler (`api/follow.py`) sees a `Socket`: send a batch of events, refuse
with an error frame and a close code, close, drop a dead client. The app (`api/app.py`)
installs `WholeFrames` and `server_options`; importing this module gives flask-sock its
connection class (`_Server`). Nothing else reaches into simple-websocket's
`ws.ws`, `ws.sock` or `ws.input_buffer`; each reach below names the library behaviour it
works around (docs/ARCHITECTURE.md, "WebSocket").
"""

from __future__ import annotations

import _socket
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import flask_sock
import gevent
import simple_websocket
from flask import Blueprint, Response, request
from gevent import monkey
from simple_websocket import ConnectionClosed
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import (
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, generate_accept_token

from api import shutdown, sockets
from api.errors import Close, error_response, unexpected
from shared import store
from shared.settings import Settings

log = logging.getLogger(__name__)

# A client message over this closes with 1009 (simple-websocket's `max_message_size`).
MAX_MESSAGE_BYTES = 64 * 1024


def _nothing() -> None:
    pass


def server_options(settings: Settings) -> dict[str, Any]:
    """flask-sock's `SOCK_SERVER_OPTIONS`: pings (a missing pong closes with 1008), the
    message size limit, and how the connection's reader starts (`_Reader`)."""
    return {
        "ping_interval": settings.api.ws_ping_s,
        "max_message_size": MAX_MESSAGE_BYTES,
        "thread_class": _Reader,
    }


class _Reader:
    """simple-websocket's reader of a connection (its `thread_class`): a bare greenlet
    under gevent, a thread otherwise.

    Under gevent a `threading.Thread` is a greenlet too, but one that builds a thread's
    bookkeeping (and a stand-in thread for the request's greenlet, its parent) and waits
    to be told it started, none of which the reader uses: in `python -m bench.joinloop
    --profile`, simple-websocket's set-up besides the handshake went from 6 to 3 % of a
    join's samples.
    """

    name = "simple_websocket.Base._thread"

    def __init__(self, target: Callable[[], None]) -> None:
        self._target = target

    def start(self) -> None:
        if monkey.is_module_patched("threading"):
            gevent.spawn(self._target)
        else:
            threading.Thread(target=self._target, name=self.name).start()


class _Server(simple_websocket.Server):
    """simple-websocket's server connection, whose ping timeout spares a client that is
    still taking what was written to it, and whose handshake reads a plain client's
    request from the WSGI environment (`handshake`).

    simple-websocket closes with 1008 when a ping's pong has not come by the next ping
    (`WS_PING_S`). A ping waits behind everything written before it, up to the
    megabytes that the kernel's buffers hold: a client taking a long catch-up over a
    slow link, or on a busy machine, reads the ping and answers only after all of them,
    and was closed while it read steadily. Such a client counts as alive: since the ping
    it acknowledged more of what was written, and more still waits for it
    (`sockets.is_taking`). A client that stops reading acknowledges nothing more, and
    one that reads but never answers is closed once it has read what waited.
    """

    _pong = True
    _acked_at_ping: int | None = None
    # Called once simple-websocket's reader has stopped: the connection is gone.
    on_gone: Callable[[], None] | None = None

    def _thread(self) -> None:
        """simple-websocket's reader; then `on_gone`."""
        try:
            super()._thread()
        finally:
            if self.on_gone is not None:
                self.on_gone()

    @property
    def pong_received(self) -> bool:
        """Read by simple-websocket's reader at each ping interval."""
        return self._pong or sockets.is_taking(self.sock, self._acked_at_ping)

    @pong_received.setter
    def pong_received(self, value: bool) -> None:
        self._pong = value
        if not value:  # simple-websocket sends a ping next
            self._acked_at_ping = sockets.acked(self.sock)

    def handshake(self) -> None:
        """Accept a plain client's upgrade without re-parsing its request.

        simple-websocket writes the request's headers out again as HTTP for wsproto to
        parse with h11 and writes its answer through h11: a tenth of the API's CPU for a
        follower's join. A request that asks for no extension or subprotocol and passes
        wsproto's own checks is answered here, and its wsproto connection starts open, as
        wsproto makes it on accepting. Any other (a refusal, permessage-deflate, a
        subprotocol) goes through simple-websocket's handshake as before.
        """
        key = _plain_upgrade_key(self.environ)
        if key is not None:
            self.ws.connection = Connection(ConnectionType.SERVER)
            self.sock.send(_SWITCHING % generate_accept_token(key))
            self.connected = True
            return
        super().handshake()


def _plain_upgrade_key(environ: MutableMapping[str, Any]) -> bytes | None:
    """The Sec-WebSocket-Key of an upgrade that wsproto would accept (the checks of its
    `_process_connection_request`) and that asks for no extension or subprotocol; None
    for any other."""
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
    host = environ.get("HTTP_HOST", "")
    tokens = environ.get("HTTP_CONNECTION", "").split(",")
    if not (
        key.isascii()
        and key
        and host.isascii()
        and host
        and environ.get("HTTP_SEC_WEBSOCKET_VERSION") == "13"
        and environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        and any(token.strip().lower() == "upgrade" for token in tokens)
        and "HTTP_SEC_WEBSOCKET_EXTENSIONS" not in environ
        and "HTTP_SEC_WEBSOCKET_PROTOCOL" not in environ
    ):
        return None
    try:
        host.encode().decode("idna")  # wsproto refuses a host the codec refuses
    except UnicodeError:
        return None
    return str(key).encode()


# What wsproto answers an upgrade it accepts with no extension or subprotocol.
_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: %s\r\n\r\n"
)

# flask-sock makes each connection with its module's `Server`.
flask_sock.Server = _Server


def error_frame(code: str, message: str) -> str:
    """The contract's `error` frame (no `id`): what a refused follower reads before the close."""
    error = {"type": "error", "error": {"code": code, "message": message}}
    return json.dumps(error, separators=(",", ":"), ensure_ascii=False)


class Socket:
    """A simple-websocket server connection as a follower uses it: it sends, never reads
    (unless made with `reads_up_to`, as the chat protocol's socket is)."""

    def __init__(
        self,
        ws: Any,
        environ: MutableMapping[str, Any],
        messages_per_min: int,
        *,
        reads_up_to: int | None = None,
    ) -> None:
        environ[_ACCEPTED] = True  # the handshake passed (`refuse_bad_handshakes`)
        self._ws = ws
        self._send_lock = threading.Lock()
        if reads_up_to is None:
            # simple-websocket's reader keeps every message a client sends for `receive`,
            # which a follower never calls: unbounded, a client could fill our memory.
            # Drop them as they come, and close on a client that floods.
            ws.input_buffer = deque(maxlen=0)
        else:
            # A reading socket takes messages up to `reads_up_to` bytes (1009 past it).
            # simple-websocket reads the limit at each message, and its reader has not
            # run yet: the handler is called right after the handshake.
            ws.max_message_size = reads_up_to
        if messages_per_min:
            ws.ws = _FrameBudget(ws, messages_per_min)
        # wsproto (simple-websocket) accepts permessage-deflate only if the client offers it.
        self._is_plain = "permessage-deflate" not in environ.get(
            "HTTP_SEC_WEBSOCKET_EXTENSIONS", ""
        )
        # Set before our close frame goes out: nothing may be written after it.
        self._is_closing = False

    @property
    def is_open(self) -> bool:
        """Whether the connection still stands (simple-websocket's reader clears it)."""
        return bool(self._ws.connected)

    def when_gone(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from the connection's reader) once the connection has gone: a
        follower waiting for events learns at once that its client left (one `wake` a
        connection; at once if it has gone already)."""
        if isinstance(self._ws, _Server):
            self._ws.on_gone = wake
        if not self._ws.connected:
            wake()

    def send_batch(self, batch: store.Batch, keep: Callable[[], None] = _nothing) -> None:
        """Send a batch of events as text frames with one socket write (`keep`: called
        while a slow client takes a long write, to keep the follower's place).

        simple-websocket's `send` makes a system call per frame, which is most of the time
        a replay of thousands of events takes. Without an extension a frame is the event's
        shared UTF-8 text behind a 2 to 10 byte header; with permessage-deflate, which
        compresses with per-connection state, the connection's own wsproto makes the
        frames. Either way the batch goes out in one write through `_SendAllSocket`,
        which also serialises it with simple-websocket's pings.
        """
        ws = self._ws
        if not ws.connected:
            raise ConnectionClosed(ws.close_reason, ws.close_message)
        if self._is_plain:
            data = text_frames(batch)
        else:
            data = b"".join([ws.ws.send(TextMessage(data=event.json())) for event in batch])
        _write(ws.sock, data, keep)

    def flush(self, keep: Callable[[], None] = _nothing) -> None:
        """Send what is left of a partial `write_now`, blocking (with the send timeout)."""
        if isinstance(self._ws.sock, _SendAllSocket):
            self._ws.sock.send(b"", keep)

    @property
    def can_write_now(self) -> bool:
        """Whether `write_now` can work here: no per-connection compression, and a socket
        of gevent's, whose non-blocking system socket is at hand."""
        sock = self._ws.sock
        return self._is_plain and isinstance(sock, _SendAllSocket) and sock.raw is not None

    def write_now(self, data: bytes) -> int:
        """Write `text_frames` bytes without blocking, from any greenlet: the bytes written
        (0 if none could go now); the rest of a partial write goes out before anything
        else on the connection, at the next `flush` or send."""
        sock = self._ws.sock
        if self._is_closing or not self._ws.connected or not isinstance(sock, _SendAllSocket):
            return 0
        return sock.send_now(data)

    def receive(self, timeout_s: float) -> str | bytes | None:
        """The client's next message, or None after `timeout_s` (a reading socket's only).

        Raises `ConnectionClosed` once the connection is gone."""
        message: str | bytes | None = self._ws.receive(timeout_s)
        if message is None and not self._ws.connected:
            raise ConnectionClosed(self._ws.close_reason, self._ws.close_message)
        return message

    def send_texts(self, texts: list[str], keep: Callable[[], None] = _nothing) -> None:
        """Send text frames with one socket write; safe from several threads at once
        (a connection that carries several streams). `keep`: as `send_batch`'s."""
        ws = self._ws
        with self._send_lock:
            if not ws.connected:
                raise ConnectionClosed(ws.close_reason, ws.close_message)
            if self._is_plain:
                data = b"".join([_frame(text.encode()) for text in texts])
            else:
                data = b"".join([ws.ws.send(TextMessage(data=text)) for text in texts])
            _write(ws.sock, data, keep)

    def refuse(self, close_code: int, code: str, message: str) -> None:
        """Send an `error` frame, then close with `close_code` and the error's code."""
        self._is_closing = True
        self._ws.send(error_frame(code, message))
        self._ws.close(close_code, code)
        self._linger()

    def close(self, close_code: int, reason: str | None = None) -> None:
        """Send a close frame; return once the client has taken it (`_linger`)."""
        self._is_closing = True
        self._ws.close(close_code, reason)
        self._linger()

    def _linger(self) -> None:
        """Keep the socket open until the client has acknowledged all that was written to
        it, the close frame last; give up once it takes nothing for the send timeout.

        A socket closed with bytes still queued is reset by the system as soon as the
        client sends anything more (a pong to a ping that waits in the queue), and the
        rest of the queue is lost: a slow reader of a long catch-up lost its end and its
        close frame. Not while the process stops: its clients reconnect with their
        cursors, and the stop must not wait for them.
        """
        sock = self._ws.sock
        if shutdown.is_stopping() or not isinstance(sock, _SendAllSocket):
            return
        sock.is_lingering = True
        try:
            sockets.wait_for_room(sock, 1, sock.gettimeout() or 0.0, _nothing)
        except TimeoutError:
            log.debug("a closing WebSocket's client stopped reading; closing anyway")
        finally:
            sock.end_linger()

    def drop(self) -> None:
        """Give up a client whose socket broke or whose send timed out: no close frame,
        which could block again, and simple-websocket must not try one after us."""
        self._is_closing = True
        self._ws.connected = False
        self._ws.sock.close()


def _write(sock: Any, data: bytes, keep: Callable[[], None]) -> None:
    """Write a batch of frames through simple-websocket's socket (`_SendAllSocket`)."""
    if isinstance(sock, _SendAllSocket):
        sock.send(data, keep)
    else:
        sock.send(data)


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
            close = CloseConnection(Close.POLICY_VIOLATION, "too_many_messages")
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


def text_frames(batch: store.Batch) -> bytes:
    """A batch of events as final, unmasked text frames without an extension: the same
    bytes for every plain client, so the fan-out builds them once per batch."""
    return b"".join([_frame(event.utf8()) for event in batch])


def _frame(payload: bytes) -> bytes:
    """A final, unmasked WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


_ACCEPTED = "rstreams.websocket_accepted"


def refuse_bad_handshakes(bp: Blueprint, endpoint: str) -> None:
    """Answer a handshake simple-websocket refuses on `bp`'s WebSocket route `endpoint`
    with a 400 `bad_handshake`, not a 500.

    flask-sock builds simple-websocket's `Server` before it calls a route's handler, and
    the server raises wsproto's error (a `ValueError` for a bad permessage-deflate
    parameter) on a handshake it refuses, before it writes a byte. Raised there before
    the handler made its `Socket`, such an error is the client's; raised after, or by
    another route of the blueprint, it is ours.
    """

    def refuse(e: Exception) -> Response:
        if request.endpoint != endpoint or request.environ.get(_ACCEPTED):
            return unexpected(e)
        why = str(e)[:200] or type(e).__name__
        return error_response(400, "bad_handshake", f"not a valid WebSocket handshake: {why}")

    for kind in (RemoteProtocolError, LocalProtocolError, ValueError):
        bp.register_error_handler(kind, refuse)


class _SendAllSocket:
    """A socket whose `send` writes everything, one frame at a time.

    simple-websocket 1.1 writes frames with `socket.send`, which may write only part of a
    large frame, and sends pings from its own thread (simple-websocket#45). `sendall`
    under a lock keeps every frame whole and frames from interleaving.

    `send_now` is the fan-out's write from its reader (api/fanout.py): one system call on
    the non-blocking socket under gevent, never waiting for the lock or the client. What
    it could not write is held and goes out first at the next `send`, from any greenlet.
    """

    def __init__(self, sock: Any, send_timeout_s: float) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._rest = b""  # of a partial `send_now`
        self.is_lingering = False  # see `close`
        self._close_after_linger = False
        # gevent's socket keeps the system socket, set non-blocking, as `_sock`; a plain
        # socket with a timeout would wait in poll() before it sends.
        inner = getattr(sock, "_sock", None)
        is_gevent = type(sock).__module__.startswith("gevent")
        self.raw = inner if is_gevent and isinstance(inner, _socket.socket) else None
        # A client that stops reading fails our send after this long, instead of holding
        # its handler (and a Redis connection) forever.
        sock.settimeout(send_timeout_s)

    def send(self, data: bytes, keep: Callable[[], None] = _nothing) -> int:
        """Write all of `data` (after the rest of a partial `send_now`); `keep` is called
        whenever a slow client took more of a long write."""
        with self._lock:
            if self._rest:
                rest, self._rest = self._rest, b""
                self._write(rest, keep)
            self._write(data, keep)
        return len(data)

    def _write(self, data: bytes, keep: Callable[[], None]) -> None:
        """Write all of `data`, timing out only when the client takes nothing for the
        send timeout (api/sockets.py). One plain send on the non-blocking socket takes
        a batch of frames whole nearly always, and costs less than gevent's `sendall`."""
        sent = 0
        if self.raw is not None and data:
            try:
                sent = _socket.socket.send(self.raw, data)
            except BlockingIOError:  # the client's buffer is full: wait in `send_all`
                pass
        if sent < len(data):
            sockets.send_all(self._sock, memoryview(data)[sent:], keep)

    def send_now(self, data: bytes) -> int:
        """Write without blocking: the bytes written, 0 if none could go now (the lock is
        held, a rest is waiting, the client's buffer is full or the socket broke: the
        follower's own send then meets the error)."""
        if self.raw is None or self._rest or not self._lock.acquire(blocking=False):
            return 0
        try:
            sent = _socket.socket.send(self.raw, data)
            if sent < len(data):
                self._rest = data[sent:]
            return sent
        except OSError:
            return 0
        finally:
            self._lock.release()

    def close(self) -> None:
        """Close the socket, or once `Socket._linger` ends (simple-websocket's reader
        closes it when it stops, which a pong can make it do during the linger)."""
        if self.is_lingering:
            self._close_after_linger = True
        else:
            self._sock.close()

    def end_linger(self) -> None:
        """End `Socket._linger`: make a close asked for meanwhile."""
        self.is_lingering = False
        if self._close_after_linger:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class WholeFrames:
    """WSGI middleware that hands flask-sock (simple-websocket) a `_SendAllSocket`."""

    def __init__(self, app: Any, send_timeout_s: float) -> None:
        self.app = app
        self.send_timeout_s = send_timeout_s

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        for key in ("gunicorn.socket", "werkzeug.socket"):
            if key in environ and environ.get("HTTP_UPGRADE", "").lower() == "websocket":
                environ[key] = _SendAllSocket(environ[key], self.send_timeout_s)
        return self.app(environ, start_response)
