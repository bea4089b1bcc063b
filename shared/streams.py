"""Sessions in Redis: creation, the one atomic append path, leases, reading and following.

Every write to a session's stream goes through `_APPEND` (a Lua script), which refuses
writes to a terminal session and writes from a worker whose lease (fencing token) is not
the current one, checks chunk indices so a retried append cannot write twice, and changes
the status in the same step as the event that causes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import redis

from shared import fields, keys
from shared.errors import AppendRefused, BadCursor, IdempotencyConflict, SessionNotFound
from shared.jobs import GenerationRequest
from shared.redisconn import is_cluster, run_script

log = logging.getLogger(__name__)


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
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
TERMINAL_EVENTS = frozenset({EventType.DONE, EventType.ERROR, EventType.CANCELLED})

# Stream entry fields: short, spelled only here.
F_TYPE, F_INDEX, F_TEXT, F_DATA = "t", "i", "x", "d"

_quote = json.encoder.encode_basestring  # json.dumps's own string encoder (C), no ASCII escaping
_MAX_U64 = 2**64 - 1
# The listing shows at most this many of an owner's newest sessions; older ids are trimmed
# from the index as new ones come in, so an owner who never lists cannot grow it forever.
OWNER_INDEX_MAX = 10_000
# ASCII digits only: `\d` also matches other scripts' digits, `$` a trailing newline.
_CURSOR_RE = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")


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
            self._utf8: bytes = _dumps(self).encode()
            return self._utf8

    def json(self) -> str:
        """The frame as compact JSON text."""
        return self.utf8().decode()


Batch = list[Event]

_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local id = redis.call('XADD', KEYS[2], '*', 't', 'status', 'd', ARGV[1])
redis.call('HSET', KEYS[1], 'last_id', id)
return id
"""

# KEYS: meta, events, lease
# ARGV: token, type, text, index, data, now_ms, maxlen, ttl_s, new_status, [field, value]...
_APPEND = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return '!not_found' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return '!terminal'
end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then
  return '!lease_lost'
end
local now = ARGV[6]
local function finish()
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('EXPIRE', KEYS[2], ARGV[8])
  redis.call('DEL', KEYS[3])
end
if ARGV[2] == 'chunk' then
  local chunks = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')
  local index = tonumber(ARGV[4])
  if index < chunks then return '!duplicate' end
  if index > chunks then return '!gap' end
  if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[7]) - 1 then
    local err = cjson.encode({code = 'stream_too_long',
      message = 'The answer reached the maximum stream length (' .. ARGV[7] .. ' events).'})
    local id = redis.call('XADD', KEYS[2], '*', 't', 'error', 'd', '{"error":' .. err .. '}')
    redis.call('HSET', KEYS[1], 'status', 'failed', 'error', err, 'updated_ms', now,
      'last_id', id)
    finish()
    return '!stream_too_long'
  end
  local id = redis.call('XADD', KEYS[2], '*', 't', 'chunk', 'i', ARGV[4], 'x', ARGV[3])
  redis.call('HSET', KEYS[1], 'chunks', chunks + 1, 'updated_ms', now, 'last_id', id)
  return id
end
local id
if ARGV[5] == '' then
  id = redis.call('XADD', KEYS[2], '*', 't', ARGV[2])
else
  id = redis.call('XADD', KEYS[2], '*', 't', ARGV[2], 'd', ARGV[5])
end
redis.call('HSET', KEYS[1], 'updated_ms', now, 'last_id', id)
if #ARGV > 9 then redis.call('HSET', KEYS[1], unpack(ARGV, 10)) end
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'status', ARGV[9])
  if ARGV[9] == 'completed' or ARGV[9] == 'failed' or ARGV[9] == 'cancelled' then
    finish()
  end
end
return id
"""

# In cluster mode one XREAD cannot follow the sessions of many slots, so the API's
# followers learn of new entries by sharded pub/sub: this variant of `_APPEND` also
# SPUBLISHes the new entry's id to the session's channel, KEYS[4] (same hash tag, so same
# slot; Redis 7+). Standalone Redis runs `_APPEND` itself, unchanged.
_APPEND_NOTIFY = (
    "local function append()\n"
    + _APPEND
    + """end
local id = append()
if string.sub(id, 1, 1) ~= '!' then
  redis.call('SPUBLISH', KEYS[4], id)
elseif id == '!stream_too_long' then
  redis.call('SPUBLISH', KEYS[4], '')
end
return id
"""
)

# The fencing token is the meta's `attempt`: taking the lease increments it, and the
# append refuses a token that is not the current one. The lease key itself says that the
# holder is alive; the reaper hands sessions whose lease key expired to another worker.
# KEYS: meta, lease; ARGV: ttl_ms, worker
_ACQUIRE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'not_found'} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {'terminal'}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'held'} end
local token = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'worker', ARGV[2])
redis.call('SET', KEYS[2], token, 'PX', ARGV[1])
return {'ok', tostring(token)}
"""

# Renewing also re-creates a lease key that expired while Redis was unreachable, as long
# as nobody took the session over meanwhile (the token is still the current attempt).
# KEYS: meta, lease; ARGV: token, ttl_ms
_RENEW = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'completed' or status == 'failed' or status == 'cancelled' then
  return 0
end
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@functools.cache
def _sha(source: str) -> str:
    # Redis names a script by the SHA1 of its text (EVALSHA), not for security.
    return hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


def now_ms() -> int:
    """Milliseconds since the epoch, as stored in meta."""
    return int(time.time() * 1000)


def iso_ms(ms: int | str | None) -> str | None:
    """`1700000000123` -> `2023-11-14T22:13:20.123Z`."""
    if ms in (None, ""):
        return None
    dt = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_cursor(raw: str | None) -> str | None:
    """Validate a client's cursor (`<ms>-<seq>`); `None` or empty means the beginning."""
    if raw is None or raw == "":
        return None
    match = _CURSOR_RE.fullmatch(raw)
    if not match or int(match[1]) > _MAX_U64 or int(match[2]) > _MAX_U64:
        raise BadCursor(f"cursor {raw[:64]!r} is not a stream entry id like 1700000000000-0")
    return f"{int(match[1])}-{int(match[2])}"


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def create_session(
    r: redis.Redis,
    session_id: str,
    request: GenerationRequest,
    *,
    queue: str,
    owner: str = "",
) -> str:
    """Store a new session (`queued`) with its request and first event; returns that event's id."""
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
    }
    args: list[Any] = [_dumps({"status": Status.QUEUED.value})]
    for name, value in meta.items():
        args += [name, value]
    event_id = run_script(r, _CREATE, [keys.meta(session_id), keys.events(session_id)], args)
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


def _append(
    r: redis.Redis,
    session_id: str,
    etype: EventType,
    *,
    new_status: Status | None = None,
    **options: Any,
) -> str | None:
    """Run the atomic append script; `options` are `_append_args`'s."""
    args = _append_args(etype, new_status=new_status, **options)
    source, keys_ = _append_script(r, session_id)
    return _append_result(r, session_id, new_status, run_script(r, source, keys_, args))


def _append_script(r: Any, session_id: str) -> tuple[str, list[str]]:
    """The append script for `r` (a client or pipeline) and its keys: on a cluster the
    variant that also publishes to the session's channel."""
    keys_ = [keys.meta(session_id), keys.events(session_id), keys.lease(session_id)]
    if is_cluster(r):
        return _APPEND_NOTIFY, [*keys_, keys.notify(session_id)]
    return _APPEND, keys_


def _append_args(
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
        _dumps(data) if data else "",
        now_ms(),
        maxlen,
        ttl_s,
        new_status.value if new_status else "",
    ]
    for name, value in (meta_fields or {}).items():
        args += [name, value]
    return args


def _append_result(
    r: redis.Redis, session_id: str, new_status: Status | None, answer: Any
) -> str | None:
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


def append_chunk(
    r: redis.Redis, session_id: str, index: int, text: str, *, token: str, maxlen: int, ttl_s: int
) -> str | None:
    """Append chunk `index`; `None` if that index was written already (a retried append)."""
    return _append(
        r,
        session_id,
        EventType.CHUNK,
        token=token,
        maxlen=maxlen,
        ttl_s=ttl_s,
        text=text,
        index=index,
    )


def queue_chunk(
    pipe: Any, session_id: str, index: int, text: str, *, token: str, maxlen: int, ttl_s: int
) -> None:
    """Queue the append of chunk `index` into `pipe`; read its answer with `chunk_result`.

    `pipe` is a non-transactional pipeline: each call is the same atomic script on one
    session's keys, so a pipeline of many sessions' chunks also works on Redis Cluster.
    Run `load_scripts` first (again after a `NoScriptError` answer): a pipeline cannot
    load a missing script by itself.
    """
    args = _append_args(
        EventType.CHUNK, token=token, maxlen=maxlen, ttl_s=ttl_s, text=text, index=index
    )
    source, keys_ = _append_script(pipe, session_id)
    # redis-py's cluster pipeline refuses its `evalsha` method but routes the command by
    # its keys.
    pipe.execute_command("EVALSHA", _sha(source), len(keys_), *keys_, *args)


def chunk_result(r: redis.Redis, session_id: str, answer: Any) -> str | None:
    """What `append_chunk` returns for a queued chunk's `answer`; raises `AppendRefused`."""
    return _append_result(r, session_id, None, answer)


def load_scripts(r: redis.Redis) -> None:
    """Load the scripts `queue_chunk` and `queue_renew` run into Redis (a cluster's primaries)."""
    for source in (_APPEND_NOTIFY if is_cluster(r) else _APPEND, _RENEW):
        r.script_load(source)


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
        meta[fields.USAGE] = _dumps(usage)
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
        meta_fields={fields.ERROR: _dumps(error)},
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


def acquire_lease(
    r: redis.Redis, session_id: str, ttl_ms: int, worker: str = ""
) -> tuple[str, str | None]:
    """Take the session's lease: ("ok", token), or (held|terminal|not_found, None)."""
    result = run_script(
        r, _ACQUIRE, [keys.meta(session_id), keys.lease(session_id)], [ttl_ms, worker]
    )
    return (str(result[0]), str(result[1]) if len(result) > 1 else None)


def queue_renew(pipe: Any, session_id: str, token: str, ttl_ms: int) -> None:
    """Queue a lease renewal into a non-transactional `pipe`: 1 if `token` still held the
    lease and it was extended, 0 if it was lost or the session ended.

    Run `load_scripts` first.
    """
    keys_ = [keys.meta(session_id), keys.lease(session_id)]
    pipe.execute_command("EVALSHA", _sha(_RENEW), len(keys_), *keys_, token, ttl_ms)


def release_lease(r: redis.Redis, session_id: str, token: str) -> None:
    """Give the lease up if `token` still holds it."""
    run_script(r, _RELEASE, [keys.lease(session_id)], [token])


def read_meta(r: redis.Redis, session_id: str) -> dict[str, str]:
    """The session's meta hash; raises `SessionNotFound`."""
    meta = r.hgetall(keys.meta(session_id))
    if not meta or fields.STATUS not in meta:
        raise SessionNotFound(f"no session {session_id}")
    return {str(k): str(v) for k, v in meta.items()}


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


def info(r: redis.Redis, session_id: str) -> dict[str, Any]:
    """The contract's stream info object (`GET /api/streams/generate?sessionId=`)."""
    return info_of(session_id, read_meta(r, session_id))


def info_of(session_id: str, meta: dict[str, str]) -> dict[str, Any]:
    """The stream info object of a session whose meta hash is `meta`."""
    out: dict[str, Any] = {
        "sessionId": session_id,
        "status": meta[fields.STATUS],
        "model": meta.get(fields.MODEL),
        "chunks": int(meta.get(fields.CHUNKS, 0)),
        "createdAt": iso_ms(meta.get(fields.CREATED_MS)),
        "updatedAt": iso_ms(meta.get(fields.UPDATED_MS)),
    }
    if meta.get(fields.FINISH_REASON):
        out["finishReason"] = meta[fields.FINISH_REASON]
    if meta.get(fields.USAGE):
        out["usage"] = json.loads(meta[fields.USAGE])
    if meta.get(fields.ERROR):
        out["error"] = json.loads(meta[fields.ERROR])
    return out


def decode_event(entry_id: str, entry_fields: dict[str, str]) -> Event:
    """A stream entry as the contract's event frame."""
    etype = entry_fields.get(F_TYPE, "")
    if etype == EventType.CHUNK:
        index, text = int(entry_fields.get(F_INDEX, 0)), entry_fields.get(F_TEXT, "")
        event = Event(type=etype, id=entry_id, index=index, text=text)
        # Nearly every event is a chunk: spelled out it encodes several times faster, to
        # the same text `json.dumps` gives.
        event._utf8 = (
            f'{{"type":"chunk","id":"{entry_id}","index":{index:d},"text":{_quote(text)}}}'
        ).encode()
        return event
    event = Event(type=etype, id=entry_id)
    if F_DATA in entry_fields:
        event.update(json.loads(entry_fields[F_DATA]))
    event._utf8 = _dumps(event).encode()
    return event


def xread_entries(response: Any) -> list[tuple[str, dict[str, str]]]:
    """The entries of an XREAD answer for one stream, in order."""
    # RESP2 answers XREAD with [[key, entries]], RESP3 with {key: [entries]}.
    if not response:
        return []
    if isinstance(response, dict):
        return [e for value in response.values() for entries in value for e in entries]
    return [e for _key, entries in response for e in entries]


def read_text(r: redis.Redis, session_id: str, page: int = 1000) -> tuple[str, str, int]:
    """Everything generated so far: (status, text, chunks).

    Reads the status first: if it is terminal, the text read after it is the whole answer.
    """
    status = read_meta(r, session_id)[fields.STATUS]
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


def until_terminal(events: Batch) -> tuple[Batch, bool]:
    """`events` up to and including a terminal event: (those events, whether one came)."""
    for n, event in enumerate(events):
        if event["type"] in TERMINAL_EVENTS:
            return events[: n + 1], True
    return events, False


def decode_batch(entries: list[tuple[str, dict[str, str]]]) -> tuple[Batch, bool]:
    """Decode entries up to and including a terminal event: (events, whether it ended)."""
    return until_terminal([decode_event(entry_id, values) for entry_id, values in entries])
