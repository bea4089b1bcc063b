"""api/sockets.py on real loopback TCP connections: what counts as a client's progress."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from api import sockets
from tests.waiting import wait_until


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


def test_a_client_is_taking_while_it_acknowledges_more_and_more_waits_for_it(
    full: tuple[socket.socket, socket.socket],
) -> None:
    server, client = full
    before = sockets.acked(server)
    assert before is not None and before > 0  # what its receive buffer took
    assert not sockets.is_taking(server, before)  # it read nothing since
    taken = 0
    while taken < 256 * 1024:  # room in its buffer: its system acknowledges more
        taken += len(client.recv(65536))
    wait_until(lambda: (sockets.acked(server) or 0) > before, "its system to acknowledge more")
    assert sockets.is_taking(server, before)
    assert not sockets.is_taking(server, None)  # a system that cannot tell: no excuse


def test_a_client_with_nothing_more_to_take_is_not_taking() -> None:
    # It acknowledged everything written: alive, but the pong it owes waits for nothing.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        before = sockets.acked(server)
        server.sendall(b"x" * 1000)
        wait_until(lambda: sockets.unsent(server) == 0, "everything acknowledged")
        assert sockets.acked(server) == (before or 0) + 1000
        assert not sockets.is_taking(server, before)
