"""The whole product on a three-master Redis Cluster: API, worker and followers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import websocket
from celery import Celery
from redis.cluster import RedisCluster

from api import sessions
from api.apikeys import hash_key
from api.metrics import GAUGE_SPACING_S, TRANSPORTS
from shared import keys
from shared.jobs import GenerationRequest, Message, enqueue, make_celery
from shared.settings import Settings
from tests import client
from tests.localcluster import LocalCluster, cluster_stack
from tests.procs import Api
from tests.test_follow import assert_well_formed
from tests.test_hostile_followers import assert_a_future_cursor_delays_no_one_else
from tests.test_metrics import Samples, eventually, scrape, value
from worker.providers.demo import demo_text

pytestmark = pytest.mark.slow


@dataclass
class ClusterStack:
    """A cluster, its broker, one worker and one API, all in cluster mode."""

    cluster: LocalCluster
    rc: RedisCluster
    api: Api
    settings: Settings
    celery: Celery


@pytest.fixture(scope="module")
def stack(logs_dir: Path) -> Iterator[ClusterStack]:
    """Everything started once for this module, stopped after it."""
    with cluster_stack(logs_dir, "cluster", SSE_PING_S="1", LEASE_TTL_S="5") as (cluster, api):
        rc = RedisCluster.from_url(cluster.url, decode_responses=True)
        settings = Settings.from_env(api.env)
        try:
            yield ClusterStack(cluster, rc, api, settings, make_celery(settings, "cluster-tests"))
        finally:
            rc.close()


def node_of(rc: RedisCluster, session_id: str) -> str:
    """The master that holds a session's keys."""
    return str(rc.get_node_from_key(keys.meta(session_id)).name)


def ids_on_every_master(rc: RedisCluster, prefix: str, per_master: int) -> list[str]:
    """`per_master` session ids starting with `prefix` for each master, chosen by the
    slot of their hash tag (`rs:{<id>}`): the same ids every run, the masters in turn."""
    masters = sorted(n.name for n in rc.get_primaries())
    chosen: dict[str, list[str]] = {name: [] for name in masters}
    n = 0
    while any(len(ids) < per_master for ids in chosen.values()):
        session_id = f"{prefix}{n:0{21 - len(prefix)}d}"  # the shape of a session id
        n += 1
        assert keys.is_session_id(session_id)
        ids = chosen[node_of(rc, session_id)]
        if len(ids) < per_master:
            ids.append(session_id)
    return [sid for group in zip(*chosen.values(), strict=True) for sid in group]


def start(
    stack: ClusterStack, session_id: str, prompt: str, max_tokens: int, owner: str = ""
) -> None:
    """Start a demo generation under a chosen id, as `POST /api/streams/generate` does."""
    generation = GenerationRequest(
        model="demo", messages=(Message("user", prompt),), max_tokens=max_tokens
    )
    sessions.start_session(
        stack.rc,
        stack.settings,
        generation,
        session_id=session_id,
        caller=sessions.Caller(owner, f"key:{owner}" if owner else "addr:127.0.0.1"),
        enqueue=lambda sid: enqueue(stack.celery, sid, stack.settings.worker.queue),
    )


def follow_all(ws_url: str, session_ids: list[str]) -> dict[str, client.WsResult]:
    """Follow every session over WebSocket at once, one thread each."""
    results: dict[str, client.WsResult] = {}

    def run(i: int, session_id: str) -> None:
        results[f"{i}:{session_id}"] = client.ws_follow(ws_url, session_id)

    threads = [threading.Thread(target=run, args=(i, sid)) for i, sid in enumerate(session_ids)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def settled(api_url: str) -> Samples:
    """A scrape with no session active, no follower connected, and the delivery counts the
    same as in a scrape more than `GAUGE_SPACING_S` earlier."""
    deadline = time.monotonic() + 20

    def delivered(s: Samples) -> list[float]:
        return [value(s, "rstreams_chunks_delivered_total", transport=t) for t in TRANSPORTS]

    last = scrape(api_url)
    while True:
        time.sleep(GAUGE_SPACING_S + 0.1)
        now = scrape(api_url)
        idle = value(now, "rstreams_active_sessions") == 0 and not any(
            value(now, "rstreams_followers", transport=t) for t in TRANSPORTS
        )
        if (idle and delivered(now) == delivered(last)) or time.monotonic() > deadline:
            return now
        last = now


def test_sessions_on_every_master_stream_live_to_websocket_followers(
    stack: ClusterStack,
) -> None:
    # Ids chosen by slot: four sessions on each master. The stack is the module's: wait
    # until what earlier tests left is done and counted, so that the counts below are ours
    # (a follower's deliveries reach Redis up to `GAUGE_SPACING_S` after it leaves).
    before = settled(stack.api.url)
    ids = ids_on_every_master(stack.rc, "every-master-", 4)
    prompts = [f"cluster prompt {n}" for n in range(len(ids))]
    for session_id, prompt in zip(ids, prompts, strict=True):
        start(stack, session_id, prompt, 30)
    assert {node_of(stack.rc, sid) for sid in ids} == {n.name for n in stack.rc.get_primaries()}
    results = follow_all(stack.api.ws_url, ids)
    assert len(results) == len(ids)
    for i, (prompt, session_id) in enumerate(zip(prompts, ids, strict=True)):
        result = results[f"{i}:{session_id}"]
        assert result.close_code == 1000
        assert_well_formed(result.events, 30)
        assert client.chunks_text(result.events) == demo_text(prompt, 30)
        assert client.text(stack.api.url, session_id)["text"] == demo_text(prompt, 30)

    # And /metrics counts them: the workers' hash is one key on one node
    def grew(s: Samples, name: str, **labels: str) -> float:
        return value(s, name, **labels) - value(before, name, **labels)

    appended, delivered = "rstreams_chunks_appended_total", "rstreams_chunks_delivered_total"
    after = eventually(
        lambda: scrape(stack.api.url),
        lambda s: (
            grew(s, appended) >= 30 * len(ids)
            and grew(s, delivered, transport="ws") >= 30 * len(ids)
        ),
    )
    assert grew(after, appended) == 30 * len(ids)
    assert grew(after, delivered, transport="ws") == 30 * len(ids)


def test_live_chunks_arrive_as_they_are_written(stack: ClusterStack) -> None:
    # 100 chunks at 50/s: two seconds. A follower that sharded pub/sub does not notify
    # gets nothing live: only the catch-up after the session has ended. How fast chunks
    # arrive is the benchmark's business (docs/BENCHMARKS.md), not this test's.
    session_id = client.create(stack.api.url, prompt="live on a cluster", max_tokens=100)[
        "sessionId"
    ]
    ws = websocket.create_connection(f"{stack.api.ws_url}/api/streams/{session_id}/ws", timeout=30)
    events: list[dict] = []
    try:
        while len([e for e in events if e["type"] == "chunk"]) < 5:
            events.append(json.loads(ws.recv()))
        # Five chunks in, the session is still being written: they came live.
        live = client.info(stack.api.url, session_id)
        while events[-1]["type"] not in client.TERMINAL:
            events.append(json.loads(ws.recv()))
    finally:
        ws.close()
    assert live["status"] == "running", live
    assert live["chunks"] < 100, live
    assert_well_formed(events, 100)  # in order, each index once, then done


@pytest.mark.parametrize("cut", [2, 15])
def test_resume_from_a_cursor_gives_exactly_the_rest(stack: ClusterStack, cut: int) -> None:
    session_id = client.create(stack.api.url, prompt="resume on a cluster", max_tokens=40)[
        "sessionId"
    ]
    first = client.ws_follow(stack.api.ws_url, session_id, max_events=cut).events
    rest = client.ws_follow(stack.api.ws_url, session_id, after=first[-1]["id"])
    assert rest.close_code == 1000
    assert_well_formed(first + rest.events, 40)
    sse = client.sse_follow(stack.api.url, session_id, last_event_id=first[-1]["id"])
    assert sse.events == rest.events
    assert sse.ids == [e["id"] for e in rest.events]
    assert client.chunks_text(first + rest.events) == client.text(stack.api.url, session_id)["text"]


def test_a_cursor_in_the_future_delays_no_one_else(stack: ClusterStack) -> None:
    assert_a_future_cursor_delays_no_one_else(stack.api, stack.rc, "ws")


def test_sse_follows_a_live_session(stack: ClusterStack) -> None:
    session_id = client.create(stack.api.url, prompt="sse on a cluster", max_tokens=25)["sessionId"]
    result = client.sse_follow(stack.api.url, session_id)
    assert_well_formed(result.events, 25)
    assert result.types[-1] == "done"
    assert client.chunks_text(result.events) == demo_text("sse on a cluster", 25)


def test_delete_cancels_a_live_session(stack: ClusterStack) -> None:
    session_id = client.create(stack.api.url, prompt="stop me", max_tokens=400)["sessionId"]
    first = client.ws_follow(stack.api.ws_url, session_id, max_events=3).events
    response = requests.delete(f"{stack.api.url}/api/streams/{session_id}", timeout=10)
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    rest = client.ws_follow(stack.api.ws_url, session_id, after=first[-1]["id"])
    assert rest.close_code == 1000
    assert rest.events[-1]["type"] == "cancelled"
    final = client.info(stack.api.url, session_id)
    assert final["status"] == "cancelled"
    assert final["chunks"] < 400


def api_connections(stack: ClusterStack) -> dict[str, int]:
    """How many connections the API holds on each master (named `rstreams-api*`)."""
    counts = {}
    for node in stack.rc.get_primaries():
        clients = stack.rc.get_redis_connection(node).client_list()
        counts[node.name] = sum(1 for c in clients if c["name"].startswith("rstreams-api"))
    return counts


def test_thirty_followers_hold_few_connections_per_node(stack: ClusterStack) -> None:
    ids = ids_on_every_master(stack.rc, "many-followers-", 2)
    prompts = [f"many followers {i}" for i in range(len(ids))]
    for session_id, prompt in zip(ids, prompts, strict=True):
        start(stack, session_id, prompt, 120)
    followed = [sid for sid in ids for _ in range(5)]  # 30 followers, 5 per session
    peak: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for name, count in api_connections(stack).items():
                peak[name] = max(peak.get(name, 0), count)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = follow_all(stack.api.ws_url, followed)
    finally:
        done.set()
        watcher.join()
    print(f"API connections per master, peak with 30 followers: {peak}")
    assert len(results) == 30
    for key, result in results.items():
        session_id = key.split(":", 1)[1]
        prompt = prompts[ids.index(session_id)]
        assert result.close_code == 1000
        assert client.chunks_text(result.events) == demo_text(prompt, 120)
    # Per master: the hub's pub/sub and reads (2) plus the command pool (2), at most.
    assert peak and all(count <= 4 for count in peak.values()), peak


def test_readyz_idempotency_and_bad_input_on_a_cluster(stack: ClusterStack) -> None:
    ready = requests.get(f"{stack.api.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    headers = {"Idempotency-Key": "cluster-retry-1"}
    first = client.create(stack.api.url, headers=headers, prompt="once", max_tokens=5)
    again = client.create(stack.api.url, headers=headers, prompt="once", max_tokens=5)
    assert again["sessionId"] == first["sessionId"]
    unknown = "A" * 21
    assert requests.get(f"{stack.api.url}/api/streams/{unknown}", timeout=10).status_code == 404
    assert requests.delete(f"{stack.api.url}/api/streams/{unknown}", timeout=10).status_code == 404
    result = client.ws_follow(stack.api.ws_url, unknown)
    assert result.close_code == 4404
    bad = requests.get(f"{stack.api.url}/api/streams/{first['sessionId']}?after=x", timeout=10)
    assert bad.status_code == 400


def test_listing_reads_sessions_across_nodes_newest_first(
    stack: ClusterStack, logs_dir: Path
) -> None:
    key = "rsk_cluster-test-key-0123456789abcdefghijkl"
    env = {
        **stack.api.env,
        "API_KEYS": f"ops:{hash_key(key)}",
        "STREAM_TOKEN_SECRET": "cluster-test-token-secret-0123456789abcdef",
    }
    api = Api(env, logs_dir, name="cluster-api-keyed").start()
    try:
        auth = {"Authorization": f"Bearer {key}"}
        # Ids chosen by slot, three on each master; started in the order of their ids, so
        # two started in the same millisecond are still listed newest first.
        made = sorted(ids_on_every_master(stack.rc, "listed-", 3))
        for n, session_id in enumerate(made):
            start(stack, session_id, f"listed {n}", 2, owner="ops")
        listed = requests.get(
            f"{api.url}/api/streams", params={"limit": len(made)}, headers=auth, timeout=10
        )
        assert listed.status_code == 200, listed.text
        assert [s["sessionId"] for s in listed.json()["sessions"]] == made[::-1]
    finally:
        api.stop(timeout_s=10)


def test_a_chat_resumes_and_ends_on_a_cluster(stack: ClusterStack) -> None:
    """The chat record (its caller's slot) and the session (its own) on any nodes."""
    chat_id = "cluster-chat"
    body = {
        "id": chat_id,
        "trigger": "submit-message",
        "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
        "max_tokens": 60,
    }
    url = f"{stack.api.url}/api/chat"
    with requests.post(url, json=body, stream=True, timeout=30) as response:
        assert response.status_code == 200
        lines = (
            line[len("data: ") :]
            for line in response.iter_lines(chunk_size=None, decode_unicode=True)
            if line.startswith("data: ")
        )
        first = [next(lines) for _ in range(4)]
        with requests.get(f"{url}/{chat_id}/stream", stream=True, timeout=30) as replay:
            assert replay.headers["X-Session-Id"] == response.headers["X-Session-Id"]
            replayed = [
                line for line in replay.iter_lines(decode_unicode=True) if line.startswith("data: ")
            ]
        original = [*first, *lines]
    assert [line[len("data: ") :] for line in replayed] == original
    assert original[-1] == "[DONE]" and '"finish"' in original[-2]
    assert requests.get(f"{url}/{chat_id}/stream", timeout=10).status_code == 204
    assert requests.delete(f"{url}/{chat_id}/stream", timeout=10).status_code == 404
