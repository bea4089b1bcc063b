"""Every HTTP endpoint of the contract, success and failure, against real processes."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests import client
from tests.procs import Api
from worker.providers.demo import demo_text


def post(api: Api, body: object, **kwargs: object) -> requests.Response:
    data = body if isinstance(body, str | bytes | Iterator) else json.dumps(body)
    return requests.post(f"{api.url}/api/streams/generate", data=data, timeout=10, **kwargs)


def assert_error(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


def test_generate_answers_202_with_urls_and_completes(api: Api) -> None:
    response = post(api, {"prompt": "What is a stream?", "max_tokens": 12})
    assert response.status_code == 202
    body = response.json()
    session_id = body["sessionId"]
    assert len(session_id) == 21
    assert response.headers["Location"] == f"/api/streams/{session_id}"
    assert body["status"] == "queued"
    assert body["model"] == "demo"
    assert body["streamUrl"] == f"{api.url}/api/streams/{session_id}"
    assert body["wsUrl"] == f"{api.ws_url}/api/streams/{session_id}/ws"
    assert body["createdAt"].endswith("Z")

    final = client.wait_terminal(api.url, session_id)
    assert final["status"] == "completed"
    assert final["chunks"] == 12
    assert final["finishReason"] == "stop"
    assert final["usage"]["completion_tokens"] == 12
    assert final["createdAt"] <= final["updatedAt"]

    got = client.text(api.url, session_id)
    assert got == {
        "sessionId": session_id,
        "status": "completed",
        "text": demo_text("What is a stream?", 12),
        "chunks": 12,
    }


@pytest.mark.parametrize(
    ("allowed_ips", "scheme"),
    [("127.0.0.1", "https"), ("192.0.2.1", "http")],  # our address is 127.0.0.1
)
def test_a_trusted_proxys_https_gives_wss_urls(
    make_stack: Any, allowed_ips: str, scheme: str
) -> None:
    """Behind a TLS proxy at an address in FORWARDED_ALLOW_IPS, the answer's URLs are
    https:// and wss://; the same header from any other address changes nothing."""
    api = make_stack(FORWARDED_ALLOW_IPS=allowed_ips).api()
    response = requests.post(
        f"{api.url}/api/streams/generate",
        json={"prompt": "behind a proxy", "max_tokens": 1},
        headers={"X-Forwarded-Proto": "https"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    body = response.json()
    where = f"127.0.0.1:{api.port}/api/streams/{body['sessionId']}"
    assert body["streamUrl"] == f"{scheme}://{where}"
    assert body["wsUrl"] == f"{scheme.replace('http', 'ws')}://{where}/ws"


def test_messages_body_answers_the_last_user_message(api: Api) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour"},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one"},
        ],
        "model": "demo",
        "max_tokens": 5,
        "temperature": 0.5,
    }
    session_id = client.create(api.url, **body)["sessionId"]
    client.wait_terminal(api.url, session_id)
    assert client.text(api.url, session_id)["text"] == demo_text("Another one", 5)


def test_stream_info_while_running_counts_chunks(api: Api) -> None:
    session_id = client.create(api.url, prompt="slow one", max_tokens=100)["sessionId"]
    events = client.ws_follow(api.ws_url, session_id, max_events=12).events
    running = client.info(api.url, session_id)
    assert running["status"] == "running"
    assert running["chunks"] >= 10
    assert "finishReason" not in running
    assert events[0] == {"type": "status", "id": events[0]["id"], "status": "queued"}
    assert events[1]["type"] == "status" and events[1]["status"] == "running"
    requests.delete(f"{api.url}/api/streams/{session_id}", timeout=10)


def test_an_integral_float_is_a_whole_number_of_tokens(api: Api) -> None:
    response = post(api, '{"prompt": "two", "max_tokens": 2.0}')
    assert response.status_code == 202, response.text
    assert client.wait_terminal(api.url, response.json()["sessionId"])["chunks"] == 2


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "invalid_json"),
        ("", "invalid_json"),
        ("[1, 2]", "invalid_request"),
        ('"just a string"', "invalid_request"),
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
        ({}, "invalid_request"),
        ({"prompt": ""}, "invalid_request"),
        ({"prompt": "   "}, "invalid_request"),
        ({"prompt": 42}, "invalid_request"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "invalid_request"),
        ({"messages": []}, "invalid_request"),
        ({"messages": "hi"}, "invalid_request"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "invalid_request"),
        ({"messages": [{"role": "user", "content": ""}]}, "invalid_request"),
        ({"messages": [{"role": "user"}]}, "invalid_request"),
        ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "invalid_request"),
        ({"messages": ["user: hi"]}, "invalid_request"),
        ({"prompt": "a", "max_tokens": 0}, "invalid_request"),
        ({"prompt": "a", "max_tokens": 8193}, "invalid_request"),
        ({"prompt": "a", "max_tokens": 2.5}, "invalid_request"),
        ({"prompt": "a", "max_tokens": True}, "invalid_request"),
        ({"prompt": "a", "max_tokens": "10"}, "invalid_request"),
        ({"prompt": "a", "max_tokens": 10**40}, "invalid_request"),
        ({"prompt": "a", "temperature": -0.1}, "invalid_request"),
        ({"prompt": "a", "temperature": 2.01}, "invalid_request"),
        ({"prompt": "a", "temperature": "hot"}, "invalid_request"),
        ('{"prompt": "a", "temperature": NaN}', "invalid_request"),
        ('{"prompt": "a", "temperature": Infinity}', "invalid_request"),
        ({"prompt": "a", "model": ""}, "invalid_request"),
        ({"prompt": "a", "model": 7}, "invalid_request"),
        ({"prompt": "a", "model": "m" * 201}, "invalid_request"),
        ({"prompt": "a", "stream": True}, "invalid_request"),
        ({"prompt": "a", "model": "gpt-5-secret"}, "unknown_model"),
        ('{"prompt": "half a pair \\ud800"}', "invalid_request"),
        ('{"messages": [{"role": "user", "content": "\\udfff"}]}', "invalid_request"),
        ('{"prompt": "a", "model": "demo\\ud83d"}', "invalid_request"),
    ],
)
def test_bad_generate_bodies_get_a_400_with_a_code(api: Api, body: object, code: str) -> None:
    assert_error(post(api, body, headers={"Content-Type": "application/json"}), 400, code)


def test_a_body_over_the_limit_gets_413(api: Api) -> None:
    big = json.dumps({"prompt": "x" * (4 * 1024 * 1024 + 10)})
    assert_error(
        post(api, big, headers={"Content-Type": "application/json"}), 413, "body_too_large"
    )


def test_a_chunked_body_over_the_limit_gets_413(api: Api) -> None:
    pieces = (b"x" * 1024 * 1024 for _ in range(5))  # a generator: sent chunked
    assert_error(
        post(api, pieces, headers={"Content-Type": "application/json"}), 413, "body_too_large"
    )


def test_idempotency_key_returns_the_same_session(api: Api) -> None:
    headers = {"Idempotency-Key": "order-42-attempt"}
    first = client.create(api.url, headers=headers, prompt="only once", max_tokens=3)
    second = client.create(api.url, headers=headers, prompt="only once", max_tokens=3)
    assert second["sessionId"] == first["sessionId"]
    conflict = post(api, {"prompt": "something else"}, headers=headers)
    assert_error(conflict, 409, "idempotency_conflict")
    assert_error(
        post(api, {"prompt": "x"}, headers={"Idempotency-Key": ""}), 400, "invalid_request"
    )
    latin1 = post(api, {"prompt": "x"}, headers={"Idempotency-Key": "caf\xe9".encode("latin-1")})
    assert_error(latin1, 400, "invalid_request")


UNKNOWN = "A" * 21


@pytest.mark.parametrize("session_id", [UNKNOWN, "short", "x" * 300, "bad%20id..%2F"])
def test_unknown_sessions_get_404_on_every_endpoint(api: Api, session_id: str) -> None:
    base = f"{api.url}/api/streams"
    assert_error(
        requests.get(f"{base}/generate", params={"sessionId": session_id}), 404, "not_found"
    )
    assert_error(requests.get(f"{base}/{session_id}/text"), 404, "not_found")
    assert_error(requests.delete(f"{base}/{session_id}"), 404, "not_found")
    assert_error(requests.get(f"{base}/{session_id}"), 404, "not_found")


def test_info_without_session_id_is_a_400(api: Api) -> None:
    assert_error(requests.get(f"{api.url}/api/streams/generate"), 400, "invalid_request")


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    assert_error(requests.get(f"{api.url}/api/nothing-here"), 404, "not_found")
    put = requests.put(f"{api.url}/api/streams/generate", json={})
    assert_error(put, 405, "method_not_allowed")
    assert set(put.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_health_and_readiness(api: Api) -> None:
    assert requests.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = requests.get(f"{api.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"redis": "ok", "broker": "ok"}


def raw_request(api: Api, head: bytes) -> tuple[int, dict[str, object]]:
    """Send bytes as they are; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        header, _, body = answer.partition(b"\r\n\r\n")
        length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
    return int(header.split()[1]), json.loads(body)


WS_HEAD = "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
WS_KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.mark.parametrize(
    "upgrade",
    [
        "Upgrade: websocket\r\nConnection: Upgrade\r\n",
        # Firefox's, and header names and values in other cases
        "upgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n",
    ],
)
@pytest.mark.parametrize("extra", ["", "Sec-WebSocket-Protocol: chat\r\n"])
def test_a_websocket_handshake_is_accepted_as_rfc_6455_says(
    api: Api, upgrade: str, extra: str
) -> None:
    session_id = client.create(api.url, prompt="handshake", max_tokens=3)["sessionId"]
    head = (
        f"GET /api/streams/{session_id}/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n{upgrade}"
        f"{WS_KEY}Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        header, _, rest = answer.partition(b"\r\n\r\n")
        lines = header.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        fields = dict(line.lower().split(": ", 1) for line in lines[1:])
        assert fields["upgrade"] == "websocket"
        assert fields["connection"] == "upgrade"
        # RFC 6455 1.3's example key and its answer.
        assert fields["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".lower()
        assert "sec-websocket-protocol" not in fields  # we speak none
        # Then frames: the first event, a text frame of the session's.
        while len(rest) < 2:
            rest += sock.recv(65536)
        assert rest[0] == 0x81


@pytest.mark.parametrize(
    "headers",
    [
        "",  # no key, no version
        WS_KEY + "Sec-WebSocket-Version: 7\r\n",
        "Sec-WebSocket-Version: 13\r\n",
        WS_KEY
        + "Sec-WebSocket-Version: 13\r\n"
        + "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=zz\r\n",
    ],
)
@pytest.mark.parametrize("path", ["/api/streams/" + "A" * 21 + "/ws", "/api/chat/ws"])
def test_a_broken_websocket_handshake_is_a_400(api: Api, headers: str, path: str) -> None:
    head = WS_HEAD.format(path=path) + headers + "\r\n"
    status, body = raw_request(api, head.encode())
    assert status == 400
    assert body["error"]["code"] == "bad_handshake"  # type: ignore[index]
