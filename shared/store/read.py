"""Reading a session's stream: the whole text, catch-up reads, and whether it has ended."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from shared import keys
from shared.store.events import (
    CONTENT_EVENTS,
    F_DATA,
    F_TEXT,
    F_TYPE,
    TERMINAL_STATUSES,
    EventType,
)
from shared.store.sessions import SessionMeta, read_meta


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


@dataclass
class Answer:
    """What a session has generated so far, assembled from its content events."""

    # Read before the events: when its status is terminal, the events are the whole answer.
    meta: SessionMeta
    text: str = ""
    reasoning: str = ""
    # As a chat message carries them: `{"id", "type": "function", "function": {"name",
    # "arguments"}}`, in order.
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    # Content events: chunks, reasoning and tool-call pieces together.
    chunks: int = 0


def read_answer(r: redis.Redis, session_id: str, page: int = 1000) -> Answer:
    """Everything generated so far, assembled."""
    answer = Answer(read_meta(r, session_id))
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    start = "-"
    key = keys.events(session_id)
    while True:
        entries: list[tuple[str, dict[str, str]]] = cast(Any, r.xrange(key, start, "+", count=page))
        for _entry_id, entry in entries:
            kind = entry.get(F_TYPE)
            if kind not in CONTENT_EVENTS:
                continue
            answer.chunks += 1
            if kind == EventType.CHUNK:
                text.append(entry.get(F_TEXT, ""))
            elif kind == EventType.REASONING:
                reasoning.append(entry.get(F_TEXT, ""))
            else:
                piece = json.loads(entry[F_DATA])["call"]
                call = calls.setdefault(
                    piece["index"],
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = piece.get("id") or call["id"]
                call["function"]["name"] = piece.get("name") or call["function"]["name"]
                call["function"]["arguments"] += piece["arguments"]
        if len(entries) < page:
            break
        start = "(" + entries[-1][0]
    answer.text, answer.reasoning = "".join(text), "".join(reasoning)
    answer.tool_calls = [calls[i] for i in sorted(calls)]
    return answer


def read_text(r: redis.Redis, session_id: str) -> tuple[str, str, int]:
    """Everything generated so far: (status, text, content events)."""
    answer = read_answer(r, session_id)
    return answer.meta.status, answer.text, answer.chunks
