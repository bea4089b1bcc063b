"""The Celery worker: `celery -A worker.app worker -P threads`.

Settings come from the environment when the worker starts; Redis clients are built on
the first task, not at import.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis

from shared.jobs import make_celery
from shared.redisconn import connect
from shared.settings import Settings
from worker.leases import LeaseKeeper

log = logging.getLogger(__name__)

settings = Settings.from_env()
app = make_celery(settings, "rstreams-worker")
app.conf.update(
    include=["worker.tasks"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=settings.worker_concurrency,
    worker_pool="threads",
    # Otherwise late-acked tasks are handed out again while still running after a blip.
    worker_cancel_long_running_tasks_on_connection_loss=True,
    worker_hijack_root_logger=False,
)


@dataclass
class Runtime:
    """What every task of this process shares."""

    settings: Settings
    redis: redis.Redis
    keeper: LeaseKeeper


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's Redis client and lease keeper, built on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            client = connect(settings.redis_url, max_connections=settings.worker_concurrency + 10)
            _runtime = Runtime(settings, client, LeaseKeeper(client, settings.lease_ttl_s))
        return _runtime
