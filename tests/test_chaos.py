"""A small chaos soak: 30 sessions x 3 followers with random drops, while an API process, a
worker process and Redis are knocked over. Nothing may be lost, repeated or left unfinished."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rstreams.localredis import LocalRedis
from tests.chaos import Cluster, run_chaos


@pytest.fixture
def cluster(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Cluster]:
    redis_server = LocalRedis().start()
    env = {
        **stack_env,
        "REDIS_URL": redis_server.url,
        "CELERY_BROKER_URL": redis_server.url,
        "CELERY_QUEUE": "chaos",
        "LEASE_TTL_S": "3",
        "REAPER_INTERVAL_S": "0.5",
        "MAX_ATTEMPTS": "6",
        "DEMO_TOKENS_PER_S": "40",
    }
    c = Cluster(env, logs_dir, redis_server)
    c.add_api()
    c.add_api()
    c.add_worker()
    c.add_worker()
    yield c
    c.stop()
    redis_server.close()


@pytest.mark.timeout(300)
def test_chaos_soak_loses_nothing(cluster: Cluster) -> None:
    report = run_chaos(
        cluster,
        sessions=30,
        followers_per_session=3,
        chunks=320,  # 8 s at 40 a second: the sessions outlive all three faults
        seed=7,
        redis_down_s=2.0,
        deadline_s=120,
        fault_gap_s=5.0,
    )
    assert len(report.faults) == 3
    assert report.problems == []
    assert report.reconnects > report.followers  # every follower dropped and came back
    assert report.takeover_pauses_s  # the worker kill did hit running sessions
