"""Worker death, duplicate delivery, graceful shutdown: answers are never lost or garbled."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import redis
from nanoid import generate as nanoid

from shared import keys, store
from shared.jobs import GenerationRequest, Message, enqueue, make_celery
from shared.settings import Settings
from tests import client
from tests.fake_provider import expected_text
from tests.procs import Worker
from worker import generate
from worker.appender import Appender
from worker.leases import LeaseKeeper
from worker.providers import provider_for
from worker.providers.demo import demo_text


def holder(r: redis.Redis, session_id: str, workers: list[Worker]) -> Worker:
    """The worker process that holds the session's lease."""
    pid = int(str(r.hget(keys.meta(session_id), "worker")).rsplit(":", 1)[1])
    return next(w for w in workers if w.proc and w.proc.pid == pid)


def wait_for_chunks(api_url: str, session_id: str, at_least: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while client.info(api_url, session_id)["chunks"] < at_least:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def assert_continuous(events: list[dict[str, Any]], chunks: int) -> None:
    assert [e["index"] for e in events if e["type"] == "chunk"] == list(range(chunks))
    assert events[-1]["type"] == "done"


def test_worker_killed_mid_answer_another_continues_it(make_stack: Any, r: redis.Redis) -> None:
    stack = make_stack()
    workers = [stack.worker(), stack.worker()]
    api = stack.api()
    session_id = client.create(api.url, prompt="survive a crash", max_tokens=150)["sessionId"]
    wait_for_chunks(api.url, session_id, 20)
    victim = holder(r, session_id, workers)
    victim.kill()

    # How soon another worker takes over is a timing claim, not this test's.
    events = client.ws_follow(api.ws_url, session_id).events
    resumed = [e for e in events if e["type"] == "status" and e["status"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["attempt"] == 2
    assert_continuous(events, 150)
    assert client.chunks_text(events) == demo_text("survive a crash", 150)
    assert client.text(api.url, session_id)["text"] == demo_text("survive a crash", 150)


def test_provider_answer_continues_by_prefill_after_a_worker_dies(
    make_stack: Any, r: redis.Redis, fake_provider: Any
) -> None:
    stack = make_stack(PREFILL_MODELS="fake-*")
    workers = [stack.worker(), stack.worker()]
    api = stack.api()
    session_id = client.create(api.url, prompt="long", model="fake-slow", max_tokens=80)[
        "sessionId"
    ]
    wait_for_chunks(api.url, session_id, 10)
    holder(r, session_id, workers).kill()
    events = client.ws_follow(api.ws_url, session_id).events
    assert_continuous(events, 80)
    assert client.chunks_text(events) == expected_text(80)
    continued = fake_provider.requests_for("fake-slow")[-1]["json"]["messages"][-1]
    assert continued["role"] == "assistant" and continued["content"]


def test_without_prefill_the_answer_ends_with_worker_lost_and_keeps_its_text(
    make_stack: Any, r: redis.Redis
) -> None:
    stack = make_stack()  # PREFILL_MODELS empty: fake models may not continue
    workers = [stack.worker(), stack.worker()]
    api = stack.api()
    session_id = client.create(api.url, prompt="no prefill", model="fake-slow", max_tokens=200)[
        "sessionId"
    ]
    wait_for_chunks(api.url, session_id, 10)
    holder(r, session_id, workers).kill()
    events = client.ws_follow(api.ws_url, session_id).events
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "worker_lost"
    chunks = [e for e in events if e["type"] == "chunk"]
    assert len(chunks) >= 10
    assert client.text(api.url, session_id)["text"] == expected_text(len(chunks))


def test_a_duplicate_delivery_stands_down_without_writing(make_stack: Any, r: redis.Redis) -> None:
    stack = make_stack()
    stack.worker()
    stack.worker()
    api = stack.api()
    session_id = client.create(api.url, prompt="only once please", max_tokens=60)["sessionId"]
    wait_for_chunks(api.url, session_id, 5)
    settings = Settings.from_env(stack.env)
    celery = make_celery(settings)
    enqueue(celery, session_id, settings.worker.queue)  # the broker hands it out again
    enqueue(celery, session_id, settings.worker.queue)
    events = client.ws_follow(api.ws_url, session_id).events
    statuses = [e["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running"]
    assert_continuous(events, 60)
    assert client.chunks_text(events) == demo_text("only once please", 60)
    line = f"session {session_id} not generated here: held"
    deadline = time.monotonic() + 20  # bounds a hang only
    while "".join(w.log() for w in stack.workers).count(line) < 2:
        assert time.monotonic() < deadline, "the duplicates did not stand down"
        time.sleep(0.05)
    assert "".join(w.log() for w in stack.workers).count(line) == 2


def test_sigterm_hands_sessions_over_at_once(make_stack: Any, r: redis.Redis) -> None:
    stack = make_stack(LEASE_TTL_S="30")  # far longer than the handover may take
    workers = [stack.worker(), stack.worker()]
    api = stack.api()
    session_id = client.create(api.url, prompt="deploy now", max_tokens=120)["sessionId"]
    wait_for_chunks(api.url, session_id, 15)
    victim = holder(r, session_id, workers)
    assert victim.proc is not None
    sent_at = time.time()
    os.kill(victim.proc.pid, signal.SIGTERM)
    events = client.ws_follow(api.ws_url, session_id, timeout_s=60).events
    victim.proc.wait(30)
    resumed = [e for e in events if e["type"] == "status" and e["status"] == "resumed"]
    assert len(resumed) == 1
    # Taken over before the victim's 30 s lease could have expired: it was handed over.
    resumed_at = int(resumed[0]["id"].split("-")[0]) / 1000
    assert resumed_at < sent_at + 30
    assert_continuous(events, 120)
    assert client.chunks_text(events) == demo_text("deploy now", 120)
    assert "handed over" in victim.log()


def test_queued_sessions_that_never_start_expire_with_an_error(make_stack: Any) -> None:
    api = make_stack().api()  # no worker ever serves this queue
    session_id = client.create(api.url, prompt="anyone?", max_tokens=5)["sessionId"]
    make_stack(QUEUED_TIMEOUT_S="2").worker()  # a worker elsewhere: its reaper ends it
    result = client.ws_follow(api.ws_url, session_id)
    assert [e["type"] for e in result.events] == ["status", "error"]
    assert result.events[-1]["error"]["code"] == "queue_timeout"
    assert client.info(api.url, session_id)["status"] == "failed"


def test_a_stopping_worker_passes_a_new_job_on_without_taking_the_lease(r: redis.Redis) -> None:
    """In the moments before its consumer stops, a worker shutting down may still be
    handed a job (its own hand-over included): it passes it on untouched, so the session
    is resumed once, by a worker that stays."""
    session_id = nanoid()
    request = GenerationRequest(model="demo", messages=(Message("user", "pass it on"),))
    store.create_session(r, session_id, request, queue="unused")
    stopping = threading.Event()
    stopping.set()
    passed_on: list[str] = []
    outcome = generate.run(
        r,
        Settings.from_env({}),
        session_id,
        keeper=LeaseKeeper(r, 30),
        appender=Appender(r),
        provider_for=provider_for,
        stopping=stopping,
        hand_over=passed_on.append,
    )
    assert outcome is generate.Outcome.HANDED_OVER
    assert passed_on == [session_id]
    assert store.read_meta(r, session_id).attempt == 0  # no lease was taken
    assert not r.exists(keys.lease(session_id))
    assert r.xlen(keys.events(session_id)) == 1  # its `queued` status, nothing written since
