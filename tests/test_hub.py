"""The per-process follower hub: one Redis reader however many followers, and slow
followers that fall behind catch up on their own without losing anything."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from nanoid import generate as nanoid

from api import hub as hubmod
from rstreams.localredis import LocalRedis
from shared import streams
from shared.jobs import GenerationRequest, Message
from shared.redisconn import connect
from tests import client


@pytest.fixture
def session(r: redis.Redis) -> tuple[str, str]:
    session_id = nanoid()
    request = GenerationRequest(model="demo", messages=(Message("user", "hub"),))
    streams.create_session(r, session_id, request, queue="unused")
    _state, token = streams.acquire_lease(r, session_id, 60_000)
    assert token
    return session_id, token


def append(r: redis.Redis, session_id: str, token: str, start: int, n: int) -> None:
    for index in range(start, start + n):
        streams.append_chunk(
            r, session_id, index, f"{index} ", token=token, maxlen=10_000, ttl_s=60
        )


def events(batches: Iterator[streams.Batch]) -> Iterator[streams.Event]:
    """The events of a follower, one at a time."""
    for batch in batches:
        yield from batch


def test_a_follower_that_falls_behind_catches_up_in_order(
    redis_server: Any, r: redis.Redis, session: tuple[str, str]
) -> None:
    session_id, token = session
    blocking = connect(redis_server.url, socket_timeout_s=3)
    hub = hubmod.Hub(blocking, block_ms=200, max_queue=5)  # overflows after 5 entries
    follower = events(hubmod.follow(hub, r, session_id, None, block_ms=200))
    seen = [next(follower)]  # the queued status
    append(r, session_id, token, 0, 3)
    seen += [next(follower) for _ in range(3)]
    assert hub.followers() == 1
    append(r, session_id, token, 3, 40)  # far more than the queue holds, while we sleep
    time.sleep(0.5)
    streams.append_done(
        r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=43, usage=None
    )
    seen += list(follower)
    assert [e["index"] for e in seen if e["type"] == "chunk"] == list(range(43))
    assert seen[-1]["type"] == "done"
    assert hub.followers() == 0


def test_many_followers_share_one_reader(
    redis_server: Any, r: redis.Redis, session: tuple[str, str]
) -> None:
    session_id, token = session
    blocking = connect(redis_server.url, socket_timeout_s=3)
    hub = hubmod.Hub(blocking, block_ms=200)
    results: list[list[Any]] = [[] for _ in range(50)]

    def follow(i: int) -> None:
        results[i] = list(events(hubmod.follow(hub, r, session_id, None, block_ms=200)))

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for n in range(20):
        append(r, session_id, token, n, 1)
        time.sleep(0.01)
    streams.append_done(
        r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=20, usage=None
    )
    for t in threads:
        t.join(10)
    assert all(res == results[0] for res in results)
    assert [e["index"] for e in results[0] if e["type"] == "chunk"] == list(range(20))


def test_redis_connections_do_not_grow_with_followers(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    stack.worker()
    api = stack.api()
    watcher = redis.Redis.from_url(own_redis.url, decode_responses=True)
    session_id = client.create(api.url, prompt="many watchers", max_tokens=150)["sessionId"]

    def api_connections() -> int:
        return sum(1 for c in watcher.client_list() if c["name"].startswith("rstreams-api"))

    before = api_connections()
    results: list[Any] = [None] * 100

    def follow(i: int) -> None:
        results[i] = client.ws_follow(api.ws_url, session_id)

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # all 100 are following live now
    during = api_connections()
    for t in threads:
        t.join(30)
    # Not one per follower: the hub's reader and the command pool (REDIS_MAX_CONNECTIONS=2).
    assert before >= 1
    assert during <= 3
    texts = {client.chunks_text(res.events) for res in results}
    assert texts == {client.text(api.url, session_id)["text"]}
    assert all(res.close_code == 1000 for res in results)
    watcher.close()
