"""API keys, tenant isolation, the listing and stream tokens, against real processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from api.apikeys import hash_key
from shared import keys
from shared.errors import ConfigError
from shared.settings import Settings
from tests import client
from tests.procs import Api, Worker

KEYS = {
    "alice": "rsk_alice-test-key-0123456789abcdefghijklmnop",
    "bob": "rsk_bob-test-key-0123456789abcdefghijklmnopqrs",
    "carol": "rsk_carol-test-key-0123456789abcdefghijklmnop",
}
SECRET = "test-stream-token-secret-0123456789abcdef"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def keyed_env(stack_env: dict[str, str]) -> dict[str, str]:
    """The stack's environment with three keys (two inline, one from a file's worth)."""
    return {
        **stack_env,
        "API_KEYS": ",".join(f"{name}:{hash_key(key)}" for name, key in KEYS.items()),
        "STREAM_TOKEN_SECRET": SECRET,
        "WEB_ACCESS_LOG": "-",
    }


@pytest.fixture(scope="module")
def keyed(keyed_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An API with keys configured, in front of the session's worker."""
    proc = Api(keyed_env, logs_dir, name="api-keyed").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def short_tokens(
    keyed_env: dict[str, str], logs_dir: Path, worker: Worker, tmp_path_factory: Any
) -> Iterator[Api]:
    """An API whose keys come from API_KEYS_FILE and whose stream tokens last 2 s."""
    keys_file = tmp_path_factory.mktemp("keys") / "api-keys"
    keys_file.write_text("# id:sha256\n" + "".join(f"{n}:{hash_key(k)}\n" for n, k in KEYS.items()))
    env = {**keyed_env, "API_KEYS": "", "API_KEYS_FILE": str(keys_file), "STREAM_TOKEN_TTL_S": "2"}
    proc = Api(env, logs_dir, name="api-short-tokens").start()
    yield proc
    proc.stop()


def create(api: Api, who: str = "alice", **body: Any) -> dict[str, Any]:
    return client.create(api.url, headers=bearer(who), **{"prompt": "hi", "max_tokens": 5, **body})


def assert_401(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.json()["error"]["message"]


def assert_404(response: requests.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


def protected_requests(api: Api, session_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    base = api.url
    return [
        ("POST", f"{base}/api/streams/generate", {"json": {"prompt": "hi"}}),
        ("GET", f"{base}/api/streams/generate", {"params": {"sessionId": session_id}}),
        ("GET", f"{base}/api/streams", {}),
        ("GET", f"{base}/api/streams/{session_id}", {}),
        ("GET", f"{base}/api/streams/{session_id}/text", {}),
        ("DELETE", f"{base}/api/streams/{session_id}", {}),
    ]


# --- keys ---


def test_health_readiness_and_page_need_no_key(keyed: Api) -> None:
    for path in ("/healthz", "/readyz", "/"):
        assert requests.get(keyed.url + path, timeout=10).status_code == 200, path


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer rsk_not-a-key"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {KEYS['alice']}"},
        {"Authorization": KEYS["alice"]},
    ],
    ids=["missing", "wrong", "empty", "basic", "no-scheme"],
)
def test_every_protected_endpoint_answers_401_without_a_valid_key(
    keyed: Api, headers: dict[str, str]
) -> None:
    session_id = create(keyed)["sessionId"]
    for method, url, kwargs in protected_requests(keyed, session_id):
        response = requests.request(method, url, headers=headers, timeout=10, **kwargs)
        assert_401(response)
    ws = client.ws_follow(keyed.ws_url, session_id, headers=headers)
    assert ws.close_code == 4401
    assert [e["error"]["code"] for e in ws.events] == ["unauthorized"]
    # Nothing was cancelled by the refused DELETEs.
    assert client.wait_terminal(keyed.url, session_id, headers=bearer("alice"))["status"] == (
        "completed"
    )


def test_the_creating_key_reads_its_session_everywhere(keyed: Api) -> None:
    created = create(keyed, max_tokens=6)
    session_id = created["sessionId"]
    ws = client.ws_follow(keyed.ws_url, session_id, headers=bearer("alice"))
    assert ws.close_code == 1000
    assert ws.events[-1]["type"] == "done"
    sse = client.sse_follow(keyed.url, session_id, headers=bearer("alice"))
    assert sse.events == ws.events
    got = requests.get(
        f"{keyed.url}/api/streams/{session_id}/text", headers=bearer("alice"), timeout=10
    )
    assert got.status_code == 200 and got.json()["chunks"] == 6
    done = requests.delete(f"{keyed.url}/api/streams/{session_id}", headers=bearer("alice"))
    assert done.status_code == 200 and done.json()["status"] == "completed"


# --- ownership ---


def test_another_key_gets_404_for_the_session_everywhere(keyed: Api) -> None:
    session_id = create(keyed, max_tokens=50)["sessionId"]
    for method, url, kwargs in protected_requests(keyed, session_id)[1:]:
        if url.endswith("/api/streams"):
            continue
        assert_404(requests.request(method, url, headers=bearer("bob"), timeout=10, **kwargs))
    ws = client.ws_follow(keyed.ws_url, session_id, headers=bearer("bob"))
    assert ws.close_code == 4404
    assert [e["error"]["code"] for e in ws.events] == ["not_found"]
    # Bob's DELETE did not stop Alice's generation.
    final = client.wait_terminal(keyed.url, session_id, headers=bearer("alice"))
    assert final["status"] == "completed" and final["chunks"] == 50


def test_idempotency_keys_are_per_key(keyed: Api) -> None:
    idem = {"Idempotency-Key": f"same-{time.time_ns()}"}
    body = {"prompt": "once", "max_tokens": 3}
    alice = client.create(keyed.url, headers={**bearer("alice"), **idem}, **body)
    bob = client.create(keyed.url, headers={**bearer("bob"), **idem}, **body)
    again = client.create(keyed.url, headers={**bearer("alice"), **idem}, **body)
    assert alice["sessionId"] != bob["sessionId"]
    assert again["sessionId"] == alice["sessionId"]
    assert_404(
        requests.get(
            f"{keyed.url}/api/streams/generate",
            params={"sessionId": alice["sessionId"]},
            headers=bearer("bob"),
            timeout=10,
        )
    )


# --- listing ---


def list_page(api: Api, who: str, **params: Any) -> requests.Response:
    return requests.get(f"{api.url}/api/streams", params=params, headers=bearer(who), timeout=10)


def test_listing_shows_own_sessions_newest_first_in_pages(keyed: Api, r: redis.Redis) -> None:
    made = [create(keyed, "carol", max_tokens=2)["sessionId"] for _ in range(4)]
    create(keyed, "bob", max_tokens=2)
    for session_id in made:
        client.wait_terminal(keyed.url, session_id, headers=bearer("carol"))
    listed = list_page(keyed, "carol", limit=100).json()
    ids = [s["sessionId"] for s in listed["sessions"]]
    assert ids[:4] == made[::-1]
    assert listed["sessions"][0] == client.info(keyed.url, made[-1], bearer("carol"))

    first = list_page(keyed, "carol", limit=2).json()
    assert [s["sessionId"] for s in first["sessions"]] == made[::-1][:2]
    assert first["nextCursor"]
    second = list_page(keyed, "carol", limit=2, cursor=first["nextCursor"]).json()
    assert [s["sessionId"] for s in second["sessions"]] == made[::-1][2:4]

    # A session whose meta expired drops out of the listing and of the index.
    r.delete(keys.meta(made[0]), keys.events(made[0]))
    ids = [s["sessionId"] for s in list_page(keyed, "carol", limit=100).json()["sessions"]]
    assert made[0] not in ids
    assert r.zscore(keys.owner_sessions("carol"), made[0]) is None


def test_listing_filters_by_status_and_ends_with_a_null_cursor(keyed: Api) -> None:
    live = create(keyed, "carol", max_tokens=500)["sessionId"]
    requests.delete(f"{keyed.url}/api/streams/{live}", headers=bearer("carol"), timeout=10)
    cancelled = list_page(keyed, "carol", status="cancelled", limit=100).json()
    assert cancelled["sessions"][0]["sessionId"] == live
    assert {s["status"] for s in cancelled["sessions"]} == {"cancelled"}
    assert cancelled["nextCursor"] is None
    completed = list_page(keyed, "carol", status="completed", limit=100).json()
    assert live not in [s["sessionId"] for s in completed["sessions"]]


@pytest.mark.parametrize(
    "params",
    [
        {"status": "sleeping"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"cursor": "MTIzOm5vdC1hbi1pZA"},  # "123:not-an-id"
    ],
)
def test_listing_rejects_bad_parameters(keyed: Api, params: dict[str, str]) -> None:
    response = list_page(keyed, "alice", **params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in ("invalid_request", "bad_cursor")


# --- stream tokens ---


def test_a_stream_token_opens_its_session_over_ws_and_sse(keyed: Api) -> None:
    created = create(keyed, max_tokens=8)
    assert created["streamToken"] and created["tokenExpiresAt"].endswith("Z")
    ws = client.ws_follow(keyed.ws_url, created["sessionId"], token=created["streamToken"])
    assert ws.close_code == 1000 and ws.events[-1]["type"] == "done"
    sse = client.sse_follow(keyed.url, created["sessionId"], token=created["streamToken"])
    assert sse.events == ws.events


def test_a_stream_token_opens_no_other_session(keyed: Api) -> None:
    mine, other = create(keyed), create(keyed)
    token = mine["streamToken"]
    ws = client.ws_follow(keyed.ws_url, other["sessionId"], token=token)
    assert ws.close_code == 4401
    assert_401(
        requests.get(
            f"{keyed.url}/api/streams/{other['sessionId']}", params={"token": token}, timeout=10
        )
    )


def test_a_stream_token_only_reads(keyed: Api) -> None:
    created = create(keyed, max_tokens=100)
    session_id, token = created["sessionId"], created["streamToken"]
    for method, url, kwargs in protected_requests(keyed, session_id):
        if url.endswith(f"/api/streams/{session_id}") and method == "GET":
            continue  # SSE: what a token is for
        kwargs = {**kwargs, "params": {**kwargs.get("params", {}), "token": token}}
        assert_401(requests.request(method, url, timeout=10, **kwargs))
    info = client.wait_terminal(keyed.url, session_id, headers=bearer("alice"))
    assert info["status"] == "completed"


def test_a_tampered_token_is_refused(keyed: Api) -> None:
    created = create(keyed)
    token = created["streamToken"]
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for bad in (forged, "x" + token, token.split(".")[0], "not.a.token"):
        ws = client.ws_follow(keyed.ws_url, created["sessionId"], token=bad)
        assert ws.close_code == 4401, bad
        assert_401(
            requests.get(
                f"{keyed.url}/api/streams/{created['sessionId']}",
                params={"token": bad},
                timeout=10,
            )
        )


def test_an_expired_token_is_refused(short_tokens: Api) -> None:
    created = create(short_tokens)
    token = created["streamToken"]
    # Wait for the expiry (2 s) by asking, not by sleeping a guess of it.
    deadline = time.monotonic() + 20  # bounds a hang only
    while True:
        ws = client.ws_follow(short_tokens.ws_url, created["sessionId"], token=token, max_events=1)
        if ws.events[0]["type"] == "error":
            break
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.2)
    ws = client.ws_follow(short_tokens.ws_url, created["sessionId"], token=token)
    assert ws.close_code == 4401
    assert ws.events == [
        {
            "type": "error",
            "error": {"code": "unauthorized", "message": "the stream token has expired"},
        }
    ]
    assert_401(
        requests.get(
            f"{short_tokens.url}/api/streams/{created['sessionId']}",
            params={"token": token},
            timeout=10,
        )
    )


def test_keys_from_a_file_work(short_tokens: Api) -> None:
    # With the key itself: a 2 s token would race the clock on a busy machine.
    created = create(short_tokens, "bob", max_tokens=3)
    sse = client.sse_follow(short_tokens.url, created["sessionId"], headers=bearer("bob"))
    assert sse.types[-1] == "done"


# --- open mode, settings, logs ---


def test_open_mode_hands_out_no_token_and_lists_nothing(api: Api, r: redis.Redis) -> None:
    created = client.create(api.url, prompt="open", max_tokens=2)
    assert "streamToken" not in created
    # Without keys a session id is its only secret: there is no listing to give ids away.
    assert_404(requests.get(f"{api.url}/api/streams", timeout=10))
    assert not r.exists(keys.owner_sessions(""))
    assert "no API keys configured" in api.log()


def test_keys_without_a_token_secret_fail_at_start_naming_it() -> None:
    entry = f"alice:{hash_key(KEYS['alice'])}"
    with pytest.raises(ConfigError, match="STREAM_TOKEN_SECRET"):
        Settings.from_env({"API_KEYS": entry})
    with pytest.raises(ConfigError, match="API_KEYS") as raised:
        Settings.from_env({"API_KEYS": f"alice:{KEYS['alice']}", "STREAM_TOKEN_SECRET": SECRET})
    assert KEYS["alice"] not in str(raised.value)  # a raw key pasted by mistake stays out
    with pytest.raises(ConfigError, match="API_KEYS_FILE"):
        Settings.from_env({"API_KEYS_FILE": "/nonexistent/keys", "STREAM_TOKEN_SECRET": SECRET})
    with pytest.raises(ConfigError, match="STREAM_TOKEN_SECRET"):
        Settings.from_env({"API_KEYS": entry, "STREAM_TOKEN_SECRET": "short"})
    rotated = f"alice:{hash_key('rsk_the-next-alice-key')}"
    settings = Settings.from_env(
        {"API_KEYS": f"{entry},{rotated},{entry}", "STREAM_TOKEN_SECRET": SECRET}
    )
    assert [key_id for key_id, _ in settings.api.api_keys] == ["alice", "alice"]
    assert SECRET not in repr(settings)


def test_keys_and_tokens_never_reach_the_logs(keyed: Api, worker: Worker) -> None:
    start = len(keyed.log())
    created = create(keyed, max_tokens=3)
    token = created["streamToken"]
    client.ws_follow(keyed.ws_url, created["sessionId"], token=token)
    client.sse_follow(keyed.url, created["sessionId"], token=token)
    client.ws_follow(keyed.ws_url, created["sessionId"], token=token + "x")
    requests.get(f"{keyed.url}/api/streams", headers={"Authorization": "Bearer rsk_wrong-one"})
    assert requests.get(f"{keyed.url}/metrics", timeout=10).status_code == 401
    metrics = requests.get(f"{keyed.url}/metrics", headers=bearer("alice"), timeout=10)
    assert metrics.status_code == 200
    assert "rstreams_chunks_appended_total" in metrics.text
    deadline = time.monotonic() + 20  # bounds a hang only
    while keyed.log()[start:].count("/metrics") < 2:  # the access log has the last request
        assert time.monotonic() < deadline, keyed.log()[start:]
        time.sleep(0.05)
    logs = keyed.log() + worker.log()
    assert f"/api/streams/{created['sessionId']}" in keyed.log()  # the access log is on
    # Neither the logs nor what a Prometheus scrape stores carry a secret
    for secret in [*KEYS.values(), token, "rsk_wrong-one", SECRET]:
        assert secret not in logs
        assert secret not in metrics.text
