"""`start_session` on a real Redis, without Flask or Celery: each step's undo."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from nanoid import generate as nanoid

from api.presentation import iso_ms
from api.sessions import Caller, start_session
from shared import keys, store
from shared.errors import QueueUnavailable, TooManyRequests
from shared.jobs import GenerationRequest, Message, make_celery
from shared.settings import Settings

SETTINGS = Settings.from_env({"MAX_RUNNING_PER_CALLER": "1"})
REQUEST = GenerationRequest(model="demo", messages=(Message("user", "hello"),))


def _refuse(session_id: str) -> None:
    raise ConnectionError("broker down")


def start(r: redis.Redis, caller: Caller, enqueue: Any, key: str, session_id: str = "") -> Any:
    """`start_session` of the test request with an Idempotency-Key (a fresh id by default)."""
    return start_session(
        r,
        SETTINGS,
        REQUEST,
        session_id=session_id or nanoid(),
        caller=caller,
        enqueue=enqueue,
        idempotency_key=key,
    )


def test_a_started_session_is_queued_and_enqueued_once(r: redis.Redis) -> None:
    caller = Caller("", f"addr:{nanoid()}")
    sent: list[str] = []
    started = start_session(
        r, SETTINGS, REQUEST, session_id=nanoid(), caller=caller, enqueue=sent.append
    )
    assert sent == [started.session_id]
    assert (started.status, started.model, started.is_replay) == ("queued", "demo", False)
    assert iso_ms(store.read_meta(r, started.session_id).created_ms) == started.created_at


def test_when_enqueue_fails_the_session_ends_with_an_error_and_the_key_is_free(
    r: redis.Redis,
) -> None:
    caller = Caller("", f"addr:{nanoid()}")
    key, session_id = nanoid(), nanoid()
    with pytest.raises(QueueUnavailable):
        start(r, caller, _refuse, key, session_id)
    meta = store.read_meta(r, session_id)
    assert meta.status == "failed"
    assert meta.error is not None and meta.error["code"] == "enqueue_failed"
    assert not r.exists(keys.idempotency(key, "", caller.idempotency_client))

    # A retry with the same key starts a new session instead of replaying the failed one.
    sent: list[str] = []
    retry = start(r, caller, sent.append, key)
    assert not retry.is_replay and sent == [retry.session_id] != [session_id]


def test_a_retry_replays_the_first_session_even_past_the_limits(r: redis.Redis) -> None:
    caller = Caller("", f"addr:{nanoid()}")
    key = nanoid()
    sent: list[str] = []
    first = start(r, caller, sent.append, key)
    retry = start(r, caller, sent.append, key)
    assert retry.is_replay and retry.session_id == first.session_id
    assert sent == [first.session_id]

    # A new request is refused by MAX_RUNNING_PER_CALLER=1, and gives its key back.
    other_key, refused_id = nanoid(), nanoid()
    with pytest.raises(TooManyRequests):
        start(r, caller, sent.append, other_key, refused_id)
    assert not r.exists(keys.idempotency(other_key, "", caller.idempotency_client))
    assert not r.exists(keys.meta(refused_id))
    assert sent == [first.session_id]


def test_request_threads_share_one_celery_result_backend() -> None:
    """Celery builds a result backend per thread unless told it is thread-safe, scanning
    every installed package's entry points each time (about 7 ms of CPU, `python -m
    bench.creates`): in the gevent API, a thread is a request, so every session created
    paid it."""
    app = make_celery(SETTINGS)
    backends: list[object] = []
    for _ in range(3):  # one after another, as requests come
        thread = threading.Thread(target=lambda: backends.append(app.backend))
        thread.start()
        thread.join()
    assert len(backends) == 3 and all(b is backends[0] for b in backends)
