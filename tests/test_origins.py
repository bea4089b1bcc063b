"""Allowed origins: WebSocket, SSE and CORS for browsers, against real processes."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from api.apikeys import hash_key
from api.openapi import build
from shared.errors import ConfigError
from shared.settings import Settings
from tests import client
from tests.procs import Api, Worker

APP = "https://app.example"
EVIL = "https://evil.example"
KEY = "rsk_origins-test-key-0123456789abcdefghijklmn"
SECRET = "test-stream-token-secret-0123456789abcdef"
PREFLIGHT_HEADERS = {"Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"}


@pytest.fixture(scope="module")
def listed(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An open API that also allows APP, behind a proxy it trusts."""
    env = {
        **stack_env,
        "ALLOWED_ORIGINS": f"{APP}, http://localhost:3000",
        "TRUST_PROXY_HEADERS": "true",
        "ALLOWED_HOSTS": "api.example",  # the proxy's X-Forwarded-Host
    }
    proc = Api(env, logs_dir, name="api-origins-listed").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keyed(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An API with a key that allows APP."""
    env = {
        **stack_env,
        "ALLOWED_ORIGINS": APP,
        "API_KEYS": f"app:{hash_key(KEY)}",
        "STREAM_TOKEN_SECRET": SECRET,
    }
    proc = Api(env, logs_dir, name="api-origins-keyed").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def anyone(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An API that allows every origin."""
    proc = Api({**stack_env, "ALLOWED_ORIGINS": "*"}, logs_dir, name="api-origins-any").start()
    yield proc
    proc.stop()


def ws_open(api: Api, session_id: str, origin: str | None, **params: str) -> client.WsResult:
    """Follow over WebSocket sending `origin` (None: no Origin header at all) until closed."""
    url = f"{api.ws_url}/api/streams/{session_id}/ws"
    if params:
        url += "?" + "&".join(f"{k}={v}" for k, v in params.items())
    options: dict[str, Any] = {"origin": origin} if origin else {"suppress_origin": True}
    ws = websocket.create_connection(url, timeout=30, **options)
    result = client.WsResult()
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                result.events.append(json.loads(data))
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                result.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                result.close_reason = data[2:].decode()
                return result
    finally:
        ws.close(timeout=1)
        ws.shutdown()


def sse_get(api: Api, session_id: str, origin: str | None, **headers: str) -> requests.Response:
    """GET the SSE follower with `origin`; the whole body is read."""
    sent = {"Accept": "text/event-stream", **headers}
    if origin:
        sent["Origin"] = origin
    return requests.get(f"{api.url}/api/streams/{session_id}", headers=sent, timeout=30)


def post(api: Api, origin: str | None, **headers: str) -> requests.Response:
    """POST a short generation with `origin`."""
    sent = {**headers, **({"Origin": origin} if origin else {})}
    body = {"prompt": "origins", "max_tokens": 3}
    return requests.post(f"{api.url}/api/streams/generate", json=body, headers=sent, timeout=10)


def session(api: Api, **headers: str) -> str:
    """A finished session, created without an Origin."""
    response = post(api, None, **headers)
    assert response.status_code == 202, response.text
    session_id: str = response.json()["sessionId"]
    client.wait_terminal(api.url, session_id, headers=headers)
    return session_id


def assert_forbidden_origin(response: requests.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "forbidden_origin"
    assert "Access-Control-Allow-Origin" not in response.headers


def assert_ws_refused(result: client.WsResult) -> None:
    assert result.close_code == 4403, result
    assert result.close_reason == "forbidden_origin"
    assert len(result.events) == 1  # nothing of the session, only the refusal
    assert result.events[0]["type"] == "error"
    assert result.events[0]["error"]["code"] == "forbidden_origin"
    assert "id" not in result.events[0]


def assert_completed_ws(result: client.WsResult) -> None:
    assert result.close_code == 1000, result
    assert [e["type"] for e in result.events][-1] == "done"


def assert_cors(response: requests.Response, origin: str) -> None:
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "Location" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers["Vary"]


# --- default: same origin only ---


def test_by_default_a_foreign_origin_gets_no_websocket(api: Api) -> None:
    session_id = session(api)
    assert_ws_refused(ws_open(api, session_id, EVIL))
    # A port is part of the origin: another local port is another site.
    assert_ws_refused(ws_open(api, session_id, f"http://127.0.0.1:{api.port + 1}"))


def test_by_default_same_origin_and_no_origin_follow_over_websocket(api: Api) -> None:
    session_id = session(api)
    assert_completed_ws(ws_open(api, session_id, api.url))
    assert_completed_ws(ws_open(api, session_id, None))


def test_by_default_sse_refuses_a_foreign_origin_before_any_event(api: Api) -> None:
    session_id = session(api)
    assert_forbidden_origin(sse_get(api, session_id, EVIL))
    for origin in (api.url, None):
        response = sse_get(api, session_id, origin)
        assert response.status_code == 200, response.text
        assert "event: done" in response.text


def test_by_default_a_foreign_origin_cannot_create_or_cancel(api: Api) -> None:
    assert_forbidden_origin(post(api, EVIL))
    session_id = session(api)
    response = requests.delete(
        f"{api.url}/api/streams/{session_id}", headers={"Origin": EVIL}, timeout=10
    )
    assert_forbidden_origin(response)
    response = post(api, api.url)
    assert response.status_code == 202, response.text


def test_by_default_reads_from_a_foreign_origin_carry_no_cors_headers(api: Api) -> None:
    session_id = session(api)
    response = requests.get(
        f"{api.url}/api/streams/{session_id}/text", headers={"Origin": EVIL}, timeout=10
    )
    assert response.status_code == 200  # the browser, not the server, keeps it from the page
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Origin" in response.headers["Vary"]


# --- ALLOWED_ORIGINS lists an origin ---


def test_a_listed_origin_creates_follows_and_cancels_with_cors_headers(listed: Api) -> None:
    response = post(listed, APP)
    assert response.status_code == 202, response.text
    assert_cors(response, APP)
    session_id = response.json()["sessionId"]
    assert_completed_ws(ws_open(listed, session_id, APP))
    sse = sse_get(listed, session_id, APP)
    assert sse.status_code == 200 and "event: done" in sse.text
    assert_cors(sse, APP)
    gone = requests.delete(
        f"{listed.url}/api/streams/{session_id}", headers={"Origin": APP}, timeout=10
    )
    assert gone.status_code == 200, gone.text
    assert_cors(gone, APP)


def test_a_listed_origin_is_compared_in_normal_form(listed: Api) -> None:
    assert post(listed, "HTTPS://App.Example:443").status_code == 202
    assert post(listed, "http://localhost:3000").status_code == 202
    assert_forbidden_origin(post(listed, "http://localhost:3001"))
    assert_forbidden_origin(post(listed, "http://app.example"))  # another scheme


def test_a_preflight_from_a_listed_origin_is_answered(listed: Api) -> None:
    response = requests.options(
        f"{listed.url}/api/streams/generate",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
        timeout=10,
    )
    assert response.status_code == 204, response.text
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert {"GET", "POST", "DELETE"} <= set(
        response.headers["Access-Control-Allow-Methods"].replace(" ", "").split(",")
    )
    allowed = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed >= PREFLIGHT_HEADERS
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers["Vary"]
    assert response.content == b""


def test_another_origin_gets_no_cors_and_403s(listed: Api) -> None:
    session_id = session(listed)
    assert_forbidden_origin(post(listed, EVIL))
    assert_forbidden_origin(
        requests.delete(
            f"{listed.url}/api/streams/{session_id}", headers={"Origin": EVIL}, timeout=10
        )
    )
    assert_forbidden_origin(sse_get(listed, session_id, EVIL))
    assert_ws_refused(ws_open(listed, session_id, EVIL))
    preflight = requests.options(
        f"{listed.url}/api/streams/generate",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert_forbidden_origin(preflight)
    read = requests.get(
        f"{listed.url}/api/streams/generate",
        params={"sessionId": session_id},
        headers={"Origin": EVIL},
        timeout=10,
    )
    assert read.status_code == 200 and "Access-Control-Allow-Origin" not in read.headers


def test_the_own_origin_follows_trusted_proxy_headers(listed: Api) -> None:
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example"}
    response = post(listed, "https://api.example", **proxied)
    assert response.status_code == 202, response.text
    assert response.json()["wsUrl"].startswith("wss://api.example/")
    assert_forbidden_origin(post(listed, "https://api.example"))  # not what this request reached


# --- keyed mode ---


def test_a_preflight_needs_no_key(keyed: Api) -> None:
    for path, method in [
        ("/api/streams/generate", "POST"),
        ("/api/streams/AAAAAAAAAAAAAAAAAAAAA", "DELETE"),
        ("/api/streams/AAAAAAAAAAAAAAAAAAAAA", "GET"),
    ]:
        response = requests.options(
            f"{keyed.url}{path}",
            headers={
                "Origin": APP,
                "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization",
            },
            timeout=10,
        )
        assert response.status_code == 204, response.text
        assert response.headers["Access-Control-Allow-Origin"] == APP


def test_keyed_a_listed_origin_reads_its_401_and_works_with_a_key(keyed: Api) -> None:
    refused = post(keyed, APP)
    assert refused.status_code == 401
    assert_cors(refused, APP)  # the page can read why
    bearer = {"Authorization": f"Bearer {KEY}"}
    created = post(keyed, APP, **bearer)
    assert created.status_code == 202, created.text
    assert_cors(created, APP)
    body = created.json()
    token = body["streamToken"]
    client.wait_terminal(keyed.url, body["sessionId"], headers=bearer)
    assert_completed_ws(ws_open(keyed, body["sessionId"], APP, token=token))
    assert_ws_refused(ws_open(keyed, body["sessionId"], EVIL, token=token))
    assert_forbidden_origin(post(keyed, EVIL, **bearer))


# --- any origin ---


def test_a_star_allows_every_origin(anyone: Api) -> None:
    response = post(anyone, EVIL)
    assert response.status_code == 202, response.text
    assert_cors(response, EVIL)
    session_id = response.json()["sessionId"]
    assert_completed_ws(ws_open(anyone, session_id, EVIL))
    sse = sse_get(anyone, session_id, "http://localhost:1234")
    assert sse.status_code == 200 and "event: done" in sse.text


# --- the setting ---


@pytest.mark.parametrize(
    "value",
    [
        "app.example",
        "https://app.example/path",
        "ftp://app.example",
        "null",
        "*,https://a.example",
        "https://user@app.example",
        "https://app.example:99999",
    ],
)
def test_a_malformed_allowed_origin_fails_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="ALLOWED_ORIGINS"):
        Settings.from_env({"ALLOWED_ORIGINS": value})


def test_allowed_origins_are_kept_in_normal_form() -> None:
    settings = Settings.from_env({"ALLOWED_ORIGINS": " HTTPS://App.Example:443/ ,http://a:8080,"})
    assert settings.api.allowed_origins == ("https://app.example", "http://a:8080")
    assert Settings.from_env({}).api.allowed_origins == ()
    assert Settings.from_env({"ALLOWED_ORIGINS": "*"}).api.allowed_origins == ("*",)


def test_the_openapi_document_states_the_origin_refusals() -> None:
    paths = build(Settings())["paths"]
    for path, method in [
        ("/api/streams/generate", "post"),
        ("/api/streams/{sessionId}", "get"),
        ("/api/streams/{sessionId}", "delete"),
    ]:
        assert "403" in paths[path][method]["responses"]
    ws = paths["/api/streams/{sessionId}/ws"]["get"]
    assert 4403 in ws["x-websocket"]["closeCodes"]
    assert "forbidden_origin" in ws["description"]
