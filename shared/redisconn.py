"""Redis clients built from settings: one place that knows redis-py's defaults."""

from __future__ import annotations

import select
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis._parsers import _HiredisParser
from redis.cluster import RedisCluster
from redis.maint_notifications import MaintNotificationsConfig
from redis.utils import HIREDIS_AVAILABLE

try:  # the system's poll, which gevent's monkey patching replaces with its own
    from gevent.monkey import get_original

    _system_poll = get_original("select", "poll")
except ImportError:  # pragma: no cover - gevent is a dependency
    _system_poll = select.poll


class _Parser(_HiredisParser):
    """redis-py's hiredis parser, whose look for unread input on an idle connection is
    one system call.

    A pool hands a connection out only after `can_read()` found nothing waiting on it
    (redis-py's `get_connection`): a `poll` with no timeout, on every command. Under
    gevent's monkey patching that `poll` is gevent's, which goes through its hub: 23 to
    40 us a call against 1.2 to 2.1 us for the system's (`python -m bench.roundtrip`),
    8 % of the API's CPU for a follower's join (docs/BENCHMARKS.md). With no timeout the
    system's never blocks. Input found (which a healthy connection never has) is left to
    redis-py's own check.
    """

    def can_read(self, timeout: float = 0) -> bool:
        reader, sock = self._reader, self._sock
        if timeout == 0 and reader is not None and sock is not None and not reader.has_data():
            poller = _system_poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return False
        return bool(super().can_read(timeout))


def connect(
    url: str,
    *,
    socket_timeout_s: float = 5.0,
    max_connections: int = 100,
    name: str | None = None,
    cluster: bool = False,
) -> redis.Redis:
    """A client for `url` with a connection pool that waits for a free connection.

    redis-py 8 caps a plain pool at 100 and raises `MaxConnectionsError` past it; a
    `BlockingConnectionPool` waits instead. A client that runs `XREAD BLOCK` needs a
    `socket_timeout_s` above its block time, or the read times out. `name` is set with
    CLIENT SETNAME, so `CLIENT LIST` shows which part of the product holds a connection.

    A connection returned to the pool with a reply still unread (a command cut short by
    an exception redis-py does not expect) must not be handed out again: the next
    command would read that reply as its own. redis-py 8 checks for unread input before
    it hands a connection out, but ignores what it found while its maintenance
    notifications (a Redis Enterprise feature, pushed over RESP3, which we do not speak)
    are on, and they are by default: they are off here.

    With `cluster`, `url` names any node of a Redis Cluster and the client is a
    `RedisCluster` with one such pool per node (`max_connections` each). It answers the
    same single-slot commands, so it is typed as `redis.Redis` for the code that uses it.
    """
    if cluster:
        return cast(
            redis.Redis,
            RedisCluster.from_url(
                url,
                connection_pool_class=redis.BlockingConnectionPool,
                max_connections=max_connections,
                timeout=socket_timeout_s,
                socket_timeout=socket_timeout_s,
                socket_connect_timeout=5.0,
                decode_responses=True,
                client_name=name,
                maint_notifications_config=MaintNotificationsConfig(enabled=False),
            ),
        )
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout_s,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        decode_responses=True,
        client_name=name,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
        **({"parser_class": _Parser} if HIREDIS_AVAILABLE else {}),
    )
    return redis.Redis(connection_pool=pool)


def is_cluster(r: object) -> bool:
    """Whether `r` is a Redis Cluster client (or one of its pipelines)."""
    return isinstance(r, RedisCluster)


def redacted(url: str) -> str:
    """`url` with its password, if any, shown as `***`: fit for a log or a console."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


_scripts: dict[str, Any] = {}


def run_script(r: redis.Redis, source: str, keys_: list[str], args: list[Any]) -> Any:
    """Run the Lua script `source` (EVALSHA, loading it on first use or after a restart)."""
    script = _scripts.get(source)
    if script is None:
        script = _scripts[source] = r.register_script(source)
    return script(keys=keys_, args=args, client=r)
