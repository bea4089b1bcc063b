"""The OpenAI-compatible client against a local server speaking the wire format."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator

import pytest

from shared.errors import ProviderError, ProviderRateLimited
from shared.jobs import GenerationRequest, Message
from shared.settings import ProviderSettings, Settings
from tests.fake_provider import FakeProvider, expected_text
from worker.providers.base import Finished, ReasoningDelta, StreamItem, TextDelta, ToolCallDelta
from worker.providers.chat_completions import ChatCompletionsProvider, sse_data


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


def settings_for(fake: FakeProvider, **overrides: object) -> Settings:
    provider = ProviderSettings(
        base_url=fake.base_url, api_key="sk-secret-123", backoff_base_s=0.01, backoff_max_s=0.05
    )
    return Settings(provider=dataclasses.replace(provider, **overrides))  # type: ignore[arg-type]


def ask(
    model: str, max_tokens: int | None = None, temperature: float | None = None
) -> GenerationRequest:
    return GenerationRequest(
        model=model,
        messages=(Message("system", "Be kind."), Message("user", "Hello?")),
        max_tokens=max_tokens,
        temperature=temperature,
    )


def run(provider: ChatCompletionsProvider, request: GenerationRequest) -> list[StreamItem]:
    return list(provider.stream(request, lambda: False))


def text_of(items: list[StreamItem]) -> str:
    return "".join(i.text for i in items if isinstance(i, TextDelta))


@pytest.mark.parametrize(
    "model", ["fake-ok", "fake-crlf", "fake-split", "fake-http10", "openrouter/fake-ok"]
)
def test_streams_the_answer_then_finish_and_usage(fake: FakeProvider, model: str) -> None:
    items = run(ChatCompletionsProvider(settings_for(fake)), ask(model, max_tokens=30))
    assert text_of(items) == expected_text(30)
    assert "café ✓ naïve" in expected_text(30)
    assert items[-1] == Finished(
        "stop", {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}
    )
    assert sum(isinstance(i, Finished) for i in items) == 1


def test_sends_the_request_and_headers_a_provider_expects(fake: FakeProvider) -> None:
    settings = settings_for(fake, http_referer="https://chat.example", x_title="Chat")
    run(ChatCompletionsProvider(settings), ask("fake-ok", max_tokens=3, temperature=0.2))
    sent = fake.requests_for("fake-ok")[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["json"] == {
        "model": "fake-ok",
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hello?"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
        "temperature": 0.2,
    }
    assert sent["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert sent["headers"]["HTTP-Referer"] == "https://chat.example"
    assert sent["headers"]["X-Title"] == "Chat"


def test_no_key_sends_no_authorization_for_local_servers(fake: FakeProvider) -> None:
    run(ChatCompletionsProvider(settings_for(fake, api_key="")), ask("local/fake-ok", 2))
    sent = fake.requests_for("local/fake-ok")[-1]
    assert "Authorization" not in sent["headers"]
    assert "max_tokens" in sent["json"] and "temperature" not in sent["json"]


def test_error_object_mid_stream_raises_with_the_providers_reason(fake: FakeProvider) -> None:
    got: list[StreamItem] = []
    with pytest.raises(ProviderError) as raised:
        for item in ChatCompletionsProvider(settings_for(fake)).stream(
            ask("fake-error-mid"), lambda: False
        ):
            got.append(item)
    assert text_of(got) == expected_text(3)
    assert raised.value.code == "provider_error"
    assert "Upstream model overloaded" in raised.value.message
    assert not raised.value.retryable
    assert len(fake.requests_for("fake-error-mid")) == 1


def test_a_stream_that_ends_without_finishing_is_an_error(fake: FakeProvider) -> None:
    with pytest.raises(ProviderError) as raised:
        run(ChatCompletionsProvider(settings_for(fake)), ask("fake-truncated"))
    assert raised.value.code == "provider_incomplete"
    assert len(fake.requests_for("fake-truncated")) == 1  # text was out: never retried


def test_401_is_not_retried_and_never_shows_the_key(fake: FakeProvider) -> None:
    with pytest.raises(ProviderError) as raised:
        run(ChatCompletionsProvider(settings_for(fake)), ask("fake-401"))
    assert raised.value.code == "provider_auth"
    assert "Invalid API key" in raised.value.message
    assert "sk-secret-123" not in raised.value.message
    assert len(fake.requests_for("fake-401")) == 1


def test_429_honours_retry_after_then_gives_up(fake: FakeProvider) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderRateLimited) as raised:
        run(
            ChatCompletionsProvider(settings_for(fake, max_retries=1, backoff_max_s=2)),
            ask("fake-429"),
        )
    assert raised.value.retry_after_s == 1
    assert len(fake.requests_for("fake-429")) == 2
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("model", ["fake-429-once", "fake-500-once"])
def test_transient_failures_before_the_first_token_are_retried(
    fake: FakeProvider, model: str
) -> None:
    items = run(ChatCompletionsProvider(settings_for(fake)), ask(model, max_tokens=4))
    assert text_of(items) == expected_text(4)
    assert len(fake.requests_for(model)) == 2


def test_500_every_time_fails_as_unavailable_after_the_retries(fake: FakeProvider) -> None:
    with pytest.raises(ProviderError) as raised:
        run(ChatCompletionsProvider(settings_for(fake, max_retries=2)), ask("fake-500"))
    assert raised.value.code == "provider_unavailable"
    assert raised.value.retryable
    assert len(fake.requests_for("fake-500")) == 3


def test_unreachable_provider(fake: FakeProvider) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    settings = settings_for(fake, base_url=f"http://127.0.0.1:{closed_port}/v1")
    with pytest.raises(ProviderError) as raised:
        run(ChatCompletionsProvider(settings), ask("fake-ok"))
    assert raised.value.code == "provider_unreachable"


def test_a_silent_provider_times_out(fake: FakeProvider) -> None:
    settings = settings_for(fake, read_timeout_s=0.3, max_retries=0)
    started = time.monotonic()
    with pytest.raises(ProviderError) as raised:
        run(ChatCompletionsProvider(settings), ask("fake-silent"))
    assert raised.value.code == "provider_timeout"
    # Not a stopwatch: the bound only says it did not wait out the 30 s of silence.
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("model", ["fake-slow", "fake-http10"])
def test_should_stop_closes_the_upstream_response(fake: FakeProvider, model: str) -> None:
    got: list[StreamItem] = []
    before = fake.disconnects.count(model)
    stream = ChatCompletionsProvider(settings_for(fake)).stream(
        ask(model, max_tokens=200), lambda: len(got) >= 5
    )
    for item in stream:
        got.append(item)
    assert len(got) == 5 and all(isinstance(i, TextDelta) for i in got)
    # The provider saw its client go away mid-answer (a read to the end would not show).
    deadline = time.monotonic() + 20  # bounds a hang only
    while fake.disconnects.count(model) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.disconnects.count(model) == before + 1


def test_sse_parser_handles_line_ends_comments_and_multiline_data() -> None:
    raw = [
        b": hello\r\n\r\ndata: a\rdata: b\r",
        b'\n\r\ndata:{"x"',
        b": 1}\n\nevent: x\ndata: last",
    ]
    assert list(sse_data(iter(raw), lambda: False)) == ["a\nb", '{"x": 1}', "last"]


def calls_of(items: list[StreamItem]) -> list[dict[str, str]]:
    """The tool calls the deltas build, in order, as a client assembles them."""
    calls: list[dict[str, str]] = []
    for item in items:
        if not isinstance(item, ToolCallDelta):
            continue
        if item.index == len(calls):  # its first piece
            assert item.id and item.name is not None, item
            calls.append({"id": item.id, "name": item.name, "arguments": ""})
        else:
            assert item.id is None and item.name is None, item
        calls[item.index]["arguments"] += item.arguments
    return calls


WEATHER = {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris 📷 naïve"}'}
TIME = {"id": "call_b", "name": "get_time", "arguments": '{"zone": "CET"}'}
PARTS = {
    "fake-openrouter-reasoning": ("Two and two.", "It is 4.", [], "stop", 12),
    "fake-details-only": ("Adding.", "4", [], "stop", 0),
    "fake-vllm-reasoning": ("Hmm, café 😀.", "Done", [], "stop", 0),
    "fake-tools": ("", "Checking 😀", [WEATHER, TIME], "tool_calls", 0),
    "fake-tools-vllm": (
        "",
        "Let me look.",
        [{"id": "chatcmpl-tool-1", "name": "search", "arguments": '{"q": "redis"}'}],
        "tool_calls",
        0,
    ),
    "fake-tools-whole": (
        "",
        "",
        [
            {"id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
            {"id": "c2", "name": "get_time", "arguments": '{"zone":"CET"}'},
        ],
        "tool_calls",  # the server said `stop`
        None,
    ),
}


@pytest.mark.parametrize("split", ["", "-split"])
@pytest.mark.parametrize("scenario", sorted(PARTS))
def test_reasoning_and_tool_calls_as_each_server_streams_them(
    fake: FakeProvider, scenario: str, split: str
) -> None:
    reasoning, text, calls, finish_reason, reasoning_tokens = PARTS[scenario]
    items = run(ChatCompletionsProvider(settings_for(fake)), ask(scenario + split))
    assert "".join(i.text for i in items if isinstance(i, ReasoningDelta)) == reasoning
    assert text_of(items) == text
    assert calls_of(items) == calls
    finished = items[-1]
    assert isinstance(finished, Finished) and finished.finish_reason == finish_reason
    if reasoning_tokens is not None:
        assert finished.usage is not None
        assert finished.usage["completion_tokens_details"]["reasoning_tokens"] == reasoning_tokens
    for item in items[:-1]:
        # Every piece is whole characters: it can be stored and sent as UTF-8 on its own.
        assert not isinstance(item, Finished)
        piece = item.arguments if isinstance(item, ToolCallDelta) else item.text
        piece.encode()
        assert piece or isinstance(item, ToolCallDelta), item
    # Reasoning comes before the answer's text, and text before the calls it announces.
    kinds = [type(i).__name__ for i in items[:-1]]
    assert kinds == sorted(kinds, key=["ReasoningDelta", "TextDelta", "ToolCallDelta"].index)


def test_a_call_is_a_first_piece_even_before_its_arguments_stream(fake: FakeProvider) -> None:
    items = run(ChatCompletionsProvider(settings_for(fake)), ask("fake-tools"))
    firsts = [i for i in items if isinstance(i, ToolCallDelta) and i.id]
    assert firsts == [
        ToolCallDelta(0, "call_a", "get_weather", ""),
        ToolCallDelta(1, "call_b", "get_time", ""),
    ]


def test_tool_conversations_images_and_options_reach_the_provider_as_sent(
    fake: FakeProvider,
) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    options = {
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "top_p": 0.5,
        "stop": ["\n\n"],
        "seed": 7,
        "reasoning": {"effort": "low"},
    }
    image = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    call = {
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    request = GenerationRequest(
        model="fake-ok",
        messages=(
            Message("user", image),
            Message("assistant", None, tool_calls=[call]),
            Message("tool", "Sunny", tool_call_id="call_a"),
        ),
        options=options,
    )
    run(ChatCompletionsProvider(settings_for(fake)), request)
    sent = fake.requests_for("fake-ok")[-1]["json"]
    assert sent["messages"] == [
        {"role": "user", "content": image},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "Sunny", "tool_call_id": "call_a"},
    ]
    assert {name: sent[name] for name in options} == options
    assert GenerationRequest.from_json(request.to_json()) == request
