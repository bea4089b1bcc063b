"""Starting a generation: every route that starts one calls `start_session`.

Plain functions over the Redis client and an `enqueue` callable, no Flask: the steps of
creating a session and the undo of each, testable on a real Redis alone. The routes map
its errors to HTTP (`api/errors.py`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import redis

from api.presentation import iso_ms
from shared import limits, store
from shared.errors import QueueUnavailable, RequestInProgress, SessionNotFound
from shared.jobs import GenerationRequest
from shared.settings import Settings

log = logging.getLogger(__name__)

# How long a retry waits for a concurrent first request with its Idempotency-Key to store
# the session (that takes a few ms), before it answers 409 with Retry-After.
IDEMPOTENCY_WAIT_S = 2.0
IDEMPOTENCY_POLL_S = 0.02

# Sends the generate job of a session id; raises when it could not be queued.
Enqueue = Callable[[str], None]


@dataclass(frozen=True)
class Caller:
    """Who starts the session: its API key's `owner` ("" in open mode) and the `bucket`
    its limits are counted under (`api.limits.caller_bucket`)."""

    owner: str
    bucket: str

    @property
    def idempotency_client(self) -> str:
        """Whose Idempotency-Keys these are besides the owner: in open mode the client
        address's own, so another client that guesses a key does not get its session."""
        return "" if self.owner else self.bucket


@dataclass(frozen=True)
class Started:
    """A session a request started, or the one an earlier request with its Idempotency-Key
    started (`is_replay`)."""

    session_id: str
    status: str
    model: str | None
    created_at: str | None
    is_replay: bool = False


def fingerprint(generation: GenerationRequest) -> str:
    """The validated request's digest: `1` and `1.0` tokens, or a prompt and its one user
    message, are the same request."""
    return hashlib.sha256(generation.to_json().encode()).hexdigest()[:32]


def start_session(
    r: redis.Redis,
    settings: Settings,
    generation: GenerationRequest,
    *,
    session_id: str,
    caller: Caller,
    enqueue: Enqueue,
    idempotency_key: str | None = None,
    extra_meta: Mapping[str, str] | None = None,
) -> Started:
    """Store and enqueue a new session, or replay the one `idempotency_key` names.

    Raises `IdempotencyConflict` or `RequestInProgress` for the key, `TooManyRequests`
    from the caller's limits (admitted after the replay: a retry is never refused), and
    `QueueUnavailable` when the job could not be queued (the session then ends with an
    `enqueue_failed` error event). On every failure the key is released for a retry.
    `extra_meta`: more meta fields stored with the session (`store.create_session`).
    """
    if idempotency_key is not None:
        replay = _claim_or_replay(r, settings, idempotency_key, session_id, generation, caller)
        if replay is not None:
            return replay

    def release_key() -> None:
        if idempotency_key is not None:
            store.release_idempotency_key(
                r, idempotency_key, caller.owner, caller.idempotency_client
            )

    try:
        _admit(r, settings, caller, session_id)
    except Exception:
        release_key()
        raise
    try:
        store.create_session(
            r,
            session_id,
            generation,
            queue=settings.worker.queue,
            owner=caller.owner,
            extra=extra_meta,
        )
    except Exception:
        if settings.limits.max_running_per_caller > 0:
            limits.forget_running(r, caller.bucket, session_id)
        release_key()
        raise
    try:
        enqueue(session_id)
    except Exception as e:
        log.warning("could not enqueue %s: %s", session_id, e)
        store.append_error(
            r,
            session_id,
            "enqueue_failed",
            "The job queue was unavailable; nothing was generated.",
            token="",
            ttl_s=settings.stream_ttl_s,
        )
        release_key()
        raise QueueUnavailable("The job queue is unavailable; retry shortly.") from e
    meta = store.read_meta(r, session_id)
    log.info("session %s queued (model %s)", session_id, generation.model)
    return Started(session_id, store.Status.QUEUED.value, generation.model, iso_ms(meta.created_ms))


def _admit(r: redis.Redis, settings: Settings, caller: Caller, session_id: str) -> None:
    """Count the new session against the caller's rate and running limits, or raise
    `TooManyRequests`."""
    limits.count_creation(
        r,
        caller.bucket,
        limit=settings.limits.rate_creates_per_min,
        window_s=settings.limits.rate_window_s,
    )
    limits.admit_running(
        r,
        caller.bucket,
        session_id,
        limit=settings.limits.max_running_per_caller,
        ttl_s=settings.stream_ttl_s,
    )


def _claim_or_replay(
    r: redis.Redis,
    settings: Settings,
    idempotency_key: str,
    session_id: str,
    generation: GenerationRequest,
    caller: Caller,
) -> Started | None:
    """None when this request now holds the key; else the session of the request that
    holds it, once that is stored (`RequestInProgress` if not in time)."""
    digest = fingerprint(generation)
    deadline = time.monotonic() + IDEMPOTENCY_WAIT_S
    while True:
        earlier = store.claim_idempotency_key(
            r,
            idempotency_key,
            session_id,
            digest,
            settings.stream_ttl_s,
            caller.owner,
            caller.idempotency_client,
        )
        if earlier is None:
            return None
        try:
            meta = store.read_meta(r, earlier)
        except SessionNotFound:
            # A concurrent retry: the first request claimed the key and is storing the
            # session now (or failed, released the key, and our next claim takes it).
            if time.monotonic() >= deadline:
                raise RequestInProgress(
                    "a request with this Idempotency-Key is still being handled; retry",
                    retry_after_s=1,
                ) from None
            time.sleep(IDEMPOTENCY_POLL_S)
            continue
        return Started(
            earlier, meta.status.value, meta.model, iso_ms(meta.created_ms), is_replay=True
        )
