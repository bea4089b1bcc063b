"""Reasoning and tool calls (DESIGN.md 2.5) through the whole stack: stored and followed
like text, with the same cursor, through reloads, API and worker kills and Redis restarts."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from rstreams.localredis import LocalRedis
from shared.jobs import GenerationRequest, Message
from tests import client
from tests.fake_provider import FakeProvider
from tests.procs import Api
from tests.test_worker_faults import holder, wait_for_chunks
from worker.generate import part_of
from worker.providers.demo import demo_answer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
PROMPT = "What is the weather like in Oslo and in Bergen on Sunday afternoon?"
ASKS: dict[str, dict[str, Any]] = {
    "demo-reasoning": {"prompt": PROMPT, "model": "demo-reasoning", "max_tokens": 40},
    "demo-tools": {"prompt": PROMPT, "model": "demo-tools", "tools": [WEATHER]},
}


def expected(ask: dict[str, Any]) -> list[dict[str, Any]]:
    """The content events the deterministic demo writes for `ask`, without their ids."""
    request = GenerationRequest(
        ask["model"],
        (Message("user", ask["prompt"]),),
        ask.get("max_tokens"),
        options={"tools": ask["tools"]} if "tools" in ask else {},
    )
    out = []
    for index, delta in enumerate(demo_answer(request, ask.get("max_tokens") or 200)[0]):
        part = part_of(delta)
        event: dict[str, Any] = {"type": str(part.type), "index": index}
        event.update({"call": part.call} if part.call is not None else {"text": part.text})
        out.append(event)
    return out


def contents(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kinds = ("chunk", "reasoning", "tool_call")
    return [{k: v for k, v in e.items() if k != "id"} for e in events if e["type"] in kinds]


def assert_whole(events: list[dict[str, Any]], ask: dict[str, Any]) -> None:
    """Every part, in order, once: nothing lost, repeated or reordered."""
    assert contents(events) == expected(ask)
    assert events[-1]["type"] == "done"
    assert events[-1]["chunks"] == len(expected(ask))
    assert events[-1]["finishReason"] == ("tool_calls" if "tools" in ask else "stop")


def test_a_text_only_answer_is_framed_as_before(api: Api) -> None:
    session_id = client.create(api.url, prompt="plain", max_tokens=3)["sessionId"]
    with requests.get(
        f"{api.url}/api/streams/{session_id}", headers={"Accept": "text/event-stream"}, timeout=30
    ) as response:
        data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    chunk = next(d for d in data if '"chunk"' in d)
    cursor = json.loads(chunk)["id"]
    assert chunk == f'{{"type":"chunk","id":"{cursor}","index":0,"text":"You asked:"}}'
    message = requests.get(f"{api.url}/api/streams/{session_id}/message", timeout=10).json()
    assert message["message"] == {
        "role": "assistant",
        "content": client.text(api.url, session_id)["text"],
        "reasoning": None,
    }


@pytest.mark.parametrize("model", sorted(ASKS))
def test_every_part_replays_and_follows_over_ws_and_sse_from_any_cursor(
    api: Api, model: str
) -> None:
    ask = ASKS[model]
    session_id = client.create(api.url, **ask)["sessionId"]
    live = client.ws_follow(api.ws_url, session_id).events
    assert_whole(live, ask)
    replay = client.sse_follow(api.url, session_id)
    assert replay.events == live and replay.ids == [e["id"] for e in live]
    middle = contents(live)[len(contents(live)) // 2]
    cursor = next(e["id"] for e in live if e.get("index") == middle["index"])
    rest = client.sse_follow(api.url, session_id, last_event_id=cursor).events
    assert rest == live[live.index(next(e for e in live if e["id"] == cursor)) + 1 :]

    answer = requests.get(f"{api.url}/api/streams/{session_id}/message", timeout=10).json()
    text = "".join(e["text"] for e in live if e["type"] == "chunk")
    reasoning = "".join(e["text"] for e in live if e["type"] == "reasoning")
    assert answer["status"] == "completed"
    assert answer["message"]["content"] == (text or None)
    assert answer["message"]["reasoning"] == (reasoning or None)
    assert answer["finishReason"] == live[-1]["finishReason"]
    assert client.text(api.url, session_id)["text"] == text
    assert client.info(api.url, session_id)["chunks"] == len(expected(ask))
    if model == "demo-tools":
        (call,) = answer["message"]["tool_calls"]
        assert call["type"] == "function" and call["function"]["name"] == "get_weather"
        assert call["id"] == next(e for e in live if e["type"] == "tool_call")["call"]["id"]
        assert json.loads(call["function"]["arguments"]) == {"city": " ".join(PROMPT.split()[:10])}
    else:
        assert reasoning.startswith("Thinking about What is the weather")
        assert "tool_calls" not in answer["message"]


def test_a_tool_loop_runs_through_the_service(api: Api) -> None:
    """A backend's loop: call, run the tool, send its result, get the answer."""
    conversation: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.create(api.url, messages=conversation, model="demo-tools", tools=[WEATHER])
    client.wait_terminal(api.url, first["sessionId"])
    turn = requests.get(f"{api.url}/api/streams/{first['sessionId']}/message", timeout=10).json()
    assert turn["finishReason"] == "tool_calls"
    conversation.append(turn["message"])  # as given back: reasoning and all
    (call,) = turn["message"]["tool_calls"]
    city = json.loads(call["function"]["arguments"])["city"]
    conversation.append(
        {"role": "tool", "tool_call_id": call["id"], "content": f"Sunny in {city}, 21 C"}
    )
    second = client.create(api.url, messages=conversation, model="demo-tools", tools=[WEATHER])
    events = client.ws_follow(api.ws_url, second["sessionId"]).events
    assert client.chunks_text(events) == "The tool answered: Sunny in Weather in Oslo?, 21 C."
    assert events[-1]["finishReason"] == "stop"


@pytest.mark.parametrize("model", sorted(ASKS))
def test_every_part_survives_a_worker_killed_mid_answer(
    make_stack: Any, r: redis.Redis, model: str
) -> None:
    ask = ASKS[model]
    stack = make_stack(DEMO_TOKENS_PER_S="5")
    workers = [stack.worker(), stack.worker()]
    api = stack.api()
    session_id = client.create(api.url, **ask)["sessionId"]
    wait_for_chunks(api.url, session_id, 3)
    holder(r, session_id, workers).kill()
    events = client.ws_follow(api.ws_url, session_id, timeout_s=60).events
    assert [e["status"] for e in events if e["type"] == "status"] == [
        "queued",
        "running",
        "resumed",
    ]
    assert_whole(events, ask)


def test_a_provider_call_cut_by_a_worker_kill_ends_with_worker_lost(
    make_stack: Any, r: redis.Redis, fake_provider: FakeProvider
) -> None:
    stack = make_stack(PREFILL_MODELS="fake-*")  # text could be continued; a call cannot
    workers = [stack.worker(), stack.worker()]
    api = stack.api()
    session_id = client.create(api.url, prompt="call", model="fake-tools-slow")["sessionId"]
    wait_for_chunks(api.url, session_id, 5)
    holder(r, session_id, workers).kill()
    events = client.ws_follow(api.ws_url, session_id, timeout_s=60).events
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "worker_lost"
    assert "calling tools" in events[-1]["error"]["message"]
    answer = requests.get(f"{api.url}/api/streams/{session_id}/message", timeout=10).json()
    assert answer["status"] == "failed" and "finishReason" not in answer
    assert answer["message"]["tool_calls"][0]["id"] == "call_slow"
    requests_sent = len(fake_provider.requests_for("fake-tools-slow"))
    assert requests_sent == 1  # never asked again to continue a call


@pytest.mark.parametrize("model", sorted(ASKS))
def test_every_part_survives_an_api_kill_and_a_reload(
    make_stack: Any, logs_dir: Path, model: str
) -> None:
    ask = ASKS[model]
    stack = make_stack(DEMO_TOKENS_PER_S="5")
    stack.worker()
    first = stack.api()
    session_id = client.create(first.url, **ask)["sessionId"]
    seen = client.ws_follow(first.ws_url, session_id, max_events=3).events  # then the tab closes
    first.kill()
    second = stack.api()
    rest = client.sse_follow(second.url, session_id, last_event_id=seen[-1]["id"]).events
    assert_whole(seen + rest, ask)


@pytest.mark.parametrize("model", sorted(ASKS))
def test_every_part_survives_a_redis_restart(
    make_stack: Any, own_redis: LocalRedis, model: str
) -> None:
    ask = ASKS[model]
    stack = make_stack(
        REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url, DEMO_TOKENS_PER_S="5"
    )
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, **ask)["sessionId"]
    out: list[Any] = []
    follower = threading.Thread(
        target=lambda: out.append(client.ws_follow(api.ws_url, session_id, timeout_s=90))
    )
    follower.start()
    wait_for_chunks(api.url, session_id, 3)
    own_redis.stop()
    time.sleep(1)  # an outage the worker and the follower both ride out
    own_redis.start()
    follower.join(90)
    assert_whole(out[0].events, ask)


def port_closed(port: int, timeout_s: float = 15) -> None:
    """Wait until nothing accepts connections on `port`."""
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        assert time.monotonic() < deadline, f"port {port} still open"
        time.sleep(0.05)


def test_a_tool_loop_survives_an_api_kill_and_a_browser_reload_in_each_turn(
    make_stack: Any, logs_dir: Path, browser: Any
) -> None:
    """A backend runs the loop with the Python client while a page shows each turn; in
    each turn the API is killed (and comes back on its port) and the page reloads."""
    from playwright.sync_api import expect

    from rstreams import Client, Done, ToolCall

    stack = make_stack(DEMO_TOKENS_PER_S="5")
    stack.worker()
    api = stack.api()
    page = browser.new_context().new_page()
    backend = Client(api.url, backoff_max_s=0.5)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Oslo?"}]
    turns: list[dict[str, Any]] = []
    try:
        while True:
            session = backend.generate(messages=messages, model="demo-tools", tools=[WEATHER])
            page.goto(f"{api.url}/?session={session.session_id}")
            events: list[Any] = []
            killed = False
            for event in backend.follow(session.session_id):
                events.append(event)
                if not killed and len(events) == 4:  # mid-turn
                    killed = True
                    port = api.port
                    api.kill()
                    port_closed(port)  # its orphaned worker notices and exits
                    api = Api(stack.env, logs_dir, name=f"{stack.name}-again", port=port)
                    stack.apis.append(api.start())
                    page.reload()
            assert killed and isinstance(events[-1], Done)
            turn = backend.message(session.session_id)
            indexes = [e.index for e in events if hasattr(e, "index")]
            turn_chunks = events[-1].chunks
            assert indexes == list(range(turn_chunks))  # none lost, none twice
            expect(page.get_by_test_id("status")).to_have_text("completed", timeout=30_000)
            expect(page.get_by_test_id("chunks")).to_have_text(str(turn_chunks))
            turns.append(turn)
            messages.append(turn["message"])
            if turn["finishReason"] != "tool_calls":
                expect(page.get_by_test_id("answer")).to_have_text(turn["message"]["content"])
                break
            (call,) = turn["message"]["tool_calls"]
            pieces = [e for e in events if isinstance(e, ToolCall)]
            assert "".join(p.arguments for p in pieces) == call["function"]["arguments"]
            expect(page.get_by_test_id("tool-calls")).to_have_text(
                f"get_weather({call['function']['arguments']})"
            )
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"})
    finally:
        page.context.close()
        backend.close()
    assert [t["finishReason"] for t in turns] == ["tool_calls", "stop"]
    assert turns[-1]["message"]["content"] == "The tool answered: Sunny, 21 C."
