"""Following a session's stream: `follow` (one blocking XREAD per follower) and
`follow_reconnecting`, which rides out Redis restarts. Everything else about sessions is
in `shared/store/`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import redis

from shared import fields, keys
from shared.backoff import READ_RETRY_MAX_S, READ_RETRY_START_S, compute_backoff
from shared.errors import SessionNotFound
from shared.store import TERMINAL_STATUSES, Batch, decode_batch, xread_entries

log = logging.getLogger(__name__)


def follow(
    r: redis.Redis, session_id: str, after: str | None = None, *, block_ms: int, count: int = 500
) -> Iterator[Batch]:
    """Yield the session's events after `after` in batches, then live ones, until the
    terminal event.

    A batch is what one read returned, so a relay can write it to its client in one go.
    Yields an empty batch each time `block_ms` passes with nothing new (a chance to send
    a keep-alive). Raises `SessionNotFound` if the session does not exist or vanishes
    while followed. `r` must have a socket timeout above `block_ms`.
    """
    key = keys.events(session_id)
    cursor = after or "0-0"
    status = r.hget(keys.meta(session_id), fields.STATUS)
    if status is None:
        raise SessionNotFound(f"no session {session_id}")
    is_terminal = status in TERMINAL_STATUSES
    while True:
        # A terminal session gets no more entries: read what is left without blocking.
        response = r.xread({key: cursor}, count=count, block=None if is_terminal else block_ms)
        batch, ended = decode_batch(xread_entries(response))
        if batch:
            cursor = batch[-1]["id"]
            yield batch
            if ended:
                return
            continue
        if is_terminal:
            return
        status = r.hget(keys.meta(session_id), fields.STATUS)
        if status is None:
            raise SessionNotFound(f"session {session_id} expired or was deleted")
        is_terminal = status in TERMINAL_STATUSES
        if not is_terminal:
            yield []


def follow_reconnecting(
    open_follow: Callable[[str | None], Iterator[Batch]],
    session_id: str,
    after: str | None = None,
    *,
    outage_max_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Batch]:
    """Follow with `open_follow(cursor)` (`follow` or the API's hub), riding out Redis
    restarts: on a connection error it waits with capped backoff (yielding empty batches
    meanwhile) and opens again from the last event it delivered. Raises the Redis error
    once Redis has been unreachable for `outage_max_s`.
    """
    cursor = after
    down_since: float | None = None
    failures = 0
    while True:
        try:
            for batch in open_follow(cursor):
                if down_since is not None:
                    log.info("follower of %s: Redis back", session_id)
                    down_since, failures = None, 0
                if batch:
                    cursor = batch[-1]["id"]
                yield batch
            return
        except redis.ConnectionError as e:
            now = time.monotonic()
            if down_since is None:
                down_since = now
                log.warning("follower of %s: Redis unreachable (%s); retrying", session_id, e)
            elif now - down_since > outage_max_s:
                raise
            yield []
            sleep(compute_backoff(failures, start_s=READ_RETRY_START_S, max_s=READ_RETRY_MAX_S))
            failures += 1
