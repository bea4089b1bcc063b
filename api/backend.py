"""What the API's handlers share: settings, Redis clients and the Celery client."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis

from shared.jobs import make_celery
from shared.redisconn import connect
from shared.settings import Settings

EXTENSION = "rstreams"


@dataclass
class Backend:
    """Clients built once per app; nothing connects until first used."""

    settings: Settings
    redis: Redis
    follower_redis: Redis
    celery: Celery

    @classmethod
    def build(cls, settings: Settings) -> Backend:
        """Clients for `settings`."""
        return cls(
            settings=settings,
            redis=connect(settings.redis_url, max_connections=settings.redis_max_connections),
            # Followers block in XREAD; their socket timeout must outlast the block.
            follower_redis=connect(
                settings.redis_url,
                socket_timeout_s=settings.xread_block_ms / 1000 + 5,
                max_connections=settings.redis_max_connections,
            ),
            celery=make_celery(settings, "rstreams-api"),
        )


def backend() -> Backend:
    """The current app's backend."""
    backend: Backend = current_app.extensions[EXTENSION]
    return backend
