"""A WebSocket client that sends garbage breaks nothing: not its follow, not other followers."""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from tests import client
from tests.procs import Api

MAX_MESSAGE_BYTES = 64 * 1024  # docs/API.md: a message over 64 KiB closes with 1009
FLOOD_FRAMES = 3000
FLOOD_FRAME_BYTES = 16 * 1024


def _rss_kib(api: Api) -> int:
    """Resident memory of the API's one gunicorn worker process."""
    assert api.proc is not None
    master = api.proc.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _close(ws: websocket.WebSocket) -> tuple[int, str] | None:
    """Read until the server closes; its close code and reason (None if the socket just
    dropped)."""
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                if len(data) < 2:
                    return None
                return struct.unpack("!H", data[:2])[0], data[2:].decode()
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        return None


def _follow_in_thread(api: Api, session_id: str) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(
        target=lambda: out.append(client.ws_follow(api.ws_url, session_id, timeout_s=60))
    )
    thread.start()
    return thread, out


@pytest.mark.slow
def test_garbage_frames_are_ignored_and_a_flood_does_not_grow_memory(make_stack: Any) -> None:
    # A limit above the flood: messages are counted and dropped, never kept (test_limits.py
    # has the flooder closed).
    stack = make_stack(WS_CLIENT_MESSAGES_PER_MIN=str(FLOOD_FRAMES * 2))
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="under attack", max_tokens=2000)["sessionId"]
    bystander, seen = _follow_in_thread(api, session_id)

    ws = websocket.create_connection(f"{api.ws_url}/api/streams/{session_id}/ws", timeout=30)
    try:
        ws.send("not a command")
        ws.send_binary(b"\x00\xff\xfe garbage")
        ws.send('{"type": "cancel"}')
        before = _rss_kib(api)
        junk = b"\xab" * FLOOD_FRAME_BYTES
        for _ in range(FLOOD_FRAMES):  # about 48 MiB the server is never asked to read
            ws.send_binary(junk)
        ws.ping(b"after the flood")  # its pong says the server has read every frame before it
        events = []
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                events.append(data)
            elif opcode == websocket.ABNF.OPCODE_PONG and data == b"after the flood":
                break
        grown_mib = (_rss_kib(api) - before) / 1024
        assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 200
        requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
        # The flooder's own follow goes on to the end, as if it had sent nothing.
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                events.append(data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                assert struct.unpack("!H", data[:2])[0] == 1000
                break
    finally:
        ws.close(timeout=1)
        ws.shutdown()  # after the server's close frame, close() leaves the socket open

    bystander.join(60)
    assert seen and seen[0].close_code == 1000
    assert seen[0].events[-1]["type"] == "cancelled"
    assert len(events) == len(seen[0].events)
    assert grown_mib < FLOOD_FRAMES * FLOOD_FRAME_BYTES / 2**20 / 4, f"grew {grown_mib:.0f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("what", "send", "code", "reason"),
    [
        (
            "a message over the limit",
            lambda ws: ws.send_binary(b"x" * (MAX_MESSAGE_BYTES + 1)),
            1009,
            "Message is too big",  # simple-websocket's
        ),
        (
            "a fragmented message over the limit",
            # Its last byte is the one over: simple-websocket closes the socket with
            # whatever the client sent past the limit unread, and the reset that sends can
            # overtake the close frame.
            lambda ws: [
                ws.send_frame(websocket.ABNF.create_frame(b"y" * size, opcode, fin))
                for opcode, fin, size in [
                    (websocket.ABNF.OPCODE_BINARY, 0, 30_000),
                    (0, 0, 30_000),
                    (0, 1, MAX_MESSAGE_BYTES + 1 - 60_000),
                ]
            ],
            1009,
            "Message is too big",
        ),
        (
            "text that is not UTF-8",
            lambda ws: ws.send_frame(
                websocket.ABNF.create_frame(b"\xff\xfe\xfd", websocket.ABNF.OPCODE_TEXT)
            ),
            1007,
            "can't decode byte 0xff",  # wsproto's, from Python's UTF-8 decoder
        ),
        (
            "a raw non-frame byte stream",
            lambda ws: ws.sock.sendall(b"\x00" * 64 + b"GET /"),
            1002,
            "unexpected unmasked frame",  # wsproto's
        ),
    ],
)
def test_a_bad_frame_closes_only_its_own_connection(
    api: Api, what: str, send: Any, code: int, reason: str
) -> None:
    session_id = client.create(api.url, prompt=f"bad frame: {what}", max_tokens=60)["sessionId"]
    bystander, seen = _follow_in_thread(api, session_id)

    ws = websocket.create_connection(f"{api.ws_url}/api/streams/{session_id}/ws", timeout=30)
    ws.recv()  # following
    send(ws)
    closed = _close(ws)
    ws.close(timeout=1)
    ws.shutdown()
    assert closed is not None, "the socket dropped without a close frame"
    assert closed[0] == code and reason in closed[1], closed

    bystander.join(60)
    assert seen and seen[0].close_code == 1000, seen
    assert seen[0].events[-1]["type"] == "done"
    assert requests.get(f"{api.url}/healthz", timeout=10).status_code == 200
    later = client.ws_follow(api.ws_url, session_id)
    assert later.close_code == 1000 and len(later.events) == len(seen[0].events)


@pytest.mark.parametrize("over", [0, 1])
def test_a_message_over_64_kib_closes_with_1009(api: Api, over: int) -> None:
    """64 KiB exactly is ignored like any message; one byte more closes the connection."""
    session_id = client.create(api.url, prompt=f"64 KiB and {over}", max_tokens=20)["sessionId"]
    ws = websocket.create_connection(f"{api.ws_url}/api/streams/{session_id}/ws", timeout=30)
    try:
        ws.recv()  # following
        ws.send_binary(b"z" * (MAX_MESSAGE_BYTES + over))
        closed = _close(ws)
    finally:
        ws.close(timeout=1)
        ws.shutdown()
    if over:
        assert closed == (1009, "Message is too big")
    else:  # the follow goes on to its end
        assert closed == (1000, "")
