"""The event model: statuses, event types, the event frame and its encoding, cursors.

A session's stream entry has short fields (`F_*`, spelled only here and in
`lua/append.lua`); `decode_event` turns it into the contract's event frame (DESIGN.md 2.2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.errors import BadCursor


class Status(StrEnum):
    """A session's status."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class EventType(StrEnum):
    """The `type` of an event frame."""

    STATUS = "status"
    CHUNK = "chunk"
    REASONING = "reasoning"
    TOOL_CALL = "tool_call"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
TERMINAL_EVENTS = frozenset({EventType.DONE, EventType.ERROR, EventType.CANCELLED})
# The parts of the answer: one `index` sequence counts them together (DESIGN.md 2.5).
CONTENT_EVENTS = frozenset({EventType.CHUNK, EventType.REASONING, EventType.TOOL_CALL})

# Stream entry fields: short, spelled only here (and in the Lua scripts).
F_TYPE, F_INDEX, F_TEXT, F_DATA = "t", "i", "x", "d"

_quote = json.encoder.encode_basestring  # json.dumps's own string encoder (C), no ASCII escaping
_MAX_U64 = 2**64 - 1
# ASCII digits only: `\d` also matches other scripts' digits, `$` a trailing newline.
_CURSOR_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


def dumps(data: Any) -> str:
    """Compact JSON, not ASCII-escaped: how events and meta values are stored."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class Event(dict[str, Any]):
    """An event frame of the contract (DESIGN.md 2.2) as a dict, with its JSON text.

    `decode_event` encodes each event once, as it reads it: the hub hands the same event
    to every follower of a session, so ten followers cost one encoding, not ten.
    """

    __slots__ = ("_utf8",)

    def utf8(self) -> bytes:
        """The frame as compact JSON, UTF-8."""
        try:
            return self._utf8
        except AttributeError:  # built by hand rather than by `decode_event`
            self._utf8: bytes = dumps(self).encode()
            return self._utf8

    def json(self) -> str:
        """The frame as compact JSON text."""
        return self.utf8().decode()


Batch = list[Event]


@dataclass(frozen=True)
class Part:
    """What a content event carries: the text of a `chunk` or of `reasoning`, or the piece
    `call` of a `tool_call` (`{"index", "id"?, "name"?, "arguments"}`)."""

    type: EventType
    text: str = ""
    call: dict[str, Any] | None = None


def parse_cursor(raw: str | None) -> str | None:
    """Validate a client's cursor (`<ms>-<seq>`); `None` or empty means the beginning."""
    if raw is None or raw == "":
        return None
    match = _CURSOR_RE.fullmatch(raw)
    if not match or int(match[1]) > _MAX_U64 or int(match[2]) > _MAX_U64:
        raise BadCursor(f"cursor {raw[:64]!r} is not a stream entry id like 1700000000000-0")
    return f"{int(match[1])}-{int(match[2])}"


def decode_event(entry_id: str, entry_fields: dict[str, str]) -> Event:
    """A stream entry as the contract's event frame."""
    etype = entry_fields.get(F_TYPE, "")
    if etype == EventType.CHUNK or etype == EventType.REASONING:
        index, text = int(entry_fields.get(F_INDEX, 0)), entry_fields.get(F_TEXT, "")
        event = Event(type=etype, id=entry_id, index=index, text=text)
        # Nearly every event is a chunk: spelled out it encodes several times faster, to
        # the same text `json.dumps` gives.
        event._utf8 = (
            f'{{"type":"{etype}","id":"{entry_id}","index":{index:d},"text":{_quote(text)}}}'
        ).encode()
        return event
    if F_INDEX in entry_fields:  # a content event of another kind: its index before its data
        event = Event(type=etype, id=entry_id, index=int(entry_fields[F_INDEX]))
    else:
        event = Event(type=etype, id=entry_id)
    if F_DATA in entry_fields:
        event.update(json.loads(entry_fields[F_DATA]))
    event._utf8 = dumps(event).encode()
    return event


def until_terminal(events: Batch) -> tuple[Batch, bool]:
    """`events` up to and including a terminal event: (those events, whether one came)."""
    for n, event in enumerate(events):
        if event["type"] in TERMINAL_EVENTS:
            return events[: n + 1], True
    return events, False


def decode_batch(entries: list[tuple[str, dict[str, str]]]) -> tuple[Batch, bool]:
    """Decode entries up to and including a terminal event: (events, whether it ended)."""
    return until_terminal([decode_event(entry_id, values) for entry_id, values in entries])
