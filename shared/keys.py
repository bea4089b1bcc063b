"""The Redis key scheme: the only place a key is spelled.

The braces are a Redis Cluster hash tag, so all keys of one session live in one slot and
the atomic scripts may touch them together.
"""

from __future__ import annotations

import re

PREFIX = "rs"

# nanoid's default alphabet, 21 characters.
SESSION_ID_RE = re.compile(r"[A-Za-z0-9_-]{21}")


def events(session_id: str) -> str:
    """The session's Redis Stream of events."""
    return f"{PREFIX}:{{{session_id}}}:events"


def meta(session_id: str) -> str:
    """The session's Hash: status, model, request, counters, result."""
    return f"{PREFIX}:{{{session_id}}}:meta"


def lease(session_id: str) -> str:
    """The generating worker's lease; its value is the fencing token."""
    return f"{PREFIX}:{{{session_id}}}:lease"


def notify(session_id: str) -> str:
    """The session's sharded pub/sub channel (cluster mode): each new entry's id is published.

    It shares the session's hash tag, so the append script may SPUBLISH to it.
    """
    return f"{PREFIX}:{{{session_id}}}:notify"


def active() -> str:
    """A sorted set of the sessions not yet terminal (score: creation ms), for the reaper.

    An index only: terminal sessions are removed after the fact, and the reaper drops
    entries whose session ended or expired.
    """
    return f"{PREFIX}:active"


def metrics() -> str:
    """A Hash of the workers' counters and histogram buckets, summed over every worker
    process, for the API's `/metrics` (one key: one slot in a cluster)."""
    return f"{PREFIX}:metrics"


def metrics_followers() -> str:
    """A Hash of each API process's followers now, for the API's `/metrics`: field
    `<hostname>:<pid>`, value `<ws> <sse> <unix ms of the write>` (a field not rewritten
    for a while is a dead process's and is dropped)."""
    return f"{PREFIX}:metrics:followers"


def reaper_lock() -> str:
    """Held by the one worker process that runs the reaper's pass."""
    return f"{PREFIX}:reaper"


def idempotency(key: str, owner: str = "", client: str = "") -> str:
    """Maps a client's Idempotency-Key to the session it created, per owner (API key id),
    or in open mode per client (`caller_creates`'s caller, `addr:<client address>`).

    An owner's keys live under `owner_sessions`'s prefix, a client's under
    `caller_creates`'s, so the two can never name the same key.
    """
    if owner:
        return f"{PREFIX}:owner:{{{owner}}}:idem:{key}"
    if client:
        return f"{PREFIX}:caller:{{{client}}}:idem:{key}"
    return f"{PREFIX}:idem:{key}"


def chat(chat_id: str, owner: str = "", client: str = "") -> str:
    """A chat's active session (`shared/store/chats.py`), scoped like `idempotency`: per
    owner (API key id), or in open mode per client, so a chat id (chosen by the client)
    never names another tenant's stream. Its hash tag is the owner's or the client's."""
    if owner:
        return f"{PREFIX}:owner:{{{owner}}}:chat:{chat_id}"
    return f"{PREFIX}:caller:{{{client}}}:chat:{chat_id}"


def owner_sessions(owner: str) -> str:
    """A sorted set of the sessions an owner (API key id) created, scored by creation ms,
    for the listing.

    An index only: entries whose session expired are dropped as the listing meets them.
    One key per owner, with the owner as hash tag.
    """
    return f"{PREFIX}:owner:{{{owner}}}:sessions"


def caller_creates(caller: str) -> str:
    """A caller's count of creations in the current rate window (expires with the window).

    `caller` is `api.limits.caller_bucket()`: `key:<key id>` or `addr:<client address>`;
    it is the hash tag, so one caller's limit keys live in one slot.
    """
    return f"{PREFIX}:caller:{{{caller}}}:creates"


def caller_live(caller: str) -> str:
    """A sorted set of a caller's sessions that may still be queued or running (score:
    creation ms), for the limit on running generations; pruned against each meta."""
    return f"{PREFIX}:caller:{{{caller}}}:live"


def caller_followers(caller: str) -> str:
    """A sorted set of a caller's open followers (score: when its lease ends, ms)."""
    return f"{PREFIX}:caller:{{{caller}}}:followers"


def followers(session_id: str) -> str:
    """A sorted set of the session's open followers (score: when its lease ends, ms)."""
    return f"{PREFIX}:{{{session_id}}}:followers"


def token_followers(session_id: str) -> str:
    """A sorted set of the session's followers that came with a stream token (score: when
    its lease ends, ms): they have a budget of their own, apart from the key's."""
    return f"{PREFIX}:{{{session_id}}}:followers:token"


def is_session_id(value: str) -> bool:
    """Whether `value` has the shape of a session id (never touch Redis with other keys)."""
    # fullmatch: `$` would also accept the id followed by a newline.
    return bool(SESSION_ID_RE.fullmatch(value))
