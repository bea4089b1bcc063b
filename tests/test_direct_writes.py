"""The fan-out's direct path (api/fanout.py): the reader writes each live batch to plain
WebSocket followers itself. A client that takes part of a write, a client that stops
reading, a permessage-deflate client and clients that leave mid-batch each get exactly
their events, in order, and hold no one else back; a slow reader whose pongs wait behind
its catch-up is not closed as dead."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import websocket
from websockets.sync.client import connect as connect_ws

from rstreams.localredis import LocalRedis
from shared import keys, store
from tests import client
from tests.procs import Api
from tests.test_hub import leased_session
from tests.test_outages import chunks_seen, follow_in_background, raw_ws
from tests.waiting import wait_until
from worker.providers.demo import demo_text


def live_session(r: redis.Redis) -> tuple[str, str]:
    """A running session written straight to Redis (no worker), and its lease token."""
    return leased_session(r, "direct", 600_000)


def text_of(index: int, size: int) -> str:
    """A chunk's text that tells where it belongs, padded to `size` characters."""
    return f"<{index}>".ljust(size, "x")


def append(r: redis.Redis, session_id: str, token: str, n: int, size: int) -> None:
    """Append chunks 0..n-1 of `size` characters, then the done event."""
    for index in range(n):
        store.append_chunk(
            r, session_id, index, text_of(index, size), token=token, maxlen=n + 10, ttl_s=600
        )
    store.append_done(
        r, session_id, token=token, ttl_s=600, finish_reason="stop", chunks=n, usage=None
    )


class RawFollower:
    """A raw WebSocket client socket read frame by frame, `chunk` bytes a read. `api`:
    whose log to quote if the server ends the connection without a close frame."""

    def __init__(
        self,
        sock: socket.socket,
        chunk: int = 65536,
        api: Api | None = None,
        *,
        answers_pings: bool = False,
    ) -> None:
        self.sock = sock
        self.chunk = chunk
        self.api = api
        self.answers_pings = answers_pings
        self.buf = b""
        self.events: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def _frame(self) -> tuple[int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        n, head = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, head = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, head = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < head + n:
            return None
        # Every frame a server sends here is whole (FIN) and unmasked.
        assert buf[0] & 0x80 and not buf[1] & 0x80, f"not a whole server frame: {buf[:2]!r}"
        self.buf = buf[head + n :]
        return buf[0] & 0x0F, buf[head : head + n]

    def read_events(self, n: int | None = None, pause_s: float = 0.0) -> None:
        """Read until the close frame (or `n` events in all), pausing between reads."""
        self.sock.settimeout(30)  # bounds a hang only
        while n is None or len(self.events) < n:
            frame = self._frame()
            if frame is None:
                data = self.sock.recv(self.chunk)
                assert data, self._no_close_frame()
                self.buf += data
                if pause_s:
                    time.sleep(pause_s)
                continue
            opcode, payload = frame
            if opcode == 1:
                self.events.append(json.loads(payload))
            elif opcode == 9 and self.answers_pings:  # websocket-client masks it, as a client must
                pong = websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_PONG)
                self.sock.sendall(pong.format())
            elif opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0]
                return

    def _no_close_frame(self) -> str:
        said = "the server closed without a close frame"
        said += f" after {len(self.events)} events"
        if self.api is not None:
            said += "; the API's log ends:\n" + "\n".join(self.api.log().splitlines()[-40:])
        return said


class Followers:
    """`n` WebSocket followers (the test client) of a session, each reading in a thread
    of its own. `join` fails with what went wrong in a thread and the API's log."""

    def __init__(self, api: Api, session_id: str, n: int) -> None:
        self.api = api
        self.results = [client.WsResult() for _ in range(n)]
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._follow, args=(session_id, res), daemon=True)
            for res in self.results
        ]
        for t in self.threads:
            t.start()

    def _follow(self, session_id: str, res: client.WsResult) -> None:
        try:
            client.ws_follow(self.api.ws_url, session_id, into=res)
        except Exception as exc:
            at = time.strftime("%H:%M:%S")
            self.errors.append(f"{exc!r} after {len(res.events)} events, at {at}")

    def join(self) -> None:
        """Wait for every thread to end; fail if one met an error."""
        for t in self.threads:
            t.join(60)
        log = "\n".join(self.api.log().splitlines()[-40:])
        assert not self.errors, f"{self.errors}; the API's log ends:\n{log}"


@pytest.fixture
def raw_followers(api: Api) -> Iterator[Any]:
    """Open raw followers of the session API, each closed however the test ends."""
    opened: list[RawFollower] = []

    def open_follower(path: str, chunk: int = 65536) -> RawFollower:
        follower = RawFollower(raw_ws(api.port, path), chunk, api)
        opened.append(follower)
        return follower

    yield open_follower
    for follower in opened:
        follower.sock.close()


def assert_exactly(events: list[dict[str, Any]], n: int, size: int) -> None:
    """The status, chunks 0..n-1 with their own text once each and in order, then done."""
    chunks = [e for e in events if e["type"] == "chunk"]
    assert [e["index"] for e in chunks] == list(range(n))
    assert all(e["text"] == text_of(e["index"], size) for e in chunks)
    assert events[0]["type"] == "status" and events[-1]["type"] == "done"
    assert len(events) == n + 2


def test_a_client_that_takes_part_of_each_write_gets_every_frame_whole_and_in_order(
    api: Api, r: redis.Redis, raw_followers: Any
) -> None:
    session_id, token = live_session(r)
    # A 4 KiB receive buffer read 2 KiB at a time: the server's writes of 1 MiB batches
    # go out in part, the rest later.
    slow = raw_followers(f"/api/streams/{session_id}/ws", chunk=2048)
    slow.read_events(1)  # the queued status: it has caught up and waits live
    append(r, session_id, token, 200, 16_384)
    slow.read_events(pause_s=0.001)
    slow.sock.close()
    assert slow.close_code == 1000
    assert_exactly(slow.events, 200, 16_384)


def test_a_client_that_stops_reading_holds_no_one_back_and_then_catches_up(
    api: Api, r: redis.Redis, raw_followers: Any
) -> None:
    session_id, token = live_session(r)
    stuck = raw_followers(f"/api/streams/{session_id}/ws")
    stuck.read_events(1)
    followers = Followers(api, session_id, 3)
    results = followers.results
    wait_until(lambda: all(res.events for res in results), "the others are following")
    # 12 MB in 3,000 chunks: more than a follower's queue (2,000) and the socket buffers
    # hold, so the stuck one leaves the direct path and then falls behind.
    append(r, session_id, token, 3000, 4096)
    followers.join()
    for res in results:
        assert res.close_code == 1000
        assert_exactly(res.events, 3000, 4096)
    # The others had everything while the stuck one was still held up: it cannot have
    # been sent the whole answer (then it would have left) without reading.
    assert r.zcard(keys.followers(session_id)) == 1
    # All this while the stuck client had not read a byte since its status; now it does.
    stuck.read_events()
    stuck.sock.close()
    assert stuck.close_code == 1000
    assert_exactly(stuck.events, 3000, 4096)


def test_a_slow_reader_whose_pongs_wait_behind_a_long_catch_up_is_not_taken_for_dead(
    make_stack: Any, r: redis.Redis
) -> None:
    # A ping every 0.5 s. The reader answers each as it reads it, at about 2 MB/s: a
    # ping reaches it only after the megabytes that the buffers held before it, long
    # after the next ping is due.
    api = make_stack(WS_PING_S="0.5").api()
    session_id, token = live_session(r)
    append(r, session_id, token, 1500, 4096)
    sock = raw_ws(api.port, f"/api/streams/{session_id}/ws")
    slow = RawFollower(sock, 65536, api, answers_pings=True)
    slow.read_events(pause_s=0.005)
    slow.sock.close()
    assert slow.close_code == 1000  # not 1008, the close for a missing pong
    assert_exactly(slow.events, 1500, 4096)


def test_a_permessage_deflate_client_gets_the_same_events_as_a_plain_one(api: Api) -> None:
    session_id = client.create(api.url, prompt="deflate or not", max_tokens=40)["sessionId"]
    url = f"{api.ws_url}/api/streams/{session_id}/ws"
    plain = websocket.create_connection(url, timeout=30)
    with connect_ws(url, compression="deflate", open_timeout=10) as deflated:
        assert "permessage-deflate" in deflated.response.headers["Sec-WebSocket-Extensions"]
        plain_result = client.ws_read(plain, client.WsResult())
        compressed: list[dict[str, Any]] = []
        for message in deflated:
            compressed.append(json.loads(message))
    plain.close(timeout=1)
    plain.shutdown()  # after the server's close frame, close() leaves the socket open
    assert plain_result.close_code == 1000
    chunks = [e for e in plain_result.events if e["type"] == "chunk"]
    assert [e["index"] for e in chunks] == list(range(40))
    assert compressed == plain_result.events


def test_clients_that_leave_in_the_middle_of_a_batch_break_no_one_and_leave_nothing_behind(
    api: Api, r: redis.Redis, raw_followers: Any
) -> None:
    session_id, token = live_session(r)
    path = f"/api/streams/{session_id}/ws"
    leavers = [raw_followers(path) for _ in range(10)]
    for f in leavers:
        f.read_events(1)
    followers = Followers(api, session_id, 5)
    results = followers.results
    wait_until(lambda: r.zcard(keys.followers(session_id)) == 15, "all 15 are following")
    writer = threading.Thread(target=append, args=(r, session_id, token, 600, 4096))
    writer.start()
    for f in leavers:
        f.read_events(20)  # part of the live stream, then gone without a close frame
        f.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        f.sock.close()  # a reset, in the middle of whatever the server was writing
    writer.join(60)
    followers.join()
    for res in results:
        assert res.close_code == 1000
        assert_exactly(res.events, 600, 4096)
    # Every follower left: the leavers' places (and subscriptions) went with them.
    wait_until(lambda: r.zcard(keys.followers(session_id)) == 0, "every place given up")


def test_a_follower_that_rides_out_a_redis_outage_resumes_after_what_was_written_directly(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="direct, then down", max_tokens=200)["sessionId"]
    ws_thread, seen = follow_in_background(api, session_id)
    wait_until(lambda: chunks_seen(seen) >= 30, "30 chunks, live")
    own_redis.stop()
    # Down until the follower itself has met the outage: it follows again from the last
    # event its client has, which the reader wrote and the follower never yielded.
    met = f"follower of {session_id}: Redis unreachable"
    wait_until(lambda: met in api.log(), "the follower to meet the outage")
    own_redis.start()
    ws_thread.join(60)
    assert seen.close_code == 1000
    chunks = [e["index"] for e in seen.events if e["type"] == "chunk"]
    assert chunks == list(range(200))
    assert client.chunks_text(seen.events) == demo_text("direct, then down", 200)
