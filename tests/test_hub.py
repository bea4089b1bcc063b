"""The per-process fan-out: one Redis reader however many followers, slow followers
that fall behind catch up on their own without losing anything, and the follow itself
(replay from a cursor, a vanished session)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
import websocket
from nanoid import generate as nanoid

from api import fanout as fanoutmod
from api.readers import xread_fanout
from rstreams.localredis import LocalRedis
from shared import keys, store
from shared.errors import SessionNotFound
from shared.jobs import GenerationRequest, Message
from shared.redisconn import connect
from tests import client
from tests.test_metrics import scrape, value
from tests.waiting import wait_until


def leased_session(r: redis.Redis, prompt: str = "hub", lease_ms: int = 60_000) -> tuple[str, str]:
    """A session written straight to `r` (no worker) and leased: (its id, the lease token)."""
    session_id = nanoid()
    request = GenerationRequest(model="demo", messages=(Message("user", prompt),))
    store.create_session(r, session_id, request, queue="unused")
    _state, token = store.acquire_lease(r, session_id, lease_ms)
    assert token
    return session_id, token


@pytest.fixture
def own_r(own_redis: LocalRedis) -> Iterator[redis.Redis]:
    """A client of the test's own Redis (`own_redis`), closed however the test ends."""
    conn = redis.Redis.from_url(own_redis.url, decode_responses=True)
    yield conn
    conn.close()


@pytest.fixture
def session(r: redis.Redis) -> tuple[str, str]:
    return leased_session(r)


def append(r: redis.Redis, session_id: str, token: str, start: int, n: int) -> str:
    """Append chunks `start` to `start + n - 1`; the last one's id."""
    last = ""
    for index in range(start, start + n):
        last = str(
            store.append_chunk(
                r, session_id, index, f"{index} ", token=token, maxlen=10_000, ttl_s=60
            )
        )
    return last


def events(batches: Iterator[store.Batch]) -> Iterator[store.Event]:
    """The events of a follower, one at a time."""
    for batch in batches:
        yield from batch


def test_a_follower_that_falls_behind_catches_up_in_order(
    redis_server: Any, r: redis.Redis, session: tuple[str, str]
) -> None:
    session_id, token = session
    blocking = connect(redis_server.url, socket_timeout_s=3)
    fanout = xread_fanout(blocking, block_ms=200, max_queue=5)  # overflows after 5 entries
    subscriptions: list[fanoutmod.Subscription] = []
    subscribe = fanout.subscribe

    def subscribe_and_keep(session_id: str, cursor: str, *args: Any) -> fanoutmod.Subscription:
        subscriptions.append(subscribe(session_id, cursor, *args))
        return subscriptions[-1]

    fanout.subscribe = subscribe_and_keep  # type: ignore[method-assign]
    follower = events(fanoutmod.follow(fanout, r, session_id, None, block_ms=200))
    seen = [next(follower)]  # the queued status
    append(r, session_id, token, 0, 3)
    seen += [next(follower) for _ in range(3)]
    assert fanout.followers() == 1
    append(r, session_id, token, 3, 40)  # far more than the queue holds
    # The reader reads them while the follower takes none: its queue overflows.
    wait_until(lambda: subscriptions[-1].is_behind, "the follower fell behind", timeout_s=10)
    store.append_done(
        r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=43, usage=None
    )
    seen += list(follower)
    assert [e["index"] for e in seen if e["type"] == "chunk"] == list(range(43))
    assert seen[-1]["type"] == "done"
    assert fanout.followers() == 0


def xread_calls(r: redis.Redis) -> int:
    """How many XREAD commands the server has run since its statistics were reset."""
    stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


def test_many_followers_share_one_reader(own_redis: LocalRedis, own_r: redis.Redis) -> None:
    session_id, token = leased_session(own_r)
    blocking = connect(own_redis.url, socket_timeout_s=3)
    fanout = xread_fanout(blocking, block_ms=200)
    followers, chunks = 50, 20
    results: list[list[Any]] = [[] for _ in range(followers)]
    started = [threading.Event() for _ in range(followers)]

    def follow(i: int) -> None:
        for batch in fanoutmod.follow(fanout, own_r, session_id, None, block_ms=200):
            results[i] += batch
            started[i].set()

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(followers)]
    for t in threads:
        t.start()
    wait_until(lambda: all(e.is_set() for e in started), "every follower has its first event")
    own_r.config_resetstat()
    for n in range(chunks):
        append(own_r, session_id, token, n, 1)
        time.sleep(0.01)  # spread the appends out: each may be read on its own
    store.append_done(
        own_r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=chunks, usage=None
    )
    for t in threads:
        t.join(10)
    reads = xread_calls(own_r)
    assert all(res == results[0] for res in results)
    assert [e["index"] for e in results[0] if e["type"] == "chunk"] == list(range(chunks))
    # One reader for all: about one read per append, not one per follower and append.
    assert 0 < reads < followers, f"{reads} XREAD calls for {followers} followers"


def test_follow_replays_from_a_cursor_then_stops_at_the_end(
    redis_server: Any, r: redis.Redis, session: tuple[str, str]
) -> None:
    session_id, token = session
    append(r, session_id, token, 0, 4)
    store.append_done(
        r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=4, usage=None
    )
    fanout = xread_fanout(connect(redis_server.url, socket_timeout_s=3), block_ms=100)

    def events_after(cursor: str | None) -> list[store.Event]:
        return list(events(fanoutmod.follow(fanout, r, session_id, cursor, block_ms=100)))

    seen = events_after(None)
    assert [e["type"] for e in seen] == ["status", "chunk", "chunk", "chunk", "chunk", "done"]
    assert events_after(seen[2]["id"]) == seen[3:]
    assert events_after(seen[-1]["id"]) == []


def test_follow_of_a_session_that_vanishes_raises_not_found(
    redis_server: Any, r: redis.Redis, session: tuple[str, str]
) -> None:
    session_id, _token = session
    fanout = xread_fanout(connect(redis_server.url, socket_timeout_s=3), block_ms=100)
    follower = fanoutmod.follow(fanout, r, session_id, None, block_ms=100)
    assert [e["status"] for e in next(follower)] == ["queued"]
    assert next(follower) == []  # nothing new: a keep-alive tick
    r.delete(keys.meta(session_id), keys.events(session_id))
    with pytest.raises(SessionNotFound):
        next(follower)
    with pytest.raises(SessionNotFound):
        next(fanoutmod.follow(fanout, r, "N" * 21, None, block_ms=100))


def test_redis_connections_do_not_grow_with_followers(
    make_stack: Any, own_redis: LocalRedis
) -> None:
    stack = make_stack(REDIS_URL=own_redis.url, CELERY_BROKER_URL=own_redis.url)
    api = stack.api()
    watcher = redis.Redis.from_url(own_redis.url, decode_responses=True)
    # No worker yet: the session stays queued until every follower waits for it live.
    session_id = client.create(api.url, prompt="many watchers", max_tokens=150)["sessionId"]

    def api_connections() -> int:
        return sum(1 for c in watcher.client_list() if c["name"].startswith("rstreams-api"))

    before = api_connections()
    url = f"{api.ws_url}/api/streams/{session_id}/ws"
    sockets = [websocket.create_connection(url, timeout=30) for _ in range(100)]
    results = [client.ws_read(ws, client.WsResult(), max_events=1) for ws in sockets]
    assert all(res.events[0]["type"] == "status" for res in results)
    # Every follower has had its backlog and waits live; /metrics counts all of them.
    wait_until(lambda: value(scrape(api.url), "rstreams_followers", transport="ws") == 100, "100")
    during = api_connections()
    stack.worker()
    for ws, res in zip(sockets, results, strict=True):
        client.ws_read(ws, res)
        ws.close(timeout=1)
        ws.shutdown()  # after the server's close frame, close() leaves the socket open
    # Not one per follower: the hub's reader and the command pool (REDIS_MAX_CONNECTIONS=2).
    assert before >= 1
    assert during <= 3
    texts = {client.chunks_text(res.events) for res in results}
    assert texts == {client.text(api.url, session_id)["text"]}
    assert all(res.close_code == 1000 for res in results)
    watcher.close()


def command_calls(r: redis.Redis, command: str) -> int:
    """How many `command`s the server has run since its statistics were reset."""
    stats: dict[str, Any] = r.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_followers_that_join_together_share_one_catch_up_read(
    own_redis: LocalRedis, own_r: redis.Redis
) -> None:
    session_id, token = leased_session(own_r)
    append(own_r, session_id, token, 0, 5)
    fanout = xread_fanout(connect(own_redis.url, socket_timeout_s=3), block_ms=200)
    joins = 50
    backlogs: list[store.Batch] = [[] for _ in range(joins)]
    together = threading.Barrier(joins)

    def join(i: int) -> None:
        together.wait()
        follower = fanoutmod.follow(fanout, own_r, session_id, None, block_ms=200)
        backlogs[i] = next(follower)  # the status and the five chunks, in one batch
        follower.close()

    own_r.config_resetstat()
    threads = [threading.Thread(target=join, args=(i,)) for i in range(joins)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(b == backlogs[0] for b in backlogs)
    assert [e["type"] for e in backlogs[0]] == ["status"] + ["chunk"] * 5
    # Each join needs the session's status and its backlog: followers that ask for the
    # same at the same time wait for one read of both.
    reads = command_calls(own_r, "xrange")
    assert 0 < reads < joins / 2, f"{reads} backlog reads for {joins} joins"
    assert command_calls(own_r, "hget") == reads
    assert fanout.followers() == 0


def test_a_follower_that_joins_a_followed_session_takes_its_backlog_from_the_fan_out(
    own_redis: LocalRedis,
    own_r: redis.Redis,
) -> None:
    session_id, token = leased_session(own_r)
    append(own_r, session_id, token, 0, 5)
    fanout = xread_fanout(connect(own_redis.url, socket_timeout_s=3), block_ms=200)
    first: list[store.Event] = []

    def follow_into(seen: list[store.Event], after: str | None = None) -> threading.Thread:
        # No keep-alive (and its status check) while the test counts commands.
        def run() -> None:
            for batch in fanoutmod.follow(fanout, own_r, session_id, after, block_ms=60_000):
                seen.extend(batch)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    threads = [follow_into(first)]
    wait_until(lambda: fanout.followers() == 1, "the first follower is live")
    last = append(own_r, session_id, token, 5, 5)  # read by the fan-out's reader
    wait_until(lambda: first and first[-1]["id"] == last, "the first follower has chunk 9")
    stored = [entry_id for entry_id, _ in own_r.xrange(keys.events(session_id))]

    # Followers that join now, from the start and from chunk 3, read no events from Redis.
    own_r.config_resetstat()
    again = fanoutmod.follow(fanout, own_r, session_id, None, block_ms=200)
    assert [e["id"] for e in next(again)] == stored  # the status and chunks 0-9, at once
    later: list[store.Event] = []
    threads.append(follow_into(later, after=stored[4]))  # the status, chunks 0-3 before it
    # (`again` subscribes when asked for more)
    wait_until(lambda: fanout.followers() == 2 and len(later) == 6, "the third is live")
    assert command_calls(own_r, "xrange") == 0
    assert command_calls(own_r, "hget") == 2  # each join's status check
    assert [e["id"] for e in later] == stored[5:]
    # One whose status was read with its places (`FollowerPlace.status`) sends nothing.
    known = fanoutmod.follow(fanout, own_r, session_id, stored[8], block_ms=200, status="running")
    assert [e["id"] for e in next(known)] == stored[9:]
    known.close()
    assert command_calls(own_r, "xrange") == 0
    assert command_calls(own_r, "hget") == 2

    # Live events still reach all of them, in order, and the end ends them.
    append(own_r, session_id, token, 10, 3)
    store.append_done(
        own_r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=13, usage=None
    )
    rest = list(events(again))
    for t in threads:
        t.join(10)
    stored = [entry_id for entry_id, _ in own_r.xrange(keys.events(session_id))]
    assert [e["id"] for e in first] == stored
    assert [e["id"] for e in later] == stored[5:]
    assert [e["id"] for e in rest] == stored[11:]
    # The fan-out forgets the session's events with its last follower.
    assert fanout.followers() == 0
    assert fanout.tail_after(session_id, "0-0") is None


class IdleReader:
    """A reader that reads nothing: the test hands the fan-out what it "read"."""

    def watch(self, session_id: str, *, is_new: bool, must_read: bool) -> None:
        pass

    def unwatch(self, session_id: str) -> None:
        pass


def test_a_joiner_of_a_session_that_ended_gets_the_end_the_fan_out_has_not_read_yet(
    own_r: redis.Redis,
) -> None:
    session_id, token = leased_session(own_r)
    append(own_r, session_id, token, 0, 3)
    fanout = fanoutmod.Fanout(lambda _fanout: IdleReader())
    live = fanoutmod.follow(fanout, own_r, session_id, None, block_ms=100)
    backlog = next(live)  # the status and chunks 0-2, from Redis
    assert next(live) == []  # subscribed, its backlog kept by the fan-out; nothing new
    assert fanout.tail_after(session_id, "0-0") == backlog
    # The session ends; the fan-out's reader has not read the end yet.
    store.append_done(
        own_r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=3, usage=None
    )
    joiner = list(events(fanoutmod.follow(fanout, own_r, session_id, None, block_ms=100)))
    stored = [entry_id for entry_id, _ in own_r.xrange(keys.events(session_id))]
    assert [e["id"] for e in joiner] == stored  # the end included
    assert joiner[-1]["type"] == "done"
    live.close()


class RecordingClient:
    """A follower's client as the fan-out's reader writes to it directly (`fanout.Direct`):
    every write goes whole; `saw` gets the events in the order they reached the client."""

    frames = staticmethod(lambda batch: b"x" * len(batch))

    def __init__(self, saw: list[str], lock: threading.Lock) -> None:
        self.last_id: str | None = None
        self._saw = saw
        self._lock = lock

    def write(self, data: bytes) -> int:
        return len(data)

    def wrote(self, batch: store.Batch) -> None:
        with self._lock:
            self._saw += [e["id"] for e in batch]


class PausedStatusCheck:
    """The follower's own Redis client; its first `hget` (the status check of a follower
    with nothing new) waits for `go`: a round trip that takes long, as under load."""

    def __init__(self, r: redis.Redis) -> None:
        self._r = r
        self.in_check = threading.Event()
        self.go = threading.Event()

    def hget(self, *args: Any) -> Any:
        if not self.in_check.is_set():
            self.in_check.set()
            assert self.go.wait(20)
        return self._r.hget(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._r, name)


def test_what_the_reader_wrote_during_a_status_check_is_not_sent_again(
    redis_server: Any, r: redis.Redis, session: tuple[str, str]
) -> None:
    # The reader writes a live batch to the client while the follower waits on its status
    # check; the check then finds the session ended, and the follower drains the rest
    # from Redis: from after what the reader wrote, not from before it.
    session_id, token = session
    append(r, session_id, token, 0, 3)
    fanout = xread_fanout(connect(redis_server.url, socket_timeout_s=3), block_ms=200)
    saw: list[str] = []
    lock = threading.Lock()
    direct = RecordingClient(saw, lock)
    paused = PausedStatusCheck(r)

    def follow() -> None:
        for batch in fanoutmod.follow(
            fanout, cast(Any, paused), session_id, None, block_ms=200, direct=direct
        ):
            with lock:
                saw.extend(e["id"] for e in batch)

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        assert paused.in_check.wait(20)  # live, nothing new for 200 ms: checking the status
        last = append(r, session_id, token, 3, 3)
        wait_until(lambda: direct.last_id == last, "the reader wrote chunks 3-5 to the client")
        store.append_done(
            r, session_id, token=token, ttl_s=60, finish_reason="stop", chunks=6, usage=None
        )
    finally:
        paused.go.set()
        follower.join(20)
    assert not follower.is_alive()
    stored = [entry_id for entry_id, _ in r.xrange(keys.events(session_id))]
    assert saw == stored  # every event once, in order, the terminal one last
