"""What the API's handlers share: settings, Redis clients and the Celery client."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis
from redis.cluster import RedisCluster

from api.fanout import Fanout
from api.readers import cluster_fanout, xread_fanout
from shared.jobs import make_celery
from shared.redisconn import connect
from shared.settings import Settings

EXTENSION = "rstreams"


@dataclass
class Backend:
    """Clients built once per app; nothing connects until first used (a cluster client
    asks for the slot map when built)."""

    settings: Settings
    redis: Redis
    celery: Celery
    # One Redis reader for all followers of this process.
    fanout: Fanout

    @classmethod
    def build(cls, settings: Settings) -> Backend:
        """Clients for `settings`."""
        # Blocking readers need a socket timeout that outlasts their block.
        follower_redis = connect(
            settings.redis.url,
            socket_timeout_s=settings.api.xread_block_ms / 1000 + 5,
            # The fan-out's reader is its only client (on a cluster, per node: its pub/sub
            # and its reads).
            max_connections=2,
            name="rstreams-api-follow",
            cluster=settings.redis.cluster,
        )
        commands = connect(
            settings.redis.url,
            max_connections=settings.redis.max_connections,
            name="rstreams-api",
            cluster=settings.redis.cluster,
        )
        if isinstance(follower_redis, RedisCluster):
            fanout = cluster_fanout(follower_redis, settings.api.xread_block_ms)
        else:
            fanout = xread_fanout(follower_redis, settings.api.xread_block_ms, commands=commands)
        return cls(
            settings=settings,
            redis=commands,
            celery=make_celery(settings, "rstreams-api"),
            fanout=fanout,
        )


def backend() -> Backend:
    """The current app's backend."""
    backend: Backend = current_app.extensions[EXTENSION]
    return backend
