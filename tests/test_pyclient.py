"""The Python client (`rstreams.Client`) against a real API, worker and Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nanoid import generate as nanoid

from api.apikeys import hash_key
from rstreams import Cancelled, Chunk, Client, Done, Event, RstreamsError, Status
from rstreams.localredis import free_port
from tests.procs import Api, Worker

API_KEY = "rsk_client-test-key-0123456789abcdefghijklmn"


def chunks_of(events: list[Event]) -> list[Chunk]:
    return [e for e in events if isinstance(e, Chunk)]


def test_generate_and_follow_get_every_chunk_in_order(api: Api) -> None:
    with Client(env={"RSTREAMS_URL": api.url}) as client:  # the address from the environment
        session = client.generate("tell me about rivers", max_tokens=30)
        assert session.status == "queued" and session.model == "demo"
        events = list(client.follow(session.session_id))

        assert isinstance(events[0], Status)
        chunks = chunks_of(events)
        assert [c.index for c in chunks] == list(range(30))
        assert isinstance(events[-1], Done)
        assert events[-1].chunks == 30 and events[-1].finish_reason is not None
        assert "".join(c.text for c in chunks) == client.text(session.session_id)
        info = client.status(session.session_id)
        assert info["status"] == "completed" and info["chunks"] == 30


def test_follow_after_a_cursor_gives_exactly_the_rest(api: Api) -> None:
    with Client(api.url) as client:
        session_id = client.generate("a cursor in the middle", max_tokens=20).session_id
        events = list(client.follow(session_id))
        middle = chunks_of(events)[7]
        rest = list(client.follow(session_id, after=middle.id))
        assert [c.index for c in chunks_of(rest)] == list(range(8, 20))
        assert isinstance(rest[-1], Done)
        assert list(client.follow(session_id, after=rest[-1].id)) == []  # past the end: nothing


def test_follow_resumes_across_an_api_kill_and_restart(make_stack: Any, logs_dir: Path) -> None:
    stack = make_stack()
    stack.worker()
    first = stack.api()
    client = Client(first.url, backoff_max_s=0.5)
    session_id = client.generate("survive a crash", max_tokens=150).session_id
    reconnects: list[RstreamsError] = []
    events: list[Event] = []
    restarter: threading.Thread | None = None

    def restart_on_the_same_port() -> None:
        # Back once the client has found the port closed and is retrying.
        deadline = time.monotonic() + 20  # bounds a hang only
        while not reconnects:
            assert time.monotonic() < deadline, "the client never saw the connection break"
            time.sleep(0.05)
        stack.apis.append(Api(stack.env, logs_dir, name=f"{stack.name}-again", port=first.port))
        stack.apis[-1].start()

    for event in client.follow(session_id, on_reconnect=lambda _n, why: reconnects.append(why)):
        events.append(event)
        if isinstance(event, Chunk) and event.index == 10:
            first.kill()  # SIGKILL: the connection breaks without a goodbye
            restarter = threading.Thread(target=restart_on_the_same_port)
            restarter.start()
    assert restarter is not None
    restarter.join()

    assert reconnects, "the client never saw the connection break"
    assert [c.index for c in chunks_of(events)] == list(range(150))  # nothing lost or repeated
    assert isinstance(events[-1], Done)
    assert "".join(c.text for c in chunks_of(events)) == client.text(session_id)
    client.close()


def test_cancel_ends_the_follow_with_cancelled(api: Api) -> None:
    with Client(api.url) as client:
        session_id = client.generate("stop me", max_tokens=500).session_id
        events: list[Event] = []
        for event in client.follow(session_id):
            events.append(event)
            if isinstance(event, Chunk) and event.index == 4:
                assert client.cancel(session_id) == "cancelled"
        assert isinstance(events[-1], Cancelled)
        assert len(chunks_of(events)) < 500
        assert client.status(session_id)["status"] == "cancelled"
        assert client.cancel(session_id) == "cancelled"  # a second cancel: the final status


def test_errors_carry_status_and_code(api: Api) -> None:
    unknown = nanoid()
    with Client(api.url) as client:
        for call in (client.status, client.text, client.cancel, lambda i: list(client.follow(i))):
            with pytest.raises(RstreamsError) as caught:
                call(unknown)
            assert (caught.value.status, caught.value.code) == (404, "not_found")

        with pytest.raises(RstreamsError) as caught:
            client.generate("hi", model="no-such-model")
        assert (caught.value.status, caught.value.code) == (400, "unknown_model")
        assert "no-such-model" in caught.value.message

        session_id = client.generate("hi", max_tokens=2).session_id
        with pytest.raises(RstreamsError) as caught:
            list(client.follow(session_id, after="not-a-cursor"))
        assert (caught.value.status, caught.value.code) == (400, "bad_cursor")

    with pytest.raises(RstreamsError) as caught, Client(f"http://127.0.0.1:{free_port()}") as down:
        down.status(unknown)
    assert caught.value.status is None and caught.value.code == "unreachable"


@pytest.fixture(scope="module")
def keyed(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An API that needs a key, in front of the session's worker."""
    env = {
        **stack_env,
        "API_KEYS": f"client-test:{hash_key(API_KEY)}",
        "STREAM_TOKEN_SECRET": "client-test-stream-token-secret-0123456789",
    }
    proc = Api(env, logs_dir, name="api-pyclient-keyed").start()
    yield proc
    proc.stop()


def test_the_api_key_comes_from_the_environment_as_a_bearer(keyed: Api) -> None:
    with pytest.raises(RstreamsError) as caught, Client(keyed.url, env={}) as anonymous:
        anonymous.generate("hi", max_tokens=2)
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")

    with Client(keyed.url, env={"RSTREAMS_API_KEY": API_KEY}) as client:
        session = client.generate("hi", max_tokens=5)
        assert session.stream_token  # keyed mode hands out a token for browsers
        events = list(client.follow(session.session_id))
        assert [c.index for c in chunks_of(events)] == list(range(5))
        assert client.status(session.session_id)["status"] == "completed"


def test_reasoning_and_tool_calls_are_typed_events_and_message_assembles_them(api: Api) -> None:
    from rstreams import Reasoning, ToolCall

    weather = {"type": "function", "function": {"name": "get_weather"}}
    with Client(api.url) as client:
        thinking = client.generate("think", model="demo-reasoning", max_tokens=20).session_id
        events = list(client.follow(thinking))
        parts = [e for e in events if isinstance(e, Chunk | Reasoning)]
        assert [p.index for p in parts] == list(range(20))
        assert isinstance(parts[0], Reasoning) and isinstance(parts[-1], Chunk)
        message = client.message(thinking)["message"]
        assert message["reasoning"] == "".join(p.text for p in parts if isinstance(p, Reasoning))
        assert message["content"] == "".join(c.text for c in chunks_of(events))

        calling = client.generate("Oslo?", model="demo-tools", tools=[weather]).session_id
        pieces = [e for e in client.follow(calling) if isinstance(e, ToolCall)]
        first, rest = pieces[0], pieces[1:]
        assert (first.call_index, first.name) == (0, "get_weather") and first.call_id
        assert all(p.call_id is None and p.name is None for p in rest)
        (call,) = client.message(calling)["message"]["tool_calls"]
        assert call["id"] == first.call_id
        assert call["function"]["arguments"] == "".join(p.arguments for p in pieces)
