"""Whether a client is still taking what the API writes to it.

A client that stops reading is dropped after `WS_SEND_TIMEOUT_S` without progress. A
socket's timeout alone cannot tell progress: `sendall` bounds the whole write with it
(CPython's and gevent's alike), and a blocked `send` waits until half the kernel's send
buffer is free, which a slow but steady reader of a large catch-up may take longer than
the timeout to drain. The kernel's count of bytes the client has not yet acknowledged
(`TIOCOUTQ`, Linux) going down is progress.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import time
from collections.abc import Callable
from typing import Any

_INT = struct.Struct("i")
_TCP_ESTABLISHED = 1  # the first byte of TCP_INFO, `tcpi_state`


def unsent(sock: Any) -> int | None:
    """Bytes written to `sock` that its client has not acknowledged yet; None where the
    system cannot tell (then a timeout is taken as no progress)."""
    try:
        return int(_INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)))[0])
    except (OSError, AttributeError, ValueError):
        return None


# TCP_INFO's `tcpi_bytes_acked` (Linux 4.1 and later): a 64-bit count at this offset.
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120


def acked(sock: Any) -> int | None:
    """Bytes written to `sock` that its client has acknowledged so far; None where the
    system cannot tell."""
    try:
        info = sock.getsockopt(
            socket.IPPROTO_TCP, socket.TCP_INFO, _BYTES_ACKED_AT + _BYTES_ACKED.size
        )
        return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])
    except (OSError, AttributeError, ValueError, struct.error):
        return None


def is_taking(sock: Any, acked_before: int | None) -> bool:
    """Whether the client acknowledged more than `acked_before` (from `acked`) and more
    written to it still waits: it is alive and reading, whatever else it is late with."""
    if acked_before is None:
        return False
    now = acked(sock)
    return now is not None and now > acked_before and bool(unsent(sock))


def is_open(sock: Any) -> bool:
    """False once the connection is reset or closed by the client (TCP's state, Linux);
    True where the system cannot tell. Its unacknowledged count stays as it was then."""
    try:
        state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except (OSError, AttributeError, ValueError, IndexError):
        return True
    return bool(state == _TCP_ESTABLISHED)


def made_progress(sock: Any, before: int | None) -> bool:
    """Whether the client took some of what was unsent (`before`, from `unsent`)."""
    if before is None:
        return False
    now = unsent(sock)
    return now is not None and now < before


def send_all(sock: Any, data: bytes | memoryview, on_progress: Callable[[], None]) -> None:
    """Write all of `data` with `sock.send`; a wait for the client times out (the socket's
    timeout) only when the client took nothing during it. `on_progress` is called after
    each wait the client ended or made progress in: the write may last long."""
    view = memoryview(data)
    while view:
        before = unsent(sock)
        try:
            view = view[sock.send(view) :]
        except TimeoutError:
            if not made_progress(sock, before):
                raise
        on_progress()


# How often `wait_for_room` looks at the send queue again.
POLL_S = 0.05


def wait_for_room(sock: Any, most: int, timeout_s: float, on_progress: Callable[[], None]) -> None:
    """Wait until fewer than `most` bytes written to `sock` are unacknowledged; raise
    `TimeoutError` once the client has taken nothing for `timeout_s`.

    For writers that cannot write with `send_all` (gunicorn writes a response's pieces
    with `sendall`): called before each piece, it keeps the queue short enough that a
    piece goes out without a long wait, and drops only a client that stopped.
    `on_progress` is called whenever the client took more while waiting.
    """
    queued = unsent(sock)
    if queued is None or queued < most:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(POLL_S)  # gevent's, in the API
        now = unsent(sock)
        if now is None or now < most or not is_open(sock):
            return  # room, or a client that left: the write meets the error itself
        if now < queued:
            queued, deadline = now, time.monotonic() + timeout_s
            on_progress()
        elif time.monotonic() >= deadline:
            raise TimeoutError(f"the client took nothing for {timeout_s:g} s")
