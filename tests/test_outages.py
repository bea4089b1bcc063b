"""Redis restarts, web restarts, slow and dead clients, sessions that vanish."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
import time
from typing import Any

import redis
import requests

from rstreams.localredis import LocalRedis
from shared import keys
from tests import client
from tests.procs import Api
from worker.providers.demo import demo_text


def follow_in_background(
    api: Api, session_id: str, kind: str = "ws"
) -> tuple[threading.Thread, list[Any]]:
    """Follow to the end in a thread; the result lands in the list."""
    out: list[Any] = []

    def follow() -> None:
        if kind == "ws":
            out.append(client.ws_follow(api.ws_url, session_id, timeout_s=60))
        else:
            out.append(client.sse_follow(api.url, session_id, timeout_s=60))

    thread = threading.Thread(target=follow)
    thread.start()
    return thread, out


def test_redis_restart_loses_nothing_and_followers_continue(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="through an outage", max_tokens=250)["sessionId"]
    ws_thread, ws_out = follow_in_background(api, session_id)
    sse_thread, sse_out = follow_in_background(api, session_id, "sse")
    deadline = time.monotonic() + 10
    while client.info(api.url, session_id)["chunks"] < 30:
        assert time.monotonic() < deadline
        time.sleep(0.05)

    own_redis.stop()
    ready = requests.get(f"{api.url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "down"
    created = requests.post(f"{api.url}/api/streams/generate", json={"prompt": "x"}, timeout=10)
    assert created.status_code == 503 and created.json()["error"]["code"] == "unavailable"
    time.sleep(3)
    own_redis.start()

    ws_thread.join(60)
    sse_thread.join(60)
    expected = demo_text("through an outage", 250)
    for events in (ws_out[0].events, sse_out[0].events):
        assert [e["index"] for e in events if e["type"] == "chunk"] == list(range(250))
        assert events[-1]["type"] == "done"
        assert client.chunks_text(events) == expected
    assert client.text(api.url, session_id)["text"] == expected
    assert requests.get(f"{api.url}/readyz", timeout=10).status_code == 200
    assert "Redis back" in "".join(w.log() for w in stack.workers)
    # The worker outlived its broker connection and takes new work.
    assert all(w.proc and w.proc.poll() is None for w in stack.workers)
    after = client.create(api.url, prompt="after the outage", max_tokens=5)["sessionId"]
    assert client.wait_terminal(api.url, after, timeout_s=30)["status"] == "completed"
    assert "Unrecoverable error" not in "".join(w.log() for w in stack.workers)


def test_web_sigterm_closes_websockets_with_1012_and_ends_sse(api: Api, make_stack: Any) -> None:
    doomed = make_stack().api()
    session_id = client.create(api.url, prompt="redeploy", max_tokens=300)["sessionId"]
    ws_thread, ws_out = follow_in_background(doomed, session_id)
    sse_thread, sse_out = follow_in_background(doomed, session_id, "sse")
    time.sleep(1)
    assert doomed.proc is not None
    started = time.monotonic()
    os.kill(doomed.proc.pid, signal.SIGTERM)
    ws_thread.join(10)
    sse_thread.join(10)
    assert time.monotonic() - started < 3
    assert ws_out[0].close_code == 1012
    seen = ws_out[0].events
    assert seen and seen[-1]["type"] != "done"
    assert sse_out[0].events and sse_out[0].events[-1]["type"] != "done"
    doomed.proc.wait(25)
    # The client reconnects to another API process with its cursor and gets the rest.
    rest = client.ws_follow(api.ws_url, session_id, after=seen[-1]["id"]).events
    events = seen + rest
    assert [e["index"] for e in events if e["type"] == "chunk"] == list(range(300))


def raw_ws(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes the handshake and then does nothing at all."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills after a few frames
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert b"101" in sock.recv(1024).split(b"\r\n")[0]
    return sock


def test_a_client_that_never_reads_does_not_slow_the_others(make_stack: Any) -> None:
    stack = make_stack(WS_PING_S="1", WS_SEND_TIMEOUT_S="2", DEMO_TOKENS_PER_S="0")
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="a flood", max_tokens=8000)["sessionId"]
    stuck = [raw_ws(api.port, f"/api/streams/{session_id}/ws") for _ in range(3)]
    started = time.monotonic()
    healthy = client.ws_follow(api.ws_url, session_id)
    assert healthy.events[-1]["type"] == "done"
    assert [e["index"] for e in healthy.events if e["type"] == "chunk"] == list(range(8000))
    assert time.monotonic() - started < 15
    for sock in stuck:
        sock.close()


def test_a_half_open_client_is_found_by_pings_and_closed(make_stack: Any) -> None:
    stack = make_stack(WS_PING_S="0.5")
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="anyone there?", max_tokens=500)["sessionId"]
    sock = raw_ws(api.port, f"/api/streams/{session_id}/ws")
    sock.settimeout(10)
    received = b""
    started = time.monotonic()
    while True:  # read without ever answering a ping, until the server closes
        data = sock.recv(65536)
        if not data:
            break
        received += data
    assert time.monotonic() - started < 5
    assert b"\x03\xf0" in received  # a close frame with code 1008 (policy violation)
    sock.close()
    requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)


def test_a_session_that_vanishes_under_a_follower_ends_with_not_found(
    api: Api, r: redis.Redis, make_stack: Any
) -> None:
    session_id = client.create(api.url, prompt="gone soon", max_tokens=500)["sessionId"]
    ws_thread, ws_out = follow_in_background(api, session_id)
    time.sleep(0.5)
    requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
    r.delete(keys.meta(session_id), keys.events(session_id))  # expired, or removed by hand
    ws_thread.join(10)
    # Either the follower saw the cancel first, or it found the session gone.
    last = ws_out[0].events[-1]
    assert last["type"] == "cancelled" or (
        last["type"] == "error" and last["error"]["code"] == "not_found"
    )

    idle_api = make_stack().api()  # nobody serves its queue: the session waits, queued
    session_id = client.create(idle_api.url, prompt="vanish while idle")["sessionId"]
    ws_thread, ws_out = follow_in_background(idle_api, session_id)
    time.sleep(0.3)
    r.delete(keys.meta(session_id), keys.events(session_id))
    ws_thread.join(10)
    assert ws_out[0].close_code == 4404
    assert [e["type"] for e in ws_out[0].events] == ["status", "error"]
    assert ws_out[0].events[-1]["error"]["code"] == "not_found"


def test_max_stream_length_ends_the_answer_with_an_error(make_stack: Any) -> None:
    stack = make_stack(STREAM_MAXLEN="50")
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="too long", max_tokens=500)["sessionId"]
    events = client.ws_follow(api.ws_url, session_id).events
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "stream_too_long"
    assert len(events) == 50
    assert client.text(api.url, session_id)["text"] == demo_text("too long", 47)
