"""An owner's sessions, newest first, a page at a time (`GET /api/streams`).

The index is one sorted set per owner (`keys.owner_sessions`), scored by creation ms,
written by `store.create_session`. Each session's meta is read with its own command, so
the listing works on Redis Cluster; ids whose meta expired are dropped from the index here.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, cast

import redis

from shared import keys
from shared.errors import BadCursor
from shared.store import SessionMeta, meta_of

# Index entries one page reads at most: a status that matches few sessions cannot make one
# request walk an owner's whole history. Such a page may hold fewer than `limit` sessions.
SCAN_MAX = 500


@dataclass(frozen=True)
class Page:
    """Sessions' metas, newest first, and the cursor of the next page (None: no more)."""

    sessions: list[SessionMeta]
    next_cursor: str | None


def encode_cursor(score: int, session_id: str) -> str:
    """The opaque cursor of the position after (`score`, `session_id`)."""
    return base64.urlsafe_b64encode(f"{score}:{session_id}".encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> tuple[int, str]:
    """The position an `encode_cursor` cursor names; raises `BadCursor`."""
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        score, _, session_id = text.partition(":")
        # isdigit() alone also takes "²", which int() refuses.
        if score.isascii() and score.isdigit() and keys.is_session_id(session_id):
            return int(score), session_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise BadCursor(f"cursor {raw[:64]!r} is not a nextCursor this listing returned")


def list_sessions(
    r: redis.Redis,
    owner: str,
    *,
    limit: int,
    status: str | None = None,
    cursor: str | None = None,
) -> Page:
    """Up to `limit` of `owner`'s sessions after `cursor`, newest first, of `status` if given."""
    index = keys.owner_sessions(owner)
    max_score: int | str = "+inf"
    after_id = ""
    if cursor:
        max_score, after_id = decode_cursor(cursor)
    sessions: list[SessionMeta] = []
    last: tuple[int, str] | None = None
    offset = scanned = 0
    while scanned < SCAN_MAX:
        batch = min(limit + 1, SCAN_MAX - scanned)
        entries: list[tuple[str, float]] = cast(
            Any,
            r.zrevrangebyscore(index, max_score, "-inf", start=offset, num=batch, withscores=True),
        )
        offset += len(entries)
        # Equal scores come in reverse order of the id: those at or above the cursor's id
        # were on an earlier page.
        fresh = [
            (str(member), int(score))
            for member, score in entries
            if not (after_id and int(score) == max_score and str(member) >= after_id)
        ]
        pipe = r.pipeline(transaction=False)
        for session_id, _score in fresh:
            pipe.hgetall(keys.meta(session_id))
        metas = pipe.execute() if fresh else []
        gone = []
        for (session_id, score), answer in zip(fresh, metas, strict=True):
            scanned += 1
            last = (score, session_id)
            meta = meta_of(session_id, answer)
            if meta is None:
                gone.append(session_id)
            elif status is None or meta.status == status:
                sessions.append(meta)
                if len(sessions) == limit:
                    break
        if gone:
            r.zrem(index, *gone)
        if len(sessions) == limit:
            break
        if len(entries) < batch:  # the index has nothing older
            return Page(sessions, None)
    assert last is not None  # the loop scanned at least one entry to get here
    return Page(sessions, encode_cursor(*last))
