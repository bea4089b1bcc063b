"""Finds sessions whose worker died and hands them to another; expires ones never started.

Runs as a thread in every worker process; a short Redis lock lets one of them do each pass.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from shared import fields, keys, logs, metrics, store
from shared.errors import AppendRefused
from shared.settings import Settings

log = logging.getLogger(__name__)

Enqueue = Callable[[str, str], None]  # (session id, queue)


# Sessions looked at per page of the index: one ZSCAN, then one pipeline of reads.
PAGE = 500


# The fields of a session's meta hash that the reaper decides by: a page reads only these.
_META_FIELDS = (
    fields.STATUS,
    fields.ATTEMPT,
    fields.ENQUEUED_MS,
    fields.CREATED_MS,
    fields.REQUEUES,
    fields.QUEUE,
    fields.UPDATED_MS,
)


def reap_once(
    r: redis.Redis,
    settings: Settings,
    enqueue: Enqueue,
    keep_going: Callable[[], bool] = lambda: True,
) -> dict[str, int]:
    """One pass over the active sessions; returns how many were seen, requeued, expired, dropped.

    The index is read a page at a time, and a page's metas and leases in one round trip.
    `keep_going` is asked before each page's writes; when it says no, the pass stops there.
    """
    counts = {"seen": 0, "requeued": 0, "expired": 0, "gave_up": 0, "dropped": 0}
    cursor = 0
    while True:
        cursor, page = r.zscan(keys.active(), cursor, count=PAGE)
        session_ids = [str(session_id) for session_id, _score in page]
        if session_ids:
            states = _read_page(r, session_ids)
            if not keep_going():
                return counts
            now = store.now_ms()
            takeovers = 0
            for session_id, (meta, is_leased) in zip(session_ids, states, strict=True):
                action = _decide(settings, meta, is_leased, now)
                if action:
                    _act(r, settings, enqueue, session_id, meta, action)
                    counts[action] += 1
                    # A running session handed out again: its worker died.
                    takeovers += (
                        action == "requeued"
                        and meta is not None
                        and meta.status == store.Status.RUNNING
                    )
            counts["seen"] += len(session_ids)
            if takeovers:
                metrics.count(r, metrics.REAPER_TAKEOVERS, takeovers)
        if cursor == 0:
            return counts


def _read_page(
    r: redis.Redis, session_ids: list[str]
) -> list[tuple[store.SessionMeta | None, bool]]:
    """Each session's meta (None: gone) and whether its lease key exists."""
    # Not a transaction: each session's keys share a slot, and redis-py's cluster pipeline
    # sends each node its own part.
    pipe = r.pipeline(transaction=False)
    for session_id in session_ids:
        pipe.hmget(keys.meta(session_id), _META_FIELDS)
        pipe.exists(keys.lease(session_id))
    answers = pipe.execute()
    return [
        (store.meta_of(session_id, dict(zip(_META_FIELDS, values, strict=True))), bool(is_leased))
        for session_id, values, is_leased in zip(
            session_ids, answers[::2], answers[1::2], strict=True
        )
    ]


def _decide(
    settings: Settings, meta: store.SessionMeta | None, is_leased: bool, now: int
) -> str | None:
    """What the pass does with a session: dropped, expired, requeued, gave_up, or None."""
    if meta is None or meta.status in store.TERMINAL_STATUSES:
        return "dropped"
    if is_leased:
        return None  # a live worker holds it
    since_enqueued_ms = now - (meta.enqueued_ms or meta.created_ms or now)
    if meta.status == store.Status.QUEUED:
        if now - (meta.created_ms or now) > settings.worker.queued_timeout_s * 1000:
            return "expired"
        if (
            since_enqueued_ms > settings.worker.queued_requeue_s * 1000
            and meta.requeues < settings.worker.max_attempts
        ):
            return "requeued"
        return None
    # Running with no lease key, but written to within a lease: its worker lives and lost
    # the key to a Redis restart (it re-creates it on its next renewal).
    if now - (meta.updated_ms or 0) < settings.worker.lease_ttl_s * 1000:
        return None
    # Running, and its lease expired: the worker that held it is gone. After a hand-out
    # that no worker took yet (a backlog, a broker reconnecting), wait longer each time
    # rather than pile copies into the queue.
    wait_ms = settings.worker.lease_ttl_s * 1000 * 2 ** min(meta.requeues, 4)
    if since_enqueued_ms < wait_ms:
        return None
    if meta.attempt >= settings.worker.max_attempts:
        return "gave_up"
    return "requeued"


def _act(
    r: redis.Redis,
    settings: Settings,
    enqueue: Enqueue,
    session_id: str,
    meta: store.SessionMeta | None,
    action: str,
) -> None:
    if action == "dropped" or meta is None:  # `_decide` drops every session that is gone
        r.zrem(keys.active(), session_id)
    elif action == "expired":
        _end(r, settings, session_id, "queue_timeout", "No worker started this answer in time.")
    elif action == "gave_up":
        _end(
            r,
            settings,
            session_id,
            "worker_lost",
            f"Workers stopped {meta.attempt} times while generating this answer; "
            "the partial answer stays readable.",
        )
    else:
        _requeue(r, session_id, meta.queue or settings.worker.queue, enqueue)


def _requeue(r: redis.Redis, session_id: str, queue: str, enqueue: Enqueue) -> None:
    r.hset(keys.meta(session_id), fields.ENQUEUED_MS, store.now_ms())
    r.hincrby(keys.meta(session_id), fields.REQUEUES, 1)
    enqueue(session_id, queue)
    log.warning(
        "session %s has no live worker: handed out again", session_id, extra=logs.about(session_id)
    )


def _end(r: redis.Redis, settings: Settings, session_id: str, code: str, message: str) -> None:
    try:
        store.append_error(r, session_id, code, message, token="", ttl_s=settings.stream_ttl_s)
        log.warning("session %s ended: %s", session_id, code, extra=logs.about(session_id))
    except AppendRefused as e:
        log.info(
            "session %s not ended by the reaper: %s",
            session_id,
            e.code,
            extra=logs.about(session_id),
        )


def reap_locked(r: redis.Redis, settings: Settings, enqueue: Enqueue, lock: Lock) -> dict[str, int]:
    """`reap_once` while holding `lock`: extended before each page, released at the end.

    A pass that loses the lock (it expired: a page took longer than the lock's timeout, or
    the process stalled) stops before its next page's writes, since another worker may be
    making a pass by then, and says so.
    """
    started = time.monotonic()
    is_stopped = False

    def keep_going() -> bool:
        nonlocal is_stopped
        is_stopped = not _extend(lock)
        return not is_stopped

    try:
        counts = reap_once(r, settings, enqueue, keep_going)
    finally:
        is_released = _release(lock)
    if is_stopped or not is_released:
        log.warning(
            "reaper pass lost its lock: it had expired %.1f s into the pass, with %d sessions "
            "looked at; the pass %s (%s)",
            time.monotonic() - started,
            counts["seen"],
            "stopped there" if is_stopped else "had ended",
            counts,
        )
    elif any(counts[k] for k in ("requeued", "expired", "gave_up")):
        log.info("reaper pass: %s", counts)
    return counts


def _extend(lock: Lock) -> bool:
    try:
        return lock.reacquire()  # the full timeout again, if the lock is still ours
    except LockNotOwnedError:
        return False


def _release(lock: Lock) -> bool:
    try:
        lock.release()
        return True
    except LockNotOwnedError:
        return False


class Reaper:
    """Runs `reap_locked` every `REAPER_INTERVAL_S` in one of the worker processes."""

    def __init__(self, r: redis.Redis, settings: Settings, enqueue: Enqueue) -> None:
        self.r = r
        self.settings = settings
        self.enqueue = enqueue
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)

    def start(self) -> None:
        """Start the background thread."""
        self._thread.start()

    def _run(self) -> None:
        # Released after each pass, so workers with different intervals never starve each
        # other; it expires by itself soon after, so a worker killed mid-pass stalls no one.
        lock = self.r.lock(
            keys.reaper_lock(), timeout=self.settings.worker.reaper_interval_s + 1, blocking=False
        )
        while True:
            time.sleep(self.settings.worker.reaper_interval_s)
            try:
                if lock.acquire(blocking=False):
                    reap_locked(self.r, self.settings, self.enqueue, lock)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("reaper pass skipped or cut short: Redis unreachable (%s)", e)
            except Exception:
                log.exception("reaper pass failed")
