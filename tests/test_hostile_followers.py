"""Followers that misbehave on purpose affect themselves only: a cursor in the future,
a reader that stops reading, a flood of control frames (docs/SECURITY.md)."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from typing import Any

import pytest
import redis
import requests
import websocket
from nanoid import generate as nanoid

from shared import keys, store
from shared.jobs import GenerationRequest, Message
from tests import client
from tests.procs import Api
from tests.test_direct_writes import RawFollower
from tests.test_outages import raw_ws
from tests.waiting import wait_until

FUTURE = "9999999999999-0"


def hold_future_follower(api: Api, session_id: str, transport: str) -> Any:
    """Connect a follower whose cursor lies in the future and keep it open, unread."""
    if transport == "ws":
        return websocket.create_connection(
            f"{api.ws_url}/api/streams/{session_id}/ws?after={FUTURE}", timeout=10
        )
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    sock.sendall(
        f"GET /api/streams/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n"
        f"Accept: text/event-stream\r\nLast-Event-ID: {FUTURE}\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_a_cursor_in_the_future_delays_no_one_else(
    api: Api, r: redis.Redis, transport: str
) -> None:
    assert_a_future_cursor_delays_no_one_else(api, r, transport)


def assert_a_future_cursor_delays_no_one_else(api: Api, r: Any, transport: str) -> None:
    """A follower with a cursor in the future, then one from the start, on one process
    (`r`: a client of the API's Redis, plain or cluster)."""
    # 350 chunks at 50 a second: about 7 s of live generation.
    session_id = client.create(api.url, prompt="shared read position", max_tokens=350)["sessionId"]
    hostile = hold_future_follower(api, session_id, transport)
    try:
        # Admitted (its place taken) before the second one joins: both share the reader.
        wait_until(lambda: r.zcard(keys.followers(session_id)) == 1, "the follower is admitted")
        # 150 events arrive live, long before the last of the 350 chunks is written.
        seen = client.ws_follow(api.ws_url, session_id, max_events=150, timeout_s=30)
        assert len(seen.events) == 150
        assert client.info(api.url, session_id)["status"] == "running"
    finally:
        hostile.close()
        client.wait_terminal(api.url, session_id)
    # The hostile follower only waited: the answer is whole for everyone.
    whole = client.ws_follow(api.ws_url, session_id).events
    assert [e["index"] for e in whole if e["type"] == "chunk"] == list(range(350))


def live_session_with_backlog(
    r: redis.Redis, chunks: int = 2000, size: int = 4096
) -> tuple[str, str]:
    """A running session with `chunks` chunks of `size` characters (8 MiB by default):
    far more than the socket buffers between a reader and the API hold. And its lease
    token, to append more."""
    session_id = nanoid()
    request = GenerationRequest(model="demo", messages=(Message("user", "backlog"),))
    store.create_session(r, session_id, request, queue="unused")
    _state, token = store.acquire_lease(r, session_id, 600_000)
    assert token
    text = "x" * size
    for index in range(chunks):
        store.append_chunk(r, session_id, index, text, token=token, maxlen=chunks + 10, ttl_s=600)
    return session_id, token


def stuck_reader(port: int, session_id: str, transport: str) -> socket.socket:
    """A follower that sends its request and then never reads a byte."""
    if transport == "ws":
        return raw_ws(port, f"/api/streams/{session_id}/ws")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /api/streams/{session_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def closed_by_server(sock: socket.socket, timeout_s: float = 10) -> bool:
    """Read what is buffered; True if the server has closed the connection."""
    sock.settimeout(timeout_s)
    try:
        while sock.recv(1 << 20):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_readers_that_stop_reading_are_dropped_and_give_their_places_up(
    make_stack: Any, r: redis.Redis, transport: str
) -> None:
    stack = make_stack(WS_SEND_TIMEOUT_S="2", MAX_FOLLOWERS_PER_SESSION="3")
    api = stack.api()
    session_id, _token = live_session_with_backlog(r)
    places = keys.followers(session_id)
    stuck = [stuck_reader(api.port, session_id, transport) for _ in range(3)]
    wait_until(lambda: r.zcard(places) == 3, "the stuck readers hold the session's places")
    # Blocked in a send, each is dropped WS_SEND_TIMEOUT_S later, and its place goes with it.
    wait_until(lambda: r.zcard(places) == 0, "the stuck readers' places came free", 20)
    assert all(closed_by_server(sock) for sock in stuck)
    # A dropped reader is routine: one line each (written as its handler ends, just after
    # its place is given up), no traceback.
    said = (
        "dropped a client that stopped reading"
        if transport == "sse"
        else f"follower of {session_id} dropped: timed out"
    )
    wait_until(lambda: api.log().count(said) >= 3, "each drop is logged")
    assert api.log().count(said) == 3
    assert "Traceback" not in api.log()
    assert len(client.sse_follow(api.url, session_id, max_events=3).events) == 3
    for sock in stuck:
        sock.close()


def read_slowly(port: int, session_id: str, transport: str) -> list[str]:
    """Follow to the end through a small receive buffer, a few KiB a read, pausing 20 ms
    between reads: far slower than the API writes; the types of the events read."""
    pause_s = 0.02
    if transport == "ws":
        follower = RawFollower(raw_ws(port, f"/api/streams/{session_id}/ws"), chunk=8192)
        follower.read_events(pause_s=pause_s)
        follower.sock.close()
        assert follower.close_code == 1000
        return [e["type"] for e in follower.events]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)  # bounds a hang only
    sock.connect(("127.0.0.1", port))
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.sock = sock  # http.client reads through the small buffer
    conn.request("GET", f"/api/streams/{session_id}", headers={"Accept": "text/event-stream"})
    response = conn.getresponse()
    assert response.status == 200
    body = b""
    while piece := response.read(8192):
        body += piece
        time.sleep(pause_s)
    conn.close()
    return [
        line.removeprefix(b"event: ").decode()
        for line in body.split(b"\n")
        if line.startswith(b"event: ")
    ]


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_a_slow_but_steady_reader_of_a_large_catch_up_is_not_dropped(
    make_stack: Any, r: redis.Redis, transport: str
) -> None:
    # Writes of 500 events (2 MiB) take this reader seconds, its waits are a few ms: the
    # send timeout is about a client that stops, not one that reads slowly. And a write
    # that lasts longer than the follower's place keeps the place.
    api = make_stack(WS_SEND_TIMEOUT_S="1", FOLLOWER_LEASE_S="4").api()
    session_id, token = live_session_with_backlog(r, chunks=1000)
    store.append_done(
        r, session_id, token=token, ttl_s=600, finish_reason="stop", chunks=1000, usage=None
    )
    places = keys.followers(session_id)
    held: list[int] = []
    reading = threading.Event()

    def watch_the_place() -> None:
        while not reading.wait(0.2):
            held.append(r.zcount(places, store.now_ms(), "+inf"))

    watcher = threading.Thread(target=watch_the_place)
    watcher.start()
    try:
        types = read_slowly(api.port, session_id, transport)
    finally:
        reading.set()
        watcher.join()
    assert types.count("chunk") == 1000 and types[-1] == "done"
    assert "dropped" not in api.log()
    # The place was held (its lease in the future) all along, not only between writes.
    # The place was held (its lease in the future) from the join until the handler had
    # written the last event, also through writes longer than its lease: never lapsed
    # and renewed again.
    first = held.index(1)
    assert held[first:] == sorted(held[first:], reverse=True), held


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_readers_that_stop_reading_do_not_slow_the_others(
    make_stack: Any, r: redis.Redis, transport: str
) -> None:
    # Nothing drops the stuck readers within the test (the default WS_SEND_TIMEOUT_S of
    # 30 s and pings every 25 s): the healthy follower must get everything while they are
    # still stuck, not once they are gone.
    api = make_stack().api()
    session_id, token = live_session_with_backlog(r)
    places = keys.followers(session_id)
    stuck = [stuck_reader(api.port, session_id, transport) for _ in range(3)]
    wait_until(lambda: r.zcard(places) == 3, "the stuck readers hold the session's places")
    store.append_done(
        r, session_id, token=token, ttl_s=600, finish_reason="stop", chunks=2000, usage=None
    )
    healthy = client.ws_follow(api.ws_url, session_id)
    assert healthy.close_code == 1000 and healthy.events[-1]["type"] == "done"
    assert [e["index"] for e in healthy.events if e["type"] == "chunk"] == list(range(2000))
    # The stuck ones are still blocked in a send of the backlog: a reader that had sent
    # the done event would have left.
    assert r.zcard(places) == 3
    for sock in stuck:
        sock.close()


@pytest.mark.parametrize("frame", ["ping", "pong"])
def test_a_flood_of_control_frames_is_closed(api: Api, frame: str) -> None:
    session_id = client.create(api.url, prompt="flood", max_tokens=1000)["sessionId"]
    ws = websocket.create_connection(f"{api.ws_url}/api/streams/{session_id}/ws", timeout=10)
    try:
        ws.recv()  # the handler has the connection
        opcode = websocket.ABNF.OPCODE_PING if frame == "ping" else websocket.ABNF.OPCODE_PONG
        one = websocket.ABNF.create_frame("", opcode).format()
        ws.sock.sendall(one * 1000)  # in one write; the default budget is 120 a minute
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
        assert struct.unpack("!H", data[:2])[0] == 1008
        assert data[2:] == b"too_many_messages"
    finally:
        ws.close(timeout=1)
        ws.shutdown()
    # The flood ended one follower, not the session.
    assert client.info(api.url, session_id)["status"] in ("queued", "running")
    requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
