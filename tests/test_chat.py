"""The AI SDK's chat protocol over HTTP (DESIGN.md 2.6), read by the AI SDK's own code.

Every answer is parsed by the pinned `ai` package (tests/aisdk: `parseJsonEventStream`
with `uiMessageChunkSchema`, assembled by `readUIMessageStream`), against the real stack.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from rstreams.localredis import LocalRedis
from shared import fields, keys
from tests import client
from tests.conftest import TENANT_KEYS
from tests.node import AISDK, NODE_ENV, install_aisdk, tool
from tests.procs import Api

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PROMPT = "What is the weather like in Oslo on Sunday?"


@pytest.fixture(scope="module", autouse=True)
def aisdk() -> None:
    install_aisdk()


def run_harness(request: dict[str, Any]) -> dict[str, Any]:
    """Read one response of ours with the AI SDK's code (tests/aisdk/http.mjs)."""
    result = subprocess.run(
        [tool("node"), "http.mjs"],
        cwd=AISDK,
        env={**NODE_ENV, "REQUEST": json.dumps(request)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def invalid_chunks(chunks: list[dict[str, Any]]) -> list[int]:
    """The positions of the chunks the AI SDK's schema refuses (tests/aisdk/validate.mjs)."""
    result = subprocess.run(
        [tool("node"), "validate.mjs"],
        cwd=AISDK,
        env={**NODE_ENV, "CHUNKS": json.dumps(chunks)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def user(text: str, message_id: str = "u1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def chat_body(chat_id: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """What DefaultChatTransport posts, with the transport's extra body fields."""
    return {"id": chat_id, "messages": messages, "trigger": "submit-message", **extra}


def post_chat(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return run_harness(
        {"url": f"{api.url}/api/chat", "method": "POST", "body": body, "headers": headers or {}}
    )


def new_chat() -> str:
    return f"chat-{uuid.uuid4().hex[:12]}"


def data_lines(response: requests.Response) -> Iterator[str]:
    """The `data:` payloads of a streamed response, as they come."""
    for line in response.iter_lines(chunk_size=None, decode_unicode=True):
        if line.startswith("data: "):
            yield line[len("data: ") :]


def parts_of(message: dict[str, Any]) -> dict[str, Any]:
    """The text, reasoning and tool calls of an assembled UI message."""
    parts = message["parts"]
    return {
        "text": "".join(p["text"] for p in parts if p["type"] == "text") or None,
        "reasoning": "".join(p["text"] for p in parts if p["type"] == "reasoning") or None,
        "tool_calls": [
            {"id": p["toolCallId"], "name": p["type"][len("tool-") :], "input": p["input"]}
            for p in parts
            if p["type"].startswith("tool-")
        ],
    }


def stored_parts(api: Api, session_id: str) -> dict[str, Any]:
    """The same of GET /api/streams/<id>/message."""
    message = requests.get(f"{api.url}/api/streams/{session_id}/message", timeout=10).json()
    calls = message["message"].get("tool_calls") or []
    return {
        "text": message["message"]["content"],
        "reasoning": message["message"]["reasoning"],
        "tool_calls": [
            {
                "id": c["id"],
                "name": c["function"]["name"],
                "input": json.loads(c["function"]["arguments"]),
            }
            for c in calls
        ],
    }


ASKS = {
    "demo": {"model": "demo", "max_tokens": 6},
    "demo-reasoning": {"model": "demo-reasoning", "max_tokens": 12},
    "demo-tools": {"model": "demo-tools", "tools": [WEATHER]},
}
FINISH = {"demo": "stop", "demo-reasoning": "stop", "demo-tools": "tool-calls"}


@pytest.mark.parametrize("model", list(ASKS))
def test_the_ai_sdk_reads_every_answer_as_the_stored_message(api: Api, model: str) -> None:
    result = post_chat(api, chat_body(new_chat(), [user(PROMPT)], **ASKS[model]))
    assert result["status"] == 200, result
    assert result["headers"]["x-vercel-ai-ui-message-stream"] == "v1"
    assert result["headers"]["content-type"].startswith("text/event-stream")
    session_id = result["headers"]["x-session-id"]
    assert result["headers"]["x-message-id"] == f"msg-{session_id}"
    assert result["invalid"] == [] and result["errors"] == []
    assert result["done"]
    chunks = result["chunks"]
    assert chunks[:2] == [
        {"type": "start", "messageId": f"msg-{session_id}"},
        {"type": "start-step"},
    ]
    assert chunks[-2:] == [
        {"type": "finish-step"},
        {"type": "finish", "finishReason": FINISH[model]},
    ]
    assert result["message"]["id"] == f"msg-{session_id}"
    assert result["message"]["role"] == "assistant"
    assembled = parts_of(result["message"])
    assert assembled == stored_parts(api, session_id)
    kinds = {c["type"] for c in chunks}
    if model == "demo":  # n text chunks: start, start-step, text-start, n deltas, text-end, ...
        assert len(chunks) == ASKS["demo"]["max_tokens"] + 6
    if model == "demo-reasoning":
        assert {"reasoning-start", "reasoning-delta", "reasoning-end"} <= kinds
        assert assembled["reasoning"] and assembled["text"]
    if model == "demo-tools":
        assert {"tool-input-start", "tool-input-delta", "tool-input-available"} <= kinds
        assert assembled["tool_calls"][0]["name"] == "get_weather"
        assert assembled["tool_calls"][0]["input"] == {"city": PROMPT}


def test_a_reconnect_mid_answer_replays_the_identical_chunks_then_204(api: Api) -> None:
    chat_id = new_chat()
    body = chat_body(chat_id, [user(PROMPT)], model="demo-reasoning", max_tokens=60)
    with requests.post(f"{api.url}/api/chat", json=body, stream=True, timeout=30) as response:
        assert response.status_code == 200
        lines = data_lines(response)
        first = [next(lines) for _ in range(4)]  # start, start-step, and two more: mid-answer
        replay = run_harness({"url": f"{api.url}/api/chat/{chat_id}/stream"})
        original = [json.loads(line) for line in [*first, *lines] if line != "[DONE]"]
    assert replay["status"] == 200 and replay["invalid"] == [] and replay["done"]
    assert replay["headers"]["x-session-id"] == response.headers["X-Session-Id"]
    assert replay["headers"]["x-message-id"] == response.headers["X-Message-Id"]
    assert replay["chunks"] == original
    # The answer has ended: nothing is active any more.
    again = requests.get(f"{api.url}/api/chat/{chat_id}/stream", timeout=10)
    assert again.status_code == 204 and again.content == b""


def test_a_tool_loop_answers_with_the_tool_result(api: Api) -> None:
    chat_id = new_chat()
    first = post_chat(api, chat_body(chat_id, [user(PROMPT)], model="demo-tools", tools=[WEATHER]))
    assistant = first["message"]
    call = next(p for p in assistant["parts"] if p["type"] == "tool-get_weather")
    assert call["state"] == "input-available"
    # What useChat's addToolOutput does, then sends the conversation again.
    call.update(state="output-available", output={"forecast": "sunny-and-21-degrees"})
    second = post_chat(
        api, chat_body(chat_id, [user(PROMPT), assistant], model="demo-tools", tools=[WEATHER])
    )
    assert second["status"] == 200 and second["invalid"] == [], second
    text = parts_of(second["message"])["text"]
    assert text.startswith("The tool answered:")
    assert "sunny-and-21-degrees" in text


def test_delete_stops_the_answer_with_abort_and_closing_does_not(api: Api) -> None:
    stopped, kept = new_chat(), new_chat()
    slow = {"model": "demo", "max_tokens": 150}
    with requests.post(
        f"{api.url}/api/chat", json=chat_body(kept, [user(PROMPT)], **slow), stream=True, timeout=30
    ) as response:
        kept_session = response.headers["X-Session-Id"]
        next(data_lines(response))
    # The response is closed; the generation goes on to its end.
    assert client.wait_terminal(api.url, kept_session)["status"] == "completed"
    # No follower saw it end: the reader finds it ended and never serves it as active.
    assert requests.get(f"{api.url}/api/chat/{kept}/stream", timeout=10).status_code == 204

    with requests.post(
        f"{api.url}/api/chat",
        json=chat_body(stopped, [user(PROMPT)], **slow),
        stream=True,
        timeout=30,
    ) as response:
        lines = data_lines(response)
        assert json.loads(next(lines))["type"] == "start"
        while json.loads(next(lines))["type"] != "text-delta":
            pass
        stop = requests.delete(f"{api.url}/api/chat/{stopped}/stream", timeout=10)
        assert stop.status_code == 202, stop.text
        assert stop.json() == {"sessionId": response.headers["X-Session-Id"], "status": "cancelled"}
        rest = [json.loads(line) for line in lines if line != "[DONE]"]
    assert rest[-2:] == [{"type": "text-end", "id": "t0"}, {"type": "abort", "reason": "cancelled"}]
    assert invalid_chunks(rest) == []
    assert requests.get(f"{api.url}/api/chat/{stopped}/stream", timeout=10).status_code == 204
    again = requests.delete(f"{api.url}/api/chat/{stopped}/stream", timeout=10)
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"


def test_an_error_session_ends_with_a_readable_error_chunk(api: Api) -> None:
    result = post_chat(api, chat_body(new_chat(), [user("hi")], model="fake-401"))
    assert result["status"] == 200 and result["invalid"] == [] and result["done"]
    error = result["chunks"][-1]
    assert error["type"] == "error" and error["errorText"].strip()


def test_file_parts_and_earlier_turns_become_the_generation_request(
    api: Api, r: redis.Redis
) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    messages = [
        {"id": "s", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
        user("first question", "u0"),
        {
            "id": "a0",
            "role": "assistant",
            "parts": [
                {"type": "step-start"},
                {"type": "reasoning", "text": "thinking", "state": "done"},
                {"type": "text", "text": "first answer", "state": "done"},
            ],
        },
        {
            "id": "u1",
            "role": "user",
            "parts": [
                {"type": "text", "text": "and this?"},
                {"type": "file", "mediaType": "image/png", "url": image},
            ],
        },
    ]
    response = requests.post(
        f"{api.url}/api/chat", json=chat_body(new_chat(), messages, max_tokens=2), timeout=30
    )
    assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")
    session_id = response.headers["X-Session-Id"]
    assert client.wait_terminal(api.url, session_id)["status"] == "completed"
    stored = json.loads(r.hget(keys.meta(session_id), fields.REQUEST) or "{}")
    assert stored["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        },
    ]
    assert stored["max_tokens"] == 2


BAD_BODIES: list[tuple[Any, str]] = [
    ("not json", "not valid JSON"),
    ([1, 2], "must be a JSON object"),
    ({"id": "c", "trigger": "submit-message"}, "messages must be a non-empty array"),
    ({"id": "c", "messages": [{"role": "user", "content": "hi"}]}, "messages[0].parts"),
    ({"id": "c", "messages": ["hi"]}, "messages[0] must be a UI message"),
    ({"id": "c", "messages": [{"role": "robot", "parts": []}]}, "messages[0].role"),
    (
        {"id": "c", "messages": [user("hi"), {"role": "user", "parts": [{"type": "video"}]}]},
        "messages[1].parts[0].type 'video'",
    ),
    (
        {"id": "c", "messages": [{"role": "user", "parts": [{"type": "text", "text": 3}]}]},
        "messages[0].parts[0].text",
    ),
    (
        {
            "id": "c",
            "messages": [
                {"role": "user", "parts": [{"type": "file", "mediaType": "application/pdf"}]}
            ],
        },
        "messages[0].parts[0].mediaType",
    ),
    (
        {
            "id": "c",
            "messages": [
                user("hi"),
                {
                    "role": "assistant",
                    "parts": [
                        {"type": "tool-x", "toolCallId": "c1", "state": "output-available"},
                        {"type": "tool-bad name", "toolCallId": "c2", "state": "output-error"},
                    ],
                },
            ],
        },
        "messages[1].parts[1].type",
    ),
    ({"id": "c", "messages": [user("x" * 200_001)]}, "MAX_MESSAGES_CHARS"),
    ({"id": 7, "messages": [user("hi")]}, "id must be a chat id"),
    ({"id": "c" * 129, "messages": [user("hi")]}, "id must be a chat id"),
    ({"id": "c", "messages": [user("hi")], "trigger": "go"}, "trigger"),
    ({"id": "c", "messages": [user("hi")], "max_tokens": 0}, "max_tokens"),
    ({"id": "c", "messages": [user("hi")], "colour": "red"}, "unknown field 'colour'"),
]


@pytest.mark.parametrize(("body", "names"), BAD_BODIES, ids=[b[1][:30] for b in BAD_BODIES])
def test_bad_bodies_are_400s_naming_the_field(api: Api, body: Any, names: str) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    response = requests.post(
        f"{api.url}/api/chat", data=data, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert names in error["message"], error
    assert error["code"] in ("invalid_request", "invalid_json")


def test_bad_chat_ids_in_the_path_are_400s(api: Api) -> None:
    for method in ("GET", "DELETE"):
        response = requests.request(method, f"{api.url}/api/chat/{'x' * 129}/stream", timeout=10)
        assert response.status_code == 400, response.text
        assert "chatId" in response.json()["error"]["message"]
    response = requests.get(f"{api.url}/api/chat/no-such-chat/stream", timeout=10)
    assert response.status_code == 204


def test_a_chat_id_never_reaches_another_tenants_stream(two_keys_api: Api) -> None:
    alice = {"Authorization": f"Bearer {TENANT_KEYS['alice']}"}
    bob = {"Authorization": f"Bearer {TENANT_KEYS['bob']}"}
    chat_id = "the-same-chat-id"
    body = chat_body(chat_id, [user(PROMPT)], max_tokens=150)
    assert requests.post(f"{two_keys_api.url}/api/chat", json=body, timeout=10).status_code == 401
    with requests.post(
        f"{two_keys_api.url}/api/chat", json=body, headers=alice, stream=True, timeout=30
    ) as response:
        assert response.status_code == 200
        session_id = response.headers["X-Session-Id"]
        next(data_lines(response))
        theirs = requests.get(
            f"{two_keys_api.url}/api/chat/{chat_id}/stream", headers=bob, timeout=10
        )
        assert theirs.status_code == 204
        stop = requests.delete(
            f"{two_keys_api.url}/api/chat/{chat_id}/stream", headers=bob, timeout=10
        )
        assert stop.status_code == 404
        mine = run_harness(
            {"url": f"{two_keys_api.url}/api/chat/{chat_id}/stream", "headers": alice}
        )
        assert mine["status"] == 200 and mine["headers"]["x-session-id"] == session_id
        assert mine["chunks"][-1] == {"type": "finish", "finishReason": "stop"}
    deadline = time.monotonic() + 30
    while client.info(two_keys_api.url, session_id, alice)["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_retry_with_the_same_idempotency_key_streams_the_same_session(api: Api) -> None:
    body = chat_body(new_chat(), [user(PROMPT)], max_tokens=3)
    key = {"Idempotency-Key": f"chat-{uuid.uuid4().hex}"}
    first = requests.post(f"{api.url}/api/chat", json=body, headers=key, timeout=30)
    again = requests.post(f"{api.url}/api/chat", json=body, headers=key, timeout=30)
    assert first.status_code == again.status_code == 200
    assert first.headers["X-Session-Id"] == again.headers["X-Session-Id"]
    assert first.text == again.text


def test_a_body_over_the_limit_is_a_413(api: Api) -> None:
    body = chat_body(new_chat(), [user("x" * (4 * 1024 * 1024))])
    response = requests.post(f"{api.url}/api/chat", json=body, timeout=30)
    assert response.status_code == 413, response.text[:200]
    assert response.json()["error"]["code"] == "body_too_large"


def test_a_chat_refused_a_follower_place_does_not_go_on_generating(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    # A Redis of its own: in open mode the caller is the client address, and a follower of
    # another test on the shared Redis could hold the only place first.
    stack = make_stack(
        MAX_FOLLOWERS_PER_CALLER="1", REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url
    )
    stack.worker()
    api = stack.api()
    # Long enough that its follower holds the place however slow the machine; stopped below.
    other = client.create(api.url, prompt="holds the place", max_tokens=5000)["sessionId"]
    chat_id = new_chat()
    with requests.get(f"{api.url}/api/streams/{other}", stream=True, timeout=30) as held:
        assert held.status_code == 200
        refused = requests.post(
            f"{api.url}/api/chat", json=chat_body(chat_id, [user(PROMPT)]), timeout=10
        )
        assert refused.status_code == 429, refused.text
    requests.delete(f"{api.url}/api/streams/{other}", timeout=10)
    # Its session was stopped: once the place is free, the chat has nothing active.
    deadline = time.monotonic() + 30
    while (
        answer := requests.get(f"{api.url}/api/chat/{chat_id}/stream", timeout=10)
    ).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert answer.status_code == 204
