"""Redis clients built from settings: one place that knows redis-py's defaults."""

from __future__ import annotations

import redis


def connect(
    url: str,
    *,
    socket_timeout_s: float = 5.0,
    max_connections: int = 100,
    name: str | None = None,
) -> redis.Redis:
    """A client for `url` with a connection pool that waits for a free connection.

    redis-py 8 caps a plain pool at 100 and raises `MaxConnectionsError` past it; a
    `BlockingConnectionPool` waits instead. A client that runs `XREAD BLOCK` needs a
    `socket_timeout_s` above its block time, or the read times out. `name` is set with
    CLIENT SETNAME, so `CLIENT LIST` shows which part of the product holds a connection.
    """
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
