"""The atomic append path and leases, on a real Redis, without the API or a worker."""

from __future__ import annotations

import dataclasses
import json

import pytest
import redis
from nanoid import generate as nanoid

from shared import fields, keys, store
from shared.errors import AppendRefused, BadCursor, SessionNotFound
from shared.jobs import GenerationRequest, Message

TTL = 60


@pytest.fixture
def session(r: redis.Redis) -> str:
    session_id = nanoid()
    request = GenerationRequest(model="demo", messages=(Message("user", "hi"),), max_tokens=5)
    store.create_session(r, session_id, request, queue="unused")
    return session_id


def lease(r: redis.Redis, session_id: str) -> str:
    state, token = store.acquire_lease(r, session_id, 10_000)
    assert state == "ok" and token
    return token


def append(
    r: redis.Redis, session_id: str, index: int, token: str, maxlen: int = 1000
) -> str | None:
    return store.append_chunk(
        r, session_id, index, f"c{index}", token=token, maxlen=maxlen, ttl_s=TTL
    )


def test_second_lease_is_refused_while_the_first_lives(r: redis.Redis, session: str) -> None:
    lease(r, session)
    assert store.acquire_lease(r, session, 10_000) == ("held", None)


def test_writes_from_a_worker_that_lost_its_lease_are_refused(r: redis.Redis, session: str) -> None:
    old = lease(r, session)
    append(r, session, 0, old)
    r.delete(keys.lease(session))  # the lease expired
    new = lease(r, session)  # and another worker took the session over
    assert int(new) == int(old) + 1
    with pytest.raises(AppendRefused) as refused:
        append(r, session, 1, old)
    assert refused.value.code == "lease_lost"
    assert append(r, session, 1, new)
    assert store.read_text(r, session)[1:] == ("c0c1", 2)


def test_a_retried_append_does_not_write_twice(r: redis.Redis, session: str) -> None:
    token = lease(r, session)
    assert append(r, session, 0, token)
    assert append(r, session, 0, token) is None
    with pytest.raises(AppendRefused) as gap:
        append(r, session, 2, token)
    assert gap.value.code == "gap"
    assert store.read_text(r, session)[1:] == ("c0", 1)


def test_nothing_is_appended_after_a_terminal_event(r: redis.Redis, session: str) -> None:
    token = lease(r, session)
    append(r, session, 0, token)
    assert store.cancel(r, session, ttl_s=TTL) == (True, "cancelled")
    with pytest.raises(AppendRefused) as refused:
        append(r, session, 1, token)
    assert refused.value.code == "terminal"
    with pytest.raises(AppendRefused):
        store.append_done(
            r, session, token=token, ttl_s=TTL, finish_reason="stop", chunks=1, usage=None
        )
    assert store.cancel(r, session, ttl_s=TTL) == (False, "cancelled")
    assert not r.exists(keys.lease(session))
    types = [fields["t"] for _id, fields in r.xrange(keys.events(session))]
    assert types == ["status", "chunk", "cancelled"]


def test_max_stream_length_ends_with_an_error_not_trimming(r: redis.Redis, session: str) -> None:
    token = lease(r, session)
    maxlen = 5  # queued status + 3 chunks + the error
    for index in range(3):
        append(r, session, index, token, maxlen=maxlen)
    with pytest.raises(AppendRefused) as full:
        append(r, session, 3, token, maxlen=maxlen)
    assert full.value.code == "stream_too_long"
    meta = store.read_meta(r, session)
    assert meta.status == "failed"
    assert meta.error is not None and meta.error["code"] == "stream_too_long"
    assert r.xlen(keys.events(session)) == maxlen
    assert store.read_text(r, session)[1] == "c0c1c2"
    assert 0 < r.ttl(keys.meta(session)) <= TTL


def test_the_meta_record_names_every_field_of_the_hash() -> None:
    names = {value for name, value in vars(fields).items() if name.isupper()}
    assert {f.name for f in dataclasses.fields(store.SessionMeta)} == names | {"session_id"}


def test_the_meta_record_of_a_completed_session(r: redis.Redis, session: str) -> None:
    token = lease(r, session)
    append(r, session, 0, token)
    usage = {"inputTokens": 3, "outputTokens": 1}
    store.append_done(
        r, session, token=token, ttl_s=TTL, finish_reason="stop", chunks=1, usage=usage
    )
    meta = store.read_meta(r, session)
    assert (meta.session_id, meta.status, meta.model) == (session, store.Status.COMPLETED, "demo")
    assert (meta.chunks, meta.attempt, meta.requeues, meta.queue) == (1, 1, 0, "unused")
    assert (meta.finish_reason, meta.usage, meta.error) == ("stop", usage, None)
    assert meta.created_ms is not None and meta.updated_ms is not None
    assert meta.created_ms <= meta.updated_ms
    assert GenerationRequest.from_json(meta.request).max_tokens == 5
    with pytest.raises(SessionNotFound):
        store.read_meta(r, "N" * 21)


@pytest.mark.parametrize(
    "text", ["plain", ' "quoted" \\ back', "new\nline\ttab", "é ✓ 😀", "\x00\x1f"]
)
def test_a_chunk_frame_is_the_json_of_its_event(text: str) -> None:
    event = store.decode_event("1700000000000-7", {"t": "chunk", "i": "41", "x": text})
    assert json.loads(event.json()) == {
        "type": "chunk",
        "id": "1700000000000-7",
        "index": 41,
        "text": text,
    }
    assert event.json() == json.dumps(event, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("raw", ["x", "1", "1-x", " 1-0", "1-0 ", f"{2**64}-0", "0x1-0"])
def test_malformed_cursors(raw: str) -> None:
    with pytest.raises(BadCursor):
        store.parse_cursor(raw)


def test_cursor_normalisation() -> None:
    assert store.parse_cursor(None) is None
    assert store.parse_cursor("") is None
    assert store.parse_cursor("0001-02") == "1-2"
