"""Requests with tool conversations, images and provider options (DESIGN.md 2.5): checked
by the API, then passed to the provider as they were sent."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests import client
from tests.fake_provider import FakeProvider
from tests.procs import Api

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def user(content: Any = "Hi") -> dict[str, Any]:
    return {"role": "user", "content": content}


def with_call(*rest: dict[str, Any]) -> list[dict[str, Any]]:
    return [user(), {"role": "assistant", "content": None, "tool_calls": [CALL]}, *rest]


def test_a_tool_conversation_with_images_and_options_reaches_the_provider_as_sent(
    api: Api, fake_provider: FakeProvider
) -> None:
    options = {
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {}}},
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 42,
        "reasoning": {"effort": "low"},
    }
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        user([{"type": "text", "text": "Where is this?"}, IMAGE]),
        # What GET /message gives back, reasoning included, goes into the next request.
        {"role": "assistant", "content": "Checking.", "reasoning": "Hmm.", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
    ]
    created = client.create(api.url, messages=messages, model="fake-ok", max_tokens=3, **options)
    assert client.wait_terminal(api.url, created["sessionId"])["status"] == "completed"
    (sent,) = [  # this test's request, whatever other tests sent before it
        r["json"]
        for r in fake_provider.requests_for("fake-ok")
        if r["json"]["messages"][1:2] == messages[1:2]
    ]
    assert sent["messages"] == [
        messages[0],
        messages[1],
        {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"},
    ]
    assert {name: sent[name] for name in options} == options


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"messages": [user([])]}, "messages[0].content"),
        ({"messages": [user([{"type": "audio", "data": "x"}])]}, "messages[0].content[0]"),
        ({"messages": [user([{"type": "text", "text": ""}])]}, "messages[0].content[0].text"),
        (
            {
                "messages": [
                    user([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}])
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "system", "content": [IMAGE]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [user(), {"role": "assistant", "content": None}]}, "messages[1].content"),
        (
            {"messages": [user(), {"role": "assistant", "content": "x", "tool_calls": []}]},
            "messages[1].tool_calls",
        ),
        (
            {"messages": with_call({"role": "tool", "content": "x"})},
            "messages[2].tool_call_id",
        ),
        (
            {"messages": with_call({"role": "tool", "tool_call_id": "call_9", "content": "x"})},
            "messages[2].tool_call_id",
        ),
        (
            {"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        (
            {
                "messages": [
                    user(),
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "a b"}}]},
                ]
            },
            "messages[1].tool_calls[0].function",
        ),
        (
            {"messages": [user(), {"role": "user", "content": "x", "tool_calls": [CALL]}]},
            "tool_calls",
        ),
        ({"prompt": "a", "tools": []}, "tools"),
        ({"prompt": "a", "tools": [{"type": "retrieval"}]}, "tools[0]"),
        (
            {"prompt": "a", "tools": [{"type": "function", "function": {}}]},
            "tools[0].function.name",
        ),
        ({"prompt": "a", "tools": [WEATHER, WEATHER]}, "declared twice"),
        (
            {
                "prompt": "a",
                "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}],
            },
            "tools[0].function.parameters",
        ),
        ({"prompt": "a", "tool_choice": "required"}, "tool_choice"),
        (
            {
                "prompt": "a",
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ({"prompt": "a", "response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"prompt": "a", "response_format": {"type": "json_schema"}},
            "response_format.json_schema",
        ),
        ({"prompt": "a", "top_p": 1.5}, "top_p"),
        ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": "a", "seed": 2**64}, "seed"),
        ({"prompt": "a", "seed": 1.5}, "seed"),
        ({"prompt": "a", "reasoning": {"effort": "max"}}, "reasoning"),
        ({"prompt": "a", "reasoning": {"max_tokens": 0}}, "reasoning"),
        ({"prompt": "a", "reasoning": "high"}, "reasoning"),
    ],
)
def test_a_malformed_part_is_a_400_naming_the_field(
    api: Api, body: dict[str, Any], named: str
) -> None:
    response = requests.post(f"{api.url}/api/streams/generate", json=body, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert named in error["message"], error["message"]


def test_limits_on_tools_and_images_are_settings(make_stack: Any) -> None:
    stack = make_stack(MAX_TOOLS="1", MAX_IMAGES="1", MAX_TOOLS_CHARS="150")
    api = stack.api()

    def refused(**body: Any) -> str:
        response = requests.post(f"{api.url}/api/streams/generate", json=body, timeout=10)
        assert response.status_code == 400, response.text
        return str(response.json()["error"]["message"])

    second = {"type": "function", "function": {"name": "other"}}
    assert "MAX_TOOLS" in refused(prompt="a", tools=[second, {**second, "function": {"name": "b"}}])
    assert "MAX_TOOLS_CHARS" in refused(prompt="a", tools=[WEATHER])
    assert "MAX_IMAGES" in refused(messages=[user([IMAGE, IMAGE])])
    ok = requests.post(
        f"{api.url}/api/streams/generate",
        json={"messages": [user([IMAGE])], "tools": [second]},
        timeout=10,
    )
    assert ok.status_code == 202, ok.text
