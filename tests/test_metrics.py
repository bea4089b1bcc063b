"""GET /metrics: the workers' counts through Redis, the API's followers and deliveries."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from api import metrics as api_metrics
from api.apikeys import hash_key
from rstreams.localredis import LocalRedis
from shared import keys, metrics
from shared.redisconn import connect
from tests import client
from tests.procs import Api, Worker
from tests.test_worker_faults import holder, wait_for_chunks

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of `/metrics`, by name and labels."""
    response = requests.get(f"{base_url}/metrics", headers=headers or {}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when it is not there (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(read: Callable[[], Samples], holds: Callable[[Samples], bool]) -> Samples:
    """Scrape until `holds` (the workers write their counts as a session ends)."""
    deadline = time.monotonic() + 20
    while True:
        samples = read()
        if holds(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_a_session_followed_live_counts_its_chunks_both_ways(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    # Given a stack on a Redis of its own (the workers' counts are global: another test's
    # session still generating in a shared Redis would add to them), and the metrics before
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    stack.worker()
    api = stack.api()
    before = scrape(api.url)
    # When a 30-chunk answer is followed live over WebSocket, then replayed over SSE
    session_id = client.create(api.url, prompt="count me", max_tokens=30)["sessionId"]
    ws = client.ws_follow(api.ws_url, session_id)
    assert ws.events[-1]["type"] == "done"
    sse = client.sse_follow(api.url, session_id)
    assert client.chunks_text(sse.events) == client.chunks_text(ws.events)

    def grew(name: str, s: Samples, **labels: str) -> float:
        return value(s, name, **labels) - value(before, name, **labels)

    after = eventually(
        lambda: scrape(api.url),
        lambda s: (
            grew("rstreams_chunks_appended_total", s) >= 30
            and grew("rstreams_generation_seconds_count", s) >= 1
            # A follower hands its counts over when it leaves, just after its close.
            and grew("rstreams_chunks_delivered_total", s, transport="ws") >= 30
            and grew("rstreams_chunks_delivered_total", s, transport="sse") >= 30
        ),
    )
    # Then the workers appended 30 chunks in one generation, and the API delivered 30
    # to each follower
    assert grew("rstreams_chunks_appended_total", after) == 30
    assert grew("rstreams_generation_seconds_count", after) == 1
    assert grew("rstreams_generation_seconds_sum", after) > 0
    assert grew("rstreams_generation_seconds_bucket", after, le="+Inf") == 1
    assert grew("rstreams_chunks_delivered_total", after, transport="ws") == 30
    assert grew("rstreams_chunks_delivered_total", after, transport="sse") == 30
    # And the live follower's batches were timed, the replay's were not
    live_batches = grew("rstreams_delivery_latency_seconds_count", after)
    assert 0 < live_batches <= 32  # the status, 30 chunks and done: at most one batch each
    assert grew("rstreams_delivery_latency_seconds_bucket", after, le="+Inf") == live_batches
    assert value(after, "rstreams_redis_up") == 1
    # And the one session has left the active ones (a reaper pass after it ended)
    assert value(eventually(lambda: scrape(api.url), no_active), "rstreams_active_sessions") == 0
    # While a long one is running, it is the one active session
    long_id = client.create(api.url, prompt="long", max_tokens=5000)["sessionId"]
    one_active = eventually(
        lambda: scrape(api.url), lambda s: value(s, "rstreams_active_sessions") == 1
    )
    assert value(one_active, "rstreams_active_sessions") == 1
    assert requests.delete(f"{api.url}/api/streams/{long_id}", timeout=10).status_code == 202
    assert value(eventually(lambda: scrape(api.url), no_active), "rstreams_active_sessions") == 0


def no_active(s: Samples) -> bool:
    return value(s, "rstreams_active_sessions") == 0


def test_provider_errors_are_counted_by_code(api: Api, worker: Worker) -> None:
    before = scrape(api.url)
    for model in ("fake-401", "fake-error-mid", "fake-error-mid"):
        session_id = client.create(api.url, prompt="fail", model=model)["sessionId"]
        assert client.ws_follow(api.ws_url, session_id).events[-1]["type"] == "error"

    def grew(s: Samples, code: str) -> float:
        name = "rstreams_provider_errors_total"
        return value(s, name, code=code) - value(before, name, code=code)

    after = eventually(
        lambda: scrape(api.url),
        lambda s: grew(s, "provider_auth") >= 1 and grew(s, "provider_error") >= 2,
    )
    assert grew(after, "provider_auth") == 1
    assert grew(after, "provider_error") == 2


def test_followers_are_counted_while_connected_over_all_web_processes(
    make_stack: Any, logs_dir: Path, own_redis: LocalRedis
) -> None:
    # Given an API with two web processes (a scrape reaches either one), on a Redis of its
    # own (the follower counts are global: another test's API would add to them)
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    stack.worker()
    api = Api(stack.env, logs_dir, name=f"{stack.name}-api2")
    api.env["WEB_CONCURRENCY"] = "2"
    stack.apis.append(api.start())
    session_id = client.create(api.url, prompt="long one", max_tokens=2000)["sessionId"]
    wait_for_chunks(api.url, session_id, 1)

    def followers(s: Samples) -> tuple[float, float]:
        return (
            value(s, "rstreams_followers", transport="ws"),
            value(s, "rstreams_followers", transport="sse"),
        )

    assert followers(scrape(api.url)) == (0, 0)
    # When three WebSocket followers and one SSE follower are connected
    sockets = [
        websocket.create_connection(f"{api.ws_url}/api/streams/{session_id}/ws", timeout=10)
        for _ in range(3)
    ]
    for ws in sockets:
        ws.recv()  # the first event: the follower is in
    sse = requests.get(f"{api.url}/api/streams/{session_id}", stream=True, timeout=10)
    assert sse.status_code == 200, sse.text
    lines = client.sse_lines(sse)  # held: dropping the generator would close the response
    assert next(lines) == ": connected"
    # Then every scrape, whichever process answers it, counts all four (once the processes
    # wrote their counts to Redis, which they do as a follower comes)
    eventually(lambda: scrape(api.url), lambda s: followers(s) == (3, 1))
    for _ in range(6):
        assert followers(scrape(api.url)) == (3, 1)
    # And when they leave, the gauge goes back down
    for ws in sockets:
        ws.close(timeout=1)
        ws.shutdown()
    sse.close()
    after = eventually(lambda: scrape(api.url), lambda s: followers(s) == (0, 0))
    assert followers(after) == (0, 0)
    requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)


def test_a_reaper_takeover_is_counted(make_stack: Any, own_redis: LocalRedis) -> None:
    # Given two workers on a Redis of their own (the counts of other tests' reapers in the
    # shared one would blur the exact count), one generating a session
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    workers = [stack.worker(), stack.worker()]
    api = stack.api()
    before = scrape(api.url)
    session_id = client.create(api.url, prompt="survive a crash", max_tokens=100)["sessionId"]
    wait_for_chunks(api.url, session_id, 10)
    # When it is killed and the reaper hands the session to the other
    holder(r, session_id, workers).kill()
    events = client.ws_follow(api.ws_url, session_id).events
    assert events[-1]["type"] == "done"
    # Then /metrics counts one takeover
    name = "rstreams_reaper_takeovers_total"
    after = eventually(lambda: scrape(api.url), lambda s: value(s, name) > value(before, name))
    assert value(after, name) - value(before, name) == 1
    r.close()


def test_with_api_keys_metrics_need_a_key(make_stack: Any) -> None:
    key = "rsk_metrics-test-key-0123456789abcdefghijkl"
    stack = make_stack(
        API_KEYS=f"prometheus:{hash_key(key)}",
        STREAM_TOKEN_SECRET="metrics-test-token-secret-0123456789abcdef",
    )
    api = stack.api()
    refused = requests.get(f"{api.url}/metrics", timeout=10)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    samples = scrape(api.url, headers={"Authorization": f"Bearer {key}"})
    assert value(samples, "rstreams_redis_up") == 1


def _kill_with_children(api: Api) -> None:
    """SIGKILL gunicorn's master and its web processes, as a crashed dyno."""
    assert api.proc is not None
    master = api.proc.pid
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:  # the parent's pid
            children.append(int(stat.parent.name))
    api.kill()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def two_apis(make_stack: Any, own_redis: LocalRedis, **env: str) -> tuple[Api, Api]:
    """Two APIs and a worker on a Redis of their own, as two web dynos behind a router."""
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url, **env)
    stack.worker()
    return stack.api(), stack.api()


def test_two_web_dynos_each_report_the_followers_and_deliveries_of_both(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    # Given two APIs on one Redis, as two web dynos behind a router (a short flush interval
    # makes a dead one's followers drop out sooner)
    a, b = two_apis(make_stack, own_redis, METRICS_FLUSH_S="0.5")

    def both() -> tuple[Samples, Samples]:
        return scrape(a.url), scrape(b.url)

    def delivered(s: Samples) -> tuple[float, float]:
        return (
            value(s, "rstreams_chunks_delivered_total", transport="ws"),
            value(s, "rstreams_chunks_delivered_total", transport="sse"),
        )

    def followers(s: Samples) -> tuple[float, float]:
        return (
            value(s, "rstreams_followers", transport="ws"),
            value(s, "rstreams_followers", transport="sse"),
        )

    assert [delivered(s) for s in both()] == [(0, 0), (0, 0)]
    # When a 30-chunk answer is followed over WebSocket through A, and over WebSocket and
    # SSE through B
    session_id = client.create(a.url, prompt="two dynos", max_tokens=30)["sessionId"]
    assert client.ws_follow(a.ws_url, session_id).events[-1]["type"] == "done"
    assert client.ws_follow(b.ws_url, session_id).events[-1]["type"] == "done"
    assert client.sse_follow(b.url, session_id).events[-1]["type"] == "done"
    # Then a scrape of either counts the deliveries of both
    for api in (a, b):
        after = eventually(lambda api=api: scrape(api.url), lambda s: delivered(s) == (60, 30))
        assert delivered(after) == (60, 30)
        assert value(after, "rstreams_delivery_latency_seconds_count") > 0

    # When two WebSocket followers are connected to A, and one WebSocket and one SSE to B
    long_id = client.create(a.url, prompt="long one", max_tokens=2000)["sessionId"]
    wait_for_chunks(a.url, long_id, 1)
    sockets = [
        websocket.create_connection(f"{api.ws_url}/api/streams/{long_id}/ws", timeout=10)
        for api in (a, a, b)
    ]
    for ws in sockets:
        ws.recv()
    sse = requests.get(f"{b.url}/api/streams/{long_id}", stream=True, timeout=10)
    lines = client.sse_lines(sse)
    assert next(lines) == ": connected"
    # Then a scrape of either counts all four
    for api in (a, b):
        now = eventually(lambda api=api: scrape(api.url), lambda s: followers(s) == (3, 1))
        assert followers(now) == (3, 1)
    before_kill = delivered(scrape(a.url))

    # When B dies without a word (its processes killed)
    _kill_with_children(b)
    sse.close()
    # Then A's scrape drops B's followers once B's count is stale, and keeps the
    # deliveries B had written
    after = eventually(lambda: scrape(a.url), lambda s: followers(s) == (2, 0))
    assert followers(after) == (2, 0)
    assert delivered(after)[0] >= before_kill[0]
    assert delivered(after)[1] >= before_kill[1] >= 30
    for ws in sockets:
        ws.close(timeout=1)
        ws.shutdown()
    requests.delete(f"{a.url}/api/streams/{long_id}", timeout=10)


def test_deliveries_a_failed_flush_could_not_write_are_written_once_by_the_next(
    own_redis: LocalRedis,
) -> None:
    # Given a web process's counts, and a Redis it cannot reach
    process = api_metrics._Process()
    process._field = "host:1"
    process.tally.add_many({metrics.DELIVERED + "ws": 30, metrics.DELIVERY_LATENCY + "sum": 0.5})
    process._r = connect("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    # When a flush fails, and the next reaches Redis
    process.flush()
    process._r = connect(own_redis.url)
    process.flush()
    process.flush()
    # Then the counts are in Redis once
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)
    assert r.hgetall(keys.metrics()) == {"delivered:ws": "30", "delivery_latency_s:sum": "0.5"}
    r.close()


def test_a_web_process_that_exits_cleanly_writes_its_last_counts(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    # Given two APIs on one Redis whose web processes write their counts rarely (a count
    # left by a dead process would stay in scrapes for 3 x 60 + 2 s)
    a, b = two_apis(make_stack, own_redis, METRICS_FLUSH_S="60")
    session_id = client.create(a.url, prompt="long one", max_tokens=2000)["sessionId"]
    # And a WebSocket follower of B that has had some chunks
    ws = websocket.create_connection(f"{b.ws_url}/api/streams/{session_id}/ws", timeout=10)
    chunks = 0
    while chunks < 5:
        chunks += json.loads(ws.recv())["type"] == "chunk"
    eventually(lambda: scrape(a.url), lambda s: value(s, "rstreams_followers", transport="ws") == 1)
    # When B is stopped (SIGTERM) and has exited
    b.terminate()
    assert b.proc is not None
    b.proc.wait(30)
    # Then a scrape of A at once shows B's deliveries, and no follower of B
    after = scrape(a.url)
    assert value(after, "rstreams_followers", transport="ws") == 0
    assert value(after, "rstreams_chunks_delivered_total", transport="ws") >= chunks
    ws.close(timeout=1)
    ws.shutdown()
    requests.delete(f"{a.url}/api/streams/{session_id}", timeout=10)
