"""Keeps the leases of the sessions this worker process generates alive.

One thread per process renews every held lease each third of its TTL. A lease that
could not be renewed (another worker took the session over, or the session ended: it
was cancelled) is marked lost, and the generation stops at its next step; its writes
would be refused anyway by the fencing token.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from shared import logs, store
from shared.backoff import ensure_running

log = logging.getLogger(__name__)


class Held:
    """A lease this process holds on one session."""

    def __init__(self, session_id: str, token: str) -> None:
        self.session_id = session_id
        self.token = token
        self.lost = threading.Event()
        self.ended = False  # lost because the session ended (cancelled), not taken over

    def is_lost(self) -> bool:
        """Whether the lease was lost since it was taken."""
        return self.lost.is_set()


class LeaseKeeper:
    """Renews the held leases from one background thread."""

    def __init__(self, r: redis.Redis, ttl_s: int) -> None:
        self.r = r
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.ttl_ms = ttl_s * 1000
        self.interval_s = ttl_s / 3
        self._held: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def acquire(self, session_id: str) -> tuple[str, Held | None]:
        """Take the session's lease: ("ok", Held) or (why not: held/terminal/not_found, None)."""
        state, token = store.acquire_lease(self.r, session_id, self.ttl_ms, self.worker)
        if state != "ok" or token is None:
            return state, None
        held = Held(session_id, token)
        with self._lock:
            self._held[session_id] = held
            self._thread = ensure_running(self._thread, self._run, "lease-keeper")
        return state, held

    def release(self, held: Held) -> None:
        """Stop renewing and give the lease up."""
        with self._lock:
            if self._held.get(held.session_id) is held:
                del self._held[held.session_id]
        try:
            store.release_lease(self.r, held.session_id, held.token)
        except redis.RedisError:
            log.warning(
                "could not release lease of %s; it expires by itself",
                held.session_id,
                extra=logs.about(held.session_id),
            )

    def renew_all(self) -> None:
        """Renew every held lease once; mark the ones that could not be renewed lost."""
        with self._lock:
            held = list(self._held.values())
        if not held:
            return
        # One round trip for all: renewing hundreds of leases one by one from a busy
        # process took seconds, eating into the lease's margin.
        pipe = self.r.pipeline(transaction=False)
        for h in held:
            store.queue_renew(pipe, h.session_id, h.token, self.ttl_ms)
        try:
            store.load_scripts(self.r)
            answers = pipe.execute(raise_on_error=False)
        except redis.RedisError as e:
            log.warning("could not renew %d leases: %s", len(held), e)
            return
        finally:
            pipe.reset()
        for h, answer in zip(held, answers, strict=True):
            if isinstance(answer, redis.RedisError):
                log.warning(
                    "could not renew lease of %s: %s",
                    h.session_id,
                    answer,
                    extra=logs.about(h.session_id),
                )
            elif answer == -1:
                log.info(
                    "session %s ended while generating (cancelled or expired)",
                    h.session_id,
                    extra=logs.about(h.session_id),
                )
                h.ended = True
                h.lost.set()
            elif not answer:
                log.warning(
                    "lease of %s lost (taken over)", h.session_id, extra=logs.about(h.session_id)
                )
                h.lost.set()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.renew_all()
