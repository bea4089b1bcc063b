"""The OpenAI-compatible provider through the whole stack: API -> worker -> local provider."""

from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from tests import client
from tests.fake_provider import FakeProvider, expected_text
from tests.procs import Api, Worker


def unique(prompt: str) -> str:
    """A prompt no other test sends: the provider's record of it is this test's alone."""
    return f"{prompt} {uuid.uuid4().hex[:8]}"


def test_provider_answer_streams_to_followers(api: Api, fake_provider: FakeProvider) -> None:
    prompt = unique("Say hello")
    created = client.create(api.url, prompt=prompt, model="fake-ok", max_tokens=12)
    session_id = created["sessionId"]
    result = client.ws_follow(api.ws_url, session_id)
    assert result.close_code == 1000
    assert client.chunks_text(result.events) == expected_text(12)
    done = result.events[-1]
    assert done["type"] == "done"
    assert done["finishReason"] == "stop"
    assert done["usage"]["completion_tokens"] == 12
    [sent] = fake_provider.requests_for("fake-ok", prompt)
    assert sent["json"]["messages"] == [{"role": "user", "content": prompt}]
    assert sent["json"]["stream"] is True
    assert sent["headers"]["Authorization"] == "Bearer sk-test-provider-key"


def test_provider_error_mid_stream_ends_with_its_reason_and_keeps_the_text(api: Api) -> None:
    session_id = client.create(api.url, prompt="fail later", model="fake-error-mid")["sessionId"]
    result = client.ws_follow(api.ws_url, session_id)
    assert [e["type"] for e in result.events][-1] == "error"
    assert "Upstream model overloaded" in result.events[-1]["error"]["message"]
    assert result.close_code == 1000
    final = client.text(api.url, session_id)
    assert final["status"] == "failed"
    assert final["chunks"] == 3
    assert final["text"] == client.chunks_text(result.events) != ""
    assert client.info(api.url, session_id)["error"]["code"] == "provider_error"


def test_provider_auth_failure_is_an_error_event_without_the_key(api: Api) -> None:
    session_id = client.create(api.url, prompt="no entry", model="fake-401")["sessionId"]
    events = client.ws_follow(api.ws_url, session_id).events
    error = events[-1]["error"]
    assert error["code"] == "provider_auth"
    assert "Invalid API key" in error["message"]
    assert "sk-test-provider-key" not in error["message"]


def test_cancel_closes_the_upstream_request(api: Api, fake_provider: FakeProvider) -> None:
    prompt = unique("long one")
    session_id = client.create(api.url, prompt=prompt, model="fake-slow", max_tokens=400)[
        "sessionId"
    ]
    seen = client.ws_follow(api.ws_url, session_id, max_events=8).events
    assert requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10).status_code == 202
    rest = client.ws_follow(api.ws_url, session_id, after=seen[-1]["id"]).events
    assert rest[-1]["type"] == "cancelled"
    deadline = time.monotonic() + 20  # bounds a hang only
    while prompt not in fake_provider.disconnected_prompts:
        assert time.monotonic() < deadline, "the upstream request was never closed"
        time.sleep(0.05)
    # The upstream is closed: nothing more can come. No chunk was stored after the cancel.
    replay = client.ws_follow(api.ws_url, session_id).events
    assert replay[-1]["type"] == "cancelled"
    chunks = [e for e in replay if e["type"] == "chunk"]
    assert client.text(api.url, session_id)["chunks"] == len(chunks) < 400


def test_the_provider_key_is_in_no_log(api: Api, worker: Worker) -> None:
    # After an answer, a mid-stream error and a refused key.
    for model, last in (("fake-ok", "done"), ("fake-error-mid", "error"), ("fake-401", "error")):
        session_id = client.create(api.url, prompt="one more", model=model)["sessionId"]
        assert client.ws_follow(api.ws_url, session_id).events[-1]["type"] == last
    for proc in (worker, api):
        assert "sk-test-provider-key" not in proc.log(), f"the provider key is in {proc.log_path}"


def test_a_base_url_alone_enables_a_keyless_provider(
    make_stack: Any, fake_provider: FakeProvider
) -> None:
    # As for Ollama or llama.cpp's server: PROVIDER_BASE_URL and nothing else.
    stack = make_stack(PROVIDER_API_KEY="", MODEL_ALLOWLIST="", DEFAULT_MODEL="")
    stack.worker()
    api = stack.api()
    prompt = unique("no key")
    created = client.create(api.url, prompt=prompt, model="keyless/fake-ok", max_tokens=5)
    session_id = created["sessionId"]
    assert client.wait_terminal(api.url, session_id)["status"] == "completed"
    assert client.text(api.url, session_id)["text"] == expected_text(5)
    [sent] = fake_provider.requests_for("keyless/fake-ok", prompt)
    assert "Authorization" not in sent["headers"]
    # The demo model stays the default: which models a local server has is not ours to guess.
    assert client.create(api.url, prompt="default")["model"] == "demo"
