"""What the API's handlers share: settings, Redis clients and the Celery client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from celery import Celery
from flask import current_app
from redis import Redis
from redis.cluster import RedisCluster

from api.cluster_hub import ClusterHub
from api.hub import Hub
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
    follower_redis: Redis
    celery: Celery
    # One Redis reader for all followers of this process (None: one blocking read each).
    hub: Hub | None

    @classmethod
    def build(cls, settings: Settings) -> Backend:
        """Clients for `settings`."""
        # Blocking readers need a socket timeout that outlasts their block.
        follower_redis = connect(
            settings.redis.url,
            socket_timeout_s=settings.api.xread_block_ms / 1000 + 5,
            # With the hub, its reader is the only blocking client; without, one per follower.
            max_connections=2 if settings.follower_hub else settings.redis.follower_max_connections,
            name="rstreams-api-follow",
            cluster=settings.redis.cluster,
        )
        commands = connect(
            settings.redis.url,
            max_connections=settings.redis.max_connections,
            name="rstreams-api",
            cluster=settings.redis.cluster,
        )
        hub: Hub | None = None
        if settings.follower_hub and settings.redis.cluster:
            # In a cluster the pool sizes are per node: its pub/sub and its reads.
            hub = ClusterHub(cast(RedisCluster, follower_redis), settings.api.xread_block_ms)
        elif settings.follower_hub:
            hub = Hub(follower_redis, settings.api.xread_block_ms, commands=commands)
        return cls(
            settings=settings,
            redis=commands,
            follower_redis=follower_redis,
            celery=make_celery(settings, "rstreams-api"),
            hub=hub,
        )


def backend() -> Backend:
    """The current app's backend."""
    backend: Backend = current_app.extensions[EXTENSION]
    return backend
