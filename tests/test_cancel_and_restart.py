"""Stopping a generation, API restarts mid-stream, retention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
import requests

from shared import keys
from tests import client
from tests.conftest import STREAM_TTL_S
from tests.procs import Api, Worker
from tests.waiting import wait_until


def test_cancel_gives_cancelled_and_nothing_after(api: Api, worker: Worker, r: redis.Redis) -> None:
    session_id = client.create(api.url, prompt="stop me", max_tokens=2000)["sessionId"]
    seen = client.ws_follow(api.ws_url, session_id, max_events=10).events
    response = requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
    assert response.status_code == 202
    assert response.json() == {"sessionId": session_id, "status": "cancelled"}

    rest = client.ws_follow(api.ws_url, session_id, after=seen[-1]["id"])
    assert rest.events[-1]["type"] == "cancelled"
    assert rest.close_code == 1000
    # The generation stops at its next chunk (refused: the session is terminal) ...
    wait_until(lambda: f"session {session_id} stopped: terminal" in worker.log(), "the stop")
    # ... and no chunk came after the cancel: it is the last event, the count stopped there.
    events = client.ws_follow(api.ws_url, session_id).events
    cancel_id = rest.events[-1]["id"]
    assert events[-1] == rest.events[-1]
    assert all(e["id"] < cancel_id or e["type"] == "cancelled" for e in events)
    after = client.text(api.url, session_id)
    assert after["status"] == "cancelled"
    assert after["chunks"] == sum(e["type"] == "chunk" for e in events) < 2000
    assert r.xrevrange(keys.events(session_id), count=1)[0][0] == cancel_id
    assert client.info(api.url, session_id)["status"] == "cancelled"
    again = requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_cancel_the_lease_keeper_hears_of_first_is_still_a_stop_not_a_lost_lease(
    make_stack: Any,
) -> None:
    # A chunk every 2 s and a lease renewed every second: the renewal after the cancel
    # finds the session ended before any append is refused.
    stack = make_stack(DEMO_TOKENS_PER_S="0.5", LEASE_TTL_S="3")
    worker, api = stack.worker(), stack.api()
    session_id = client.create(api.url, prompt="slow", max_tokens=50)["sessionId"]
    client.ws_follow(api.ws_url, session_id, max_events=1)
    assert requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10).status_code == 202
    wait_until(lambda: f"session {session_id} stopped:" in worker.log(), "the stop")
    assert f"session {session_id} stopped: terminal" in worker.log()
    assert f"lease of {session_id} lost" not in worker.log()
    assert client.text(api.url, session_id)["status"] == "cancelled"


def test_deleting_a_finished_session_answers_200_with_its_status(api: Api) -> None:
    session_id = client.create(api.url, prompt="quick", max_tokens=3)["sessionId"]
    client.wait_terminal(api.url, session_id)
    response = requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"sessionId": session_id, "status": "completed"}
    assert client.text(api.url, session_id)["chunks"] == 3


def test_retention_ttl_is_set_on_the_terminal_event_only(api: Api, r: redis.Redis) -> None:
    session_id = client.create(api.url, prompt="keep a day", max_tokens=40)["sessionId"]
    client.ws_follow(api.ws_url, session_id, max_events=5)
    assert r.ttl(keys.meta(session_id)) == -1  # running: no expiry yet
    assert r.ttl(keys.events(session_id)) == -1
    client.wait_terminal(api.url, session_id)
    for key in (keys.meta(session_id), keys.events(session_id)):
        assert STREAM_TTL_S - 10 <= r.ttl(key) <= STREAM_TTL_S
    assert not r.exists(keys.lease(session_id))


def test_api_killed_mid_stream_client_resumes_on_a_new_api(
    stack_env: dict[str, str], logs_dir: Path, r: redis.Redis, worker: Worker
) -> None:
    # `worker`: run first (in a random order), nothing else would have started one.
    first_api = Api(stack_env, logs_dir, name="api-killed").start()
    session_id = client.create(first_api.url, prompt="survive a deploy", max_tokens=150)[
        "sessionId"
    ]
    events = client.ws_follow(first_api.ws_url, session_id, max_events=20).events
    first_api.kill()
    assert first_api.proc is not None and first_api.proc.returncode == -9

    # Generation goes on without any API.
    chunks = lambda: int(r.hget(keys.meta(session_id), "chunks") or 0)  # noqa: E731
    wait_until(lambda: chunks() > events[-1]["index"] + 1, "more chunks")
    second_api = Api(stack_env, logs_dir, name="api-new").start()
    try:
        rest = client.ws_follow(second_api.ws_url, session_id, after=events[-1]["id"])
        events += rest.events
        assert rest.close_code == 1000
        assert [e["index"] for e in events if e["type"] == "chunk"] == list(range(150))
        assert events[-1]["type"] == "done"
        assert client.chunks_text(events) == client.text(second_api.url, session_id)["text"]
    finally:
        second_api.stop()
