"""Many generations in one worker process, their chunks written in batches by one appender."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from nanoid import generate as nanoid

from rstreams.localredis import LocalRedis, free_port
from shared import keys, store
from shared.jobs import GenerationRequest, Message, enqueue, make_celery
from shared.settings import Settings
from tests.conftest import STREAM_TTL_S
from tests.waiting import wait_until
from worker.appender import Appender, Sink, StoreUnavailable
from worker.providers.demo import demo_text


def start_sessions(r: redis.Redis, env: dict[str, str], n: int, chunks: int) -> list[str]:
    """Store `n` demo sessions of `chunks` chunks and enqueue them all at once."""
    settings = Settings.from_env(env)
    ids = [nanoid() for _ in range(n)]
    for session_id in ids:
        request = GenerationRequest(
            model="demo", messages=(Message("user", prompt_of(session_id)),), max_tokens=chunks
        )
        store.create_session(r, session_id, request, queue=settings.worker.queue)
    celery = make_celery(settings)
    for session_id in ids:
        enqueue(celery, session_id, settings.worker.queue)
    return ids


def prompt_of(session_id: str) -> str:
    """Each session's own prompt, so each has its own text."""
    return f"batched {session_id}"


def status(r: redis.Redis, session_id: str) -> str | None:
    """The session's status in its meta."""
    return r.hget(keys.meta(session_id), "status")  # type: ignore[return-value]


def chunk_count(r: redis.Redis, session_id: str) -> int:
    """Chunks written so far."""
    return int(r.hget(keys.meta(session_id), "chunks") or 0)  # type: ignore[arg-type]


def assert_exactly_once_in_order(r: redis.Redis, session_id: str, chunks: int) -> None:
    """The stream holds `running`, chunks 0..chunks-1 once each in order, then `done`."""
    events = [store.decode_event(i, f) for i, f in r.xrange(keys.events(session_id))]
    types = [e["type"] for e in events]
    assert types == ["status", "status"] + ["chunk"] * chunks + ["done"], session_id
    assert [e["index"] for e in events if e["type"] == "chunk"] == list(range(chunks))
    text = "".join(e["text"] for e in events if e["type"] == "chunk")
    assert text == demo_text(prompt_of(session_id), chunks)
    assert events[-1]["chunks"] == chunks


def assert_no_generation_errors(log: str) -> None:
    """Neither the appender nor a generation failed (the broker's own reconnect noise aside)."""
    for line in ("appender failed", "failed in the worker", "giving up"):
        assert line not in log


def test_a_hundred_concurrent_sessions_each_get_every_chunk_once_in_order(
    make_stack: Any, r: redis.Redis
) -> None:
    stack = make_stack(DEMO_TOKENS_PER_S="100", WORKER_CONCURRENCY="100")
    stack.worker()
    ids = start_sessions(r, stack.env, 100, chunks=150)

    wait_until(
        lambda: all(status(r, s) == "completed" for s in ids), "100 sessions to complete", 120
    )
    for session_id in ids:
        assert_exactly_once_in_order(r, session_id, 150)
    assert_no_generation_errors(stack.workers[0].log())


def test_cancelling_during_batched_appends_stops_those_generations_and_nothing_follows(
    make_stack: Any, r: redis.Redis
) -> None:
    stack = make_stack(DEMO_TOKENS_PER_S="100", WORKER_CONCURRENCY="60")
    worker = stack.worker()
    ids = start_sessions(r, stack.env, 60, chunks=3000)  # 30 s each if not stopped
    wait_until(lambda: all(chunk_count(r, s) >= 20 for s in ids), "every session to write", 60)

    cancelled, others = ids[::2], ids[1::2]
    for session_id in cancelled:
        assert store.cancel(r, session_id, ttl_s=STREAM_TTL_S) == (True, "cancelled")
    # Each generation sees the refusal at its next chunk and ends its task.
    wait_until(
        lambda: all(f"session {s} stopped: terminal" in worker.log() for s in cancelled),
        "the cancelled generations to stop",
    )
    for session_id in cancelled:
        last_id, last = r.xrevrange(keys.events(session_id), count=1)[0]
        assert last["t"] == "cancelled"
        events = [store.decode_event(i, f) for i, f in r.xrange(keys.events(session_id))]
        indices = [e["index"] for e in events if e["type"] == "chunk"]
        assert indices == list(range(len(indices)))
        assert events[-1]["id"] == last_id and status(r, session_id) == "cancelled"
    # The others were not held up: they keep going.
    counts = {s: chunk_count(r, s) for s in others}
    wait_until(lambda: all(chunk_count(r, s) > counts[s] for s in others), "the others")
    for session_id in others:
        assert status(r, session_id) == "running"
        store.cancel(r, session_id, ttl_s=STREAM_TTL_S)
    assert_no_generation_errors(worker.log())


def test_a_redis_restart_in_the_middle_of_batches_loses_and_repeats_nothing(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    stack = make_stack(
        REDIS_URL=own_redis.url,
        CELERY_BROKER_URL=own_redis.url,
        DEMO_TOKENS_PER_S="50",
        WORKER_CONCURRENCY="50",
        LEASE_TTL_S="10",  # outlives the outage: no takeover, one writer per session
    )
    worker = stack.worker()
    mine = redis.Redis.from_url(own_redis.url, decode_responses=True)
    ids = start_sessions(mine, stack.env, 50, chunks=300)
    wait_until(lambda: all(chunk_count(mine, s) >= 20 for s in ids), "every session to write", 60)

    own_redis.stop()  # a restart forgets the append script too: the batches must load it again
    wait_until(lambda: "Redis unreachable" in worker.log(), "the worker to hold chunks")
    own_redis.start()

    wait_until(
        lambda: all(status(mine, s) == "completed" for s in ids), "50 sessions to complete", 120
    )
    for session_id in ids:
        assert_exactly_once_in_order(mine, session_id, 300)
    assert "Redis back" in worker.log()
    assert_no_generation_errors(worker.log())
    mine.close()


def test_a_long_outage_holds_at_most_the_buffer_then_gives_up() -> None:
    # Given a sink whose Redis is down (nothing listens on the port), a buffer of 5 chunks
    # and an outage limit of 1 s
    settings = Settings.from_env({"WORKER_BUFFER_CHUNKS": "5", "REDIS_OUTAGE_MAX_S": "1"})
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    sink = Sink(down, Appender(down), nanoid(), "1", 0, settings)
    raised: list[Exception] = []

    def generate() -> None:
        try:
            for i in range(10):
                sink.add(store.Part(store.EventType.CHUNK, f"chunk {i} "))
        except Exception as e:
            raised.append(e)

    # When a generation queues 10 chunks
    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    thread.join(20)  # bounds a hang only
    # Then it held 5 unwritten, waited for Redis instead of queueing a sixth, and was told
    # to give up once Redis had been unreachable for over 1 s
    assert not thread.is_alive(), "the generation still waits for Redis"
    assert [type(e) for e in raised] == [StoreUnavailable]
    assert "over 1.0 s" in str(raised[0])
    assert (sink.index, sink.written) == (5, 0)


def test_a_final_flush_through_a_long_outage_gives_up() -> None:
    settings = Settings.from_env({"REDIS_OUTAGE_MAX_S": "1"})
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    sink = Sink(down, Appender(down), nanoid(), "1", 0, settings)
    for i in range(3):
        sink.add(store.Part(store.EventType.CHUNK, f"chunk {i} "))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        sink.flush()
    assert time.monotonic() - started >= 1  # it did wait out REDIS_OUTAGE_MAX_S first
