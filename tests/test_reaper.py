"""The reaper's pass over many active sessions, on a Redis of the test's own."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from rstreams.localredis import LocalRedis
from shared import keys
from shared.jobs import GenerationRequest, Message
from shared.settings import Settings
from shared.store import create_session, now_ms
from worker.reaper import reap_locked, reap_once

SETTINGS = Settings.from_env({})  # lease 15 s, requeue after 60 s, queue timeout 600 s, 3 attempts
REQUEST = GenerationRequest(model="demo", messages=(Message("user", "reap me"),))


class CountingConnection(redis.Connection):
    """Counts the requests it writes: a pipeline goes out as one."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def rr(own_redis: LocalRedis) -> Iterator[redis.Redis]:
    """A client of a Redis of this test's own, whose requests are counted."""
    client = redis.Redis.from_url(
        own_redis.url, decode_responses=True, connection_class=CountingConnection
    )
    yield client
    client.close()


def store(r: redis.Redis, group: str, count: int, **meta: Any) -> list[str]:
    """`count` sessions created as the API does, then given the meta fields of their state."""
    session_ids = [f"{group:_<12}{n:09d}" for n in range(count)]
    for session_id in session_ids:
        create_session(r, session_id, REQUEST, queue=f"q-{group}")
        if meta:
            r.hset(keys.meta(session_id), mapping=meta)
    return session_ids


def test_a_pass_over_2000_sessions_decides_each_by_the_rules(rr: redis.Redis) -> None:
    now = now_ms()
    ago = {s: now - s * 1000 for s in (5, 20, 61, 100, 601)}  # seconds ago, in ms
    dead = {"status": "running", "attempt": 1, "updated_ms": ago[100], "enqueued_ms": ago[100]}
    # Given sessions in every state the reaper tells apart, 2,000 in the index:
    due = store(rr, "due", 400, created_ms=ago[100], enqueued_ms=ago[61])
    dead_worker = store(rr, "dead", 300, **dead)
    stale = store(rr, "stale", 200, created_ms=ago[601], enqueued_ms=ago[601])
    spent = store(rr, "spent", 50, **{**dead, "attempt": 3})
    ended = store(rr, "ended", 50, status="completed")
    gone = [f"gone________{n:09d}" for n in range(50)]  # meta expired, index entry left
    rr.zadd(keys.active(), dict.fromkeys(gone, now))
    leased = store(rr, "leased", 300, status="running")
    for session_id in leased:
        rr.set(keys.lease(session_id), "1", px=600_000)
    spared = [
        *store(rr, "fresh", 400),
        *store(rr, "due_max", 100, created_ms=ago[100], enqueued_ms=ago[61], requeues=3),
        *leased,
        *store(rr, "recent", 100, **{**dead, "updated_ms": ago[5]}),  # lease key lost
        *store(rr, "handed", 50, **{**dead, "requeues": 1, "enqueued_ms": ago[20]}),
    ]
    assert rr.zcard(keys.active()) == 2000
    spared_before = {sid: rr.hgetall(keys.meta(sid)) for sid in spared}
    rr.config_resetstat()
    CountingConnection.sent = 0
    enqueued: list[tuple[str, str]] = []
    started_ms = now_ms()

    # When one pass runs:
    counts = reap_once(rr, SETTINGS, lambda sid, queue: enqueued.append((sid, queue)))
    requests_sent = CountingConnection.sent

    # Then each session got what the rules say, and nothing else changed:
    assert counts == {"seen": 2000, "requeued": 700, "expired": 200, "gave_up": 50, "dropped": 100}
    assert sorted(enqueued) == sorted(
        [(sid, "q-due") for sid in due] + [(sid, "q-dead") for sid in dead_worker]
    )
    for session_id in due + dead_worker:
        meta = rr.hgetall(keys.meta(session_id))
        assert meta["requeues"] == "1"
        assert int(meta["enqueued_ms"]) >= started_ms
    for group, code in ((stale, "queue_timeout"), (spent, "worker_lost")):
        for session_id in group:
            meta = rr.hgetall(keys.meta(session_id))
            assert meta["status"] == "failed"
            assert json.loads(meta["error"])["code"] == code
    assert {sid: rr.hgetall(keys.meta(sid)) for sid in spared} == spared_before
    assert all(rr.hget(keys.meta(sid), "status") == "completed" for sid in ended)
    assert sorted(rr.zrange(keys.active(), 0, -1)) == sorted(spared + due + dead_worker)

    # Reads cost round trips per page of the index, not per session: one ZSCAN and one
    # pipeline. Writes: 2 per hand-out, the append script and a ZREM per ending (and
    # loading the script once), a ZREM per drop, and a page's count of takeovers.
    pages = int(rr.info("commandstats")["cmdstat_zscan"]["calls"])
    assert pages <= 5
    writes = 2 * counts["requeued"] + 2 * (counts["expired"] + counts["gave_up"]) + 2
    assert requests_sent <= 3 * pages + writes + counts["dropped"]
    # The dead workers' sessions are the takeovers /metrics reports.
    assert rr.hget(keys.metrics(), "reaper_takeovers") == str(len(dead_worker))


def test_a_pass_that_loses_its_lock_stops_and_says_so(
    rr: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    due = store(rr, "due", 1200, enqueued_ms=now_ms() - 61_000)
    lock = rr.lock(keys.reaper_lock(), timeout=6, blocking=False)
    assert lock.acquire(blocking=False)

    def enqueue(session_id: str, queue: str) -> None:
        # As if the lock expired during this page and another worker took it.
        rr.set(keys.reaper_lock(), "another worker", px=6000)

    with caplog.at_level(logging.INFO, logger="worker.reaper"):
        counts = reap_locked(rr, SETTINGS, enqueue, lock)

    assert 0 < counts["seen"] == counts["requeued"] < len(due)  # the first page only
    assert sum(rr.hget(keys.meta(sid), "requeues") == "1" for sid in due) == counts["seen"]
    assert rr.get(keys.reaper_lock()) == "another worker"  # not released from under it
    lines = [r.getMessage() for r in caplog.records if "lock" in r.getMessage()]
    assert len(lines) == 1
    assert "lost its lock: it had expired" in lines[0]
    assert f"with {counts['seen']} sessions looked at; the pass stopped there" in lines[0]
    assert "unreachable" not in caplog.text


def test_a_long_pass_extends_its_lock_page_by_page(
    rr: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    due = store(rr, "due", 1200, enqueued_ms=now_ms() - 61_000)
    lock = rr.lock(keys.reaper_lock(), timeout=6, blocking=False)
    assert lock.acquire(blocking=False)
    ttls_ms: list[int] = []

    def enqueue(session_id: str, queue: str) -> None:
        ttls_ms.append(int(rr.pttl(keys.reaper_lock())))
        rr.pexpire(keys.reaper_lock(), 2000)  # as if most of the lock's time went by

    with caplog.at_level(logging.INFO, logger="worker.reaper"):
        counts = reap_locked(rr, SETTINGS, enqueue, lock)

    assert counts["seen"] == counts["requeued"] == len(due)
    pages = int(rr.info("commandstats")["cmdstat_zscan"]["calls"])
    assert sum(ttl > 2000 for ttl in ttls_ms) == pages >= 3  # the full 6 s again each page
    assert rr.exists(keys.reaper_lock()) == 0  # released at the end
    assert "lost its lock" not in caplog.text
