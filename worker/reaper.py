"""Finds sessions whose worker died and hands them to another; expires ones never started.

Runs as a thread in every worker process; a short Redis lock lets one of them do each pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from shared import keys, streams
from shared.errors import AppendRefused
from shared.settings import Settings

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str], None]  # (session id, queue)


def reap_once(r: redis.Redis, settings: Settings, enqueue: Enqueue) -> dict[str, int]:
    """One pass over the active sessions; returns how many were requeued, expired, dropped."""
    counts = {"requeued": 0, "expired": 0, "gave_up": 0, "dropped": 0}
    now = streams.now_ms()
    for session_id, _score in r.zscan_iter(keys.active(), count=500):
        fields: list[str | None] = cast(
            Any,
            r.hmget(
                keys.meta(session_id),
                [
                    "status",
                    "attempt",
                    "enqueued_ms",
                    "created_ms",
                    "requeues",
                    "queue",
                    "updated_ms",
                ],
            ),
        )
        status, attempt, enqueued_ms, created_ms, requeues, queue, updated_ms = fields
        if status is None or status in streams.TERMINAL_STATUSES:
            r.zrem(keys.active(), session_id)
            counts["dropped"] += 1
            continue
        if r.exists(keys.lease(session_id)):
            continue  # a live worker holds it
        since_enqueued_ms = now - int(enqueued_ms or created_ms or now)
        if status == streams.Status.QUEUED:
            if now - int(created_ms or now) > settings.queued_timeout_s * 1000:
                _end(
                    r,
                    settings,
                    session_id,
                    "queue_timeout",
                    "No worker started this answer in time.",
                )
                counts["expired"] += 1
            elif (
                since_enqueued_ms > settings.queued_requeue_s * 1000
                and int(requeues or 0) < settings.max_attempts
            ):
                _requeue(r, session_id, queue or settings.celery_queue, enqueue)
                counts["requeued"] += 1
            continue
        # Running with no lease key, but written to within a lease: its worker lives and lost
        # the key to a Redis restart (it re-creates it on its next renewal).
        if now - int(updated_ms or 0) < settings.lease_ttl_s * 1000:
            continue
        # Running, and its lease expired: the worker that held it is gone. After a hand-out
        # that no worker took yet (a backlog, a broker reconnecting), wait longer each time
        # rather than pile copies into the queue.
        wait_ms = settings.lease_ttl_s * 1000 * 2 ** min(int(requeues or 0), 4)
        if since_enqueued_ms < wait_ms:
            continue
        if int(attempt or 0) >= settings.max_attempts:
            _end(
                r,
                settings,
                session_id,
                "worker_lost",
                f"Workers stopped {attempt} times while generating this answer; "
                "the partial answer stays readable.",
            )
            counts["gave_up"] += 1
            continue
        _requeue(r, session_id, queue or settings.celery_queue, enqueue)
        counts["requeued"] += 1
    return counts


def _requeue(r: redis.Redis, session_id: str, queue: str, enqueue: Enqueue) -> None:
    r.hset(keys.meta(session_id), "enqueued_ms", streams.now_ms())
    r.hincrby(keys.meta(session_id), "requeues", 1)
    enqueue(session_id, queue)
    log.warning("session %s has no live worker: handed out again", session_id)


def _end(r: redis.Redis, settings: Settings, session_id: str, code: str, message: str) -> None:
    try:
        streams.append_error(r, session_id, code, message, token="", ttl_s=settings.stream_ttl_s)
        log.warning("session %s ended: %s", session_id, code)
    except AppendRefused as e:
        log.info("session %s not ended by the reaper: %s", session_id, e.code)


class Reaper:
    """Runs `reap_once` every `REAPER_INTERVAL_S` in one of the worker processes."""

    def __init__(self, r: redis.Redis, settings: Settings, enqueue: Enqueue, name: str) -> None:
        self.r = r
        self.settings = settings
        self.enqueue = enqueue
        self.name = name
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def _run(self) -> None:
        # Released after each pass, so workers with different intervals never starve each
        # other; it expires by itself soon after, so a worker killed mid-pass stalls no one.
        lock = self.r.lock(
            keys.reaper_lock(), timeout=self.settings.reaper_interval_s + 1, blocking=False
        )
        while True:
            time.sleep(self.settings.reaper_interval_s)
            try:
                if not lock.acquire(blocking=False):
                    continue
                try:
                    counts = reap_once(self.r, self.settings, self.enqueue)
                finally:
                    lock.release()
                if any(counts[k] for k in ("requeued", "expired", "gave_up")):
                    log.info("reaper pass: %s", counts)
            except redis.RedisError as e:
                log.warning("reaper pass skipped: Redis unreachable (%s)", e)
            except Exception:
                log.exception("reaper pass failed")
