"""A small client of the public contract, written from DESIGN.md section 2 alone."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import requests
import websocket

TERMINAL = {"done", "error", "cancelled"}


def create(base_url: str, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    """POST /api/streams/generate and return the 202 body."""
    response = requests.post(
        f"{base_url}/api/streams/generate", json=body, headers=headers or {}, timeout=10
    )
    assert response.status_code == 202, response.text
    return response.json()


def info(base_url: str, session_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET the stream info."""
    response = requests.get(
        f"{base_url}/api/streams/generate",
        params={"sessionId": session_id},
        headers=headers or {},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def text(base_url: str, session_id: str) -> dict[str, Any]:
    """GET /text."""
    response = requests.get(f"{base_url}/api/streams/{session_id}/text", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def wait_terminal(
    base_url: str, session_id: str, timeout_s: float = 30, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Poll the stream info until the session is terminal."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = info(base_url, session_id, headers)
        if current["status"] in ("completed", "failed", "cancelled"):
            return current
        assert time.monotonic() < deadline, f"session still {current['status']}"
        time.sleep(0.05)


@dataclass
class WsResult:
    """What a WebSocket follower saw."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""


def ws_follow(
    ws_base: str,
    session_id: str,
    after: str | None = None,
    *,
    max_events: int | None = None,
    timeout_s: float = 30,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    into: WsResult | None = None,
) -> WsResult:
    """Follow over WebSocket until the server closes (or `max_events` were read, then drop).
    `into`: a result to fill as events come, for a test watching a follower in a thread."""
    url = f"{ws_base}/api/streams/{session_id}/ws"
    query = {k: v for k, v in (("after", after), ("token", token)) if v is not None}
    if query:
        url += "?" + urlencode(query)
    # websocket-client checks a text frame's UTF-8 in pure Python, a byte at a time
    # (unless wsaccel is installed): seconds of CPU for a few megabytes, on a busy
    # machine long enough for a test to outlast its timeouts. `ws_read` decodes every
    # text frame strictly with CPython's codec instead.
    ws = websocket.create_connection(
        url, timeout=timeout_s, header=headers or {}, skip_utf8_validation=True
    )
    try:
        return ws_read(ws, WsResult() if into is None else into, max_events=max_events)
    finally:
        ws.close(timeout=1)
        ws.shutdown()  # after the server's close frame, close() leaves the socket open


def ws_read(
    ws: websocket.WebSocket, result: WsResult, *, max_events: int | None = None
) -> WsResult:
    """Read into `result` until the server closes (or `result` holds `max_events`)."""
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                result.events.append(json.loads(data.decode("utf-8")))
                if max_events is not None and len(result.events) >= max_events:
                    return result
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                if len(data) >= 2:
                    result.close_code = struct.unpack("!H", data[:2])[0]
                    result.close_reason = data[2:].decode()
                return result
    except websocket.WebSocketConnectionClosedException:
        return result


def sse_lines(response: requests.Response) -> Iterator[str]:
    """The lines of an SSE body, as they arrive."""
    buffer = b""
    for piece in response.iter_content(chunk_size=None):
        buffer += piece
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode().rstrip("\r")


@dataclass
class SseResult:
    """What an SSE follower saw."""

    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    comments: int = 0


def sse_follow(
    base_url: str,
    session_id: str,
    *,
    last_event_id: str | None = None,
    after: str | None = None,
    max_events: int | None = None,
    timeout_s: float = 30,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    into: SseResult | None = None,
) -> SseResult:
    """Follow over SSE until the response ends (or `max_events` were read, then drop).
    `into`: a result to fill as events come, for a test watching a follower in a thread."""
    headers = {"Accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    params = {k: v for k, v in (("after", after), ("token", token)) if v is not None}
    result = SseResult() if into is None else into
    with requests.get(
        f"{base_url}/api/streams/{session_id}",
        headers=headers,
        params=params,
        stream=True,
        timeout=timeout_s,
    ) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        for line in sse_lines(response):
            if line.startswith(":"):
                result.comments += 1
            elif line == "":
                if "data" in fields:
                    result.events.append(json.loads(fields["data"]))
                    result.ids.append(fields.get("id", ""))
                    result.types.append(fields.get("event", "message"))
                    if max_events is not None and len(result.events) >= max_events:
                        return result
                fields = {}
            else:
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
    return result


def chunks_text(events: list[dict[str, Any]]) -> str:
    """The text the chunk events carry, in order."""
    return "".join(e["text"] for e in events if e["type"] == "chunk")
