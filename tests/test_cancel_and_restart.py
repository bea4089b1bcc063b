"""Stopping a generation, API restarts mid-stream, retention."""

from __future__ import annotations

import time
from pathlib import Path

import redis
import requests

from shared import keys
from tests import client
from tests.conftest import STREAM_TTL_S
from tests.procs import Api


def test_cancel_gives_cancelled_within_a_second_and_nothing_after(api: Api, r: redis.Redis) -> None:
    session_id = client.create(api.url, prompt="stop me", max_tokens=500)["sessionId"]
    seen = client.ws_follow(api.ws_url, session_id, max_events=10).events
    started = time.monotonic()
    response = requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
    assert response.status_code == 202
    assert response.json() == {"sessionId": session_id, "status": "cancelled"}

    rest = client.ws_follow(api.ws_url, session_id, after=seen[-1]["id"])
    assert time.monotonic() - started < 1.0
    assert rest.events[-1]["type"] == "cancelled"
    assert rest.close_code == 1000
    chunks_at_cancel = client.text(api.url, session_id)["chunks"]

    time.sleep(0.5)  # the worker would have appended ~25 more chunks by now
    after = client.text(api.url, session_id)
    assert after["status"] == "cancelled"
    assert after["chunks"] == chunks_at_cancel < 500
    assert r.xrevrange(keys.events(session_id), count=1)[0][1]["t"] == "cancelled"
    assert client.info(api.url, session_id)["status"] == "cancelled"
    again = requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


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
    stack_env: dict[str, str], logs_dir: Path
) -> None:
    first_api = Api(stack_env, logs_dir, name="api-killed").start()
    session_id = client.create(first_api.url, prompt="survive a deploy", max_tokens=150)[
        "sessionId"
    ]
    events = client.ws_follow(first_api.ws_url, session_id, max_events=20).events
    first_api.kill()
    assert first_api.proc is not None and first_api.proc.returncode == -9

    time.sleep(0.5)  # generation goes on without any API
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
