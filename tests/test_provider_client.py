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
from worker.providers.base import Finished, StreamItem, TextDelta
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
