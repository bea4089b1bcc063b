"""Chats: a chat id (chosen by the client) and the session answering it now.

One key per chat and caller (`keys.chat`), holding `<session id> <message id>`, with the
session's retention. A record is only a pointer: readers check the session's status,
and the record is cleared (compare-and-delete, one key per script: Cluster-safe) when a
reader sees the session has ended, so an ended answer is never served as active.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared import keys
from shared.store import scripts


@dataclass(frozen=True)
class ActiveChat:
    """The session a chat's latest request started, and its assistant message's id."""

    session_id: str
    message_id: str

    def value(self) -> str:
        """The record's stored form (neither id holds a space)."""
        return f"{self.session_id} {self.message_id}"


def record_chat(
    r: redis.Redis,
    chat_id: str,
    active: ActiveChat,
    *,
    ttl_s: int,
    owner: str = "",
    client: str = "",
) -> None:
    """Make `active` the chat's active session (replacing an earlier one)."""
    r.set(keys.chat(chat_id, owner, client), active.value(), ex=ttl_s)


def read_chat(r: redis.Redis, chat_id: str, owner: str = "", client: str = "") -> ActiveChat | None:
    """The chat's recorded session, if any (it may have ended since)."""
    value = r.get(keys.chat(chat_id, owner, client))
    if not value:
        return None
    session_id, _, message_id = str(value).partition(" ")
    return ActiveChat(session_id, message_id)


def clear_chat(
    r: redis.Redis, chat_id: str, active: ActiveChat, owner: str = "", client: str = ""
) -> None:
    """Forget the chat's record if it still names `active` (a newer one stays)."""
    scripts.CHAT_CLEAR.run(r, [keys.chat(chat_id, owner, client)], [active.value()])
