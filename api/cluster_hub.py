"""The follower hub for a Redis Cluster: sharded pub/sub says which streams to read.

In a cluster one `XREAD` over the streams of many sessions is a CROSSSLOT error (a
multi-key command needs one slot, not just one node). So in cluster mode the append
script also SPUBLISHes each new entry's id to the session's channel (`keys.notify`), and
this hub SSUBSCRIBEs to the channels of the sessions followed in this process. redis-py's
cluster pub/sub holds one connection per node; one reader thread per node waits on it,
and on notifications reads those streams without blocking from the hub's cursors (one
pipeline per node) and pushes the entries into the same `Subscription` queues that
`api.hub.follow` consumes, so the follower logic stays one.

Pub/sub drops what is published while a connection is down. redis-py subscribes again
when it reconnects, and every subscription's confirmation makes the reader read that
stream from its cursor once: nothing published meanwhile is lost, and the same read
picks up a newly followed stream at once, so new followers wait for nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster

from api.hub import Hub, Subscription, id_key
from shared import keys
from shared.backoff import READ_RETRY_MAX_S, READ_RETRY_START_S, compute_backoff, ensure_running

log = logging.getLogger(__name__)

READ_COUNT = 500
_NOTIFIED = ("smessage", "ssubscribe")


class ClusterHub(Hub):
    """The per-process hub of a cluster; `api.hub.follow` uses it as it uses `Hub`."""

    def __init__(self, cluster: RedisCluster, block_ms: int, max_queue: int = 2000) -> None:
        # `cluster` serves the hub alone: its pub/sub holds one connection per node and
        # its reads one more, so give it two per node.
        super().__init__(cast(redis.Redis, cluster), block_ms, max_queue)
        self.cluster = cluster
        self.pubsub = cluster.pubsub()
        self._key_of: dict[str, str] = {}  # channel -> events key
        self._pending: set[str] = set()  # channels whose SSUBSCRIBE failed, to retry
        # Serializes SSUBSCRIBE/SUNSUBSCRIBE with the decision to send them, so a leave
        # and a join of the same session cannot reach Redis in the wrong order.
        self._channel_lock = threading.Lock()
        self._readers: dict[str, threading.Thread] = {}
        self._readers_lock = threading.Lock()
        self._keeper: threading.Thread | None = None

    def subscribe(self, session_id: str, cursor: str) -> Subscription:
        """Start receiving the entries the hub reads from now on for a session.

        Same promise as `Hub.subscribe`: a stream the hub already reads keeps its position,
        a new one is read from `cursor` as soon as its subscription is confirmed.
        """
        key = keys.events(session_id)
        channel = keys.notify(session_id)
        sub = Subscription(key, self.max_queue)
        with self._channel_lock:
            with self._lock:
                is_new = key not in self._subs
                # A position moved back is read from at the stream's next notification.
                self._add(key, sub, cursor)
                if is_new:
                    self._key_of[channel] = key
                self._start_keeper()
            if is_new:
                self._ssubscribe(channel)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to `sub`; the session's channel is left with its last follower."""
        with self._channel_lock:
            super().unsubscribe(sub)
            with self._lock:
                if sub.key in self._subs:
                    return
                channels = [c for c, k in self._key_of.items() if k == sub.key]
                for channel in channels:
                    del self._key_of[channel]
                    self._pending.discard(channel)
            for channel in channels:
                try:
                    self.pubsub.sunsubscribe(channel)
                except redis.RedisError as e:
                    log.warning("cluster hub: SUNSUBSCRIBE %s failed (%s)", channel, e)

    def _ssubscribe(self, channel: str) -> None:
        # Called with `_channel_lock` held.
        try:
            self.pubsub.ssubscribe(channel)
        except redis.RedisError as e:
            log.warning("cluster hub: SSUBSCRIBE %s failed (%s); retrying", channel, e)
            with self._lock:
                self._pending.add(channel)
            return
        self._start_reader(self.cluster.get_node_from_key(channel))

    def _start_keeper(self) -> None:
        # Called with `_lock` held.
        self._keeper = ensure_running(self._keeper, self._keep, "cluster-hub")

    def _keep(self) -> None:
        """Retry failed subscriptions; give every node that has some a reader."""
        while True:
            time.sleep(min(1.0, self.block_ms / 1000))
            with self._lock:
                if not self._subs:
                    self._keeper = None
                    return
            with self._channel_lock:
                with self._lock:
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
        with self._lock:
            key = self._key_of.get(str(message["channel"]))
            cursor = self._cursors.get(key, "0-0") if key else "0-0"
        if key is None:
            return
        # A notification carries the new entry's id: skip what the hub has read already.
        data = str(message.get("data") or "")
        if message["type"] == "smessage" and "-" in data and id_key(data) <= id_key(cursor):
            return
        dirty.add(key)

    def _read(self, dirty: set[str]) -> None:
        """Read the dirty streams from the hub's cursors in one pipeline and deliver."""
        with self._lock:
            wanted = {key: self._cursors[key] for key in dirty if key in self._subs}
        dirty.intersection_update(wanted)  # drop the streams nobody follows any more
        if not wanted:
            return
        pipe = self.cluster.pipeline(transaction=False)
        for key, cursor in wanted.items():
            pipe.xrange(key, f"({cursor}", "+", count=READ_COUNT)
        results = pipe.execute()
        for key, entries in zip(wanted, results, strict=True):
            delivered = not entries or self._deliver(
                key, wanted[key], [(str(i), dict(f)) for i, f in entries]
            )
            if delivered and len(entries) < READ_COUNT:
                dirty.discard(key)  # read to the end; a full page means more to read
