"""OpenAI's background responses (DESIGN.md 2.7), driven by the official `openai` SDK.

The SDK parses every event and object into its own typed models: each test asserts the
types, so a shape the SDK does not know fails here rather than in a user's backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseQueuedEvent,
    ResponseReasoningItem,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from tests.procs import Api, Worker
from tests.test_limits import keyed
from tests.test_parts import port_closed

# Every event type the service sends, and the SDK model it must parse into.
EVENT_TYPES: dict[str, Any] = {
    "response.created": ResponseCreatedEvent,
    "response.queued": ResponseQueuedEvent,
    "response.in_progress": ResponseInProgressEvent,
    "response.output_item.added": ResponseOutputItemAddedEvent,
    "response.output_item.done": ResponseOutputItemDoneEvent,
    "response.content_part.added": ResponseContentPartAddedEvent,
    "response.content_part.done": ResponseContentPartDoneEvent,
    "response.output_text.delta": ResponseTextDeltaEvent,
    "response.output_text.done": ResponseTextDoneEvent,
    "response.reasoning_text.delta": ResponseReasoningTextDeltaEvent,
    "response.reasoning_text.done": ResponseReasoningTextDoneEvent,
    "response.function_call_arguments.delta": ResponseFunctionCallArgumentsDeltaEvent,
    "response.function_call_arguments.done": ResponseFunctionCallArgumentsDoneEvent,
    "response.completed": ResponseCompletedEvent,
    "response.incomplete": ResponseIncompleteEvent,
    "response.failed": ResponseFailedEvent,
}
ITEM_TYPES = {
    "message": ResponseOutputMessage,
    "reasoning": ResponseReasoningItem,
    "function_call": ResponseFunctionToolCall,
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def sdk() -> Iterator[Callable[..., OpenAI]]:
    """`sdk(api, key)`: the official client against this service, without retries (so a
    refusal raises at once); closed after the test."""
    clients: list[OpenAI] = []

    def make(api: Api, key: str = "sk-unused-in-open-mode") -> OpenAI:
        client = OpenAI(base_url=api.url + "/v1", api_key=key, max_retries=0, timeout=30)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def typed(events: Iterable[Any]) -> list[Any]:
    """The events, each checked to be the SDK's own model for its type."""
    out = []
    for event in events:
        assert isinstance(event, EVENT_TYPES[event.type]), (event.type, type(event))
        # The SDK builds its models without validation: validate what came, field by field
        # (required fields, literals), as the SDK's types declare them.
        EVENT_TYPES[event.type].model_validate(event.to_dict(warnings=False))
        item = getattr(event, "item", None)
        if item is not None:
            assert isinstance(item, ITEM_TYPES[item.type]), type(item)
        out.append(event)
    return out


def read_until(stream: Any, sequence_number: int) -> list[Any]:
    """Events up to and including `sequence_number`, then drop the connection."""
    seen = []
    for event in stream:
        seen.append(event)
        if event.sequence_number >= sequence_number:
            break
    stream.close()
    return typed(seen)


def valid(response: Response) -> Response:
    """A Response object, validated against the SDK's type."""
    assert isinstance(response, Response)
    return Response.model_validate(response.to_dict(warnings=False))


def deltas(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def assert_whole(events: list[Any]) -> None:
    """Sequence numbers 0, 1, 2, ... with no gap and no repeat, ending with completion."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"


def test_background_stream_dropped_at_10_resumes_with_starting_after(api: Api, sdk: Any) -> None:
    client = sdk(api)
    stream = client.responses.create(
        model="demo", input="resume me exactly", background=True, stream=True, max_output_tokens=30
    )
    first = read_until(stream, 10)
    assert first[-1].sequence_number == 10
    response_id = first[0].response.id
    assert response_id.startswith("resp_") and first[0].response.background is True

    rest = typed(client.responses.retrieve(response_id, stream=True, starting_after=10))
    events = first + rest
    assert_whole(events)
    final = valid(client.responses.retrieve(response_id))
    assert final.status == "completed"
    assert deltas(events) == final.output_text != ""
    assert events[-1].response.output_text == final.output_text
    assert final.usage is not None and final.usage.output_tokens == 30
    # The same events on a replay from the start: sequence numbers are the stored stream's.
    again = typed(client.responses.retrieve(response_id, stream=True))
    assert [e.to_dict() for e in again] == [e.to_dict() for e in events]


def test_resume_across_an_api_kill_and_on_a_second_api(
    stack_env: dict[str, str], logs_dir: Path, worker: Worker, sdk: Any
) -> None:
    # `worker`: run first (in a random order), nothing else would have started one.
    first_api = Api(stack_env, logs_dir, name="responses-killed").start()
    second_api = Api(stack_env, logs_dir, name="responses-second").start()
    restarted = None
    try:
        client = sdk(first_api)
        stream = client.responses.create(
            model="demo",
            input="survive a kill",
            background=True,
            stream=True,
            max_output_tokens=150,
        )
        events = read_until(stream, 10)
        response_id = events[0].response.id
        first_api.kill()
        assert first_api.proc is not None and first_api.proc.returncode == -9

        # Another process goes on from 10, the client drops again at 30 ...
        other = sdk(second_api)
        events += read_until(
            other.responses.retrieve(response_id, stream=True, starting_after=10), 30
        )
        # ... and the killed one, back on its port, gives the rest.
        port_closed(first_api.port)  # its orphaned worker notices and exits
        restarted = Api(stack_env, logs_dir, name="responses-restarted", port=first_api.port)
        restarted.start()
        events += typed(client.responses.retrieve(response_id, stream=True, starting_after=30))
        assert_whole(events)
        assert deltas(events) == other.responses.retrieve(response_id).output_text
        assert deltas(events) == client.responses.retrieve(response_id).output_text
    finally:
        for proc in (restarted, second_api, first_api):
            if proc is not None:
                proc.stop()


def test_background_polled_to_completed(api: Api, sdk: Any) -> None:
    client = sdk(api)
    response = client.responses.create(
        model="demo",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "poll me"}]}],
        instructions="Be brief.",
        background=True,
        max_output_tokens=12,
        metadata={"order": "42"},
    )
    assert isinstance(response, Response) and response.status in ("queued", "in_progress")
    deadline = time.monotonic() + 30
    while response.status in ("queued", "in_progress"):
        assert time.monotonic() < deadline, "the response never completed"
        time.sleep(0.05)
        response = valid(client.responses.retrieve(response.id))
    assert response.status == "completed"
    assert response.metadata == {"order": "42"} and response.instructions == "Be brief."
    assert response.output_text.startswith("You asked: poll me.")
    [message] = response.output
    assert isinstance(message, ResponseOutputMessage) and message.status == "completed"


def test_cancel_mid_answer_ends_the_stream_cancelled(api: Api, sdk: Any) -> None:
    client = sdk(api)
    stream = client.responses.create(
        model="demo", input="stop me", background=True, stream=True, max_output_tokens=2000
    )
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            cancelled = client.responses.cancel(seen[0].response.id)
            assert isinstance(cancelled, Response) and cancelled.status == "cancelled"
            break
    seen += list(stream)  # the stream ends by itself after the cancel
    typed(seen)
    assert seen[-1].type == "response.output_item.done"
    assert seen[-1].item.status == "incomplete"
    after = valid(client.responses.retrieve(seen[0].response.id))
    assert after.status == "cancelled"
    assert after.output_text == deltas(seen)
    assert len(after.output_text.split()) < 2000


def test_a_provider_error_fails_and_a_length_finish_is_incomplete(api: Api, sdk: Any) -> None:
    client = sdk(api)
    failed = typed(client.responses.create(model="fake-error-mid", input="x", stream=True))
    assert isinstance(failed[-1], ResponseFailedEvent)
    assert [e.sequence_number for e in failed] == list(range(len(failed)))
    response = valid(client.responses.retrieve(failed[-1].response.id))
    assert response.status == "failed" and response.error is not None
    assert "Upstream model overloaded" in response.error.message
    assert response.output_text == deltas(failed) != ""  # the partial answer stays

    cut = typed(client.responses.create(model="fake-length", input="x", stream=True))
    assert isinstance(cut[-1], ResponseIncompleteEvent)
    response = valid(client.responses.retrieve(cut[-1].response.id))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_reasoning_model_gives_a_reasoning_item_then_the_message(api: Api, sdk: Any) -> None:
    client = sdk(api)
    with client.responses.stream(
        model="demo-reasoning", input="think first", max_output_tokens=8
    ) as s:
        events = typed(s)
        final = s.get_final_response()
    assert_whole(events)
    reasoning, message = final.output
    assert isinstance(reasoning, ResponseReasoningItem) and reasoning.content
    assert reasoning.content[0].type == "reasoning_text"
    assert reasoning.content[0].text == "".join(
        e.delta for e in events if e.type == "response.reasoning_text.delta"
    )
    assert reasoning.content[0].text.startswith("Thinking about")
    assert isinstance(message, ResponseOutputMessage)
    assert final.output_text == deltas(events) != ""
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 2


def test_tool_model_calls_the_function_and_answers_its_output(api: Api, sdk: Any) -> None:
    client = sdk(api)
    asked = [{"role": "user", "content": "Paris weather please"}]
    # Neither background nor stream: the answer comes back once it is complete.
    response = valid(client.responses.create(model="demo-tools", input=asked, tools=[WEATHER]))
    assert response.status == "completed"
    [call] = response.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris weather please"}

    follow_up = client.responses.create(
        model="demo-tools",
        input=[
            *asked,
            *[item.to_dict() for item in response.output],
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny 21C"},
        ],
        tools=[WEATHER],
    )
    assert follow_up.output_text == "The tool answered: sunny 21C."


def test_errors_are_the_sdks_own_exceptions(api: Api, sdk: Any) -> None:
    client = sdk(api)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="demo", input="hi", previous_response_id="resp_x")
    assert bad.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as built_in:
        client.responses.create(model="demo", input="hi", tools=[{"type": "web_search"}])
    assert built_in.value.body["param"] == "tools[0].type"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as model:
        client.responses.create(model="gpt-nope", input="hi")
    assert model.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_" + "x" * 21)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("not-a-response")


def test_keyed_mode_gives_401_and_limits_give_429(make_stack: Any, sdk: Any) -> None:
    env, auth = keyed(
        "alice", "bob", "carol", RATE_CREATES_PER_MIN="2", MAX_FOLLOWERS_PER_CALLER="1"
    )
    stack = make_stack(**env)
    api = stack.api()
    key, bobs, carols = (
        auth[k]["Authorization"].removeprefix("Bearer ") for k in ("alice", "bob", "carol")
    )
    with pytest.raises(openai.AuthenticationError):
        sdk(api, "rsk_wrong").responses.create(model="demo", input="hi")
    client = sdk(api, key)
    # This stack has no worker: the responses stay queued until cancelled below.
    first = client.responses.create(model="demo", input="one", background=True)
    assert first.status == "queued"
    second = client.responses.create(model="demo", input="two", background=True)
    client.responses.cancel(second.id)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="demo", input="two", background=True)
    with pytest.raises(openai.AuthenticationError):
        sdk(api, "rsk_wrong").responses.retrieve(first.id)
    # Another tenant's response does not exist for it, and it cannot stop it.
    with pytest.raises(openai.NotFoundError):
        sdk(api, bobs).responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk(api, bobs).responses.cancel(first.id)
    assert client.responses.retrieve(first.id).status == "queued"
    assert client.responses.cancel(first.id).status == "cancelled"

    # A stream refused its follower place: that response is not left generating.
    held = sdk(api, carols).responses.create(model="demo", input="held", stream=True)
    assert next(iter(held)).type == "response.created"
    with pytest.raises(openai.RateLimitError):
        sdk(api, carols).responses.create(model="demo", input="refused", stream=True)
    listed = requests.get(f"{api.url}/api/streams", headers=auth["carol"], timeout=10).json()[
        "sessions"
    ]
    assert sorted(s["status"] for s in listed) == ["cancelled", "queued"]
    held.close()
    queued = next(s["sessionId"] for s in listed if s["status"] == "queued")
    assert sdk(api, carols).responses.cancel(f"resp_{queued}").status == "cancelled"
