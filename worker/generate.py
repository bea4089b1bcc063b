"""Generate one session: take its lease, stream from the provider, append every chunk."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

import redis

from shared import store
from shared.backoff import compute_backoff
from shared.errors import AppendRefused, ProviderError
from shared.jobs import GenerationRequest
from shared.settings import Settings
from worker.appender import BACKOFF_MAX_S, BACKOFF_START_S, Appender, Sink, StoreUnavailable
from worker.leases import Held, LeaseKeeper
from worker.providers import is_demo_model
from worker.providers.base import (
    Delta,
    Finished,
    Provider,
    ReasoningDelta,
    Resume,
    TextDelta,
)

log = logging.getLogger(__name__)

ProviderFor = Callable[[str, Settings], Provider]
T = TypeVar("T")


class Outcome(StrEnum):
    """What one run of a session came to (the task's result)."""

    COMPLETED = "completed"
    FAILED = "failed"  # an error event ended the session
    HANDED_OVER = "handed_over"  # the worker is stopping; another one continues it
    STOPPED = "stopped"  # the lease was lost mid-generation
    # Not generated here (the lease could not be taken), or an append was refused:
    HELD = "held"
    TERMINAL = "terminal"
    NOT_FOUND = "not_found"
    LEASE_LOST = "lease_lost"
    GAP = "gap"
    STREAM_TOO_LONG = "stream_too_long"


def patiently(fn: Callable[[], T], session_id: str, settings: Settings) -> T:
    """Call `fn`, retrying with capped backoff while Redis is unreachable (a restart)."""
    started = time.monotonic()
    failures = 0
    while True:
        try:
            return fn()
        except redis.ConnectionError as e:
            if time.monotonic() - started > settings.redis.outage_max_s:
                raise StoreUnavailable(f"Redis unreachable: {e}") from e
            log.warning("session %s: Redis unreachable (%s); retrying", session_id, e)
            time.sleep(compute_backoff(failures, start_s=BACKOFF_START_S, max_s=BACKOFF_MAX_S))
            failures += 1


def _why_not_resumable(model: str, answer: store.Answer, settings: Settings) -> str:
    """Why another attempt cannot continue `answer` ("" when it can)."""
    if is_demo_model(model):
        return ""  # deterministic: it goes on from any event
    if not settings.limits.may_prefill(model):
        return "this model cannot continue it"
    if answer.tool_calls:
        # A prefill continues text, never a call: the calls so far may be incomplete.
        return "it was calling tools, which cannot be continued"
    return ""


def run(
    r: redis.Redis,
    settings: Settings,
    session_id: str,
    *,
    keeper: LeaseKeeper,
    appender: Appender,
    provider_for: ProviderFor,
    stopping: threading.Event | None = None,
    hand_over: Callable[[str], None] | None = None,
) -> Outcome:
    """Generate `session_id` to its end; returns what happened.

    Stands down without writing when another worker holds the lease or the session is
    already terminal or gone. Stops at the next chunk once the session is cancelled or the
    lease is lost: the atomic append refuses the write, and leaving the `with` block closes
    the provider's stream, which closes the upstream HTTP response. When `stopping` is set
    (the worker is shutting down), writes what it has, gives the lease up and calls
    `hand_over(session_id)` so another worker continues at once.
    """
    if stopping is not None and stopping.is_set() and hand_over is not None:
        # A stopping worker's consumer can still take a job in the moments before it stops
        # (its own hand-over among them): pass it on untouched, so the session is resumed
        # once, by a worker that stays, not once here and again at the next chunk.
        log.info("session %s passed on: this worker is stopping", session_id)
        hand_over(session_id)
        return Outcome.HANDED_OVER
    state, held = patiently(lambda: keeper.acquire(session_id), session_id, settings)
    if held is None:
        log.info("session %s not generated here: %s", session_id, state)
        return Outcome(state)
    stopping = stopping or threading.Event()
    started = time.monotonic()
    outcome: Outcome | None = None  # None: raised
    try:
        outcome = _generate(
            r,
            settings,
            session_id,
            held,
            appender,
            provider_for,
            stopping,
            can_hand_over=bool(hand_over),
        )
    finally:
        keeper.release(held)
        if outcome in (Outcome.COMPLETED, Outcome.FAILED):
            appender.tally.generation(time.monotonic() - started)
        # One small write per attempt: this session's last chunk counts, its time, its error.
        appender.tally.flush(r)
    if outcome is Outcome.HANDED_OVER and hand_over is not None:
        hand_over(session_id)  # after the release, or the next worker finds the lease held
    return outcome


def _generate(
    r: redis.Redis,
    settings: Settings,
    session_id: str,
    held: Held,
    appender: Appender,
    provider_for: ProviderFor,
    stopping: threading.Event,
    *,
    can_hand_over: bool,
) -> Outcome:
    ttl_s = settings.stream_ttl_s
    token = held.token
    attempt = int(token)
    meta = patiently(lambda: store.read_meta(r, session_id), session_id, settings)
    request = GenerationRequest.from_json(meta.request)
    sink = Sink(r, appender, session_id, token, meta.chunks, settings)
    try:
        resume = None
        if attempt > 1:
            if sink.index > 0:
                answer = patiently(lambda: store.read_answer(r, session_id), session_id, settings)
                why = _why_not_resumable(request.model, answer, settings)
                if why:
                    # The answer is append-only: starting over would garble it.
                    store.append_error(
                        r,
                        session_id,
                        "worker_lost",
                        f"The worker generating this answer stopped and {why}; the partial "
                        "answer stays readable.",
                        token=token,
                        ttl_s=ttl_s,
                    )
                    return Outcome.FAILED
                resume = Resume(sink.index, answer.text)
            status = "resumed"
        else:
            status = "running"
        patiently(
            lambda: store.append_status(
                r, session_id, status, token=token, ttl_s=ttl_s, attempt=attempt
            ),
            session_id,
            settings,
        )
        if status == "resumed":
            log.info(
                "session %s resumed (attempt %d, from chunk %d)", session_id, attempt, sink.index
            )

        def should_stop() -> bool:
            return held.is_lost() or stopping.is_set()

        provider = provider_for(request.model, settings)
        with contextlib.closing(provider.stream(request, should_stop, resume)) as items:
            for item in items:
                if isinstance(item, Finished):
                    sink.terminal(
                        functools.partial(
                            store.append_done,
                            r,
                            session_id,
                            token=token,
                            ttl_s=ttl_s,
                            finish_reason=item.finish_reason,
                            chunks=sink.index,
                            usage=item.usage,
                        )
                    )
                    log.info("session %s completed: %d chunks", session_id, sink.index)
                    return Outcome.COMPLETED
                sink.add(part_of(item))
        sink.flush()
        if stopping.is_set() and not held.is_lost() and can_hand_over:
            log.info("session %s handed over at chunk %d (shutdown)", session_id, sink.index)
            return Outcome.HANDED_OVER
        if held.ended:
            # Cancelled, and the lease keeper heard of it before a refused append did.
            log.info("session %s stopped: terminal", session_id)
            return Outcome.TERMINAL
        log.info("session %s stopped: lease lost", session_id)
        return Outcome.STOPPED
    except AppendRefused as e:
        log.info("session %s stopped: %s", session_id, e.code)
        return Outcome(e.code)
    except ProviderError as e:
        log.warning("session %s failed at the provider: %s (%s)", session_id, e.code, e.message)
        appender.tally.provider_error(e.code)
        _end_with_error(sink, e.code, e.message)
        return Outcome.FAILED
    except StoreUnavailable:
        log.error("session %s: giving up, Redis unreachable; the reaper retries it", session_id)
        raise
    except Exception:
        log.exception("session %s failed in the worker", session_id)
        _end_with_error(sink, "internal_error", "The worker failed while generating this answer.")
        raise
    finally:
        sink.close()


def part_of(delta: Delta) -> store.Part:
    """The content event a provider's delta is stored as."""
    if isinstance(delta, TextDelta):
        return store.Part(store.EventType.CHUNK, delta.text)
    if isinstance(delta, ReasoningDelta):
        return store.Part(store.EventType.REASONING, delta.text)
    call: dict[str, object] = {"index": delta.index}
    if delta.id is not None:
        call["id"] = delta.id
    if delta.name is not None:
        call["name"] = delta.name
    call["arguments"] = delta.arguments
    return store.Part(store.EventType.TOOL_CALL, call=call)


def _end_with_error(sink: Sink, code: str, message: str) -> None:
    try:
        sink.terminal(
            lambda: store.append_error(
                sink.r,
                sink.session_id,
                code,
                message,
                token=sink.token,
                ttl_s=sink.settings.stream_ttl_s,
            )
        )
    except AppendRefused as e:
        log.info("error event for %s not written: %s", sink.session_id, e.code)
    except (redis.RedisError, StoreUnavailable):
        log.exception("error event for %s not written: Redis failed", sink.session_id)
