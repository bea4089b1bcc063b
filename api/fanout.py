"""One fan-out per API process for every live follower in it, fed by one reader.

Followers first catch up from their own cursor with non-blocking reads, then subscribe:
the fan-out keeps, for every followed stream, the position its reader has read to and the
followers' bounded queues. The reader (`api/readers.py`: one `XREAD BLOCK` over every
followed stream, or sharded pub/sub on a Redis Cluster) reads new entries from that
position and hands them to `Fanout.deliver`, which decodes each batch once and queues the
same events for every follower. A follower whose queue overflows leaves, catches up from
Redis with its own cursor and subscribes again, so a slow client never holds the others
back. Redis connections per process stay at the reader's few, plus the pool's few for
catch-up reads, however many followers there are. The fan-out keeps each followed
stream's newest events (`_Tail`): a follower that joins a followed stream catches up
from them, with no read of events from Redis.

A follower that hands the fan-out a `Direct` (a plain WebSocket under gevent, see
api/follow.py) is written to by the reader itself while it is live and keeps up: the
batch's frames are built once and written to each such socket without blocking, with no
wake-up of the follower's own greenlet, which was the largest cost of a delivery (the
profile in docs/BENCHMARKS.md). The follower's greenlet runs again only for what the
direct path cannot do: the rest of a partial write, a queue (a write that could not start,
a terminal event), a fall behind, a keep-alive tick.
"""

from __future__ import annotations

import bisect
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from typing import Protocol, TypeVar, cast

import redis

from shared import fields, keys, store
from shared.backoff import READ_RETRY_MAX_S, READ_RETRY_START_S, compute_backoff
from shared.errors import SessionNotFound

log = logging.getLogger(__name__)

READ_COUNT = 500
# The newest events of each followed stream that the fan-out keeps for followers that
# join it (`Fanout.tail_after`), and the most it keeps over every stream (about 500
# bytes an event).
TAIL_EVENTS = READ_COUNT
TAIL_EVENTS_MAX = 50_000
_BEHIND = object()
_LAST_ID = f"{2**64 - 1}-{2**64 - 1}"  # the greatest stream id, a valid cursor

Entries = list[tuple[str, dict[str, str]]]


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Direct(Protocol):
    """A follower's client that the reader may write to itself (api/follow.py).

    `frames` turns a batch into the bytes to write: a plain function, not a method, so
    that followers with the same one share one encoding of each batch. `last_id` is kept
    by the fan-out: the last event written through `write`, which the follower's
    generator never yields.
    """

    last_id: str | None

    @property
    def frames(self) -> Callable[[store.Batch], bytes]:
        """The function that encodes a batch for this kind of client."""

    def write(self, data: bytes) -> int:
        """Write without blocking: `len(data)` if it all went, 0 if none could (the caller
        keeps the batch), in between if part went and the client holds the rest, which it
        sends before anything else."""

    def wrote(self, batch: store.Batch) -> None:
        """Count a batch written through `write` (the follower's metrics)."""


class Subscription:
    """One follower's queue of events from the fan-out, or its direct writes.

    No lock: the reader only appends (`deque.extend`) and the follower only pops
    (`deque.popleft`), each atomic on its own. A lock here cost a fifth of the API's time
    at a thousand followers. The direct path (`is_direct`) relies on gevent: the reader
    and the follower never run at the same time, so a follower that finds its queue empty
    and turns `is_direct` on cannot miss a batch queued in between.
    """

    def __init__(self, session_id: str, max_entries: int, direct: Direct | None = None) -> None:
        self.session_id = session_id
        self.key = keys.events(session_id)
        self.max_entries = max_entries
        self.entries: deque[store.Event] = deque()
        self.is_behind = False
        self.ready = threading.Event()
        self.direct = direct
        # On while the follower is live, has sent all it took and wants the reader to
        # write to its client; the reader turns it off when it queues anything.
        self.is_direct = False
        # The last event the client has (sent by the follower or written by the reader).
        self.written_key = (0, 0)
        # Set by `Fanout.subscribe`: the stream's read position was past the follower's
        # cursor, so what lies between must be read from Redis once more.
        self.must_read_again = False
        self.position = ""  # the stream's read position when the follower subscribed
        self.is_woken = False  # see `wake`

    def push(self, entries: store.Batch) -> None:
        """Called by the reader's thread: queue a batch, or mark the follower behind."""
        self.is_direct = False  # what follows must wait behind what is queued
        if self.is_behind:
            return
        if len(self.entries) + len(entries) > self.max_entries:
            self.is_behind = True  # the follower drops the queue and reads on its own
        else:
            self.entries.extend(entries)
        self.ready.set()

    def wake(self) -> None:
        """Have the follower's `take` return now, from any thread (its client left)."""
        self.is_woken = True
        self.ready.set()

    def take(self, timeout_s: float) -> store.Batch | object | None:
        """Everything queued; `_BEHIND` if the queue overflowed; None after `timeout_s`
        with no wake-up; an empty list on a wake-up with nothing queued (the reader left
        part of a write to the follower, or `wake`)."""
        if not self.entries and not self.is_behind and not self.is_woken:
            self.ready.clear()
            # A push (or `wake`) between the check and the clear set `ready` before the
            # clear: look again before waiting.
            if (
                not self.entries
                and not self.is_behind
                and not self.is_woken
                and not self.ready.wait(timeout_s)
            ):
                return None
        if self.is_behind:
            return _BEHIND
        self.is_woken = False
        popleft = self.entries.popleft
        return [popleft() for _ in range(len(self.entries))]

    def write(
        self, events: store.Batch, first_key: tuple[int, int], cache: dict[object, bytes]
    ) -> bool:
        """Called by the reader's thread: write `events` to the client itself; False if
        they must be queued instead (nothing was written)."""
        direct = self.direct
        if direct is None or first_key <= self.written_key:
            return False  # the follower read past the reader's position: it filters
        data = cache.get(direct.frames)
        if data is None:
            data = cache[direct.frames] = direct.frames(events)
        written = direct.write(data)
        if not written:
            return False
        last_id = events[-1]["id"]
        direct.last_id = last_id
        self.written_key = id_key(last_id)
        direct.wrote(events)
        if written < len(data):
            self.is_direct = False
            self.ready.set()  # the follower's greenlet sends the rest, blocking
        return True


_T = TypeVar("_T")


class _SharedRead:
    """A read in flight and, once `done`, its result or error."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: object = None
        self.error: Exception | None = None


class _Tail:
    """The newest events of a followed stream: exactly its entries after `start`, up to
    the fan-out's read position."""

    __slots__ = ("events", "keys", "start")

    def __init__(self, start: str, events: store.Batch) -> None:
        self.start = start
        self.events = list(events)
        self.keys = [id_key(event["id"]) for event in events]

    @property
    def end(self) -> str:
        return str(self.events[-1]["id"])

    def after(self, cursor: str) -> store.Batch | None:
        """The events after `cursor`; None if the tail does not reach back to it, or
        `cursor` is past its end."""
        at = id_key(cursor)
        if at < id_key(self.start) or at > self.keys[-1]:
            return None
        return self.events[bisect.bisect_right(self.keys, at) :]

    def extend(self, events: store.Batch, most: int) -> int:
        """Add what the reader read next; keep at most `most` events: how many it holds
        more (fewer, if negative) than before."""
        before = len(self.events)
        self.events.extend(events)
        self.keys.extend(id_key(event["id"]) for event in events)
        drop = len(self.events) - most
        if drop > 0:
            self.start = self.events[drop - 1]["id"]
            del self.events[:drop], self.keys[:drop]
        return len(self.events) - before


class Reader(Protocol):
    """What feeds a `Fanout`: told which sessions are followed, it reads their streams
    from `Fanout.cursors` and hands what it read to `Fanout.deliver`."""

    def watch(self, session_id: str, *, is_new: bool, must_read: bool) -> None:
        """A follower joined; `is_new`: the session had none; `must_read`: its position
        was set or moved back and should be read from soon."""

    def unwatch(self, session_id: str) -> None:
        """The session's last follower left."""


class Fanout:
    """Subscriptions, the read position of every followed stream, and delivery."""

    def __init__(self, make_reader: Callable[[Fanout], Reader], max_queue: int = 2000) -> None:
        self.max_queue = max_queue
        self._cursors: dict[str, str] = {}
        # Streams whose position an entry the reader read has confirmed.
        self._confirmed: set[str] = set()
        self._subs: dict[str, set[Subscription]] = {}
        self._lock = threading.Lock()
        # Serializes joins and leaves with telling the reader, so that a leave and a join
        # of the same session reach the reader (and Redis) in the order they happened.
        self._membership = threading.Lock()
        # Catch-up reads in flight, by stream and cursor: followers that join together
        # wait for one read and share its events.
        self._reads: dict[tuple[str, str], _SharedRead] = {}
        # The newest events of followed streams, and how many they hold together: a
        # follower that joins a followed stream takes its catch-up from here, without
        # a read from Redis, its decoding or a wait for the others' reads.
        self._tails: dict[str, _Tail] = {}
        self._tail_events = 0
        self.reader = make_reader(self)

    def subscribe(
        self,
        session_id: str,
        cursor: str,
        direct: Direct | None = None,
        read: tuple[str, store.Batch] | None = None,
    ) -> Subscription:
        """Start receiving the entries read from now on for a session.

        A stream already followed keeps its position; a new one is read from `cursor`.
        When the position is already past `cursor`, `must_read_again` tells the follower
        to read once more from its own cursor, so nothing between its last read and the
        reader's position is missed; otherwise the reader brings everything after it.
        `read`: what the follower read from Redis before, (where it read from, the
        events, which end at `cursor`), the stream's tail if it has none.
        """
        sub = Subscription(session_id, self.max_queue, direct)
        with self._membership:
            with self._lock:
                is_new = sub.key not in self._subs
                must_read = self._add(sub, cursor)
                sub.position = self._cursors[sub.key]
                sub.must_read_again = id_key(sub.position) > id_key(cursor)
                if read is not None and sub.position == cursor:
                    self._seed_tail(sub.key, *read)
            self.reader.watch(session_id, is_new=is_new, must_read=must_read)
        return sub

    def _seed_tail(self, key: str, start: str, events: store.Batch) -> None:
        """Keep `events`, the stream's entries after `start` up to its read position, as
        its tail (called with `_lock` held), if it has none and the budget allows."""
        if key in self._tails or not events:
            return
        if len(events) > TAIL_EVENTS:
            start, events = events[-TAIL_EVENTS - 1]["id"], events[-TAIL_EVENTS:]
        if self._tail_events + len(events) > TAIL_EVENTS_MAX:
            return
        self._tails[key] = _Tail(start, events)
        self._tail_events += len(events)

    def tail_after(self, session_id: str, cursor: str) -> store.Batch | None:
        """The events after `cursor` of a followed session, as the fan-out has them; None
        when it does not have them all (the follower reads them from Redis).

        The reader may have read further since: the follower's subscription then reads
        the rest from Redis (`must_read_again`)."""
        with self._lock:
            tail = self._tails.get(keys.events(session_id))
            return None if tail is None else tail.after(cursor)

    def _drop_tail(self, key: str) -> None:
        tail = self._tails.pop(key, None)
        if tail is not None:
            self._tail_events -= len(tail.events)

    def read_shared(self, key: str, what: str, read: Callable[[], _T]) -> _T:
        """`read()`, or the result of the same read (stream and `what`: the cursor and
        whatever else tells reads apart) that another follower started and has not
        finished: one round trip for a crowd that joins together (a reconnect storm, a
        page opened in many tabs)."""
        with self._lock:
            shared = self._reads.get((key, what))
            is_first = shared is None
            if shared is None:
                shared = self._reads[key, what] = _SharedRead()
        if not is_first:
            shared.done.wait()
            if shared.error is not None:
                raise shared.error
            return cast(_T, shared.result)
        try:
            shared.result = read()
            return shared.result
        except Exception as e:
            shared.error = e
            raise
        finally:
            with self._lock:
                del self._reads[key, what]
            shared.done.set()

    def _add(self, sub: Subscription, cursor: str) -> bool:
        """Add `sub` and place the stream's read position (called with `_lock` held);
        True when the reader must start a new read for it.

        A new stream is read from `cursor`. Until an entry confirms that position, a
        follower's cursor is only its client's word, which may lie in the future: a later
        follower with a lower cursor moves the position back, so one client's cursor
        delays no one else.
        """
        key = sub.key
        subs = self._subs.setdefault(key, set())
        subs.add(sub)
        if len(subs) == 1:
            self._cursors[key] = cursor
            self._confirmed.discard(key)
            self._drop_tail(key)
            return True
        if key not in self._confirmed and id_key(cursor) < id_key(self._cursors[key]):
            self._cursors[key] = cursor
            self._drop_tail(key)  # it no longer ends at the position
            return True
        return False

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to `sub`; the reader forgets a stream with its last follower."""
        with self._membership:
            with self._lock:
                subs = self._subs.get(sub.key)
                if subs is None or sub not in subs:
                    return
                subs.discard(sub)
                is_last = not subs
                if is_last:
                    del self._subs[sub.key]
                    self._cursors.pop(sub.key, None)
                    self._confirmed.discard(sub.key)
                    self._drop_tail(sub.key)
            if is_last:
                self.reader.unwatch(sub.session_id)

    def followers(self) -> int:
        """How many followers the fan-out serves now."""
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def cursors(self, wanted: set[str] | None = None) -> dict[str, str]:
        """The read position of every followed stream (of those in `wanted`)."""
        with self._lock:
            if wanted is None:
                return dict(self._cursors)
            return {key: self._cursors[key] for key in wanted if key in self._cursors}

    def deliver(self, key: str, read_from: str, entries: Entries) -> bool:
        """Move the stream's position past `entries`, decode them once, queue them for all.

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
            tail = self._tails.get(key)
        events = [store.decode_event(entry_id, values) for entry_id, values in entries]
        if tail is not None:
            self._extend_tail(key, tail, read_from, events)
        # A terminal event goes through every follower's own greenlet, which then ends.
        if store.until_terminal(events)[1]:
            for sub in subs:
                sub.push(events)
            return True
        first_key = id_key(events[0]["id"])
        frames: dict[object, bytes] = {}  # one encoding per `Direct.frames` function
        for sub in subs:
            if not (sub.is_direct and sub.write(events, first_key, frames)):
                sub.push(events)
        return True

    def _extend_tail(self, key: str, tail: _Tail, read_from: str, events: store.Batch) -> None:
        """Add what the reader read from `read_from` to the stream's tail, within the
        budget; drop a tail that does not end there."""
        with self._lock:
            if self._tails.get(key) is not tail:
                return  # dropped meanwhile
            if tail.end != read_from:
                self._drop_tail(key)
                return
            room = max(0, TAIL_EVENTS_MAX - self._tail_events)
            most = min(TAIL_EVENTS, len(tail.events) + room)
            self._tail_events += tail.extend(events, most)


def read_after(r: redis.Redis, key: str, cursor: str, count: int = READ_COUNT) -> Entries:
    """Up to `count` entries of a stream after `cursor`, without blocking."""
    if cursor == _LAST_ID:
        return []  # XRANGE refuses to start after the greatest id; nothing can follow it
    # XRANGE answers alike in RESP2 and RESP3.
    return cast(Entries, r.xrange(key, f"({cursor}", "+", count=count))


Page = tuple[store.Batch, bool, bool]  # events, whether they ended, whether more may follow


def _page(entries: Entries) -> Page:
    batch, ended = store.decode_batch(entries)
    return batch, ended, len(entries) == READ_COUNT


def _read_page(r: redis.Redis, key: str, cursor: str) -> Page:
    return _page(read_after(r, key, cursor))


def _first_page(
    fanout: Fanout, r: redis.Redis, session_id: str, cursor: str, known: str | None = None
) -> tuple[str | None, Page]:
    """The session's status and its first page after `cursor`: from the fan-out's tail,
    with no round trip when the status is `known` (read before), or one round trip
    shared with the followers that ask for the same at the same time.

    A status read before the events is all a follow needs: an end it did not show comes
    as an event. So a `known` status stands in for the read's own.
    """
    key = keys.events(session_id)
    if known is not None and known not in store.TERMINAL_STATUSES:
        events = fanout.tail_after(session_id, cursor)
        if events is not None:
            return known, (*store.until_terminal(events), False)

    def read() -> tuple[str | None, Page]:
        if known is not None:
            return known, _read_page(r, key, cursor)
        events = fanout.tail_after(session_id, cursor)
        if events is not None:
            status = cast(str | None, r.hget(keys.meta(session_id), fields.STATUS))
            # A session that ended may have its terminal event in Redis and not yet in
            # the tail: only a live one is caught up from the tail alone.
            if status is not None and status not in store.TERMINAL_STATUSES:
                return status, (*store.until_terminal(events), False)
        pipe = r.pipeline(transaction=False)
        pipe.hget(keys.meta(session_id), fields.STATUS)
        if cursor != _LAST_ID:
            pipe.xrange(key, f"({cursor}", "+", count=READ_COUNT)
        status, *entries = pipe.execute()
        return status, _page(cast(Entries, entries[0]) if entries else [])

    return fanout.read_shared(key, f"first:{cursor}", read)


def _catch_up(
    fanout: Fanout,
    r: redis.Redis,
    key: str,
    cursor: str,
    first: Page | None = None,
    *,
    to: str = "",
) -> Generator[store.Batch, None, tuple[str, bool]]:
    """Yield what Redis has after `cursor` (starting with `first`, already read), a
    read's page at a time; returns (the new cursor, whether a terminal event came).

    `to`: a subscribed follower's read must reach the position the reader had when it
    subscribed. It shares only reads that followers who saw the same position started
    (after seeing it, so Redis ran them after that position was read): a read started
    earlier may end before it, and what lies between went to the others only.
    """
    while True:
        if first is None:
            batch, ended, is_full = fanout.read_shared(
                key, f"{cursor}<{to}", functools.partial(_read_page, r, key, cursor)
            )
        else:
            (batch, ended, is_full), first = first, None
        if batch:
            cursor = batch[-1]["id"]
            yield batch
        if ended or not is_full:
            return cursor, ended


def follow(
    fanout: Fanout,
    r: redis.Redis,
    session_id: str,
    after: str | None,
    *,
    block_ms: int,
    direct: Direct | None = None,
    status: str | None = None,
    wake_with: Callable[[Callable[[], None]], None] | None = None,
) -> Iterator[store.Batch]:
    """Yield the session's events after `after` in batches, then live ones (through the
    process's fan-out), until the terminal event (`status`: the session's, if the caller
    has read it already; it must have been read before any of the events).

    `wake_with` is given a function that makes a follower waiting for live events yield
    an empty batch at once (the relay's client has left: it need not wait for the next
    `block_ms`).

    A batch is what one read returned, so a relay can write it to its client in one go.
    Yields an empty batch each time `block_ms` passes with nothing new (a chance to send
    a keep-alive), and when `direct` holds the rest of a partial write (the relay sends
    it). With `direct`, live batches may go to the client through it instead of being
    yielded. Raises `SessionNotFound` if the session does not exist or vanishes while
    followed.
    """
    key = keys.events(session_id)
    cursor = after or "0-0"
    first: Page | None
    status, first = _first_page(fanout, r, session_id, cursor, status)
    if status is None:
        raise SessionNotFound(f"no session {session_id}")
    # A backlog read in one page: the stream's tail for the followers that join next.
    read: tuple[str, store.Batch] | None = (cursor, first[0]) if not first[2] else None
    while True:
        # The backlog, or what we missed after falling behind: from Redis, our own cursor.
        cursor, ended = yield from _catch_up(fanout, r, key, cursor, first)
        first = None
        if ended or status in store.TERMINAL_STATUSES:
            return
        sub = fanout.subscribe(session_id, cursor, direct, read)
        read = None
        if wake_with is not None:
            wake_with(sub.wake)
        try:
            if sub.must_read_again:
                cursor, ended = yield from _catch_up(fanout, r, key, cursor, to=sub.position)
                if ended:
                    return
            while True:
                if direct is not None and not sub.entries and not sub.is_behind:
                    # The reader may have written more while this greenlet was away (a
                    # place renewal's round trip): never move its mark back.
                    sub.written_key = max(sub.written_key, id_key(cursor))
                    sub.is_direct = True
                taken = sub.take(block_ms / 1000)
                if direct is not None and direct.last_id and sub.written_key > id_key(cursor):
                    cursor = direct.last_id  # the reader wrote up to here itself
                    if taken is None:
                        yield []  # live through the direct path: the session goes on
                        continue
                if taken is _BEHIND:
                    break  # catch up on our own, then join again
                if taken is None:
                    # A keep-alive first: a relay whose client has gone stops here, and
                    # does not look at the status.
                    yield []
                    status = cast(str | None, r.hget(keys.meta(session_id), fields.STATUS))
                    if status is None:
                        raise SessionNotFound(f"session {session_id} expired or was deleted")
                    if status in store.TERMINAL_STATUSES:
                        break  # the catch-up drains what is left and ends
                    continue
                assert isinstance(taken, list)
                if not taken:
                    yield []  # the relay sends the rest of the reader's partial write
                    continue
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
            fanout.unsubscribe(sub)
        # The reader may have written to the client itself until it let go of `sub` (while
        # this greenlet checked the status, say): catch up from after what it wrote.
        if direct is not None and direct.last_id and sub.written_key > id_key(cursor):
            cursor = direct.last_id


def follow_reconnecting(
    fanout: Fanout,
    r: redis.Redis,
    session_id: str,
    after: str | None = None,
    *,
    block_ms: int,
    outage_max_s: float,
    sleep: Callable[[float], None] = time.sleep,
    direct: Direct | None = None,
    status: str | None = None,
    wake_with: Callable[[Callable[[], None]], None] | None = None,
) -> Iterator[store.Batch]:
    """`follow`, riding out Redis restarts: on a connection error it waits with capped
    backoff (yielding empty batches meanwhile) and follows again from the last event it
    delivered. Raises the Redis error once Redis has been unreachable for `outage_max_s`.
    `status`: as `follow`'s, for its first call only; `wake_with`: as `follow`'s.
    """
    cursor = after
    down_since: float | None = None
    failures = 0
    while True:
        if direct is not None and direct.last_id:
            if cursor is None or id_key(direct.last_id) > id_key(cursor):
                cursor = direct.last_id  # written by the reader, never yielded
        try:
            batches = follow(
                fanout,
                r,
                session_id,
                cursor,
                block_ms=block_ms,
                direct=direct,
                status=status,
                wake_with=wake_with,
            )
            status = None  # a follow after an outage reads it again
            for batch in batches:
                if down_since is not None:
                    log.info("follower of %s: Redis back", session_id)
                    down_since, failures = None, 0
                if batch:
                    cursor = batch[-1]["id"]
                yield batch
            return
        except redis.ConnectionError as e:
            now = time.monotonic()
            if down_since is None:
                down_since = now
                log.warning("follower of %s: Redis unreachable (%s); retrying", session_id, e)
            elif now - down_since > outage_max_s:
                raise
            yield []
            sleep(compute_backoff(failures, start_s=READ_RETRY_START_S, max_s=READ_RETRY_MAX_S))
            failures += 1
