"""Reading a session's stream: the whole text, and whether it has ended. (Followers read
in `api/fanout.py` and `api/readers.py`.)"""

from __future__ import annotations

from typing import Any, cast

import redis

from shared import keys
from shared.store.events import F_TEXT, F_TYPE, TERMINAL_STATUSES, EventType
from shared.store.sessions import read_meta


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def has_nothing_after(r: redis.Redis, session_id: str, status: str, after: str | None) -> bool:
    """Whether a follower from `after` has nothing left to get: the session (whose status is
    `status`) has ended, and no entry comes after the cursor."""
    if status not in TERMINAL_STATUSES:
        return False
    last: list[tuple[str, Any]] = cast(Any, r.xrevrange(keys.events(session_id), "+", "-", count=1))
    if not last:
        return True
    return after is not None and _id_key(str(last[0][0])) <= _id_key(after)


def read_text(r: redis.Redis, session_id: str, page: int = 1000) -> tuple[str, str, int]:
    """Everything generated so far: (status, text, chunks).

    Reads the status first: if it is terminal, the text read after it is the whole answer.
    """
    status = read_meta(r, session_id).status
    parts: list[str] = []
    start = "-"
    key = keys.events(session_id)
    while True:
        entries: list[tuple[str, dict[str, str]]] = cast(Any, r.xrange(key, start, "+", count=page))
        for _entry_id, entry_fields in entries:
            if entry_fields.get(F_TYPE) == EventType.CHUNK:
                parts.append(entry_fields.get(F_TEXT, ""))
        if len(entries) < page:
            break
        start = "(" + entries[-1][0]
    return status, "".join(parts), len(parts)
