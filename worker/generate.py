"""Generate one session: take its lease, stream from the provider, append every chunk."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from shared import logs, metrics, streams
from shared.errors import AppendRefused, ProviderError
from shared.jobs import GenerationRequest
from shared.settings import Settings
from worker.appender import Appender
from worker.leases import Held, LeaseKeeper
from worker.providers import is_demo_model
from worker.providers.base import Finished, Provider, Resume, TextDelta

log = logging.getLogger(__name__)

ProviderFor = Callable[[str, Settings], Provider]
T = TypeVar("T")

_BACKOFF_START_S = 0.05
_BACKOFF_MAX_S = 2.0


class StoreUnavailable(Exception):
    """Redis stayed unreachable longer than `REDIS_OUTAGE_MAX_S`."""


class Sink:
    """Queues a session's chunks for the process's appender, which writes them in order,
    and bounds how many may wait unwritten while Redis is unreachable, so the worker keeps
    reading from the provider through a Redis restart.

    The appender reports back through `answered` and `fail`, from its own thread; a refusal
    or a failure it reports is raised in the generation at its next `chunk` or `flush`.
    """

    def __init__(
        self,
        r: redis.Redis,
        appender: Appender,
        session_id: str,
        token: str,
        first_index: int,
        settings: Settings,
    ) -> None:
        self.r = r
        self.appender = appender
        self.session_id = session_id
        self.token = token
        self.index = first_index  # the next chunk's index
        self.written = first_index  # every chunk before this one is in Redis
        self.settings = settings
        self.retry_at = 0.0
        self._backoff_s = _BACKOFF_START_S
        self._down_since: float | None = None
        self._failure: Exception | None = None  # AppendRefused, StoreUnavailable, ...
        self._closed = False
        self._changed = threading.Condition()

    def chunk(self, text: str) -> None:
        """Queue the next chunk; raises what stopped an earlier one (a refusal, an outage)."""
        self._check()
        if self.index - self.written >= self.settings.worker_buffer_chunks:
            # The buffer is full: wait for Redis rather than grow.
            self._wait(lambda: self.index - self.written < self.settings.worker_buffer_chunks)
        self.appender.put(self, self.index, text)
        self.index += 1

    def flush(self) -> None:
        """Wait until every queued chunk is written, up to `REDIS_OUTAGE_MAX_S` of outage."""
        self._wait(lambda: self.written >= self.index)

    def close(self) -> None:
        """The generation has ended: the appender drops what it still holds of it."""
        self._closed = True

    def is_writable(self) -> bool:
        """Whether the appender should still write this sink's chunks."""
        return self._failure is None and not self._closed

    def answered(self, answers: list[object]) -> int:
        """Take Redis's answers to the first unwritten chunks; returns how many were written.

        Called by the appender. A connection error leaves this chunk and the later ones
        to be sent again after a backoff.
        """
        written = 0
        for answer in answers:
            if isinstance(answer, redis.RedisError):
                try:
                    self._failed(answer)
                except StoreUnavailable as e:
                    self.fail(e)
                break
            try:
                streams.chunk_result(self.r, self.session_id, answer)
            except AppendRefused as e:
                self.fail(e)
                break
            written += 1
            self._recovered()
        if written:
            self.written += written
            # Before the generation hears of it: its final flush of the metrics counts them.
            self.appender.tally.add(metrics.CHUNKS_APPENDED, written)
            with self._changed:
                self._changed.notify_all()
        return written

    def fail(self, error: Exception) -> None:
        """Stop writing; the generation raises `error` at its next step (called by the appender)."""
        self._failure = error
        with self._changed:
            self._changed.notify_all()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _wait(self, is_done: Callable[[], bool]) -> None:
        with self._changed:
            while True:
                self._check()
                if is_done():
                    return
                self._changed.wait()

    def terminal(self, write: Callable[[], object]) -> None:
        """Flush, then write the terminal event, retrying through a Redis outage."""
        self.flush()
        first = True
        while True:
            try:
                write()
                self._recovered()
                return
            except AppendRefused as e:
                # A retry after a lost reply finds the session already ended by our write.
                if first or e.code != "terminal":
                    raise
                return
            except redis.RedisError as e:
                first = False
                self._failed(e)
                time.sleep(max(0.0, self.retry_at - time.monotonic()))

    def _failed(self, error: redis.RedisError) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "session %s: Redis unreachable (%s); holding chunks",
                self.session_id,
                error,
                extra=logs.about(self.session_id),
            )
        elif now - self._down_since > self.settings.redis_outage_max_s:
            raise StoreUnavailable(
                f"Redis unreachable for over {self.settings.redis_outage_max_s} s"
            ) from error
        self.retry_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, _BACKOFF_MAX_S)

    def _recovered(self) -> None:
        if self._down_since is not None:
            log.warning(
                "session %s: Redis back after %.1f s",
                self.session_id,
                time.monotonic() - self._down_since,
                extra=logs.about(self.session_id),
            )
        self._down_since = None
        self._backoff_s = _BACKOFF_START_S
        self.retry_at = 0.0


def patiently(fn: Callable[[], T], session_id: str, settings: Settings) -> T:
    """Call `fn`, retrying with capped backoff while Redis is unreachable (a restart)."""
    started = time.monotonic()
    backoff_s = _BACKOFF_START_S
    while True:
        try:
            return fn()
        except redis.ConnectionError as e:
            if time.monotonic() - started > settings.redis_outage_max_s:
                raise StoreUnavailable(f"Redis unreachable: {e}") from e
            log.warning("session %s: Redis unreachable (%s); retrying", session_id, e)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, _BACKOFF_MAX_S)


def may_resume(model: str, settings: Settings) -> bool:
    """Whether an answer of `model` can be continued by another attempt."""
    return is_demo_model(model) or settings.may_prefill(model)


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
) -> str:
    """Generate `session_id` to its end; returns what happened (completed, failed, held, ...).

    Stands down without writing when another worker holds the lease or the session is
    already terminal or gone. Stops at the next chunk once the session is cancelled or the
    lease is lost: the atomic append refuses the write, and leaving the `with` block closes
    the provider's stream, which closes the upstream HTTP response. When `stopping` is set
    (the worker is shutting down), writes what it has, gives the lease up and calls
    `hand_over(session_id)` so another worker continues at once.
    """
    state, held = patiently(lambda: keeper.acquire(session_id), session_id, settings)
    if held is None:
        log.info("session %s not generated here: %s", session_id, state)
        return state
    stopping = stopping or threading.Event()
    started = time.monotonic()
    outcome = "raised"
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
        if outcome in ("completed", "failed"):
            appender.tally.generation(time.monotonic() - started)
        # One small write per attempt: this session's last chunk counts, its time, its error.
        appender.tally.flush(r)
    if outcome == "handed_over" and hand_over is not None:
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
) -> str:
    ttl_s = settings.stream_ttl_s
    token = held.token
    attempt = int(token)
    meta = patiently(lambda: streams.read_meta(r, session_id), session_id, settings)
    request = GenerationRequest.from_json(meta["request"])
    sink = Sink(r, appender, session_id, token, int(meta.get("chunks", 0)), settings)
    try:
        resume = None
        if attempt > 1:
            if sink.index > 0:
                if not may_resume(request.model, settings):
                    # The text is append-only: starting over would garble it.
                    streams.append_error(
                        r,
                        session_id,
                        "worker_lost",
                        "The worker generating this answer stopped and this model cannot "
                        "continue it; the partial answer stays readable.",
                        token=token,
                        ttl_s=ttl_s,
                    )
                    return "failed"
                text = patiently(lambda: streams.read_text(r, session_id)[1], session_id, settings)
                resume = Resume(sink.index, text)
            status = "resumed"
        else:
            status = "running"
        patiently(
            lambda: streams.append_status(
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
                if isinstance(item, TextDelta):
                    sink.chunk(item.text)
                elif isinstance(item, Finished):
                    sink.terminal(
                        functools.partial(
                            streams.append_done,
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
                    return "completed"
        sink.flush()
        if stopping.is_set() and not held.is_lost() and can_hand_over:
            log.info("session %s handed over at chunk %d (shutdown)", session_id, sink.index)
            return "handed_over"
        log.info("session %s stopped: lease lost", session_id)
        return "stopped"
    except AppendRefused as e:
        log.info("session %s stopped: %s", session_id, e.code)
        return e.code
    except ProviderError as e:
        log.warning("session %s failed at the provider: %s (%s)", session_id, e.code, e.message)
        appender.tally.provider_error(e.code)
        _end_with_error(sink, e.code, e.message)
        return "failed"
    except StoreUnavailable:
        log.error("session %s: giving up, Redis unreachable; the reaper retries it", session_id)
        raise
    except Exception:
        log.exception("session %s failed in the worker", session_id)
        _end_with_error(sink, "internal_error", "The worker failed while generating this answer.")
        raise
    finally:
        sink.close()


def _end_with_error(sink: Sink, code: str, message: str) -> None:
    try:
        sink.terminal(
            lambda: streams.append_error(
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
