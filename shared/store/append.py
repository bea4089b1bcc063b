"""Appends: every write to a session's stream runs `lua/append.lua`, one atomic step.

The script refuses writes to a terminal session and writes from a worker whose lease
(fencing token) is not the current one, checks chunk indices so a retried append cannot
write twice, and changes the status in the same step as the event that causes it.
"""

from __future__ import annotations

from typing import Any

import redis

from shared import fields, keys
from shared.errors import AppendRefused, SessionNotFound
from shared.redisconn import is_cluster
from shared.store import scripts
from shared.store.events import TERMINAL_STATUSES, EventType, Part, Status, dumps
from shared.store.sessions import now_ms


def _keys(r: Any, session_id: str) -> list[str]:
    """The append script's keys for `r` (a client or pipeline): on a cluster also the
    session's channel, which the script then publishes each new entry's id to."""
    keys_ = [keys.meta(session_id), keys.events(session_id), keys.lease(session_id)]
    if is_cluster(r):
        keys_.append(keys.notify(session_id))
    return keys_


def _args(
    etype: EventType,
    *,
    token: str,
    maxlen: int,
    ttl_s: int,
    text: str = "",
    index: int = 0,
    data: dict[str, Any] | None = None,
    new_status: Status | None = None,
    meta_fields: dict[str, Any] | None = None,
) -> list[Any]:
    args: list[Any] = [
        token,
        etype.value,
        text,
        index,
        dumps(data) if data else "",
        now_ms(),
        maxlen,
        ttl_s,
        new_status.value if new_status else "",
    ]
    for name, value in (meta_fields or {}).items():
        args += [name, value]
    return args


def _append(
    r: redis.Redis,
    session_id: str,
    etype: EventType,
    *,
    new_status: Status | None = None,
    **options: Any,
) -> str | None:
    """Run the atomic append script; `options` are `_args`'s."""
    args = _args(etype, new_status=new_status, **options)
    answer = scripts.APPEND.run(r, _keys(r, session_id), args)
    return _result(r, session_id, new_status, answer)


def _result(r: redis.Redis, session_id: str, new_status: Status | None, answer: Any) -> str | None:
    result = str(answer)
    if result == "!duplicate":
        return None
    if (new_status in TERMINAL_STATUSES and not result.startswith("!")) or (
        result == "!stream_too_long"
    ):
        r.zrem(keys.active(), session_id)
    if result.startswith("!"):
        code = result[1:]
        raise AppendRefused(f"append to session {session_id} refused: {code}", code=code)
    return result


def _content_args(index: int, part: Part, *, token: str, maxlen: int, ttl_s: int) -> list[Any]:
    data = {"call": part.call} if part.call is not None else None
    return _args(
        part.type, token=token, maxlen=maxlen, ttl_s=ttl_s, text=part.text, index=index, data=data
    )


def append_content(
    r: redis.Redis, session_id: str, index: int, part: Part, *, token: str, maxlen: int, ttl_s: int
) -> str | None:
    """Append content event `index` (a chunk, reasoning or a tool call's piece); `None` if
    that index was written already (a retried append)."""
    args = _content_args(index, part, token=token, maxlen=maxlen, ttl_s=ttl_s)
    return _result(r, session_id, None, scripts.APPEND.run(r, _keys(r, session_id), args))


def append_chunk(
    r: redis.Redis, session_id: str, index: int, text: str, *, token: str, maxlen: int, ttl_s: int
) -> str | None:
    """`append_content` of a text chunk."""
    part = Part(EventType.CHUNK, text)
    return append_content(r, session_id, index, part, token=token, maxlen=maxlen, ttl_s=ttl_s)


def queue_content(
    pipe: Any, session_id: str, index: int, part: Part, *, token: str, maxlen: int, ttl_s: int
) -> None:
    """Queue the append of content event `index` into `pipe`; read its answer with
    `content_result`.

    `pipe` is a non-transactional pipeline: each call is the same atomic script on one
    session's keys, so a pipeline of many sessions' chunks also works on Redis Cluster.
    Run `load_scripts` first (again after a `NoScriptError` answer): a pipeline cannot
    load a missing script by itself.
    """
    args = _content_args(index, part, token=token, maxlen=maxlen, ttl_s=ttl_s)
    scripts.APPEND.queue(pipe, _keys(pipe, session_id), args)


def content_result(r: redis.Redis, session_id: str, answer: Any) -> str | None:
    """What `append_content` returns for a queued event's `answer`; raises `AppendRefused`."""
    return _result(r, session_id, None, answer)


def append_status(
    r: redis.Redis, session_id: str, status: str, *, token: str, ttl_s: int, **extra: Any
) -> str | None:
    """Append a `status` event (`running`, `resumed`) and set the session running."""
    return _append(
        r,
        session_id,
        EventType.STATUS,
        token=token,
        maxlen=0,
        ttl_s=ttl_s,
        data={"status": status, **extra},
        new_status=Status.RUNNING,
    )


def append_done(
    r: redis.Redis,
    session_id: str,
    *,
    token: str,
    ttl_s: int,
    finish_reason: str,
    chunks: int,
    usage: dict[str, Any] | None,
) -> str | None:
    """Append the terminal `done` event; the session becomes `completed` in the same step."""
    data: dict[str, Any] = {"finishReason": finish_reason, "chunks": chunks}
    meta: dict[str, Any] = {fields.FINISH_REASON: finish_reason}
    if usage:
        data["usage"] = usage
        meta[fields.USAGE] = dumps(usage)
    return _append(
        r,
        session_id,
        EventType.DONE,
        token=token,
        maxlen=0,
        ttl_s=ttl_s,
        data=data,
        new_status=Status.COMPLETED,
        meta_fields=meta,
    )


def append_error(
    r: redis.Redis, session_id: str, code: str, message: str, *, token: str, ttl_s: int
) -> str | None:
    """Append the terminal `error` event; the session becomes `failed` in the same step."""
    error = {"code": code, "message": message}
    return _append(
        r,
        session_id,
        EventType.ERROR,
        token=token,
        maxlen=0,
        ttl_s=ttl_s,
        data={"error": error},
        new_status=Status.FAILED,
        meta_fields={fields.ERROR: dumps(error)},
    )


def cancel(r: redis.Redis, session_id: str, *, ttl_s: int) -> tuple[bool, str]:
    """Write the terminal `cancelled` event; returns (whether it was live, the final status)."""
    try:
        _append(
            r,
            session_id,
            EventType.CANCELLED,
            token="",
            maxlen=0,
            ttl_s=ttl_s,
            new_status=Status.CANCELLED,
        )
    except AppendRefused as e:
        if e.code == "not_found":
            raise SessionNotFound(f"no session {session_id}") from e
        status = r.hget(keys.meta(session_id), fields.STATUS)
        if status is None:
            raise SessionNotFound(f"no session {session_id}") from e
        return False, str(status)
    return True, Status.CANCELLED.value
