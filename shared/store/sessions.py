"""Sessions: creating one, its owner, Idempotency-Keys, and reading its meta as a record."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from shared import fields, keys
from shared.errors import AppendRefused, IdempotencyConflict, SessionNotFound
from shared.jobs import GenerationRequest
from shared.store import scripts
from shared.store.events import Status, dumps

# The listing shows at most this many of an owner's newest sessions; older ids are trimmed
# from the index as new ones come in, so an owner who never lists cannot grow it forever.
OWNER_INDEX_MAX = 10_000


def now_ms() -> int:
    """Milliseconds since the epoch, as stored in meta."""
    return int(time.time() * 1000)


@dataclass(frozen=True)
class SessionMeta:
    """A session's meta hash (`keys.meta`), read at one moment.

    The attributes are the hash's fields (`shared/fields.py`), typed; a field the hash
    lacks has its default.
    """

    session_id: str
    status: Status
    model: str | None = None
    request: str = ""  # the stored `GenerationRequest` as JSON
    owner: str = ""
    queue: str = ""
    created_ms: int | None = None
    updated_ms: int | None = None
    enqueued_ms: int | None = None
    chunks: int = 0
    last_id: str = ""
    attempt: int = 0
    worker: str = ""
    requeues: int = 0
    finish_reason: str = ""
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None  # `{"code", "message"}`
    response: dict[str, Any] | None = None  # the Responses API's own request fields

    @classmethod
    def from_hash(cls, session_id: str, meta: Mapping[str, str]) -> SessionMeta:
        """The record of a meta hash as HGETALL returns it (which has a status)."""

        def ms(name: str) -> int | None:
            value = meta.get(name)
            return int(value) if value else None

        def parsed(name: str) -> Any:
            value = meta.get(name)
            return json.loads(value) if value else None

        return cls(
            session_id=session_id,
            status=Status(meta[fields.STATUS]),
            model=meta.get(fields.MODEL),
            request=meta.get(fields.REQUEST, ""),
            owner=meta.get(fields.OWNER, ""),
            queue=meta.get(fields.QUEUE, ""),
            created_ms=ms(fields.CREATED_MS),
            updated_ms=ms(fields.UPDATED_MS),
            enqueued_ms=ms(fields.ENQUEUED_MS),
            chunks=int(meta.get(fields.CHUNKS, 0)),
            last_id=meta.get(fields.LAST_ID, ""),
            attempt=int(meta.get(fields.ATTEMPT, 0)),
            worker=meta.get(fields.WORKER, ""),
            requeues=int(meta.get(fields.REQUEUES, 0)),
            finish_reason=meta.get(fields.FINISH_REASON, ""),
            usage=parsed(fields.USAGE),
            error=parsed(fields.ERROR),
            response=parsed(fields.RESPONSE),
        )


def meta_of(session_id: str, meta: Mapping[Any, Any]) -> SessionMeta | None:
    """The record of an HGETALL answer (or of some fields, HMGET's None for a missing
    one); None if the session does not exist."""
    if meta.get(fields.STATUS) is None:
        return None
    return SessionMeta.from_hash(
        session_id, {str(k): str(v) for k, v in meta.items() if v is not None}
    )


def read_meta(r: redis.Redis, session_id: str) -> SessionMeta:
    """The session's meta; raises `SessionNotFound`."""
    meta = meta_of(session_id, r.hgetall(keys.meta(session_id)))
    if meta is None:
        raise SessionNotFound(f"no session {session_id}")
    return meta


def create_session(
    r: redis.Redis,
    session_id: str,
    request: GenerationRequest,
    *,
    queue: str,
    owner: str = "",
    extra: Mapping[str, str] | None = None,
) -> str:
    """Store a new session (`queued`) with its request and first event; returns that event's id.

    `extra`: more meta fields stored in the same step (`fields.RESPONSE`).
    """
    now = now_ms()
    meta = {
        fields.STATUS: Status.QUEUED.value,
        fields.MODEL: request.model,
        fields.REQUEST: request.to_json(),
        fields.CREATED_MS: now,
        fields.UPDATED_MS: now,
        fields.CHUNKS: 0,
        fields.ATTEMPT: 0,
        fields.QUEUE: queue,
        fields.ENQUEUED_MS: now,
        fields.OWNER: owner,
        **(extra or {}),
    }
    args: list[Any] = [dumps({"status": Status.QUEUED.value})]
    for name, value in meta.items():
        args += [name, value]
    event_id = scripts.CREATE.run(r, [keys.meta(session_id), keys.events(session_id)], args)
    if not event_id:
        raise AppendRefused(f"session {session_id} exists already", code="exists")
    if not owner:  # open mode: nobody lists sessions
        r.zadd(keys.active(), {session_id: now})
        return str(event_id)
    # One round trip for the indexes; not a transaction, so the keys may live on any nodes.
    index = keys.owner_sessions(owner)
    pipe = r.pipeline(transaction=False)
    pipe.zadd(keys.active(), {session_id: now})
    pipe.zadd(index, {session_id: now})
    pipe.zremrangebyrank(index, 0, -(OWNER_INDEX_MAX + 1))
    pipe.execute()
    return str(event_id)


def check_owner(r: redis.Redis, session_id: str, owner: str) -> None:
    """Raise `SessionNotFound` unless `owner` created the session (another's is not found)."""
    if r.hget(keys.meta(session_id), fields.OWNER) != owner:
        raise SessionNotFound(f"no session {session_id}")


def claim_idempotency_key(
    r: redis.Redis,
    key: str,
    session_id: str,
    fingerprint: str,
    ttl_s: int,
    owner: str = "",
    client: str = "",
) -> str | None:
    """Bind `key` to `session_id`; returns the session an earlier request bound it to, if any.

    Keys are per owner (or per client in open mode, `keys.idempotency`): two API keys
    sending the same Idempotency-Key get two sessions. The earlier session may not be
    stored yet: its request may still be running.
    """
    name = keys.idempotency(key, owner, client)
    value = f"{session_id}:{fingerprint}"
    existing = None
    while existing is None:
        if r.set(name, value, nx=True, ex=ttl_s):
            return None
        existing = r.get(name)  # None: released (its request failed) since our SET
    earlier_id, _, earlier_fingerprint = str(existing).partition(":")
    if earlier_fingerprint != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    return earlier_id


def release_idempotency_key(r: redis.Redis, key: str, owner: str = "", client: str = "") -> None:
    """Forget a key whose session could not be created, so a retry can try again."""
    r.delete(keys.idempotency(key, owner, client))
