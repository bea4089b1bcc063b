"""Per-caller limits kept in Redis, so every API process counts against the same numbers.

A caller is a string the API picks (`api.limits.caller_bucket`); each caller's keys share
one hash tag, so each script touches one slot and the limits work on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared import fields, keys
from shared.errors import TooManyRequests
from shared.redisconn import run_script
from shared.store import TERMINAL_STATUSES, now_ms

log = logging.getLogger(__name__)

# A fixed window: the first creation starts it (and its expiry); refused attempts count
# too, without stretching it.
_COUNT = """
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
"""

_ADD_LIVE = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
"""

# A follower holds a place in a sorted set scored by when its lease ends; places of
# followers whose API process died lapse by themselves and are dropped here.
_JOIN = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local limit = tonumber(ARGV[4])
if limit > 0 and redis.call('ZCARD', KEYS[1]) >= limit then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# How long an id may sit in a caller's live set without a meta: the POST that added it is
# still creating the session. After that a missing meta means expired (or never created).
PENDING_GRACE_MS = 60_000
# There is no telling when a running generation ends: ask the client to look again soon.
RUNNING_RETRY_AFTER_S = 2
# Nor when a follower leaves.
FOLLOWERS_RETRY_AFTER_S = 5


def count_creation(r: redis.Redis, caller: str, *, limit: int, window_s: int) -> None:
    """Count one creation in the caller's window; raise `TooManyRequests` past `limit`."""
    if limit <= 0:
        return
    n, ttl_ms = run_script(r, _COUNT, [keys.caller_creates(caller)], [window_s * 1000])
    if int(n) > limit:
        raise TooManyRequests(
            f"more than {limit} sessions created in {window_s} s (RATE_CREATES_PER_MIN); "
            "retry after the Retry-After seconds",
            retry_after_s=max(1, math.ceil(int(ttl_ms) / 1000)),
        )


def admit_running(r: redis.Redis, caller: str, session_id: str, *, limit: int, ttl_s: int) -> None:
    """Count `session_id` among the caller's live sessions; raise `TooManyRequests` (and
    forget it) when that makes more than `limit`.

    Adding before counting means two racing creations may both be refused near the limit,
    but never both admitted past it. Ended sessions are pruned only when the count reaches
    the limit, against each session's meta: no terminal transition has to remember the set.
    """
    if limit <= 0:
        return
    key = keys.caller_live(caller)
    now = now_ms()
    count = int(run_script(r, _ADD_LIVE, [key], [now, session_id, ttl_s * 1000]))
    if count > limit:
        count = _prune(r, key, now)
    if count > limit:
        r.zrem(key, session_id)
        raise TooManyRequests(
            f"{limit} generations of this caller are queued or running "
            "(MAX_RUNNING_PER_CALLER); retry when one ends",
            retry_after_s=RUNNING_RETRY_AFTER_S,
        )


def forget_running(r: redis.Redis, caller: str, session_id: str) -> None:
    """Drop a session that was never created from the caller's live set."""
    r.zrem(keys.caller_live(caller), session_id)


def _prune(r: redis.Redis, key: str, now: int) -> int:
    """Drop ended or expired sessions from a live set; the number left."""
    members = cast(list[tuple[str, float]], r.zrange(key, 0, -1, withscores=True))
    # One command per session: their metas live on any node of a cluster.
    pipe = r.pipeline(transaction=False)
    for session_id, _score in members:
        pipe.hget(keys.meta(session_id), fields.STATUS)
    statuses = pipe.execute()
    ended = [
        session_id
        for (session_id, score), status in zip(members, statuses, strict=True)
        if status in TERMINAL_STATUSES or (status is None and score < now - PENDING_GRACE_MS)
    ]
    if ended:
        r.zrem(key, *ended)
    return len(members) - len(ended)


@dataclass
class FollowerPlace:
    """A follower's place in its session's and its caller's follower sets, until `leave`."""

    r: redis.Redis
    keys: list[str]
    member: str
    lease_ms: int
    renew_at: float
    # The session's status, when `join_followers` was asked for it and could read it in
    # the places' round trip; None otherwise.
    status: str | None = None

    def keep(self) -> None:
        """Renew the place's lease when a third of it has passed (call it often)."""
        if not self.keys or time.monotonic() < self.renew_at:
            return
        self.renew_at = time.monotonic() + self.lease_ms / 3000
        until = now_ms() + self.lease_ms
        try:
            pipe = self.r.pipeline(transaction=False)
            for key in self.keys:
                pipe.zadd(key, {self.member: until})
                pipe.pexpire(key, self.lease_ms)
            pipe.execute()
        except redis.RedisError as e:
            # The follow itself meets the outage; an unrenewed place only lapses.
            log.warning("could not renew a follower's place: %s", e)

    def leave(self) -> None:
        """Give the place up in one round trip (it lapses with its lease if this fails)."""
        held, self.keys = self.keys, []
        if not held:
            return
        try:
            pipe = self.r.pipeline(transaction=False)
            for key in held:
                pipe.zrem(key, self.member)
            pipe.execute()
        except redis.RedisError as e:
            log.warning("could not give up a follower's place in %s: %s", ", ".join(held), e)


@dataclass(frozen=True)
class FollowerBudget:
    """A set of followers with a limit (0: none), named by the setting and its holder."""

    key: str
    limit: int
    setting: str
    whose: str


def budgets_of_key(
    session_id: str, caller: str, *, per_session: int, per_caller: int
) -> list[FollowerBudget]:
    """What a follower with an API key (or any follower in open mode) counts against."""
    return [
        FollowerBudget(
            keys.followers(session_id), per_session, "MAX_FOLLOWERS_PER_SESSION", "this session"
        ),
        FollowerBudget(
            keys.caller_followers(caller), per_caller, "MAX_FOLLOWERS_PER_CALLER", "this caller"
        ),
    ]


def budgets_of_token(session_id: str, *, per_session: int) -> list[FollowerBudget]:
    """What a follower with a stream token counts against: its session's token budget
    alone, so whoever holds a token cannot lock the key's own followers out."""
    return [
        FollowerBudget(
            keys.token_followers(session_id),
            per_session,
            "MAX_TOKEN_FOLLOWERS_PER_SESSION",
            "this session's stream tokens",
        )
    ]


def join_followers(
    r: redis.Redis, budgets: list[FollowerBudget], *, lease_s: int, status_of: str | None = None
) -> FollowerPlace:
    """Take a follower's place in every budget's set, or raise `TooManyRequests` (code
    `too_many_followers`) when one is full.

    `status_of`: a session whose status to read in the same round trip, when there is
    one (`FollowerPlace.status`): the follower need not ask for it again.
    """
    lease_ms = lease_s * 1000
    place = FollowerPlace(r, [], uuid.uuid4().hex, lease_ms, time.monotonic() + lease_s / 3)
    counted = [budget for budget in budgets if budget.limit > 0]
    now = now_ms()
    argvs = [[now, now + lease_ms, place.member, b.limit, lease_ms] for b in counted]
    if isinstance(r, redis.Redis) and counted and (len(counted) > 1 or status_of):
        # One round trip for every budget: a join storm pays it per follower. (A cluster
        # pipeline goes one by one: its keys live in different slots.)
        joined, place.status = _join_in_one_trip(r, counted, argvs, status_of)
    else:
        joined = [
            run_script(r, _JOIN, [budget.key], argv)
            for budget, argv in zip(counted, argvs, strict=True)
        ]
    place.keys = [budget.key for budget, ok in zip(counted, joined, strict=True) if ok]
    for budget, ok in zip(counted, joined, strict=True):
        if not ok:
            place.leave()
            raise TooManyRequests(
                f"{budget.limit} followers of {budget.whose} are connected already "
                f"({budget.setting})",
                retry_after_s=FOLLOWERS_RETRY_AFTER_S,
                code="too_many_followers",
            )
    return place


_JOIN_SHA = hashlib.sha1(_JOIN.encode(), usedforsecurity=False).hexdigest()  # as Redis names it


def _join_in_one_trip(
    r: redis.Redis, budgets: list[FollowerBudget], argvs: list[list[Any]], status_of: str | None
) -> tuple[list[Any], str | None]:
    """Run `_JOIN` for every budget in one pipeline, and read `status_of`'s status in it:
    (each budget's answer, the status).

    By EVALSHA: redis-py's pipeline would first ask `SCRIPT EXISTS`, a round trip of its
    own on every call. A Redis that lost its scripts (a restart) refuses them all; the
    script is loaded and the pipeline sent again.
    """
    for attempt in range(2):
        pipe = r.pipeline(transaction=False)
        for budget, argv in zip(budgets, argvs, strict=True):
            pipe.evalsha(_JOIN_SHA, 1, budget.key, *argv)
        if status_of is not None:
            pipe.hget(keys.meta(status_of), fields.STATUS)
        try:
            answers = cast(list[Any], pipe.execute())
            return answers[: len(budgets)], (answers[-1] if status_of is not None else None)
        except redis.exceptions.NoScriptError:
            if attempt:
                raise
            r.script_load(_JOIN)
    raise AssertionError("unreachable")
