"""Following a session over WebSocket and SSE: backlog, live, resume, many followers."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis
import requests
import websocket
from websockets.sync.client import connect as ws_connect

from shared import keys
from tests import client
from tests.procs import Api
from tests.waiting import wait_until
from worker.providers.demo import demo_text


def assert_well_formed(events: list[dict], chunks: int) -> None:
    """Ordered ids, chunk indices 0..n-1 each once, one terminal event at the end."""
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["index"] for e in events if e["type"] == "chunk"] == list(range(chunks))
    assert [e["type"] for e in events].count("done") == 1
    assert events[-1]["type"] == "done"


def test_ws_follower_gets_everything_then_close_1000(api: Api) -> None:
    session_id = client.create(api.url, prompt="follow me", max_tokens=30)["sessionId"]
    result = client.ws_follow(api.ws_url, session_id)
    assert result.close_code == 1000
    assert_well_formed(result.events, 30)
    assert result.events[-1]["chunks"] == 30
    assert result.events[-1]["finishReason"] == "stop"
    assert client.chunks_text(result.events) == demo_text("follow me", 30)
    # After the end, a new follower replays the same events.
    assert client.ws_follow(api.ws_url, session_id).events == result.events


@pytest.mark.parametrize("cut", [1, 2, 7, 20])
def test_ws_resume_from_cursor_has_no_gap_and_no_duplicate(api: Api, cut: int) -> None:
    session_id = client.create(api.url, prompt="resume me", max_tokens=40)["sessionId"]
    first = client.ws_follow(api.ws_url, session_id, max_events=cut).events
    rest = client.ws_follow(api.ws_url, session_id, after=first[-1]["id"])
    assert rest.close_code == 1000
    events = first + rest.events
    assert_well_formed(events, 40)
    assert client.chunks_text(events) == client.text(api.url, session_id)["text"]


def test_ws_many_drops_and_reconnects_rebuild_the_text(api: Api) -> None:
    session_id = client.create(api.url, prompt="flaky network", max_tokens=60)["sessionId"]
    events: list[dict] = []
    while not events or events[-1]["type"] != "done":
        after = events[-1]["id"] if events else None
        events += client.ws_follow(api.ws_url, session_id, after=after, max_events=5).events
    assert_well_formed(events, 60)
    assert client.chunks_text(events) == client.text(api.url, session_id)["text"]


@pytest.mark.parametrize("compression", ["deflate", None])
def test_ws_with_and_without_permessage_deflate(api: Api, compression: str | None) -> None:
    # Browsers offer permessage-deflate; frames are then compressed per connection.
    session_id = client.create(api.url, prompt="compress me", max_tokens=300)["sessionId"]
    url = f"{api.ws_url}/api/streams/{session_id}/ws"
    events = []
    with ws_connect(url, compression=compression, max_size=None) as ws:
        offered = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert ("permessage-deflate" in offered) == (compression is not None)
        for frame in ws:
            assert isinstance(frame, str)  # text frames
            events.append(json.loads(frame))
    assert_well_formed(events, 300)
    assert client.chunks_text(events) == demo_text("compress me", 300)


def test_sse_follower_gets_everything_with_ids_and_types(api: Api) -> None:
    session_id = client.create(api.url, prompt="sse please", max_tokens=25)["sessionId"]
    result = client.sse_follow(api.url, session_id)
    assert_well_formed(result.events, 25)
    assert result.ids == [e["id"] for e in result.events]
    assert result.types == [e["type"] for e in result.events]
    assert client.chunks_text(result.events) == demo_text("sse please", 25)


@pytest.mark.parametrize("how", ["last_event_id", "after"])
def test_sse_resume_from_cursor_has_no_gap_and_no_duplicate(api: Api, how: str) -> None:
    session_id = client.create(api.url, prompt="sse resume", max_tokens=40)["sessionId"]
    first = client.sse_follow(api.url, session_id, max_events=9)
    cursor = first.ids[-1]
    rest = client.sse_follow(api.url, session_id, **{how: cursor})
    events = first.events + rest.events
    assert_well_formed(events, 40)
    assert client.chunks_text(events) == client.text(api.url, session_id)["text"]


def test_sse_last_event_id_wins_over_after(api: Api) -> None:
    session_id = client.create(api.url, prompt="both cursors", max_tokens=10)["sessionId"]
    full = client.sse_follow(api.url, session_id)
    rest = client.sse_follow(api.url, session_id, last_event_id=full.ids[5], after=full.ids[1])
    assert rest.events == full.events[6:]


def test_sse_sends_keepalive_pings_while_a_session_waits(make_stack: Any) -> None:
    api = make_stack().api()  # nobody serves its queue: the session stays queued
    session_id = client.create(api.url, prompt="pings")["sessionId"]
    comments: list[str] = []
    deadline = time.monotonic() + 3.5
    with requests.get(f"{api.url}/api/streams/{session_id}", stream=True, timeout=10) as response:
        for line in client.sse_lines(response):
            if line.startswith(":"):
                comments.append(line)
            if time.monotonic() > deadline:
                break
    assert comments[0] == ": connected"
    # SSE_PING_S is 1 in the tests' stack: a ping every second while nothing else is sent.
    assert comments.count(": ping") >= 2
    requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)


def test_three_followers_get_identical_events(api: Api) -> None:
    session_id = client.create(api.url, prompt="share it", max_tokens=50)["sessionId"]
    results: list[list[dict]] = [[], [], []]

    def ws(i: int) -> None:
        results[i] = client.ws_follow(api.ws_url, session_id).events

    def sse(i: int) -> None:
        results[i] = client.sse_follow(api.url, session_id).events

    threads = [threading.Thread(target=f, args=(i,)) for i, f in enumerate((ws, ws, sse))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results[0] == results[1] == results[2]
    assert_well_formed(results[0], 50)


def test_late_second_device_gets_backlog_then_live(api: Api) -> None:
    session_id = client.create(api.url, prompt="second device", max_tokens=80)["sessionId"]
    client.ws_follow(api.ws_url, session_id, max_events=20)  # the first device saw some
    second = client.ws_follow(api.ws_url, session_id)
    assert_well_formed(second.events, 80)
    assert second.events[0]["status"] == "queued"


def test_ws_unknown_session_gets_not_found_frame_and_4404(api: Api) -> None:
    result = client.ws_follow(api.ws_url, "Z" * 21)
    assert result.close_code == 4404
    assert [e["type"] for e in result.events] == ["error"]
    assert result.events[0]["error"]["code"] == "not_found"
    assert "id" not in result.events[0]
    garbage = client.ws_follow(api.ws_url, "not-an-id")
    assert garbage.close_code == 4404


@pytest.mark.parametrize("cursor", ["abc", "1-", "-1", "1-2-3", "99999999999999999999999-0", "1.5"])
def test_bad_cursors_are_refused(api: Api, cursor: str) -> None:
    session_id = client.create(api.url, prompt="cursor", max_tokens=2)["sessionId"]
    ws = client.ws_follow(api.ws_url, session_id, after=cursor)
    assert ws.close_code == 4400
    assert ws.events[0]["error"]["code"] == "bad_cursor"
    sse = requests.get(f"{api.url}/api/streams/{session_id}", params={"after": cursor})
    assert sse.status_code == 400 and sse.json()["error"]["code"] == "bad_cursor"
    sse = requests.get(f"{api.url}/api/streams/{session_id}", headers={"Last-Event-ID": cursor})
    assert sse.status_code == 400 and sse.json()["error"]["code"] == "bad_cursor"


def test_well_formed_cursor_between_entries_means_after_that_position(api: Api) -> None:
    session_id = client.create(api.url, prompt="between", max_tokens=10)["sessionId"]
    full = client.ws_follow(api.ws_url, session_id).events
    ms, seq = map(int, full[4]["id"].split("-"))
    between = f"{ms}-{seq + 1}" if full[5]["id"] != f"{ms}-{seq + 1}" else full[4]["id"]
    rest = client.ws_follow(api.ws_url, session_id, after=between).events
    assert rest == full[5:]
    assert client.ws_follow(api.ws_url, session_id, after="0-0").events == full
    end = client.ws_follow(api.ws_url, session_id, after=full[-1]["id"])
    assert end.events == [] and end.close_code == 1000
    huge = f"{2**64 - 1}-{2**64 - 1}"
    assert client.ws_follow(api.ws_url, session_id, after=huge).close_code == 1000


# gunicorn's threaded worker, the other the API supports (api/gunicorn_conf.py).
THREADS = {"GUNICORN_CMD_ARGS": "--worker-class api.gunicorn_worker.ThreadWorker --threads 16"}


def test_the_threaded_web_worker_serves_websocket_followers_too(make_stack: Any) -> None:
    stack = make_stack(**THREADS)
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="threads", max_tokens=30)["sessionId"]
    result = client.ws_follow(api.ws_url, session_id)
    assert result.close_code == 1000
    assert_well_formed(result.events, 30)


@pytest.mark.parametrize("web_worker", ["gevent", "threads"])
@pytest.mark.parametrize("leaves", ["close frame", "connection dropped"])
def test_a_websocket_follower_whose_client_leaves_gives_its_place_up_at_once(
    make_stack: Any, r: redis.Redis, leaves: str, web_worker: str
) -> None:
    # A follower waits for live events up to XREAD_BLOCK_MS at a time; a client that
    # leaves meanwhile must not hold its follower place (and the limits) that long.
    threads = THREADS if web_worker == "threads" else {}
    api = make_stack(XREAD_BLOCK_MS="30000", FOLLOWER_LEASE_S="120", **threads).api()
    session_id = client.create(api.url, prompt="left", max_tokens=5)["sessionId"]  # queued
    ws = websocket.create_connection(f"{api.ws_url}/api/streams/{session_id}/ws", timeout=10)
    assert json.loads(ws.recv())["type"] == "status"
    wait_until(lambda: r.zcard(keys.followers(session_id)) == 1, "the follower holds a place")
    left = time.monotonic()
    if leaves == "close frame":
        ws.close()
    else:
        ws.sock.close()
    wait_until(lambda: r.zcard(keys.followers(session_id)) == 0, "the place is given up", 10)
    assert time.monotonic() - left < 10  # not the 30 s wait
