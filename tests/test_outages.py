"""Redis restarts, web restarts, slow and dead clients, sessions that vanish."""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
from typing import Any

import redis
import requests

from rstreams.localredis import LocalRedis
from shared import keys
from tests import client
from tests.procs import Api
from tests.waiting import wait_until
from worker.providers.demo import demo_text


def follow_in_background(
    api: Api, session_id: str, kind: str = "ws"
) -> tuple[threading.Thread, client.WsResult | client.SseResult]:
    """Follow to the end in a thread; the result fills as events come."""
    result: client.WsResult | client.SseResult
    if kind == "ws":
        result = client.WsResult()
        follow = lambda: client.ws_follow(api.ws_url, session_id, timeout_s=60, into=result)  # noqa: E731
    else:
        result = client.SseResult()
        follow = lambda: client.sse_follow(api.url, session_id, timeout_s=60, into=result)  # noqa: E731
    thread = threading.Thread(target=follow)
    thread.start()
    return thread, result


def chunks_seen(result: client.WsResult | client.SseResult) -> int:
    return sum(e["type"] == "chunk" for e in list(result.events))


def test_redis_restart_loses_nothing_and_followers_continue(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="through an outage", max_tokens=250)["sessionId"]
    ws_thread, ws_out = follow_in_background(api, session_id)
    sse_thread, sse_out = follow_in_background(api, session_id, "sse")
    wait_until(lambda: min(chunks_seen(ws_out), chunks_seen(sse_out)) >= 30, "30 chunks each")

    own_redis.stop()
    ready = requests.get(f"{api.url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "down"
    created = requests.post(f"{api.url}/api/streams/generate", json={"prompt": "x"}, timeout=10)
    assert created.status_code == 503 and created.json()["error"]["code"] == "unavailable"
    # Down until the worker holds chunks it cannot write (not a guess of how long that takes).
    wait_until(
        lambda: f"session {session_id}: Redis unreachable" in stack.workers[0].log(),
        "the worker to hold chunks",
    )
    own_redis.start()

    ws_thread.join(60)
    sse_thread.join(60)
    expected = demo_text("through an outage", 250)
    for events in (ws_out.events, sse_out.events):
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


def test_followers_give_up_after_redis_outage_max_s(make_stack: Any, own_redis: LocalRedis) -> None:
    """Past `REDIS_OUTAGE_MAX_S` a WebSocket follower is closed with 1013 (try again later)
    and an SSE response ends, so clients reconnect elsewhere instead of waiting on a dead
    Redis; the answer itself goes on once Redis is back."""
    stack = make_stack(
        REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url, REDIS_OUTAGE_MAX_S="1"
    )
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="outage past the limit", max_tokens=200)["sessionId"]
    ws_thread, ws_out = follow_in_background(api, session_id)
    sse_thread, sse_out = follow_in_background(api, session_id, "sse")
    wait_until(lambda: min(chunks_seen(ws_out), chunks_seen(sse_out)) >= 10, "10 chunks each")
    own_redis.stop()
    try:
        ws_thread.join(30)
        sse_thread.join(30)
        assert not ws_thread.is_alive() and not sse_thread.is_alive(), "a follower still waits"
        assert isinstance(ws_out, client.WsResult)
        assert ws_out.close_code == 1013
        for events in (ws_out.events, sse_out.events):
            assert events and events[-1]["type"] == "chunk"  # ended by the outage, not done
        assert "lost Redis" in api.log()
    finally:
        own_redis.start()
    # The generation outlived the followers: a new follower gets the whole answer.
    assert client.wait_terminal(api.url, session_id, timeout_s=60)["status"] == "completed"
    whole = client.ws_follow(api.ws_url, session_id)
    assert client.chunks_text(whole.events) == demo_text("outage past the limit", 200)


def test_web_sigterm_closes_websockets_with_1012_and_ends_sse(api: Api, make_stack: Any) -> None:
    doomed = make_stack().api()
    # Longer than the test (40 s at 50 tokens/s): the shutdown comes mid-answer.
    session_id = client.create(api.url, prompt="redeploy", max_tokens=2000)["sessionId"]
    ws_thread, ws_out = follow_in_background(doomed, session_id)
    sse_thread, sse_out = follow_in_background(doomed, session_id, "sse")
    wait_until(lambda: min(chunks_seen(ws_out), chunks_seen(sse_out)) >= 5, "both followers")
    assert doomed.proc is not None
    os.kill(doomed.proc.pid, signal.SIGTERM)
    ws_thread.join(20)  # bounds a hang only
    sse_thread.join(20)
    assert not ws_thread.is_alive() and not sse_thread.is_alive()
    assert isinstance(ws_out, client.WsResult)
    assert ws_out.close_code == 1012
    seen = ws_out.events
    assert seen and seen[-1]["type"] == "chunk"
    assert sse_out.events and sse_out.events[-1]["type"] == "chunk"
    doomed.proc.wait(25)
    # The client reconnects to another API process with its cursor and gets the rest.
    rest = client.ws_follow(api.ws_url, session_id, after=seen[-1]["id"], max_events=50).events
    events = seen + rest
    indices = [e["index"] for e in events if e["type"] == "chunk"]
    assert indices == list(range(len(indices)))
    assert requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10).status_code == 202


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
    # The response's head a byte at a time: the first frame may come in the same segment,
    # and a larger read would swallow it.
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"the server closed during the handshake: {head!r}"
        head += byte
    assert b"101" in head.split(b"\r\n")[0]
    return sock


def test_a_half_open_client_is_found_by_pings_and_closed(make_stack: Any) -> None:
    stack = make_stack(WS_PING_S="0.5")
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="anyone there?", max_tokens=500)["sessionId"]
    sock = raw_ws(api.port, f"/api/streams/{session_id}/ws")
    sock.settimeout(20)  # bounds a hang only
    received = b""
    while True:  # read without ever answering a ping, until the server closes
        data = sock.recv(65536)
        if not data:
            break
        received += data
    assert b"\x03\xf0" in received  # a close frame with code 1008 (policy violation)
    sock.close()
    requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)


def test_a_session_that_vanishes_under_a_follower_ends_with_not_found(
    api: Api, r: redis.Redis, make_stack: Any
) -> None:
    session_id = client.create(api.url, prompt="gone soon", max_tokens=2000)["sessionId"]
    ws_thread, ws_out = follow_in_background(api, session_id)
    wait_until(lambda: chunks_seen(ws_out) >= 5, "the follower to be following")
    # Expired, or removed by hand, while generating: the worker's next append is refused.
    r.delete(keys.meta(session_id), keys.events(session_id))
    ws_thread.join(20)
    assert not ws_thread.is_alive()
    assert isinstance(ws_out, client.WsResult)
    assert ws_out.close_code == 4404
    assert ws_out.events[-1] == {
        "type": "error",
        "error": {"code": "not_found", "message": ws_out.events[-1]["error"]["message"]},
    }
    assert ws_out.events[-2]["type"] == "chunk"

    idle_api = make_stack().api()  # nobody serves its queue: the session waits, queued
    session_id = client.create(idle_api.url, prompt="vanish while idle")["sessionId"]
    ws_thread, ws_out = follow_in_background(idle_api, session_id)
    wait_until(lambda: len(ws_out.events) >= 1, "the follower to be following")
    r.delete(keys.meta(session_id), keys.events(session_id))
    ws_thread.join(20)
    assert isinstance(ws_out, client.WsResult)
    assert ws_out.close_code == 4404
    assert [e["type"] for e in ws_out.events] == ["status", "error"]
    assert ws_out.events[-1]["error"]["code"] == "not_found"


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
