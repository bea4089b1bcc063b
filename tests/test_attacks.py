"""Scripted attacks on a real stack (issue 12, items 5 to 9): concurrent idempotent
retries, Unicode digits in numeric parameters, control characters and encoded line breaks
aimed at the logs, foreign Host headers (DNS rebinding) and malformed request lines.

Every answer must be the contract's JSON error or success, never a 5xx, never HTML, and
the logs must hold no credential and no line a client wrote.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.adapters import HTTPAdapter

from api.apikeys import hash_key
from rstreams.client import _error_of
from shared import keys, store
from shared.errors import BadCursor, ConfigError
from shared.settings import Settings
from tests import client
from tests.procs import Api, Worker

KEY = "rsk_attacks-test-key-0123456789abcdefghijklmn"
SECRET = "test-stream-token-secret-0123456789abcdef"
PUBLIC_URL = "https://streams.example.com"
REBIND = "rebind.attacker.example"
# Bounded property runs: the whole file stays well under a minute.
FEW = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.fixture(scope="module")
def open_api(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An open API (no keys) with its access log, in text format, and per-caller limits on
    (as by default), high enough for the tests."""
    env = {
        **stack_env,
        "WEB_ACCESS_LOG": "-",
        "LOG_FORMAT": "text",
        "RATE_CREATES_PER_MIN": "10000",
        "MAX_RUNNING_PER_CALLER": "10000",
    }
    proc = Api(env, logs_dir, name="api-attacks-open").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keyed_api(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An API with a key, its access log and JSON logs."""
    env = {
        **stack_env,
        "API_KEYS": f"attacker:{hash_key(KEY)}",
        "STREAM_TOKEN_SECRET": SECRET,
        "WEB_ACCESS_LOG": "-",
        "LOG_FORMAT": "json",
    }
    proc = Api(env, logs_dir, name="api-attacks-keyed").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def public_api(stack_env: dict[str, str], logs_dir: Path, worker: Worker) -> Iterator[Api]:
    """An open API told its public address (PUBLIC_URL), as in production."""
    env = {**stack_env, "PUBLIC_URL": PUBLIC_URL}
    proc = Api(env, logs_dir, name="api-attacks-public").start()
    yield proc
    proc.stop()


BEARER = {"Authorization": f"Bearer {KEY}"}


def raw(port: int, data: bytes, source: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(data)
        answer = b""
        while True:
            part = s.recv(65536)
            if not part:
                break
            answer += part
            head, sep, body = answer.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get(port: int, target: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    """A GET request's bytes, `target` sent as it is."""
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode(
        "latin-1"
    )


def assert_json_error(status: int, headers: dict[str, str], body: bytes, expected: int) -> str:
    """The answer is the contract's JSON error with `expected` status; returns its code."""
    assert status == expected, body[:300]
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    error = json.loads(body)["error"]
    assert isinstance(error["code"], str) and isinstance(error["message"], str)
    return str(error["code"])


def log_after(proc: Api, action: Callable[[], None]) -> str:
    """What `proc` logs while `action` runs, up to an access-log marker sent after it."""
    start = len(proc.log())
    action()
    marker = f"/marker-{uuid.uuid4().hex}"
    requests.get(f"{proc.url}{marker}", timeout=10)
    deadline = time.monotonic() + 10
    while marker not in proc.log()[start:]:
        assert time.monotonic() < deadline, "the access log never showed the marker"
        time.sleep(0.05)
    return proc.log()[start:]


# --- 5. concurrent retries with one Idempotency-Key ---


def test_concurrent_retries_with_one_key_all_get_the_one_session(open_api: Api) -> None:
    # Given 10 keys, each retried by 20 clients at the same instant
    for _round in range(10):
        key = f"attack-{uuid.uuid4().hex}"
        barrier = threading.Barrier(20)
        answers: list[requests.Response] = []
        lock = threading.Lock()

        def retry(
            key: str = key,
            barrier: threading.Barrier = barrier,
            answers: list[requests.Response] = answers,
            lock: threading.Lock = lock,
        ) -> None:
            with requests.Session() as http:
                barrier.wait()
                response = http.post(
                    f"{open_api.url}/api/streams/generate",
                    json={"prompt": "once", "max_tokens": 2},
                    headers={"Idempotency-Key": key},
                    timeout=20,
                )
            with lock:
                answers.append(response)

        threads = [threading.Thread(target=retry) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Then each answer is the one session, or a retryable 409 with Retry-After
        sessions = set()
        for response in answers:
            if response.status_code == 202:
                sessions.add(response.json()["sessionId"])
            else:
                assert response.status_code == 409, response.text
                assert response.json()["error"]["code"] == "request_in_progress"
                assert response.headers["Retry-After"] == "1"  # docs/API.md section 11
        assert len(sessions) == 1, sessions


def test_the_fingerprint_compares_the_validated_request(open_api: Api) -> None:
    key = {"Idempotency-Key": f"fp-{uuid.uuid4().hex}"}
    first = client.create(open_api.url, headers=key, prompt="same", max_tokens=1)
    again = client.create(
        open_api.url, headers=key, messages=[{"role": "user", "content": "same"}], max_tokens=1.0
    )
    assert again["sessionId"] == first["sessionId"]
    other = requests.post(
        f"{open_api.url}/api/streams/generate",
        json={"prompt": "same", "max_tokens": 2},
        headers=key,
        timeout=10,
    )
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


class _FromAddress(HTTPAdapter):
    """Connect from a given loopback address: another client, as the server sees it."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def test_in_open_mode_an_idempotency_key_is_the_client_s_own(open_api: Api) -> None:
    key = {"Idempotency-Key": "order-1"}  # easy to guess
    body: dict[str, Any] = {"prompt": "my secret question", "max_tokens": 2}
    first = client.create(open_api.url, headers=key, **body)
    with requests.Session() as other:
        other.mount("http://", _FromAddress("127.0.0.2"))
        guess = other.post(
            f"{open_api.url}/api/streams/generate", json=body, headers=key, timeout=10
        )
    assert guess.status_code == 202, guess.text
    assert guess.json()["sessionId"] != first["sessionId"]
    # the first client's retry still gets its own session
    assert client.create(open_api.url, headers=key, **body)["sessionId"] == first["sessionId"]


# --- 6. Unicode digits in numeric query parameters ---

UNICODE_NUMBERS = [
    "\u00b2",
    "\u00b9\u2070",
    "1\u00b2",
    "\u0661\u0662",
    "\uff11\uff12",
    "5\n",
    " 5",
    pytest.param("9" * 4000, id="4000-nines"),
]
unicode_digits = st.text(
    alphabet=st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=4
).filter(lambda s: not s.isascii())


@pytest.mark.parametrize("limit", UNICODE_NUMBERS)
def test_unicode_digits_in_the_listing_limit_are_a_400(keyed_api: Api, limit: str) -> None:
    response = requests.get(
        f"{keyed_api.url}/api/streams", params={"limit": limit}, headers=BEARER, timeout=10
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


@FEW
@given(value=unicode_digits)
def test_any_unicode_number_in_limit_or_cursor_is_a_400(keyed_api: Api, value: str) -> None:
    listing = requests.get(
        f"{keyed_api.url}/api/streams", params={"limit": value}, headers=BEARER, timeout=10
    )
    assert listing.status_code == 400, listing.text
    for after in (value, f"{value}-0", f"1-{value}"):
        sse = requests.get(
            f"{keyed_api.url}/api/streams/{'A' * 21}",
            params={"after": after},
            headers=BEARER,
            timeout=10,
        )
        assert sse.status_code in (400, 404), sse.text
        assert sse.json()["error"]["code"] in ("bad_cursor", "not_found")


def test_a_cursor_is_ascii_digits_only(open_api: Api) -> None:
    session_id = client.create(open_api.url, prompt="cursor", max_tokens=2)["sessionId"]
    for after in ("\u0661-\u0660", "1-0\n", "\uff11-0"):
        response = requests.get(
            f"{open_api.url}/api/streams/{session_id}", params={"after": after}, timeout=10
        )
        assert response.status_code == 400, (after, response.text)
        assert response.json()["error"]["code"] == "bad_cursor"
        ws = client.ws_follow(open_api.ws_url, session_id, after)
        assert ws.close_code == 4400 and ws.events[0]["error"]["code"] == "bad_cursor", after
        if "\n" not in after:  # a header cannot hold a line break
            last_event_id = requests.get(
                f"{open_api.url}/api/streams/{session_id}",
                headers={"Last-Event-ID": after.encode()},
                timeout=10,
            )
            assert last_event_id.status_code == 400, (after, last_event_id.text)
    with pytest.raises(BadCursor):
        store.parse_cursor("1-0\n")


def test_a_client_reads_a_unicode_retry_after_as_none() -> None:
    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "\u00b2"
    response._content = b'{"error": {"code": "too_many_requests", "message": "later"}}'
    assert _error_of(response).retry_after_s is None


# --- 7. logs: control characters, encoded line breaks, credentials ---


def test_a_request_line_with_a_control_character_logs_no_token(keyed_api: Api) -> None:
    token = client.create(keyed_api.url, headers=BEARER, prompt="t", max_tokens=1)["streamToken"]
    session_id = "A" * 21
    answers: list[tuple[int, dict[str, str], bytes]] = []

    def attack() -> None:
        for bad in ("\x01", "\x7f", "\x00", "\x1b[2J", "\t"):
            target = f"/api/streams/{session_id}/ws?token={token}{bad}x"
            answers.append(raw(keyed_api.port, get(keyed_api.port, target)))

    logged = log_after(keyed_api, attack)
    assert token not in logged
    assert token.split(".")[-1] not in logged  # not even the signature
    for status, headers, body in answers:
        assert_json_error(status, headers, body, 400)


def test_an_encoded_line_break_forges_no_log_line(open_api: Api) -> None:
    forged = f"FORGED-{uuid.uuid4().hex}"

    def attack() -> None:
        for target in (
            f"/api/streams/x%0A{forged}",
            f"/api/streams/x%0D%0A{forged}",
            f"/api/streams/{'A' * 21}%0A{forged}/text",
            f"/nowhere%0a{forged}%0d",
        ):
            status, headers, body = raw(open_api.port, get(open_api.port, target))
            assert_json_error(status, headers, body, 404)

    logged = log_after(open_api, attack)
    assert forged in logged  # the access log shows the path, escaped
    for line in logged.splitlines():
        assert not line.startswith(forged), line
        assert not line.startswith("\r"), line


def test_a_model_id_with_a_line_break_is_a_400(open_api: Api) -> None:
    response = requests.post(
        f"{open_api.url}/api/streams/generate",
        json={"prompt": "x", "model": "demo\nFORGED line"},
        timeout=10,
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"


def test_a_session_id_with_a_trailing_newline_is_no_session_id(open_api: Api) -> None:
    session_id = client.create(open_api.url, prompt="newline", max_tokens=2)["sessionId"]
    assert keys.is_session_id(session_id)
    assert not keys.is_session_id(session_id + "\n")
    for path in (f"/api/streams/{session_id}%0A/text", f"/api/streams/{session_id}%0A"):
        status, headers, body = raw(open_api.port, get(open_api.port, path))
        assert assert_json_error(status, headers, body, 404) == "not_found"
        assert "\n" not in json.loads(body)["error"]["message"]


# --- 8. foreign Host headers, DNS rebinding ---


def test_a_dns_rebinding_page_is_refused(open_api: Api) -> None:
    # Given a page of rebind.attacker.example whose name now points at the API
    host = f"{REBIND}:{open_api.port}"
    headers = {"Host": host, "Origin": f"http://{host}"}
    # When it posts a generation and reads an answer
    post = requests.post(
        f"{open_api.url}/api/streams/generate",
        json={"prompt": "spend their credits", "max_tokens": 2},
        headers=headers,
        timeout=10,
    )
    session_id = client.create(open_api.url, prompt="private", max_tokens=2)["sessionId"]
    read = requests.get(
        f"{open_api.url}/api/streams/{session_id}/text", headers=headers, timeout=10
    )
    # Then both are refused, before anything happens
    for response in (post, read):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_host"
        assert REBIND not in response.text
    ws = raw(
        open_api.port,
        get(
            open_api.port,
            f"/api/streams/{session_id}/ws",
            host=host,
            extra=f"Origin: http://{host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        ),
    )
    assert assert_json_error(*ws, 400) == "invalid_host"


hostnames = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}\Z")


@FEW
@given(name=hostnames, port=st.one_of(st.none(), st.integers(1, 65535)))
def test_any_foreign_host_is_refused(open_api: Api, name: str, port: int | None) -> None:
    if name in ("localhost", "127.0.0.1") or name.startswith("127."):
        return
    host = name if port is None else f"{name}:{port}"
    status, headers, body = raw(
        open_api.port, get(open_api.port, "/api/streams/generate?sessionId=x", host)
    )
    assert assert_json_error(status, headers, body, 400) == "invalid_host"


@pytest.mark.parametrize(
    "host",
    [
        "localhost.attacker.example",
        "127.0.0.1.nip.io",
        "127.0.0.1@attacker.example",
        "attacker.example#127.0.0.1",
        "127.0.0.1:80@attacker.example",
        "127.0.0.1:x",
        "127.0.0.1:99999",
        "",
        "[::1",
        "local\u00adhost",
    ],
)
def test_look_alike_hosts_are_refused(open_api: Api, host: str) -> None:
    status, headers, body = raw(
        open_api.port, get(open_api.port, "/api/streams/generate?sessionId=x", host)
    )
    assert assert_json_error(status, headers, body, 400) in ("invalid_host", "bad_request")


def test_loopback_names_are_served_and_echoed_as_sent(open_api: Api) -> None:
    for host in ("127.0.0.1", "localhost", "LOCALHOST", "[::1]"):
        response = requests.post(
            f"{open_api.url}/api/streams/generate",
            json={"prompt": "local", "max_tokens": 1},
            headers={"Host": f"{host}:{open_api.port}"},
            timeout=10,
        )
        assert response.status_code == 202, (host, response.text)
        assert response.json()["streamUrl"].startswith(f"http://{host.lower()}:{open_api.port}/")
    health = raw(open_api.port, get(open_api.port, "/healthz", host=f"10.0.0.7:{open_api.port}"))
    assert health[0] == 200  # platform probes ask by address


def test_answers_take_urls_from_the_public_url(public_api: Api) -> None:
    for host in ("streams.example.com", f"127.0.0.1:{public_api.port}"):
        response = requests.post(
            f"{public_api.url}/api/streams/generate",
            json={"prompt": "public", "max_tokens": 1},
            headers={"Host": host},
            timeout=10,
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["streamUrl"] == f"{PUBLIC_URL}/api/streams/{body['sessionId']}"
        assert body["wsUrl"] == f"wss://streams.example.com/api/streams/{body['sessionId']}/ws"
    foreign = requests.post(
        f"{public_api.url}/api/streams/generate",
        json={"prompt": "public", "max_tokens": 1},
        headers={"Host": "streams.example.com.attacker.example"},
        timeout=10,
    )
    assert foreign.status_code == 400 and foreign.json()["error"]["code"] == "invalid_host"


def test_allowed_hosts_and_public_url_settings() -> None:
    default = Settings.from_env({})
    assert default.api.allowed_hosts == () and default.api.public_url == ""
    assert all(default.api.is_host_allowed(h) for h in ("localhost", "127.0.0.1", "[::1]"))
    assert not default.api.is_host_allowed(REBIND)
    custom = Settings.from_env(
        {"ALLOWED_HOSTS": "api.example.com, .example.org", "PUBLIC_URL": "https://Pub.Example/"}
    )
    assert custom.api.public_url == "https://pub.example"
    for host in ("api.example.com", "example.org", "a.b.example.org", "pub.example"):
        assert custom.api.is_host_allowed(host), host
    for host in ("example.com", "badexample.org", "pub.example.evil"):
        assert not custom.api.is_host_allowed(host), host
    heroku = Settings.from_env({"HEROKU_APP_DEFAULT_DOMAIN_NAME": "my-app.herokuapp.com"})
    assert heroku.api.public_url == "https://my-app.herokuapp.com"
    assert Settings.from_env({"ALLOWED_HOSTS": "*"}).api.is_host_allowed(REBIND)
    for env in (
        {"ALLOWED_HOSTS": "https://api.example.com"},
        {"ALLOWED_HOSTS": "api.example.com:443"},
        {"ALLOWED_HOSTS": "*, api.example.com"},
        {"PUBLIC_URL": "api.example.com"},
        {"PUBLIC_URL": "https://api.example.com/base"},
    ):
        with pytest.raises(ConfigError, match=next(iter(env))):
            Settings.from_env(env)


# --- 9. parser-level errors are JSON too ---


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"G\x01T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: \x00\r\n\r\n", 400),
        (
            b"POST /api/streams/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
    ],
)
def test_malformed_requests_get_a_json_error(
    open_api: Api, request_bytes: bytes, status: int
) -> None:
    assert_json_error(*raw(open_api.port, request_bytes), status)


@FEW
@given(line=st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b))
def test_any_request_line_gets_json_and_no_5xx(open_api: Api, line: bytes) -> None:
    status, headers, body = raw(
        open_api.port, line + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    assert status < 500, (line, body[:200])
    assert headers.get("content-type", "").startswith("application/json"), (line, body[:200])
