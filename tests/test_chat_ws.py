"""`GET /api/chat/ws`, the AI SDK's WebSocketChatTransport protocol (DESIGN.md 2.6): the
transport itself (pinned `ai`, tests/aisdk/ws.mjs) and the raw frames, on the real stack."""

from __future__ import annotations

import json
import struct
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket

from api.uimessages import to_chunks
from tests import client
from tests.conftest import TENANT_KEYS
from tests.node import AISDK, NODE_ENV, install_aisdk, tool
from tests.procs import Api
from tests.test_chat import PROMPT, parts_of, stored_parts, user


@pytest.fixture(scope="module", autouse=True)
def aisdk() -> None:
    install_aisdk()


def transport(api: Api, **scenario: Any) -> dict[str, Any]:
    """Run the AI SDK's WebSocketChatTransport against the API (tests/aisdk/ws.mjs)."""
    result = subprocess.run(
        [tool("node"), "ws.mjs"],
        cwd=AISDK,
        env={**NODE_ENV, "SCENARIO": json.dumps({"url": f"{api.ws_url}/api/chat/ws", **scenario})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def new_chat() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


def session_of(chunks: list[dict[str, Any]]) -> str:
    message_id = chunks[0]["messageId"]
    assert message_id.startswith("msg-")
    return str(message_id[len("msg-") :])


def expected_chunks(api: Api, session_id: str) -> list[dict[str, Any]]:
    """The session's stored events through the Python mapping."""
    events = client.sse_follow(api.url, session_id).events
    return to_chunks(events, f"msg-{session_id}")


def test_the_transport_gets_a_whole_answer(api: Api) -> None:
    result = transport(
        api,
        mode="send",
        chatId=new_chat(),
        messages=[user(PROMPT)],
        body={"model": "demo-reasoning", "max_tokens": 12},
    )
    assert result["error"] is None
    chunks = result["chunks"]
    session_id = session_of(chunks)
    assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
    assert chunks == expected_chunks(api, session_id)
    assembled = parts_of(result["message"])
    assert assembled == stored_parts(api, session_id)
    assert assembled["reasoning"] and assembled["text"]


def test_reconnect_on_a_new_connection_mid_answer_rebuilds_the_same_message(api: Api) -> None:
    chat_id = new_chat()
    result = transport(
        api,
        mode="reconnect",
        chatId=chat_id,
        messages=[user(PROMPT)],
        body={"model": "demo", "max_tokens": 150},
        take=6,
    )
    first = result["first"]
    assert len(first) == 6
    session_id = session_of(first)
    assert result["active"] and result["error"] is None
    assert result["chunks"][:6] == first
    assert result["chunks"] == expected_chunks(api, session_id)
    assert result["message"]["id"] == f"msg-{session_id}"
    assert parts_of(result["message"]) == stored_parts(api, session_id)
    # Ended: a resume now finds nothing active.
    assert transport(api, mode="resume", chatId=chat_id) == {"active": False}


class Frames:
    """A raw WebSocket of the chat protocol."""

    def __init__(self, api: Api, headers: dict[str, str] | None = None) -> None:
        self.ws = websocket.create_connection(
            f"{api.ws_url}/api/chat/ws",
            timeout=30,
            header=[f"{k}: {v}" for k, v in (headers or {}).items()],
        )

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))

    def frames(self) -> Iterator[dict[str, Any]]:
        while True:
            yield json.loads(self.ws.recv())

    def until_end(self, request_id: str) -> list[dict[str, Any]]:
        """This request's frames up to its `end` (or `error`, `no-active`)."""
        out = []
        for frame in self.frames():
            if frame["requestId"] == request_id:
                out.append(frame)
                if frame["type"] in ("end", "error", "no-active"):
                    return out
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.ws.close()
        self.ws.shutdown()  # closes the socket also after the server closed first


def send_frame(chat_id: str, request_id: str, **body: Any) -> dict[str, Any]:
    return {
        "type": "send",
        "requestId": request_id,
        "id": chat_id,
        "trigger": "submit-message",
        "messageId": None,
        "messages": [user(PROMPT)],
        "headers": {},
        "body": body,
        "metadata": None,
    }


def test_a_resume_with_last_sequence_continues_with_no_gap_and_no_duplicate(api: Api) -> None:
    chat_id = new_chat()
    first = Frames(api)
    first.send(**send_frame(chat_id, "r1", model="demo-reasoning", max_tokens=150))
    seen = []
    for frame in first.frames():
        if frame["type"] == "chunk":
            seen.append(frame)
            if frame["sequence"] == 10:
                break
    first.close()
    assert [f["sequence"] for f in seen] == list(range(11))
    second = Frames(api)
    second.send(type="resume", requestId="r2", id=chat_id, lastSequence=10, headers={}, body={})
    rest = second.until_end("r2")
    second.close()
    assert rest[0] == {"type": "start", "requestId": "r2"} and rest[-1]["type"] == "end"
    chunks = rest[1:-1]
    assert [f["sequence"] for f in chunks] == list(range(11, 11 + len(chunks)))
    whole = [f["chunk"] for f in seen] + [f["chunk"] for f in chunks]
    assert whole == expected_chunks(api, session_of(whole))


def test_abort_stops_the_relay_not_the_generation(api: Api) -> None:
    chat_id = new_chat()
    ws = Frames(api)
    ws.send(**send_frame(chat_id, "a1", model="demo", max_tokens=100))
    frames = ws.frames()
    chunk = next(f for f in frames if f["type"] == "chunk")
    session_id = session_of([chunk["chunk"]])
    ws.send(type="abort", requestId="a1")
    ws.send(type="resume", requestId="a2", id=chat_id, headers={}, body={})
    after = []
    for frame in frames:
        after.append(frame)
        if frame["requestId"] == "a2" and frame["type"] == "end":
            # Whatever a1 still had in flight has come by now: ask once more to be sure.
            ws.send(type="resume", requestId="a3", id=new_chat(), headers={}, body={})
        if frame["requestId"] == "a3":
            break
    ws.close()
    assert after[-1] == {"type": "no-active", "requestId": "a3"}
    assert [f["type"] for f in after if f["requestId"] == "a2"][-1] == "end"
    assert not any(f["requestId"] == "a1" and f["type"] == "end" for f in after)
    assert client.info(api.url, session_id)["status"] == "completed"


def test_bad_frames(api: Api) -> None:
    ws = Frames(api)
    ws.send(type="dance", requestId="b1")
    assert next(ws.frames()) == {
        "type": "error",
        "requestId": "b1",
        "errorText": "unknown frame type 'dance' (send, resume, abort)",
    }
    bad = send_frame("c", "b2")
    bad["messages"] = [user("hi"), {"role": "user", "parts": [{"type": "video"}]}]
    ws.send(**bad)
    error = next(ws.frames())
    assert error["type"] == "error" and error["requestId"] == "b2"
    assert "messages[1].parts[0].type" in error["errorText"]
    ws.send(type="resume", requestId="b3", id="x" * 129, headers={}, body={})
    error = next(ws.frames())
    assert error["type"] == "error" and "chat id" in error["errorText"]
    ws.send(**send_frame(new_chat(), "b4", max_tokens=2))  # the socket still serves
    assert ws.until_end("b4")[-1]["type"] == "end"
    # A frame that names no request: the protocol's answer is to close with 1008.
    ws.ws.send("not json")
    opcode, data = ws.ws.recv_data(control_frame=True)
    ws.close()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", data[:2])[0] == 1008 and data[2:] == b"invalid_frame"


def test_a_send_frame_may_hold_a_long_conversation(api: Api) -> None:
    ws = Frames(api)
    frame = send_frame(new_chat(), "l1", max_tokens=2)
    frame["messages"] = [user("many words " * 15_000)]  # 165,000 characters
    ws.send(**frame)
    frames = ws.until_end("l1")
    ws.close()
    assert frames[0]["type"] == "start" and frames[-1]["type"] == "end"


def test_credentials_come_from_the_frame_or_the_upgrade(two_keys_api: Api) -> None:
    chat_id = new_chat()
    nobody = Frames(two_keys_api)
    nobody.send(**send_frame(chat_id, "k1", max_tokens=2))
    error = next(nobody.frames())
    assert error["type"] == "error" and "Authorization" in error["errorText"]
    nobody.close()

    alice = {"authorization": f"Bearer {TENANT_KEYS['alice']}"}
    # Long enough (100 s at the demo's 50 tokens a second) to be running at Alice's resume
    # however slow the machine; stopped below.
    result = transport(
        two_keys_api,
        mode="send",
        chatId=chat_id,
        messages=[user(PROMPT)],
        body={"max_tokens": 5000},
        headers=alice,
        take=3,
    )
    # Bob's frames (and Bob's upgrade) never reach Alice's chat of the same id.
    bob = Frames(two_keys_api, headers={"Authorization": f"Bearer {TENANT_KEYS['bob']}"})
    bob.send(type="resume", requestId="k2", id=chat_id, headers={}, body={})
    assert next(bob.frames()) == {"type": "no-active", "requestId": "k2"}
    bob.close()
    mine = transport(two_keys_api, mode="resume", chatId=chat_id, headers=alice, take=6)
    assert mine["active"] and mine["chunks"][:3] == result["chunks"]
    stream = f"{two_keys_api.url}/api/chat/{chat_id}/stream"
    assert requests.delete(stream, headers=alice, timeout=10).status_code == 202
    response = requests.get(stream, headers=alice, timeout=10)
    assert response.status_code == 204
