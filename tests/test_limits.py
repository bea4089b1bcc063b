"""Limits: request sizes, creations per window, running generations and followers per caller,
against real API and worker processes (docs/API.md, "Limits")."""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import websocket

from api.apikeys import hash_key
from rstreams.localredis import LocalRedis
from shared import keys, limits
from shared.errors import ConfigError
from shared.settings import LimitsSettings, Settings
from tests import client
from tests.localcluster import cluster_stack
from tests.procs import Api


@pytest.fixture(scope="module")
def small(stack_env: dict[str, str], logs_dir: Path) -> Iterator[Api]:
    """An API with small request limits (nothing it refuses reaches a worker)."""
    env = {**stack_env, "MAX_PROMPT_CHARS": "10", "MAX_MESSAGES": "3", "MAX_MESSAGES_CHARS": "12"}
    proc = Api(env, logs_dir, name="api-small-limits").start()
    yield proc
    proc.stop()


def post(api: Api, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return requests.post(
        f"{api.url}/api/streams/generate", json=body, headers=headers or {}, timeout=10
    )


def assert_400(response: requests.Response, names: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert names in error["message"]


def test_prompt_and_messages_sizes_are_limited(small: Api) -> None:
    assert post(small, {"prompt": "x" * 10, "max_tokens": 1}).status_code == 202
    assert_400(post(small, {"prompt": "x" * 11}), "MAX_PROMPT_CHARS")

    def msgs(*contents: str) -> dict[str, Any]:
        return {"messages": [{"role": "user", "content": c} for c in contents], "max_tokens": 1}

    assert post(small, msgs("a", "b", "c")).status_code == 202
    assert_400(post(small, msgs("a", "b", "c", "d")), "MAX_MESSAGES")
    assert post(small, msgs("x" * 6, "y" * 6)).status_code == 202
    assert_400(post(small, msgs("x" * 6, "y" * 7)), "MAX_MESSAGES_CHARS")


def test_size_limits_are_settings_and_in_the_document() -> None:
    from api.openapi import build

    settings = Settings(
        limits=LimitsSettings(max_prompt_chars=5, max_messages=2, max_messages_chars=9)
    )
    schemas = build(settings)["components"]["schemas"]
    assert schemas["GenerateRequest"]["properties"]["prompt"]["maxLength"] == 5
    assert schemas["GenerateRequest"]["properties"]["messages"]["maxItems"] == 2
    assert schemas["TextPart"]["properties"]["text"]["maxLength"] == 9
    with pytest.raises(ConfigError, match="MAX_PROMPT_CHARS"):
        Settings.from_env({"MAX_PROMPT_CHARS": "0"})
    with pytest.raises(ConfigError, match="MAX_MESSAGES"):
        Settings.from_env({"MAX_MESSAGES": "many"})


def keyed(*key_ids: str, **env: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Environment with fresh API keys (fresh callers: no count left by other tests), and
    each key id's Authorization header."""
    tag = uuid.uuid4().hex[:8]
    secrets = {k: f"rsk_{k}-{tag}-0123456789abcdefghijklmnop" for k in key_ids}
    ids = {k: f"{k}-{tag}" for k in key_ids}
    env = {
        "API_KEYS": ",".join(f"{ids[k]}:{hash_key(s)}" for k, s in secrets.items()),
        "STREAM_TOKEN_SECRET": "test-stream-token-secret-0123456789abcdef",
        **env,
    }
    return env, {k: {"Authorization": f"Bearer {s}"} for k, s in secrets.items()}


def assert_429(response: requests.Response, code: str = "too_many_requests") -> int:
    """The limit's error; returns its Retry-After seconds."""
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == code
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def test_creations_per_window_are_counted_across_api_processes(make_stack: Any) -> None:
    # A window far longer than the test: the counts never roll over halfway.
    env, auth = keyed("alice", "bob", "carol", RATE_CREATES_PER_MIN="3", RATE_WINDOW_S="120")
    stack = make_stack(**env)
    one, two = stack.api(), stack.api()
    body = {"prompt": "hi", "max_tokens": 1}
    first = post(one, body, auth["alice"])
    assert first.status_code == 202
    assert post(two, body, auth["alice"]).status_code == 202
    assert post(one, body, auth["alice"]).status_code == 202
    # The fourth, on the other process: the count is shared.
    refused = post(two, body, auth["alice"])
    assert 1 <= assert_429(refused) <= 120  # seconds until the window ends
    assert "RATE_CREATES_PER_MIN" in refused.json()["error"]["message"]
    # Another key is another caller.
    assert post(two, body, auth["bob"]).status_code == 202
    # An idempotent retry returns its session, limit or not.
    idem = {**auth["carol"], "Idempotency-Key": "retry-me"}
    created = post(one, body, idem)
    assert created.status_code == 202
    for _ in range(2):
        assert post(two, body, auth["carol"]).status_code == 202
    assert_429(post(two, body, auth["carol"]))
    again = post(two, body, idem)
    assert again.status_code == 202, again.text
    assert again.json()["sessionId"] == created.json()["sessionId"]


def test_a_refused_creation_does_not_keep_its_idempotency_key(make_stack: Any) -> None:
    env, auth = keyed("alice", RATE_CREATES_PER_MIN="1", RATE_WINDOW_S="5")
    api = make_stack(**env).api()
    body = {"prompt": "hi", "max_tokens": 1}
    later = {**auth["alice"], "Idempotency-Key": "later"}
    assert post(api, body, auth["alice"]).status_code == 202
    assert_429(post(api, body, later))
    # Once the window ends, the same key creates a session (asked until then, each refusal
    # leaving the key free again).
    deadline = time.monotonic() + 30  # bounds a hang only
    while (answer := post(api, body, later)).status_code == 429:
        assert time.monotonic() < deadline, "the window never ended"
        time.sleep(0.2)
    assert answer.status_code == 202, answer.text


def test_open_mode_counts_per_client_address(make_stack: Any, r: redis.Redis) -> None:
    stack = make_stack(RATE_CREATES_PER_MIN="2", RATE_WINDOW_S="60")
    api = stack.api()
    r.delete(keys.caller_creates("addr:127.0.0.1"))
    body = {"prompt": "hi", "max_tokens": 1}
    try:
        assert post(api, body).status_code == 202
        assert post(api, body).status_code == 202
        assert 1 <= assert_429(post(api, body)) <= 60
    finally:
        r.delete(keys.caller_creates("addr:127.0.0.1"))


def test_running_generations_per_caller(make_stack: Any) -> None:
    env, auth = keyed("alice", MAX_RUNNING_PER_CALLER="2", DEMO_TOKENS_PER_S="5")
    stack = make_stack(**env)
    stack.worker()
    one, two = stack.api(), stack.api()
    h = auth["alice"]
    long = {"prompt": "long", "max_tokens": 1000}
    a = post(one, long, {**h, "Idempotency-Key": "a"})
    assert a.status_code == 202
    assert post(two, long, h).status_code == 202
    refused = post(two, {"prompt": "more", "max_tokens": 2}, h)
    assert assert_429(refused) == 2
    assert "MAX_RUNNING_PER_CALLER" in refused.json()["error"]["message"]
    # Retrying a live session is not a new generation.
    retry = post(two, long, {**h, "Idempotency-Key": "a"})
    assert retry.status_code == 202
    assert retry.json()["sessionId"] == a.json()["sessionId"]
    # A cancelled session frees its place, on any process.
    stop = requests.delete(f"{one.url}/api/streams/{a.json()['sessionId']}", headers=h, timeout=10)
    assert stop.status_code == 202
    short = post(two, {"prompt": "more", "max_tokens": 2}, h)
    assert short.status_code == 202, short.text
    assert_429(post(one, {"prompt": "more", "max_tokens": 2}, h))
    # So does a completed one.
    client.wait_terminal(one.url, short.json()["sessionId"], headers=h)
    assert post(one, {"prompt": "more", "max_tokens": 2}, h).status_code == 202


def test_rate_and_running_settings() -> None:
    settings = Settings.from_env({})
    assert settings.limits.max_running_per_caller >= 100  # DESIGN.md 2.1
    assert settings.limits.rate_creates_per_min > 0
    with pytest.raises(ConfigError, match="RATE_CREATES_PER_MIN"):
        Settings.from_env({"RATE_CREATES_PER_MIN": "-1"})
    with pytest.raises(ConfigError, match="RATE_WINDOW_S"):
        Settings.from_env({"RATE_WINDOW_S": "0"})
    with pytest.raises(ConfigError, match="MAX_RUNNING_PER_CALLER"):
        Settings.from_env({"MAX_RUNNING_PER_CALLER": "lots"})


class Follower:
    """A WebSocket or SSE follower held open until `close`."""

    def __init__(
        self,
        api: Api,
        session_id: str,
        headers: dict[str, str],
        kind: str,
        token: str | None = None,
    ) -> None:
        self.kind = kind
        path = f"/api/streams/{session_id}"
        query = f"?token={token}" if token else ""
        if kind == "ws":
            self.ws = websocket.create_connection(
                f"{api.ws_url}{path}/ws{query}", timeout=10, header=headers
            )
            self.first = json.loads(self.ws.recv())
            self.is_admitted = self.first["type"] != "error"
        else:
            self.sse = requests.get(
                f"{api.url}{path}{query}", headers=headers, stream=True, timeout=10
            )
            self.is_admitted = self.sse.status_code == 200

    def refusal(self) -> tuple[str, int | str]:
        """The error code, and the close code (WS) or Retry-After (SSE), of a refusal."""
        if self.kind == "ws":
            opcode, data = self.ws.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            return self.first["error"]["code"], struct.unpack("!H", data[:2])[0]
        assert self.sse.status_code == 429, self.sse.text
        return self.sse.json()["error"]["code"], int(self.sse.headers["Retry-After"])

    def close(self) -> None:
        if self.kind == "ws":
            self.ws.close(timeout=1)
            self.ws.shutdown()
        else:
            self.sse.close()


def eventually_admitted(
    api: Api, session_id: str, headers: dict[str, str], kind: str, timeout_s: float = 20
) -> Follower:
    """A follower admitted once the server noticed a place was given up (or lapsed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        follower = Follower(api, session_id, headers, kind)
        if follower.is_admitted:
            return follower
        follower.close()
        assert time.monotonic() < deadline, "no follower place came free"
        time.sleep(0.3)


def test_followers_per_session_and_per_caller_across_processes(make_stack: Any) -> None:
    env, auth = keyed(
        "alice",
        "bob",
        MAX_FOLLOWERS_PER_SESSION="2",
        MAX_FOLLOWERS_PER_CALLER="3",
        FOLLOWER_LEASE_S="4",
        WS_SEND_TIMEOUT_S="1",
        DEMO_TOKENS_PER_S="5",
    )
    stack = make_stack(**env)
    stack.worker()
    one, two = stack.api(), stack.api()
    alice, bob = auth["alice"], auth["bob"]
    long = {"prompt": "watched", "max_tokens": 1000}
    s1 = post(one, long, alice).json()["sessionId"]
    s2 = post(one, long, alice).json()["sessionId"]
    held = [Follower(one, s1, alice, "ws"), Follower(two, s1, alice, "sse")]
    assert all(f.is_admitted for f in held)

    # The session is full, on either process, over either transport.
    ws = Follower(two, s1, alice, "ws")
    assert not ws.is_admitted
    assert ws.refusal() == ("too_many_followers", 4429)
    assert "MAX_FOLLOWERS_PER_SESSION" in ws.first["error"]["message"]
    ws.close()
    sse = Follower(one, s1, alice, "sse")
    assert not sse.is_admitted
    # docs/API.md section 9: `Retry-After: 5` (no telling when a follower leaves).
    assert sse.refusal() == ("too_many_followers", 5)
    sse.close()

    # A follower that leaves gives its place up.
    held.pop(0).close()
    held.append(eventually_admitted(two, s1, alice, "ws"))

    # Alice has 2 followers; one more of another session makes her limit of 3.
    held.append(Follower(two, s2, alice, "sse"))
    assert held[-1].is_admitted
    over = Follower(one, s2, alice, "ws")
    assert over.refusal() == ("too_many_followers", 4429)
    assert "MAX_FOLLOWERS_PER_CALLER" in over.first["error"]["message"]
    over.close()
    sse = Follower(one, s2, alice, "sse")
    assert sse.refusal()[0] == "too_many_followers"
    sse.close()
    # Bob is another caller.
    s3 = post(two, long, bob).json()["sessionId"]
    held.append(Follower(one, s3, bob, "ws"))
    assert held[-1].is_admitted

    # The places of an API process that died lapse with their lease.
    two.kill()
    eventually_admitted(one, s2, alice, "ws").close()
    for f in held:
        f.close()


def test_stream_tokens_have_a_follower_budget_of_their_own(make_stack: Any) -> None:
    env, auth = keyed(
        "alice",
        MAX_FOLLOWERS_PER_CALLER="3",
        MAX_TOKEN_FOLLOWERS_PER_SESSION="2",
        DEMO_TOKENS_PER_S="5",
    )
    stack = make_stack(**env)
    stack.worker()
    api = stack.api()
    alice = auth["alice"]
    long = {"prompt": "shared with browsers", "max_tokens": 1000}
    first = post(api, long, alice).json()
    s1, token = first["sessionId"], first["streamToken"]
    held = [Follower(api, s1, {}, "ws", token), Follower(api, s1, {}, "sse", token)]
    assert all(f.is_admitted for f in held)
    # The browsers with this session's token have used its budget, over either transport.
    over = Follower(api, s1, {}, "ws", token)
    assert over.refusal() == ("too_many_followers", 4429)
    assert "MAX_TOKEN_FOLLOWERS_PER_SESSION" in over.first["error"]["message"]
    over.close()
    sse = Follower(api, s1, {}, "sse", token)
    assert sse.refusal()[0] == "too_many_followers"
    sse.close()
    # The key itself still has all of its own places, on that session too.
    for kind in ("ws", "sse", "ws"):
        held.append(Follower(api, s1, alice, kind))
        assert held[-1].is_admitted
    assert Follower(api, s1, alice, "sse").refusal()[0] == "too_many_followers"
    # And the token of another session of the same key has its own budget.
    second = post(api, long, alice).json()
    held.append(Follower(api, second["sessionId"], {}, "ws", second["streamToken"]))
    assert held[-1].is_admitted
    for f in held:
        f.close()


def test_follower_settings() -> None:
    settings = Settings.from_env({})
    assert (
        settings.limits.max_followers_per_session > 0
        and settings.limits.max_followers_per_caller > 0
    )
    with pytest.raises(ConfigError, match="FOLLOWER_LEASE_S"):
        Settings.from_env({"FOLLOWER_LEASE_S": "1"})
    # A follower's place must outlive the longest wait between two of its renewals.
    with pytest.raises(ConfigError, match=r"FOLLOWER_LEASE_S .*WS_SEND_TIMEOUT_S"):
        Settings.from_env({"FOLLOWER_LEASE_S": "30", "WS_SEND_TIMEOUT_S": "30"})
    assert Settings.from_env({"FOLLOWER_LEASE_S": "30", "WS_SEND_TIMEOUT_S": "10"})
    with pytest.raises(ConfigError, match="MAX_FOLLOWERS_PER_SESSION"):
        Settings.from_env({"MAX_FOLLOWERS_PER_SESSION": "-2"})
    assert settings.limits.max_token_followers_per_session > 0
    with pytest.raises(ConfigError, match="MAX_TOKEN_FOLLOWERS_PER_SESSION"):
        Settings.from_env({"MAX_TOKEN_FOLLOWERS_PER_SESSION": "many"})


def test_the_document_states_the_429s() -> None:
    from api.openapi import build

    doc = build(Settings())
    e429 = doc["components"]["responses"]["E429"]
    assert e429["headers"]["Retry-After"]["required"]
    assert "429" in doc["paths"]["/api/streams/generate"]["post"]["responses"]
    assert "429" in doc["paths"]["/api/streams/{sessionId}"]["get"]["responses"]
    ws = doc["paths"]["/api/streams/{sessionId}/ws"]["get"]
    assert 4429 in ws["x-websocket"]["closeCodes"]


def ws_send_and_close_code(api: Api, session_id: str, messages: int) -> int:
    """Open a WebSocket, send `messages` text messages, read until the server closes."""
    ws = websocket.create_connection(f"{api.ws_url}/api/streams/{session_id}/ws", timeout=30)
    try:
        ws.recv()  # the first event: the handler has the connection
        for n in range(messages):
            ws.send(f"hello {n}")
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int(struct.unpack("!H", data[:2])[0])
    finally:
        ws.close(timeout=1)
        ws.shutdown()


def test_a_websocket_client_that_floods_is_closed(make_stack: Any) -> None:
    stack = make_stack(WS_CLIENT_MESSAGES_PER_MIN="5")
    stack.worker()
    api = stack.api()
    long = client.create(api.url, prompt="flooded", max_tokens=2000)["sessionId"]
    assert ws_send_and_close_code(api, long, 6) == 1008
    short = client.create(api.url, prompt="polite", max_tokens=20)["sessionId"]
    assert ws_send_and_close_code(api, short, 5) == 1000
    # The flood ended one follower, not the session.
    assert client.info(api.url, long)["status"] in ("queued", "running")


@pytest.mark.slow
def test_limits_on_a_redis_cluster(logs_dir: Path) -> None:
    overrides = {
        "MAX_RUNNING_PER_CALLER": "1",
        "RATE_CREATES_PER_MIN": "100",
        "MAX_FOLLOWERS_PER_SESSION": "1",
    }
    with cluster_stack(logs_dir, "cluster-limits", **overrides) as (_cluster, api):
        done = client.create(api.url, prompt="short", max_tokens=3)["sessionId"]
        client.wait_terminal(api.url, done)
        # The ended session is pruned against its meta, on whichever node holds it.
        live = client.create(api.url, prompt="long", max_tokens=2000)["sessionId"]
        assert_429(post(api, {"prompt": "one too many", "max_tokens": 1}))
        first = Follower(api, live, {}, "ws")
        assert first.is_admitted
        second = Follower(api, live, {}, "ws")
        assert second.refusal() == ("too_many_followers", 4429)
        second.close()
        first.close()
        requests.delete(f"{api.url}/api/streams/{live}", timeout=10)


def test_a_follower_s_places_and_its_session_s_status_take_one_round_trip(
    own_redis: LocalRedis,
) -> None:
    r = redis.Redis.from_url(own_redis.url, decode_responses=True)  # counts only ours
    session_id = uuid.uuid4().hex[:21]
    r.hset(keys.meta(session_id), "status", "running")
    caller = f"addr:test-{session_id}"
    budgets = limits.budgets_of_key(session_id, caller, per_session=5, per_caller=5)
    limits.join_followers(r, budgets, lease_s=30).leave()  # Redis has the script now
    reads_before = r.info("stats")["total_reads_processed"]
    place = limits.join_followers(r, budgets, lease_s=30, status_of=session_id)
    # Each budget's script and the status in one read of Redis'; the INFO that asks, one more.
    assert r.info("stats")["total_reads_processed"] - reads_before == 2
    assert place.status == "running"
    assert r.zscore(keys.followers(session_id), place.member) is not None
    assert r.zscore(keys.caller_followers(caller), place.member) is not None
    place.leave()
    assert r.zcard(keys.followers(session_id)) == 0
    assert r.zcard(keys.caller_followers(caller)) == 0
    # A session that does not exist has no status; the places are taken all the same
    # (the follow itself answers not_found).
    gone = limits.join_followers(r, budgets, lease_s=30, status_of="no-such-session")
    assert gone.status is None
    gone.leave()
    r.close()
