"""Redis with a password, and Redis over TLS (`rediss://`): the whole product works against
both, and the password never reaches a log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import trustme
from prometheus_client.parser import text_string_to_metric_families

from rstreams.localredis import LocalRedis
from shared.redisconn import redacted
from tests import client
from worker.providers.demo import demo_text

PASSWORD = "rs-test-redis-password-7c1e9b"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str, str]:
    """A server certificate for 127.0.0.1 and the CA that signed it, as files."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return str(cert), str(key), str(ca_file)


@pytest.fixture(params=["password", "tls and password"])
def guarded_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis that needs a password, over plain TCP or over TLS."""
    tls = request.getfixturevalue("tls_files") if request.param.startswith("tls") else None
    server = LocalRedis(password=PASSWORD, tls=tls).start()
    yield server
    server.close()


def test_the_product_runs_on_a_guarded_redis_and_logs_no_password(
    make_stack: Any, guarded_redis: LocalRedis
) -> None:
    # Given a Redis that refuses clients without the password (and, with TLS, plain TCP)
    plain = f"redis://127.0.0.1:{guarded_redis.port}/0"
    with pytest.raises(redis.RedisError):
        redis.Redis.from_url(plain, socket_timeout=2).ping()
    stack = make_stack(REDIS_URL=guarded_redis.url, CELERY_BROKER_URL=guarded_redis.url)
    worker = stack.worker()
    api = stack.api()
    # When a session is generated and followed over WebSocket and SSE
    assert requests.get(f"{api.url}/readyz", timeout=10).status_code == 200
    session_id = client.create(api.url, prompt="guarded", max_tokens=20)["sessionId"]
    ws = client.ws_follow(api.ws_url, session_id)
    sse = client.sse_follow(api.url, session_id)
    # Then both get the whole answer
    assert ws.close_code == 1000
    assert client.chunks_text(ws.events) == demo_text("guarded", 20)
    assert client.chunks_text(sse.events) == demo_text("guarded", 20)
    assert client.text(api.url, session_id)["text"] == demo_text("guarded", 20)
    # And the password is in no log of the processes that used it, nor in their metrics
    for proc in (worker, api):
        assert PASSWORD not in proc.log(), f"the Redis password is in {proc.log_path}"
    metrics = requests.get(f"{api.url}/metrics", timeout=10)
    families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    assert families["rstreams_redis_up"].samples[0].value == 1
    assert PASSWORD not in metrics.text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        (
            "rediss://user:pw@h/0?ssl_cert_reqs=required",
            "rediss://user:***@h/0?ssl_cert_reqs=required",
        ),
        ("redis://h:6379/0", "redis://h:6379/0"),
    ],
)
def test_a_redis_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
