"""One Redis reader per API process for every live follower in it.

Followers first catch up from their own cursor with non-blocking reads, then subscribe:
the hub's reader runs one `XREAD BLOCK` over every followed stream (plus a wake-up
stream of its own, so a new stream is read at once), decodes each batch once and hands
the same events to the followers' bounded queues. A follower whose queue overflows
leaves the hub, catches up from Redis with its own cursor and subscribes again, so a
slow client never holds the others back. Redis connections per process stay at one for
the hub, plus the pool's few for catch-up reads, however many followers there are.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Generator, Iterator
from typing import Any, cast

import redis

from shared import fields, keys, store
from shared.backoff import READ_RETRY_MAX_S, READ_RETRY_START_S, compute_backoff, ensure_running
from shared.errors import SessionNotFound

log = logging.getLogger(__name__)

_BEHIND = object()


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One follower's queue of events from the hub.

    No lock: the reader only appends (`deque.extend`) and the follower only pops
    (`deque.popleft`), each atomic on its own. A lock here cost a fifth of the API's time
    at a thousand followers.
    """

    def __init__(self, key: str, max_entries: int) -> None:
        self.key = key
        self.max_entries = max_entries
        self.entries: deque[store.Event] = deque()
        self.is_behind = False
        self.ready = threading.Event()

    def push(self, entries: store.Batch) -> None:
        """Called by the hub's reader: queue a batch, or mark the follower behind."""
        if self.is_behind:
            return
        if len(self.entries) + len(entries) > self.max_entries:
            self.is_behind = True  # the follower drops the queue and reads on its own
        else:
            self.entries.extend(entries)
        self.ready.set()

    def take(self, timeout_s: float) -> store.Batch | object | None:
        """Everything queued; `_BEHIND` if the queue overflowed; None after `timeout_s`."""
        if not self.entries and not self.is_behind:
            self.ready.clear()
            # A push between the check and the clear set `ready` before the clear: look
            # again before waiting.
            if not self.entries and not self.is_behind:
                self.ready.wait(timeout_s)
        if self.is_behind:
            return _BEHIND
        popleft = self.entries.popleft
        return [popleft() for _ in range(len(self.entries))] or None


class Hub:
    """The per-process reader; `follow` is what handlers use."""

    def __init__(
        self,
        r: redis.Redis,
        block_ms: int,
        max_queue: int = 2000,
        commands: redis.Redis | None = None,
    ) -> None:
        # `r` must have a socket timeout above `block_ms`; the reader holds one of its
        # connections for good. Short writes (the wake-ups) go through `commands`.
        self.r = r
        self.commands = commands or r
        self.block_ms = block_ms
        self.max_queue = max_queue
        self.wake_key = f"{keys.PREFIX}:hub:{uuid.uuid4().hex}"
        self._wake_cursor = "0-0"
        self._cursors: dict[str, str] = {}
        # Streams whose position an entry the hub read has confirmed.
        self._confirmed: set[str] = set()
        self._subs: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def subscribe(self, session_id: str, cursor: str) -> Subscription:
        """Start receiving the entries the hub reads from now on for a session.

        A stream the hub already reads keeps its position; a new one is read from
        `cursor`. The follower reads once more from its own cursor after subscribing, so
        nothing between its last read and the hub's position is missed.
        """
        key = keys.events(session_id)
        sub = Subscription(key, self.max_queue)
        with self._lock:
            must_read = self._add(key, sub, cursor)
            self._start()
        if must_read:
            self._wake()
        return sub

    def _add(self, key: str, sub: Subscription, cursor: str) -> bool:
        """Add `sub` and place the stream's read position (called with `_lock` held);
        True when the reader must start a new read for it.

        A new stream is read from `cursor`. Until an entry confirms that position, a
        follower's cursor is only its client's word, which may lie in the future: a later
        follower with a lower cursor moves the position back, so one client's cursor
        delays no one else.
        """
        subs = self._subs.setdefault(key, set())
        subs.add(sub)
        if len(subs) == 1:
            self._cursors[key] = cursor
            self._confirmed.discard(key)
            return True
        if key not in self._confirmed and id_key(cursor) < id_key(self._cursors[key]):
            self._cursors[key] = cursor
            return True
        return False

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to `sub`."""
        with self._lock:
            subs = self._subs.get(sub.key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.key]
                    self._cursors.pop(sub.key, None)
                    self._confirmed.discard(sub.key)

    def followers(self) -> int:
        """How many followers the hub serves now."""
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def _wake(self) -> None:
        try:
            pipe = self.commands.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=10, approximate=True)
            pipe.expire(self.wake_key, 3600)
            pipe.execute()
        except redis.RedisError as e:
            log.debug("hub wake-up not sent (%s); the next read picks the stream up", e)

    def _start(self) -> None:
        self._thread = ensure_running(self._thread, self._run, "follower-hub")

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                if not self._subs:
                    self._thread = None
                    return
                wanted = dict(self._cursors)
            wanted[self.wake_key] = self._wake_cursor
            try:
                response = self.r.xread(cast(Any, wanted), count=500, block=self.block_ms)
                failures = 0
            except redis.RedisError as e:
                # Followers see the outage themselves when they check their session.
                log.warning("follower hub: Redis read failed (%s); retrying", e)
                time.sleep(
                    compute_backoff(failures, start_s=READ_RETRY_START_S, max_s=READ_RETRY_MAX_S)
                )
                failures += 1
                continue
            for key, entries in _by_key(response):
                if not entries:
                    continue
                if key == self.wake_key:
                    self._wake_cursor = entries[-1][0]
                    continue
                self._deliver(key, wanted[key], entries)

    def _deliver(self, key: str, read_from: str, entries: list[tuple[str, dict[str, str]]]) -> bool:
        """Move the stream's cursor past `entries`, decode them once, queue them for all.

        Entries read from a position that has moved back since (`_add`) are dropped (and
        False returned): the next read, from the new position, brings them again in order.
        """
        with self._lock:
            if key not in self._subs:
                return True
            if self._cursors.get(key) != read_from:
                return False
            self._cursors[key] = entries[-1][0]
            self._confirmed.add(key)
            subs = list(self._subs[key])
        events = [store.decode_event(entry_id, values) for entry_id, values in entries]
        for sub in subs:
            sub.push(events)
        return True


def _by_key(response: Any) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    # RESP2 answers XREAD with [[key, entries]], RESP3 with {key: [entries]}.
    if not response:
        return []
    if isinstance(response, dict):
        return [(k, [e for batch in v for e in batch]) for k, v in response.items()]
    return [(k, list(v)) for k, v in response]


def _catch_up(
    r: redis.Redis, key: str, cursor: str
) -> Generator[store.Batch, None, tuple[str, bool]]:
    """Yield what Redis has after `cursor`, a read's page at a time; returns (the new
    cursor, whether a terminal event came)."""
    while True:
        entries = store.xread_entries(r.xread({key: cursor}, count=500))
        batch, ended = store.decode_batch(entries)
        if batch:
            cursor = batch[-1]["id"]
            yield batch
        if ended or len(entries) < 500:
            return cursor, ended


def follow(
    hub: Hub, r: redis.Redis, session_id: str, after: str | None, *, block_ms: int
) -> Iterator[store.Batch]:
    """Like `streams.follow`, but live entries come through the process's hub.

    Yields batches of events, and an empty one when `block_ms` passes with nothing new.
    Raises `SessionNotFound` if the session does not exist or vanishes while followed.
    """
    key = keys.events(session_id)
    cursor = after or "0-0"
    status = r.hget(keys.meta(session_id), fields.STATUS)
    if status is None:
        raise SessionNotFound(f"no session {session_id}")
    while True:
        # The backlog, or what we missed after falling behind: from Redis, our own cursor.
        cursor, ended = yield from _catch_up(r, key, cursor)
        if ended or status in store.TERMINAL_STATUSES:
            return
        sub = hub.subscribe(session_id, cursor)
        try:
            cursor, ended = yield from _catch_up(r, key, cursor)
            if ended:
                return
            while True:
                taken = sub.take(block_ms / 1000)
                if taken is _BEHIND:
                    break  # catch up on our own, then join again
                if taken is None:
                    status = r.hget(keys.meta(session_id), fields.STATUS)
                    if status is None:
                        raise SessionNotFound(f"session {session_id} expired or was deleted")
                    if status in store.TERMINAL_STATUSES:
                        break  # the catch-up drains what is left and ends
                    yield []
                    continue
                assert isinstance(taken, list)
                if id_key(taken[0]["id"]) <= id_key(cursor):
                    # Skip what we already read while catching up.
                    taken = [e for e in taken if id_key(e["id"]) > id_key(cursor)]
                batch, ended = store.until_terminal(taken)
                if batch:
                    cursor = batch[-1]["id"]
                    yield batch
                if ended:
                    return
        finally:
            hub.unsubscribe(sub)
