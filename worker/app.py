"""The Celery worker: `celery -A worker.app worker -P threads`.

Settings come from the environment when the worker starts; Redis clients are built on
first use, not at import.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import redis
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_ready,
    worker_shutting_down,
)

from shared import logs
from shared.jobs import enqueue, make_celery
from shared.redisconn import connect
from shared.settings import Settings
from worker.appender import Appender
from worker.leases import LeaseKeeper
from worker.reaper import Reaper

log = logging.getLogger(__name__)

settings = Settings.from_env()
app = make_celery(settings, "rstreams-worker")
app.conf.update(
    include=["worker.tasks"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_concurrency=settings.worker.concurrency,
    worker_pool="threads",
    # Keep generating through a broker blip: the threads pool cannot cancel a running task
    # (Celery 5.6 fails the consumer when it tries), and a copy the broker hands out again
    # after the blip finds the session's lease held and stands down.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=False,
)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_logs(logger: logging.Logger, **_: Any) -> None:
    # Celery gives the root and task loggers its own handlers and formatters; LOG_FORMAT=json
    # swaps the formatters (shared/logs.py), so Celery's lines are JSON too.
    if settings.log_format == "json":
        logs.use_json(logger)


@dataclass
class Runtime:
    """What every task of this process shares."""

    settings: Settings
    redis: redis.Redis
    keeper: LeaseKeeper
    appender: Appender
    # Set when the worker begins to shut down: generations hand their sessions over.
    stopping: threading.Event = field(default_factory=threading.Event)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's Redis client and lease keeper, built on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            client = connect(
                settings.redis.url,
                max_connections=settings.worker.concurrency + 10,
                name="rstreams-worker",
                cluster=settings.redis.cluster,
            )
            _runtime = Runtime(
                settings, client, LeaseKeeper(client, settings.worker.lease_ttl_s), Appender(client)
            )
        return _runtime


def hand_over(session_id: str) -> None:
    """Enqueue a session again so another worker continues it."""
    enqueue(app, session_id, settings.worker.queue)


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    rt = runtime()
    Reaper(rt.redis, settings, lambda sid, queue: enqueue(app, sid, queue)).start()


@worker_shutting_down.connect
def _begin_handover(**_: Any) -> None:
    # Called from the signal handler on SIGTERM (warm shutdown): running generations stop at
    # their next chunk, write what they have and re-enqueue their session, so the warm
    # shutdown ends in moments and another worker continues without waiting for a lease
    # to expire.
    log.warning("worker shutting down: handing running sessions over")
    runtime().stopping.set()
