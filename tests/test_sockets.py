"""api/sockets.py on real loopback TCP connections: what counts as a client's progress."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from api import sockets


@pytest.fixture
def full() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a connection whose client has read nothing and whose
    server side holds all the kernel takes unacknowledged."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    try:
        while True:
            server.send(b"x" * 65536)
    except BlockingIOError:
        pass
    yield server, client
    server.close()
    client.close()


def test_a_client_that_reads_nothing_times_out(full: tuple[socket.socket, socket.socket]) -> None:
    server, _client = full
    with pytest.raises(TimeoutError):
        sockets.wait_for_room(server, 1024, 0.3, lambda: None)


def test_a_client_that_reads_slowly_makes_progress_and_keeps_its_place(
    full: tuple[socket.socket, socket.socket],
) -> None:
    server, client = full
    queued = sockets.unsent(server)
    assert queued is not None and queued > 512 * 1024
    stop = threading.Event()

    def read_slowly() -> None:  # 4 KiB every 20 ms: each read far within the timeout
        while not stop.wait(0.02):
            client.recv(4096)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    renewed: list[float] = []
    try:
        # Until 256 KiB of the queue were taken: over a second, more than the 0.5 s
        # timeout, which only a wait without progress runs out.
        sockets.wait_for_room(server, queued - 256 * 1024, 0.5, lambda: renewed.append(1))
    finally:
        stop.set()
        reader.join()
    assert renewed  # a long wait with progress renews the follower's place


def test_a_client_that_left_is_let_go_at_once_not_taken_for_stuck(
    full: tuple[socket.socket, socket.socket],
) -> None:
    # It closes with data unread (a reset): the kernel's unacknowledged count stays where
    # it was, so only the connection's state tells it from a client that stopped.
    server, client = full
    client.close()
    # Returns rather than raising TimeoutError 5 s later: the write meets the reset.
    sockets.wait_for_room(server, 1024, 5, lambda: None)
    with pytest.raises(OSError):
        server.send(b"x")
