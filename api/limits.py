"""The per-caller limits of `shared.limits`, applied to the current request (docs/API.md).

A caller is its API key id in keyed mode and its client address in open mode (the
address ProxyFix takes from X-Forwarded-For when TRUST_PROXY_HEADERS is on; behind a
proxy without it, every client shares the proxy's address and so its limits).
"""

from __future__ import annotations

from flask import request

from api import auth
from api.backend import backend
from shared import limits


def caller_bucket() -> str:
    """The name the current request's caller is counted under."""
    owner = auth.caller().owner
    return f"key:{owner}" if owner else f"addr:{request.remote_addr or 'unknown'}"


def join_followers(session_id: str) -> limits.FollowerPlace:
    """A place among the session's and the caller's followers (the session's stream-token
    followers, for a token), or `TooManyRequests`; with the session's status, read in
    the same round trip when there is one."""
    b = backend()
    settings = b.settings
    if auth.caller().token_session is not None:
        budgets = limits.budgets_of_token(
            session_id, per_session=settings.limits.max_token_followers_per_session
        )
    else:
        budgets = limits.budgets_of_key(
            session_id,
            caller_bucket(),
            per_session=settings.limits.max_followers_per_session,
            per_caller=settings.limits.max_followers_per_caller,
        )
    return limits.join_followers(
        b.redis, budgets, lease_s=settings.api.follower_lease_s, status_of=session_id
    )
