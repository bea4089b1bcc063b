"""The Redis clients the API and workers make (shared/redisconn.py), on a real Redis."""

from __future__ import annotations

from shared import redisconn
from tests.conftest import RedisUnderTest


def test_a_connection_left_with_an_unread_reply_is_not_handed_out_as_it_is(
    redis_server: RedisUnderTest,
) -> None:
    client = redisconn.connect(redis_server.url, max_connections=1)
    try:
        pool = client.connection_pool
        conn = pool.get_connection()
        conn.send_command("ECHO", "stale")  # its reply is never read
        assert conn.can_read(timeout=5)  # it has arrived
        pool.release(conn)
        assert client.echo("fresh") == "fresh"
    finally:
        client.close()
