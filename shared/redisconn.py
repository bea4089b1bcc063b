"""Redis clients built from settings: one place that knows redis-py's defaults."""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster


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
