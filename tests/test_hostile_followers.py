"""Followers that misbehave on purpose affect themselves only: a cursor in the future,
a reader that stops reading, a flood of control frames (docs/SECURITY.md)."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import websocket

from tests import client
from tests.procs import Api

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
def test_a_cursor_in_the_future_delays_no_one_else(api: Api, transport: str) -> None:
    assert_a_future_cursor_delays_no_one_else(api, transport)


def assert_a_future_cursor_delays_no_one_else(api: Api, transport: str) -> None:
    """A follower with a cursor in the future, then one from the start, on one process."""
    # 500 chunks at 50 a second: about 10 s of live generation.
    session_id = client.create(api.url, prompt="shared read position", max_tokens=500)["sessionId"]
    hostile = hold_future_follower(api, session_id, transport)
    try:
        time.sleep(0.5)  # it has subscribed to the process's reader by now
        # 150 events arrive live, long before the last of the 500 chunks is written.
        seen = client.ws_follow(api.ws_url, session_id, max_events=150, timeout_s=30)
        assert len(seen.events) == 150
        assert client.info(api.url, session_id)["status"] == "running"
    finally:
        hostile.close()
        client.wait_terminal(api.url, session_id)
    # The hostile follower only waited: the answer is whole for everyone.
    whole = client.ws_follow(api.ws_url, session_id).events
    assert [e["index"] for e in whole if e["type"] == "chunk"] == list(range(500))
