"""Leases: the worker generating a session holds `keys.lease`; its fencing token is the
meta's `attempt` (`lua/acquire.lua`)."""

from __future__ import annotations

from typing import Any

import redis

from shared import keys
from shared.store import scripts


def acquire_lease(
    r: redis.Redis, session_id: str, ttl_ms: int, worker: str = ""
) -> tuple[str, str | None]:
    """Take the session's lease: ("ok", token), or (held|terminal|not_found, None)."""
    result = scripts.ACQUIRE.run(
        r, [keys.meta(session_id), keys.lease(session_id)], [ttl_ms, worker]
    )
    return (str(result[0]), str(result[1]) if len(result) > 1 else None)


def queue_renew(pipe: Any, session_id: str, token: str, ttl_ms: int) -> None:
    """Queue a lease renewal into a non-transactional `pipe`: 1 if `token` still held the
    lease and it was extended, 0 if another attempt took it over, -1 if the session ended
    (cancelled, or expired).

    Run `load_scripts` first.
    """
    scripts.RENEW.queue(pipe, [keys.meta(session_id), keys.lease(session_id)], [token, ttl_ms])


def release_lease(r: redis.Redis, session_id: str, token: str) -> None:
    """Give the lease up if `token` still holds it."""
    scripts.RELEASE.run(r, [keys.lease(session_id)], [token])
