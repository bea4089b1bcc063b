"""The two readers that feed a process's `Fanout` (api/fanout.py) with new entries.

`XReadReader` (standalone Redis): one thread runs one `XREAD BLOCK` over every followed
stream, plus a wake-up stream of its own so that a new stream is read at once.

`ClusterReader` (Redis Cluster): one `XREAD` over the streams of many sessions is a
CROSSSLOT error there (a multi-key command needs one slot, not just one node). So in
cluster mode the append script also SPUBLISHes each new entry's id to the session's
channel (`keys.notify`), and this reader SSUBSCRIBEs to the channels of the sessions
followed in this process. redis-py's cluster pub/sub holds one connection per node; one
thread per node waits on it, and on notifications reads those streams without blocking
from the fan-out's positions (one pipeline per node).

Pub/sub drops what is published while a connection is down. redis-py subscribes again
when it reconnects, and every subscription's confirmation makes the reader read that
stream from its position once: nothing published meanwhile is lost, and the same read
picks up a newly followed stream at once, so new followers wait for nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster

from api.fanout import READ_COUNT, Entries, Fanout, id_key
from shared import keys
from shared.backoff import READ_RETRY_MAX_S, READ_RETRY_START_S, compute_backoff, ensure_running

log = logging.getLogger(__name__)

_NOTIFIED = ("smessage", "ssubscribe")


def xread_fanout(
    r: redis.Redis, block_ms: int, *, commands: redis.Redis | None = None, max_queue: int = 2000
) -> Fanout:
    """A fan-out fed by one `XREAD BLOCK` reader on `r` (wake-ups sent through `commands`)."""
    return Fanout(lambda fanout: XReadReader(fanout, r, block_ms, commands), max_queue)


def cluster_fanout(cluster: RedisCluster, block_ms: int, *, max_queue: int = 2000) -> Fanout:
    """A fan-out fed by sharded pub/sub notifications from a Redis Cluster."""
    return Fanout(lambda fanout: ClusterReader(fanout, cluster, block_ms), max_queue)


def by_key(response: Any) -> list[tuple[str, Entries]]:
    """An XREAD answer as (stream key, its entries) pairs."""
    # RESP2 answers XREAD with [[key, entries]], RESP3 with {key: [entries]}.
    if not response:
        return []
    if isinstance(response, dict):
        return [(k, [e for batch in v for e in batch]) for k, v in response.items()]
    return [(k, list(v)) for k, v in response]


class XReadReader:
    """One thread, one `XREAD BLOCK` over every followed stream."""

    def __init__(
        self, fanout: Fanout, r: redis.Redis, block_ms: int, commands: redis.Redis | None = None
    ) -> None:
        # `r` must have a socket timeout above `block_ms`; the reader holds one of its
        # connections for good. Short writes (the wake-ups) go through `commands`.
        self.fanout = fanout
        self.r = r
        self.commands = commands or r
        self.block_ms = block_ms
        self.wake_key = f"{keys.PREFIX}:hub:{uuid.uuid4().hex}"
        self._wake_cursor = "0-0"
        # A wake-up was sent since the reader last took the positions: the next read
        # starts at once anyway, so joins in the meantime send none (one per storm).
        self._is_woken = False
        self._lock = threading.Lock()  # guards `_thread`
        self._thread: threading.Thread | None = None

    def watch(self, session_id: str, *, is_new: bool, must_read: bool) -> None:
        """Make sure the reader runs; wake it when a stream must be read from a new position."""
        with self._lock:
            self._thread = ensure_running(self._thread, self._run, "follower-hub")
        if must_read and not self._is_woken:
            self._is_woken = True
            self._wake()

    def unwatch(self, session_id: str) -> None:
        """Nothing to do: the next read leaves the stream out."""

    def _wake(self) -> None:
        try:
            pipe = self.commands.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=10, approximate=True)
            pipe.expire(self.wake_key, 3600)
            pipe.execute()
        except redis.RedisError as e:
            log.debug("hub wake-up not sent (%s); the next read picks the stream up", e)

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                self._is_woken = False  # before the positions: a later join wakes again
                wanted = self.fanout.cursors()
                if not wanted:
                    self._thread = None  # a later `watch` starts another
                    return
            wanted[self.wake_key] = self._wake_cursor
            try:
                response = self.r.xread(cast(Any, wanted), count=READ_COUNT, block=self.block_ms)
                failures = 0
            except redis.RedisError as e:
                # Followers see the outage themselves when they check their session.
                log.warning("follower hub: Redis read failed (%s); retrying", e)
                time.sleep(
                    compute_backoff(failures, start_s=READ_RETRY_START_S, max_s=READ_RETRY_MAX_S)
                )
                failures += 1
                continue
            for key, entries in by_key(response):
                if not entries:
                    continue
                if key == self.wake_key:
                    self._wake_cursor = entries[-1][0]
                    continue
                self.fanout.deliver(key, wanted[key], entries)


class ClusterReader:
    """Sharded pub/sub says which streams to read; one thread per node reads them."""

    def __init__(self, fanout: Fanout, cluster: RedisCluster, block_ms: int) -> None:
        # `cluster` serves the reader alone: its pub/sub holds one connection per node and
        # its reads one more, so give it two per node.
        self.fanout = fanout
        self.cluster = cluster
        self.block_ms = block_ms
        self.pubsub = cluster.pubsub()
        self._key_of: dict[str, str] = {}  # channel -> events key
        self._pending: set[str] = set()  # channels whose SSUBSCRIBE failed, to retry
        # Guards `_key_of`, `_pending` and `_keeper`; held while SSUBSCRIBE/SUNSUBSCRIBE
        # are sent, so a leave and a join cannot reach Redis in the wrong order.
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._readers: dict[str, threading.Thread] = {}
        self._readers_lock = threading.Lock()

    def watch(self, session_id: str, *, is_new: bool, must_read: bool) -> None:
        """Subscribe to a newly followed session's channel; a position moved back is read
        from at the stream's next notification."""
        with self._lock:
            self._keeper = ensure_running(self._keeper, self._keep, "cluster-hub")
            if is_new:
                channel = keys.notify(session_id)
                self._key_of[channel] = keys.events(session_id)
                self._ssubscribe(channel)

    def unwatch(self, session_id: str) -> None:
        """Leave the channel of a session nobody here follows any more."""
        channel = keys.notify(session_id)
        with self._lock:
            if self._key_of.pop(channel, None) is None:
                return
            self._pending.discard(channel)
            try:
                self.pubsub.sunsubscribe(channel)
            except redis.RedisError as e:
                log.warning("cluster hub: SUNSUBSCRIBE %s failed (%s)", channel, e)

    def _ssubscribe(self, channel: str) -> None:
        # Called with `_lock` held.
        try:
            self.pubsub.ssubscribe(channel)
        except redis.RedisError as e:
            log.warning("cluster hub: SSUBSCRIBE %s failed (%s); retrying", channel, e)
            self._pending.add(channel)
            return
        self._start_reader(self.cluster.get_node_from_key(channel))

    def _keep(self) -> None:
        """Retry failed subscriptions; give every node that has some a reader."""
        while True:
            time.sleep(min(1.0, self.block_ms / 1000))
            with self._lock:
                if not self.fanout.cursors():
                    self._keeper = None  # a later `watch` starts another
                    return
                retry = [c for c in self._pending if c in self._key_of]
                self._pending.clear()
                for channel in retry:
                    self._ssubscribe(channel)
            # After a slot moved, redis-py subscribes the channel on its new node.
            for name in list(self.pubsub.node_pubsub_mapping):
                node = self.cluster.get_node(node_name=name)
                if node is not None:
                    self._start_reader(node)

    def _start_reader(self, node: ClusterNode) -> None:
        with self._readers_lock:
            self._readers[node.name] = ensure_running(
                self._readers.get(node.name),
                self._read_node,
                f"cluster-hub-{node.name}",
                args=(node,),
            )

    def _read_node(self, node: ClusterNode) -> None:
        """One node's reader: wait for notifications, read the streams they name."""
        dirty: set[str] = set()  # events keys to read
        failures = 0
        while True:
            with self._readers_lock:
                if not dirty and node.name not in self.pubsub.node_pubsub_mapping:
                    self._readers.pop(node.name, None)  # no channel left on this node
                    return
            try:
                timeout_s = 0.0 if dirty else self.block_ms / 1000
                message = self.pubsub.get_sharded_message(target_node=node, timeout=timeout_s)
                while message is not None:
                    self._note(dirty, message)
                    if len(dirty) >= READ_COUNT:
                        break  # read these first; the rest wait in the socket
                    message = self.pubsub.get_sharded_message(target_node=node, timeout=0.0)
                if dirty:
                    self._read(dirty)
            except redis.RedisError as e:
                # Followers see an outage themselves when they check their session; the
                # resubscription's confirmations bring the missed entries once it is over.
                log.warning("cluster hub: node %s failed (%s); retrying", node.name, e)
            except Exception:
                # A reader that died would leave its node's followers without live entries.
                log.exception("cluster hub: reader of node %s failed; retrying", node.name)
            else:
                failures = 0
                continue
            time.sleep(
                compute_backoff(failures, start_s=READ_RETRY_START_S, max_s=READ_RETRY_MAX_S)
            )
            failures += 1

    def _note(self, dirty: set[str], message: dict[str, Any]) -> None:
        if message.get("type") not in _NOTIFIED:
            return
        key = self._key_of.get(str(message["channel"]))
        if key is None:
            return
        # A notification carries the new entry's id: skip what the fan-out has read already.
        cursor = self.fanout.cursors({key}).get(key, "0-0")
        data = str(message.get("data") or "")
        if message["type"] == "smessage" and "-" in data and id_key(data) <= id_key(cursor):
            return
        dirty.add(key)

    def _read(self, dirty: set[str]) -> None:
        """Read the dirty streams from the fan-out's positions in one pipeline and deliver."""
        wanted = self.fanout.cursors(dirty)
        dirty.intersection_update(wanted)  # drop the streams nobody follows any more
        if not wanted:
            return
        pipe = self.cluster.pipeline(transaction=False)
        for key, cursor in wanted.items():
            pipe.xrange(key, f"({cursor}", "+", count=READ_COUNT)
        results = pipe.execute()
        for key, entries in zip(wanted, results, strict=True):
            delivered = not entries or self.fanout.deliver(
                key, wanted[key], [(str(i), dict(f)) for i, f in entries]
            )
            if delivered and len(entries) < READ_COUNT:
                dirty.discard(key)  # read to the end; a full page means more to read
