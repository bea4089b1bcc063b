"""The store: sessions in Redis, their events, the one atomic append path, leases, reads.

One module per concern (docs/ARCHITECTURE.md, "Where things live"): `events` (statuses,
event frames, cursors), `sessions` (creation, Idempotency-Keys, the meta record),
`append` (every write to a stream), `leases`, `read`, and `scripts` (the Lua scripts of
`lua/`, read once at import). Callers use the names exported here: `store.append_content(...)`.
"""

from shared.store.append import (
    append_chunk,
    append_content,
    append_done,
    append_error,
    append_status,
    cancel,
    content_result,
    queue_content,
)
from shared.store.chats import ActiveChat, clear_chat, read_chat, record_chat
from shared.store.events import (
    CONTENT_EVENTS,
    TERMINAL_STATUSES,
    Batch,
    Event,
    EventType,
    Part,
    Status,
    decode_batch,
    decode_event,
    parse_cursor,
    until_terminal,
)
from shared.store.leases import acquire_lease, queue_renew, release_lease
from shared.store.read import Answer, has_nothing_after, read_answer, read_text
from shared.store.scripts import load_scripts
from shared.store.sessions import (
    SessionMeta,
    check_owner,
    claim_idempotency_key,
    create_session,
    meta_of,
    now_ms,
    read_meta,
    release_idempotency_key,
)

__all__ = [
    "CONTENT_EVENTS",
    "TERMINAL_STATUSES",
    "ActiveChat",
    "Answer",
    "Batch",
    "Event",
    "EventType",
    "Part",
    "SessionMeta",
    "Status",
    "acquire_lease",
    "append_chunk",
    "append_content",
    "append_done",
    "append_error",
    "append_status",
    "cancel",
    "check_owner",
    "claim_idempotency_key",
    "clear_chat",
    "content_result",
    "create_session",
    "decode_batch",
    "decode_event",
    "has_nothing_after",
    "load_scripts",
    "meta_of",
    "now_ms",
    "parse_cursor",
    "queue_content",
    "queue_renew",
    "read_answer",
    "read_chat",
    "read_meta",
    "read_text",
    "record_chat",
    "release_idempotency_key",
    "release_lease",
    "until_terminal",
]
