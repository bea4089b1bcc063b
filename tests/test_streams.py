"""The atomic append path and leases, on a real Redis, without the API or a worker."""

from __future__ import annotations

import json

import pytest
import redis
from nanoid import generate as nanoid

from shared import keys, streams
from shared.errors import AppendRefused, BadCursor
from shared.jobs import GenerationRequest, Message

TTL = 60


@pytest.fixture
def session(r: redis.Redis) -> str:
    session_id = nanoid()
    request = GenerationRequest(model="demo", messages=(Message("user", "hi"),), max_tokens=5)
    streams.create_session(r, session_id, request, queue="unused")
    return session_id


def lease(r: redis.Redis, session_id: str) -> str:
    state, token = streams.acquire_lease(r, session_id, 10_000)
    assert state == "ok" and token
    return token


def append(
    r: redis.Redis, session_id: str, index: int, token: str, maxlen: int = 1000
) -> str | None:
    return streams.append_chunk(
        r, session_id, index, f"c{index}", token=token, maxlen=maxlen, ttl_s=TTL
    )


def test_second_lease_is_refused_while_the_first_lives(r: redis.Redis, session: str) -> None:
    lease(r, session)
    assert streams.acquire_lease(r, session, 10_000) == ("held", None)


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
    assert streams.read_text(r, session)[1:] == ("c0c1", 2)


def test_a_retried_append_does_not_write_twice(r: redis.Redis, session: str) -> None:
    token = lease(r, session)
    assert append(r, session, 0, token)
    assert append(r, session, 0, token) is None
    with pytest.raises(AppendRefused) as gap:
        append(r, session, 2, token)
    assert gap.value.code == "gap"
    assert streams.read_text(r, session)[1:] == ("c0", 1)


def test_nothing_is_appended_after_a_terminal_event(r: redis.Redis, session: str) -> None:
    token = lease(r, session)
    append(r, session, 0, token)
    assert streams.cancel(r, session, ttl_s=TTL) == (True, "cancelled")
    with pytest.raises(AppendRefused) as refused:
        append(r, session, 1, token)
    assert refused.value.code == "terminal"
    with pytest.raises(AppendRefused):
        streams.append_done(
            r, session, token=token, ttl_s=TTL, finish_reason="stop", chunks=1, usage=None
        )
    assert streams.cancel(r, session, ttl_s=TTL) == (False, "cancelled")
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
    info = streams.info(r, session)
    assert info["status"] == "failed"
    assert info["error"]["code"] == "stream_too_long"
    assert r.xlen(keys.events(session)) == maxlen
    assert streams.read_text(r, session)[1] == "c0c1c2"
    assert 0 < r.ttl(keys.meta(session)) <= TTL


@pytest.mark.parametrize(
    "text", ["plain", ' "quoted" \\ back', "new\nline\ttab", "é ✓ 😀", "\x00\x1f"]
)
def test_a_chunk_frame_is_the_json_of_its_event(text: str) -> None:
    event = streams.decode_event("1700000000000-7", {"t": "chunk", "i": "41", "x": text})
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
        streams.parse_cursor(raw)


def test_cursor_normalisation() -> None:
    assert streams.parse_cursor(None) is None
    assert streams.parse_cursor("") is None
    assert streams.parse_cursor("0001-02") == "1-2"
